//! One client session from accept to close: connect upstream, pass AUTHORIZATION through,
//! scan at login, then serve the filtered view in TRANSACTION and perform UPDATE at QUIT.
//!
//! This is the I/O pump. Every decision is made by the sans-IO
//! [`crate::session::machine::Machine`]; this module performs its actions under the named
//! timeouts of [`crate::net::conn`] and feeds back what happened (with the time). The login
//! scan's reads are performed by [`crate::net::login_scan`], the quarantine copies by
//! [`crate::net::quarantine_copy`]. Bodies move through the one relay step
//! [`Conn::relay_buffered`]; header blocks are split by [`HeaderSplitter`].
//!
//! Pipelined client commands (RFC 2449 §6.6) are planned as soon as they are buffered and
//! answered strictly in order. Commands that need the upstream are sent ahead when the
//! upstream itself pipelines; otherwise one at a time. Replies to the client are batched and
//! flushed when no further command is waiting, so a pipelining client gets full-size writes
//! and a one-command-at-a-time client gets each reply immediately; and before popsift waits
//! for more from the server (issue 16): what it holds goes out first, as through a byte
//! pump, unless more is readable at once. A pipelined body that ended in the upstream's
//! read buffer is queued as a shared part of it, not copied ([`crate::net::outbox`]). A
//! body whose reply is the last one owed (nothing queued or in flight,
//! [`Machine::drained`]) is written at its end straight from the upstream's read buffer
//! behind its status line, not copied into the output queue first (issue 16: ~10,000 of a
//! 10 KB RETR's ~30,000 instructions).
//!
//! # Early answer (`scan.early_answer_after`)
//! The login `+OK` normally waits for the scan, because the client may send STAT right
//! after it and POP3 has no way to say "wait" before a reply. Mail clients give up on a
//! reply after 30–120 s, so when the scan is still running after `early_answer_after`
//! (default 20 s) popsift sends the upstream's login `+OK` at once and goes on scanning.
//! "The scan" here is every step between PASS and the view — listing, evaluation, the
//! review page's overrides, the quarantine folder and each quarantine copy: each runs
//! under `ticking`, so none of them can hold the early answer past its time.
//! Whatever the client sends meanwhile stays queued unread (RFC 2449 §6.6 pipelining has
//! the client wait for replies in order anyway) and is answered only when the view is
//! complete: every TRANSACTION command but NOOP needs it, and answering in order means even
//! NOOP waits. So the client's wait is split into two shorter ones, no message is ever
//! shown before its headers were checked (no unfiltered spam), and the mailbox shown is the
//! whole mailbox (nothing deferred, nothing lost). If the scan then fails, the client gets
//! `-ERR [SYS/TEMP] …` as the reply to its first command instead of to PASS, and nothing is
//! deleted. If the server turns out to have no TOP and `scan.without_top: refuse` is set,
//! the refusal likewise answers the first command. The scan keeps running when the client
//! gives up, so the header cache is filled and the client's next attempt is fast.
//!
//! # Deadlines and a client that left
//! Every wait has a deadline for its whole unit (see `net::conn`): the client's command
//! line, the greeting, each status line, each multi-line reply. While popsift waits on the
//! upstream in AUTHORIZATION and TRANSACTION it also watches the client socket: a client
//! that closed or reset ends the session at once (a pipelined QUIT already read still gets
//! its UPDATE), instead of holding the session slot until a slow server finishes. The
//! login scan and UPDATE are not cut short that way: the scan fills the cache for the next
//! attempt, and UPDATE carries out the client's own QUIT.
//!
//! # Memory
//! Replies prepared for pipelined commands are bounded in bytes (`MAX_PREPARED` in
//! `session::pipeline`), not in commands: once that much is waiting to be sent, popsift
//! stops planning and reading client input until the client reads (backpressure), so a
//! client that pipelines thousands of UIDL without reading costs a few hundred KiB, not one
//! full reply per command.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use crate::config::Upstream as UpstreamConfig;
use crate::config::{Config, Listener};
use crate::edge::limits::IpSlot;
use crate::edge::tls::ClientStream;
use crate::edge::Admitted;
use crate::logging;
use crate::metrics::{self as m, Direction, SessionResult};
use crate::net::conn::{BodyClock, Conn, Side};
use crate::net::cut_off::until_cut_off;
use crate::net::error::{Phase, SessionError};
use crate::net::history_hooks;
use crate::net::login_scan::LoginScan;
use crate::net::outbox::Outbox;
use crate::net::quarantine_copy;
use crate::net::stream::Stream;
use crate::net::upstream::{self, Upstream};
use crate::pop3::command::MAX_COMMAND_LINE;
use crate::pop3::status::{Status, MAX_STATUS_LINE};
use crate::pop3::{BodyScanner, HeaderEnd, HeaderSplitter};
use crate::rules::RulesHandle;
use crate::session::machine::{Action, Input, Machine, Need, Settings};
use crate::session::relay::rewritten_header;
use crate::session::view::HeaderRewrite;
use crate::store::header_cache::HeaderCache;
use crate::store::quarantine::Usage as QuarantineUsage;
use crate::store::verdict_memo::VerdictMemo;

/// Client output is flushed when this much is pending, even mid-response.
const FLUSH_AT: usize = 64 * 1024;
/// Most client input read ahead while watching the client during an upstream wait.
const WATCH_READ_AHEAD: usize = 64 * 1024;
/// Cap on a multi-line CAPA reply.
const MAX_CAPA: usize = 64 * 1024;
/// How long a last word to a client (autologout, line too long) may take.
const LAST_WORD: Duration = Duration::from_secs(5);

/// The time for the machine's next input: read only while it keeps time
/// ([`Machine::keeps_time`]), so a command in TRANSACTION costs no clock read here.
fn clock(m: &Machine) -> Instant {
    if m.keeps_time() {
        Instant::now()
    } else {
        m.now()
    }
}

