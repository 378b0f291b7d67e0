//! Connecting to the real POP3 server: TCP (with TCP_NODELAY, so one-command-at-a-time
//! clients do not stall on delayed ACKs), implicit TLS or STLS (RFC 2595 §4), the greeting,
//! and the pre-login capability list (RFC 2449 §5). The greeting and each status line must
//! arrive whole within their timeouts (`timeouts.greeting`, `timeouts.upstream_reply`): a
//! server dribbling them octet by octet is cut (see `net::conn`).
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::cli::UpstreamTls;
use crate::config::{Timeouts, Upstream as UpstreamConfig};
use crate::net::conn::{Conn, Side};
use crate::net::error::{Phase, SessionError};
use crate::net::stream::Stream;
use crate::pop3::capa::{self, Capability};
use crate::pop3::status::{Status, StatusKind, MAX_STATUS_LINE};

/// Cap on CAPA replies.
const MAX_CAPA: usize = 64 * 1024;

/// A connected, greeted upstream, ready for AUTHORIZATION.
pub struct Upstream {
    pub conn: Conn<Stream>,
    /// The greeting line without CRLF, relayed to the client unchanged (APOP timestamp).
    pub greeting: Vec<u8>,
    /// The pre-login CAPA list, `None` when the server does not know CAPA; shared with
    /// other sessions that got the same list (see [`share_caps`]).
    pub caps: Option<Arc<[Capability]>>,
}

/// Connects to the configured upstream (its name resolved here).
pub async fn connect(
    cfg: &UpstreamConfig,
    tls: &Arc<rustls::ClientConfig>,
    t: &Timeouts,
) -> Result<Upstream, SessionError> {
    connect_at(cfg, None, tls, t).await
}

/// Connects to `cfg` at exactly these addresses, already resolved and checked (a per-user
/// upstream: no second resolution that could answer differently, see
/// `session::upstream_from_user`). TLS still verifies the certificate for `cfg.host`.
pub async fn connect_to(
    cfg: &UpstreamConfig,
    addrs: &[std::net::SocketAddr],
    tls: &Arc<rustls::ClientConfig>,
    t: &Timeouts,
) -> Result<Upstream, SessionError> {
    connect_at(cfg, Some(addrs), tls, t).await
}

async fn connect_at(
    cfg: &UpstreamConfig,
    addrs: Option<&[std::net::SocketAddr]>,
    tls: &Arc<rustls::ClientConfig>,
    t: &Timeouts,
) -> Result<Upstream, SessionError> {
    let addr = cfg.display();
    let started = Instant::now();
    let tcp = async {
        match addrs {
            Some(a) => TcpStream::connect(a).await,
            None => TcpStream::connect((cfg.host.as_str(), cfg.port)).await,
        }
    };
    let tcp = match tokio::time::timeout(t.connect, tcp).await {
        Err(_) => return Err(SessionError::Timeout { phase: Phase::Connect, after: t.connect }),
        Ok(Err(e)) => return Err(SessionError::Connect { addr, reason: e.to_string() }),
        Ok(Ok(s)) => s,
    };
    crate::metrics::upstream_connect_duration(started.elapsed().as_secs_f64());
    let _ = tcp.set_nodelay(true);
    let stream = match cfg.tls {
        UpstreamTls::Implicit => handshake(tcp, cfg, tls, t).await?,
        _ => Stream::Plain(tcp),
    };
    let mut conn = Conn::new(stream, Side::Upstream);
    let greeting = conn.read_line(MAX_STATUS_LINE, t.greeting, Phase::Greeting).await?.to_vec();
    match Status::parse(&greeting) {
        Some(s) if s.kind == StatusKind::Ok => {}
        _ => {
            return Err(SessionError::UpstreamProtocol {
                phase: Phase::Greeting,
                detail: format!("unexpected greeting {:?}", String::from_utf8_lossy(&greeting)),
            })
        }
    }
    if cfg.tls == UpstreamTls::Starttls {
        conn.write_all(b"STLS\r\n", t.upstream_reply, Phase::Stls).await?;
        let reply = conn.read_line(MAX_STATUS_LINE, t.upstream_reply, Phase::Stls).await?;
        if !Status::parse(&reply).is_some_and(|s| s.is_ok()) {
            return Err(SessionError::Tls {
                addr,
                reason: format!(
                    "server refused STLS ({}); use --upstream-tls implicit or none",
                    String::from_utf8_lossy(&reply)
                ),
            });
        }
        let tcp = match conn.into_inner() {
            Ok(Stream::Plain(tcp)) => tcp,
            _ => {
                // RFC 2595 §4: nothing may follow +OK before the handshake; bytes here could
                // be an injection attempt.
                return Err(SessionError::UpstreamProtocol {
                    phase: Phase::Stls,
                    detail: "data after STLS reply".into(),
                });
            }
        };
        conn = Conn::new(handshake(tcp, cfg, tls, t).await?, Side::Upstream);
    }
    // RFC 2595 §4: capabilities learned before TLS must be discarded; we ask only now.
    let caps = fetch_capa(&mut conn, t).await?.map(share_caps);
    Ok(Upstream { conn, greeting, caps })
}

