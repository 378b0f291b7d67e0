//! The whole client session as one sans-IO state machine, from the upstream's greeting to
//! UPDATE (RFC 1939 §§4–6), modelled on imap-next's `State`: the I/O side feeds it
//! [`Input`]s with the time they happened ([`Machine::handle`]) and performs the
//! [`Action`]s [`Machine::next`] returns, until `next` answers [`Action::Need`] (the input
//! the machine waits for) or [`Action::Close`]. There is no socket and no clock in here:
//! time arrives with every input and as [`Input::Tick`], which is how the early login
//! answer (`scan.early_answer_after`, see `net::driver`) is decided.
//!
//! Phases and where their policy lives:
//! - AUTHORIZATION is passed through: [`crate::session::auth`] plans each line (SASL
//!   exchanges, whose mailbox a login opens); the machine sequences relays and replies.
//! - The login scan is performed by `net::login_scan` ([`Need::Scan`], [`Need::Evaluate`]);
//!   the machine decides what follows: refusing a server without TOP
//!   (`scan.without_top: refuse`), answering the login early, which messages go to the
//!   quarantine ([`Need::Quarantine`], one at a time) and what a failed copy means
//!   (`quarantine.on_failure`), and when the view is complete.
//! - TRANSACTION runs [`crate::session::pipeline`] (queue, pipelining, bounded memory).
//! - UPDATE sends the DELE batches of the client's QUIT — and only then: no other path
//!   sends DELE upstream (checked by the fuzz target and `tests/session_proptest.rs`).
//!
//! Open for what other parts add: the action set is an enum matched exhaustively by the one
//! performer (`net::driver`), so new actions (a client TLS upgrade, bodies served from
//! popsift's own store) are new variants, not new code paths in the I/O pump.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{OnFailure, WithoutTop};
use crate::pop3::capa::{self as capa_codec, Capability};
use crate::pop3::status::{Status, StatusKind};
use crate::session::auth::{Authorization, SaslStep, INVALID_SASL_NAME};
use crate::session::capa::{self, Known};
use crate::session::phase::Phase;
use crate::session::pipeline::{dele_batches, Pipeline, Step};
use crate::session::plan::{err, AuthPlan};
use crate::session::relay::rewrite_octets;
use crate::session::verdicts::{quarantine_candidates, ScanOutcome};
use crate::session::view::{Disposition, Entry, HeaderRewrite, MailboxView};

/// The client's reply when the server has no TOP and the config refuses unfiltered mail.
pub const REFUSED_WITHOUT_TOP: &[u8] =
    b"-ERR [SYS/PERM] the mail server cannot TOP, and popsift is configured not to pass unfiltered mail\r\n";

/// The policy the machine applies, taken from the config once per session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `scan.early_answer_after`.
    pub early_answer_after: Option<Duration>,
    /// `scan.pipelining`: the login scan may pipeline when the upstream does.
    pub scan_pipelining: bool,
    /// `scan.window`: DELE batch size in UPDATE when the upstream pipelines.
    pub window: usize,
    pub without_top: WithoutTop,
    pub on_failure: OnFailure,
    pub dry_run: bool,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Settings {
        Settings {
            early_answer_after: c.scan.early_answer_after,
            scan_pipelining: c.scan.pipelining,
            window: c.scan.window,
            without_top: c.scan.without_top,
            on_failure: c.quarantine.on_failure,
            dry_run: c.dry_run,
        }
    }
}

/// What happened, fed to [`Machine::handle`] in answer to a [`Need`] (or `Tick` at any time).
#[derive(Debug)]
pub enum Input {
    /// The upstream is connected and greeted: its greeting (without CRLF) and pre-login CAPA.
    Connected { greeting: Vec<u8>, caps: Option<Vec<Capability>> },
    /// One client command line, without its line end.
    ClientLine(Vec<u8>),
    /// Answer to [`Need::BufferedClientLine`]: no complete line is buffered.
    NoClientLine,
    /// Answer to [`Need::ClientInput`]: more client octets were buffered.
    ClientInput,
    /// One upstream status line, without CRLF (already checked to be a status line).
    UpstreamLine(Vec<u8>),
    /// Answer to [`Need::UpstreamLine`] with `lenient`: the read failed (ignored).
    UpstreamLineFailed,
    /// A whole multi-line body (unstuffed, without the terminator), for [`Need::UpstreamBody`].
    UpstreamBody(Vec<u8>),
    /// The LIST/UIDL/TOP part of the login scan is done.
    Listed(Box<ScanOutcome>),
    /// The scanned messages evaluated into view entries (rechecks done, memo stored).
    Evaluated(Vec<Entry>),
    /// Answer to [`Need::QuarantineFolder`] (a folder that cannot be used makes every copy
    /// fail, reported per message as [`Quarantined::Failed`]).
    QuarantineFolder,
    /// Answer to [`Need::Quarantine`].
    Quarantined(Quarantined),
    /// Time passed (see [`Machine::wake_at`]).
    Tick,
}

