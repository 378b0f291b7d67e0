//! The count of running sessions, and the stores giving their memory back when none has
//! run for a while (issue 16: memory back after the sessions end).
//!
//! The header cache's and the decision history's redb files keep, in redb's page caches,
//! the pages a burst of logins read and wrote (up to `cache.memory` and 1 MiB), for good:
//! measured with 5,000 sessions (tests/benches/idle_sessions.rs), they and the allocator
//! pages they pin were most of what popsift kept once every session had ended (about 2× its
//! starting memory). So when the number of running sessions has stayed at zero for
//! [`RELEASE_AFTER`], both stores close their file and open it again
//! ([`crate::store::header_cache::HeaderStore::release_memory`],
//! [`crate::store::history::History::release_memory`]): the new handles start with empty
//! caches. A store in use (a background write in flight) says so and is tried again after
//! another quiet period, so no write is cut short. The verdict memo stays: it is what makes
//! a polling client's next login fast, and it is kept small instead
//! ([`crate::store::verdict_memo`]).
//!
//! Debounced: only after the count has *stayed* at zero for [`RELEASE_AFTER`] (5 s), and
//! once per idle period (a session must have run since the last release), so an instance
//! whose one client logs in every few seconds never closes a file; one that polls every
//! minute pays one close and reopen per poll (on the blocking pool, while no session runs;
//! normally a few milliseconds, more when a file must be rebuilt, see
//! [`crate::store::header_cache::RedbHeaderCache::release_memory`]), and its logins are
//! answered from the verdict memo anyway.
//!
//! The count is of connections, not of store use: a health check that connects and
//! disconnects is a session. So each store remembers whether it was used since it was
//! (re)opened ([`crate::store::header_cache::HeaderCache::used`],
//! [`crate::store::history::History::used`]): an unused one gives nothing back and closes
//! nothing (it reports done), and the listener repacks the verdict memo only when a store
//! was used. A check every few seconds still keeps the count from staying at zero for
//! [`RELEASE_AFTER`], so the caches of the last burst stay until the checks pause; and one
//! long-lived idle session (a client that keeps its connection open) keeps them too. Both
//! accepted: the release is about an instance after a burst of logins, not about every
//! lull.
//!
//! After a release, the threads that stay empty their allocator caches (ninth session,
//! README "Idle sessions"): the free objects a burst of sessions left in the runtime
//! workers' jemalloc caches kept their slabs' pages (2–3 MiB of slack after the sessions
//! ended). The releasing blocking thread and every worker flush at once
//! ([`crate::allocator::flush_worker_caches`]), the model poller at its next poll; the
//! history writer flushes by itself when its queue pauses. The workers' flush runs only
//! after 5 s without a session (also after connections that used no store, such as health
//! checks: a few microseconds); a session arriving during it waits for a worker at most
//! [`FLUSH_WITHIN`].
//!
//! The count is kept by [`SessionSlot`], which is also the session's permit (the
//! `max_sessions` cap): one pointer in every session's task, as the permit it replaces
//! was two words. The releaser wakes only when the count leaves or reaches zero.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

/// How long the count must stay at zero before the stores give their memory back. Long
/// enough that a client logging in again at once (a mail client's retry, a second
/// account) does not make a store close its file under it; short enough that the memory
/// is back well before anyone looks (the idle bench reads it ≥ 10 s after the last close).
pub const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// Sessions running, and sessions started since the process began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub live: usize,
    pub started: u64,
}

/// The running sessions: the `max_sessions` permits and their count.
#[derive(Debug)]
pub struct Sessions {
    permits: Arc<Semaphore>,
    count: watch::Sender<Count>,
}

/// One running session's place: gives its permit back and counts it out when dropped.
#[derive(Debug)]
pub struct SessionSlot(Arc<Sessions>);

impl Sessions {
    pub fn new(max: usize) -> Arc<Sessions> {
        Arc::new(Sessions { permits: Arc::new(Semaphore::new(max)), count: watch::channel(Count::default()).0 })
    }

    /// A place for one more session; `None` when `max` are running.
    pub fn try_start(self: &Arc<Self>) -> Option<SessionSlot> {
        self.permits.try_acquire().ok()?.forget();
        // Receivers are woken only when the count leaves zero.
        self.count.send_if_modified(|c| {
            c.live += 1;
            c.started += 1;
            c.live == 1
        });
        Some(SessionSlot(self.clone()))
    }

