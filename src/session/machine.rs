//! The whole client session as one sans-IO state machine, from the upstream's greeting to
//! UPDATE (RFC 1939 §§4–6), modelled on imap-next's `State`: the I/O side feeds it
//! [`Input`]s with the time they happened ([`Machine::handle`]) and performs the
//! [`Action`]s [`Machine::next_action`] returns, until it answers [`Action::Need`] (the
//! input the machine waits for) or [`Action::Close`]. There is no socket and no clock here:
//! time arrives with every input and as [`Input::Tick`], which is how the early login
//! answer (`scan.early_answer_after`, see `net::driver`) is decided.
//!
//! Phases and where their policy lives:
//! - AUTHORIZATION is passed through: [`crate::session::auth`] plans each line (SASL
//!   exchanges, whose mailbox a login opens); the machine sequences relays and replies.
//!   The network edge's say comes first ([`crate::session::gate`]: STLS → [`Need::StartTls`],
//!   plain text refused without TLS, the failed-login throttle → [`Need::LoginAllowed`]).
//!   With a per-user upstream ([`crate::session::upstream_from_user`]) popsift greets and
//!   answers CAPA itself, and the login names the server: [`Need::Resolve`], the allow and
//!   address checks, then [`Need::ConnectTo`] those addresses, and the USER or first SASL
//!   response goes upstream rewritten to the real user name.
//! - The login scan is performed by `net::login_scan` ([`Need::Scan`], [`Need::Evaluate`];
//!   its TOP windows are the sans-IO [`crate::session::top_window`]'s; the header cache and
//!   the evaluation batches stay with the performer); the machine decides what follows: refusing a server without TOP
//!   (`scan.without_top: refuse`), answering the login early, which messages go to the
//!   quarantine ([`Need::Quarantine`], one at a time) and what a failed copy means
//!   (`quarantine.on_failure`), and when the view is complete.
//! - TRANSACTION runs [`crate::session::pipeline`] (queue, pipelining, bounded memory).
//! - UPDATE sends the DELE batches of the client's QUIT — and only then: no other path
//!   sends DELE upstream (checked by the fuzz target and `tests/session_proptest.rs`).
//!
//! Open for what other parts add: the action set is an enum matched exhaustively by the one
//! performer (`net::driver`), so new actions (bodies served from popsift's own store, a
//! decision-history record at [`Action::RecordHistory`]) are new
//! variants or new work at an existing one, not new code paths in the I/O pump.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Upstream;
use crate::config::{OnFailure, WithoutTop};
use crate::pop3::capa::{self as capa_codec, Capability};
use crate::pop3::command::{self, Command, Secret};
use crate::pop3::status::{Status, StatusKind};
use crate::session::auth::{Authorization, SaslStep, INVALID_SASL_NAME};
use crate::session::capa::{self, Known};
use crate::session::gate::{self, Gate, LoginFailure, STLS_OK, THROTTLED};
use crate::session::login_pipeline;
use crate::session::phase::Phase;
use crate::session::pipeline::{dele_batches, Pipeline, Step};
use crate::session::plan::{err, AuthPlan};
use crate::session::relay::rewrite_octets;
use crate::session::upstream_from_user::{Route, RouteError, UpstreamFromUser};
use crate::session::verdicts::{hold_condemned, quarantine_candidates, ScanOutcome};
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
    /// The listener's client TLS policy, for the capability list before login.
    pub edge: capa::EdgeCapa,
    /// Per-user upstream (`HOST:USER` logins): popsift greets and answers CAPA itself and
    /// connects once the login names the server (see [`crate::session::upstream_from_user`]).
    pub upstream_from_user: Option<Arc<UpstreamFromUser>>,
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
            edge: capa::EdgeCapa::default(),
            upstream_from_user: None,
        }
    }
}

/// popsift's own greeting on a per-user-upstream listener: no APOP timestamp (RFC 1939 §7),
/// since the server that would check the digest is not known yet.
pub const OWN_GREETING: &[u8] = b"+OK popsift ready\r\n";
/// Longest `AUTH` line with an initial response, CRLF included (RFC 5034 §4, RFC 2449 §4).
const MAX_INITIAL_RESPONSE_LINE: usize = 255;
/// The `-ERR` for APOP and SASL mechanisms other than PLAIN and LOGIN on such a listener.
pub const NOT_WITH_UPSTREAM_FROM_USER: &[u8] =
    b"-ERR [AUTH] only USER/PASS and AUTH PLAIN or LOGIN work here: the mail server is named in the user name\r\n";

/// What happened, fed to [`Machine::handle`] in answer to a [`Need`] (or `Tick` at any time).
#[derive(Debug)]
pub enum Input {
    /// The upstream is connected and greeted: its greeting (without CRLF) and pre-login CAPA.
    Connected { greeting: Vec<u8>, caps: Option<std::sync::Arc<[Capability]>> },
    /// Answer to [`Need::StartTls`]: the client's TLS handshake succeeded.
    TlsStarted,
    /// Answer to [`Need::LoginAllowed`]: `false` when the client's address is throttled.
    LoginAllowed(bool),
    /// Answer to [`Need::Resolve`]: the addresses, or why there are none.
    Resolved(Result<Vec<std::net::SocketAddr>, String>),
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
    /// Flush the client output ([`crate::session::gate::STLS_OK`] is queued), drop any
    /// plain-text input the client sent behind STLS (CVE-2011-0411: it must not be taken as
    /// if it came over TLS), and run the client's TLS handshake → [`Input::TlsStarted`]; a
    /// failed handshake ends the session.
    StartTls,
    /// May the client's address try a login now (the edge's failed-login throttle)? →
    /// [`Input::LoginAllowed`].
    LoginAllowed,
    /// Resolve the host a login named (once) → [`Input::Resolved`].
    Resolve { host: String, port: u16 },
    /// Connect to this upstream at exactly these (checked) addresses, read its greeting and
    /// CAPA → [`Input::Connected`]. From now on the session's mailbox keys use it.
    ///
    /// The server boxed (issue 16): every `Need` and `Action` is as large as its largest
    /// variant, and one is kept in the future of every idle session.
    ConnectTo { upstream: Box<Upstream>, addrs: Vec<std::net::SocketAddr> },
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
    /// `requested`: STAT, LIST, CAPA and UIDL went out behind PASS
    /// ([`crate::session::login_pipeline`]): their replies follow, read them first.
    Scan { pipelining: bool, requested: bool },
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
    /// [`Machine::next_action`] is asked again before its input came).
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
    /// The upstream refused the login (this reply follows): the performer logs the failed
    /// login and may delay the answer (the edge's throttle).
    LoginRefused(Vec<u8>),
    /// popsift refused a login itself (the `-ERR` follows): plain text without TLS, a
    /// throttled address, or a per-user login naming a server it will not contact. The
    /// performer logs the failed login (the edge's line) and waits its delay. `upstream`:
    /// the server a per-user login named (`None`: the session's, or `-` when malformed).
    LoginFailed { why: LoginFailure, user: Option<String>, upstream: Option<String> },
    /// The upstream accepted QUIT after the DELEs of UPDATE: what the client deleted is gone
    /// (the performer forgets released copies the client deleted).
    Updated,
    /// The name to log this session under changed.
    User(String),
    /// Close and forget the upstream connection: what is left on it cannot be paired with
    /// any command (see the machine's `upstream_dropped`).
    DropUpstream,
    /// The view is complete: log and count the verdicts of these entries (see
    /// `net::login_scan::report`) and take what the decision history needs (shared, not
    /// copied), then drop them: the view keeps only what TRANSACTION needs (issue 16, see
    /// [`MailboxView`]).
    ViewReady(Vec<Entry>),
    /// The view is complete and the login answered: record its decisions (the review page's
    /// history, `net::history_hooks::record`).
    RecordHistory,
    /// Wait for an input.
    Need(Need),
    /// The session is over.
    Close,
}

/// What the session did, for the summary log line. Counts are `u32` (saturating): the
/// machine keeps them for the whole session (issue 16: 24 bytes less in every idle
/// session's future than `usize`); a mailbox view has at most `u32::MAX` messages anyway.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub messages: u32,
    pub hidden: u32,
    pub condemned: u32,
    pub tagged: u32,
    pub retrieved: u32,
    pub deleted_upstream: u32,
    pub auth_failed: bool,
    pub logged_in: bool,
}

/// A count for [`Stats`], saturating at `u32::MAX`.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The login's `+OK` and when it is due, from that reply until the view opens (boxed in
/// the machine, issue 16: TRANSACTION keeps a pointer's room for them, not 40 bytes).
#[derive(Debug)]
struct LoginAnswer {
    /// The upstream's `+OK` to the login (with CRLF), not yet sent unless `login_answered`.
    reply: Vec<u8>,
    /// When it is due even though the scan still runs (`scan.early_answer_after`).
    at: Option<Instant>,
}

/// The evaluated listing during the quarantine copies (see [`Machine`]'s `scanned`).
#[derive(Debug)]
struct Scanned {
    entries: Vec<Entry>,
    /// Positions in `entries` to copy into the quarantine, in order.
    candidates: Vec<usize>,
    /// The next candidate to copy.
    next: usize,
}

/// Where the session is, and what the next input means.
#[derive(Debug)]
enum State {
    Connecting,
    /// AUTHORIZATION, waiting for a command.
    AuthIdle,
    /// STLS accepted: the client's TLS handshake.
    StartingTls,
    /// A command carrying credentials (a PASS or AUTH PLAIN line) waits for the throttle's
    /// answer: redacted in Debug output.
    Throttle(Secret),
    /// A single-line relay (USER, UTF8): the reply goes to the client.
    AuthRelay,
    /// `AUTH` without a mechanism: `+OK` is followed by a list.
    AuthMultiline,
    /// PASS / APOP sent.
    AuthLogin,
    /// A refused PASS had the scan's requests behind it: their replies are read and dropped.
    AuthDiscard(login_pipeline::Discard),
    /// A SASL exchange runs: the upstream's next reply.
    SaslReply,
    /// A SASL challenge was relayed: the client's response.
    SaslResponse,
    /// The exchange was cancelled (`*`): its reply is read and dropped.
    SaslCancel,
    /// QUIT in AUTHORIZATION (no UPDATE, RFC 1939 §6).
    AuthQuit,
    /// Per-user upstream: the named host is being resolved.
    RouteResolving(Box<Pending>),
    /// Per-user upstream: connecting to the checked addresses.
    RouteConnecting(Box<Pending>),
    /// Per-user upstream: popsift sent the client an empty challenge for this mechanism
    /// and waits for the first response (which names the server).
    SaslLocal(SaslMech),
    /// Per-user upstream: `AUTH MECH` was sent upstream; its `+` is answered with this
    /// rewritten first response (with CRLF).
    SaslIntro(Secret),
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

/// A SASL mechanism popsift can rewrite (RFC 4616 PLAIN, the LOGIN draft).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SaslMech {
    Plain,
    Login,
}

impl SaslMech {
    fn name(self) -> &'static str {
        match self {
            SaslMech::Plain => "PLAIN",
            SaslMech::Login => "LOGIN",
        }
    }
}

/// A login waiting for its upstream connection: where, and what to send once connected.
#[derive(Debug)]
struct Pending {
    route: Route,
    then: Then,
}

