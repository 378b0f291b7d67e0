//! Per-client-address limits against abuse: concurrent sessions per address
//! (`max_sessions_per_ip`) and failed logins per address (`login_failures`). The address is
//! the client's real one (carried by the PROXY header behind a balancer).
//!
//! Both maps are bounded: the session counts hold only addresses with a session open (so at
//! most `max_sessions` entries), and the failure table holds at most `tracked` addresses,
//! forgetting expired entries first and then the stalest, so a flood of addresses costs a
//! fixed amount of memory (and at worst lets an evicted guesser start over).
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::edge::settings::LoginFailures;

/// Counts open sessions per client address.
#[derive(Debug, Default)]
pub struct SessionsPerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Holds one address's slot until dropped.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<SessionsPerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl SessionsPerIp {
    /// Takes a slot for `ip` unless it already has `max` sessions (0: no limit).
    pub fn try_open(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            if *n == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(IpSlot { owner: Arc::clone(self), ip })
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures counted in the window that began at `since`.
    count: u32,
    since: Instant,
    last: Instant,
}

/// Failed logins per client address within a window.
#[derive(Debug)]
pub struct LoginThrottle {
    settings: LoginFailures,
    table: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginThrottle {
    pub fn new(settings: LoginFailures) -> LoginThrottle {
        LoginThrottle { settings, table: Mutex::new(HashMap::new()) }
    }

    pub fn settings(&self) -> &LoginFailures {
        &self.settings
    }

    /// Whether `ip` has used up its failures for the current window (its next login is
    /// refused without asking the upstream).
    pub fn is_throttled(&self, ip: IpAddr, now: Instant) -> bool {
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .get(&ip.to_canonical())
            .is_some_and(|f| now.duration_since(f.since) < self.settings.window && f.count >= self.settings.max)
    }

    /// Counts one failed login from `ip`; returns the failures in the current window.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> u32 {
        let ip = ip.to_canonical();
        let window = self.settings.window;
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if !table.contains_key(&ip) && table.len() >= self.settings.tracked {
            evict(&mut table, now, window);
        }
        let f = table.entry(ip).or_insert(Failures { count: 0, since: now, last: now });
        if now.duration_since(f.since) >= window {
            *f = Failures { count: 0, since: now, last: now };
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.count
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Makes room for one entry: drops every expired one, or else the stalest.
fn evict(table: &mut HashMap<IpAddr, Failures>, now: Instant, window: Duration) {
    let before = table.len();
    table.retain(|_, f| now.duration_since(f.since) < window);
    if table.len() < before {
        return;
    }
    if let Some(stalest) = table.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip) {
        table.remove(&stalest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sessions_per_ip_are_counted_and_released() {
        let s = Arc::new(SessionsPerIp::default());
        let a = s.try_open(ip("192.0.2.1"), 2).unwrap();
        let b = s.try_open(ip("::ffff:192.0.2.1"), 2).unwrap();
        assert!(s.try_open(ip("192.0.2.1"), 2).is_none(), "third session from one address refused");
        let c = s.try_open(ip("192.0.2.2"), 2).unwrap();
        drop(a);
        let a2 = s.try_open(ip("192.0.2.1"), 2).unwrap();
        drop((a2, b, c));
        assert_eq!(s.open.lock().unwrap().len(), 0, "no entry outlives its sessions");
        assert!(s.try_open(ip("192.0.2.1"), 0).is_some(), "0 is no limit");
    }

    #[test]
    fn failures_throttle_within_the_window_only() {
        let t = LoginThrottle::new(LoginFailures {
            max: 3,
            window: Duration::from_secs(60),
            delay: Duration::ZERO,
            tracked: 10,
        });
        let now = Instant::now();
        let a = ip("198.51.100.7");
        for i in 1..=3 {
            assert!(!t.is_throttled(a, now));
            assert_eq!(t.record_failure(a, now), i);
        }
        assert!(t.is_throttled(a, now));
        assert!(!t.is_throttled(ip("198.51.100.8"), now), "other addresses are not affected");
        let later = now + Duration::from_secs(61);
        assert!(!t.is_throttled(a, later), "the window passed");
        assert_eq!(t.record_failure(a, later), 1, "a new window starts");
    }

    #[test]
    fn the_failure_table_is_bounded() {
        let t = LoginThrottle::new(LoginFailures {
            max: 3,
            window: Duration::from_secs(60),
            delay: Duration::ZERO,
            tracked: 100,
        });
        let now = Instant::now();
        for i in 0..10_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.record_failure(a, now + Duration::from_millis(u64::from(i)));
        }
        assert!(t.tracked() <= 100, "{} addresses kept", t.tracked());
        // The most recent guesser is still remembered.
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 9_999));
        t.record_failure(last, now + Duration::from_secs(10));
        t.record_failure(last, now + Duration::from_secs(10));
        assert!(t.is_throttled(last, now + Duration::from_secs(10)));
    }
}