async fn handshake(
    tcp: TcpStream,
    cfg: &UpstreamConfig,
    tls: &Arc<rustls::ClientConfig>,
    t: &Timeouts,
) -> Result<Stream, SessionError> {
    let addr = cfg.display();
    let name = ServerName::try_from(cfg.host.clone())
        .map_err(|e| SessionError::Tls { addr: addr.clone(), reason: format!("bad server name: {e}") })?;
    let connector = TlsConnector::from(tls.clone());
    match tokio::time::timeout(t.tls_handshake, connector.connect(name, tcp)).await {
        Err(_) => Err(SessionError::Timeout { phase: Phase::TlsHandshake, after: t.tls_handshake }),
        Ok(Err(e)) => Err(SessionError::Tls { addr, reason: e.to_string() }),
        Ok(Ok(s)) => Ok(Stream::Tls(Box::new(s))),
    }
}

/// Asks CAPA; `None` when the server answers `-ERR` (it predates RFC 2449).
pub async fn fetch_capa(conn: &mut Conn<Stream>, t: &Timeouts) -> Result<Option<Vec<Capability>>, SessionError> {
    conn.write_all(b"CAPA\r\n", t.upstream_reply, Phase::Capa).await?;
    let line = conn.read_line(MAX_STATUS_LINE, t.upstream_reply, Phase::Capa).await?;
    match Status::parse(&line).map(|s| s.kind) {
        Some(StatusKind::Ok) => {
            let body = conn.read_multiline(MAX_CAPA, t, Phase::Capa).await?;
            Ok(Some(capa::parse(&body)))
        }
        Some(StatusKind::Err) => Ok(None),
        _ => Err(SessionError::UpstreamProtocol {
            phase: Phase::Capa,
            detail: format!("unexpected reply {:?}", String::from_utf8_lossy(&line)),
        }),
    }
}

/// How many distinct capability lists [`share_caps`] remembers (a few upstreams, or one
/// server whose list changed).
const SHARED_CAPS: usize = 8;

/// One copy of a capability list for every session that got the same one (issue 16): a
/// session keeps its upstream's list for its whole life (CAPA is answered from it), and
/// a dozen capabilities are some 15 allocations and ~700 bytes per idle session when each
/// keeps its own. The most recently seen distinct lists are remembered (at most
/// [`SHARED_CAPS`]); a list not among them is kept by its session alone and replaces the
/// oldest, so the memory stays bounded whatever the upstreams send.
pub fn share_caps(caps: Vec<Capability>) -> Arc<[Capability]> {
    static RECENT: Mutex<Vec<Arc<[Capability]>>> = Mutex::new(Vec::new());
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = recent.iter().position(|c| **c == *caps) {
        let shared = recent.remove(i);
        recent.push(shared.clone());
        return shared;
    }
    let own: Arc<[Capability]> = caps.into();
    if recent.len() >= SHARED_CAPS {
        recent.remove(0);
    }
    recent.push(own.clone());
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(tags: &[&str]) -> Vec<Capability> {
        tags.iter().map(|t| Capability::new(t, "")).collect()
    }

    #[test]
    fn equal_capability_lists_are_one_copy_and_the_remembered_ones_are_bounded() {
        let a = share_caps(list(&["TOP", "UIDL", "X-SHARE-TEST-A"]));
        let b = share_caps(list(&["TOP", "UIDL", "X-SHARE-TEST-A"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, &list(&["TOP", "UIDL", "X-SHARE-TEST-A"])[..]);
        let other = share_caps(list(&["TOP", "X-SHARE-TEST-B"]));
        assert!(!Arc::ptr_eq(&a, &other));
        // Many distinct lists: only the most recent few stay shared, the first is forgotten.
        for i in 0..SHARED_CAPS {
            share_caps(list(&[&format!("X-SHARE-TEST-C{i}")]));
        }
        let again = share_caps(list(&["TOP", "UIDL", "X-SHARE-TEST-A"]));
        assert!(!Arc::ptr_eq(&a, &again));
        assert_eq!(a, again);
    }
}