#[derive(Debug)]
enum Then {
    /// `USER name\r\n` with the real name.
    User(Vec<u8>),
    /// `AUTH MECH`, then this first response (base64, CRLF) at the server's `+`.
    Sasl { mech: SaslMech, first: Secret },
}

/// UPDATE (RFC 1939 §6): DELE batches not yet sent, the numbers whose replies are due,
/// and how many the server refused.
#[derive(Debug, Default)]
struct Deletes {
    batches: VecDeque<(Vec<u8>, Vec<u32>)>,
    awaiting: VecDeque<u32>,
    refused: usize,
}

/// The session's state machine (see the module doc).
pub struct Machine {
    /// Shared by the sessions of a listener (issue 16: a pointer in every idle session's
    /// future instead of a copy).
    settings: Arc<Settings>,
    state: State,
    actions: VecDeque<Action>,
    /// The time given with the latest input (in TRANSACTION and UPDATE the performer passes
    /// this one back: see [`Machine::keeps_time`]).
    now: Instant,
    /// Shared with the other sessions that got the same list (`net::upstream::share_caps`).
    caps: Option<std::sync::Arc<[Capability]>>,
    auth: Authorization,
    /// The name last given to the log ([`Action::User`]).
    logged_as: Option<Box<str>>,
    /// The login's `+OK` while the scan runs (see [`LoginAnswer`]).
    login_reply: Option<Box<LoginAnswer>>,
    login_answered: bool,
    /// The scan's first requests went out behind the PASS now outstanding (see
    /// [`crate::session::login_pipeline`]).
    login_requested: bool,
    /// The evaluated listing and its quarantine candidates, from evaluation until the view
    /// opens (boxed, issue 16: an idle session keeps a pointer's room, not 56 bytes).
    scanned: Option<Box<Scanned>>,
    pipeline: Option<Pipeline>,
    known: Known,
    /// UPDATE's deletions, made at QUIT (boxed, issue 16: an idle session keeps a
    /// pointer's room for them, not 72 bytes in the future it holds).
    deletes: Option<Box<Deletes>>,
    /// TLS is active on the client connection (implicit, or after STLS).
    secure: bool,
    /// Per-user upstream: the server this session is connected to, once a login named it.
    /// Boxed (issue 16): only per-user listeners set it, and it would take 56 bytes in the
    /// future of every idle session.
    routed_to: Option<Box<Upstream>>,
    /// The owner's "Not spam" overrides could not be read in time (see
    /// [`Machine::hold_condemnation`]): nothing is condemned at this login.
    condemn_held: bool,
    /// The upstream connection was dropped in AUTHORIZATION: replies to requests sent
    /// behind a refused PASS could not be read, so what it would say next belongs to no
    /// client command.
    upstream_dropped: bool,
    pub stats: Stats,
}

impl Machine {
    pub fn new(settings: Settings, now: Instant) -> Machine {
        Machine::with_settings(Arc::new(settings), now)
    }

    /// [`Machine::new`] with settings shared by the sessions of a listener.
    pub fn with_settings(settings: Arc<Settings>, now: Instant) -> Machine {
        let mut actions = VecDeque::new();
        let state = if settings.upstream_from_user.is_some() {
            // The server is not known before the login names it: popsift greets.
            actions.push_back(Action::ToClient(OWN_GREETING.to_vec()));
            actions.push_back(Action::Flush);
            State::AuthIdle
        } else {
            State::Connecting
        };
        Machine {
            settings,
            state,
            actions,
            now,
            caps: None,
            auth: Authorization::new(),
            logged_as: None,
            login_reply: None,
            login_answered: false,
            login_requested: false,
            scanned: None,
            pipeline: None,
            known: Known::default(),
            deletes: None,
            condemn_held: false,
            upstream_dropped: false,
            secure: false,
            routed_to: None,
            stats: Stats::default(),
        }
    }

    /// The next action. A need without data (a line to read) is returned again until its
    /// input is handled; one that carries data ([`Need::Evaluate`], [`Need::Quarantine`] …)
    /// is returned once, then [`Need::Pending`]. After [`Action::Close`], `Close` for ever.
    pub fn next_action(&mut self) -> Action {
        if let Some(a) = self.actions.pop_front() {
            return a;
        }
        let need = match &self.state {
            State::Connecting => Need::Connect,
            State::AuthIdle | State::SaslResponse | State::SaslLocal(_) => Need::ClientLine,
            State::StartingTls => Need::StartTls,
            State::Throttle(_) => Need::LoginAllowed,
            State::SaslIntro(_) => Need::UpstreamLine { phase: Phase::Login, lenient: false },
            State::RouteResolving(_) | State::RouteConnecting(_) => {
                // Returned once, when the state was entered (they carry data).
                return Action::Need(Need::Pending);
            }
            State::AuthRelay | State::AuthMultiline | State::AuthLogin | State::SaslReply => {
                Need::UpstreamLine { phase: Phase::Login, lenient: false }
            }
            State::SaslCancel => Need::UpstreamLine { phase: Phase::Login, lenient: false },
            State::AuthQuit | State::Refusing => Need::UpstreamLine { phase: Phase::Update, lenient: true },
            State::Scanning => Need::Scan { pipelining: self.scan_pipelining(), requested: self.login_requested },
            State::AuthDiscard(d) => match d.due() {
                login_pipeline::Due::Body => Need::UpstreamBody { phase: Phase::Login },
                _ => Need::UpstreamLine { phase: Phase::Login, lenient: true },
            },
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

    /// The next action if it is client output ([`Action::ToClient`], [`Action::Flush`]),
    /// else `None` and nothing is taken: what a performer busy with a need (the login's
    /// work) writes after an [`Input::Tick`].
    pub fn next_client_output(&mut self) -> Option<Action> {
        match self.actions.front() {
            Some(Action::ToClient(_) | Action::Flush) => self.actions.pop_front(),
            _ => None,
        }
    }

    /// Whether [`Machine::handle`] uses the time it is given. Only the login does (the early
    /// answer's due time, see `answer_early_if_due`); in TRANSACTION and UPDATE no input's
    /// time matters, so the performer need not read the clock per command (issue 16: clock
    /// reads were a tenth of the session's user time after a reply was written) and passes
    /// [`Machine::now`] instead.
    pub fn keeps_time(&self) -> bool {
        !matches!(
            self.state,
            State::TxPlanning
                | State::TxWaiting
                | State::TxRelay
                | State::TxFetch(_)
                | State::TxCapaStatus
                | State::TxCapaBody
                | State::Update
                | State::UpdateQuit
                | State::Closed
        )
    }

    /// The time given with the last input handled.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the machine wants an [`Input::Tick`] even if nothing else happens: while the
    /// login's work runs (scan, evaluation, quarantine copies) and its `+OK` is not out yet.
    pub fn wake_at(&self) -> Option<Instant> {
        self.login_reply.as_ref().and_then(|l| l.at).filter(|_| !self.login_answered && self.login_work_running())
    }

    /// Between a successful login and the view: the states whose work the performer does
    /// while the early login answer may fall due.
    fn login_work_running(&self) -> bool {
        matches!(self.state, State::Scanning | State::Evaluating | State::QuarantineFolder | State::Quarantining)
    }

    /// TLS is active on the client connection from the start (implicit TLS): STLS is not
    /// offered. After STLS the machine learns it from [`Input::TlsStarted`].
    pub fn tls_started(&mut self) {
        self.secure = true;
    }

    /// The review page's overrides for this mailbox could not be read in time
    /// (`timeouts.history_lookup`) or at all (the store failed): one of them may be a
    /// "Not spam" for a message the rules
    /// condemn. Like dry run for condemnation only: no quarantine copy, no DELE at this
    /// login; hidden messages stay hidden. Call before [`Input::Evaluated`].
    pub fn hold_condemnation(&mut self) {
        self.condemn_held = true;
    }

    /// The client's QUIT has been read: its EOF no longer ends the session early.
    pub fn quit_queued(&self) -> bool {
        self.pipeline.as_ref().is_some_and(Pipeline::quit_planned)
    }

    /// TRANSACTION with no other command queued or in flight and no action queued: what is
    /// being relayed now is the last output before the client's next command (issue 16:
    /// the driver then writes a body straight from the upstream's read buffer).
    pub fn drained(&self) -> bool {
        self.actions.is_empty() && self.pipeline.as_ref().is_some_and(Pipeline::drained)
    }

    /// The mailbox the login opens, when popsift knows it for sure (see `session::auth`).
    pub fn login_user(&self) -> Option<&str> {
        self.auth.login_user()
    }

    /// The name the last USER or APOP gave (for the log).
    pub fn named(&self) -> Option<&str> {
        self.auth.named()
    }

    /// The view the client sees, once TRANSACTION has begun.
    pub fn view(&self) -> Option<&MailboxView> {
        self.pipeline.as_ref().map(Pipeline::view)
    }

    /// Idle memory (issue 16): the client has been silent for a while, so the room the
    /// last commands left in the machine's queues is given back (only when empty).
    pub fn release_idle(&mut self) {
        if self.actions.is_empty() {
            self.actions = VecDeque::new();
        }
        if let Some(p) = self.pipeline.as_mut() {
            p.release_idle();
        }
    }

    /// Gives back a buffer the machine handed out (an [`Action::ToClient`] or
    /// [`Action::ToUpstream`] whose bytes were written or copied), for reuse by the next
    /// command's reply, status line or upstream command (issue 16: a command answered one at
    /// a time then allocates no buffer). Only TRANSACTION keeps them; dropped otherwise.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if let Some(p) = self.pipeline.as_mut() {
            p.recycle(buf);
        }
    }

    /// An empty buffer to carry the next input's line ([`Input::ClientLine`],
    /// [`Input::UpstreamLine`]): a recycled one in TRANSACTION (see [`Machine::recycle`]).
    pub fn spare(&mut self) -> Vec<u8> {
        self.pipeline.as_mut().map(Pipeline::spare).unwrap_or_default()
    }

    /// The session is in AUTHORIZATION (before a successful login).
    pub fn authorizing(&self) -> bool {
        matches!(
            self.state,
            State::Connecting
                | State::AuthIdle
                | State::StartingTls
                | State::Throttle(_)
                | State::AuthRelay
                | State::AuthMultiline
                | State::AuthLogin
                | State::SaslReply
                | State::SaslResponse
                | State::SaslCancel
                | State::AuthQuit
                | State::RouteResolving(_)
                | State::RouteConnecting(_)
                | State::SaslLocal(_)
                | State::SaslIntro(_)
                | State::AuthDiscard(_)
        )
    }

    fn scan_pipelining(&self) -> bool {
        self.settings.scan_pipelining && self.upstream_pipelines()
    }

