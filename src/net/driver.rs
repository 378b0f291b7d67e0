//! One client session from accept to close: connect upstream, pass AUTHORIZATION through,
//! scan at login, then serve the filtered view in TRANSACTION and perform UPDATE at QUIT.
//!
//! This is the I/O side. The decisions are sans-IO machines in [`crate::session`]:
//! [`crate::session::auth`] (AUTHORIZATION, SASL identity), [`crate::session::pipeline`]
//! (TRANSACTION queue, pipelining, UPDATE's DELE batches), [`crate::session::relay`]
//! (status sizes, tagged headers, the quarantine copy). Bodies move through the one relay
//! step [`Conn::relay_buffered`]; header blocks are split by [`HeaderSplitter`].
//!
//! Pipelined client commands (RFC 2449 §6.6) are planned as soon as they are buffered and
//! answered strictly in order. Commands that need the upstream are sent ahead when the
//! upstream itself pipelines; otherwise one at a time. Replies to the client are batched and
//! flushed when no further command is waiting, so a pipelining client gets full-size writes
//! and a one-command-at-a-time client gets each reply immediately.
//!
//! # Early answer (`scan.early_answer_after`)
//! The login `+OK` normally waits for the scan, because the client may send STAT right
//! after it and POP3 has no way to say "wait" before a reply. Mail clients give up on a
//! reply after 30–120 s, so when the scan is still running after `early_answer_after`
//! (default 20 s) popsift sends the upstream's login `+OK` at once and goes on scanning.
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
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{Config, Listener, OnFailure, WithoutTop};
use crate::metrics::{self as m, Direction, SessionResult};
use crate::net::conn::{BodyClock, Conn, Side};
use crate::net::error::{Phase, SessionError};
use crate::net::scan::{refetch_headers, scan, CacheUse, Evaluator};
use crate::net::upstream::{self, Upstream};
use crate::pop3::capa::{self as capa_codec};
use crate::pop3::command::{self, MAX_COMMAND_LINE};
use crate::pop3::status::{Status, StatusKind, MAX_STATUS_LINE};
use crate::pop3::{BodyScanner, HeaderEnd, HeaderSplitter};
use crate::rules::RulesHandle;
use crate::session::auth::{Authorization, SaslStep, INVALID_SASL_NAME};
use crate::session::capa::{self, Known};
use crate::session::pipeline::{dele_batches, Pipeline, Step};
use crate::session::plan::{err, AuthPlan};
use crate::session::relay::{rewrite_octets, rewritten_header, CopyStep, QuarantineCopy};
use crate::session::scan::{build_entries, quarantine_candidates, recheck, to_recheck};
use crate::session::view::{Disposition, Entry, HeaderRewrite, MailboxView};
use crate::store::header_cache::{HeaderCache, Scope};
use crate::store::quarantine::{Meta as QuarantineMeta, Quarantine, QuarantineError, Usage as QuarantineUsage};
use crate::store::verdict_memo::{MailboxMemo, VerdictMemo};

/// Client output is flushed when this much is pending, even mid-response.
const FLUSH_AT: usize = 64 * 1024;
/// Most client input read ahead while watching the client during an upstream wait.
const WATCH_READ_AHEAD: usize = 64 * 1024;

/// Runs an upstream wait while watching the client: if the client goes (see
/// [`Conn::gone`]), the wait is abandoned and the session ends.
async fn watching<T>(
    client: &mut Conn<TcpStream>,
    quit_queued: bool,
    wait: impl Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    tokio::select! {
        biased;
        r = wait => r,
        gone = client.gone(WATCH_READ_AHEAD, quit_queued) => Err(gone),
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
    /// The decision history (review page); `None` when it could not be opened.
    pub history: Option<Arc<crate::store::history::Recorder>>,
}

/// What the session did, for the summary log line.
#[derive(Debug, Default)]
struct Stats {
    user: Option<String>,
    messages: usize,
    hidden: usize,
    condemned: usize,
    tagged: usize,
    retrieved: usize,
    deleted_upstream: usize,
    auth_failed: bool,
    logged_in: bool,
}

/// Runs one session to its end; never panics on peer input and never returns an error:
/// everything is logged and counted here.
pub async fn run(client: TcpStream, peer: SocketAddr, ctx: Arc<SessionContext>) {
    let span = info_span!("session", %peer, upstream = %ctx.listener.upstream.display(), user = tracing::field::Empty);
    async move {
        let started = Instant::now();
        // Counts the session in `popsift_sessions_active` until dropped, even by a panic.
        let active = m::ActiveSession::start();
        let _ = client.set_nodelay(true);
        let mut s = Session {
            client: Conn::new(client, Side::Client),
            up: None,
            out: Vec::new(),
            mid_response: false,
            stats: Stats::default(),
            ctx: &ctx,
            login_user: None,
            login_answered: false,
            quit_queued: false,
        };
        let result = s.drive().await;
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
                let _ = s.client.write_all(text.as_bytes(), std::time::Duration::from_secs(5), Phase::ClientIdle).await;
                SessionResult::ClientAborted
            }
            Err(SessionError::Timeout { phase: Phase::ClientLine, after }) => {
                let text = format!("-ERR command line not completed within {after:?}; closing\r\n");
                let _ = s.client.write_all(text.as_bytes(), std::time::Duration::from_secs(5), Phase::ClientLine).await;
                SessionResult::ClientAborted
            }
            Err(SessionError::ClientLineTooLong { limit }) => {
                let text = format!("-ERR line too long (limit {limit} octets); closing\r\n");
                let _ = s.client.write_all(text.as_bytes(), std::time::Duration::from_secs(5), Phase::Relay).await;
                SessionResult::ClientAborted
            }
            Err(_) => SessionResult::ClientAborted,
        };
        // A client that only ever failed to log in, however it left, is an auth failure.
        let outcome = match outcome {
            SessionResult::Ok | SessionResult::ClientAborted if s.stats.auth_failed && !s.stats.logged_in => {
                SessionResult::AuthFailed
            }
            other => other,
        };
        s.client.shutdown().await;
        let (bytes_up, bytes_client) = (s.up.as_ref().map_or(0, |u| u.conn.bytes_in), s.client.bytes_out);
        m::bytes(Direction::FromUpstream, bytes_up);
        m::bytes(Direction::ToClient, bytes_client);
        active.finish(outcome);
        let st = &s.stats;
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
    .instrument(span)
    .await
}