/// Runs an upstream wait while watching the client: if the client goes (see
/// [`Conn::gone`]), the wait is abandoned and the session ends.
async fn watching<S: AsyncRead + AsyncWrite + Unpin, T>(
    client: &mut Conn<S>,
    quit_queued: bool,
    wait: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    tokio::select! {
        biased;
        r = wait => r,
        gone = client.gone(WATCH_READ_AHEAD, quit_queued) => Err(gone),
    }
}

/// Runs `work` (the login's scan, evaluation or a quarantine copy, which own the upstream)
/// to its end. Meanwhile, whenever the machine's wake-up falls due (the early login answer,
/// `scan.early_answer_after`), ticks it and writes what it says to the client: only the
/// client is touched. So no slow step of the login holds its early `+OK`.
async fn ticking<T>(
    client: &mut Conn<ClientStream>,
    out: &mut Outbox,
    m: &mut Machine,
    write_limit: Duration,
    work: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    tokio::pin!(work);
    loop {
        let Some(wake) = m.wake_at() else { return work.await };
        tokio::select! {
            r = &mut work => return r,
            _ = tokio::time::sleep_until(wake.into()) => {
                m.handle(Instant::now(), Input::Tick);
                // A tick only ever queues client output; the need in progress stays as it is.
                while let Some(a) = m.next_client_output() {
                    match a {
                        Action::Flush => {
                            client.write_outbox(out, &[], write_limit, Phase::ClientWrite).await?;
                            out.clear();
                        }
                        Action::ToClient(b) => out.extend_from_slice(&b),
                        _ => {}
                    }
                }
            }
        }
    }
}

/// The waits for the client's next command: what an idle session is doing.
///
/// A copy of the [`Need`] in one octet or two (issue 16): [`Session::client_wait`] keeps its
/// argument for its whole wait, in the future every idle session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientWait {
    Line,
    Buffered { read_ahead: bool },
    Input,
}

impl ClientWait {
    fn of(need: &Need) -> Option<ClientWait> {
        match need {
            Need::ClientLine => Some(ClientWait::Line),
            Need::BufferedClientLine { read_ahead } => Some(ClientWait::Buffered { read_ahead: *read_ahead }),
            Need::ClientInput => Some(ClientWait::Input),
            _ => None,
        }
    }

    fn of_action(action: &Action) -> Option<ClientWait> {
        match action {
            Action::Need(need) => ClientWait::of(need),
            _ => None,
        }
    }
}

/// What the body relay needs to know of the machine (issue 16).
#[derive(Debug, Clone, Copy)]
struct BodyEnd {
    /// The client's QUIT is queued (see [`Conn::gone`]).
    quit_queued: bool,
    /// Nothing is queued behind this reply ([`Machine::drained`]): its end may be written
    /// at once, straight from the upstream's read buffer.
    last: bool,
}

impl BodyEnd {
    fn of(m: &Machine) -> BodyEnd {
        BodyEnd { quit_queued: m.quit_queued(), last: m.drained() }
    }
}

/// Everything a session needs that outlives it.
pub struct SessionContext {
    pub listener: Listener,
    pub config: Arc<Config>,
    pub tls: Arc<rustls::ClientConfig>,
    pub rules: Arc<RulesHandle>,
    /// The header cache shared by all sessions; `None` when disabled or unusable.
    pub cache: Option<Arc<HeaderCache>>,
    /// Verdicts of recent logins under the current rules (used only with `cache`).
    pub memo: Arc<VerdictMemo>,
    /// The classifier model, refreshed in the background after training.
    pub model: Arc<crate::classify::ModelHandle>,
    /// Turns true at the shutdown's drain deadline (`timeouts.drain`): the session stops
    /// where it is, without UPDATE (nothing is deleted), and closes both connections.
    pub cut_off: tokio::sync::watch::Receiver<bool>,
    /// The listener's network edge: client TLS, plain-text policy, login throttle.
    pub edge: Arc<crate::edge::Edge>,
    /// The decision history (review page); `None` when off or it could not be opened.
    pub history: Option<Arc<crate::store::history::Recorder>>,
    /// The machine's policy for this listener, made once ([`SessionContext::settings_for`])
    /// and shared by its sessions (issue 16: a pointer in each idle session, not a copy).
    pub settings: Arc<Settings>,
}

impl SessionContext {
    /// The machine's settings for sessions of `listener` under `config` behind `edge`.
    pub fn settings_for(config: &Config, listener: &Listener, edge: &crate::edge::Edge) -> Arc<Settings> {
        let mut settings = Settings::from_config(config);
        settings.edge = edge.capa_policy();
        settings.upstream_from_user = listener.upstream_from_user.clone();
        Arc::new(settings)
    }
}

/// The value out of its box, the box freed at once: `let x = *boxed;` frees it only when
/// `boxed` goes out of scope, and for an argument or a capture of a session's future that
/// is the session's end (issue 16: the box was then one more object per idle session).
#[allow(clippy::boxed_local)] // the point: the box is freed here
pub fn unbox<T>(boxed: Box<T>) -> T {
    *boxed
}

/// Runs one session to its end; never panics on peer input and never returns an error:
/// everything is logged and counted here. `client` is plain TCP or TLS, as the listener's
/// edge admitted it (`crate::edge`); `peer` is the client's address (from the PROXY header
/// behind a balancer).
///
/// Not an `async fn` (issue 16): the log label is made here and the session's own future
/// is scoped directly, so the session future holds its arguments once (an `async fn`
/// around an `async move` block held them twice).
pub fn run(admitted: Admitted, ctx: Arc<SessionContext>) -> impl Future<Output = ()> {
    let Admitted { client, peer, slot } = admitted;
    // The session's log context (peer, upstream, user): a task-local label, not a tracing
    // span, whose registry entry cost ~0.7 KiB per session and kept it after the end
    // (issue 16; `crate::logging`).
    let mut label = logging::Label::new(peer);
    if let Some(up) = &ctx.listener.upstream {
        label = label.with_upstream(up.display());
    }
    logging::scope(label, session(Box::new((client, peer, slot)), ctx))
}

