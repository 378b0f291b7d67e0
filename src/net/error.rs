//! Session errors, each naming the phase it happened in, so that logs and `-ERR` texts say
//! what popsift was doing ("upstream reply timed out during scan").
use std::fmt;
use std::time::Duration;

/// What the session was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    TlsHandshake,
    Greeting,
    Stls,
    Capa,
    Login,
    Scan,
    Relay,
    Update,
    /// Waiting for a client's next command to begin (`timeouts.client_idle`).
    ClientIdle,
    /// Waiting for the rest of a client command line whose first octet has arrived
    /// (`timeouts.client_line`).
    ClientLine,
    /// Writing to a client that does not read (`timeouts.client_idle` per write).
    ClientWrite,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::TlsHandshake => "TLS handshake",
            Phase::Greeting => "greeting",
            Phase::Stls => "STLS",
            Phase::Capa => "CAPA",
            Phase::Login => "login",
            Phase::Scan => "scan",
            Phase::Relay => "relay",
            Phase::Update => "update",
            Phase::ClientIdle => "client idle",
            Phase::ClientLine => "client command line",
            Phase::ClientWrite => "writing to the client",
        })
    }
}

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
}

impl SessionError {
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
