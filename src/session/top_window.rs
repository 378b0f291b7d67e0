//! The login scan's `TOP n 0` windows, sans-IO: which commands go out when, and what the
//! replies say about the server (RFC 2449 §6.6 pipelining; RFC 1939 §7 TOP is optional).
//! `net::login_scan` performs the writes and reads and tells this machine each outcome.
//!
//! - At most `window` commands in flight (1 without upstream pipelining), topped up when
//!   half have been answered, so neither side's socket buffers can fill up and deadlock.
//! - Also bounded in bytes: the header octets expected in flight stay within `budget`
//!   (`scan.window_bytes`). Each `TOP` is counted as its LIST size, capped at
//!   `header_limit` and at twice the largest block seen so far (at least 8 KiB), so
//!   small-header mailboxes keep a full window while 200 KB blocks cannot pile up.
//! - A `-ERR` before any success (and with no header from the cache, which also came from
//!   TOP) means the server has no TOP: nothing more is sent, the rest goes unfiltered.
//!   After a success, a `-ERR` is one message's failure.

/// The TOP windows of one scan over `todo` (upstream number, LIST size), in server order.
#[derive(Debug)]
pub struct TopWindow {
    todo: Vec<(u32, u64)>,
    window: usize,
    budget: usize,
    header_limit: usize,
    /// Commands sent, and replies taken.
    sent: usize,
    got: usize,
    /// Header octets expected per command sent, and their sum for those in flight.
    expected: Vec<usize>,
    in_flight_bytes: usize,
    largest: usize,
    successes: usize,
    failures: usize,
    top_supported: bool,
    /// Header blocks the cache already answered (they came from TOP at an earlier login).
    cache_hits: usize,
}

impl TopWindow {
    pub fn new(
        todo: Vec<(u32, u64)>,
        pipelining: bool,
        window: usize,
        budget: usize,
        header_limit: usize,
        cache_hits: usize,
    ) -> TopWindow {
        let n = todo.len();
        TopWindow {
            todo,
            window: if pipelining { window.max(1) } else { 1 },
            budget: budget.max(1),
            header_limit,
            sent: 0,
            got: 0,
            expected: Vec::with_capacity(n),
            in_flight_bytes: 0,
            largest: 0,
            successes: 0,
            failures: 0,
            top_supported: true,
            cache_hits,
        }
    }

    /// The `TOP` commands to write now, if the window has room (see the module doc).
    pub fn commands(&mut self) -> Option<Vec<u8>> {
        let in_flight = self.sent - self.got;
        if !(self.top_supported
            && self.sent < self.todo.len()
            && in_flight <= self.window / 2
            && self.in_flight_bytes <= self.budget / 2)
        {
            return None;
        }
        let mut cmd = Vec::with_capacity(self.window.min(self.todo.len()) * 16);
        let guess = (2 * self.largest).max(8 * 1024);
        while self.sent - self.got < self.window {
            let Some(&(n, size)) = self.todo.get(self.sent) else { break };
            let expect = usize::try_from(size).unwrap_or(usize::MAX).min(self.header_limit).min(guess);
            if self.sent > self.got && self.in_flight_bytes + expect > self.budget {
                break;
            }
            cmd.extend_from_slice(format!("TOP {n} 0\r\n").as_bytes());
            self.expected.push(expect);
            self.in_flight_bytes += expect;
            self.sent += 1;
        }
        Some(cmd)
    }

    /// The position in `todo` whose reply is read next, or `None` when the scan's TOP part
    /// is over (every message answered, or TOP refused with nothing in flight).
    pub fn next_due(&mut self) -> Option<usize> {
        if self.got >= self.todo.len() || self.got == self.sent {
            return None;
        }
        let k = self.got;
        self.in_flight_bytes -= self.expected.get(k).copied().unwrap_or_default();
        self.got += 1;
        Some(k)
    }

    /// The due `TOP` was answered `+OK` with a header block of `len` octets.
    pub fn answered(&mut self, len: usize) {
        self.successes += 1;
        self.largest = self.largest.max(len);
    }