/// The session itself (see [`run`]). The client connection, its address and the
/// per-address session slot (held to the end) come boxed (issue 16): an `async fn` keeps
/// its arguments in its state for its whole life, even once moved out, so a pointer's room
/// instead of theirs.
///
/// Idle memory (issue 16): a local that is borrowed, or only partly moved out, keeps its
/// room in the state across every later wait. So the client stream is moved into the
/// connection whole and asked about TLS there, and what follows the session's end (the
/// result, the last word to the client, the summary) runs in [`finish`], boxed: inline,
/// the result alone kept 56 bytes in the state every idle session holds.
async fn session(arrived: Box<(ClientStream, SocketAddr, IpSlot)>, ctx: Arc<SessionContext>) {
    {
        let (client, peer, _slot) = unbox(arrived);
        let started = Instant::now();
        // Counts the session in `popsift_sessions_active` until dropped, even by a panic.
        let active = m::ActiveSession::start();
        let mut s = Session {
            peer,
            client: Conn::new(client, Side::Client),
            up: None,
            out: Outbox::new(),
            mid_response: false,
            ctx: &ctx,
            scan: None,
            usage: None,
            history: None,
            target: None,
        };
        let mut machine = Machine::with_settings(ctx.settings.clone(), Instant::now());
        if s.client.get_mut().is_tls() {
            machine.tls_started();
        }
        // The drain deadline beside the session, polled only when it has news (issue 16).
        let result = {
            let pump = std::pin::pin!(s.pump(&mut machine));
            until_cut_off(&ctx.cut_off, pump).await.unwrap_or(Err(SessionError::CutOff))
        };
        Box::pin(finish(&mut s, &machine, result, started, active)).await;
    }
}

/// The end of a session (see [`session`]): the client's last word (autologout, an upstream
/// failure, a line too long), the close, the metrics and the summary line.
async fn finish(
    s: &mut Session<'_>,
    machine: &Machine,
    result: Result<(), SessionError>,
    started: Instant,
    active: m::ActiveSession,
) {
    let outcome = match &result {
        Ok(()) => SessionResult::Ok,
        Err(e) if e.upstream_kind().is_some() => {
            if let Some(kind) = e.upstream_kind() {
                m::upstream_error(kind);
            }
            s.tell_client_upstream_failed(e).await;
            SessionResult::UpstreamError
        }
        Err(SessionError::Timeout { phase: Phase::ClientIdle, after }) => {
            // RFC 1939 §3 autologout: close without entering UPDATE (nothing is deleted).
            let text = format!("-ERR autologout: idle for {}s\r\n", after.as_secs());
            let _ = s.client.write_all(text.as_bytes(), LAST_WORD, Phase::ClientIdle).await;
            SessionResult::ClientAborted
        }
        Err(SessionError::Timeout { phase: Phase::ClientLine, after }) => {
            let text = format!("-ERR command line not completed within {after:?}; closing\r\n");
            let _ = s.client.write_all(text.as_bytes(), LAST_WORD, Phase::ClientLine).await;
            SessionResult::ClientAborted
        }
        Err(SessionError::ClientLineTooLong { limit }) => {
            let text = format!("-ERR line too long (limit {limit} octets); closing\r\n");
            let _ = s.client.write_all(text.as_bytes(), LAST_WORD, Phase::Relay).await;
            SessionResult::ClientAborted
        }
        // Drain deadline: closed without a word (nothing was asked; RFC 1939 §3 has the
        // server speak only in reply) and without UPDATE.
        Err(_) => SessionResult::ClientAborted,
    };
    let st = &machine.stats;
    // A client that only ever failed to log in, however it left, is an auth failure.
    let outcome = match outcome {
        SessionResult::Ok | SessionResult::ClientAborted if st.auth_failed && !st.logged_in => {
            SessionResult::AuthFailed
        }
        other => other,
    };
    s.client.shutdown().await;
    let (bytes_up, bytes_client) = (s.up.as_ref().map_or(0, |u| u.conn.bytes_in), s.client.bytes_out);
    m::bytes(Direction::FromUpstream, bytes_up);
    m::bytes(Direction::ToClient, bytes_client);
    active.finish(outcome);
    let error = result.as_ref().err().map(|e| e.to_string());
    info!(
        result = ?outcome,
        error = error.as_deref().unwrap_or(""),
        messages = st.messages,
        hidden = st.hidden,
        condemned = st.condemned,
        tagged = st.tagged,
        retrieved = st.retrieved,
        deleted_upstream = st.deleted_upstream,
        bytes_from_upstream = bytes_up,
        bytes_to_client = bytes_client,
        duration_ms = started.elapsed().as_millis() as u64,
        "session finished"
    );
}

/// What `Session::up` being `None` would mean: only before connect, when nothing uses it.
const NOT_CONNECTED: SessionError = SessionError::UpstreamClosed { phase: Phase::Connect };

/// The upstream connection, borrowing only the `up` field (the relay loops write to the
/// client while they hold it).
fn connected(up: &mut Option<Box<Upstream>>) -> Result<&mut Conn<Stream>, SessionError> {
    up.as_mut().map(|u| &mut u.conn).ok_or(NOT_CONNECTED)
}

/// [`Session::target`], borrowing only the `target` field.
fn target_of<'c>(ctx: &'c SessionContext, named: &'c Option<Box<UpstreamConfig>>) -> Option<&'c UpstreamConfig> {
    named.as_deref().or(ctx.listener.upstream.as_ref())
}

