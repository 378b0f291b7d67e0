//! Waiting for a condition with a bounded deadline, instead of sleeping for a guessed time.
//!
//! A sleep before an assertion either wastes time (when the condition came early) or makes
//! the test flaky on a busy machine (when it came late); worse, before a *negative* assertion
//! ("nothing was deleted") it passes when the system is merely slow. Wait for the event that
//! proves the work is done — the session-finished log line, the upstream connection closing,
//! a metric value — and fail loudly when it does not come within a generous deadline.
//!
//! Included by `tests/support/mod.rs` and, without the rest of the harness, by
//! `tests/fake/mod.rs` (`#[path]`).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How often the condition is polled.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds; panics with `what` after `deadline`.
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for async tests: yields to the runtime between polls.
pub async fn wait_until_async(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}
