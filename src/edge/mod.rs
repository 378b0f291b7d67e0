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
//! [`Edge::gate`] is consulted for every AUTHORIZATION command before the session machine
//! sees it: STLS (RFC 2595 §4), plain-text login on an insecure connection (refused as
//! Dovecot's `disable_plaintext_auth` does), and the failed-login throttle. Refusals never
//! reach the upstream: the credentials go nowhere.
//!
//! Every failed login is logged by [`Edge::login_failed`] as one line in a stable format,
//! outside the session's span so that nothing the client chose precedes the address:
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
use crate::pop3::command::Command;
use limits::{IpSlot, LoginThrottle, SessionsPerIp};
use settings::{ClientTlsMode, EdgeSettings};
use tls::{ClientStream, ServerTls};

/// The reply to STLS before the handshake (RFC 2595 §4).
pub const STLS_OK: &[u8] = b"+OK Begin TLS negotiation\r\n";
/// The reply to a plain-text login refused on an insecure connection.
pub const PLAINTEXT_REFUSED: &[u8] =
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections (use STLS or POP3S)\r\n";
/// The reply to a login attempt from an address over its failure limit.
pub const THROTTLED: &[u8] = b"-ERR [AUTH] Too many failed logins from your address; try again later\r\n";
/// The reply to a connection over `max_sessions_per_ip`.
pub const TOO_MANY_FROM_IP: &[u8] = b"-ERR [SYS/TEMP] Too many sessions from your address; try again later\r\n";

/// Why a login failed, as logged (`reason=`) and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// The upstream answered `-ERR` to PASS, APOP or AUTH.
    UpstreamRefused,
    /// Refused by popsift: the address is over `login_failures.max`.
    Throttled,
    /// Refused by popsift: plain-text login on an insecure connection.
    PlaintextDisallowed,
    /// Refused by popsift: a per-user login named a server that is not allowed (or
    /// malformed, or internal); it was never contacted.
    UpstreamNotAllowed,
}

impl LoginFailure {
    pub fn label(self) -> &'static str {
        match self {
            LoginFailure::UpstreamRefused => "upstream-refused",
            LoginFailure::Throttled => "throttled",
            LoginFailure::PlaintextDisallowed => "plaintext-disallowed",
            LoginFailure::UpstreamNotAllowed => "upstream-not-allowed",
        }
    }
}

/// What to do with an AUTHORIZATION command before the session machine plans it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not the edge's business: plan it as usual.
    Pass,
    /// STLS accepted: write [`STLS_OK`], then run the handshake ([`Edge::start_tls`]).
    StartTls,
    /// Answer with these bytes (STLS when TLS is already active).
    Reply(Vec<u8>),
    /// A login refused by popsift: log it ([`Edge::login_failed`]), wait its delay, then
    /// answer with the bytes.
    Refuse { reply: &'static [u8], why: LoginFailure },
}

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

    /// Decides an AUTHORIZATION command before the session machine plans it (see the
    /// module doc). `secure`: TLS is active on the client connection.
    pub fn gate(&self, cmd: &Command, secure: bool, client: IpAddr) -> Gate {
        match cmd {
            Command::Stls => match (self.mode(), secure) {
                // RFC 2595 §4: STLS after a successful negotiation is an error.
                (_, true) => Gate::Reply(b"-ERR TLS is already active\r\n".to_vec()),
                (Some(ClientTlsMode::Starttls), false) => Gate::StartTls,
                _ => Gate::Pass,
            },
            Command::User(_) | Command::Pass(_) if !secure && !self.plaintext_allowed() => {
                Gate::Refuse { reply: PLAINTEXT_REFUSED, why: LoginFailure::PlaintextDisallowed }
            }
            Command::Auth { mechanism: Some(m), .. }
                if !secure && !self.plaintext_allowed() && is_plaintext_mechanism(m) =>
            {
                Gate::Refuse { reply: PLAINTEXT_REFUSED, why: LoginFailure::PlaintextDisallowed }
            }
            Command::Pass(_) | Command::Apop { .. } | Command::Auth { mechanism: Some(_), .. }
                if self.throttle.is_throttled(client, Instant::now()) =>
            {
                Gate::Refuse { reply: THROTTLED, why: LoginFailure::Throttled }
            }
            _ => Gate::Pass,
        }
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
        // `parent: None`: outside the session span, so the line starts with the address.
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

use crate::session::capa::is_plaintext_mechanism;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::command::parse;

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
    fn plaintext_login_is_refused_off_loopback_without_tls() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let e = edge("0.0.0.0:110", starttls());
        for line in ["USER alice", "PASS secret", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "auth login"] {
            let cmd = parse(line.as_bytes()).unwrap();
            assert!(
                matches!(e.gate(&cmd, false, ip), Gate::Refuse { why: LoginFailure::PlaintextDisallowed, .. }),
                "{line}"
            );
            assert_eq!(e.gate(&cmd, true, ip), Gate::Pass, "{line} over TLS");
        }
        let apop = parse(b"APOP alice c4c9334bac560ecc979e58001b3e22fb").unwrap();
        assert_eq!(e.gate(&apop, false, ip), Gate::Pass, "APOP sends no password");
        assert_eq!(e.gate(&parse(b"AUTH CRAM-MD5").unwrap(), false, ip), Gate::Pass);
        // Loopback listeners allow it by default; allow_plaintext overrides either way.
        let lo = edge("127.0.0.1:110", starttls());
        assert_eq!(lo.gate(&parse(b"USER alice").unwrap(), false, ip), Gate::Pass);
        let allowed = edge("0.0.0.0:110", EdgeSettings { allow_plaintext: Some(true), ..starttls() });
        assert_eq!(allowed.gate(&parse(b"USER alice").unwrap(), false, ip), Gate::Pass);
        let denied = edge("127.0.0.1:110", EdgeSettings { allow_plaintext: Some(false), ..starttls() });
        assert!(matches!(denied.gate(&parse(b"USER alice").unwrap(), false, ip), Gate::Refuse { .. }));
    }

    #[test]
    fn stls_only_before_tls_and_only_when_configured() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let stls = parse(b"STLS").unwrap();
        assert_eq!(edge("0.0.0.0:110", starttls()).gate(&stls, false, ip), Gate::StartTls);
        assert!(
            matches!(edge("0.0.0.0:110", starttls()).gate(&stls, true, ip), Gate::Reply(r) if r.starts_with(b"-ERR"))
        );
        assert_eq!(edge("0.0.0.0:110", EdgeSettings::default()).gate(&stls, false, ip), Gate::Pass);
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
        let pass = parse(b"PASS x").unwrap();
        assert_eq!(e.gate(&pass, false, ip), Gate::Pass);
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::UpstreamRefused);
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::Throttled);
        assert_eq!(e.gate(&pass, false, ip), Gate::Pass, "popsift's own refusals are not counted");
        e.login_failed(ip, Some("alice"), "u:110", LoginFailure::UpstreamRefused);
        assert_eq!(e.gate(&pass, false, ip), Gate::Refuse { reply: THROTTLED, why: LoginFailure::Throttled });
        assert_eq!(e.gate(&parse(b"USER bob").unwrap(), false, ip), Gate::Pass, "USER alone carries no secret");
        assert_eq!(e.gate(&pass, false, "127.0.0.10".parse().unwrap()), Gate::Pass);
    }
}
