//! The memory allocator's own account of the process (issue 16): what the heap holds live,
//! what the allocator keeps around it, and what of that is resident.
//!
//! The `popsift` binary runs on jemalloc (`src/main.rs`); jemalloc keeps these counters
//! when built with statistics (the `stats` feature of `tikv-jemalloc-ctl`). They tell apart
//! what a PSS figure lumps together: live objects (`allocated`), pages holding them with
//! their size-class slack (`active`), the allocator's own bookkeeping (`metadata`), pages
//! still resident (`resident`: active + dirty pages not yet returned + metadata), and address
//! space mapped or kept for reuse (`mapped`, `retained`: not memory, not in PSS). Thread
//! stacks and the kernel's socket buffers are outside the allocator altogether.
//!
//! Exported as `popsift_allocator_bytes{kind}` (refreshed at each scrape), and in full
//! (jemalloc's `malloc_stats_print` JSON, per size class: `curregs` is the number of live
//! objects of that size) at `GET /debug/allocator` on the metrics port, which is how the
//! idle-sessions benchmark attributes the bytes of an idle session to object sizes.
//!
//! `malloc_stats_print` walks every size class under the allocator's locks: the metrics port
//! (unauthenticated) serves it through [`StatsCache`], printed on the blocking pool and at
//! most once per [`STATS_MAX_AGE`], so a client looping on it cannot stall a runtime worker.
//!
//! It also empties threads' allocator caches when popsift goes idle ([`flush_thread_cache`],
//! [`flush_worker_caches`], [`request_thread_flushes`]): an idle thread never gives its
//! cache back by itself, and the cached objects keep their slabs' pages resident.
//!
//! In a process whose global allocator is not jemalloc (unit tests) the figures describe
//! jemalloc's own, nearly empty heap; nothing here fails for that.

/// One reading of the allocator's counters, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Live objects, as requested (rounded to their size class).
    pub allocated: u64,
    /// Pages in use by live objects (≥ `allocated`: partly filled slabs).
    pub active: u64,
    /// The allocator's own bookkeeping.
    pub metadata: u64,
    /// Resident pages the allocator holds (active, dirty not yet returned, metadata).
    pub resident: u64,
    /// Address space of the active extents.
    pub mapped: u64,
    /// Address space kept for reuse after its pages were returned (not resident).
    pub retained: u64,
}

impl Figures {
    /// Every figure with its `kind` label, in a fixed order.
    pub fn labelled(&self) -> [(&'static str, u64); 6] {
        [
            ("allocated", self.allocated),
            ("active", self.active),
            ("metadata", self.metadata),
            ("resident", self.resident),
            ("mapped", self.mapped),
            ("retained", self.retained),
        ]
    }
}

/// The counters now (jemalloc caches them: the epoch is advanced first), or `None` when the
/// allocator keeps no statistics.
pub fn figures() -> Option<Figures> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|v| v as u64);
    Some(Figures {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        metadata: read(stats::metadata::read())?,
        resident: read(stats::resident::read())?,
        mapped: read(stats::mapped::read())?,
        retained: read(stats::retained::read())?,
    })
}

/// jemalloc's full statistics as JSON (`malloc_stats_print` with `J`), per-arena tables
/// left out (the merged ones are kept). `None` if they could not be written.
pub fn stats_json() -> Option<String> {
    use tikv_jemalloc_ctl::{epoch, stats_print};
    epoch::advance().ok()?;
    let mut options = stats_print::Options::default();
    options.json_format = true;
    options.skip_per_arena = true;
    options.skip_mutex_statistics = true;
    let mut out = Vec::new();
    stats_print::stats_print(&mut out, options).ok()?;
    String::from_utf8(out).ok()
}

/// How long a printed copy of [`stats_json`] is served before it is printed again.
pub const STATS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// A copy of the allocator's statistics, printed at most once per `max_age` and never on a
/// runtime worker (see the module doc). Concurrent requests for a stale copy wait for one
/// print (on an async lock), not a print each.
pub struct StatsCache {
    print: fn() -> Option<String>,
    max_age: std::time::Duration,
    last: tokio::sync::Mutex<Option<(std::time::Instant, Option<std::sync::Arc<str>>)>>,
    prints: std::sync::atomic::AtomicU64,
}