/// How one quarantine copy ended (the performer logs and counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantined {
    /// Stored now: the message may be deleted at QUIT.
    Stored,
    /// This folder already holds the same content from an earlier login.
    AlreadyStored,
    /// Not stored (too large, over quota, disk): the message must not be deleted.
    Failed,
}

/// What the machine waits for; the performer answers with the matching [`Input`].
#[derive(Debug)]
pub enum Need {
    /// Connect to the upstream, read its greeting and CAPA → [`Input::Connected`].
    Connect,
    /// Flush the client output, then wait for one client line → [`Input::ClientLine`].
    ClientLine,
    /// A client line already buffered, without waiting (when `read_ahead`, first read what
    /// the socket already holds) → [`Input::ClientLine`] or [`Input::NoClientLine`].
    BufferedClientLine { read_ahead: bool },
    /// Flush the client output, then wait for more client octets → [`Input::ClientInput`].
    ClientInput,
    /// One upstream status line → [`Input::UpstreamLine`]; with `lenient` a failed read is
    /// [`Input::UpstreamLineFailed`] instead of the session's end.
    UpstreamLine { phase: Phase, lenient: bool },
    /// A multi-line body (CAPA) → [`Input::UpstreamBody`].
    UpstreamBody { phase: Phase },
    /// LIST, UIDL and TOP (or the header cache) for every message → [`Input::Listed`].
    Scan { pipelining: bool },
    /// Evaluate the scan's items into entries → [`Input::Evaluated`].
    Evaluate(Box<ScanOutcome>),
    /// Open the quarantine folder of the login's user (its usage, for the quota) →
    /// [`Input::QuarantineFolder`].
    QuarantineFolder,
    /// Copy this message into the quarantine (RETR upstream) → [`Input::Quarantined`].
    /// `Failed` when the login's user is unknown (a SASL mechanism popsift does not read:
    /// no folder to trust) or the folder could not be opened.
    Quarantine(Box<Entry>),
    /// The need returned just before is still unanswered (returned when
    /// [`Machine::next`] is asked again before its input came).
    Pending,
}

/// What to do now.
#[derive(Debug)]
pub enum Action {
    /// Queue these bytes for the client (flushed at [`Action::Flush`], before a client read,
    /// or when much is queued).
    ToClient(Vec<u8>),
    /// Write the queued client output now.
    Flush,
    /// Write to the upstream. With `check_quiet`, first make sure it sent nothing
    /// unasked (RFC 1939 §3: a server speaks only in reply), else end the session.
    ToUpstream { bytes: Vec<u8>, phase: Phase, check_quiet: bool },
    /// Relay the multi-line body that follows the `+OK` just read to the client,
    /// verbatim or with its header block replaced.
    RelayBody { phase: Phase, rewrite: Option<Arc<HeaderRewrite>> },
    /// The name to log this session under changed.
    User(String),
    /// The view is complete: log and count its verdicts (see `net::login_scan::report`).
    ViewReady,
    /// Wait for an input.
    Need(Need),
    /// The session is over.
    Close,
}

/// What the session did, for the summary log line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub user: Option<String>,
    pub messages: usize,
    pub hidden: usize,
    pub condemned: usize,
    pub tagged: usize,
    pub retrieved: usize,
    pub deleted_upstream: usize,
    pub auth_failed: bool,
    pub logged_in: bool,
}

