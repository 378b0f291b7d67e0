//! The network edge of a listener: what happens between `accept` and the first POP3 byte,
//! and the few AUTHORIZATION decisions that depend on how the client reached popsift.
//!
//! - [`proxy`]: the PROXY protocol v1/v2 header (pure parser, exact-length reader).
//! - [`tls`]: client-side TLS (certificate reloaded on SIGHUP) and [`tls::ClientStream`],
//!   plain or TLS, upgradable by STLS.
//! - [`limits`]: sessions per client address, failed logins per client address.
//! - [`settings`]: the listener's edge keys (`tls`, `allow_plaintext`, `proxy_protocol`,
//!   `max_sessions_per_ip`, `login_failures`).
//!
//! [`Edge::admit`] runs in the session's own task (never in the accept loop, so a slow
//! client cannot stall accepting): PROXY header from a trusted balancer, the per-address
//! session limit, then the implicit TLS handshake, each with its own named deadline.
//! The AUTHORIZATION decisions (STLS, plain-text refusal, the failed-login throttle) are
//! the session machine's ([`crate::session::gate`]); the edge performs the STLS handshake
//! ([`Edge::start_tls`]) and holds the throttle's shared state ([`Edge::is_throttled`]).
//!
//! Every failed login is logged by [`Edge::login_failed`] as one line in a stable format,
//! outside the session's log context (`parent: None`) so that nothing the client chose precedes the address:
//! `login failed: client=ADDR user="NAME" upstream=HOST:PORT reason=REASON` (target
//! `popsift::login`). `deploy/fail2ban/filter.d/popsift.conf` matches it.
// Peer data never panics a session (issue 12): no unwrap/expect/indexing outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod limits;
pub mod proxy;
pub mod settings;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::pop3::capa::Capability;
use limits::{IpSlot, LoginThrottle, SessionsPerIp};
use settings::{ClientTlsMode, EdgeSettings};
use tls::{ClientStream, ServerTls};

pub use crate::session::gate::{LoginFailure, PLAINTEXT_REFUSED, STLS_OK, THROTTLED};
/// The reply to a connection over `max_sessions_per_ip`.
pub const TOO_MANY_FROM_IP: &[u8] = b"-ERR [SYS/TEMP] Too many sessions from your address; try again later\r\n";

/// A connection admitted by [`Edge::admit`].
pub struct Admitted {
    pub client: ClientStream,
    /// The client's address: the PROXY header's, or the socket peer's.
    pub peer: SocketAddr,
    /// The per-address session slot, released when the session ends.
    pub slot: IpSlot,
}

/// One listener's edge, shared by its sessions.
pub struct Edge {
    settings: EdgeSettings,
    listen: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    sessions: Arc<SessionsPerIp>,
    throttle: LoginThrottle,
    handshake: Duration,
}

impl Edge {
    /// Sets up the edge of the listener on `listen`: reads the TLS certificate and key (an
    /// error here stops popsift) and starts their SIGHUP reloader. `sessions` is shared by
    /// all listeners, so `max_sessions_per_ip` counts an address's sessions everywhere.
    pub fn open(
        listen: SocketAddr,
        settings: &EdgeSettings,
        sessions: Arc<SessionsPerIp>,
        handshake: Duration,
    ) -> Result<Arc<Edge>, tls::CertError> {
        let tls = match &settings.tls {
            Some(t) => {
                let s = ServerTls::open(&t.cert, &t.key)?;
                s.spawn_reloader();
                Some(s)
            }
            None => None,
        };
        Ok(Arc::new(Edge {
            settings: settings.clone(),
            listen,
            tls,
            sessions,
            throttle: LoginThrottle::new(settings.login_failures),
            handshake,
        }))
    }

    pub fn settings(&self) -> &EdgeSettings {
        &self.settings
    }

    fn mode(&self) -> Option<ClientTlsMode> {
        self.settings.tls.as_ref().map(|t| t.mode)
    }

    /// Whether plain-text logins may go over a connection without TLS.
    pub fn plaintext_allowed(&self) -> bool {
        self.settings.allow_plaintext.unwrap_or_else(|| self.listen.ip().is_loopback())
    }

