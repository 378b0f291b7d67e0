//! The allocator's thread caches are emptied when popsift goes idle (issue 16: memory back
//! after the sessions end): `popsift::allocator::flush_thread_cache` empties the calling
//! thread's jemalloc cache, `flush_worker_caches` every runtime worker's.
//!
//! This test binary runs on jemalloc, like the `popsift` binary (the library's unit tests
//! run on the system allocator, where jemalloc's caches stay empty), and its tests run one
//! at a time (one lock): `tcache_bytes` is the sum over every thread of the process.
use std::sync::Mutex;
use std::time::Duration;

use popsift::allocator::{flush_thread_cache, flush_worker_caches, thread_cache_bytes};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Objects of a few small size classes, allocated and freed on this thread: the thread's
/// cache keeps some of each (up to 16 per class in popsift's configuration, fewer when the
/// cache was just made). At least 1 KiB is left cached by any cache that keeps anything.
fn churn() {
    for size in [640usize, 1280, 1792] {
        let objects: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; size]).collect();
        drop(std::hint::black_box(objects));
    }
}

fn cached() -> u64 {
    thread_cache_bytes().expect("jemalloc keeps statistics")
}

#[test]
fn a_flush_empties_the_calling_threads_cache() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::spawn(|| {
        churn();
        let filled = cached();
        churn();
        let refilled = cached();
        assert!(flush_thread_cache(), "the cache was flushed");
        let flushed = cached();
        // Whatever the other (idle) threads hold is in all three figures.
        assert!(filled >= 1024 && refilled >= 1024, "the churn left objects cached: {filled} / {refilled}");
        assert!(flushed + 1024 <= refilled, "the flush emptied the cache: {refilled} → {flushed} bytes");
        // The thread keeps a working cache: freed objects are cached again.
        churn();
        assert!(cached() >= flushed + 1024, "the new cache works");
        assert!(flush_thread_cache());
    })
    .join()
    .unwrap();
}

#[test]
fn every_worker_of_the_runtime_flushes_its_own_cache() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The workers churn (tokio decides which runs which task).
    let tasks: Vec<_> = (0..4).map(|_| runtime.spawn(async { churn() })).collect();
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let filled = cached();
    let flushed_workers = flush_worker_caches(runtime.handle(), Duration::from_secs(10));
    let flushed = cached();
    assert_eq!(flushed_workers, 2, "each worker flushed its own cache");
    assert!(flushed + 2048 <= filled, "the workers' caches were emptied: {filled} → {flushed} bytes");
    // Again, with the caches empty: still every worker, and the runtime serves on.
    assert_eq!(flush_worker_caches(runtime.handle(), Duration::from_secs(10)), 2);
    assert_eq!(runtime.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
}