/// Where the session is, and what the next input means.
#[derive(Debug)]
enum State {
    Connecting,
    /// AUTHORIZATION, waiting for a command.
    AuthIdle,
    /// A single-line relay (USER, UTF8): the reply goes to the client.
    AuthRelay,
    /// `AUTH` without a mechanism: `+OK` is followed by a list.
    AuthMultiline,
    /// PASS / APOP sent.
    AuthLogin,
    /// A SASL exchange runs: the upstream's next reply.
    SaslReply,
    /// A SASL challenge was relayed: the client's response.
    SaslResponse,
    /// The exchange was cancelled (`*`): its reply is read and dropped.
    SaslCancel,
    /// QUIT in AUTHORIZATION (no UPDATE, RFC 1939 §6).
    AuthQuit,
    /// The login scan runs (LIST, UIDL, TOP).
    Scanning,
    Evaluating,
    /// Refusing a login because the server has no TOP: the reply to our QUIT.
    Refusing,
    QuarantineFolder,
    /// Copying `candidates[next - 1]` into the quarantine.
    Quarantining,
    /// TRANSACTION, taking buffered client lines into the pipeline.
    TxPlanning,
    /// TRANSACTION, the queue is empty: waiting for the client.
    TxWaiting,
    /// A NOOP's reply (relayed).
    TxRelay,
    /// A RETR/TOP status line.
    TxFetch(Option<crate::session::pipeline::Rewrite>),
    TxCapaStatus,
    TxCapaBody,
    /// UPDATE: replies to DELE for these upstream numbers are due.
    Update,
    UpdateQuit,
    Closed,
}

/// The session's state machine (see the module doc).
pub struct Machine {
    settings: Settings,
    state: State,
    actions: VecDeque<Action>,
    /// Time of the latest input.
    now: Instant,
    caps: Option<Vec<Capability>>,
    auth: Authorization,
    logged_as: Option<String>,
    /// The upstream's `+OK` to the login (with CRLF), not yet sent unless `login_answered`.
    login_reply: Vec<u8>,
    login_answered: bool,
    /// When the login `+OK` is due even though the scan still runs.
    answer_at: Option<Instant>,
    entries: Vec<Entry>,
    candidates: Vec<usize>,
    next_candidate: usize,
    pipeline: Option<Pipeline>,
    up_pipelining: bool,
    known: Known,
    /// UPDATE: DELE batches not yet sent, and the numbers whose replies are due.
    batches: VecDeque<(Vec<u8>, Vec<u32>)>,
    awaiting: VecDeque<u32>,
    dele_refused: usize,
    pub stats: Stats,
}

impl Machine {
    pub fn new(settings: Settings, now: Instant) -> Machine {
        Machine {
            settings,
            state: State::Connecting,
            actions: VecDeque::new(),
            now,
            caps: None,
            auth: Authorization::new(),
            logged_as: None,
            login_reply: Vec::new(),
            login_answered: false,
            answer_at: None,
            entries: Vec::new(),
            candidates: Vec::new(),
            next_candidate: 0,
            pipeline: None,
            up_pipelining: false,
            known: Known::default(),
            batches: VecDeque::new(),
            awaiting: VecDeque::new(),
            dele_refused: 0,
            stats: Stats::default(),
        }
    }

    /// The next action. After [`Action::Need`] the machine returns it again until the
    /// input is handled; after [`Action::Close`] it returns `Close` for ever.
    pub fn next(&mut self) -> Action {
        if let Some(a) = self.actions.pop_front() {
            return a;
        }
        let need = match &self.state {
            State::Connecting => Need::Connect,
            State::AuthIdle | State::SaslResponse => Need::ClientLine,
            State::AuthRelay | State::AuthMultiline | State::AuthLogin | State::SaslReply => {
                Need::UpstreamLine { phase: Phase::Login, lenient: false }
            }
            State::SaslCancel => Need::UpstreamLine { phase: Phase::Login, lenient: false },
            State::AuthQuit | State::Refusing => Need::UpstreamLine { phase: Phase::Update, lenient: true },
            State::Scanning => Need::Scan { pipelining: self.scan_pipelining() },
            State::Evaluating | State::QuarantineFolder | State::Quarantining => {
                // These needs carry data and were returned once, when the state was entered.
                return Action::Need(Need::Pending);
            }
            State::TxPlanning => {
                Need::BufferedClientLine { read_ahead: self.pipeline.as_ref().is_some_and(Pipeline::read_ahead) }
            }
            State::TxWaiting => Need::ClientInput,
            State::TxRelay | State::TxFetch(_) => Need::UpstreamLine { phase: Phase::Relay, lenient: false },
            State::TxCapaStatus => Need::UpstreamLine { phase: Phase::Capa, lenient: false },
            State::TxCapaBody => Need::UpstreamBody { phase: Phase::Capa },
            State::Update | State::UpdateQuit => Need::UpstreamLine { phase: Phase::Update, lenient: false },
            State::Closed => return Action::Close,
        };
        Action::Need(need)
    }