impl StatsCache {
    /// A cache of `print`'s output (in the process: [`stats_json`]), kept for `max_age`.
    pub const fn new(print: fn() -> Option<String>, max_age: std::time::Duration) -> StatsCache {
        StatsCache {
            print,
            max_age,
            last: tokio::sync::Mutex::const_new(None),
            prints: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The statistics, printed now (on the blocking pool) if the kept copy is older than
    /// `max_age`; `None` when they could not be printed.
    pub async fn get(&self) -> Option<std::sync::Arc<str>> {
        let mut last = self.last.lock().await;
        if let Some((at, copy)) = &*last {
            if at.elapsed() < self.max_age {
                return copy.clone();
            }
        }
        self.prints.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let print = self.print;
        let copy = tokio::task::spawn_blocking(print).await.ok().flatten().map(std::sync::Arc::from);
        *last = Some((std::time::Instant::now(), copy.clone()));
        copy
    }

    /// How many times the statistics were printed.
    pub fn prints(&self) -> u64 {
        self.prints.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The process's cache of [`stats_json`] (served at `GET /debug/allocator`).
pub static STATS: StatsCache = StatsCache::new(stats_json, STATS_MAX_AGE);

/// Empties the calling thread's allocator cache (jemalloc's tcache): the free objects it
/// holds go back to their slabs, so a slab whose other objects are free too can be returned.
/// `true` if a cache was flushed; `false` when thread caches are off (`tcache:false`) or the
/// allocator cannot be asked.
///
/// Why (issue 16): every thread keeps up to 16 free objects per small size class (4 per large
/// one, `.cargo/config.toml`) for its next allocations. A thread that stays alive but idle
/// (the runtime workers, the history writer, the model poller) keeps what the last burst of
/// logins left in its cache for good (jemalloc's own cache GC runs only as the thread
/// allocates), and each cached object keeps its whole slab's pages resident.
///
/// jemalloc's `thread.tcache.flush` is a mallctl with neither a value to read nor one to write,
/// which the safe API of `tikv_jemalloc_ctl` cannot call (the crate forbids `unsafe`).
/// Turning `thread.tcache.enabled` off destroys the thread's cache after flushing every bin
/// back to the arena (`tcache_cleanup` → `tcache_destroy` → `tcache_flush_cache` in
/// jemalloc 5.3's `src/tcache.c`); turning it on again gives the thread a new, empty cache.
/// Acts on the calling thread only: each thread that stays must call it itself.
pub fn flush_thread_cache() -> bool {
    use tikv_jemalloc_ctl::{Access, AsName, Mib};
    static ENABLED: std::sync::OnceLock<Option<Mib<[usize; 3]>>> = std::sync::OnceLock::new();
    let Some(mib) = ENABLED.get_or_init(|| b"thread.tcache.enabled\0".name().mib().ok()) else {
        return false;
    };
    let on: bool = match mib.read() {
        Ok(on) => on,
        Err(_) => return false,
    };
    if !on || mib.write(false).is_err() {
        return false;
    }
    // Off and not on again would leave this thread without a cache for good (slower
    // allocations, nothing lost): try twice, and say so if it stays off.
    let flushed = mib.write(true).is_ok() || mib.write(true).is_ok();
    if flushed {
        FLUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    } else {
        tracing::warn!("allocator: this thread's cache could not be turned on again after its flush");
    }
    flushed
}

static FLUSHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many thread caches [`flush_thread_cache`] has emptied since the process began.
pub fn thread_cache_flushes() -> u64 {
    FLUSHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Bumped by [`request_thread_flushes`]: threads that wake on their own (the model poller)
/// flush their cache when it moved ([`flush_if_requested`]).
static FLUSH_REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Asks every thread that checks [`flush_if_requested`] to flush its cache once.
pub fn request_thread_flushes() {
    FLUSH_REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Flushes the calling thread's cache if a flush was requested since `seen` (the thread's own
/// record, updated); one relaxed load otherwise. `true` if it flushed.
pub fn flush_if_requested(seen: &mut u64) -> bool {
    take_request(FLUSH_REQUESTS.load(std::sync::atomic::Ordering::Relaxed), seen) && flush_thread_cache()
}

/// Whether the request count `now` moved since `seen` (then recorded).
fn take_request(now: u64, seen: &mut u64) -> bool {
    let moved = now != *seen;
    *seen = now;
    moved
}

/// The bytes held in every thread's allocator cache (jemalloc's `tcache_bytes`, merged over
/// the arenas), or `None` when the allocator keeps no statistics.
pub fn thread_cache_bytes() -> Option<u64> {
    use tikv_jemalloc_ctl::{epoch, Access, AsName};
    epoch::advance().ok()?;
    // MALLCTL_ARENAS_ALL (4096): the arenas merged.
    let bytes: usize = b"stats.arenas.4096.tcache_bytes\0".name().read().ok()?;
    Some(bytes as u64)
}

/// Empties the allocator cache of every worker of the runtime `handle` (see
/// [`flush_thread_cache`]), waiting at most `within`; returns how many distinct workers
/// flushed theirs. Blocking: call it on the blocking pool or a plain thread, never on a
/// worker.
///
/// A worker can only flush its own cache, so one small task per worker is spawned, each
/// flushing the cache of the worker that runs it and then holding that worker (at most until
/// `within`) until every task has run: a worker holding one of them cannot take another, so
/// the rest are run by the other workers, which tokio wakes for the queued tasks. Without the
/// hold one worker, woken again and again, could run them all. Used when popsift goes idle
/// ([`crate::net::idle_release`]): the workers are idle then, and the hold lasts as long as
/// the other workers take to wake (microseconds).
pub fn flush_worker_caches(handle: &tokio::runtime::Handle, within: std::time::Duration) -> usize {
    let workers = handle.metrics().num_workers();
    let meet = std::sync::Arc::new(Meet {
        workers,
        deadline: std::time::Instant::now() + within,
        state: std::sync::Mutex::new((Vec::with_capacity(workers), 0)),
        arrived: std::sync::Condvar::new(),
    });
    for _ in 0..workers {
        let meet = meet.clone();
        handle.spawn(async move {
            meet.arrive(flush_thread_cache());
            meet.wait();
        });
    }
    meet.wait()
}

/// Where [`flush_worker_caches`]' tasks meet: the threads that flushed, and how many tasks ran.
struct Meet {
    workers: usize,
    deadline: std::time::Instant,
    state: std::sync::Mutex<(Vec<std::thread::ThreadId>, usize)>,
    arrived: std::sync::Condvar,
}

impl Meet {
    fn arrive(&self, flushed: bool) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let me = std::thread::current().id();
        if flushed && !state.0.contains(&me) {
            state.0.push(me);
        }
        state.1 += 1;
        self.arrived.notify_all();
    }

    /// Waits until every task ran or the deadline passed; the threads that flushed.
    fn wait(&self) -> usize {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.1 < self.workers {
            let left = self.deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            state = self.arrived.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        state.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COUNTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn counted_print() -> Option<String> {
        let n = COUNTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(format!("print {n}"))
    }
    static COUNTED_ZERO: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    fn counted_print_zero() -> Option<String> {
        let n = COUNTED_ZERO.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(format!("print {n}"))
    }

    #[tokio::test]
    async fn requests_within_the_age_share_one_print() {
        let cache = StatsCache::new(counted_print, std::time::Duration::from_secs(3600));
        let (a, b) = tokio::join!(cache.get(), cache.get());
        let c = cache.get().await;
        assert_eq!(cache.prints(), 1);
        assert_eq!(COUNTED.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(a.as_deref(), Some("print 0"));
        assert_eq!((b, c), (a.clone(), a));
        // Once the copy is older than the age, the next request prints again.
        let fresh = StatsCache::new(counted_print_zero, std::time::Duration::ZERO);
        assert_eq!(fresh.get().await.as_deref(), Some("print 0"));
        assert_eq!(fresh.get().await.as_deref(), Some("print 1"));
        assert_eq!(fresh.prints(), 2);
    }

    #[tokio::test]
    async fn the_process_cache_serves_jemalloc_json() {
        let s = STATS.get().await.expect("statistics");
        assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok());
        assert!(STATS.prints() >= 1);
    }

    #[test]
    fn figures_are_read_and_consistent() {
        let f = figures().expect("jemalloc is built with statistics");
        // Whatever allocator the test binary uses, jemalloc's counters hang together.
        assert!(f.active >= f.allocated, "{f:?}");
        assert!(f.resident >= f.metadata, "{f:?}");
        assert_eq!(f.labelled().len(), 6);
    }

    /// The jemalloc linked in carries the build-time configuration of `.cargo/config.toml`
    /// that README's idle-session figures were measured with (a build outside this
    /// repository, e.g. without its cargo configuration, would silently lose it): one arena,
    /// dirty pages returned after 250 ms.
    #[test]
    fn jemalloc_carries_the_build_time_configuration() {
        let conf = tikv_jemalloc_ctl::config::malloc_conf::read().expect("config.malloc_conf");
        let options: Vec<&str> = conf.trim_end_matches('\0').split(',').collect();
        for want in [
            "narenas:1",
            "dirty_decay_ms:250",
            "muzzy_decay_ms:0",
            "background_thread:true",
            "tcache_nslots_small_max:16",
            "tcache_nslots_large:4",
        ] {
            assert!(options.contains(&want), "{want} missing from the built-in malloc_conf {conf:?}");
        }
    }

    /// A requested flush is done once by each thread that checks, and not again until the
    /// next request. (Whether the cache empties is `tests/thread_cache_flush.rs`, on jemalloc.)
    #[test]
    fn a_requested_flush_happens_once_per_request() {
        let mut seen = 0;
        assert!(!take_request(0, &mut seen), "nothing requested");
        assert!(take_request(1, &mut seen), "requested");
        assert!(!take_request(1, &mut seen), "once");
        assert!(take_request(3, &mut seen), "two more requests: one flush");
        assert!(!take_request(3, &mut seen));
        let before = FLUSH_REQUESTS.load(std::sync::atomic::Ordering::Relaxed);
        request_thread_flushes();
        assert!(FLUSH_REQUESTS.load(std::sync::atomic::Ordering::Relaxed) > before);
        let flushes = thread_cache_flushes();
        let mut seen = before;
        assert!(flush_if_requested(&mut seen), "this thread flushed");
        assert!(thread_cache_flushes() > flushes);
    }

    #[test]
    fn stats_json_has_the_size_classes() {
        let s = stats_json().expect("statistics");
        let v: serde_json::Value = serde_json::from_str(&s).expect("JSON");
        let bins = &v["jemalloc"]["arenas"]["bin"];
        assert!(bins.as_array().is_some_and(|b| !b.is_empty()), "size classes listed");
    }
}