struct Session<'a> {
    ctx: &'a SessionContext,
    /// The client's address (carried by the PROXY header behind a balancer).
    peer: SocketAddr,
    client: Conn<ClientStream>,
    /// Boxed once per session at connect (issue 16): 160 bytes on the heap rather than in
    /// the session future, which then fits a smaller allocator size class.
    up: Option<Box<Upstream>>,
    /// Client output not yet written.
    out: Outbox,
    /// A multi-line reply has been started towards the client: an `-ERR` now would corrupt it.
    mid_response: bool,
    /// The login scan in progress (between `Need::Scan` and the view). Boxed, like
    /// `usage` and `history` (issue 16): an idle session keeps a pointer's room for them,
    /// not theirs.
    scan: Option<Box<LoginScan>>,
    /// The login user's quarantine folder usage (quota), once opened.
    usage: Option<Box<QuarantineUsage>>,
    /// The upstream a per-user login named (see [`Session::target`] for the one this
    /// session is connected to). Boxed (issue 16): 56 bytes on the heap, not in every idle
    /// session's future; and `None` on a listener with its own upstream, which is read
    /// from the listener instead of copied (a 64-byte object and the host name's copy less
    /// per session).
    target: Option<Box<UpstreamConfig>>,
    /// This login's decisions, taken at `ViewReady` and queued at `RecordHistory` (after the
    /// login's `+OK`).
    history: Option<Box<crate::store::history::LoginBatch>>,
}