    /// When the machine wants an [`Input::Tick`] even if nothing else happens.
    pub fn wake_at(&self) -> Option<Instant> {
        self.answer_at.filter(|_| !self.login_answered && matches!(self.state, State::Scanning))
    }

    /// The client's QUIT has been read: its EOF no longer ends the session early.
    pub fn quit_queued(&self) -> bool {
        self.pipeline.as_ref().is_some_and(Pipeline::quit_planned)
    }

    /// The mailbox the login opens, when popsift knows it for sure (see `session::auth`).
    pub fn login_user(&self) -> Option<&str> {
        self.auth.login_user()
    }

    /// The view the client sees, once TRANSACTION has begun.
    pub fn view(&self) -> Option<&MailboxView> {
        self.pipeline.as_ref().map(Pipeline::view)
    }

    /// The session is in AUTHORIZATION (before a successful login).
    pub fn authorizing(&self) -> bool {
        matches!(
            self.state,
            State::Connecting
                | State::AuthIdle
                | State::AuthRelay
                | State::AuthMultiline
                | State::AuthLogin
                | State::SaslReply
                | State::SaslResponse
                | State::SaslCancel
                | State::AuthQuit
        )
    }

    fn scan_pipelining(&self) -> bool {
        self.settings.scan_pipelining && capa::has(self.caps.as_deref(), "PIPELINING")
    }