    /// RFC 2449 §6.6: the upstream announced PIPELINING (derived from its CAPA, which is
    /// read once at connect).
    fn upstream_pipelines(&self) -> bool {
        capa::has(self.caps.as_deref(), "PIPELINING")
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
            if self.login_work_running() {
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
            (State::AuthIdle, Input::ClientLine(line))
                if self.upstream_dropped && self.settings.upstream_from_user.is_none() =>
            {
                self.upstream_gone(&line)
            }
            (State::AuthIdle, Input::ClientLine(line)) => self.gated_command(line),
            (State::StartingTls, Input::TlsStarted) => {
                self.secure = true;
                State::AuthIdle
            }
            (State::Throttle(line), Input::LoginAllowed(true)) => self.auth_command(line.expose()),
            (State::Throttle(_), Input::LoginAllowed(false)) => {
                let user = self.auth.named().map(str::to_string);
                self.refuse_login(LoginFailure::Throttled, user, THROTTLED)
            }
            (State::RouteResolving(p), Input::Resolved(r)) => self.resolved(*p, r),
            (State::RouteConnecting(p), Input::Connected { caps, .. }) => {
                // The server's greeting is not relayed: the client has had popsift's.
                self.caps = caps;
                self.routed_to = Some(Box::new(p.route.upstream.clone()));
                self.send_then(p.then)
            }
            (State::SaslLocal(mech), Input::ClientLine(line)) => {
                if line == b"*" {
                    // RFC 5034 §4: the client cancelled.
                    self.reply(err("authentication cancelled"));
                    State::AuthIdle
                } else {
                    self.sasl_first(mech, &line)
                }
            }
            (State::SaslIntro(first), Input::UpstreamLine(r)) => {
                if Status::parse(&r).is_some_and(|s| s.kind == StatusKind::Continue) {
                    self.up(first.expose().to_vec(), Phase::Login);
                    State::SaslReply
                } else {
                    self.login_reply(r)
                }
            }
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
            // Replies to the requests sent behind a refused PASS: never shown to the client.
            // A server that closed instead (Dovecot after `-ERR [IN-USE]`) has refused the
            // login, nothing more: the client has its `-ERR`, and meets the closed upstream
            // at its next command as it would have without the requests (QUIT: `+OK`).
            //
            // `lenient` also turns a timeout or a non-status line into `UpstreamLineFailed`
            // while the connection stays open: the leftover replies to the scan's requests
            // would then answer the client's next commands. So the connection is dropped
            // either way; a per-user login may name its server again (a new connection), a
            // fixed upstream answers QUIT and refuses the rest (`upstream_gone`).
            (State::AuthDiscard(_), Input::UpstreamLineFailed) => {
                self.emit(Action::DropUpstream);
                self.upstream_dropped = true;
                self.routed_to = None;
                State::AuthIdle
            }
            (State::AuthDiscard(d), Input::UpstreamLine(r)) => self.discarded(d.status(is_ok(&r))),
            (State::AuthDiscard(d), Input::UpstreamBody(_)) => self.discarded(d.body_read()),
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
            (State::Evaluating, Input::Evaluated(mut entries)) => {
                if self.condemn_held {
                    hold_condemned(&mut entries);
                }
                let candidates = quarantine_candidates(&entries, self.settings.dry_run || self.condemn_held);
                let none = candidates.is_empty();
                self.scanned = Some(Box::new(Scanned { entries, candidates, next: 0 }));
                if none {
                    self.open_view()
                } else {
                    self.queue_need(Need::QuarantineFolder);
                    State::QuarantineFolder
                }
            }
            (State::QuarantineFolder, Input::QuarantineFolder) => self.next_quarantine(),
            (State::Quarantining, Input::Quarantined(result)) => {
                let show_on_failure = self.settings.on_failure == OnFailure::Show;
                let sc = self.scanned.as_deref_mut();
                let i = sc.as_ref().and_then(|sc| sc.candidates.get(sc.next.wrapping_sub(1)).copied());
                if let Some(e) = i.and_then(|i| sc.and_then(|sc| sc.entries.get_mut(i))) {
                    match result {
                        Quarantined::Stored | Quarantined::AlreadyStored => e.disposition = Disposition::Condemned,
                        Quarantined::Failed => {
                            if show_on_failure {
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
                    p.recycle(line);
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
                    self.stats.retrieved = self.stats.retrieved.saturating_add(1);
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
                let q = self.deletes.get_or_insert_with(Box::default);
                let n = q.awaiting.pop_front().unwrap_or_default();
                if is_ok(&r) {
                    self.stats.deleted_upstream = self.stats.deleted_upstream.saturating_add(1);
                } else {
                    q.refused += 1;
                    tracing::warn!(msg = n, reply = %String::from_utf8_lossy(&r), "upstream refused DELE; the message stays on the server");
                }
                self.update_advance()
            }
            (State::UpdateQuit, Input::UpstreamLine(mut r)) => {
                let ok = is_ok(&r);
                r.extend_from_slice(b"\r\n");
                // The client's answer goes out first: the store's clean-up never delays it.
                self.reply(r);
                if ok {
                    self.emit(Action::Updated);
                }
                State::Closed
            }
            (state, input) => {
                // Credentials never reach the log: states hold them as `Secret`; a client
                // line may be a PASS, so only its kind is shown.
                let input = match &input {
                    Input::ClientLine(_) => "ClientLine(<redacted>)".to_string(),
                    other => format!("{other:?}"),
                };
                tracing::debug!(?state, %input, "input not expected in this state; ignored");
                state
            }
        };
    }

    /// Gives the log the identity the AUTHORIZATION machine knows (once per change). The
    /// name itself stays in `auth` only ([`Machine::named`], [`Machine::login_user`]): no
    /// copy for the stats (issue 16).
    fn note_identity(&mut self) {
        let Some(shown) = self.auth.login_user().or(self.auth.named()) else { return };
        if self.logged_as.as_deref() != Some(shown) {
            let name = shown.to_string();
            self.logged_as = Some(shown.into());
            self.emit(Action::User(name));
        }
    }

    /// AUTHORIZATION with the upstream dropped: QUIT ends the session as it would have
    /// (no UPDATE in AUTHORIZATION, RFC 1939 §6); anything else gets `-ERR [SYS/TEMP]` and
    /// the session ends (the client reconnects).
    fn upstream_gone(&mut self, line: &[u8]) -> State {
        if matches!(command::parse(line), Ok(Command::Quit)) {
            self.reply(b"+OK bye\r\n".to_vec());
        } else {
            self.reply(err("[SYS/TEMP] upstream server connection lost; reconnect and try again"));
        }
        State::Closed
    }

    /// AUTHORIZATION: the edge's say first ([`crate::session::gate`]), then the command.
    fn gated_command(&mut self, line: Vec<u8>) -> State {
        let Ok(cmd) = command::parse(&line) else { return self.auth_command(&line) };
        match gate::gate(&cmd, self.settings.edge, self.secure) {
            Gate::Pass => self.auth_command(&line),
            Gate::Reply(b) => {
                self.reply(b.to_vec());
                State::AuthIdle
            }
            Gate::StartTls => {
                self.emit(Action::ToClient(STLS_OK.to_vec()));
                State::StartingTls
            }
            Gate::Refuse { reply, why } => {
                let user = match &cmd {
                    Command::User(name) => Some(name.clone()),
                    _ => self.auth.named().map(str::to_string),
                };
                self.refuse_login(why, user, reply)
            }
            Gate::CheckThrottle => State::Throttle(Secret::new(line)),
        }
    }

    /// A login popsift refuses itself: counted as failed, logged by the performer, answered.
    fn refuse_login(&mut self, why: LoginFailure, user: Option<String>, reply: &[u8]) -> State {
        self.stats.auth_failed = true;
        self.emit(Action::LoginFailed { why, user, upstream: None });
        self.reply(reply.to_vec());
        State::AuthIdle
    }

    /// AUTHORIZATION (RFC 1939 §4): one client command.
    fn auth_command(&mut self, line: &[u8]) -> State {
        if let Some(from_user) = self.settings.upstream_from_user.clone() {
            if let Some(state) = self.routed_command(&from_user, line) {
                return state;
            }
        }
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
            AuthPlan::Login(mut l) => {
                // Issue 16: the scan's first requests ride along with PASS when the server
                // pipelines (see `session::login_pipeline`).
                self.login_requested = self.scan_pipelining() && login_pipeline::is_pass(&l);
                if self.login_requested {
                    l.extend_from_slice(login_pipeline::REQUESTS);
                }
                self.up(l, Phase::Login);
                State::AuthLogin
            }
            AuthPlan::Sasl(l) => {
                self.up(l, Phase::Login);
                State::SaslReply
            }
            AuthPlan::Capa => {
                let mut list = capa::rewrite(self.caps.as_deref(), Known { top: false, uidl: false, logged_in: false });
                capa::edge_adjust(&mut list, self.settings.edge, self.secure, false);
                self.reply(capa_codec::encode(&list));
                State::AuthIdle
            }
            AuthPlan::Quit => {
                self.up(b"QUIT\r\n".to_vec(), Phase::Update);
                State::AuthQuit
            }
        }
    }

    /// Per-user upstream: the commands popsift answers or rewrites itself; `None` for the
    /// rest (planned as usual once connected; refused before).
    fn routed_command(&mut self, from_user: &UpstreamFromUser, line: &[u8]) -> Option<State> {
        let connected = self.routed_to.is_some();
        let Ok(cmd) = command::parse(line) else { return None };
        let state = match cmd {
            Command::User(name) => match from_user.route(&name) {
                Ok(route) => {
                    let then = Then::User(format!("USER {}\r\n", route.user).into_bytes());
                    self.route_to(route, then)
                }
                Err(e) => self.refuse_route(Some(&name), None, &e),
            },
            Command::Apop { .. } => {
                self.reply(NOT_WITH_UPSTREAM_FROM_USER.to_vec());
                State::AuthIdle
            }
            Command::Auth { mechanism: None, .. } => {
                // RFC 5034 §4: AUTH without a mechanism lists those offered.
                self.reply(b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n".to_vec());
                State::AuthIdle
            }
            Command::Auth { mechanism: Some(m), initial } => {
                let mech = match m.to_ascii_uppercase().as_str() {
                    "PLAIN" => SaslMech::Plain,
                    "LOGIN" => SaslMech::Login,
                    _ => {
                        self.reply(NOT_WITH_UPSTREAM_FROM_USER.to_vec());
                        return Some(State::AuthIdle);
                    }
                };
                match initial {
                    Some(i) => self.sasl_first(mech, i.expose()),
                    None => {
                        // PLAIN: an empty challenge; LOGIN: "Username:" (the draft's prompt).
                        let prompt: &[u8] = if mech == SaslMech::Plain { b"+ \r\n" } else { b"+ VXNlcm5hbWU6\r\n" };
                        self.reply(prompt.to_vec());
                        State::SaslLocal(mech)
                    }
                }
            }
            Command::Capa => {
                // Only what popsift can honour before the server is known (RFC 2449 §5);
                // no PIPELINING: AUTHORIZATION here is one command at a time.
                let mut list = vec![
                    Capability::new("USER", ""),
                    Capability::new("SASL", "PLAIN LOGIN"),
                    Capability::new("RESP-CODES", ""),
                    Capability::new("AUTH-RESP-CODE", ""),
                ];
                capa::edge_adjust(&mut list, self.settings.edge, self.secure, false);
                self.reply(capa_codec::encode(&list));
                State::AuthIdle
            }
            Command::Quit if !connected => {
                self.reply(b"+OK popsift signing off\r\n".to_vec());
                State::Closed
            }
            Command::Quit => return None,
            _ if !connected => {
                let planned = self.auth.command(line);
                match planned {
                    AuthPlan::Reply(b) => self.reply(b),
                    _ => self.reply(err(format!(
                        "[AUTH] log in first with USER HOST{sep}USER (or HOST{sep}PORT{sep}USER)",
                        sep = from_user.separator
                    ))),
                }
                State::AuthIdle
            }
            _ => return None,
        };
        Some(state)
    }

    /// Per-user upstream: the first SASL response (base64) names the server; it is
    /// rewritten to carry the real user name (PLAIN's authzid too when it names the server).
    fn sasl_first(&mut self, mech: SaslMech, response: &[u8]) -> State {
        use base64::Engine;
        let Some(from_user) = self.settings.upstream_from_user.clone() else { return State::AuthIdle };
        let b64 = base64::engine::general_purpose::STANDARD;
        let invalid = |m: &mut Machine| {
            m.reply(err(INVALID_SASL_NAME));
            State::AuthIdle
        };
        let Ok(decoded) = b64.decode(response) else { return invalid(self) };
        let text = |b: &[u8]| -> Option<String> {
            if b.iter().any(|&c| c < 0x20 || c == 0x7f) {
                return None;
            }
            String::from_utf8(b.to_vec()).ok()
        };
        let (name, authzid, passwd) = match mech {
            SaslMech::Login => (decoded.as_slice(), None, None),
            SaslMech::Plain => {
                let mut parts = decoded.splitn(3, |&b| b == 0);
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(z), Some(c), Some(p)) => (c, Some(z), Some(p)),
                    _ => return invalid(self),
                }
            }
        };
        let Some(name) = text(name).filter(|n| !n.is_empty()) else { return invalid(self) };
        let route = match from_user.route(&name) {
            Ok(r) => r,
            Err(e) => return self.refuse_route(Some(&name), None, &e),
        };
        let rewritten = match (authzid, passwd) {
            (Some(z), Some(p)) => {
                let Some(z) = text(z) else { return invalid(self) };
                // An authzid naming the same server is rewritten; one naming another is
                // refused; a plain one (no separator) is the server's business.
                let z = if z.is_empty() || !z.contains(from_user.separator.as_str()) {
                    z
                } else {
                    match from_user.route(&z) {
                        Ok(rz) if rz.upstream == route.upstream => rz.user,
                        _ => return invalid(self),
                    }
                };
                let mut raw = Vec::with_capacity(z.len() + route.user.len() + p.len() + 2);
                raw.extend_from_slice(z.as_bytes());
                raw.push(0);
                raw.extend_from_slice(route.user.as_bytes());
                raw.push(0);
                raw.extend_from_slice(p);
                raw
            }
            _ => route.user.as_bytes().to_vec(),
        };
        let mut first = b64.encode(rewritten).into_bytes();
        first.extend_from_slice(b"\r\n");
        self.route_to(route, Then::Sasl { mech, first: Secret::new(first) })
    }

    /// Goes to the route's server: at once when this session is already connected to it,
    /// else after resolving and checking its addresses.
    fn route_to(&mut self, route: Route, then: Then) -> State {
        match &self.routed_to {
            Some(up) if **up == route.upstream => self.send_then(then),
            Some(_) => {
                self.reply(err("[AUTH] this session is connected to another mail server; reconnect to log in there"));
                State::AuthIdle
            }
            None => {
                let (host, port) = (route.upstream.host.clone(), route.upstream.port);
                self.queue_need(Need::Resolve { host, port });
                State::RouteResolving(Box::new(Pending { route, then }))
            }
        }
    }

    /// The named host resolved: connect only to these addresses, if they may be reached.
    fn resolved(&mut self, p: Pending, r: Result<Vec<std::net::SocketAddr>, String>) -> State {
        let addrs = match r {
            Ok(a) => a,
            Err(reason) => {
                tracing::info!(host = %p.route.upstream.host, %reason, "per-user upstream: name not resolved");
                Vec::new()
            }
        };
        if let Err(e) = UpstreamFromUser::addresses_allowed(&p.route, &addrs) {
            let shown = p.route.upstream.display();
            return self.refuse_route(Some(&p.route.user), Some(shown), &e);
        }
        self.queue_need(Need::ConnectTo { upstream: Box::new(p.route.upstream.clone()), addrs });
        State::RouteConnecting(Box::new(p))
    }

    /// Sends what the login started, now that its server is connected.
    fn send_then(&mut self, then: Then) -> State {
        match then {
            Then::User(line) => {
                // The AUTHORIZATION tracker sees the real name (whose mailbox it is).
                self.auth.command(line.strip_suffix(b"\r\n").unwrap_or(&line));
                self.note_identity();
                self.up(line, Phase::Login);
                State::AuthRelay
            }
            Then::Sasl { mech, first } => {
                let first = first.expose();
                let start = format!("AUTH {}", mech.name());
                self.auth.command(start.as_bytes());
                let _ = self.auth.sasl_response(first.strip_suffix(b"\r\n").unwrap_or(first));
                self.note_identity();
                let mut l = start.into_bytes();
                // RFC 5034 §4: a server that lists SASL takes the initial response with the
                // command (no round trip beyond the upstream's own), up to the 255-octet
                // line limit; otherwise it is sent at the server's `+`.
                if mech == SaslMech::Plain
                    && capa::has(self.caps.as_deref(), "SASL")
                    && l.len() + 1 + first.len() <= MAX_INITIAL_RESPONSE_LINE
                {
                    l.push(b' ');
                    l.extend_from_slice(first);
                    self.up(l, Phase::Login);
                    return State::SaslReply;
                }
                l.extend_from_slice(b"\r\n");
                self.up(l, Phase::Login);
                State::SaslIntro(Secret::new(first))
            }
        }
    }

    /// A login naming a server popsift will not contact: logged, answered `-ERR [AUTH]`.
    fn refuse_route(&mut self, user: Option<&str>, upstream: Option<String>, e: &RouteError) -> State {
        self.stats.auth_failed = true;
        let upstream = match e {
            RouteError::NotAllowed(named) => Some(named.clone()),
            _ => upstream,
        };
        let user = user.map(|u| u.chars().filter(|c| !c.is_control()).take(256).collect());
        self.emit(Action::LoginFailed { why: LoginFailure::UpstreamNotAllowed, user, upstream });
        self.reply(err(format!("[AUTH] {e}")));
        State::AuthIdle
    }

    /// The upstream's reply to PASS / APOP / AUTH: `+OK` starts the login scan; the reply
    /// waits for it (or for `early_answer_after`).
    fn login_reply(&mut self, mut r: Vec<u8>) -> State {
        let ok = is_ok(&r);
        r.extend_from_slice(b"\r\n");
        if !ok {
            self.stats.auth_failed = true;
            self.emit(Action::LoginRefused(r.clone()));
            self.reply(r);
            if std::mem::take(&mut self.login_requested) {
                return State::AuthDiscard(login_pipeline::Discard::new());
            }
            return State::AuthIdle;
        }
        self.stats.logged_in = true;
        let at = self.settings.early_answer_after.map(|d| self.now + d);
        self.login_reply = Some(Box::new(LoginAnswer { reply: r, at }));
        State::Scanning
    }

    /// After one reply to the requests behind a refused PASS was dropped: the next, or back
    /// to AUTHORIZATION.
    fn discarded(&mut self, d: login_pipeline::Discard) -> State {
        match d.due() {
            login_pipeline::Due::Done => State::AuthIdle,
            _ => State::AuthDiscard(d),
        }
    }

    /// Sends the login `+OK` now if the scan has run past `scan.early_answer_after`.
    fn answer_early_if_due(&mut self) {
        let Some(login) = self.login_reply.as_deref() else { return };
        if self.login_answered || !login.at.is_some_and(|at| self.now >= at) {
            return;
        }
        let r = login.reply.clone();
        self.login_answered = true;
        self.reply(r);
        tracing::info!("scan still running: login answered early; the first command waits for the scan");
    }

    fn listed(&mut self, outcome: Box<ScanOutcome>) -> State {
        if !outcome.top_supported && !outcome.items.is_empty() && self.settings.without_top == WithoutTop::Refuse {
            // When the login was answered early, this `-ERR` answers the client's first
            // command; the session ends rather than fall back into AUTHORIZATION.
            tracing::warn!(
                "upstream does not support TOP; refusing the login as configured (scan.without_top: refuse)"
            );
            self.up(b"QUIT\r\n".to_vec(), Phase::Update);
            return State::Refusing;
        }
        self.queue_need(Need::Evaluate(outcome));
        State::Evaluating
    }

    fn next_quarantine(&mut self) -> State {
        self.answer_early_if_due();
        let Some(sc) = self.scanned.as_deref_mut() else { return self.open_view() };
        let Some(&i) = sc.candidates.get(sc.next) else {
            return self.open_view();
        };
        sc.next += 1;
        match sc.entries.get(i).map(|e| Box::new(e.clone())) {
            Some(e) => {
                self.queue_need(Need::Quarantine(e));
                State::Quarantining
            }
            None => self.next_quarantine(),
        }
    }

    /// The view is complete: answer the login (unless answered early) and enter TRANSACTION.
    fn open_view(&mut self) -> State {
        let entries = self.scanned.take().map(|sc| sc.entries).unwrap_or_default();
        let view = MailboxView::new(&entries);
        let (_, hidden, condemned) = view.counts();
        self.stats.messages = count(view.len());
        self.stats.hidden = count(hidden);
        self.stats.condemned = count(condemned);
        self.stats.tagged = count(
            entries
                .iter()
                .filter(|e| e.disposition == Disposition::Visible && e.verdict().is_some_and(|v| v.spam))
                .count(),
        );
        self.known =
            Known { top: entries.iter().any(|e| e.evaluated.is_some()), uidl: view.all_have_uidl(), logged_in: true };
        self.pipeline = Some(Pipeline::new(view, self.upstream_pipelines()));
        self.emit(Action::ViewReady(entries));
        let login = self.login_reply.take();
        if !self.login_answered {
            self.login_answered = true;
            self.reply(login.map(|l| l.reply).unwrap_or_default());
        }
        // After the login's `+OK` is flushed: queueing the decision history never delays the
        // client's first answer (issue 13).
        self.emit(Action::RecordHistory);
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
            self.emit(Action::ToUpstream {
                bytes: ahead.bytes,
                phase: Phase::Relay,
                check_quiet: ahead.upstream_was_idle,
            });
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
        let window = if self.upstream_pipelines() { self.settings.window.max(1) } else { 1 };
        let q = self.deletes.get_or_insert_with(Box::default);
        q.batches = dele_batches(deletions, window).map(|(c, n)| (c, n.to_vec())).collect();
        q.awaiting.clear();
        self.update_send(true)
    }

    fn update_send(&mut self, first: bool) -> State {
        let q = self.deletes.get_or_insert_with(Box::default);
        match q.batches.pop_front() {
            Some((bytes, numbers)) => {
                q.awaiting = numbers.into();
                self.emit(Action::ToUpstream { bytes, phase: Phase::Update, check_quiet: first });
                State::Update
            }
            None => {
                if q.refused > 0 {
                    tracing::warn!(failed = q.refused, "some deletions were refused by the server");
                }
                self.emit(Action::ToUpstream { bytes: b"QUIT\r\n".to_vec(), phase: Phase::Update, check_quiet: first });
                State::UpdateQuit
            }
        }
    }

    fn update_advance(&mut self) -> State {
        if !self.deletes.as_ref().is_some_and(|q| !q.awaiting.is_empty()) {
            self.update_send(false)
        } else {
            State::Update
        }
    }
}

fn is_ok(line: &[u8]) -> bool {
    Status::parse(line).is_some_and(|s| s.is_ok())
}

#[cfg(test)]
mod tests {
    //! `C:` (client) and `S:` (upstream) lines in, what popsift says to each out: no
    //! sockets, no sleeps; time is an input.
    use super::*;
    use crate::rules::{Action as RuleAction, Verdict};
    use crate::session::evaluated::Evaluated;
    use crate::session::verdicts::ScanItem;

    fn settings() -> Settings {
        Settings {
            early_answer_after: Some(Duration::from_secs(20)),
            scan_pipelining: true,
            window: 8,
            without_top: WithoutTop::Pass,
            on_failure: OnFailure::Hide,
            dry_run: false,
            edge: capa::EdgeCapa::default(),
            upstream_from_user: None,
        }
    }

    /// The machine with everything it said to the client (`>` lines are bodies relayed) and
    /// to the upstream.
    struct Sim {
        m: Machine,
        t0: Instant,
        now: Instant,
        client: String,
        upstream: String,
        /// Every upstream write flagged "check the upstream is quiet first".
        quiet_checks: usize,
        /// The answer to [`Need::LoginAllowed`] (the edge's throttle).
        throttled: bool,
        /// Failed logins the performer was told to log.
        login_failures: Vec<LoginFailure>,
        /// Client writes, flushes and view-ready signals, in the order performed.
        order: Vec<String>,
    }

    impl Sim {
        fn new(s: Settings) -> Sim {
            let t0 = Instant::now();
            Sim {
                m: Machine::new(s, t0),
                t0,
                now: t0,
                client: String::new(),
                upstream: String::new(),
                quiet_checks: 0,
                throttled: false,
                login_failures: Vec::new(),
                order: Vec::new(),
            }
        }

        /// Performs actions until the machine needs an input; returns that need.
        fn run(&mut self) -> Need {
            loop {
                match self.m.next_action() {
                    Action::Need(Need::LoginAllowed) => self.feed(Input::LoginAllowed(!self.throttled)),
                    Action::Need(n) => return n,
                    Action::Close => return Need::Pending,
                    other => self.perform(other),
                }
            }
        }

        fn perform(&mut self, a: Action) {
            match a {
                Action::ToClient(b) => {
                    self.client.push_str(&String::from_utf8_lossy(&b));
                    self.order.push(String::from_utf8_lossy(&b).trim_end().to_string());
                }
                Action::Flush => self.order.push("flush".into()),
                Action::ViewReady(_) => self.order.push("view ready".into()),
                Action::RecordHistory => self.order.push("record".into()),
                Action::ToUpstream { bytes, check_quiet, .. } => {
                    self.quiet_checks += usize::from(check_quiet);
                    self.upstream.push_str(&String::from_utf8_lossy(&bytes));
                }
                Action::RelayBody { rewrite, .. } => {
                    self.client.push_str(if rewrite.is_some() { "<tagged body>\r\n" } else { "<body>\r\n" })
                }
                Action::LoginFailed { why, .. } => self.login_failures.push(why),
                Action::DropUpstream => self.upstream.push_str("<dropped>"),
                _ => {}
            }
        }

        /// Handles the input and performs what it queued, up to the next need.
        fn feed(&mut self, input: Input) {
            self.m.handle(self.now, input);
            while self.m.actions.front().is_some_and(|a| !matches!(a, Action::Need(_) | Action::Close)) {
                if let Some(a) = self.m.actions.pop_front() {
                    self.perform(a);
                }
            }
            // The throttle's answer is the performer's at once (no I/O): as `throttled` says.
            if self.m.actions.is_empty() && matches!(self.m.state, State::Throttle(_)) {
                self.feed(Input::LoginAllowed(!self.throttled));
            }
        }

        fn take_client(&mut self) -> String {
            std::mem::take(&mut self.client)
        }

        fn take_upstream(&mut self) -> String {
            std::mem::take(&mut self.upstream)
        }

        /// `C:` line: the machine must be waiting for a client line.
        fn c(&mut self, line: &str) {
            match self.run() {
                Need::ClientLine | Need::BufferedClientLine { .. } => self.feed(Input::ClientLine(line.into())),
                Need::ClientInput => {
                    self.feed(Input::ClientInput);
                    self.c(line)
                }
                other => panic!("C: {line}: machine needs {other:?}"),
            }
        }

        /// `S:` status line: the machine must be waiting for an upstream line.
        fn s(&mut self, line: &str) {
            match self.run() {
                Need::UpstreamLine { .. } => self.feed(Input::UpstreamLine(line.into())),
                Need::BufferedClientLine { .. } => {
                    self.feed(Input::NoClientLine);
                    self.s(line)
                }
                other => panic!("S: {line}: machine needs {other:?}"),
            }
        }

        /// Nothing more buffered from the client: answer what is queued.
        fn idle(&mut self) -> Need {
            loop {
                match self.run() {
                    Need::BufferedClientLine { .. } => self.feed(Input::NoClientLine),
                    other => return other,
                }
            }
        }

        fn connect(&mut self, caps: &[&str]) {
            assert!(matches!(self.run(), Need::Connect));
            let caps = caps.iter().map(|c| Capability::new(c, "")).collect();
            self.feed(Input::Connected { greeting: b"+OK ready".to_vec(), caps: Some(caps) });
            assert_eq!(self.take_client(), "+OK ready\r\n");
        }

        /// USER/PASS accepted by the upstream: the machine asks for the scan.
        fn login(&mut self) {
            self.c("USER alice");
            assert_eq!(self.take_upstream(), "USER alice\r\n");
            self.s("+OK");
            assert_eq!(self.take_client(), "+OK\r\n");
            self.c("PASS secret");
            let sent = self.take_upstream();
            // Issue 16: with a pipelining server the scan's requests ride along.
            let requested = self.m.scan_pipelining();
            let tail =
                if requested { String::from_utf8_lossy(login_pipeline::REQUESTS).into_owned() } else { String::new() };
            assert_eq!(sent, format!("PASS secret\r\n{tail}"));
            self.s("+OK logged in");
            assert!(matches!(self.run(), Need::Scan { requested: r, .. } if r == requested));
        }

        /// The scan found `entries`; quarantine copies end as `copies` says, in order.
        fn scanned(&mut self, entries: Vec<Entry>, copies: &[Quarantined]) {
            let items = entries
                .iter()
                .map(|e| ScanItem {
                    upstream: e.upstream,
                    size: e.upstream_size,
                    uidl: e.uidl.clone(),
                    memo: None,
                    evaluated: e.evaluated.clone(),
                })
                .collect();
            self.feed(Input::Listed(Box::new(ScanOutcome { items, top_supported: true, ..Default::default() })));
            assert!(matches!(self.run(), Need::Evaluate(_)));
            self.feed(Input::Evaluated(entries));
            let mut copies = copies.iter();
            loop {
                match self.run() {
                    Need::QuarantineFolder => self.feed(Input::QuarantineFolder),
                    Need::Quarantine(_) => self.feed(Input::Quarantined(*copies.next().expect("a copy result"))),
                    _ => break,
                }
            }
            assert!(copies.next().is_none(), "every quarantine copy was asked for");
        }
    }

    fn entry(n: u32, action: Option<RuleAction>) -> Entry {
        let evaluated = action.map(|a| {
            Arc::new(Evaluated {
                verdict: Verdict { score: 10.0, threshold: 5.0, spam: true, action: Some(a), rules: vec!["r".into()] },
                rewrite: None,
                about: Default::default(),
            })
        });
        let disposition = match action {
            Some(RuleAction::Delete) => Disposition::Condemned,
            Some(RuleAction::Hide | RuleAction::Quarantine) => Disposition::Hidden,
            _ => Disposition::Visible,
        };
        Entry {
            upstream: n,
            upstream_size: 100 * u64::from(n),
            size: 100 * u64::from(n),
            uidl: Some(format!("u{n}").into()),
            disposition,
            rewrite: None,
            evaluated,
            released: None,
        }
    }

    #[test]
    fn a_whole_session_deletes_the_condemned_only_after_quit() {
        let mut s = Sim::new(settings());
        s.connect(&["TOP", "UIDL"]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, Some(RuleAction::Delete)), entry(3, None)], &[]);
        assert_eq!(s.take_client(), "+OK logged in\r\n");
        assert_eq!(s.m.stats.condemned, 1);
        s.c("STAT");
        s.idle();
        assert_eq!(s.take_client(), "+OK 2 400\r\n");
        s.c("RETR 2");
        s.s("+OK 300 octets");
        assert_eq!(s.take_upstream(), "RETR 3\r\n");
        assert_eq!(s.take_client(), "+OK 300 octets\r\n<body>\r\n");
        s.c("DELE 1");
        s.c("NOOP");
        s.s("+OK");
        assert_eq!(s.take_client(), "+OK message 1 deleted\r\n+OK\r\n");
        assert!(!s.take_upstream().contains("DELE"), "nothing is deleted before QUIT");
        s.c("QUIT");
        // UPDATE (RFC 1939 §6): the client's deletion and the condemned message.
        assert_eq!(s.take_upstream(), "DELE 1\r\n", "one at a time without upstream pipelining");
        s.s("+OK");
        s.s("+OK");
        assert_eq!(s.take_upstream(), "DELE 2\r\nQUIT\r\n");
        s.s("+OK bye");
        assert_eq!(s.take_client(), "+OK bye\r\n");
        assert!(matches!(s.m.next_action(), Action::Close));
        assert_eq!(s.m.stats.deleted_upstream, 2);
    }

