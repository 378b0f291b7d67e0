//! Session errors, each naming the phase it happened in, so that logs and `-ERR` texts say
//! what popsift was doing ("upstream reply timed out during scan").
//!
//! The full text ([`Display`](fmt::Display)) goes to the log; the client gets
//! [`SessionError::client_reason`], which names the phase but never the upstream's host name
//! or address, TLS internals, or text the upstream sent.
use std::fmt;
use std::time::Duration;

pub use crate::session::phase::Phase;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{phase} timed out after {after:?}")]
    Timeout { phase: Phase, after: Duration },
    /// A multi-line reply that arrived slower than `timeouts.upstream_min_rate` (after its
    /// `upstream_reply` allowance): a server dribbling octets to keep the session alive.
    #[error("upstream reply during {phase} too slow: {octets} octets in {after:?}")]
    TooSlow { phase: Phase, octets: u64, after: Duration },
    #[error("upstream closed the connection during {phase}")]
    UpstreamClosed { phase: Phase },
    #[error("upstream I/O error during {phase}: {source}")]
    UpstreamIo { phase: Phase, source: std::io::Error },
    #[error("upstream protocol error during {phase}: {detail}")]
    UpstreamProtocol { phase: Phase, detail: String },
    #[error("cannot connect to upstream {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with upstream {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("client closed the connection")]
    ClientClosed,
    #[error("client I/O error: {0}")]
    ClientIo(std::io::Error),
    #[error("client line longer than {limit} octets")]
    ClientLineTooLong { limit: usize },
    /// The shutdown's drain deadline passed while the session ran.
    #[error("cut off at the shutdown's drain deadline (no UPDATE)")]
    CutOff,
    /// The I/O pump and the session machine disagree (a bug, never peer input).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl SessionError {
    /// An upstream reply that breaks RFC 1939's invariants (see [`crate::pop3::listing`]):
    /// logged with what was wrong, counted in `popsift_upstream_invalid_replies_total{reply}`,
    /// and ends the session as a protocol error (the client gets `-ERR [SYS/TEMP] …`; no
    /// UPDATE, so nothing is deleted).
    pub fn invalid_reply(phase: Phase, reply: &'static str, what: impl fmt::Display) -> SessionError {
        crate::metrics::upstream_invalid_reply(reply);
        let detail = format!("{} reply breaks RFC 1939: {what}", reply.to_ascii_uppercase());
        tracing::warn!(%phase, reply, problem = %what, "upstream reply refused; ending the session without UPDATE (nothing is deleted)");
        SessionError::UpstreamProtocol { phase, detail }
    }

    /// A short reason for the client's `-ERR`: the phase and what kind of failure, with no
    /// host names, addresses, TLS or I/O details and no upstream text (those are logged).
    pub fn client_reason(&self) -> String {
        match self {
            SessionError::Timeout { phase, after } => format!("{phase} timed out after {}s", after.as_secs()),
            SessionError::TooSlow { phase, octets, after } => {
                format!("{phase} too slow: the mail server sent {octets} octets in {}s", after.as_secs())
            }
            SessionError::UpstreamClosed { phase } => format!("the mail server closed the connection during {phase}"),
            SessionError::UpstreamIo { phase, .. } => format!("connection to the mail server failed during {phase}"),
            SessionError::UpstreamProtocol { phase, .. } => {
                format!("the mail server sent an invalid reply during {phase}")
            }
            SessionError::Connect { .. } => "cannot connect to the mail server".into(),
            SessionError::Tls { .. } => "TLS with the mail server failed".into(),
            SessionError::ClientClosed => "client closed the connection".into(),
            SessionError::ClientIo(_) => "client I/O error".into(),
            SessionError::ClientLineTooLong { limit } => format!("line longer than {limit} octets"),
            SessionError::CutOff => "popsift is shutting down".into(),
            SessionError::Internal(_) => "internal error".into(),
        }
    }

    /// Whether the upstream side is at fault (for `-ERR [SYS/TEMP]` and metrics).
    pub fn upstream_kind(&self) -> Option<&'static str> {
        match self {
            SessionError::Timeout { phase: Phase::ClientIdle | Phase::ClientLine | Phase::ClientWrite, .. } => None,
            SessionError::TooSlow { .. } => Some("timeout"),
            SessionError::Timeout { .. } => Some("timeout"),
            SessionError::UpstreamClosed { .. } => Some("closed"),
            SessionError::UpstreamIo { .. } => Some("closed"),
            SessionError::UpstreamProtocol { phase: Phase::Greeting, .. } => Some("greeting"),
            SessionError::UpstreamProtocol { .. } => Some("protocol"),
            SessionError::Connect { .. } => Some("connect"),
            SessionError::Tls { .. } => Some("tls"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12 item 6: `-ERR` texts carry no upstream host names or TLS internals.
    #[test]
    fn client_reasons_carry_no_upstream_details() {
        let secret = "mail.internal.example:995";
        let cases = [
            SessionError::Connect { addr: secret.into(), reason: format!("{secret}: connection refused") },
            SessionError::Tls { addr: secret.into(), reason: "invalid peer certificate: UnknownIssuer".into() },
            SessionError::UpstreamIo {
                phase: Phase::Relay,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "received corrupt message of type Handshake",
                ),
            },
            SessionError::UpstreamProtocol { phase: Phase::Scan, detail: format!("LIST: line 2 from {secret}") },
        ];
        for e in cases {
            let client = e.client_reason();
            let log = e.to_string();
            for leak in [secret, "UnknownIssuer", "corrupt message", "LIST: line 2"] {
                assert!(!client.contains(leak), "{client:?} leaks {leak:?}");
            }
            assert_ne!(client, log, "the log keeps the detail");
        }
        let t = SessionError::Timeout { phase: Phase::Scan, after: Duration::from_secs(3) };
        assert_eq!(t.client_reason(), "scan timed out after 3s");
    }
}