    fn emit(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn reply(&mut self, bytes: Vec<u8>) {
        self.emit(Action::ToClient(bytes));
        self.emit(Action::Flush);
    }

    fn up(&mut self, bytes: Vec<u8>, phase: Phase) {
        self.emit(Action::ToUpstream { bytes, phase, check_quiet: false });
    }

    fn queue_need(&mut self, need: Need) {
        self.emit(Action::Need(need));
    }

    /// Handles one input that happened at `now`. An input the current state does not
    /// expect is a performer bug; it is ignored (never a panic).
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.now = now;
        if let Input::Tick = input {
            if matches!(self.state, State::Scanning) {
                self.answer_early_if_due();
            }
            return;
        }
        let state = std::mem::replace(&mut self.state, State::Closed);
        self.state = match (state, input) {
            (State::Connecting, Input::Connected { mut greeting, caps }) => {
                self.caps = caps;
                greeting.extend_from_slice(b"\r\n");
                self.reply(greeting);
                State::AuthIdle
            }
            (State::AuthIdle, Input::ClientLine(line)) => self.auth_command(&line),
            (State::AuthRelay, Input::UpstreamLine(mut r)) => {
                r.extend_from_slice(b"\r\n");
                self.reply(r);
                State::AuthIdle
            }
            (State::AuthMultiline, Input::UpstreamLine(mut r)) => {
                let ok = is_ok(&r);
                r.extend_from_slice(b"\r\n");
                self.emit(Action::ToClient(r));
                if ok {
                    self.emit(Action::RelayBody { phase: Phase::Login, rewrite: None });
                }
                self.emit(Action::Flush);
                State::AuthIdle
            }
            (State::AuthLogin, Input::UpstreamLine(r)) => self.login_reply(r),
            (State::SaslReply, Input::UpstreamLine(r)) => {
                if Status::parse(&r).is_some_and(|s| s.kind == StatusKind::Continue) {
                    // RFC 5034 §4: relay the challenge, then the client's response line
                    // (opaque but for the identity: never logged).
                    let mut c = r;
                    c.extend_from_slice(b"\r\n");
                    self.reply(c);
                    State::SaslResponse
                } else {
                    self.login_reply(r)
                }
            }
            (State::SaslResponse, Input::ClientLine(line)) => {
                let step = self.auth.sasl_response(&line);
                self.note_identity();
                match step {
                    SaslStep::Relay(resp) => {
                        self.up(resp, Phase::Login);
                        State::SaslReply
                    }
                    SaslStep::Cancel => {
                        self.up(b"*\r\n".to_vec(), Phase::Login);
                        State::SaslCancel
                    }
                }
            }
            (State::SaslCancel, Input::UpstreamLine(_)) => {
                self.reply(err(INVALID_SASL_NAME));
                State::AuthIdle
            }
            (State::AuthQuit, r @ (Input::UpstreamLine(_) | Input::UpstreamLineFailed)) => {
                let mut r = match r {
                    Input::UpstreamLine(r) => r,
                    _ => b"+OK bye".to_vec(),
                };
                r.extend_from_slice(b"\r\n");
                self.reply(r);
                State::Closed
            }
            (State::Scanning, Input::Listed(outcome)) => self.listed(outcome),
            (State::Refusing, Input::UpstreamLine(_) | Input::UpstreamLineFailed) => {
                self.reply(REFUSED_WITHOUT_TOP.to_vec());
                State::Closed
            }
            (State::Evaluating, Input::Evaluated(entries)) => {
                self.entries = entries;
                self.candidates = quarantine_candidates(&self.entries, self.settings.dry_run);
                self.next_candidate = 0;
                if self.candidates.is_empty() {
                    self.open_view()
                } else {
                    self.queue_need(Need::QuarantineFolder);
                    State::QuarantineFolder
                }
            }
            (State::QuarantineFolder, Input::QuarantineFolder) => self.next_quarantine(),
            (State::Quarantining, Input::Quarantined(result)) => {
                let i = self.candidates.get(self.next_candidate.wrapping_sub(1)).copied();
                if let Some(e) = i.and_then(|i| self.entries.get_mut(i)) {
                    match result {
                        Quarantined::Stored | Quarantined::AlreadyStored => e.disposition = Disposition::Condemned,
                        Quarantined::Failed => {
                            if self.settings.on_failure == OnFailure::Show {
                                e.disposition = Disposition::Visible;
                            }
                        }
                    }
                }
                self.next_quarantine()
            }
            (State::TxPlanning, Input::ClientLine(line)) => {
                if let Some(p) = self.pipeline.as_mut() {
                    p.push_line(&line);
                }
                self.tx_advance(State::TxPlanning)
            }
            (State::TxPlanning, Input::NoClientLine) => self.tx_answer(),
            (State::TxWaiting, Input::ClientInput) => self.tx_advance(State::TxPlanning),
            (State::TxRelay, Input::UpstreamLine(mut r)) => {
                r.extend_from_slice(b"\r\n");
                self.emit(Action::ToClient(r));
                self.tx_advance(State::TxPlanning)
            }
            (State::TxFetch(rewrite), Input::UpstreamLine(r)) => {
                let ok = is_ok(&r);
                match (rewrite, ok) {
                    (Some(rw), true) => {
                        let mut line = rewrite_octets(&r, rw.upstream_size, rw.size);
                        line.extend_from_slice(b"\r\n");
                        self.emit(Action::ToClient(line));
                        self.emit(Action::RelayBody { phase: Phase::Relay, rewrite: Some(rw.header) });
                    }
                    (_, ok) => {
                        let mut line = r;
                        line.extend_from_slice(b"\r\n");
                        self.emit(Action::ToClient(line));
                        if ok {
                            self.emit(Action::RelayBody { phase: Phase::Relay, rewrite: None });
                        }
                    }
                }
                if ok {
                    self.stats.retrieved += 1;
                }
                self.tx_advance(State::TxPlanning)
            }
            (State::TxCapaStatus, Input::UpstreamLine(r)) => {
                if is_ok(&r) {
                    State::TxCapaBody
                } else {
                    self.capa_reply(None);
                    self.tx_advance(State::TxPlanning)
                }
            }
            (State::TxCapaBody, Input::UpstreamBody(body)) => {
                self.capa_reply(Some(capa_codec::parse(&body)));
                self.tx_advance(State::TxPlanning)
            }
            (State::Update, Input::UpstreamLine(r)) => {
                let n = self.awaiting.pop_front().unwrap_or_default();
                if is_ok(&r) {
                    self.stats.deleted_upstream += 1;
                } else {
                    self.dele_refused += 1;
                    tracing::warn!(msg = n, reply = %String::from_utf8_lossy(&r), "upstream refused DELE; the message stays on the server");
                }
                self.update_advance()
            }
            (State::UpdateQuit, Input::UpstreamLine(mut r)) => {
                r.extend_from_slice(b"\r\n");
                self.reply(r);
                State::Closed
            }
            (state, input) => {
                tracing::debug!(?state, ?input, "input not expected in this state; ignored");
                state
            }
        };
    }

