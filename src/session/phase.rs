//! What a session is doing at a given moment. Every timeout and every error names its phase
//! ("upstream reply timed out during scan"), and the machine's I/O actions say which phase
//! they belong to, so the performer picks the matching timeout (see `net::conn`).
use std::fmt;

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
