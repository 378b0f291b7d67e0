//! Accept loops (one per configured listener), the session cap, and graceful shutdown:
//! SIGTERM / SIGINT stop accepting and give running sessions a deadline to finish
//! (`timeouts.drain`).
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::net::driver::{self, SessionContext};
use crate::net::tls;
use crate::rules::RulesHandle;
use crate::store::header_cache::HeaderCache;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] tls::TlsConfigError),
}

/// Binds every listener; fails before accepting anything if one cannot be bound.
pub async fn bind(config: &Config) -> Result<Vec<TcpListener>, ServeError> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let sock = TcpListener::bind(l.listen).await.map_err(|source| ServeError::Bind { addr: l.listen, source })?;
        out.push(sock);
    }
    Ok(out)
}

/// Serves until SIGTERM/SIGINT (or `shutdown` turns true), then drains.
pub async fn serve(
    config: Arc<Config>,
    sockets: Vec<TcpListener>,
    rules: Arc<RulesHandle>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let permits = Arc::new(Semaphore::new(config.max_sessions));
    let cache = open_cache(&config).await;
    // One memo for all listeners (its keys carry the upstream), bounded to the 256 most
    // recently used mailboxes: about 150 bytes per message plus the rewritten header of each
    // tagged spam, so 256 mailboxes of 1,000 messages take ~40 MB.
    let memo = Arc::new(crate::store::verdict_memo::VerdictMemo::new(256));
    let mut loops = Vec::new();
    for (l, sock) in config.listeners.iter().zip(sockets) {
        let ctx = Arc::new(SessionContext {
            listener: l.clone(),
            config: config.clone(),
            tls: tls::client_config(l.upstream.ca.as_deref())?,
            rules: rules.clone(),
            cache: cache.clone(),
            memo: memo.clone(),
        });
        info!(listen = %sock.local_addr().map(|a| a.to_string()).unwrap_or_default(), upstream = %l.upstream.display(), tls = ?l.upstream.tls, "listening");
        let permits = permits.clone();
        let mut stop = shutdown.clone();
        loops.push(tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = sock.accept() => a,
                    _ = stop.changed() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    warn!(%peer, "session limit reached; refusing connection");
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let mut s = stream;
                        let _ = s.write_all(b"-ERR [SYS/TEMP] too many sessions, try again later\r\n").await;
                    });
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    driver::run(stream, peer, ctx).await;
                    drop(permit);
                });
            }
        }));
    }
    let _ = shutdown.wait_for(|s| *s).await;
    info!("shutting down: no new sessions; waiting for running ones");
    for l in loops {
        l.abort();
    }
    let all = config.max_sessions as u32;
    let drain = config.timeouts.drain;
    match tokio::time::timeout(drain, permits.acquire_many(all)).await {
        Ok(_) => info!("all sessions finished"),
        Err(_) => {
            warn!(deadline = ?drain, "sessions still running at the drain deadline; closing them (no UPDATE: nothing is deleted)")
        }
    }
    Ok(())
}

/// Opens the header cache under the state directory (on the blocking pool). Never fatal:
/// when it cannot be had, popsift logs why and scans without it.
async fn open_cache(config: &Config) -> Option<Arc<HeaderCache>> {
    if !config.cache.enabled {
        info!("header cache disabled (cache.enabled: false)");
        return None;
    }
    let dir = config.state_dir.clone();
    let max = config.cache.max_size;
    match tokio::task::spawn_blocking(move || HeaderCache::open(&dir, max)).await {
        Ok(Ok(c)) => {
            info!(path = %c.path().display(), max_size = max, "header cache open");
            Some(Arc::new(c))
        }
        Ok(Err(e)) => {
            warn!(error = %e, "header cache unavailable; scanning without it");
            None
        }
        Err(e) => {
            warn!(error = %e, "header cache unavailable; scanning without it");
            None
        }
    }
}

/// Turns SIGTERM / SIGINT into the shutdown signal.
pub fn shutdown_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "cannot watch SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        let _ = tx.send(true);
    });
    rx
}