    /// Takes the identity the AUTHORIZATION machine knows into the stats and the log.
    fn note_identity(&mut self) {
        if let Some(name) = self.auth.named() {
            self.stats.user = Some(name.to_string());
        }
        let shown = self.auth.login_user().or(self.auth.named()).map(str::to_string);
        if shown.is_some() && shown != self.logged_as {
            self.logged_as = shown.clone();
            if let Some(name) = shown {
                self.emit(Action::User(name));
            }
        }
    }

    /// AUTHORIZATION (RFC 1939 §4): one client command.
    fn auth_command(&mut self, line: &[u8]) -> State {
        let planned = self.auth.command(line);
        self.note_identity();
        match planned {
            AuthPlan::Reply(b) => {
                self.reply(b);
                State::AuthIdle
            }
            AuthPlan::Relay(l) => {
                self.up(l, Phase::Login);
                State::AuthRelay
            }
            AuthPlan::RelayMultiline(l) => {
                self.up(l, Phase::Login);
                State::AuthMultiline
            }
            AuthPlan::Login(l) => {
                self.up(l, Phase::Login);
                State::AuthLogin
            }
            AuthPlan::Sasl(l) => {
                self.up(l, Phase::Login);
                State::SaslReply
            }
            AuthPlan::Capa => {
                let list = capa::rewrite(self.caps.as_deref(), Known { top: false, uidl: false, logged_in: false });
                self.reply(capa_codec::encode(&list));
                State::AuthIdle
            }
            AuthPlan::Quit => {
                self.up(b"QUIT\r\n".to_vec(), Phase::Update);
                State::AuthQuit
            }
        }
    }

    /// The upstream's reply to PASS / APOP / AUTH: `+OK` starts the login scan; the reply
    /// waits for it (or for `early_answer_after`).
    fn login_reply(&mut self, mut r: Vec<u8>) -> State {
        let ok = is_ok(&r);
        r.extend_from_slice(b"\r\n");
        if !ok {
            self.stats.auth_failed = true;
            self.reply(r);
            return State::AuthIdle;
        }
        self.stats.logged_in = true;
        self.login_reply = r;
        self.answer_at = self.settings.early_answer_after.map(|d| self.now + d);
        State::Scanning
    }

    /// Sends the login `+OK` now if the scan has run past `scan.early_answer_after`.
    fn answer_early_if_due(&mut self) {
        if self.login_answered || !self.answer_at.is_some_and(|at| self.now >= at) {
            return;
        }
        self.login_answered = true;
        let r = self.login_reply.clone();
        self.reply(r);
        tracing::info!("scan still running: login answered early; the first command waits for the scan");
    }

    fn listed(&mut self, outcome: Box<ScanOutcome>) -> State {
        if !outcome.top_supported && !outcome.items.is_empty() && self.settings.without_top == WithoutTop::Refuse {
            // When the login was answered early, this `-ERR` answers the client's first
            // command; the session ends rather than fall back into AUTHORIZATION.
            tracing::warn!("upstream does not support TOP; refusing the login as configured (scan.without_top: refuse)");
            self.up(b"QUIT\r\n".to_vec(), Phase::Update);
            return State::Refusing;
        }
        self.queue_need(Need::Evaluate(outcome));
        State::Evaluating
    }

    fn next_quarantine(&mut self) -> State {
        self.answer_early_if_due();
        let Some(&i) = self.candidates.get(self.next_candidate) else {
            return self.open_view();
        };
        self.next_candidate += 1;
        match self.entries.get(i) {
            Some(e) => {
                let e = Box::new(e.clone());
                self.queue_need(Need::Quarantine(e));
                State::Quarantining
            }
            None => self.next_quarantine(),
        }
    }

    /// The view is complete: answer the login (unless answered early) and enter TRANSACTION.
    fn open_view(&mut self) -> State {
        let view = MailboxView::new(std::mem::take(&mut self.entries));
        let (_, hidden, condemned) = view.counts();
        self.stats.messages = view.entries().len();
        self.stats.hidden = hidden;
        self.stats.condemned = condemned;
        self.stats.tagged = view
            .entries()
            .iter()
            .filter(|e| e.disposition == Disposition::Visible && e.verdict().is_some_and(|v| v.spam))
            .count();
        self.known = Known {
            top: view.entries().iter().any(|e| e.evaluated.is_some()),
            uidl: view.entries().iter().all(|e| e.uidl.is_some()),
            logged_in: true,
        };
        self.up_pipelining = capa::has(self.caps.as_deref(), "PIPELINING");
        self.pipeline = Some(Pipeline::new(view, self.up_pipelining));
        self.emit(Action::ViewReady);
        if !self.login_answered {
            self.login_answered = true;
            let r = std::mem::take(&mut self.login_reply);
            self.reply(r);
        }
        self.tx_advance(State::TxPlanning)
    }