/// What `Session::up` being `None` would mean: only before connect, when nothing uses it.
const NOT_CONNECTED: SessionError = SessionError::UpstreamClosed { phase: Phase::Connect };

/// The upstream connection, borrowing only the `up` field (the relay loops write to the
/// client while they hold it).
fn connected(up: &mut Option<Upstream>) -> Result<&mut Conn<crate::net::stream::Stream>, SessionError> {
    up.as_mut().map(|u| &mut u.conn).ok_or(NOT_CONNECTED)
}

struct Session<'a> {
    ctx: &'a SessionContext,
    client: Conn<TcpStream>,
    up: Option<Upstream>,
    /// Client output not yet written.
    out: Vec<u8>,
    /// A multi-line reply has been started towards the client: an `-ERR` now would corrupt it.
    mid_response: bool,
    stats: Stats,
    /// The mailbox name of the login in progress, when it is known for sure (USER/PASS,
    /// APOP, the SASL PLAIN/LOGIN/CRAM-MD5 identity); `None` for other SASL mechanisms.
    /// Keys the header cache, the verdict memo and the quarantine folder.
    login_user: Option<String>,
    /// The login `+OK` has been sent early (see the module doc) while the scan goes on.
    login_answered: bool,
    /// The client's QUIT has been read: its EOF no longer ends the session early.
    quit_queued: bool,
}

