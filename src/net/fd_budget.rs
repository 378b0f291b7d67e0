//! The file-descriptor budget: raise `RLIMIT_NOFILE` at start and check that the POP3
//! sessions have the descriptors they may need.
//!
//! The soft limit is often 1,024 while the hard limit is far higher (systemd: 524,288); a
//! process may raise its own soft limit up to the hard one, so popsift does at start
//! ([`raise_nofile_limit`]) and logs the figure.
//!
//! The budget ([`Budget`]) it then checks, per the most that can be open at once:
//! - each POP3 session: 3 (client socket, upstream socket, a quarantine file being written),
//!   times `max_sessions`;
//! - the metrics listener: at most [`HttpLimits::METRICS`]`.max_connections` plus its
//!   listening socket: its connection cap is taken before `accept`, so however many clients
//!   connect to it, it never holds more;
//! - a fixed reserve of [`RESERVE`] for everything else (listening sockets, the runtime's
//!   epoll and wake-up descriptors, the header cache database, inotify, rule and list files
//!   being read, stdio).
//!
//! When the limit is below the budget popsift still starts, but warns with the figures: the
//! sessions beyond what fits would see `accept` fail (logged once per second, never a hot
//! loop) rather than a crash.
use crate::net::http::HttpLimits;

/// Descriptors kept for everything that is not a session or a metrics connection.
pub const RESERVE: u64 = 64;
/// Descriptors one POP3 session may hold at once.
pub const PER_SESSION: u64 = 3;

/// The descriptor limit after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit before popsift raised it.
    pub before: u64,
    /// The soft limit now (what the process may use).
    pub soft: u64,
    /// The hard limit (the ceiling for the soft one).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (capped at 1,048,576, the usual kernel
/// `nr_open`) and returns the limits. Never fails: when the limit cannot be read or raised
/// the error is returned for the caller to log, and popsift runs with what it has.
pub fn raise_nofile_limit() -> Result<NofileLimit, std::io::Error> {
    let (before, _) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = rlimit::increase_nofile_limit(1 << 20)?;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    Ok(NofileLimit { before, soft, hard })
}

/// What the configured listeners may need at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub sessions: u64,
    pub metrics: u64,
    pub reserve: u64,
}

impl Budget {
    /// The budget for `max_sessions` sessions and a metrics listener when `metrics` is true.
    pub fn new(max_sessions: usize, metrics: bool) -> Budget {
        Budget {
            sessions: (max_sessions as u64).saturating_mul(PER_SESSION),
            metrics: if metrics { HttpLimits::METRICS.max_connections as u64 + 1 } else { 0 },
            reserve: RESERVE,
        }
    }

    /// The total.
    pub fn total(&self) -> u64 {
        self.sessions.saturating_add(self.metrics).saturating_add(self.reserve)
    }

    /// How many sessions fit in `limit` next to the metrics listener and the reserve.
    pub fn sessions_that_fit(&self, limit: u64) -> u64 {
        limit.saturating_sub(self.metrics).saturating_sub(self.reserve) / PER_SESSION
    }
}

/// Raises the limit and logs it against the budget for `max_sessions` (and a metrics listener
/// when `metrics`): info when it fits, a warning with the figures when it does not.
pub fn prepare(max_sessions: usize, metrics: bool) {
    let budget = Budget::new(max_sessions, metrics);
    match raise_nofile_limit() {
        Ok(l) => {
            if l.soft >= budget.total() {
                tracing::info!(
                    soft = l.soft,
                    hard = l.hard,
                    was = l.before,
                    needed = budget.total(),
                    "file descriptor limit (RLIMIT_NOFILE)"
                );
            } else {
                tracing::warn!(
                    soft = l.soft,
                    hard = l.hard,
                    needed = budget.total(),
                    max_sessions,
                    sessions_that_fit = budget.sessions_that_fit(l.soft),
                    "file descriptor limit (RLIMIT_NOFILE) is below what max_sessions may need; raise the hard limit (systemd: LimitNOFILE=) or lower max_sessions"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the file descriptor limit (RLIMIT_NOFILE)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_figures() {
        let b = Budget::new(100, true);
        assert_eq!(b.total(), 300 + 65 + RESERVE);
        assert_eq!(b.sessions_that_fit(1024), (1024 - 65 - RESERVE) / 3);
        assert_eq!(Budget::new(10, false).metrics, 0);
        assert_eq!(b.sessions_that_fit(10), 0);
    }

    #[test]
    fn raising_never_lowers() {
        let l = raise_nofile_limit().unwrap();
        assert!(l.soft >= l.before);
        assert!(l.soft <= l.hard);
    }
}