    /// PROXY header, per-address limit and implicit TLS for a new connection; `None` when
    /// the connection was refused (logged and counted; the socket is closed).
    pub async fn admit(&self, mut tcp: TcpStream, socket_peer: SocketAddr) -> Option<Admitted> {
        let _ = tcp.set_nodelay(true);
        let mut peer = socket_peer;
        let mut per_ip_limit = self.settings.max_sessions_per_ip;
        if let Some(pp) = &self.settings.proxy_protocol {
            if !pp.trusts(socket_peer.ip()) {
                warn!(%socket_peer, "connection refused: PROXY protocol listener, and the source is not in proxy_protocol.trusted");
                crate::metrics::edge_refusal("proxy_untrusted");
                return None;
            }
            match proxy::read_header(&mut tcp, pp.header_timeout).await {
                Ok(h) => {
                    if let Some(src) = h.source {
                        peer = src;
                    }
                    // The balancer's own connections (v2 LOCAL, v1 UNKNOWN, or its health
                    // checks, which HAProxy sends with its own address) are not a client:
                    // overlapping checks must not lock each other out.
                    if pp.trusts(peer.ip()) {
                        per_ip_limit = 0;
                    }
                }
                Err(e) => {
                    warn!(%socket_peer, error = %e, "connection refused: bad PROXY header");
                    crate::metrics::edge_refusal("proxy_header");
                    return None;
                }
            }
        }
        let Some(slot) = self.sessions.try_open(peer.ip(), per_ip_limit) else {
            warn!(client = %peer.ip(), limit = self.settings.max_sessions_per_ip, "connection refused: max_sessions_per_ip reached");
            crate::metrics::edge_refusal("per_ip_limit");
            if self.mode() != Some(ClientTlsMode::Implicit) {
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(TOO_MANY_FROM_IP)).await;
            }
            return None;
        };
        let client = match (self.mode(), &self.tls) {
            (Some(ClientTlsMode::Implicit), Some(t)) => match tls::accept(t.acceptor(), tcp, self.handshake).await {
                Ok(s) => ClientStream::Tls(Box::new(s)),
                Err(e) => {
                    info!(client = %peer, error = %e, "client TLS handshake failed");
                    crate::metrics::edge_refusal("tls_handshake");
                    return None;
                }
            },
            _ => ClientStream::Plain(tcp),
        };
        Some(Admitted { client, peer, slot })
    }

    /// Whether `client` is over its failed-login limit now (`login_failures`): its
    /// PASS/APOP/AUTH are then refused without asking the server (decided by
    /// [`crate::session::gate`]).
    pub fn is_throttled(&self, client: IpAddr) -> bool {
        self.throttle.is_throttled(client.to_canonical(), Instant::now())
    }

    /// Runs the STLS handshake on `client` (after [`STLS_OK`] was written). A failure is
    /// logged and counted; the session must then end.
    pub async fn start_tls(&self, client: &mut ClientStream, peer: SocketAddr) -> Result<(), tls::HandshakeError> {
        let Some(t) = &self.tls else {
            return Err(tls::HandshakeError::Failed(std::io::Error::other("no TLS certificate on this listener")));
        };
        let r = client.start_tls(t.acceptor(), self.handshake).await;
        if let Err(e) = &r {
            info!(client = %peer, error = %e, "client TLS handshake after STLS failed");
            crate::metrics::edge_refusal("tls_handshake");
        }
        r
    }

    /// Adjusts the capability list shown before or after login: STLS is offered while it
    /// can be used (RFC 2595 §4: never once TLS is active, never after login), and plain-text
    /// mechanisms are hidden where they would be refused (as Dovecot does).
    pub fn capa(&self, list: &mut Vec<Capability>, secure: bool, logged_in: bool) {
        crate::session::capa::edge_adjust(list, self.capa_policy(), secure, logged_in);
    }

    /// The policy the session machine applies to the capability list before login.
    pub fn capa_policy(&self) -> crate::session::capa::EdgeCapa {
        crate::session::capa::EdgeCapa {
            starttls: self.mode() == Some(ClientTlsMode::Starttls),
            plaintext_allowed: self.plaintext_allowed(),
        }
    }

    /// Logs a failed login (one line, stable format, see the module doc), counts it against
    /// the address when it is a real failure, and returns how long to wait before answering.
    pub fn login_failed(&self, client: IpAddr, user: Option<&str>, upstream: &str, why: LoginFailure) -> Duration {
        let client = client.to_canonical();
        if why == LoginFailure::UpstreamRefused {
            self.throttle.record_failure(client, Instant::now());
        }
        crate::metrics::login_failure(why.label());
        // `parent: None`: without the session label (`crate::logging`), so the line starts with the address.
        warn!(target: "popsift::login", parent: None, "login failed: client={client} user={:?} upstream={upstream} reason={}", user.unwrap_or(""), why.label());
        self.throttle.settings().delay
    }
}