impl Session<'_> {
    /// Performs the machine's actions until it closes.
    ///
    /// Idle memory (issue 16): this loop is what a session that waits for its client keeps
    /// for its whole life, so it awaits only the client-side steps (reading the next
    /// command, writing replies). Everything else (the upstream exchange of a command with
    /// its status line and body relay, the login, UPDATE) runs in [`Session::steps`], boxed
    /// once per command: its state lives on the heap only while the command runs. The
    /// bound is checked by the test `idle_future_is_small`.
    async fn pump(&mut self, m: &mut Machine) -> Result<(), SessionError> {
        // One action at a time, moved out before each wait (issue 16): a value kept across
        // the loop (the step's returned action in an `Option`) took its room for good.
        let mut action = m.next_action();
        loop {
            if let Some(wait) = ClientWait::of_action(&action) {
                drop(action);
                let input = self.flushed_wait(wait, m).await?;
                m.handle(clock(m), input);
                action = m.next_action();
                continue;
            }
            action = match action {
                Action::Close => {
                    self.flush().await?;
                    return Ok(());
                }
                Action::ToClient(b) => {
                    self.queue_client(&b).await?;
                    m.recycle(b);
                    m.next_action()
                }
                Action::Flush => {
                    self.flush().await?;
                    m.next_action()
                }
                other => Box::pin(self.steps(other, m)).await?,
            };
        }
    }

    /// Performs `first` and the actions after it up to the next wait for the client's input
    /// (or the close), which it returns for [`Session::pump`]: one command's work (or one
    /// pipelined batch's), in the future `pump` boxes.
    async fn steps(&mut self, first: Action, m: &mut Machine) -> Result<Action, SessionError> {
        let mut action = first;
        loop {
            match action {
                Action::Need(need) => {
                    let input = self.perform(need, m).await?;
                    m.handle(clock(m), input);
                }
                other => self.act(other, m).await?,
            }
            action = m.next_action();
            match &action {
                Action::Close => return Ok(action),
                // Not at `BufferedClientLine` (no wait): a pipelined batch stays in one box.
                Action::Need(Need::ClientLine | Need::ClientInput) => return Ok(action),
                _ => {}
            }
        }
    }

    /// Queues client output, writing it once much is pending.
    async fn queue_client(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.out.extend_from_slice(bytes);
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    /// [`Session::client_wait`] after writing the pending output, which the client must have
    /// before it can send its next command; not before a line already buffered (a pipelined
    /// batch's replies go out together). The flush is outside `client_wait` (issue 16): the
    /// write's state and the wait's then share their room in the idle session's future.
    async fn flushed_wait(&mut self, wait: ClientWait, m: &mut Machine) -> Result<Input, SessionError> {
        if !matches!(wait, ClientWait::Buffered { .. }) {
            self.flush().await?;
        }
        self.client_wait(wait, m).await
    }

    /// The waits for the client's next command (see [`ClientWait`]): the only needs
    /// [`Session::pump`] performs itself, so its future is sized by these alone. Pending
    /// output was flushed before `Line` and `Input` ([`Session::flushed_wait`]).
    async fn client_wait(&mut self, wait: ClientWait, m: &mut Machine) -> Result<Input, SessionError> {
        let t = &self.ctx.config.timeouts;
        Ok(match wait {
            ClientWait::Line => {
                // Boxed (issue 16): only AUTHORIZATION reads whole lines here (a few per
                // session); inline, this read (536 bytes) was the largest state of the
                // future every idle session keeps, whose idle TRANSACTION wait is the
                // `ClientInput` below.
                let read = self.client.read_command(MAX_COMMAND_LINE, t.client_idle, t.client_line);
                Input::ClientLine(Box::pin(read).await?.to_vec())
            }
            ClientWait::Buffered { read_ahead } => loop {
                // For a pipelining client, top the buffer up with whatever it has already
                // sent (without waiting) while the queue runs low, so the upstream stays
                // busy. A one-command-at-a-time client never has more: no extra syscall.
                match self.client.take_line(MAX_COMMAND_LINE)? {
                    // In a buffer the machine recycles (issue 16: no allocation per command).
                    Some(line) => {
                        let mut buf = m.spare();
                        buf.extend_from_slice(&line);
                        break Input::ClientLine(buf);
                    }
                    None if read_ahead && self.client.try_fill()? => continue,
                    None => break Input::NoClientLine,
                }
            },
            ClientWait::Input => {
                // Idle memory (issue 16): a client silent past `conn::IDLE_GRACE` makes the
                // session give back its buffers while it waits.
                let (up, out) = (&mut self.up, &mut self.out);
                let release = || {
                    if let Some(u) = up.as_mut() {
                        u.conn.release_if_empty();
                    }
                    out.release();
                    m.release_idle();
                };
                self.client.fill_client_or_idle(t.client_idle, t.client_line, release).await?;
                Input::ClientInput
            }
        })
    }

    /// Performs one action that needs no answer. Written buffers go back to the machine
    /// for reuse ([`Machine::recycle`], issue 16).
    async fn act(&mut self, action: Action, m: &mut Machine) -> Result<(), SessionError> {
        match action {
            Action::ToClient(b) => {
                self.queue_client(&b).await?;
                m.recycle(b);
            }
            Action::Flush => self.flush().await?,
            Action::ToUpstream { bytes, phase, check_quiet } => {
                if check_quiet {
                    self.check_upstream_quiet(phase)?;
                }
                let t = self.ctx.config.timeouts.upstream_reply;
                connected(&mut self.up)?.write_all(&bytes, t, phase).await?;
                m.recycle(bytes);
            }
            Action::RelayBody { phase, rewrite: None } => {
                let end = BodyEnd::of(m);
                self.relay_body(phase, end).await?
            }
            // Boxed (issue 16): only tagged messages take this way, and its header splitter
            // would otherwise size the future of every idle session.
            Action::RelayBody { rewrite: Some(rw), .. } => {
                let end = BodyEnd::of(m);
                Box::pin(self.relay_rewritten(&rw, end)).await?
            }
            Action::LoginRefused(reply) => {
                if crate::edge::is_login_failure(&reply) {
                    let user = m.login_user().or(m.named()).map(str::to_string);
                    let upstream = self.upstream_shown();
                    let why = crate::edge::LoginFailure::UpstreamRefused;
                    let delay = self.ctx.edge.login_failed(self.peer.ip(), user.as_deref(), &upstream, why);
                    self.flush().await?;
                    tokio::time::sleep(delay).await;
                }
            }
            Action::LoginFailed { why, user, upstream } => {
                let upstream = match (upstream, why) {
                    (Some(named), _) => named,
                    (None, crate::edge::LoginFailure::UpstreamNotAllowed) => "-".to_string(),
                    (None, _) => self.upstream_shown(),
                };
                let delay = self.ctx.edge.login_failed(self.peer.ip(), user.as_deref(), &upstream, why);
                self.flush().await?;
                tokio::time::sleep(delay).await;
            }
            Action::Updated => {
                let up = self.upstream_shown();
                Box::pin(history_hooks::after_update(self.ctx, &up, m.login_user(), m.view())).await
            }
            Action::User(name) => {
                logging::set_user(&name);
            }
            // Dropping the connection closes it (leftover replies must answer no command).
            Action::DropUpstream => self.up = None,
            Action::ViewReady(entries) => {
                // What the rules said of each message is reported here and then dropped:
                // the view keeps only what TRANSACTION needs (issue 16). The history takes
                // its shared references now and is queued after the login's `+OK`.
                if let Some(scan) = &self.scan {
                    scan.report(&entries, self.ctx.config.dry_run);
                    self.history =
                        history_hooks::batch(self.ctx, &self.upstream_shown(), m.login_user(), &entries).map(Box::new);
                }
                self.scan = None;
                self.usage = None;
            }
            Action::RecordHistory => {
                if let Some(batch) = self.history.take() {
                    history_hooks::record(self.ctx, *batch);
                }
            }
            Action::Need(_) | Action::Close => {}
        }
        Ok(())
    }

    /// Performs a need: waits for what the machine asked, under its phase's timeout.
    async fn perform(&mut self, need: Need, m: &mut Machine) -> Result<Input, SessionError> {
        let ctx = self.ctx;
        // Borrowed, not copied: a copy (168 bytes) would be kept across every wait below,
        // in the future every idle session holds (issue 16).
        let t = &ctx.config.timeouts;
        Ok(match need {
            Need::Connect => {
                let target =
                    ctx.listener.upstream.as_ref().ok_or(SessionError::Internal("listener without upstream"))?;
                // Boxed, like the other once-per-session steps below (issue 16): a TLS
                // handshake's state lives on the heap while it runs, instead of sizing the
                // future every idle session keeps (6 KiB, measured by tests/benches/idle_sessions.rs).
                let connect = Box::pin(upstream::connect(target, &ctx.tls, t));
                let mut up = watching(&mut self.client, false, connect).await?;
                // Moved, not copied: the machine keeps them for the session (issue 16).
                let input = Input::Connected { greeting: std::mem::take(&mut up.greeting), caps: up.caps.take() };
                self.up = Some(Box::new(up));
                input
            }
            Need::Resolve { host, port } => {
                let lookup = tokio::time::timeout(t.connect, tokio::net::lookup_host((host.as_str(), port)));
                // Boxed, once per session (issue 16): see `Need::Connect`.
                let r = match Box::pin(watching(&mut self.client, false, async { Ok(lookup.await) })).await? {
                    Ok(Ok(addrs)) => Ok(addrs.collect()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", t.connect)),
                };
                Input::Resolved(r)
            }
            Need::ConnectTo { upstream: target, addrs } => {
                logging::set_upstream(target.display());
                let connect = Box::pin(upstream::connect_to(&target, &addrs, &ctx.tls, t));
                let mut up = watching(&mut self.client, false, connect).await?;
                let input = Input::Connected { greeting: std::mem::take(&mut up.greeting), caps: up.caps.take() };
                self.up = Some(Box::new(up));
                self.target = Some(target);
                input
            }
            Need::StartTls => {
                self.flush().await?;
                // Anything the client sent after STLS in the clear must not be taken as if
                // it came over TLS (the STARTTLS command-injection attack, CVE-2011-0411).
                let injected = self.client.buffered().len();
                if injected > 0 {
                    warn!(octets = injected, "discarding plain-text input sent after STLS");
                    self.client.consume(injected);
                }
                let peer = self.peer;
                // Boxed, once per session (issue 16): the handshake's state (1.5 KiB) would
                // otherwise size the future every idle session keeps.
                Box::pin(self.ctx.edge.start_tls(self.client.get_mut(), peer))
                    .await
                    .map_err(|e| SessionError::ClientIo(std::io::Error::other(e.to_string())))?;
                Input::TlsStarted
            }
            Need::LoginAllowed => Input::LoginAllowed(!ctx.edge.is_throttled(self.peer.ip())),
            Need::ClientLine | Need::BufferedClientLine { .. } | Need::ClientInput => {
                let Some(wait) = ClientWait::of(&need) else { return Err(SessionError::Internal("not a client wait")) };
                return self.flushed_wait(wait, m).await;
            }
            Need::UpstreamLine { phase, lenient: true } => {
                // Only the upstream's failures are lenient: one of the client's (a write
                // before the wait) ends the session as anywhere else.
                let line = match self.flush_before_line(phase).await {
                    Ok(()) => self.up_line(phase, m.quit_queued(), m.spare()).await,
                    Err(e) if e.upstream_kind().is_none() => return Err(e),
                    Err(e) => Err(e),
                };
                match line {
                    Ok(line) => Input::UpstreamLine(line),
                    Err(_) => Input::UpstreamLineFailed,
                }
            }
            Need::UpstreamLine { phase, lenient: false } => {
                self.flush_before_line(phase).await?;
                Input::UpstreamLine(self.up_line(phase, m.quit_queued(), m.spare()).await?)
            }
            Need::UpstreamBody { phase } => {
                let conn = connected(&mut self.up)?;
                let read = conn.read_multiline(MAX_CAPA, t, phase);
                // Boxed (issue 16): CAPA and the AUTHORIZATION exchanges read here, rarely
                // anything later; its state would otherwise size every idle session's future.
                Input::UpstreamBody(Box::pin(watching(&mut self.client, m.quit_queued(), read)).await?)
            }
            // Boxed (issue 16): the scan's state lives on the heap only while it runs,
            // instead of enlarging the future an idle session keeps for its whole life.
            Need::Scan { pipelining, requested } => return Box::pin(self.scan(pipelining, requested, m)).await,
            // Evaluation, the quarantine folder and each copy may be slow: they run under
            // `ticking`, so the early login answer still goes out on time.
            Need::Evaluate(outcome) => {
                let shown = self.upstream_shown();
                let up = connected(&mut self.up)?;
                if self.scan.is_none() {
                    self.scan =
                        Some(Box::new(LoginScan::start(ctx, target_of(ctx, &self.target), m.login_user()).await));
                }
                let scan = self.scan.as_mut().ok_or(SessionError::Internal("login scan state"))?;
                let uidl_trusted = outcome.uidl_trusted;
                let user = m.login_user().map(str::to_string);
                let work = async {
                    let mut entries = scan.evaluate(up, ctx, *outcome).await?;
                    let overrides_read =
                        history_hooks::before_view(ctx, &shown, user.as_deref(), uidl_trusted, &mut entries).await;
                    Ok((entries, overrides_read))
                };
                let (entries, overrides_read) =
                    Box::pin(ticking(&mut self.client, &mut self.out, m, t.client_idle, work)).await?;
                if !overrides_read {
                    m.hold_condemnation();
                }
                Input::Evaluated(entries)
            }
            Need::QuarantineFolder => {
                let user = m.login_user().map(str::to_string);
                let shown = self.upstream_shown();
                let work = async { Ok(quarantine_copy::open_folder(ctx, &shown, user.as_deref()).await) };
                self.usage =
                    Box::pin(ticking(&mut self.client, &mut self.out, m, t.client_idle, work)).await?.map(Box::new);
                Input::QuarantineFolder
            }
            Need::Quarantine(entry) => {
                let shown = self.upstream_shown();
                let up = connected(&mut self.up)?;
                let user = m.login_user().map(str::to_string);
                let work =
                    quarantine_copy::quarantine(up, ctx, &shown, user.as_deref(), self.usage.as_deref_mut(), &entry);
                Input::Quarantined(Box::pin(ticking(&mut self.client, &mut self.out, m, t.client_idle, work)).await?)
            }
            Need::Pending => return Err(SessionError::Internal("the session machine asked for an input twice")),
        })
    }

    /// The login scan's reads. The login `+OK` may be due meanwhile (see the module doc):
    /// then the machine is ticked and its client-side actions performed while the scan
    /// goes on (only the client is touched; the scan owns the upstream).
    async fn scan(&mut self, pipelining: bool, requested: bool, m: &mut Machine) -> Result<Input, SessionError> {
        let ctx = self.ctx;
        let scan = LoginScan::start(ctx, self.target(), m.login_user()).await;
        let outcome = {
            let up = connected(&mut self.up)?;
            let scanning = scan.list(up, ctx, pipelining, requested);
            ticking(&mut self.client, &mut self.out, m, ctx.config.timeouts.client_idle, scanning).await?
        };
        self.scan = Some(Box::new(scan));
        Ok(Input::Listed(Box::new(outcome)))
    }

    /// The upstream this session is connected to (the listener's, or the one a per-user
    /// login named): with the user it keys the cache, quarantine, history and rules.
    fn target(&self) -> Option<&UpstreamConfig> {
        target_of(self.ctx, &self.target)
    }

    /// The session's upstream as `HOST:PORT` (the listener's until a login named one).
    fn upstream_shown(&self) -> String {
        match self.target() {
            Some(t) => t.display(),
            None => self.ctx.listener.upstream_display(),
        }
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            let t = self.ctx.config.timeouts.client_idle;
            self.client.write_outbox(&self.out, &[], t, Phase::ClientWrite).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn tell_client_upstream_failed(&mut self, e: &SessionError) {
        if self.mid_response {
            // Pass on what arrived; the client sees a reply without its terminator followed by
            // the close, exactly as if it had been talking to the failing server directly.
            let t = self.ctx.config.timeouts.client_idle;
            let _ = self.client.write_outbox(&self.out, &[], t, Phase::ClientWrite).await;
            return;
        }
        // Replies already complete (earlier pipelined commands) go out first, so the `-ERR`
        // answers the command that failed, not one before it. The log line at the session's
        // end has the detail; the client gets no host names.
        let text = format!("-ERR [SYS/TEMP] upstream server failed ({}); try again later\r\n", e.client_reason());
        self.out.extend_from_slice(text.as_bytes());
        let _ =
            self.client.write_outbox(&self.out, &[], self.ctx.config.timeouts.client_idle, Phase::ClientWrite).await;
        self.out.clear();
    }

    /// RFC 1939 §3: the server speaks only in reply to a command. Called when no command is
    /// outstanding: bytes that arrived anyway would pair every later reply with the wrong
    /// command (a RETR relaying another reply as the message, a DELE's reply misread), so
    /// the session ends instead (`-ERR [SYS/TEMP]`, no UPDATE: nothing is deleted).
    fn check_upstream_quiet(&mut self, phase: Phase) -> Result<(), SessionError> {
        let conn = connected(&mut self.up)?;
        if conn.buffered().is_empty() && !conn.fill_if_ready(phase)? {
            return Ok(());
        }
        let extra = conn.buffered();
        let shown = String::from_utf8_lossy(extra.get(..80).unwrap_or(extra)).into_owned();
        Err(SessionError::UpstreamProtocol {
            phase,
            detail: format!("upstream sent data with no command outstanding: {shown:?}"),
        })
    }

    /// Issue 16: replies queued for the client (earlier pipelined commands') go out before
    /// popsift waits for the server's next status line, as a byte pump sends what it read;
    /// not while that line is already buffered or arrives whole without waiting (a part of
    /// it is read and the rest looked for again).
    async fn flush_before_line(&mut self, phase: Phase) -> Result<(), SessionError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let conn = connected(&mut self.up)?;
        // At most a status line's length (past it, the read refuses the line).
        while conn.line_incomplete(MAX_STATUS_LINE) {
            // Queued output that still shares the read buffer goes out first, so the read
            // reuses the buffer instead of allocating another (see `Conn::read_needs_allocation`).
            if conn.read_needs_allocation() || !conn.fill_if_ready(phase)? {
                return self.flush().await;
            }
        }
        Ok(())
    }

    /// One upstream status line, whole within `upstream_reply`, appended to `into` (a
    /// buffer the machine recycles, [`Machine::spare`]). Outside the scan and UPDATE the
    /// client is watched meanwhile (see the module doc).
    async fn up_line(&mut self, phase: Phase, quit_queued: bool, mut into: Vec<u8>) -> Result<Vec<u8>, SessionError> {
        let t = self.ctx.config.timeouts.upstream_reply;
        let conn = connected(&mut self.up)?;
        let read = conn.read_line(MAX_STATUS_LINE, t, phase);
        let line = match phase {
            Phase::Scan | Phase::Update => read.await?,
            _ => watching(&mut self.client, quit_queued, read).await?,
        };
        if Status::parse(&line).is_none() {
            return Err(SessionError::UpstreamProtocol {
                phase,
                detail: format!("not a status line: {:?}", String::from_utf8_lossy(line.get(..80).unwrap_or(&line))),
            });
        }
        into.extend_from_slice(&line);
        Ok(into)
    }

    /// Copies one multi-line body from upstream to the client, verbatim (dot-stuffing kept).
    async fn relay_body(&mut self, phase: Phase, end: BodyEnd) -> Result<(), SessionError> {
        let quit_queued = end.quit_queued;
        let t = self.ctx.config.timeouts;
        let up = connected(&mut self.up)?;
        let mut scanner = BodyScanner::new();
        let mut clock = BodyClock::start(&t);
        self.mid_response = true;
        // Body octets at the front of the upstream's read buffer, fed to the scanner and not
        // yet written. Issue 16: they are written from there behind the queued output in one
        // `writev`, instead of being copied into the output queue first.
        let mut held = 0;
        loop {
            match up.body_part(held, &mut scanner) {
                Some((n, true))
                    if (end.last && self.client.buffered().is_empty()) || self.out.len() + n >= FLUSH_AT =>
                {
                    // Issue 16: the last reply before the client's next command (one
                    // command at a time) goes out now, in one `writev` behind its status
                    // line straight from the read buffer, instead of being copied into the
                    // output queue for the flush that would follow at once. So does the end
                    // of a pipelined reply that fills the queue to `FLUSH_AT`: the queue would
                    // be written at the next reply's status line anyway (the same number of
                    // writes, one copy less). Only the body's octets: what follows the
                    // terminator stays buffered (the next pipelined reply, or unsolicited
                    // data that `check_upstream_quiet` refuses).
                    let part = up.buffered().get(..n).unwrap_or_default();
                    self.client.write_outbox(&self.out, part, t.client_idle, Phase::ClientWrite).await?;
                    up.consume(n);
                    self.out.clear();
                    self.mid_response = false;
                    return Ok(());
                }
                Some((n, true)) => {
                    // The end of the body joins the output queue: replies to pipelined
                    // commands behind it go out in the same write. Issue 16: split off the
                    // read buffer as a shared part, not copied (see `net::outbox`).
                    if self.out.would_share(n) {
                        self.out.push_shared(up.split_front(n));
                    } else {
                        self.out.extend_from_slice(up.buffered().get(..n).unwrap_or_default());
                        up.consume(n);
                    }
                    self.mid_response = false;
                    return Ok(());
                }
                Some((n, false)) => held = n,
                None => {}
            }
            // Issue 16: what is gathered goes out before popsift waits for more of the body,
            // as a byte pump sends what it read: the client takes it in while the server
            // sends the rest. Not while more is already readable (then one larger write
            // follows), and at `FLUSH_AT` in any case.
            let gathered = self.out.len() + held;
            // Nor when the read would need a new buffer because the queued output still shares
            // this one (see `Conn::read_needs_allocation`): written first, it is free again.
            let readable = match gathered > 0 && gathered < FLUSH_AT && !up.read_needs_allocation() {
                true => up.fill_body_if_ready(&mut clock, phase),
                false => Ok(false),
            };
            let readable = match readable {
                Ok(r) => r,
                Err(e) => {
                    // What arrived is passed on (see `tell_client_upstream_failed`).
                    self.out.extend_from_slice(up.buffered().get(..held).unwrap_or_default());
                    up.consume(held);
                    return Err(e);
                }
            };
            if readable {
                continue;
            }
            if gathered > 0 {
                let part = up.buffered().get(..held).unwrap_or_default();
                self.client.write_outbox(&self.out, part, t.client_idle, Phase::ClientWrite).await?;
                up.consume(held);
                held = 0;
                self.out.clear();
            }
            if let Err(e) = watching(&mut self.client, quit_queued, up.fill_body(&mut clock, phase)).await {
                // What arrived is passed on when the upstream fails (see
                // `tell_client_upstream_failed`): the held part joins the queue.
                self.out.extend_from_slice(up.buffered().get(..held).unwrap_or_default());
                up.consume(held);
                return Err(e);
            }
        }
    }

    /// Relays a RETR/TOP body with its header block replaced: reads the stuffed header part,
    /// sends the replacement (stuffed), then streams the rest verbatim.
    async fn relay_rewritten(&mut self, rw: &HeaderRewrite, body_end: BodyEnd) -> Result<(), SessionError> {
        let quit_queued = body_end.quit_queued;
        let t = self.ctx.config.timeouts;
        let cap = self.ctx.config.scan.header_limit + 4096;
        let mut splitter = HeaderSplitter::new(cap);
        let mut clock = BodyClock::start(&t);
        self.mid_response = true;
        let end = loop {
            let up = connected(&mut self.up)?;
            let buf = up.buffered();
            if !buf.is_empty() {
                let found = splitter.feed(buf);
                let n = buf.len();
                up.consume(n);
                if found.is_some() {
                    break found;
                }
                if splitter.over_cap() {
                    break None;
                }
            }
            watching(&mut self.client, quit_queued, up.fill_body(&mut clock, Phase::Relay)).await?;
        };
        let raw = splitter.raw();
        let (header_end, body_start, terminated) = match end {
            Some(HeaderEnd::Blank { end }) => (end, end, false),
            Some(HeaderEnd::Terminator { start, end }) => (start, end, true),
            None => {
                warn!("header block larger than at login; message relayed untagged");
                (0, 0, false)
            }
        };
        let header = raw.get(..header_end).unwrap_or_default();
        if header_end > 0 && !self.out.append_with(|out| rewritten_header(header, rw, out)) {
            warn!("message headers changed since login; relayed untagged");
        }
        let rest = raw.get(body_start..).unwrap_or_default().to_vec();
        // Whatever followed the terminator belongs to the next reply; otherwise the rest is
        // body: hand it back to the stream relay, which starts at a line start.
        connected(&mut self.up)?.unread(&rest);
        if terminated {
            self.out.extend_from_slice(b".\r\n");
            self.mid_response = false;
            return Ok(());
        }
        self.relay_body(Phase::Relay, body_end).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::net::type_size::{output_size2, output_size3};

    /// Most the session future may take (see `idle_future_is_small`).
    const RUN_FUTURE_MAX: usize = 1408;

    /// Issue 16: the session future is what every idle session keeps for its whole life.
    /// It holds the session, the machine and the wait for the client's next command; the
    /// work of a command is boxed per command (`Session::steps`) and must not creep back in.
    #[test]
    fn idle_future_is_small() {
        let session = output_size2(run);
        let per_command = output_size3(Session::steps);
        eprintln!(
            "session future {session} B (machine {} B, session {} B, pump {} B, client wait {} B), per-command future {per_command} B",
            std::mem::size_of::<Machine>(),
            std::mem::size_of::<Session<'_>>(),
            output_size2(Session::pump),
            output_size3(Session::client_wait),
        );
        // The listener boxes this future inside its admission block and the task-local
        // scope (`net::listener::tests::the_idle_session_box_is_small` bounds that box by
        // its size class). 1,384 B here (debug build; 1,376 B while the drain deadline's
        // wait sat in a `select!`, now `net::cut_off`, which holds the listener's receiver
        // by reference and the same boxed wait) puts that box at 1,432 B, in jemalloc's
        // 1,536-byte size class; the bound leaves 24 B. It was 1,600 B (release) and the
        // box in the 1,792 one before the machine dropped what TRANSACTION does not need
        // (the login's `+OK` and its due time boxed, the user name kept once, `u32` counts,
        // the SASL mechanism only while its identity is unread, the view's tables as boxed
        // slices), the session stopped keeping the
        // borrowed client stream and its result (the end boxed, `finish`), and the
        // admission and its per-address slot were neither partly moved nor held twice.
        // Earlier: the 2,560 class with a `run` of 2,280 B (debug build) before the settings
        // were shared, the per-user upstream, the session's target and `Need::ConnectTo`'s
        // server boxed, the client wait given a one-octet kind, and `run` stopped holding
        // its arguments twice; the 3,072 one before the AUTHORIZATION line read, the drain
        // watch, the upstream connection and UPDATE's queue were boxed.
        assert!(session <= RUN_FUTURE_MAX, "the session future grew to {session} B");
    }
}