    /// TRANSACTION: plans what is buffered, then answers the oldest command.
    fn tx_advance(&mut self, state: State) -> State {
        match state {
            State::TxPlanning if self.pipeline.as_ref().is_some_and(Pipeline::wants_input) => State::TxPlanning,
            State::TxPlanning => self.tx_answer(),
            other => other,
        }
    }

    fn tx_answer(&mut self) -> State {
        let Some(p) = self.pipeline.as_mut() else { return State::Closed };
        let ahead = p.take_ahead();
        let step = p.next_step();
        if let Some(ahead) = ahead {
            self.emit(Action::ToUpstream { bytes: ahead.bytes, phase: Phase::Relay, check_quiet: ahead.upstream_was_idle });
        }
        match step {
            Some(Step::Reply(b)) => {
                self.emit(Action::ToClient(b));
                self.tx_advance(State::TxPlanning)
            }
            Some(Step::Relay { send }) => {
                self.send_due(send, Phase::Relay);
                State::TxRelay
            }
            Some(Step::Fetch { send, rewrite }) => {
                self.send_due(send, Phase::Relay);
                State::TxFetch(rewrite)
            }
            Some(Step::Capa { send }) => {
                self.send_due(send, Phase::Capa);
                State::TxCapaStatus
            }
            Some(Step::Quit { deletions }) => {
                self.emit(Action::Flush);
                self.update(&deletions)
            }
            None => State::TxWaiting,
        }
    }

    /// A command whose turn came and that was not sent ahead.
    fn send_due(&mut self, send: Option<Vec<u8>>, phase: Phase) {
        if let Some(bytes) = send {
            self.emit(Action::ToUpstream { bytes, phase, check_quiet: true });
        }
    }

    fn capa_reply(&mut self, upstream: Option<Vec<Capability>>) {
        let list = capa::rewrite(upstream.as_deref(), self.known);
        self.emit(Action::ToClient(capa_codec::encode(&list)));
    }

    /// UPDATE (RFC 1939 §6): DELE the client's deletions and the condemned messages, in
    /// batches of `scan.window` when the upstream pipelines, then QUIT.
    fn update(&mut self, deletions: &[u32]) -> State {
        let window = if self.up_pipelining { self.settings.window.max(1) } else { 1 };
        self.batches = dele_batches(deletions, window).map(|(c, n)| (c, n.to_vec())).collect();
        self.awaiting.clear();
        self.update_send(true)
    }

    fn update_send(&mut self, first: bool) -> State {
        match self.batches.pop_front() {
            Some((bytes, numbers)) => {
                self.emit(Action::ToUpstream { bytes, phase: Phase::Update, check_quiet: first });
                self.awaiting = numbers.into();
                State::Update
            }
            None => {
                if self.dele_refused > 0 {
                    tracing::warn!(failed = self.dele_refused, "some deletions were refused by the server");
                }
                self.emit(Action::ToUpstream { bytes: b"QUIT\r\n".to_vec(), phase: Phase::Update, check_quiet: first });
                State::UpdateQuit
            }
        }
    }

    fn update_advance(&mut self) -> State {
        if self.awaiting.is_empty() {
            self.update_send(false)
        } else {
            State::Update
        }
    }
}

fn is_ok(line: &[u8]) -> bool {
    Status::parse(line).is_some_and(|s| s.is_ok())
}

/// The entries of a scan evaluated by no rules (every message shown unfiltered): what a
/// harness feeds as [`Input::Evaluated`] when it needs no rule set to reach TRANSACTION.
pub fn unevaluated(outcome: &ScanOutcome) -> Vec<Entry> {
    outcome
        .items
        .iter()
        .map(|i| Entry {
            upstream: i.upstream,
            upstream_size: i.size,
            size: i.size,
            uidl: i.uidl.clone(),
            disposition: Disposition::Visible,
            rewrite: None,
            evaluated: None,
        })
        .collect()
}