    /// The permits (the drain waits until it holds them all).
    pub fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Watches the count (woken when it leaves or reaches zero).
    pub fn watch(&self) -> watch::Receiver<Count> {
        self.count.subscribe()
    }

    /// The count now.
    pub fn count(&self) -> Count {
        *self.count.borrow()
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.count.send_if_modified(|c| {
            c.live = c.live.saturating_sub(1);
            c.live == 0
        });
        self.0.permits.add_permits(1);
    }
}

/// Runs until the count's sender is gone: each time the count has stayed at zero for
/// `quiet` after at least one session ran since the last release, calls `release` on the
/// blocking pool (`true`: done; `false`: something was in use, tried again after another
/// `quiet`).
pub async fn release_when_idle(
    mut count: watch::Receiver<Count>,
    quiet: Duration,
    release: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    let mut released = count.borrow_and_update().started;
    loop {
        let started = match count.wait_for(|c| c.live == 0 && c.started != released).await {
            Ok(c) => c.started,
            Err(_) => return,
        };
        match tokio::time::timeout(quiet, count.changed()).await {
            // A session began (and maybe ended) meanwhile: wait for zero again.
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return,
            Err(_quiet) => {}
        }
        let release = release.clone();
        match tokio::task::spawn_blocking(move || release()).await {
            Ok(true) => {
                tracing::debug!(
                    sessions_since = started - released,
                    "no session for a while: the stores gave their page caches back"
                );
                released = started;
            }
            Ok(false) => tracing::debug!("a store was in use; giving its memory back later"),
            Err(e) => tracing::warn!(error = %e, "giving the stores' memory back failed"),
        }
    }
}

/// How long the release waits for every runtime worker to empty its allocator cache.
///
/// Each worker is held (it runs no other task) until every worker has flushed or this
/// bound passes, so it is short: a worker slower to wake than this simply keeps its cache
/// until the next idle period (the flush is a saving, never needed for correctness).
const FLUSH_WITHIN: Duration = Duration::from_millis(20);

/// After a release: the allocator caches of the threads that stay are emptied (the calling
/// blocking thread's, every runtime worker's, and, at their next poll, the model poller's),
/// so the free objects the burst of sessions left in them no longer keep their slabs'
/// pages (see [`crate::allocator::flush_thread_cache`]). Blocking: the listener's release
/// runs it once [`release_stores`] is done.
pub fn flush_thread_caches(runtime: &tokio::runtime::Handle) {
    crate::allocator::flush_thread_cache();
    let workers = crate::allocator::flush_worker_caches(runtime, FLUSH_WITHIN);
    crate::allocator::request_thread_flushes();
    tracing::debug!(workers, "allocator caches of the runtime workers emptied");
}

