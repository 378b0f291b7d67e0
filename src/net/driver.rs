//! One client session from accept to close: connect upstream, pass AUTHORIZATION through,
//! scan at login, then serve the filtered view in TRANSACTION and perform UPDATE at QUIT.
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
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{Config, Listener, OnFailure, WithoutTop};
use crate::metrics::{self as m, Direction, SessionResult};
use crate::net::conn::{Conn, Side};
use crate::net::error::{Phase, SessionError};
use crate::net::scan::scan;
use crate::net::scan::CacheUse;
use crate::net::upstream::{self, Upstream};
use crate::pop3::capa::{self as capa_codec};
use crate::pop3::command::{self, MAX_COMMAND_LINE};
use crate::pop3::status::{Status, StatusKind, MAX_STATUS_LINE};
use crate::pop3::{find_header_end, stuff_lines, unstuff, BodyScanner, HeaderEnd, Unstuffer};
use crate::rules::RulesHandle;
use crate::session::capa::{self, Known};
use crate::session::plan::{self, err, AuthPlan, TxPlan};
use crate::session::scan::{build_entries, quarantine_candidates};
use crate::session::view::{Disposition, Entry, HeaderRewrite, MailboxView};
use crate::store::header_cache::{HeaderCache, Scope};
use crate::store::quarantine::{Meta as QuarantineMeta, Quarantine};
use crate::store::verdict_memo::{MailboxMemo, VerdictMemo};

/// Client output is flushed when this much is pending, even mid-response.
const FLUSH_AT: usize = 64 * 1024;
/// Most planned-but-unanswered client commands; beyond this popsift stops reading ahead.
const MAX_QUEUE: usize = 256;

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
        m::session_started();
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
        m::session_finished(outcome);
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

/// A header rewrite to apply while relaying RETR/TOP, with the sizes for the status line.
struct Rewrite {
    header: Arc<HeaderRewrite>,
    upstream_size: u64,
    size: u64,
}

/// A queued client command waiting for its turn to be answered.
enum Pending {
    Local(Vec<u8>),
    /// A single-line relayed command (NOOP).
    Relay {
        command: Vec<u8>,
        sent: bool,
    },
    Fetch {
        command: Vec<u8>,
        sent: bool,
        rewrite: Option<Rewrite>,
    },
    Capa {
        sent: bool,
    },
    Quit {
        deletions: Vec<u32>,
    },
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
    /// APOP); `None` for SASL, whose identity popsift does not parse. Keys the header cache.
    login_user: Option<String>,
    /// The login `+OK` has been sent early (see the module doc) while the scan goes on.
    login_answered: bool,
}

