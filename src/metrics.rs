//! Every metric popsift exports, in one place (PLACEHOLDER BODIES — the metrics helper
//! implements them; callers elsewhere use only these functions, never metric name strings).
use std::net::SocketAddr;

/// How a client session ended (`popsift_sessions_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult {
    /// Client sent QUIT and the UPDATE state completed.
    Ok,
    /// Login refused by the upstream.
    AuthFailed,
    /// Upstream unreachable, failed, or timed out.
    UpstreamError,
    /// Client went away or timed out before QUIT.
    ClientAborted,
}

/// Direction for `popsift_bytes_total{direction}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Upstream → popsift.
    FromUpstream,
    /// popsift → client.
    ToClient,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint {addr}: {reason}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub reason: String,
}

/// Installs the recorder and, when `addr` is given, serves `/metrics` there.
/// Must be called inside a tokio runtime. Registers (describes) every metric and sets
/// `popsift_build_info`.
pub fn install(_addr: Option<SocketAddr>) -> Result<(), MetricsError> {
    Ok(())
}
pub fn session_started() {}
pub fn session_finished(_result: SessionResult) {}
pub fn message_scanned() {}
/// `verdict`: "spam" | "ham"; `action`: "none" | "allow" | "tag" | "hide" | "delete" | "quarantine".
pub fn message_verdict(_verdict: &str, _action: &str) {}
pub fn rule_matched(_rule_id: &str) {}
pub fn scan_duration(_seconds: f64) {}
pub fn rule_eval_duration(_seconds: f64) {}
/// `kind`: "connect" | "tls" | "timeout" | "protocol" | "closed" | "greeting".
pub fn upstream_error(_kind: &'static str) {}
pub fn upstream_connect_duration(_seconds: f64) {}
pub fn bytes(_direction: Direction, _n: u64) {}
pub fn rules_loaded(_n: usize) {}
pub fn rules_reload(_ok: bool) {}
pub fn quarantine_message() {}