/// Whether the upstream's `-ERR` to a login is a failed login (a wrong name or password)
/// rather than the server being unable to serve a correct one: RFC 2449 §8.1.1 `[IN-USE]`
/// and `[LOGIN-DELAY]`, RFC 3206 `[SYS/TEMP]` and `[SYS/PERM]` are not counted against the
/// address (a user with two mail clients must not be banned for the mailbox lock).
pub fn is_login_failure(reply: &[u8]) -> bool {
    let text = reply.get(4..).unwrap_or_default();
    let text = text.strip_prefix(b" ").unwrap_or(text);
    let Some(rest) = text.strip_prefix(b"[") else { return true };
    let code_end = rest.iter().position(|&b| b == b']').unwrap_or(rest.len());
    let code = rest.get(..code_end).unwrap_or_default().to_ascii_uppercase();
    !(code.starts_with(b"IN-USE") || code.starts_with(b"LOGIN-DELAY") || code.starts_with(b"SYS/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(listen: &str, settings: EdgeSettings) -> Edge {
        Edge {
            settings: settings.clone(),
            listen: listen.parse().unwrap(),
            tls: None,
            sessions: Arc::default(),
            throttle: LoginThrottle::new(settings.login_failures),
            handshake: Duration::from_secs(1),
        }
    }

    fn starttls() -> EdgeSettings {
        EdgeSettings {
            tls: Some(settings::ClientTls { mode: ClientTlsMode::Starttls, cert: "c".into(), key: "k".into() }),
            ..Default::default()
        }
    }

    #[test]
    fn plaintext_policy_follows_the_listen_address_unless_set() {
        assert!(!edge("0.0.0.0:110", starttls()).capa_policy().plaintext_allowed);
        assert!(edge("127.0.0.1:110", starttls()).capa_policy().plaintext_allowed, "loopback allows by default");
        let allowed = edge("0.0.0.0:110", EdgeSettings { allow_plaintext: Some(true), ..starttls() });
        assert!(allowed.capa_policy().plaintext_allowed);
        let denied = edge("127.0.0.1:110", EdgeSettings { allow_plaintext: Some(false), ..starttls() });
        assert!(!denied.capa_policy().plaintext_allowed);
        assert!(edge("0.0.0.0:110", starttls()).capa_policy().starttls);
        assert!(!edge("0.0.0.0:110", EdgeSettings::default()).capa_policy().starttls);
    }

    #[test]
    fn capa_offers_stls_before_tls_and_hides_plaintext_mechanisms() {
        let base = || {
            vec![
                Capability::new("TOP", ""),
                Capability::new("USER", ""),
                Capability::new("SASL", "PLAIN LOGIN CRAM-MD5"),
                Capability::new("PIPELINING", ""),
            ]
        };
        let tags =
            |l: &[Capability]| l.iter().map(|c| format!("{} {}", c.tag, c.args).trim().to_string()).collect::<Vec<_>>();
        let e = edge("0.0.0.0:110", starttls());
        let mut l = base();
        e.capa(&mut l, false, false);
        assert_eq!(tags(&l), ["TOP", "SASL CRAM-MD5", "STLS", "PIPELINING"]);
        let mut l = base();
        e.capa(&mut l, true, false);
        assert_eq!(tags(&l), ["TOP", "USER", "SASL PLAIN LOGIN CRAM-MD5", "PIPELINING"], "no STLS once TLS is active");
        let mut l = base();
        e.capa(&mut l, false, true);
        assert_eq!(tags(&l), tags(&base()), "no STLS after login");
    }

    #[test]
    fn only_refused_credentials_count_as_login_failures() {
        assert!(is_login_failure(b"-ERR [AUTH] Authentication failed."));
        assert!(is_login_failure(b"-ERR invalid password"));
        assert!(is_login_failure(b"-ERR"));
        assert!(!is_login_failure(b"-ERR [IN-USE] Mailbox is locked by another POP3 session"));
        assert!(!is_login_failure(b"-ERR [SYS/TEMP] try later"));
        assert!(!is_login_failure(b"-ERR [login-delay] wait"));
    }

    #[test]
    fn failed_logins_throttle_the_address_without_the_upstream() {
        let s = EdgeSettings {
            login_failures: settings::LoginFailures { max: 2, delay: Duration::ZERO, ..Default::default() },
            ..Default::default()
        };
        let e = edge("127.0.0.1:110", s);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!e.is_throttled(ip));
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::UpstreamRefused);
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::Throttled);
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::UpstreamNotAllowed);
        assert!(!e.is_throttled(ip), "popsift's own refusals are not counted");
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::UpstreamRefused);
        assert!(e.is_throttled(ip));
        assert!(!e.is_throttled("127.0.0.10".parse().unwrap()));
    }
}
