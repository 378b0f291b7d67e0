//! Performs the machine's quarantine actions (`session::machine::Need::QuarantineFolder`
//! and `Need::Quarantine`): reads the folder's usage for the quota, and copies one message
//! from the upstream (`RETR`) into the user's quarantine Maildir, streamed to the `tmp/`
//! file (never held whole) and stopped at
//! [`crate::config::QuarantineSettings::copy_limit`]. What a copy means for the message
//! (condemned, hidden or shown) is decided by the machine; this module logs and counts.
//!
//! Reading the folder's usage has a named deadline (`timeouts.quarantine_usage`): past it,
//! every copy of this login fails and `quarantine.on_failure` applies (nothing is deleted),
//! logged and counted (`popsift_login_step_timeouts_total{step="quarantine_usage"}`).
use std::path::PathBuf;

use crate::net::conn::{BodyClock, Conn};
use crate::net::driver::SessionContext;
use crate::net::error::{Phase, SessionError};
use crate::net::stream::Stream;
use crate::pop3::command::Command;
use crate::pop3::status::{Status, MAX_STATUS_LINE};
use crate::pop3::BodyScanner;
use crate::session::machine::Quarantined;
use crate::session::relay::{CopyStep, QuarantineCopy};
use crate::session::view::Entry;
use crate::store::quarantine::{Meta, Quarantine, QuarantineError, Usage};

/// Why a message could not be quarantined (it is then not deleted).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the login's user name is unknown (SASL mechanism popsift does not read)")]
    UnknownUser,
    #[error("message of {0} octets exceeds quarantine.max_size")]
    TooLarge(u64),
    #[error("upstream refused RETR: {0}")]
    Refused(String),
    #[error("{0}")]
    Store(#[from] QuarantineError),
    #[error("quarantine writer failed: {0}")]
    Writer(String),
    #[error("{0}")]
    Copy(String),
    #[error("quarantine copy lost")]
    Lost,
    #[error("the quarantine folder's usage could not be read (store failed or timeouts.quarantine_usage passed)")]
    FolderUnavailable,
    #[error("quarantine quota of this user reached ({messages} messages, {bytes} octets; quota_messages {quota_messages}, quota_size {quota_size})")]
    Quota { messages: u64, bytes: u64, quota_messages: u64, quota_size: u64 },
}

/// The usage of the login user's folder, read on the blocking pool within
/// `timeouts.quarantine_usage`; `None` when the user is unknown or the folder could not be
/// read in time (every copy then fails: nothing is deleted).
pub async fn open_folder(ctx: &SessionContext, upstream: &str, login_user: Option<&str>) -> Option<Usage> {
    let user = login_user?.to_string();
    let (q, upstream) = (Quarantine::for_config(&ctx.config), upstream.to_string());
    let limit = ctx.config.timeouts.quarantine_usage;
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(move || q.usage(&user, &upstream))).await {
        Ok(read) => read.ok(),
        Err(_) => {
            crate::metrics::login_step_timeout("quarantine_usage");
            let on_failure = ctx.config.quarantine.on_failure;
            tracing::warn!(deadline = ?limit, ?on_failure, "quarantine usage not read within timeouts.quarantine_usage; this login's copies fail and quarantine.on_failure applies");
            None
        }
    }
}

/// Copies one message and logs the result. The error is an upstream failure (it ends the
/// session); a message that could not be stored is `Ok(Quarantined::Failed)`.
pub async fn quarantine(
    up: &mut Conn<Stream>,
    ctx: &SessionContext,
    upstream: &str,
    login_user: Option<&str>,
    usage: Option<&mut Usage>,
    e: &Entry,
) -> Result<Quarantined, SessionError> {
    let result = match (usage, login_user) {
        (Some(usage), Some(user)) => copy(up, ctx, upstream, user, usage, e).await?,
        (None, Some(_)) => Err(CopyError::FolderUnavailable),
        (_, None) => Err(CopyError::UnknownUser),
    };
    Ok(match result {
        Ok(Some(path)) => {
            crate::metrics::quarantine_message();
            tracing::info!(uidl = e.uidl.as_deref().unwrap_or("-"), msg = e.upstream, path = %path.display(), "quarantined; DELE at QUIT");
            Quarantined::Stored
        }
        Ok(None) => {
            // Copied at an earlier login whose UPDATE never happened: same content.
            tracing::debug!(msg = e.upstream, "already in this user's quarantine (same digest); DELE at QUIT");
            Quarantined::AlreadyStored
        }
        Err(reason) => {
            crate::metrics::quarantine_error();
            let shown = ctx.config.quarantine.on_failure == crate::config::OnFailure::Show;
            tracing::error!(uidl = e.uidl.as_deref().unwrap_or("-"), msg = e.upstream, %reason, shown, "quarantine failed; message NOT deleted");
            Quarantined::Failed
        }
    })
}

