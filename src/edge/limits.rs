//! Per-client-address limits against abuse: concurrent sessions per address
//! (`max_sessions_per_ip`) and failed logins per address (`login_failures`). The address is
//! the client's real one (carried by the PROXY header behind a balancer).
//!
//! Both maps are bounded: the session counts hold only addresses with a session open (so at
//! most `max_sessions` entries), and the failure table holds at most `tracked` addresses,
//! forgetting the one that failed least recently, so a flood of addresses costs a fixed
//! amount of memory (and at worst lets an evicted guesser start over). That table is a
//! [`Recent`]: a map plus a queue in touch order, so making room is amortised O(1) even when
//! the table is full of fresh entries (a scan of the whole table per insertion would let a
//! flood of addresses cost O(n) each). The review page's login rate limit uses it too.
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

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

/// A map bounded to `cap` entries that forgets the least recently touched one to make room.
///
/// Each touch appends `(stamp, key)` to a queue; an entry's current stamp is kept beside its
/// value, so queue items whose stamp is older are stale and skipped when popped. The queue
/// is rebuilt from the map when it grows past twice the map (plus a little), so it stays
/// O(cap) and each touch costs amortised O(log cap).
#[derive(Debug)]
pub struct Recent<K, V> {
    cap: usize,
    map: HashMap<K, (u64, V)>,
    order: VecDeque<(u64, K)>,
    stamp: u64,
    /// Queue items popped or rebuilt so far: what a complexity test counts.
    work: u64,
}

impl<K: Eq + Hash + Clone, V> Recent<K, V> {
    /// A table of at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Recent<K, V> {
        Recent { cap: cap.max(1), map: HashMap::new(), order: VecDeque::new(), stamp: 0, work: 0 }
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entry for `k` (made by `make` when absent, after evicting the least recently
    /// touched entry if the table is full), now the most recently touched.
    pub fn touch(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        self.stamp += 1;
        let stamp = self.stamp;
        if !self.map.contains_key(&k) {
            while self.map.len() >= self.cap {
                self.evict_one();
            }
        }
        if self.order.len() > 2 * self.cap + 16 {
            self.compact();
        }
        self.order.push_back((stamp, k.clone()));
        let slot = self.map.entry(k).or_insert_with(|| (stamp, make()));
        slot.0 = stamp;
        &mut slot.1
    }

    fn evict_one(&mut self) {
        while let Some((stamp, k)) = self.order.pop_front() {
            self.work += 1;
            if self.map.get(&k).is_some_and(|(s, _)| *s == stamp) {
                self.map.remove(&k);
                return;
            }
        }
    }

    /// Drops the stale queue items: the queue again holds one item per entry, in order.
    fn compact(&mut self) {
        self.work += self.order.len() as u64;
        let mut live: Vec<(u64, K)> = self.map.iter().map(|(k, (s, _))| (*s, k.clone())).collect();
        live.sort_unstable_by_key(|(s, _)| *s);
        self.order = live.into();
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures counted in the window that began at `since`.
    count: u32,
    since: Instant,
}

/// Failed logins per client address within a window.
#[derive(Debug)]
pub struct LoginThrottle {
    settings: LoginFailures,
    table: Mutex<Recent<IpAddr, Failures>>,
}

impl LoginThrottle {
    pub fn new(settings: LoginFailures) -> LoginThrottle {
        LoginThrottle { settings, table: Mutex::new(Recent::new(settings.tracked)) }
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
        let window = self.settings.window;
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let f = table.touch(ip.to_canonical(), || Failures { count: 0, since: now });
        if now.duration_since(f.since) >= window {
            *f = Failures { count: 0, since: now };
        }
        f.count = f.count.saturating_add(1);
        f.count
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.table.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[test]
    fn a_full_table_makes_room_in_amortised_constant_work() {
        // 100,000 distinct addresses into a table of 1,000, interleaved with repeat failures
        // from a few addresses (which leave stale queue items behind).
        let mut t: Recent<u32, u32> = Recent::new(1_000);
        let inserts = 100_000u32;
        for i in 0..inserts {
            *t.touch(i, || 0) += 1;
            *t.touch(i % 7, || 0) += 1;
            assert!(t.len() <= 1_000);
        }
        assert_eq!(t.len(), 1_000);
        // The old eviction scanned the whole table per insertion once full (~10^8 here).
        assert!(t.work <= 6 * u64::from(inserts), "{} queue items examined for {inserts} insertions", t.work);
        assert!(t.order.len() <= 2 * 1_000 + 17, "the queue stays bounded: {}", t.order.len());
        // The most recently touched stay, the least recently touched went.
        assert!(t.get(&(inserts - 1)).is_some());
        assert!(t.get(&3).is_some(), "touched every round");
        assert!(t.get(&(inserts - 1_500)).is_none());
    }

    #[test]
    fn touching_an_entry_saves_it_from_eviction() {
        let mut t: Recent<&str, u8> = Recent::new(2);
        t.touch("a", || 1);
        t.touch("b", || 2);
        t.touch("a", || 9);
        t.touch("c", || 3);
        assert_eq!(t.get(&"a"), Some(&1), "touched last: kept, value untouched by make");
        assert_eq!(t.get(&"b"), None, "least recently touched: evicted");
        assert_eq!(t.get(&"c"), Some(&3));
    }
}