impl Session<'_> {
    fn up(&mut self) -> Result<&mut Upstream, SessionError> {
        self.up.as_mut().ok_or(NOT_CONNECTED)
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            let t = self.ctx.config.timeouts.client_idle;
            self.client.write_all(&self.out, t, Phase::ClientWrite).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn reply(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.out.extend_from_slice(bytes);
        self.flush().await
    }

    async fn tell_client_upstream_failed(&mut self, e: &SessionError) {
        if self.mid_response {
            // Pass on what arrived; the client sees a reply without its terminator followed by
            // the close, exactly as if it had been talking to the failing server directly.
            let t = self.ctx.config.timeouts.client_idle;
            let _ = self.client.write_all(&self.out, t, Phase::ClientWrite).await;
            return;
        }
        self.out.clear();
        // The log line at the session's end has the detail; the client gets no host names.
        let text = format!("-ERR [SYS/TEMP] upstream server failed ({}); try again later\r\n", e.client_reason());
        let _ = self.client.write_all(text.as_bytes(), self.ctx.config.timeouts.client_idle, Phase::ClientWrite).await;
    }

    /// RFC 1939 §3: the server speaks only in reply to a command. Called when no command is
    /// outstanding: bytes that arrived anyway would pair every later reply with the wrong
    /// command (a RETR relaying another reply as the message, a DELE's reply misread), so
    /// the session ends instead (`-ERR [SYS/TEMP]`, no UPDATE: nothing is deleted).
    async fn check_upstream_quiet(&mut self, phase: Phase) -> Result<(), SessionError> {
        let conn = &mut self.up()?.conn;
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

    async fn up_write(&mut self, bytes: &[u8], phase: Phase) -> Result<(), SessionError> {
        let t = self.ctx.config.timeouts.upstream_reply;
        self.up()?.conn.write_all(bytes, t, phase).await
    }

    /// One upstream status line, whole within `upstream_reply`. Outside the scan and
    /// UPDATE the client is watched meanwhile (see the module doc).
    async fn up_line(&mut self, phase: Phase) -> Result<Vec<u8>, SessionError> {
        let t = self.ctx.config.timeouts.upstream_reply;
        let quit_queued = self.quit_queued;
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
        Ok(line.to_vec())
    }

    async fn client_line(&mut self) -> Result<Vec<u8>, SessionError> {
        let t = self.ctx.config.timeouts;
        Ok(self.client.read_command(MAX_COMMAND_LINE, t.client_idle, t.client_line).await?.to_vec())
    }

    async fn drive(&mut self) -> Result<(), SessionError> {
        let ctx = self.ctx;
        let t = ctx.config.timeouts;
        let up = watching(&mut self.client, false, upstream::connect(&ctx.listener.upstream, &ctx.tls, &t)).await?;
        let mut greeting = up.greeting.clone();
        greeting.extend_from_slice(b"\r\n");
        self.up = Some(up);
        self.reply(&greeting).await?;
        let Some((login_reply, view)) = self.authorization().await? else {
            return Ok(());
        };
        if !self.login_answered {
            self.reply(&login_reply).await?;
        }
        self.transaction(view).await
    }

    /// AUTHORIZATION (RFC 1939 §4) passed through. Returns the upstream's `+OK` for the
    /// login (not yet sent) and the scanned view, or `None` when the client quit.
    async fn authorization(&mut self) -> Result<Option<(Vec<u8>, MailboxView)>, SessionError> {
        let mut auth = Authorization::new();
        loop {
            if self.login_answered {
                // The login was answered early and then refused after all (`scan.without_top:
                // refuse`): that `-ERR` answered the client's first command; the session ends
                // rather than fall back into AUTHORIZATION behind the client's back.
                return Ok(None);
            }
            let line = self.client_line().await?;
            let planned = auth.command(&line);
            self.note_identity(&auth);
            match planned {
                AuthPlan::Reply(b) => self.reply(&b).await?,
                AuthPlan::Relay(l) => {
                    self.up_write(&l, Phase::Login).await?;
                    let mut r = self.up_line(Phase::Login).await?;
                    r.extend_from_slice(b"\r\n");
                    self.reply(&r).await?;
                }
                AuthPlan::RelayMultiline(l) => {
                    self.up_write(&l, Phase::Login).await?;
                    let r = self.up_line(Phase::Login).await?;
                    let ok = Status::parse(&r).is_some_and(|s| s.is_ok());
                    self.out.extend_from_slice(&r);
                    self.out.extend_from_slice(b"\r\n");
                    if ok {
                        self.relay_body(Phase::Login).await?;
                    }
                    self.flush().await?;
                }
                AuthPlan::Login(l) => {
                    self.up_write(&l, Phase::Login).await?;
                    let r = self.up_line(Phase::Login).await?;
                    if let Some(done) = self.after_login_reply(r).await? {
                        return Ok(Some(done));
                    }
                }
                AuthPlan::Sasl(l) => {
                    self.up_write(&l, Phase::Login).await?;
                    loop {
                        let r = self.up_line(Phase::Login).await?;
                        if Status::parse(&r).is_some_and(|s| s.kind == StatusKind::Continue) {
                            // RFC 5034 §4: relay the challenge, then the client's response
                            // line (opaque but for the identity: never logged).
                            let mut c = r;
                            c.extend_from_slice(b"\r\n");
                            self.reply(&c).await?;
                            let resp = self.client_line().await?;
                            let step = auth.sasl_response(&resp);
                            self.note_identity(&auth);
                            match step {
                                SaslStep::Relay(resp) => {
                                    self.up_write(&resp, Phase::Login).await?;
                                    continue;
                                }
                                SaslStep::Cancel => {
                                    self.up_write(b"*\r\n", Phase::Login).await?;
                                    let _ = self.up_line(Phase::Login).await?;
                                    self.reply(&err(INVALID_SASL_NAME)).await?;
                                    break;
                                }
                            }
                        }
                        if let Some(done) = self.after_login_reply(r).await? {
                            return Ok(Some(done));
                        }
                        break;
                    }
                }
                AuthPlan::Capa => {
                    let caps = self.up.as_ref().and_then(|u| u.caps.clone());
                    let list = capa::rewrite(caps.as_deref(), Known { top: false, uidl: false, logged_in: false });
                    self.reply(&capa_codec::encode(&list)).await?;
                }
                AuthPlan::Quit => {
                    self.up_write(b"QUIT\r\n", Phase::Update).await?;
                    let mut r = self.up_line(Phase::Update).await.unwrap_or_else(|_| b"+OK bye".to_vec());
                    r.extend_from_slice(b"\r\n");
                    self.reply(&r).await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Takes the identity the AUTHORIZATION machine knows into the log span, the stats and
    /// `login_user`.
    fn note_identity(&mut self, auth: &Authorization) {
        if let Some(name) = auth.named() {
            self.stats.user = Some(name.to_string());
        }
        self.login_user = auth.login_user().map(str::to_string);
        if let Some(name) = self.login_user.as_deref().or(auth.named()) {
            tracing::Span::current().record("user", name);
        }
    }

    /// Handles the upstream's reply to PASS / APOP / AUTH: on `+OK` scans the mailbox. The
    /// returned reply has not been sent unless `login_answered` is set (early answer).
    async fn after_login_reply(&mut self, mut r: Vec<u8>) -> Result<Option<(Vec<u8>, MailboxView)>, SessionError> {
        let ok = Status::parse(&r).is_some_and(|s| s.is_ok());
        r.extend_from_slice(b"\r\n");
        if !ok {
            self.stats.auth_failed = true;
            self.reply(&r).await?;
            return Ok(None);
        }
        self.stats.logged_in = true;
        match self.scan_mailbox(&r).await? {
            Some(view) => Ok(Some((r, view))),
            None => Ok(None),
        }
    }

    /// Sends the login `+OK` now if the scan has run past `scan.early_answer_after`.
    async fn answer_early_if_due(
        &mut self,
        login_reply: &[u8],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), SessionError> {
        if !self.login_answered && deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            let t = self.ctx.config.timeouts.client_idle;
            self.client.write_all(login_reply, t, Phase::ClientWrite).await?;
            self.login_answered = true;
            info!("scan still running: login answered early; the first command waits for the scan");
        }
        Ok(())
    }

    /// The login scan: LIST, UIDL, TOP n 0, rule verdicts. `None` when the login was refused
    /// because the server cannot TOP and the config says to refuse. `login_reply` is sent
    /// to the client when the scan outlasts `scan.early_answer_after`.
    async fn scan_mailbox(&mut self, login_reply: &[u8]) -> Result<Option<MailboxView>, SessionError> {
        let ctx = self.ctx;
        let cfg = ctx.config.clone();
        let started = Instant::now();
        let deadline = cfg.scan.early_answer_after.map(|d| tokio::time::Instant::now() + d);
        let pipelining = cfg.scan.pipelining && capa::has(self.up()?.caps.as_deref(), "PIPELINING");
        // The rule set this session uses, taken once: a reload during the session does not
        // change its view, and the verdict memo is valid only for this very set.
        let rules = self.ctx.rules.current();
        // Likewise the classifier snapshot (read-only; training swaps in a new one).
        let model = self.ctx.model.current();
        let model_generation = model.as_ref().map(|m| m.generation());
        let scope = match (&ctx.cache, &self.login_user) {
            (Some(_), Some(user)) => Some(Scope::new(ctx.listener.upstream.display(), user.clone())),
            _ => None,
        };
        let cache = match (&ctx.cache, &scope) {
            (Some(cache), Some(scope)) => {
                let memo = ctx.memo.known_with_model(scope, &rules, model_generation);
                Some(CacheUse { cache, scope: scope.clone(), memo })
            }
            _ => None,
        };
        let outcome = {
            let up = connected(&mut self.up)?;
            let eval = Evaluator { rules: rules.clone(), model: model.clone(), tag: cfg.tag.clone() };
            let scanning = scan(up, pipelining, &cfg.scan, &cfg.timeouts, cache, &eval);
            tokio::pin!(scanning);
            match deadline {
                None => scanning.await?,
                Some(deadline) => tokio::select! {
                    r = &mut scanning => r?,
                    _ = tokio::time::sleep_until(deadline) => {
                        // Only the client side is touched here; the scan owns the upstream.
                        self.client.write_all(login_reply, cfg.timeouts.client_idle, Phase::ClientWrite).await?;
                        self.login_answered = true;
                        info!("scan still running: login answered early; the first command waits for the scan");
                        scanning.await?
                    }
                },
            }
        };
        debug!(
            messages = outcome.items.len(),
            cache_hits = outcome.cache_hits,
            tops_sent = outcome.tops_sent,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "mailbox listed and headers read"
        );
        if !outcome.top_supported && !outcome.items.is_empty() {
            if cfg.scan.without_top == WithoutTop::Refuse {
                warn!("upstream does not support TOP; refusing the login as configured (scan.without_top: refuse)");
                self.up_write(b"QUIT\r\n", Phase::Update).await?;
                let _ = self.up_line(Phase::Update).await;
                self.reply(b"-ERR [SYS/PERM] the mail server cannot TOP, and popsift is configured not to pass unfiltered mail\r\n")
                    .await?;
                return Ok(None);
            }
            warn_once_no_top(&self.ctx.listener.upstream.display());
        }
        if outcome.top_failures > 0 {
            warn!(failures = outcome.top_failures, "TOP failed for some messages; they are shown unfiltered");
        }
        let n = outcome.items.len();
        let uidl_trusted = outcome.uidl_trusted;
        let unverified = outcome.unverified;
        // Messages the rules actually look at now (not memoised, headers read); most were
        // evaluated during the scan already.
        let evaluated_now =
            outcome.evaluated + outcome.items.iter().filter(|i| i.memo.is_none() && i.headers.is_some()).count();
        let eval_started = Instant::now();
        let mut entries = evaluate_off_thread(outcome.items, rules.clone(), model.clone(), cfg.dry_run, &cfg.tag).await;
        let eval_seconds = outcome.eval_seconds + eval_started.elapsed().as_secs_f64();
        let eval_per_message = eval_seconds / evaluated_now.max(1) as f64;
        // A cached or memoised verdict never condemns on its own: fetch those headers again.
        let rechecks = to_recheck(&entries, &unverified, cfg.dry_run);
        if !rechecks.is_empty() {
            let msgs: Vec<(u32, u64)> =
                rechecks.iter().filter_map(|&i| entries.get(i)).map(|e| (e.upstream, e.upstream_size)).collect();
            let up = connected(&mut self.up)?;
            let fresh = refetch_headers(up, &msgs, &cfg.scan, &cfg.timeouts).await?;
            recheck(&mut entries, &rechecks, fresh, &rules, model.as_deref(), cfg.dry_run, &cfg.tag);
            debug!(rechecked = rechecks.len(), "condemning verdicts from the cache re-checked against fresh headers");
        }
        if let (Some(scope), true) = (scope, uidl_trusted) {
            let memo: MailboxMemo = entries
                .iter()
                .filter_map(|e| Some(((e.uidl.clone()?, e.upstream_size), e.evaluated.clone()?)))
                .collect();
            ctx.memo.store_with_model(scope, rules.clone(), model_generation, memo);
        }
        // Review page (issue 13): hidden messages the owner said "Not spam" to are shown;
        // messages released from quarantine join the view below.
        let history_mailbox =
            self.login_user.as_deref().map(|u| crate::store::history::mailbox_key(&ctx.listener.upstream.display(), u));
        let released = match (&ctx.history, &history_mailbox, uidl_trusted) {
            (Some(h), Some(mb), true) => {
                let (store, mb, q) = (h.store().clone(), mb.clone(), Quarantine::new(&cfg.quarantine.dir));
                crate::store::history::overrides(store, q, mb, &mut entries).await
            }
            _ => Vec::new(),
        };
        let mut candidates = quarantine_candidates(&entries, cfg.dry_run);
        candidates.retain(|&i| entries.get(i).is_some_and(|e| e.disposition != Disposition::Visible));
        let upstream = self.ctx.listener.upstream.display();
        let mut usage = match (&self.login_user, candidates.is_empty()) {
            (Some(user), false) => {
                let (q, user, upstream) = (Quarantine::new(&cfg.quarantine.dir), user.clone(), upstream.clone());
                tokio::task::spawn_blocking(move || q.usage(&user, &upstream)).await.ok()
            }
            _ => None,
        };
        for i in candidates {
            self.answer_early_if_due(login_reply, deadline).await?;
            let Some(e) = entries.get_mut(i) else { continue };
            let result = match usage.as_mut() {
                Some(usage) => self.quarantine_one(e, usage).await?,
                // A SASL mechanism whose identity popsift cannot read: no folder to trust.
                None => Err("the login's user name is unknown (SASL mechanism popsift does not read)".into()),
            };
            match result {
                Ok(Some(path)) => {
                    m::quarantine_message();
                    info!(uidl = e.uidl.as_deref().unwrap_or("-"), msg = e.upstream, path = %path.display(), "quarantined; DELE at QUIT");
                    e.disposition = Disposition::Condemned;
                }
                Ok(None) => {
                    // Copied at an earlier login whose UPDATE never happened: same content.
                    debug!(msg = e.upstream, "already in this user's quarantine (same digest); DELE at QUIT");
                    e.disposition = Disposition::Condemned;
                }
                Err(reason) => {
                    m::quarantine_error();
                    let show = cfg.quarantine.on_failure == OnFailure::Show;
                    tracing::error!(uidl = e.uidl.as_deref().unwrap_or("-"), msg = e.upstream, %reason, shown = show, "quarantine failed; message NOT deleted");
                    if show {
                        e.disposition = Disposition::Visible;
                    }
                }
            }
        }
        entries.extend(released);
        let view = MailboxView::new(entries);
        // Evaluation runs in parallel chunks off the async threads, so per-message times are
        // not observed one by one: each evaluated message records the batch's mean.
        for _ in 0..evaluated_now {
            m::rule_eval_duration(eval_per_message);
        }
        for e in view.entries() {
            let Some(v) = e.verdict() else { continue };
            m::message_scanned();
            let action = v.action.map_or("none", |a| a.as_str());
            m::message_verdict(if v.spam { "spam" } else { "ham" }, action);
            for r in &v.rules {
                m::rule_matched(r);
            }
            if v.action.is_some() || v.spam {
                let rules: Vec<&str> = v.rules.iter().map(|r| &**r).collect();
                info!(
                    uidl = e.uidl.as_deref().unwrap_or("-"),
                    msg = e.upstream,
                    action,
                    applied = ?e.disposition,
                    dry_run = cfg.dry_run,
                    score = v.score,
                    rules = rules.join(",").as_str(),
                    "verdict"
                );
            }
        }
        if let (Some(h), Some(mb)) = (&ctx.history, &history_mailbox) {
            h.record(crate::store::history::login_decisions(
                mb,
                view.entries(),
                cfg.dry_run,
                crate::store::history::now_secs(),
            ));
        }
        m::scan_duration(started.elapsed().as_secs_f64());
        let (_, hidden, condemned) = view.counts();
        self.stats.messages = n;
        self.stats.hidden = hidden;
        self.stats.condemned = condemned;
        self.stats.tagged = view
            .entries()
            .iter()
            .filter(|e| e.disposition == Disposition::Visible && e.verdict().is_some_and(|v| v.spam))
            .count();
        debug!(messages = n, hidden, condemned, elapsed_ms = started.elapsed().as_millis() as u64, "scan done");
        Ok(Some(view))
    }

    /// Retrieves a message and writes it to the quarantine folder of the login's user,
    /// streamed to the `tmp/` file (never held whole) and stopped at
    /// [`crate::config::QuarantineSettings::copy_limit`]. `Ok(Some(path))`: stored;
    /// `Ok(None)`: this folder already holds a copy with the same digest from this upstream.
    /// The outer error is an upstream failure (ends the session); the inner one means the
    /// message must not be deleted (too large, over quota, local failure).
    async fn quarantine_one(
        &mut self,
        e: &Entry,
        usage: &mut QuarantineUsage,
    ) -> Result<Result<Option<std::path::PathBuf>, String>, SessionError> {
        let cfg = self.ctx.config.clone();
        if e.upstream_size > cfg.quarantine.max_size {
            return Ok(Err(format!("message of {} octets exceeds quarantine.max_size", e.upstream_size)));
        }
        let limit = cfg.quarantine.copy_limit(e.upstream_size);
        let v = e.verdict();
        let meta = QuarantineMeta {
            user: self.login_user.clone().unwrap_or_default(),
            size: e.upstream_size,
            upstream: self.ctx.listener.upstream.display(),
            uidl: e.uidl.as_deref().unwrap_or("").to_string(),
            score: v.as_ref().map_or(0.0, |v| v.score),
            rules: v.map(|v| v.rules.iter().map(|r| r.to_string()).collect()).unwrap_or_default(),
        };
        let store = Quarantine::new(&cfg.quarantine.dir);
        let mut copy = match blocking(move || store.begin(&meta)).await {
            Ok(c) => Some(c),
            Err(reason) => return Ok(Err(reason)),
        };
        self.up_write(&command::Command::Retr(e.upstream).encode(), Phase::Scan).await?;
        let r = self.up_line(Phase::Scan).await?;
        if !Status::parse(&r).is_some_and(|s| s.is_ok()) {
            return Ok(Err(format!("upstream refused RETR: {}", String::from_utf8_lossy(&r))));
        }
        let mut sink = QuarantineCopy::new(limit, e.upstream_size);
        let mut failure: Option<String> = None;
        let mut scanner = BodyScanner::new();
        let mut clock = BodyClock::start(&cfg.timeouts);
        loop {
            let up = connected(&mut self.up)?;
            if let Some(done) = up.relay_buffered(&mut scanner, |body| sink.body(body)) {
                match sink.step(done, scanner.terminator_len()) {
                    CopyStep::Continue => {}
                    CopyStep::Discard(reason) => {
                        failure.get_or_insert(reason);
                        copy = None; // removes the temporary file
                    }
                    CopyStep::Write(chunk) => match copy.take() {
                        Some(mut c) => match blocking(move || c.write(&chunk).map(|()| c)).await {
                            Ok(c) => copy = Some(c),
                            Err(reason) => {
                                failure = Some(reason);
                                sink.discard();
                            }
                        },
                        None => {
                            failure = Some("quarantine copy lost".into());
                            sink.discard();
                        }
                    },
                }
                if done {
                    break;
                }
            }
            let up = connected(&mut self.up)?;
            up.fill_body(&mut clock, Phase::Scan).await?;
        }
        if let Some(reason) = failure {
            return Ok(Err(reason));
        }
        let Some(copy) = copy else { return Ok(Err("quarantine copy lost".into())) };
        let digest = copy.digest();
        if usage.digests.contains(&digest) {
            return Ok(Ok(None));
        }
        let q = &cfg.quarantine;
        if usage.messages + 1 > q.quota_messages || usage.bytes + copy.len() > q.quota_size {
            return Ok(Err(format!(
                "quarantine quota of this user reached ({} messages, {} octets; quota_messages {}, quota_size {})",
                usage.messages, usage.bytes, q.quota_messages, q.quota_size
            )));
        }
        let len = copy.len();
        let stored = blocking(move || copy.commit()).await;
        if stored.is_ok() {
            usage.messages += 1;
            usage.bytes += len;
            usage.digests.insert(digest);
        }
        Ok(stored.map(Some))
    }

    /// Copies one multi-line body from upstream to the client, verbatim (dot-stuffing kept).
    async fn relay_body(&mut self, phase: Phase) -> Result<(), SessionError> {
        let t = self.ctx.config.timeouts;
        let up = connected(&mut self.up)?;
        let mut scanner = BodyScanner::new();
        let mut clock = BodyClock::start(&t);
        self.mid_response = true;
        loop {
            match up.relay_buffered(&mut scanner, |body| self.out.extend_from_slice(body)) {
                Some(true) => {
                    self.mid_response = false;
                    return Ok(());
                }
                Some(false) if self.out.len() >= FLUSH_AT => {
                    self.client.write_all(&self.out, t.client_idle, Phase::ClientWrite).await?;
                    self.out.clear();
                }
                _ => {}
            }
            watching(&mut self.client, self.quit_queued, up.fill_body(&mut clock, phase)).await?;
        }
    }

    /// Relays a RETR/TOP body with its header block replaced: reads the stuffed header part,
    /// sends the replacement (stuffed), then streams the rest verbatim.
    async fn relay_rewritten(&mut self, rw: &HeaderRewrite) -> Result<(), SessionError> {
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
            watching(&mut self.client, self.quit_queued, up.fill_body(&mut clock, Phase::Relay)).await?;
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
        if header_end > 0 && !rewritten_header(header, rw, &mut self.out) {
            warn!("message headers changed since login; relayed untagged");
        }
        let rest = raw.get(body_start..).unwrap_or_default().to_vec();
        if terminated {
            self.out.extend_from_slice(b".\r\n");
            // Whatever followed the terminator belongs to the next reply.
            let up = connected(&mut self.up)?;
            up.unread(&rest);
            self.mid_response = false;
            return Ok(());
        }
        // The rest is body: hand it back to the stream relay, which starts at a line start.
        let up = connected(&mut self.up)?;
        up.unread(&rest);
        self.relay_body(Phase::Relay).await
    }

    /// TRANSACTION (RFC 1939 §5) on the filtered view, then UPDATE at QUIT: performs the
    /// steps of [`Pipeline`], which owns the queue and the pipelining policy.
    async fn transaction(&mut self, view: MailboxView) -> Result<(), SessionError> {
        let caps = self.up()?.caps.clone();
        let up_pipelining = capa::has(caps.as_deref(), "PIPELINING");
        let known = Known {
            top: view.entries().iter().any(|e| e.evaluated.is_some()),
            uidl: view.entries().iter().all(|e| e.uidl.is_some()),
            logged_in: true,
        };
        let mut pipeline = Pipeline::new(view, up_pipelining);
        loop {
            // Plan every command already buffered. For a pipelining client, top the buffer up
            // with whatever it has already sent (without waiting) while the queue runs low,
            // so the upstream stays busy instead of seeing a bubble every MAX_QUEUE commands.
            // A one-command-at-a-time client never has more to read: no extra syscall.
            while pipeline.wants_input() {
                match self.client.take_line(MAX_COMMAND_LINE)? {
                    Some(line) => pipeline.push_line(&line),
                    None if pipeline.read_ahead() && self.client.try_fill()? => continue,
                    None => break,
                }
            }
            self.quit_queued = pipeline.quit_planned();
            if let Some(ahead) = pipeline.take_ahead() {
                if ahead.upstream_was_idle {
                    self.check_upstream_quiet(Phase::Relay).await?;
                }
                self.up_write(&ahead.bytes, Phase::Relay).await?;
            }
            // Answer the oldest.
            match pipeline.next_step() {
                Some(Step::Reply(b)) => {
                    self.out.extend_from_slice(&b);
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                Some(Step::Relay { send }) => {
                    self.send_due(send, Phase::Relay).await?;
                    let r = self.up_line(Phase::Relay).await?;
                    self.out.extend_from_slice(&r);
                    self.out.extend_from_slice(b"\r\n");
                }
                Some(Step::Fetch { send, rewrite }) => {
                    self.send_due(send, Phase::Relay).await?;
                    let r = self.up_line(Phase::Relay).await?;
                    let ok = Status::parse(&r).is_some_and(|s| s.is_ok());
                    match (&rewrite, ok) {
                        (Some(rw), true) => {
                            self.out.extend_from_slice(&rewrite_octets(&r, rw.upstream_size, rw.size));
                            self.out.extend_from_slice(b"\r\n");
                            self.relay_rewritten(&rw.header).await?;
                        }
                        _ => {
                            self.out.extend_from_slice(&r);
                            self.out.extend_from_slice(b"\r\n");
                            if ok {
                                self.relay_body(Phase::Relay).await?;
                            }
                        }
                    }
                    if ok {
                        self.stats.retrieved += 1;
                    }
                }
                Some(Step::Capa { send }) => {
                    self.send_due(send, Phase::Capa).await?;
                    let r = self.up_line(Phase::Capa).await?;
                    let upstream_caps = if Status::parse(&r).is_some_and(|s| s.is_ok()) {
                        let t = self.ctx.config.timeouts;
                        let quit_queued = self.quit_queued;
                        let conn = connected(&mut self.up)?;
                        let read = conn.read_multiline(64 * 1024, &t, Phase::Capa);
                        let body = watching(&mut self.client, quit_queued, read).await?;
                        Some(capa_codec::parse(&body))
                    } else {
                        None
                    };
                    let list = capa::rewrite(upstream_caps.as_deref(), known);
                    self.out.extend_from_slice(&capa_codec::encode(&list));
                }
                Some(Step::Quit { deletions }) => {
                    self.flush().await?;
                    let released_deleted = pipeline.view().released_deleted();
                    let reply = self.update(&deletions, up_pipelining).await?;
                    if !released_deleted.is_empty() && Status::parse(&reply).is_some_and(|s| s.is_ok()) {
                        self.forget_released(released_deleted).await;
                    }
                    self.reply(&reply).await?;
                    return Ok(());
                }
                None => {
                    self.flush().await?;
                    let t = self.ctx.config.timeouts;
                    self.client.fill_client(t.client_idle, t.client_line).await?;
                }
            }
        }
    }

    /// Review page: released messages the client deleted, after a successful UPDATE.
    async fn forget_released(&self, uidls: Vec<Arc<str>>) {
        let (Some(h), Some(user)) = (&self.ctx.history, &self.login_user) else { return };
        let mb = crate::store::history::mailbox_key(&self.ctx.listener.upstream.display(), user);
        let (store, q) = (h.store().clone(), Quarantine::new(&self.ctx.config.quarantine.dir));
        let _ =
            tokio::task::spawn_blocking(move || crate::store::history::forget_released(&*store, &q, &mb, &uidls)).await;
    }

    /// Writes a command whose turn came and that was not sent ahead (see [`Step`]).
    async fn send_due(&mut self, send: Option<Vec<u8>>, phase: Phase) -> Result<(), SessionError> {
        if let Some(command) = send {
            self.check_upstream_quiet(phase).await?;
            self.up_write(&command, phase).await?;
        }
        Ok(())
    }

    /// UPDATE (RFC 1939 §6): DELE the client's deletions and the condemned messages, then
    /// QUIT. Returns the reply for the client.
    async fn update(&mut self, deletions: &[u32], pipelining: bool) -> Result<Vec<u8>, SessionError> {
        self.check_upstream_quiet(Phase::Update).await?;
        let window = if pipelining { self.ctx.config.scan.window.max(1) } else { 1 };
        let mut failed = 0usize;
        for (cmds, chunk) in dele_batches(deletions, window) {
            self.up_write(&cmds, Phase::Update).await?;
            for n in chunk {
                let r = self.up_line(Phase::Update).await?;
                if Status::parse(&r).is_some_and(|s| s.is_ok()) {
                    self.stats.deleted_upstream += 1;
                } else {
                    failed += 1;
                    warn!(msg = n, reply = %String::from_utf8_lossy(&r), "upstream refused DELE; the message stays on the server");
                }
            }
        }
        if failed > 0 {
            warn!(failed, "some deletions were refused by the server");
        }
        self.up_write(b"QUIT\r\n", Phase::Update).await?;
        let mut r = self.up_line(Phase::Update).await?;
        r.extend_from_slice(b"\r\n");
        Ok(r)
    }
}

/// Below this many messages the rules run in one blocking task; above, in one per core.
const EVAL_CHUNK_MIN: usize = 256;

/// Evaluates the rules for every scanned message on tokio's blocking pool (10,000 header
/// blocks take tens of milliseconds of CPU: not something to run on an async worker),
/// split over the available cores, results in server order.
async fn evaluate_off_thread(
    items: Vec<crate::session::scan::ScanItem>,
    rules: Arc<crate::rules::RuleSet>,
    model: Option<Arc<crate::classify::Model>>,
    dry_run: bool,
    tag: &crate::session::tag::TagSettings,
) -> Vec<Entry> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks = (items.len() / EVAL_CHUNK_MIN).clamp(1, cores);
    let per = items.len().div_ceil(chunks).max(1);
    let mut items = items;
    let mut tasks = Vec::with_capacity(chunks);
    while !items.is_empty() {
        let rest = items.split_off(per.min(items.len()));
        let chunk = std::mem::replace(&mut items, rest);
        let (rules, model, tag) = (rules.clone(), model.clone(), tag.clone());
        tasks.push(tokio::task::spawn_blocking(move || build_entries(chunk, &rules, model.as_deref(), dry_run, &tag)));
    }
    let mut out = Vec::new();
    for t in tasks {
        // A panic in the rules engine is a bug; surface it like one.
        out.extend(t.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    out
}

/// Runs a quarantine file operation on the blocking pool; any failure as text.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QuarantineError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("quarantine writer failed: {e}")),
    }
}

fn warn_once_no_top(upstream: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let set = WARNED.get_or_init(|| Mutex::new(HashSet::new()));
    let first = set.lock().map(|mut s| s.insert(upstream.to_string())).unwrap_or(false);
    if first {
        warn!(upstream, "upstream does not support TOP: mail is passed through UNFILTERED (set scan.without_top: refuse to refuse such logins)");
    }
}