    #[test]
    fn the_login_answer_is_flushed_before_the_history_is_recorded() {
        // Recording the decision history may not delay the client's `+OK` (issue 13); the
        // scan report (metrics, verdict log lines) still comes before it.
        let mut s = Sim::new(settings());
        s.connect(&["TOP", "UIDL"]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, Some(RuleAction::Hide))], &[]);
        let at = |what: &str| s.order.iter().position(|o| o == what).unwrap_or_else(|| panic!("{what}: {:?}", s.order));
        let (ready, ok, record) = (at("view ready"), at("+OK logged in"), at("record"));
        assert!(ready < ok && ok < record, "{:?}", s.order);
        assert!(s.order[ok..record].iter().any(|o| o == "flush"), "{:?}", s.order);
    }

    #[test]
    fn a_client_that_leaves_without_quit_deletes_nothing() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, Some(RuleAction::Delete))], &[]);
        for line in ["DELE 1", "RSET", "LIST", "UIDL", "TOP 1 0", "DELE 1"] {
            s.c(line);
        }
        s.s("+OK");
        s.idle();
        assert!(!s.take_upstream().contains("DELE"));
        // The client is gone: the performer stops here; nothing more is sent.
        assert!(matches!(s.run(), Need::ClientInput));
    }

    #[test]
    fn rset_clears_the_clients_marks_but_not_the_condemned() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, Some(RuleAction::Delete)), entry(3, None)], &[]);
        s.take_client();
        for line in ["DELE 1", "DELE 2", "RSET", "QUIT"] {
            s.c(line);
        }
        s.s("+OK");
        s.s("+OK bye");
        assert_eq!(s.take_upstream(), "DELE 2\r\nQUIT\r\n");
        assert!(s.take_client().contains("+OK maildrop has 2 messages (400 octets)\r\n"));
    }

    #[test]
    fn pipelined_commands_go_upstream_at_once_when_the_upstream_pipelines() {
        let mut s = Sim::new(settings());
        s.connect(&["PIPELINING"]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, None), entry(3, None)], &[]);
        s.take_client();
        // C: RETR 1 / STAT / RETR 3 / NOOP arrive in one read.
        for line in ["RETR 1", "STAT", "RETR 3", "NOOP"] {
            assert!(matches!(s.run(), Need::BufferedClientLine { .. }));
            s.feed(Input::ClientLine(line.into()));
        }
        s.feed(Input::NoClientLine);
        s.s("+OK");
        assert_eq!(s.take_upstream(), "RETR 1\r\nRETR 3\r\nNOOP\r\n");
        s.s("+OK");
        s.s("+OK");
        assert_eq!(s.take_client(), "+OK\r\n<body>\r\n+OK 3 600\r\n+OK\r\n<body>\r\n+OK\r\n");
        assert_eq!(s.quiet_checks, 1, "only the first write found the upstream idle");
    }

    #[test]
    fn without_upstream_pipelining_one_command_at_a_time_each_checked_for_stray_data() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, None)], &[]);
        for line in ["RETR 1", "RETR 2"] {
            assert!(matches!(s.run(), Need::BufferedClientLine { .. }));
            s.feed(Input::ClientLine(line.into()));
        }
        s.feed(Input::NoClientLine);
        s.s("+OK");
        assert_eq!(s.take_upstream(), "RETR 1\r\n", "RETR 2 waits for the first reply");
        s.s("-ERR gone");
        assert_eq!(s.take_upstream(), "RETR 2\r\n");
        assert_eq!(s.quiet_checks, 2);
        assert!(s.take_client().ends_with("+OK\r\n<body>\r\n-ERR gone\r\n"));
    }

    #[test]
    fn upstream_numbers_with_gaps_are_looked_up_not_indexed() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.scanned(vec![entry(1, None), entry(5, None)], &[]);
        s.c("RETR 2");
        s.s("+OK");
        assert!(s.take_upstream().ends_with("RETR 5\r\n"));
        s.c("RETR 3");
        s.idle();
        assert!(s.take_client().ends_with("-ERR no such message, only 2 messages in maildrop\r\n"));
    }

    #[test]
    fn sasl_plain_with_a_challenge() {
        let mut s = Sim::new(settings());
        s.connect(&["SASL"]);
        s.c("AUTH PLAIN");
        assert_eq!(s.take_upstream(), "AUTH PLAIN\r\n");
        s.s("+ ");
        assert_eq!(s.take_client(), "+ \r\n");
        s.c("AGRhdmUAcHc="); // \0dave\0pw
        assert_eq!(s.take_upstream(), "AGRhdmUAcHc=\r\n");
        assert_eq!(s.m.login_user(), Some("dave"));
        s.s("+OK welcome");
        assert!(matches!(s.run(), Need::Scan { .. }));
        assert!(s.take_client().is_empty(), "the login waits for the scan");
    }

    #[test]
    fn a_malformed_sasl_identity_cancels_the_exchange() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.c("AUTH PLAIN");
        s.s("+ ");
        s.take_client();
        s.c("!!not base64");
        assert_eq!(s.take_upstream(), "AUTH PLAIN\r\n*\r\n");
        s.s("-ERR cancelled");
        assert_eq!(s.take_client(), "-ERR invalid user name in SASL response\r\n");
        assert!(matches!(s.run(), Need::ClientLine));
    }

    #[test]
    fn a_refused_login_stays_in_authorization() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.c("USER bob");
        s.s("+OK");
        s.c("PASS wrong");
        s.s("-ERR [AUTH] nope");
        assert_eq!(s.take_client(), "+OK\r\n-ERR [AUTH] nope\r\n");
        assert!(s.m.stats.auth_failed && !s.m.stats.logged_in);
        s.c("STAT");
        assert!(s.take_client().starts_with("-ERR not logged in"));
        s.c("QUIT");
        // RFC 1939 §6: QUIT in AUTHORIZATION does not enter UPDATE.
        assert!(matches!(s.run(), Need::UpstreamLine { lenient: true, .. }));
        s.feed(Input::UpstreamLineFailed);
        assert_eq!(s.take_client(), "+OK bye\r\n");
        assert!(matches!(s.m.next_action(), Action::Close));
        assert!(!s.take_upstream().contains("DELE"));
    }

    #[test]
    fn a_pipelining_server_gets_the_scan_requests_behind_pass() {
        let mut s = Sim::new(settings());
        s.connect(&["PIPELINING", "TOP", "UIDL"]);
        s.c("USER alice");
        s.s("+OK");
        s.take_upstream();
        s.c("PASS secret");
        assert_eq!(s.take_upstream(), "PASS secret\r\nSTAT\r\nLIST\r\nCAPA\r\nUIDL\r\n", "one write");
        s.s("+OK logged in");
        assert!(matches!(s.run(), Need::Scan { pipelining: true, requested: true }));
    }

    #[test]
    fn without_pipelining_or_with_apop_pass_goes_alone() {
        let mut off = settings();
        off.scan_pipelining = false;
        for (settings, caps, login) in [
            (off, &["PIPELINING"][..], "PASS secret"),
            (settings(), &[][..], "PASS secret"),
            (settings(), &["PIPELINING"][..], "APOP alice 0123456789abcdef0123456789abcdef"),
        ] {
            let mut s = Sim::new(settings);
            s.connect(caps);
            if login.starts_with("PASS") {
                s.c("USER alice");
                s.s("+OK");
                s.take_upstream();
            }
            s.c(login);
            assert_eq!(s.take_upstream(), format!("{login}\r\n"));
            s.s("+OK");
            assert!(matches!(s.run(), Need::Scan { requested: false, .. }), "{login}");
        }
    }

    #[test]
    fn a_refused_pipelined_pass_drops_the_replies_behind_it() {
        let mut s = Sim::new(settings());
        s.connect(&["PIPELINING"]);
        s.c("USER bob");
        s.s("+OK");
        s.c("PASS wrong");
        assert_eq!(s.take_upstream(), "USER bob\r\nPASS wrong\r\nSTAT\r\nLIST\r\nCAPA\r\nUIDL\r\n");
        s.s("-ERR [AUTH] nope");
        assert_eq!(s.take_client(), "+OK\r\n-ERR [AUTH] nope\r\n");
        assert!(s.m.stats.auth_failed && !s.m.stats.logged_in);
        // STAT and LIST refused, CAPA answered (valid before login), UIDL refused.
        s.s("-ERR Unknown command.");
        s.s("-ERR Unknown command.");
        s.s("+OK");
        assert!(matches!(s.run(), Need::UpstreamBody { .. }));
        s.feed(Input::UpstreamBody(b"TOP\r\nPIPELINING\r\n".to_vec()));
        s.s("-ERR Unknown command.");
        assert_eq!(s.take_client(), "", "nothing of them reaches the client");
        assert!(matches!(s.m.state, State::AuthIdle));
        // The client may try again on the same connection.
        s.c("USER bob");
        assert_eq!(s.take_upstream(), "USER bob\r\n");
        s.s("+OK");
        s.c("PASS right");
        assert_eq!(s.take_upstream(), "PASS right\r\nSTAT\r\nLIST\r\nCAPA\r\nUIDL\r\n");
        s.s("+OK");
        assert!(matches!(s.run(), Need::Scan { requested: true, .. }));
    }

    #[test]
    fn a_server_that_closes_after_a_refused_pipelined_pass_is_a_refused_login() {
        let mut s = Sim::new(settings());
        s.connect(&["PIPELINING"]);
        s.c("USER bob");
        s.s("+OK");
        s.c("PASS secret");
        s.s("-ERR [IN-USE] Mailbox is locked by another POP3 session.");
        s.take_client();
        assert!(matches!(s.run(), Need::UpstreamLine { lenient: true, .. }));
        s.take_upstream();
        s.feed(Input::UpstreamLineFailed);
        assert_eq!(s.take_client(), "");
        assert!(matches!(s.m.state, State::AuthIdle) && s.m.stats.auth_failed);
        assert_eq!(s.take_upstream(), "<dropped>");
        // QUIT in AUTHORIZATION, upstream gone: answered as without the requests.
        s.c("QUIT");
        assert_eq!(s.take_client(), "+OK bye\r\n");
        assert!(matches!(s.m.next_action(), Action::Close));
        assert_eq!(s.take_upstream(), "", "nothing more goes to the dropped upstream");
    }

    /// A read behind a refused PASS that fails while the connection stays open (a timeout,
    /// a line that is not a status line): the replies still due to STAT/LIST/CAPA/UIDL must
    /// never answer the client's next commands. The upstream is dropped; the next command
    /// gets a clean `-ERR [SYS/TEMP]` and nothing is sent upstream.
    #[test]
    fn a_failed_read_behind_a_refused_pass_drops_the_upstream() {
        let mut s = Sim::new(settings());
        s.connect(&["PIPELINING"]);
        s.c("USER bob");
        s.s("+OK");
        s.c("PASS wrong");
        s.s("-ERR [AUTH] nope");
        s.s("-ERR Unknown command.");
        assert!(matches!(s.run(), Need::UpstreamLine { lenient: true, .. }));
        s.take_upstream();
        s.take_client();
        s.feed(Input::UpstreamLineFailed);
        assert_eq!(s.take_upstream(), "<dropped>", "the connection with replies still due is dropped");
        s.c("USER bob");
        assert_eq!(s.take_upstream(), "", "nothing is written where stale replies wait");
        assert!(s.take_client().starts_with("-ERR [SYS/TEMP] "));
        assert!(matches!(s.m.next_action(), Action::Close));
    }

    /// Per-user upstream: after the drop the session is no longer routed; the next login
    /// names its server again and gets a new connection.
    #[test]
    fn a_per_user_login_reconnects_after_the_upstream_was_dropped() {
        let mut s = routed(&["pop.a.example:110"]);
        for attempt in 0..2 {
            s.c("USER pop.a.example:bob");
            assert!(matches!(s.run(), Need::Resolve { .. }), "attempt {attempt}: a new connection");
            let addr = std::net::SocketAddr::from(([93, 184, 216, 34], 110));
            s.feed(Input::Resolved(Ok(vec![addr])));
            assert!(matches!(s.run(), Need::ConnectTo { .. }));
            let caps = ["TOP", "UIDL", "PIPELINING"].iter().map(|c| Capability::new(c, "")).collect();
            s.feed(Input::Connected { greeting: b"+OK ready".to_vec(), caps: Some(caps) });
            s.s("+OK");
            s.c("PASS wrong");
            assert_eq!(s.take_upstream(), "USER bob\r\nPASS wrong\r\nSTAT\r\nLIST\r\nCAPA\r\nUIDL\r\n");
            s.s("-ERR [AUTH] nope");
            assert!(matches!(s.run(), Need::UpstreamLine { lenient: true, .. }));
            s.feed(Input::UpstreamLineFailed);
            assert_eq!(s.take_upstream(), "<dropped>");
            s.take_client();
        }
    }

    /// The review page's overrides could not be read in time: nothing is condemned at this
    /// login (no quarantine copy, no DELE), hidden stays hidden.
    #[test]
    fn held_condemnation_copies_and_deletes_nothing() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.m.hold_condemnation();
        let (d, q) = (Some(RuleAction::Delete), Some(RuleAction::Quarantine));
        // `scanned` panics if a quarantine copy is asked for (no copy results given).
        s.scanned(vec![entry(1, None), entry(2, d), entry(3, q)], &[]);
        assert_eq!(s.take_client(), "+OK logged in\r\n");
        s.c("STAT");
        s.idle();
        assert_eq!(s.take_client(), "+OK 1 100\r\n", "the condemned and the candidate stay hidden");
        s.take_upstream();
        s.c("QUIT");
        assert_eq!(s.take_upstream(), "QUIT\r\n", "nothing deleted");
        // Without the hold the same login deletes message 2.
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.scanned(vec![entry(1, None), entry(2, d)], &[]);
        s.take_upstream();
        s.c("QUIT");
        assert_eq!(s.take_upstream(), "DELE 2\r\n");
    }

    /// Credentials held by AUTHORIZATION states never show in their Debug output (the
    /// catch-all arm logs the state).
    #[test]
    fn states_holding_credentials_debug_without_them() {
        let pass = "hunter2-secret";
        let plain = format!("AUTH PLAIN {pass}");
        let shown = [
            format!("{:?}", State::Throttle(Secret::new(format!("PASS {pass}")))),
            format!("{:?}", State::Throttle(Secret::new(plain.clone()))),
            format!("{:?}", State::SaslIntro(Secret::new(format!("{pass}\r\n")))),
            format!("{:?}", Then::Sasl { mech: SaslMech::Plain, first: Secret::new(pass) }),
        ];
        for s in &shown {
            assert!(!s.contains(pass), "{s}");
            assert!(s.contains("redacted"), "{s}");
        }
    }

    #[test]
    fn early_answer_is_decided_by_the_time_fed_in() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.take_client();
        assert_eq!(s.m.wake_at(), Some(s.t0 + Duration::from_secs(20)));
        s.now = s.t0 + Duration::from_secs(19);
        s.feed(Input::Tick);
        assert!(matches!(s.run(), Need::Scan { .. }));
        assert_eq!(s.take_client(), "", "not yet");
        s.now = s.t0 + Duration::from_secs(21);
        s.feed(Input::Tick);
        assert!(matches!(s.run(), Need::Scan { .. }));
        assert_eq!(s.take_client(), "+OK logged in\r\n");
        assert_eq!(s.m.wake_at(), None);
        // The client's first command waits for the view; the login is not answered twice.
        s.scanned(vec![entry(1, None)], &[]);
        s.c("STAT");
        s.idle();
        assert_eq!(s.take_client(), "+OK 1 100\r\n");
    }

    /// Issue 16: the performer reads the clock only while the machine uses it. Every state
    /// up to the view keeps time (the early answer's due time is taken from the `+OK` to
    /// PASS, and ticks compare against it); TRANSACTION does not.
    #[test]
    fn time_is_kept_through_the_login_and_not_in_transaction() {
        let mut s = Sim::new(settings());
        assert!(s.m.keeps_time());
        s.connect(&[]);
        assert!(s.m.keeps_time());
        s.login();
        assert!(s.m.keeps_time(), "the scan runs: the early answer may fall due");
        s.take_client();
        s.scanned(vec![entry(1, None)], &[]);
        s.c("STAT");
        s.idle();
        assert_eq!(s.take_client(), "+OK logged in\r\n+OK 1 100\r\n");
        assert!(!s.m.keeps_time());
        s.now = s.t0 + Duration::from_secs(90);
        s.c("NOOP");
        assert!(!s.m.keeps_time());
        assert_eq!(s.m.now(), s.t0 + Duration::from_secs(90), "the time fed in is kept as given");
    }

    #[test]
    fn without_an_early_answer_setting_nothing_wakes_the_scan() {
        let mut s = Sim::new(Settings { early_answer_after: None, ..settings() });
        s.connect(&[]);
        s.login();
        assert_eq!(s.m.wake_at(), None);
    }

    #[test]
    fn quarantine_condemns_only_what_was_stored() {
        for (on_failure, failed_shown) in [(OnFailure::Hide, false), (OnFailure::Show, true)] {
            let mut s = Sim::new(Settings { on_failure, ..settings() });
            s.connect(&[]);
            s.login();
            let q = Some(RuleAction::Quarantine);
            s.scanned(
                vec![entry(1, q), entry(2, q), entry(3, q), entry(4, None)],
                &[Quarantined::Stored, Quarantined::Failed, Quarantined::AlreadyStored],
            );
            let view = s.m.view().expect("in TRANSACTION");
            let d: Vec<Disposition> = view.messages().map(|e| e.disposition).collect();
            let failed = if failed_shown { Disposition::Visible } else { Disposition::Hidden };
            assert_eq!(d, [Disposition::Condemned, failed, Disposition::Condemned, Disposition::Visible]);
            s.c("QUIT");
            s.s("+OK");
            s.s("+OK");
            s.s("+OK");
            assert_eq!(s.take_upstream().matches("DELE").count(), 2, "the failed copy is never deleted");
        }
    }

    #[test]
    fn quarantine_time_can_answer_the_login_early() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.take_client();
        let q = Some(RuleAction::Quarantine);
        let items = vec![entry(1, q), entry(2, q)];
        s.feed(Input::Listed(Box::new(ScanOutcome { top_supported: true, ..Default::default() })));
        assert!(matches!(s.run(), Need::Evaluate(_)));
        s.feed(Input::Evaluated(items));
        assert!(matches!(s.run(), Need::QuarantineFolder));
        s.feed(Input::QuarantineFolder);
        assert!(matches!(s.run(), Need::Quarantine(_)));
        s.now = s.t0 + Duration::from_secs(30);
        s.feed(Input::Quarantined(Quarantined::Stored));
        assert!(matches!(s.run(), Need::Quarantine(_)));
        assert_eq!(s.take_client(), "+OK logged in\r\n", "answered before the next copy");
        s.feed(Input::Quarantined(Quarantined::Stored));
        s.idle();
        assert_eq!(s.take_client(), "", "answered once");
    }

    /// A slow evaluation or a slow quarantine copy: the performer ticks while it works, and
    /// the early answer goes out on time, mid-work (before: only the scan was ticked, so the
    /// `+OK` waited for the evaluation or the copy to end).
    #[test]
    fn evaluation_and_copies_are_ticked_for_the_early_answer() {
        for slow in ["evaluation", "folder", "copy"] {
            let mut s = Sim::new(settings());
            s.connect(&[]);
            s.login();
            s.take_client();
            let q = Some(RuleAction::Quarantine);
            s.feed(Input::Listed(Box::new(ScanOutcome { top_supported: true, ..Default::default() })));
            assert!(matches!(s.run(), Need::Evaluate(_)));
            let late = s.t0 + Duration::from_secs(21);
            let tick = |s: &mut Sim| {
                assert_eq!(s.m.wake_at(), Some(s.t0 + Duration::from_secs(20)), "{slow}: a wake-up is due");
                s.now = late;
                s.feed(Input::Tick);
                assert!(matches!(s.run(), Need::Pending), "{slow}: the outstanding need stays outstanding");
                assert_eq!(s.take_client(), "+OK logged in\r\n", "{slow}: answered while the work runs");
                assert_eq!(s.m.wake_at(), None, "{slow}: answered once");
            };
            if slow == "evaluation" {
                tick(&mut s);
            }
            s.feed(Input::Evaluated(vec![entry(1, q), entry(2, None)]));
            assert!(matches!(s.run(), Need::QuarantineFolder));
            if slow == "folder" {
                tick(&mut s);
            }
            s.feed(Input::QuarantineFolder);
            assert!(matches!(s.run(), Need::Quarantine(_)));
            if slow == "copy" {
                tick(&mut s);
            }
            s.feed(Input::Quarantined(Quarantined::Failed));
            s.c("STAT");
            s.idle();
            assert_eq!(s.take_client(), "+OK 1 200\r\n", "{slow}: the failed copy stays hidden");
            s.c("QUIT");
            s.s("+OK");
            assert!(!s.take_upstream().contains("DELE"), "{slow}: nothing copied, nothing deleted");
        }
    }

    #[test]
    fn a_server_without_top_is_refused_when_configured() {
        let mut s = Sim::new(Settings { without_top: WithoutTop::Refuse, ..settings() });
        s.connect(&[]);
        s.login();
        let items = vec![ScanItem { upstream: 1, size: 5, uidl: None, memo: None, evaluated: None }];
        s.feed(Input::Listed(Box::new(ScanOutcome { items, top_supported: false, ..Default::default() })));
        s.s("+OK bye");
        assert_eq!(s.take_upstream(), "QUIT\r\n");
        assert_eq!(s.take_client(), String::from_utf8_lossy(REFUSED_WITHOUT_TOP));
        assert!(matches!(s.m.next_action(), Action::Close));
    }

    #[test]
    fn capa_after_login_is_rewritten_from_the_upstreams_list() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.login();
        s.scanned(vec![entry(1, None)], &[]);
        s.take_client();
        s.c("CAPA");
        s.s("+OK");
        assert!(matches!(s.run(), Need::UpstreamBody { .. }));
        s.feed(Input::UpstreamBody(b"TOP\r\nUIDL\r\nSTLS\r\n".to_vec()));
        s.idle();
        let capa = s.take_client();
        assert!(capa.starts_with("+OK") && capa.contains("TOP\r\nUIDL\r\nPIPELINING\r\n"), "{capa}");
        assert!(!capa.contains("STLS"));
    }

    // --- per-user upstream (HOST:USER logins) ---

    fn routed(allow: &[&str]) -> Sim {
        let allow: Vec<String> = allow.iter().map(|a| a.to_string()).collect();
        let from_user = UpstreamFromUser::new(":", &allow, Some(crate::cli::UpstreamTls::None), None).unwrap();
        let mut s = Sim::new(Settings { upstream_from_user: Some(Arc::new(from_user)), ..settings() });
        assert!(matches!(s.run(), Need::ClientLine));
        assert_eq!(s.take_client(), "+OK popsift ready\r\n", "popsift greets: no APOP timestamp");
        s
    }

    /// Answers the resolve and connect needs: the host resolves to `ip`.
    fn resolve_and_connect(s: &mut Sim, host: &str, port: u16, ip: [u8; 4]) {
        match s.run() {
            Need::Resolve { host: h, port: p } => assert_eq!((h.as_str(), p), (host, port)),
            other => panic!("expected a resolve, got {other:?}"),
        }
        let addr = std::net::SocketAddr::from((ip, port));
        s.feed(Input::Resolved(Ok(vec![addr])));
        match s.run() {
            Need::ConnectTo { upstream, addrs } => {
                assert_eq!((upstream.display(), addrs), (format!("{host}:{port}"), vec![addr]));
            }
            other => panic!("expected a connect, got {other:?}"),
        }
        s.feed(Input::Connected {
            greeting: b"+OK <123@up> ready".to_vec(),
            caps: Some(vec![Capability::new("TOP", "")].into()),
        });
    }

    #[test]
    fn per_user_upstream_user_pass() {
        let mut s = routed(&["pop.a.example:110"]);
        s.c("CAPA");
        let capa = s.take_client();
        assert_eq!(
            capa,
            "+OK Capability list follows\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n.\r\n"
        );
        s.c("PASS early");
        assert!(s.take_client().starts_with("-ERR [AUTH] log in first with USER HOST:USER"));
        s.c("USER pop.a.example:alice");
        resolve_and_connect(&mut s, "pop.a.example", 110, [93, 184, 216, 34]);
        assert_eq!(s.take_upstream(), "USER alice\r\n");
        s.s("+OK");
        assert_eq!(s.take_client(), "+OK\r\n", "the server's greeting is not relayed");
        s.c("PASS secret");
        assert_eq!(s.take_upstream(), "PASS secret\r\n");
        assert_eq!(s.m.login_user(), Some("alice"));
        s.s("+OK logged in");
        assert!(matches!(s.run(), Need::Scan { .. }));
    }

    #[test]
    fn per_user_upstream_refuses_before_connecting() {
        let mut s = routed(&["pop.a.example:110", "*.b.example:110"]);
        for (line, reply) in [
            ("USER evil.example:alice", "-ERR [AUTH] this mail server is not allowed here\r\n"),
            ("USER alice", "-ERR [AUTH] user name must be HOST:USER or HOST:PORT:USER on this server\r\n"),
            ("USER :alice", "-ERR [AUTH] empty host, port or user in the user name\r\n"),
            ("USER pop.a.example:99999:alice", "-ERR [AUTH] bad port in the user name (1-65535)\r\n"),
        ] {
            s.c(line);
            assert_eq!(s.take_client(), reply, "{line}");
            assert!(matches!(s.run(), Need::ClientLine), "{line}: no connection asked for");
        }
        let long = format!("USER {}:alice", "a".repeat(300));
        s.c(&long);
        assert!(s.take_client().contains("host name too long"));
        // A pattern's name that resolves to an internal address: refused, never connected.
        s.c("USER sneaky.b.example:alice");
        assert!(matches!(s.run(), Need::Resolve { .. }));
        s.feed(Input::Resolved(Ok(vec!["127.0.0.1:110".parse().unwrap()])));
        assert_eq!(
            s.take_client(),
            "-ERR [AUTH] this mail server resolves to an internal address, which is not allowed here\r\n"
        );
        assert!(matches!(s.run(), Need::ClientLine));
        s.c("APOP alice c4c9334bac560ecc979e58001b3e22fb");
        assert_eq!(s.take_client(), String::from_utf8_lossy(NOT_WITH_UPSTREAM_FROM_USER));
        s.c("AUTH CRAM-MD5");
        assert_eq!(s.take_client(), String::from_utf8_lossy(NOT_WITH_UPSTREAM_FROM_USER));
        assert!(s.take_upstream().is_empty());
        assert!(s.m.stats.auth_failed);
        s.c("QUIT");
        assert_eq!(s.take_client(), "+OK popsift signing off\r\n");
        assert!(matches!(s.m.next_action(), Action::Close));
    }

    #[test]
    fn per_user_upstream_refusals_are_logged_as_failed_logins() {
        let mut s = routed(&["pop.a.example:110"]);
        s.m.handle(s.now, Input::ClientLine(b"USER evil.example:alice".to_vec()));
        match s.m.next_action() {
            Action::LoginFailed { why, user, upstream } => {
                assert_eq!(why, LoginFailure::UpstreamNotAllowed);
                assert_eq!(
                    (user.as_deref(), upstream.as_deref()),
                    (Some("evil.example:alice"), Some("evil.example:110"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn per_user_upstream_auth_plain_is_rewritten() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut s = routed(&["127.0.0.1:1110"]);
        s.c(&format!("AUTH PLAIN {}", b64(b"127.0.0.1:1110:alice\x00127.0.0.1:1110:alice\x00pw")));
        resolve_and_connect(&mut s, "127.0.0.1", 1110, [127, 0, 0, 1]);
        assert_eq!(s.take_upstream(), "AUTH PLAIN\r\n");
        s.s("+ ");
        assert_eq!(s.take_upstream(), format!("{}\r\n", b64(b"alice\x00alice\x00pw")));
        assert!(s.take_client().is_empty(), "the server's challenge is answered by popsift");
        assert_eq!(s.m.login_user(), Some("alice"));
        s.s("+OK welcome");
        assert!(matches!(s.run(), Need::Scan { .. }));
    }

    #[test]
    fn per_user_upstream_auth_plain_goes_in_one_line_to_a_sasl_server() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut s = routed(&["pop.a.example:110"]);
        s.c(&format!("AUTH PLAIN {}", b64(b"\x00pop.a.example:alice\x00pw")));
        assert!(matches!(s.run(), Need::Resolve { .. }));
        s.feed(Input::Resolved(Ok(vec!["93.184.216.34:110".parse().unwrap()])));
        assert!(matches!(s.run(), Need::ConnectTo { .. }));
        let caps = vec![Capability::new("SASL", "PLAIN LOGIN"), Capability::new("TOP", "")];
        s.feed(Input::Connected { greeting: b"+OK".to_vec(), caps: Some(caps.into()) });
        assert_eq!(s.take_upstream(), format!("AUTH PLAIN {}\r\n", b64(b"\x00alice\x00pw")));
        s.s("+OK");
        assert!(matches!(s.run(), Need::Scan { .. }));
        assert_eq!(s.m.login_user(), Some("alice"));
    }

    #[test]
    fn per_user_upstream_auth_plain_and_login_with_challenges() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut s = routed(&["pop.a.example:110"]);
        s.c("AUTH PLAIN");
        assert_eq!(s.take_client(), "+ \r\n");
        s.c("*");
        assert_eq!(s.take_client(), "-ERR authentication cancelled\r\n");
        s.c("AUTH PLAIN");
        s.take_client();
        s.c(&b64(b"\x00other.example:bob\x00pw"));
        assert_eq!(s.take_client(), "-ERR [AUTH] this mail server is not allowed here\r\n");
        s.c("AUTH PLAIN");
        s.take_client();
        s.c(&b64(b"\x00pop.a.example:bob\x00other.example:bob"));
        resolve_and_connect(&mut s, "pop.a.example", 110, [93, 184, 216, 34]);
        s.s("+ ");
        assert_eq!(s.take_upstream(), format!("AUTH PLAIN\r\n{}\r\n", b64(b"\x00bob\x00other.example:bob")));
        s.s("-ERR [AUTH] wrong");
        assert_eq!(s.take_client(), "-ERR [AUTH] wrong\r\n");
        // Still connected to that server: AUTH LOGIN there needs no new connection.
        s.c("AUTH LOGIN");
        assert_eq!(s.take_client(), "+ VXNlcm5hbWU6\r\n");
        s.c(&b64(b"pop.a.example:carol"));
        assert_eq!(s.take_upstream(), "AUTH LOGIN\r\n");
        s.s("+ VXNlcm5hbWU6");
        assert_eq!(s.take_upstream(), format!("{}\r\n", b64(b"carol")));
        s.s("+ UGFzc3dvcmQ6");
        assert_eq!(s.take_client(), "+ UGFzc3dvcmQ6\r\n");
        s.c(&b64(b"pw"));
        assert_eq!(s.take_upstream(), format!("{}\r\n", b64(b"pw")));
        assert_eq!(s.m.login_user(), Some("carol"));
        s.s("+OK");
        assert!(matches!(s.run(), Need::Scan { .. }));
    }

    #[test]
    fn per_user_upstream_one_server_per_session() {
        let mut s = routed(&["pop.a.example:110", "pop.b.example:110"]);
        s.c("USER pop.a.example:alice");
        resolve_and_connect(&mut s, "pop.a.example", 110, [93, 184, 216, 34]);
        s.s("+OK");
        s.c("PASS wrong");
        s.s("-ERR [AUTH] no");
        s.take_client();
        s.take_upstream();
        s.c("USER pop.b.example:alice");
        assert!(s.take_client().starts_with("-ERR [AUTH] this session is connected to another mail server"));
        assert!(s.take_upstream().is_empty());
        s.c("USER pop.a.example:alice2");
        assert_eq!(s.take_upstream(), "USER alice2\r\n");
    }

    #[test]
    fn per_user_upstream_bad_sasl_is_an_error_not_a_panic() {
        let mut s = routed(&["pop.a.example:110"]);
        for line in ["AUTH PLAIN !!!", "AUTH PLAIN AAAA", "AUTH LOGIN AA==", "AUTH PLAIN ="] {
            s.c(line);
            assert!(s.take_client().starts_with("-ERR"), "{line}");
            assert!(matches!(s.run(), Need::ClientLine));
        }
        assert!(s.take_upstream().is_empty());
    }

    // --- the network edge, decided here (issue 12) ---

    fn edge(starttls: bool, plaintext_allowed: bool) -> Settings {
        Settings { edge: capa::EdgeCapa { starttls, plaintext_allowed }, ..settings() }
    }

    #[test]
    fn stls_upgrades_then_logins_go_through() {
        let mut s = Sim::new(edge(true, false));
        s.connect(&["USER"]);
        s.c("CAPA");
        let capa = s.take_client();
        assert!(capa.contains("STLS\r\n") && !capa.contains("USER"), "{capa}");
        s.c("STLS");
        assert!(matches!(s.run(), Need::StartTls));
        assert_eq!(s.take_client(), "+OK Begin TLS negotiation\r\n");
        assert!(s.take_upstream().is_empty(), "STLS is popsift's, never the upstream's");
        s.feed(Input::TlsStarted);
        s.c("STLS");
        assert_eq!(s.take_client(), "-ERR TLS is already active\r\n", "RFC 2595 §4: not twice");
        s.c("CAPA");
        let capa = s.take_client();
        assert!(!capa.contains("STLS") && capa.contains("USER"), "{capa}");
        s.login();
        assert!(s.login_failures.is_empty());
    }

    #[test]
    fn plaintext_logins_without_tls_are_refused_by_popsift() {
        let mut s = Sim::new(edge(true, false));
        s.connect(&[]);
        for line in ["USER alice", "PASS secret", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH LOGIN"] {
            s.c(line);
            assert_eq!(s.take_client(), String::from_utf8_lossy(gate::PLAINTEXT_REFUSED), "{line}");
        }
        assert!(s.take_upstream().is_empty(), "the credentials went nowhere");
        assert_eq!(s.login_failures, [LoginFailure::PlaintextDisallowed; 4]);
        assert!(s.m.stats.auth_failed);
        // APOP carries no password: it goes to the server.
        s.c("APOP alice c4c9334bac560ecc979e58001b3e22fb");
        assert!(s.take_upstream().starts_with("APOP alice"));
    }

    #[test]
    fn a_throttled_address_is_refused_without_the_upstream() {
        let mut s = Sim::new(settings());
        s.connect(&[]);
        s.throttled = true;
        s.c("USER bob");
        s.s("+OK");
        assert_eq!(s.take_upstream(), "USER bob\r\n", "USER alone carries no secret");
        s.take_client();
        s.c("PASS guess");
        assert_eq!(s.take_client(), String::from_utf8_lossy(THROTTLED));
        assert!(s.take_upstream().is_empty());
        assert_eq!(s.login_failures, [LoginFailure::Throttled]);
        s.throttled = false;
        s.c("PASS right");
        assert_eq!(s.take_upstream(), "PASS right\r\n");
    }

    #[test]
    fn unexpected_inputs_are_ignored_not_panics() {
        let mut s = Sim::new(settings());
        s.feed(Input::UpstreamLine(b"+OK stray".to_vec()));
        s.feed(Input::ClientLine(b"DELE 1".to_vec()));
        s.feed(Input::Quarantined(Quarantined::Stored));
        assert!(matches!(s.run(), Need::Connect));
        assert!(s.take_upstream().is_empty());
    }
}