impl Session<'_> {
    fn up(&mut self) -> &mut Upstream {
        self.up.as_mut().expect("upstream connected before use")
    }

    async fn flush(&mut self) -> Result<(), SessionError> {
        if !self.out.is_empty() {
            let t = self.ctx.config.timeouts.client_idle;
            self.client.write_all(&self.out, t, Phase::Relay).await?;
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
            let _ = self.client.write_all(&self.out, t, Phase::Relay).await;
            return;
        }
        self.out.clear();
        let text = format!("-ERR [SYS/TEMP] upstream server failed ({e}); try again later\r\n");
        let _ = self.client.write_all(text.as_bytes(), self.ctx.config.timeouts.client_idle, Phase::Relay).await;
    }

    async fn up_write(&mut self, bytes: &[u8], phase: Phase) -> Result<(), SessionError> {
        let t = self.ctx.config.timeouts.upstream_reply;
        self.up().conn.write_all(bytes, t, phase).await
    }

    async fn up_line(&mut self, phase: Phase) -> Result<Vec<u8>, SessionError> {
        let t = self.ctx.config.timeouts.upstream_reply;
        let line = self.up().conn.read_line(MAX_STATUS_LINE, t, phase).await?;
        if Status::parse(&line).is_none() {
            return Err(SessionError::UpstreamProtocol {
                phase,
                detail: format!("not a status line: {:?}", String::from_utf8_lossy(&line[..line.len().min(80)])),
            });
        }
        Ok(line.to_vec())
    }

    async fn client_line(&mut self) -> Result<Vec<u8>, SessionError> {
        let t = self.ctx.config.timeouts.client_idle;
        Ok(self.client.read_line(MAX_COMMAND_LINE, t, Phase::ClientIdle).await?.to_vec())
    }

    async fn drive(&mut self) -> Result<(), SessionError> {
        let t = self.ctx.config.timeouts;
        let up = upstream::connect(&self.ctx.listener.upstream, &self.ctx.tls, &t).await?;
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
        loop {
            if self.login_answered {
                // The login was answered early and then refused after all (`scan.without_top:
                // refuse`): that `-ERR` answered the client's first command; the session ends
                // rather than fall back into AUTHORIZATION behind the client's back.
                return Ok(None);
            }
            let line = self.client_line().await?;
            let cmd = match command::parse(&line) {
                Ok(c) => c,
                Err(e) => {
                    self.reply(&err(e)).await?;
                    continue;
                }
            };
            debug!(command = cmd.keyword(), "client command");
            if let command::Command::User(name) | command::Command::Apop { name, .. } = &cmd {
                tracing::Span::current().record("user", name.as_str());
                self.stats.user = Some(name.clone());
            }
            match plan::authorization(&cmd, &line) {
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
                    self.login_user = match &cmd {
                        command::Command::Apop { name, .. } => Some(name.clone()),
                        // PASS logs in the name of the last USER.
                        _ => self.stats.user.clone(),
                    };
                    self.up_write(&l, Phase::Login).await?;
                    let r = self.up_line(Phase::Login).await?;
                    if let Some(done) = self.after_login_reply(r).await? {
                        return Ok(Some(done));
                    }
                }
                AuthPlan::Sasl(l) => {
                    // The identity is inside the SASL exchange: no cache (never guess a user).
                    self.login_user = None;
                    self.up_write(&l, Phase::Login).await?;
                    loop {
                        let r = self.up_line(Phase::Login).await?;
                        if Status::parse(&r).is_some_and(|s| s.kind == StatusKind::Continue) {
                            // RFC 5034 §4: relay the challenge, then the client's response
                            // line (opaque: never parsed, never logged).
                            let mut c = r;
                            c.extend_from_slice(b"\r\n");
                            self.reply(&c).await?;
                            let mut resp = self.client_line().await?;
                            resp.extend_from_slice(b"\r\n");
                            self.up_write(&resp, Phase::Login).await?;
                            continue;
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
            self.client.write_all(login_reply, t, Phase::Relay).await?;
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
        let pipelining = cfg.scan.pipelining && capa::has(self.up().caps.as_deref(), "PIPELINING");
        // The rule set this session uses, taken once: a reload during the session does not
        // change its view, and the verdict memo is valid only for this very set.
        let rules = self.ctx.rules.current();
        let scope = match (&ctx.cache, &self.login_user) {
            (Some(_), Some(user)) => Some(Scope::new(ctx.listener.upstream.display(), user.clone())),
            _ => None,
        };
        let cache = match (&ctx.cache, &scope) {
            (Some(cache), Some(scope)) => {
                Some(CacheUse { cache, scope: scope.clone(), memo: ctx.memo.known(scope, &rules) })
            }
            _ => None,
        };
        let outcome = {
            let up = &mut self.up.as_mut().expect("upstream connected before use").conn;
            let scanning = scan(up, pipelining, &cfg.scan, &cfg.timeouts, cache);
            tokio::pin!(scanning);
            match deadline {
                None => scanning.await?,
                Some(deadline) => tokio::select! {
                    r = &mut scanning => r?,
                    _ = tokio::time::sleep_until(deadline) => {
                        // Only the client side is touched here; the scan owns the upstream.
                        self.client.write_all(login_reply, cfg.timeouts.client_idle, Phase::Relay).await?;
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
        let uidl_supported = outcome.uidl_supported;
        // Messages the rules actually look at now (not memoised, headers read).
        let evaluated_now = outcome.items.iter().filter(|i| i.memo.is_none() && i.headers.is_some()).count();
        let eval_started = Instant::now();
        let mut entries = evaluate_off_thread(outcome.items, rules.clone(), cfg.dry_run, &cfg.tag).await;
        let eval_per_message = eval_started.elapsed().as_secs_f64() / evaluated_now.max(1) as f64;
        if let (Some(scope), true) = (scope, uidl_supported) {
            let memo: MailboxMemo = entries
                .iter()
                .filter_map(|e| Some(((e.uidl.clone()?, e.upstream_size), e.evaluated.clone()?)))
                .collect();
            ctx.memo.store(scope, rules.clone(), memo);
        }
        let candidates = quarantine_candidates(&entries, cfg.dry_run);
        let stored = if candidates.is_empty() {
            Default::default()
        } else {
            let q = Quarantine::new(&cfg.quarantine.dir);
            let (user, upstream) = (self.quarantine_user(), self.ctx.listener.upstream.display());
            tokio::task::spawn_blocking(move || q.stored_uidls(&user, &upstream)).await.unwrap_or_default()
        };
        for i in candidates {
            self.answer_early_if_due(login_reply, deadline).await?;
            let e = &entries[i];
            if let Some(uidl) = e.uidl.as_deref() {
                if stored.contains(&(uidl.to_string(), e.upstream_size)) {
                    // Copied at an earlier login whose UPDATE never happened: do not copy again.
                    debug!(uidl, msg = e.upstream, "already in quarantine; DELE at QUIT");
                    entries[i].disposition = Disposition::Condemned;
                    continue;
                }
            }
            match self.quarantine_one(&entries[i]).await? {
                Ok(path) => {
                    m::quarantine_message();
                    info!(uidl = entries[i].uidl.as_deref().unwrap_or("-"), msg = entries[i].upstream, path = %path.display(), "quarantined; DELE at QUIT");
                    entries[i].disposition = Disposition::Condemned;
                }
                Err(reason) => {
                    m::quarantine_error();
                    let show = cfg.quarantine.on_failure == OnFailure::Show;
                    tracing::error!(uidl = entries[i].uidl.as_deref().unwrap_or("-"), msg = entries[i].upstream, %reason, shown = show, "quarantine failed; message NOT deleted");
                    if show {
                        entries[i].disposition = Disposition::Visible;
                    }
                }
            }
        }
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

    /// The quarantine Maildir's owner: the name the successful login used (USER/PASS or
    /// APOP). A SASL login carries none popsift reads, and a USER tried before it may be
    /// someone else's, so such mail goes to `_unknown`.
    fn quarantine_user(&self) -> String {
        self.login_user.clone().unwrap_or_else(|| "_unknown".into())
    }

    /// Retrieves a message in full and writes it to the quarantine. The outer error is an
    /// upstream failure (ends the session); the inner one a local failure to store (the
    /// message is then not deleted).
    async fn quarantine_one(&mut self, e: &Entry) -> Result<Result<std::path::PathBuf, String>, SessionError> {
        let cfg = self.ctx.config.clone();
        if e.upstream_size > cfg.quarantine.max_size {
            return Ok(Err(format!("message of {} octets exceeds quarantine.max_size", e.upstream_size)));
        }
        self.up_write(&command::Command::Retr(e.upstream).encode(), Phase::Scan).await?;
        let r = self.up_line(Phase::Scan).await?;
        if !Status::parse(&r).is_some_and(|s| s.is_ok()) {
            return Ok(Err(format!("upstream refused RETR: {}", String::from_utf8_lossy(&r))));
        }
        let mut message = Vec::with_capacity(e.upstream_size as usize + 64);
        let mut scanner = BodyScanner::new();
        let mut unstuffer = Unstuffer::default();
        let up = &mut self.up.as_mut().expect("upstream connected").conn;
        loop {
            let buf = up.buffered();
            if !buf.is_empty() {
                let done = scanner.feed(buf);
                let n = done.unwrap_or(buf.len());
                unstuffer.feed(&buf[..n], &mut message);
                up.consume(n);
                if done.is_some() {
                    // The terminator was unstuffed as an empty line: drop it.
                    let t = scanner.terminator_len() - 1;
                    message.truncate(message.len().saturating_sub(t));
                    break;
                }
            }
            up.fill(cfg.timeouts.upstream_reply, Phase::Scan).await?;
        }
        let store = Quarantine::new(&cfg.quarantine.dir);
        let v = e.verdict();
        let meta = QuarantineMeta {
            user: self.quarantine_user(),
            size: e.upstream_size,
            upstream: self.ctx.listener.upstream.display(),
            uidl: e.uidl.as_deref().unwrap_or("").to_string(),
            score: v.as_ref().map_or(0.0, |v| v.score),
            rules: v.map(|v| v.rules.iter().map(|r| r.to_string()).collect()).unwrap_or_default(),
        };
        let stored = tokio::task::spawn_blocking(move || store.store(&meta, &message)).await;
        Ok(match stored {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("quarantine writer failed: {e}")),
        })
    }

    /// Copies one multi-line body from upstream to the client, verbatim (dot-stuffing kept).
    async fn relay_body(&mut self, phase: Phase) -> Result<(), SessionError> {
        let t = self.ctx.config.timeouts;
        let up = &mut self.up.as_mut().expect("upstream connected").conn;
        let mut scanner = BodyScanner::new();
        self.mid_response = true;
        loop {
            let buf = up.buffered();
            if !buf.is_empty() {
                let done = scanner.feed(buf);
                let n = done.unwrap_or(buf.len());
                self.out.extend_from_slice(&buf[..n]);
                up.consume(n);
                if done.is_some() {
                    self.mid_response = false;
                    return Ok(());
                }
                if self.out.len() >= FLUSH_AT {
                    self.client.write_all(&self.out, t.client_idle, Phase::Relay).await?;
                    self.out.clear();
                }
            }
            up.fill(t.upstream_reply, phase).await?;
        }
    }

    /// Relays a RETR/TOP body with its header block replaced: reads the stuffed header part,
    /// sends the replacement (stuffed), then streams the rest verbatim.
    async fn relay_rewritten(&mut self, rw: &HeaderRewrite) -> Result<(), SessionError> {
        let t = self.ctx.config.timeouts;
        let cap = self.ctx.config.scan.header_limit + 4096;
        let mut raw: Vec<u8> = Vec::new();
        self.mid_response = true;
        let end = loop {
            let up = &mut self.up.as_mut().expect("upstream connected").conn;
            let buf = up.buffered();
            if !buf.is_empty() {
                let searched_from = raw.len().saturating_sub(2);
                raw.extend_from_slice(buf);
                let n = buf.len();
                up.consume(n);
                // Only the new part can hold the end; re-scan from a line boundary before it.
                let line_start = raw[..searched_from].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                if let Some(end) = find_header_end(&raw[line_start..]) {
                    break Some(match end {
                        HeaderEnd::Blank { end } => HeaderEnd::Blank { end: end + line_start },
                        HeaderEnd::Terminator { start, end } => {
                            HeaderEnd::Terminator { start: start + line_start, end: end + line_start }
                        }
                    });
                }
                if raw.len() > cap {
                    break None;
                }
            }
            up.fill(t.upstream_reply, Phase::Relay).await?;
        };
        let (header_end, body_start, terminated) = match end {
            Some(HeaderEnd::Blank { end }) => (end, end, false),
            Some(HeaderEnd::Terminator { start, end }) => (start, end, true),
            None => {
                warn!("header block larger than at login; message relayed untagged");
                (0, 0, false)
            }
        };
        let actual = unstuff(&raw[..header_end]);
        if header_end > 0 {
            if actual == rw.original {
                stuff_lines(&rw.replacement, &mut self.out);
            } else {
                // The server sent different headers than at login: send them untouched
                // rather than guess (the announced size is then off by the difference).
                warn!("message headers changed since login; relayed untagged");
                self.out.extend_from_slice(&raw[..header_end]);
            }
        }
        let rest = raw[body_start..].to_vec();
        if terminated {
            self.out.extend_from_slice(b".\r\n");
            // Whatever followed the terminator belongs to the next reply.
            let up = &mut self.up.as_mut().expect("upstream connected").conn;
            up.unread(&rest);
            self.mid_response = false;
            return Ok(());
        }
        // The rest is body: hand it back to the stream relay, which starts at a line start.
        let up = &mut self.up.as_mut().expect("upstream connected").conn;
        up.unread(&rest);
        self.relay_body(Phase::Relay).await
    }

    /// TRANSACTION (RFC 1939 §5) on the filtered view, then UPDATE at QUIT.
    async fn transaction(&mut self, mut view: MailboxView) -> Result<(), SessionError> {
        let caps = self.up().caps.clone();
        let up_pipelining = capa::has(caps.as_deref(), "PIPELINING");
        let known = Known {
            top: view.entries().iter().any(|e| e.evaluated.is_some()),
            uidl: view.entries().iter().all(|e| e.uidl.is_some()),
            logged_in: true,
        };
        let mut queue: VecDeque<Pending> = VecDeque::new();
        let mut outstanding = 0usize;
        let mut quit_planned = false;
        let mut ahead = Vec::new();
        // The client has had two or more commands waiting at once: it pipelines.
        let mut pipelining_client = false;
        loop {
            // Plan every command already buffered. For a pipelining client, top the buffer up
            // with whatever it has already sent (without waiting) while the queue runs low,
            // so the upstream stays busy instead of seeing a bubble every MAX_QUEUE commands.
            // A one-command-at-a-time client never has more to read: no extra syscall.
            while !quit_planned && queue.len() < MAX_QUEUE {
                let line = match self.client.take_line(MAX_COMMAND_LINE)? {
                    Some(line) => line,
                    None if pipelining_client && queue.len() <= MAX_QUEUE / 2 && self.client.try_fill()? => continue,
                    None => break,
                };
                pipelining_client |= !queue.is_empty();
                let planned = match command::parse(&line) {
                    Ok(cmd) => {
                        debug!(command = cmd.keyword(), "client command");
                        plan::transaction(&cmd, &mut view)
                    }
                    Err(e) => TxPlan::Reply(err(e)),
                };
                let send_now = up_pipelining || outstanding == 0;
                let pending = match planned {
                    TxPlan::Reply(b) => Pending::Local(b),
                    TxPlan::Relay(c) => {
                        if send_now {
                            ahead.extend_from_slice(&c);
                            outstanding += 1;
                        }
                        Pending::Relay { command: c, sent: send_now }
                    }
                    TxPlan::Fetch { command, entry, .. } => {
                        if send_now {
                            ahead.extend_from_slice(&command);
                            outstanding += 1;
                        }
                        let e = &view.entries()[entry];
                        let rewrite = e.rewrite.clone().map(|header| Rewrite {
                            header,
                            upstream_size: e.upstream_size,
                            size: e.size,
                        });
                        Pending::Fetch { command, sent: send_now, rewrite }
                    }
                    TxPlan::Capa => {
                        if send_now {
                            ahead.extend_from_slice(b"CAPA\r\n");
                            outstanding += 1;
                        }
                        Pending::Capa { sent: send_now }
                    }
                    TxPlan::Quit { deletions } => {
                        quit_planned = true;
                        Pending::Quit { deletions }
                    }
                };
                queue.push_back(pending);
            }
            if !ahead.is_empty() {
                let batch = std::mem::take(&mut ahead);
                self.up_write(&batch, Phase::Relay).await?;
            }
            // Answer the oldest.
            match queue.pop_front() {
                Some(Pending::Local(b)) => {
                    self.out.extend_from_slice(&b);
                    if self.out.len() >= FLUSH_AT {
                        self.flush().await?;
                    }
                }
                Some(Pending::Relay { command, sent }) => {
                    if !sent {
                        self.up_write(&command, Phase::Relay).await?;
                    } else {
                        outstanding -= 1;
                    }
                    let r = self.up_line(Phase::Relay).await?;
                    self.out.extend_from_slice(&r);
                    self.out.extend_from_slice(b"\r\n");
                }
                Some(Pending::Fetch { command, sent, rewrite }) => {
                    if !sent {
                        self.up_write(&command, Phase::Relay).await?;
                    } else {
                        outstanding -= 1;
                    }
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
                Some(Pending::Capa { sent }) => {
                    if !sent {
                        self.up_write(b"CAPA\r\n", Phase::Capa).await?;
                    } else {
                        outstanding -= 1;
                    }
                    let r = self.up_line(Phase::Capa).await?;
                    let upstream_caps = if Status::parse(&r).is_some_and(|s| s.is_ok()) {
                        let t = self.ctx.config.timeouts.upstream_reply;
                        let body = self.up().conn.read_multiline(64 * 1024, t, Phase::Capa).await?;
                        Some(capa_codec::parse(&body))
                    } else {
                        None
                    };
                    let list = capa::rewrite(upstream_caps.as_deref(), known);
                    self.out.extend_from_slice(&capa_codec::encode(&list));
                }
                Some(Pending::Quit { deletions }) => {
                    self.flush().await?;
                    let reply = self.update(&deletions, up_pipelining).await?;
                    self.reply(&reply).await?;
                    return Ok(());
                }
                None => {
                    self.flush().await?;
                    let t = self.ctx.config.timeouts.client_idle;
                    self.client.fill(t, Phase::ClientIdle).await?;
                }
            }
        }
    }

    /// UPDATE (RFC 1939 §6): DELE the client's deletions and the condemned messages, then
    /// QUIT. Returns the reply for the client.
    async fn update(&mut self, deletions: &[u32], pipelining: bool) -> Result<Vec<u8>, SessionError> {
        let window = if pipelining { self.ctx.config.scan.window.max(1) } else { 1 };
        let mut failed = 0usize;
        for chunk in deletions.chunks(window) {
            let mut cmds = Vec::with_capacity(chunk.len() * 12);
            for n in chunk {
                cmds.extend_from_slice(&command::Command::Dele(*n).encode());
            }
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

/// Rewrites `+OK <n> octets` (the usual RETR status, RFC 1939 §7 example) to the size the
/// client was told in LIST; any other text is left alone.
fn rewrite_octets(status: &[u8], upstream_size: u64, size: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(status);
    let mut words = text.splitn(3, ' ');
    if let (Some(ok), Some(n)) = (words.next(), words.next()) {
        if n.parse::<u64>().ok() == Some(upstream_size) {
            let rest = words.next().map(|r| format!(" {r}")).unwrap_or_default();
            return format!("{ok} {size}{rest}").into_bytes();
        }
    }
    status.to_vec()
}

/// Below this many messages the rules run in one blocking task; above, in one per core.
const EVAL_CHUNK_MIN: usize = 256;

/// Evaluates the rules for every scanned message on tokio's blocking pool (10,000 header
/// blocks take tens of milliseconds of CPU: not something to run on an async worker),
/// split over the available cores, results in server order.
async fn evaluate_off_thread(
    items: Vec<crate::session::scan::ScanItem>,
    rules: Arc<crate::rules::RuleSet>,
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
        let (rules, tag) = (rules.clone(), tag.clone());
        tasks.push(tokio::task::spawn_blocking(move || build_entries(chunk, &rules, dry_run, &tag)));
    }
    let mut out = Vec::new();
    for t in tasks {
        // A panic in the rules engine is a bug; surface it like one.
        out.extend(t.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    out
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