/// The release the listener runs when no session has run for a while: each store gives
/// its page cache back (a store not used since its last release does nothing), and
/// `repack` (the verdict memo's) runs only when one of them was used: a quiet period
/// after connections that used no store (health checks) reopens and repacks nothing. `true`: done;
/// `false`: a store was in use, try again later. Blocking.
pub fn release_stores(
    cache: Option<&crate::store::header_cache::HeaderCache>,
    history: Option<&dyn crate::store::history::History>,
    repack: impl FnOnce(),
) -> bool {
    let used = cache.is_some_and(|c| c.used()) || history.is_some_and(|h| h.used());
    if !used {
        return true;
    }
    let cache_done = cache.map_or(true, |c| c.release_memory());
    let history_done = history.map_or(true, |h| h.release_memory());
    // A store in use is tried again after another quiet period: repack once, then, not at
    // every try. Counted only when something was given back (not for health checks).
    let done = cache_done && history_done;
    if done {
        repack();
        crate::metrics::idle_released();
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counter(busy: usize) -> (Arc<AtomicUsize>, Arc<dyn Fn() -> bool + Send + Sync>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        // The first `busy` calls find the store in use.
        (calls, Arc::new(move || c.fetch_add(1, Ordering::SeqCst) >= busy))
    }

    /// Waits (bounded, 20 s of the paused clock) until the release ran `n` times: it runs on
    /// the blocking pool, outside the paused clock.
    async fn wait_calls(calls: &AtomicUsize, n: usize) {
        for _ in 0..2000 {
            if calls.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            settle().await;
        }
    }

    /// Lets the releaser task run until it waits again (paused clock: no time passes).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// The count follows the slots, and the permits come back with them.
    #[test]
    fn slots_count_sessions_and_cap_them() {
        let s = Sessions::new(2);
        let a = s.try_start().unwrap();
        let b = s.try_start().unwrap();
        assert!(s.try_start().is_none(), "the cap holds");
        assert_eq!(s.count(), Count { live: 2, started: 2 });
        drop(a);
        assert_eq!(s.count().live, 1);
        let c = s.try_start().expect("a permit came back");
        drop((b, c));
        assert_eq!(s.count(), Count { live: 0, started: 3 });
        assert_eq!(s.permits().available_permits(), 2);
    }

    /// Released once the count stayed at zero for the quiet time, once per idle period,
    /// never while a session runs, and not when sessions come and go within it.
    #[tokio::test(start_paused = true)]
    async fn released_after_a_quiet_period_only() {
        let s = Sessions::new(10);
        let (calls, release) = counter(0);
        let task = tokio::spawn(release_when_idle(s.watch(), RELEASE_AFTER, release));
        settle().await;
        tokio::time::sleep(RELEASE_AFTER * 3).await;
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no session ran: nothing to give back");

        let one = s.try_start().unwrap();
        tokio::time::sleep(RELEASE_AFTER * 3).await;
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "never while a session runs");
        drop(one);
        settle().await;
        // Flapping: a session comes and goes every second; the quiet time never passes.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop(s.try_start().unwrap());
            settle().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "sessions coming and going within the quiet time");
        tokio::time::sleep(RELEASE_AFTER + Duration::from_millis(10)).await;
        settle().await;
        wait_calls(&calls, 1).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "released once the count stayed at zero");
        tokio::time::sleep(RELEASE_AFTER * 5).await;
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "once per idle period");
        drop(s);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("ends with the count").unwrap();
    }

    /// A store in use is tried again after another quiet period.
    #[tokio::test(start_paused = true)]
    async fn a_busy_store_is_tried_again() {
        let s = Sessions::new(10);
        let (calls, release) = counter(2);
        let task = tokio::spawn(release_when_idle(s.watch(), RELEASE_AFTER, release));
        settle().await;
        drop(s.try_start().unwrap());
        wait_calls(&calls, 3).await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "two busy answers, then released");
        tokio::time::sleep(RELEASE_AFTER * 5).await;
        settle().await;
        assert_eq!(calls.load(Ordering::SeqCst), 3, "and then left alone");
        drop(s);
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("ends with the count").unwrap();
    }

    /// Stores not used since their last release give nothing back and the memo is not
    /// repacked; once one was used, both are released and the memo repacked, and then
    /// they are unused again.
    #[test]
    fn stores_unused_since_the_last_release_cost_nothing() {
        use crate::store::header_cache::{HeaderCache, Scope};
        use crate::store::history::{History, HistorySettings, RedbHistory};
        let dir = tempfile::tempdir().unwrap();
        let cache = HeaderCache::open(dir.path(), 1 << 20).unwrap();
        let history = RedbHistory::open(dir.path(), HistorySettings::default()).unwrap();
        let repacks = AtomicUsize::new(0);
        let release = || {
            release_stores(Some(&cache), Some(&history), || {
                repacks.fetch_add(1, Ordering::SeqCst);
            })
        };
        assert!(release(), "nothing used: done");
        assert_eq!(repacks.load(Ordering::SeqCst), 0, "and no repack");
        history.shown("m").unwrap();
        assert!(release());
        assert_eq!(repacks.load(Ordering::SeqCst), 1, "the history was used: released, memo repacked");
        assert!(!cache.used() && !history.used());
        cache.lookup_blocking(&Scope::new("h:110", "u"), &[], 1024);
        assert!(release());
        assert_eq!(repacks.load(Ordering::SeqCst), 2, "the cache was used");
        assert!(release());
        assert_eq!(repacks.load(Ordering::SeqCst), 2, "unused again since");
        assert!(release_stores(None, None, || panic!("no store: nothing to repack for")));
    }
}