    /// The due `TOP` was answered `-ERR`.
    pub fn refused(&mut self) {
        if self.successes == 0 && self.cache_hits == 0 {
            self.top_supported = false;
        } else {
            self.failures += 1;
        }
    }

    pub fn top_supported(&self) -> bool {
        self.top_supported
    }

    /// Messages whose TOP failed although TOP works for others.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// `TOP` commands sent.
    pub fn sent(&self) -> usize {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn todo(n: u32, size: u64) -> Vec<(u32, u64)> {
        (1..=n).map(|i| (i, size)).collect()
    }

    fn s(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn without_pipelining_one_top_at_a_time() {
        let mut w = TopWindow::new(todo(3, 100), false, 64, 1 << 20, 1 << 16, 0);
        for n in 1..=3 {
            assert_eq!(s(w.commands().unwrap()), format!("TOP {n} 0\r\n"));
            assert!(w.commands().is_none(), "one in flight");
            assert_eq!(w.next_due(), Some(n as usize - 1));
            w.answered(50);
        }
        assert!(w.commands().is_none());
        assert_eq!(w.next_due(), None);
        assert_eq!(w.sent(), 3);
    }

    #[test]
    fn a_window_is_topped_up_at_half() {
        let mut w = TopWindow::new(todo(10, 100), true, 4, 1 << 20, 1 << 16, 0);
        assert_eq!(s(w.commands().unwrap()), "TOP 1 0\r\nTOP 2 0\r\nTOP 3 0\r\nTOP 4 0\r\n");
        w.next_due();
        w.answered(10);
        assert!(w.commands().is_none(), "3 in flight > 4 / 2");
        w.next_due();
        w.answered(10);
        assert_eq!(s(w.commands().unwrap()), "TOP 5 0\r\nTOP 6 0\r\n");
    }

    #[test]
    fn bytes_bound_the_window_too() {
        // 100 KB messages under a 256 KiB budget: the first guess is 8 KiB each, then twice
        // the largest block seen.
        let mut w = TopWindow::new(todo(100, 100_000), true, 1024, 256 * 1024, 1 << 20, 0);
        let first = s(w.commands().unwrap());
        assert_eq!(first.lines().count(), 32, "256 KiB / 8 KiB");
        while w.next_due().is_some() {
            w.answered(60_000);
            if let Some(c) = w.commands() {
                let n = s(c).lines().count();
                assert!(n <= 3, "120 KB expected per TOP: {n}");
            }
        }
        assert_eq!(w.sent(), 100);
    }

    #[test]
    fn an_early_refusal_means_no_top() {
        let mut w = TopWindow::new(todo(5, 100), true, 2, 1 << 20, 1 << 16, 0);
        w.commands();
        w.next_due();
        w.refused();
        assert!(!w.top_supported());
        assert_eq!(w.next_due(), Some(1), "what is in flight is still read");
        w.refused();
        assert!(w.commands().is_none());
        assert_eq!(w.next_due(), None);
        assert_eq!(w.sent(), 2);
    }

    #[test]
    fn a_refusal_after_a_success_or_a_cache_hit_is_one_failure() {
        let mut w = TopWindow::new(todo(2, 100), false, 1, 1 << 20, 1 << 16, 0);
        w.commands();
        w.next_due();
        w.answered(10);
        w.commands();
        w.next_due();
        w.refused();
        assert!(w.top_supported());
        assert_eq!(w.failures(), 1);
        let mut w = TopWindow::new(todo(1, 100), false, 1, 1 << 20, 1 << 16, 3);
        w.commands();
        w.next_due();
        w.refused();
        assert!(w.top_supported() && w.failures() == 1);
    }

    #[test]
    fn nothing_to_do() {
        let mut w = TopWindow::new(Vec::new(), true, 8, 1, 1, 0);
        assert!(w.commands().is_none());
        assert_eq!(w.next_due(), None);
    }
}