/// `Ok(Some(path))`: stored; `Ok(None)`: this folder already holds a copy with the same
/// digest from this upstream. The outer error ends the session; the inner one means the
/// message must not be deleted (too large, over quota, local failure).
async fn copy(
    up: &mut Conn<Stream>,
    ctx: &SessionContext,
    upstream: &str,
    user: &str,
    usage: &mut Usage,
    e: &Entry,
) -> Result<Result<Option<PathBuf>, CopyError>, SessionError> {
    let cfg = &ctx.config;
    let t = cfg.timeouts;
    if e.upstream_size > cfg.quarantine.max_size {
        return Ok(Err(CopyError::TooLarge(e.upstream_size)));
    }
    let limit = cfg.quarantine.copy_limit(e.upstream_size);
    let v = e.verdict();
    let meta = Meta {
        user: user.to_string(),
        size: e.upstream_size,
        upstream: upstream.to_string(),
        uidl: e.uidl.as_deref().unwrap_or("").to_string(),
        score: v.as_ref().map_or(0.0, |v| v.score),
        rules: v.map(|v| v.rules.iter().map(|r| r.to_string()).collect()).unwrap_or_default(),
    };
    let store = Quarantine::for_config(cfg);
    let mut file = match blocking(move || store.begin(&meta)).await {
        Ok(c) => Some(c),
        Err(reason) => return Ok(Err(reason)),
    };
    up.write_all(&Command::Retr(e.upstream).encode(), t.upstream_reply, Phase::Scan).await?;
    let r = up.read_line(MAX_STATUS_LINE, t.upstream_reply, Phase::Scan).await?;
    match Status::parse(&r) {
        None => {
            let shown = String::from_utf8_lossy(r.get(..80).unwrap_or(&r)).into_owned();
            return Err(SessionError::UpstreamProtocol {
                phase: Phase::Scan,
                detail: format!("not a status line: {shown:?}"),
            });
        }
        Some(s) if !s.is_ok() => return Ok(Err(CopyError::Refused(String::from_utf8_lossy(&r).into_owned()))),
        Some(_) => {}
    }
    let mut sink = QuarantineCopy::new(limit, e.upstream_size);
    let mut failure: Option<CopyError> = None;
    let mut scanner = BodyScanner::new();
    let mut clock = BodyClock::start(&t);
    loop {
        if let Some(done) = up.relay_buffered(&mut scanner, |body| sink.body(body)) {
            match sink.step(done, scanner.terminator_len()) {
                CopyStep::Continue => {}
                CopyStep::Discard(reason) => {
                    failure.get_or_insert(CopyError::Copy(reason));
                    file = None; // removes the temporary file
                }
                CopyStep::Write(chunk) => match file.take() {
                    Some(mut c) => match blocking(move || c.write(&chunk).map(|()| c)).await {
                        Ok(c) => file = Some(c),
                        Err(reason) => {
                            failure = Some(reason);
                            sink.discard();
                        }
                    },
                    None => {
                        failure = Some(CopyError::Lost);
                        sink.discard();
                    }
                },
            }
            if done {
                break;
            }
        }
        up.fill_body(&mut clock, Phase::Scan).await?;
    }
    if let Some(reason) = failure {
        return Ok(Err(reason));
    }
    let Some(file) = file else { return Ok(Err(CopyError::Lost)) };
    let digest = file.digest();
    if usage.digests.contains(&digest) {
        return Ok(Ok(None));
    }
    let q = &cfg.quarantine;
    // Saturating: a store that cannot tell its usage answers `u64::MAX` (a full quota).
    if usage.messages.saturating_add(1) > q.quota_messages || usage.bytes.saturating_add(file.len()) > q.quota_size {
        return Ok(Err(CopyError::Quota {
            messages: usage.messages,
            bytes: usage.bytes,
            quota_messages: q.quota_messages,
            quota_size: q.quota_size,
        }));
    }
    let len = file.len();
    let stored = blocking(move || file.commit()).await;
    if stored.is_ok() {
        usage.messages = usage.messages.saturating_add(1);
        usage.bytes = usage.bytes.saturating_add(len);
        usage.digests.insert(digest);
    }
    Ok(stored.map(Some))
}

/// Runs a quarantine file operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QuarantineError> + Send + 'static,
) -> Result<T, CopyError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CopyError::Store(e)),
        Err(e) => Err(CopyError::Writer(e.to_string())),
    }
}
