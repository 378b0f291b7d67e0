//! The header cache: the header block of every message popsift has scanned, keyed by
//! (upstream `host:port`, user name, UIDL), so that a later login sends `TOP n 0` only for
//! messages it has not seen yet (issue 6).
//!
//! # What is stored, and why
//! The unstuffed header block from `TOP n 0` (RFC 1939 §7) plus the message size from LIST.
//! Not the verdict: rules change between logins, headers do not, so cached headers are
//! evaluated with the rules of the moment exactly as fresh ones. UIDLs are only unique per
//! mailbox "over time" (RFC 1939 §7, UIDL) and some servers reuse them after a mailbox is
//! rebuilt, so a lookup also compares the LIST size: a size mismatch is a miss and the entry
//! is replaced. The key carries the upstream and the user, length-prefixed, so entries of
//! one mailbox can never be read for another, even with user names that are prefixes of each
//! other. Callers only use the cache when the user name of the login is known for sure
//! (USER/PASS, APOP, the identity inside SASL PLAIN/LOGIN/CRAM-MD5) and the server's UIDL
//! listing is unique and well-formed; a cached header block that leads to a condemning
//! verdict is re-read from the server before any DELE (see [`crate::session::verdicts`]).
//!
//! # Stores
//! [`HeaderStore`] is the interface; [`HeaderCache`] wraps whichever store the configuration
//! names (`store.backend`), runs it on tokio's blocking pool and orders each mailbox's
//! update before its next lookup. The shared store for several instances is Redis
//! ([`super::redis_cache`]); the embedded default is described here.
//!
//! # Store: redb
//! [redb](https://docs.rs/redb) is an embedded key-value store in pure Rust: nothing for the
//! user to install or run, no C toolchain for the build (SQLite via rusqlite would bundle
//! and compile C), ACID transactions with copy-on-write pages, so a crash leaves either the
//! old or the new state, and a checksummed file format, so a damaged file is detected
//! rather than read as garbage. The data is a plain ordered map, which is all a cache keyed
//! by UIDL needs; SQL would add nothing. (redb 2.x is used because it still supports the
//! crate's `rust-version`.)
//!
//! The file is `<state_dir>/header-cache.redb`. Tables:
//! - `entries`: key → `[version u8][size u64 LE][flags u8][header bytes]`;
//! - `index`: key → insertion sequence number (keys only, so finding a scope's gone UIDLs
//!   does not read the header blocks);
//! - `age`: insertion sequence number (u64, big-endian so byte order is numeric order) → key;
//! - `meta`: `seq` (next sequence number) and `bytes` (sum of key + value lengths).
//!
//! # Bounds and eviction
//! After each scan, one write transaction stores the new header blocks (only the last ones
//! that fit in `cache.max_size` together: the rest would be evicted at once), removes every
//! entry of that (upstream, user) whose UIDL is no longer on the server, and then, while
//! the stored bytes exceed `cache.max_size`, removes the oldest entries (insertion order).
//! The bound counts the logical bytes (keys + values). The file itself does not shrink on
//! its own: redb keeps freed pages, and with copy-on-write churn (every login replacing
//! entries) a file was seen at 2.16 GB under `max_size: 256MiB`. So after each update, if
//! the file exceeds [`file_bound`] (twice `max_size` plus 16 MiB for redb's own pages), it
//! is compacted (`Database::compact`, when no lookup holds the database); if it is still
//! over the bound, the file is deleted and started afresh — it is a cache, and a miss only
//! costs a `TOP`. The file therefore stays within `file_bound` plus one update's data.
//!
//! # Failure is never fatal
//! At start the file's checksums are verified (`check_integrity`, one read of the file). A
//! file that cannot be opened because it is corrupt, truncated or not a redb file is
//! logged, deleted and created anew. redb 2 panics on some kinds of damage instead of
//! returning an error, so every call into it is wrapped in `catch_unwind` and a panic is
//! treated like corruption (the default panic hook still prints it to stderr). A failure during a lookup or an update is logged, the
//! scan goes on as if the cache were empty, and the file is rebuilt. If even creating a new
//! file fails (read-only disk, another popsift holding the file), popsift runs without a
//! cache. Every `*_blocking` method blocks: async callers go through [`HeaderCache::lookup`]
//! and [`HeaderCache::update_in_background`], which run them on tokio's blocking pool.
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};
use tracing::{debug, warn};

use crate::pop3::multiline::HeaderBlock;

/// File name under the state directory.
pub const FILE_NAME: &str = "header-cache.redb";

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const INDEX: TableDefinition<&[u8], u64> = TableDefinition::new("index");
const AGE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("age");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Layout version of an entry value; anything else is a miss.
const VALUE_VERSION: u8 = 1;
const VALUE_HEAD: usize = 1 + 8 + 1;
const FLAG_TRUNCATED: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("header cache {path}: {source}")]
    Open { path: PathBuf, source: DatabaseError },
    #[error("header cache {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    #[error("header cache {path}: cannot remove the damaged file: {source}")]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("header cache {path}: cannot create the state directory: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
}

/// Whose messages: the upstream (`host:port`) and the login name on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub upstream: String,
    pub user: String,
}

impl Scope {
    pub fn new(upstream: impl Into<String>, user: impl Into<String>) -> Scope {
        Scope { upstream: upstream.into(), user: user.into() }
    }

    /// `[u16 BE len][upstream][u16 BE len][user]`: a prefix of every key of this scope and
    /// of no key of any other scope (the lengths make the encoding prefix-free).
    fn prefix(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(4 + self.upstream.len() + self.user.len());
        for part in [self.upstream.as_bytes(), self.user.as_bytes()] {
            let part = &part[..part.len().min(u16::MAX as usize)];
            p.extend_from_slice(&(part.len() as u16).to_be_bytes());
            p.extend_from_slice(part);
        }
        p
    }

    fn key(&self, uidl: &str) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(uidl.as_bytes());
        k
    }
}

/// One message to look up: its UIDL and LIST size.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub uidl: Arc<str>,
    pub size: u64,
}

/// A header block to store.
#[derive(Debug, Clone)]
pub struct Fresh {
    pub uidl: Arc<str>,
    pub size: u64,
    pub headers: HeaderBlock,
}

/// Where header blocks are kept: the embedded [`RedbHeaderCache`] (default) or the shared
/// [`super::redis_cache::RedisHeaderCache`]. Implementations block; [`HeaderCache`] runs
/// them on tokio's blocking pool and orders a scope's update before its next lookup.
/// Failures are never returned: they are logged and answered as misses (a miss only costs
/// a `TOP`).
pub trait HeaderStore: Send + Sync + std::fmt::Debug {
    /// Looks up every wanted message; `None` for a miss (absent, other size, unreadable,
    /// or truncated at a smaller cap than `header_limit`).
    fn lookup_blocking(&self, scope: &Scope, wanted: &[Wanted], header_limit: usize) -> Vec<Option<HeaderBlock>>;
    /// Stores `fresh` and removes the scope's entries whose UIDL is not in `present`.
    fn update_blocking(&self, scope: &Scope, fresh: &[Fresh], present: &HashSet<Arc<str>>);
    /// Number of entries and stored bytes (for tests and logs), when known.
    fn stats_blocking(&self) -> Option<(u64, u64)>;
    /// Where it lives, for the log (a path or a Redis URL without credentials).
    fn location(&self) -> String;
    /// Whether each call is a network round trip (Redis): the scan then looks a mailbox up
    /// in one call right after UIDL and writes its fresh blocks in one call at the end,
    /// instead of one call per `scan.window_bytes` chunk (a local store, where a chunk
    /// costs no round trip and keeps the scan's memory at a few windows).
    fn one_call_per_login(&self) -> bool {
        false
    }
    /// The most block bytes (as [`write_cost`] counts them) one update stores: the rest is
    /// skipped by the store, so a login's [`PendingWrite`] need not hold it.
    fn max_write_bytes(&self) -> u64 {
        u64::MAX
    }
    /// Gives back the memory the store keeps between logins (redb's page cache), called
    /// when no session has run for a while (see `net::idle_release`). `false`: in use now
    /// (a lookup or an update in flight), try again later. Nothing stored is lost.
    fn release_memory(&self) -> bool {
        true
    }
    /// Whether the store was used (a lookup or an update) since it was opened or last gave
    /// its memory back: an unused store has nothing to give back (see `net::idle_release`).
    fn used(&self) -> bool {
        false
    }
}

/// What a block costs in one update's bound (UIDL, block and a little framing).
pub fn write_cost(f: &Fresh) -> u64 {
    (f.uidl.len() + f.headers.bytes.len() + 10) as u64
}

/// The fresh blocks of a login kept for its one write ([`HeaderStore::one_call_per_login`]).
/// The store keeps only the last `max_write_bytes` of an update, so blocks are dropped from
/// the front as soon as the total exceeds it: the scan's memory is bounded by the cache's
/// size, not by mailbox size × header size. A dropped block's UIDL is taken out of the
/// `present` set written with the update, so the store evicts any older block under it
/// (as it does for the UIDLs it skips itself: an older block must not outlive it).
#[derive(Debug)]
pub struct PendingWrite {
    blocks: std::collections::VecDeque<Fresh>,
    bytes: u64,
    max: u64,
    skipped: Vec<Arc<str>>,
}

impl PendingWrite {
    pub fn new(max: u64) -> PendingWrite {
        PendingWrite { blocks: Default::default(), bytes: 0, max, skipped: Vec::new() }
    }

    /// Appends `fresh` (server order: the last blocks win), dropping the oldest over the bound.
    pub fn append(&mut self, fresh: Vec<Fresh>) {
        for f in fresh {
            self.bytes += write_cost(&f);
            self.blocks.push_back(f);
            while self.bytes > self.max {
                let Some(old) = self.blocks.pop_front() else { break };
                self.bytes -= write_cost(&old);
                self.skipped.push(old.uidl);
            }
        }
    }

    /// Bytes of the blocks held (never above the bound).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The update: the blocks kept, and `present` without the skipped UIDLs.
    pub fn finish(self, mut present: HashSet<Arc<str>>) -> (Vec<Fresh>, HashSet<Arc<str>>) {
        for u in &self.skipped {
            present.remove(u);
        }
        (self.blocks.into(), present)
    }
}

/// The shared cache (one per process, `Arc`-shared by all sessions), whichever store holds it.
pub struct HeaderCache {
    store: Box<dyn HeaderStore>,
    /// One lock per (upstream, user): held while an update is written, taken by lookups.
    scopes: Mutex<HashMap<Scope, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for HeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCache").field("store", &self.store).finish()
    }
}

impl HeaderCache {
    /// The embedded cache in `state_dir` (see [`RedbHeaderCache::open`]).
    pub fn open(state_dir: &Path, max_size: u64) -> Result<HeaderCache, CacheError> {
        Ok(HeaderCache::with_store(Box::new(RedbHeaderCache::open(state_dir, max_size)?)))
    }

    /// The cache the configuration names: `store.backend: redis` → Redis, else redb.
    pub fn open_configured(config: &crate::config::Config) -> Result<HeaderCache, CacheError> {
        match &config.store.redis {
            Some(r) => {
                let redis = super::redis::shared(r)
                    .map_err(|e| CacheError::Store { path: PathBuf::from("redis"), detail: e.to_string() })?;
                Ok(HeaderCache::with_store(Box::new(super::redis_cache::RedisHeaderCache::new(
                    redis,
                    config.cache.max_size,
                ))))
            }
            None => Ok(HeaderCache::with_store(Box::new(RedbHeaderCache::open_with_memory(
                &config.state_dir,
                config.cache.max_size,
                config.cache.memory,
            )?))),
        }
    }

    pub fn with_store(store: Box<dyn HeaderStore>) -> HeaderCache {
        HeaderCache { store, scopes: Mutex::new(HashMap::new()) }
    }

    /// Where the cache lives (for the log).
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// See [`HeaderStore::lookup_blocking`]. Blocking.
    pub fn lookup_blocking(&self, scope: &Scope, wanted: &[Wanted], header_limit: usize) -> Vec<Option<HeaderBlock>> {
        self.store.lookup_blocking(scope, wanted, header_limit)
    }

    /// See [`HeaderStore::update_blocking`]. Blocking.
    pub fn update_blocking(&self, scope: &Scope, fresh: &[Fresh], present: &HashSet<Arc<str>>) {
        self.store.update_blocking(scope, fresh, present)
    }

    /// See [`HeaderStore::one_call_per_login`].
    pub fn one_call_per_login(&self) -> bool {
        self.store.one_call_per_login()
    }

    /// See [`HeaderStore::max_write_bytes`].
    pub fn max_write_bytes(&self) -> u64 {
        self.store.max_write_bytes()
    }

    /// See [`HeaderStore::release_memory`]. Blocking.
    pub fn release_memory(&self) -> bool {
        self.store.release_memory()
    }

    /// See [`HeaderStore::used`].
    pub fn used(&self) -> bool {
        self.store.used()
    }

    /// See [`HeaderStore::stats_blocking`]. Blocking.
    pub fn stats_blocking(&self) -> Option<(u64, u64)> {
        self.store.stats_blocking()
    }

    /// The lock that orders a scope's updates before its next lookup. The map is bounded
    /// (issue 12): when it reaches [`SCOPE_LOCKS_SWEEP`] entries, the locks no lookup or
    /// update holds (the map's own reference is the only one) are dropped; a later login of
    /// that mailbox simply makes a new one.
    fn scope_lock(&self, scope: &Scope) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.scopes.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= SCOPE_LOCKS_SWEEP && !map.contains_key(scope) {
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        map.entry(scope.clone()).or_default().clone()
    }

    /// Gives back `lock` (taken by [`Self::scope_lock`], no longer held): the map forgets
    /// it when nobody else holds it, so no entry outlives the lookups and updates of its
    /// mailbox (issue 16: the map otherwise kept up to [`SCOPE_LOCKS_SWEEP`] unused locks,
    /// with their names, after the sessions ended). A later login of that mailbox makes a
    /// new one: nothing is waiting on this one, and no update holds it. The table itself
    /// is shrunk when a burst of logins is over.
    fn forget_scope_lock(&self, scope: &Scope, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut map = match self.scopes.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Under the map's lock nobody can take a new reference from the map: two
        // references (the map's and `lock`) means nobody else holds or waits on it.
        if Arc::strong_count(&lock) == 2 && map.get(scope).is_some_and(|kept| Arc::ptr_eq(kept, &lock)) {
            map.remove(scope);
            if map.is_empty() && map.capacity() > SCOPE_LOCKS_KEPT_ROOM {
                map.shrink_to_fit();
            }
        }
    }

    /// Scope locks currently kept (for tests).
    pub fn scope_locks(&self) -> usize {
        self.scopes.lock().map_or(0, |m| m.len())
    }

    /// [`Self::lookup_blocking`] on the blocking pool, after any update of the same scope
    /// still being written (so a quick second login sees the first one's headers).
    pub async fn lookup(
        self: &Arc<Self>,
        scope: Scope,
        wanted: Vec<Wanted>,
        header_limit: usize,
    ) -> Vec<Option<HeaderBlock>> {
        let lock = self.scope_lock(&scope);
        let pending_update = lock.lock().await;
        // One read transaction: splitting it over threads was measured slower (redb's page
        // cache is shared between readers).
        let me = self.clone();
        let n = wanted.len();
        let key = scope.clone();
        let found = tokio::task::spawn_blocking(move || me.lookup_blocking(&scope, &wanted, header_limit))
            .await
            .unwrap_or_else(|e| {
                warn!(error = %e, "header cache lookup task failed");
                vec![None; n]
            });
        drop(pending_update);
        self.forget_scope_lock(&key, lock);
        found
    }

    /// Starts [`Self::update_blocking`] on the blocking pool and returns without waiting for
    /// it: the client's `+OK` does not wait for the cache write (and its fsync). The scope
    /// stays locked until the write is done, so the next lookup of this mailbox waits for it.
    pub async fn update_in_background(self: &Arc<Self>, scope: Scope, fresh: Vec<Fresh>, present: HashSet<Arc<str>>) {
        let lock = self.scope_lock(&scope);
        let guard = lock.clone().lock_owned().await;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.update_blocking(&scope, &fresh, &present);
            drop(guard);
            me.forget_scope_lock(&scope, lock);
        });
    }
}

/// The embedded header cache: one redb file under the state directory (see the module doc).
pub struct RedbHeaderCache {
    path: PathBuf,
    max_size: u64,
    /// redb's page cache in bytes (see [`redb_cache_bytes`]).
    cache_bytes: usize,
    /// `None` after a failure that could not be repaired: popsift then runs without cache;
    /// or, with `reopen` set, after [`HeaderStore::release_memory`] could not reopen it.
    db: Mutex<Option<Arc<Database>>>,
    /// The file was closed to give its page cache back and not reopened: the earliest time
    /// a use tries again (taken after `db`'s lock).
    reopen: Mutex<Option<Instant>>,
    /// Set by every lookup and update, cleared when the file is reopened.
    used: AtomicBool,
}

/// After a failed reopen, the least time before the next try: a failing disk is not tried
/// (and logged) at every login, each under the lock every lookup takes.
const REOPEN_RETRY: Duration = Duration::from_secs(30);

impl std::fmt::Debug for RedbHeaderCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbHeaderCache").field("path", &self.path).field("max_size", &self.max_size).finish()
    }
}

impl HeaderStore for RedbHeaderCache {
    fn lookup_blocking(&self, scope: &Scope, wanted: &[Wanted], header_limit: usize) -> Vec<Option<HeaderBlock>> {
        RedbHeaderCache::lookup_blocking(self, scope, wanted, header_limit)
    }
    fn update_blocking(&self, scope: &Scope, fresh: &[Fresh], present: &HashSet<Arc<str>>) {
        RedbHeaderCache::update_blocking(self, scope, fresh, present)
    }
    fn stats_blocking(&self) -> Option<(u64, u64)> {
        RedbHeaderCache::stats_blocking(self)
    }
    fn location(&self) -> String {
        self.path.display().to_string()
    }
    fn release_memory(&self) -> bool {
        RedbHeaderCache::release_memory(self)
    }
    fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }
}

impl RedbHeaderCache {
    /// Opens (or creates) the cache in `state_dir`. A damaged file is deleted and created
    /// anew; an error is returned only when no working cache could be had at all, and the
    /// caller then runs without one.
    pub fn open(state_dir: &Path, max_size: u64) -> Result<RedbHeaderCache, CacheError> {
        RedbHeaderCache::open_with_memory(state_dir, max_size, None)
    }

    /// [`open`](Self::open) with redb's page cache bounded by `memory` (`cache.memory`).
    pub fn open_with_memory(
        state_dir: &Path,
        max_size: u64,
        memory: Option<u64>,
    ) -> Result<RedbHeaderCache, CacheError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| CacheError::Dir { path: state_dir.to_path_buf(), source })?;
        let path = state_dir.join(FILE_NAME);
        let cache_bytes = redb_cache_bytes(max_size, memory);
        let db = open_or_rebuild(&path, cache_bytes, Repair::Run)?;
        Ok(RedbHeaderCache {
            path,
            max_size,
            cache_bytes,
            db: Mutex::new(Some(Arc::new(db))),
            reopen: Mutex::new(None),
            used: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Option<Arc<Database>> {
        let mut slot = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        // Under the lock a release resets it in: no use is missed.
        self.used.store(true, Ordering::Relaxed);
        if slot.is_none() {
            let mut reopen = self.reopen.lock().unwrap_or_else(PoisonError::into_inner);
            if reopen.is_some_and(|at| Instant::now() >= at) {
                match self.reopen_db() {
                    Ok(db) => {
                        *reopen = None;
                        tracing::info!(path = %self.path.display(), "header cache reopened");
                        *slot = Some(Arc::new(db));
                    }
                    // Warned once, when the streak began (`release_memory`).
                    Err(e) => {
                        debug!(path = %self.path.display(), error = %e, "header cache still not reopened; scanning without it");
                        *reopen = Some(Instant::now() + REOPEN_RETRY);
                    }
                }
            }
        }
        slot.clone()
    }

    /// Opens the file again after [`Self::release_memory`] closed it. The file was closed
    /// cleanly, so this is a plain open: no check, no repair (a few milliseconds). redb
    /// ignores a failure of the final commit it makes when a handle is closed (a full
    /// disk, say): the file then needs a repair, which reads the whole file three times;
    /// it is not run here (this holds the lock every lookup takes): the file is taken as
    /// damaged, deleted and created anew ([`open_or_rebuild`]; a cache can always be
    /// rebuilt), which costs the reads redb makes before it would start repairing, not the
    /// repair. The same for any other error but one: another process holding the file
    /// keeps it (an error, tried again later).
    fn reopen_db(&self) -> Result<Database, String> {
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            create_db(&self.path, self.cache_bytes, Repair::Refuse)
        }));
        let why = match opened {
            Ok(Ok(db)) => return Ok(db),
            Ok(Err(e @ DatabaseError::DatabaseAlreadyOpen)) => return Err(e.to_string()),
            Ok(Err(e)) => e.to_string(),
            Err(p) => format!("redb panicked: {}", crate::panics::message(&*p)),
        };
        warn!(path = %self.path.display(), error = %why, "header cache not reopened as it was; rebuilding it");
        open_or_rebuild(&self.path, self.cache_bytes, Repair::Refuse).map_err(|e| e.to_string())
    }

    /// Closes the file and opens it again, so the new handle starts with an empty page
    /// cache: redb keeps the pages that a burst of logins read and wrote for good (up to
    /// `cache.memory`), and they, with the allocator pages they pin, were most of what
    /// popsift kept once the sessions had ended (issue 16). Only when nothing holds the
    /// handle: a lookup or an update in flight keeps it (`false`: try again later), so no
    /// write is cut short. The reopen is normally a few milliseconds; a file left needing
    /// repair, or damaged, is rebuilt instead (see `reopen_db`). A failed reopen (disk
    /// gone, the file taken by another process) is logged once and tried again at a lookup
    /// or update at most every 30 s (`REOPEN_RETRY`); until it succeeds the logins scan
    /// without the cache, as after any cache failure. A store not used since it was opened
    /// has nothing cached: left as it is.
    pub fn release_memory(&self) -> bool {
        let mut slot = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        let db = match crate::store::release::take_for_release(&mut slot, &self.used) {
            Ok(db) => db,
            Err(done) => return done,
        };
        let closed = guarded(|| {
            drop(db);
            Ok(())
        });
        if let Err(e) = closed {
            warn!(path = %self.path.display(), error = %e, "header cache not closed cleanly");
        }
        self.used.store(false, Ordering::Relaxed);
        match self.reopen_db() {
            Ok(db) => *slot = Some(Arc::new(db)),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, retry = ?REOPEN_RETRY, "header cache not reopened after giving its memory back; scanning without it until it is");
                *self.reopen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + REOPEN_RETRY);
            }
        }
        true
    }

    /// After a failed operation: delete the file and start over, unless another thread
    /// already did (the database in hand is no longer the current one).
    fn rebuild(&self, failed: &Arc<Database>, why: &str) {
        let mut guard = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        if !guard.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, failed)) {
            return;
        }
        warn!(path = %self.path.display(), error = why, "header cache failed; deleting and rebuilding it");
        *guard = None;
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %self.path.display(), error = %e, "cannot delete the header cache; running without it");
                return;
            }
        }
        match guarded(|| create_db(&self.path, self.cache_bytes, Repair::Refuse).map_err(|e| e.to_string())) {
            Ok(db) => *guard = Some(Arc::new(db)),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot recreate the header cache; running without it")
            }
        }
    }

    /// Looks up every wanted message; `None` for a miss (absent, other size, unreadable,
    /// or truncated at a smaller cap than `header_limit`). Blocking.
    pub fn lookup_blocking(&self, scope: &Scope, wanted: &[Wanted], header_limit: usize) -> Vec<Option<HeaderBlock>> {
        let Some(db) = self.db() else { return vec![None; wanted.len()] };
        match guarded(|| lookup_in(&db, scope, wanted, header_limit)) {
            Ok(found) => found,
            Err(e) => {
                self.rebuild(&db, &e);
                vec![None; wanted.len()]
            }
        }
    }

    /// Stores `fresh`, removes the scope's entries whose UIDL is not in `present`, then
    /// trims the oldest entries over the size bound. One transaction. Blocking.
    pub fn update_blocking(&self, scope: &Scope, fresh: &[Fresh], present: &HashSet<Arc<str>>) {
        let Some(db) = self.db() else { return };
        match guarded(|| update_in(&db, scope, fresh, present, self.max_size)) {
            Ok(u) => {
                debug!(stored = u.stored, gone = u.gone, trimmed = u.trimmed, bytes = u.bytes, "header cache updated");
                drop(db);
                self.bound_file();
            }
            Err(e) => self.rebuild(&db, &e),
        }
    }

    /// Keeps the file within [`file_bound`]: compacts it, or starts it afresh when that
    /// does not suffice (see the module doc). Skipped (until the next update) while a
    /// lookup or another update holds the database.
    fn bound_file(&self) {
        let bound = file_bound(self.max_size);
        let size = || std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size() <= bound {
            return;
        }
        let mut slot = match self.db.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let Some(shared) = slot.take() else { return };
        let mut db = match Arc::try_unwrap(shared) {
            Ok(db) => db,
            Err(shared) => {
                *slot = Some(shared);
                return;
            }
        };
        let before = size();
        let compacted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            match db.compact() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(e) => return Err(e),
            }
        }));
        let compacted = match compacted {
            // A lookup's read transaction is still open: try again after a later update.
            Ok(Err(redb::CompactionError::TransactionInProgress)) => {
                *slot = Some(Arc::new(db));
                return;
            }
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("redb panicked while compacting".to_string()),
        };
        let after = size();
        match compacted {
            Ok(()) if after <= bound => {
                debug!(before, after, "header cache file compacted");
                *slot = Some(Arc::new(db));
            }
            outcome => {
                warn!(before, after, bound, compaction = ?outcome.err(), "header cache file over its bound after compaction; starting it afresh");
                drop(db);
                *slot = std::fs::remove_file(&self.path)
                    .ok()
                    .and_then(|()| open_checked(&self.path, self.cache_bytes, Repair::Refuse).ok())
                    .map(Arc::new);
            }
        }
    }

    /// Number of entries and stored bytes (for tests and logs).
    pub fn stats_blocking(&self) -> Option<(u64, u64)> {
        let db = self.db()?;
        let r = db.begin_read().ok()?;
        let entries = match r.open_table(ENTRIES) {
            Ok(t) => t.len().ok()?,
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(_) => return None,
        };
        let bytes = match r.open_table(META) {
            Ok(t) => t.get("bytes").ok()?.map_or(0, |v| v.value()),
            Err(_) => 0,
        };
        Some((entries, bytes))
    }
}

/// Scope locks kept before the unused ones are swept (see `HeaderCache::scope_lock`).
const SCOPE_LOCKS_SWEEP: usize = 1024;
/// Room the scope-lock map keeps once empty (see `HeaderCache::forget_scope_lock`).
const SCOPE_LOCKS_KEPT_ROOM: usize = 64;

/// Runs redb code, turning a panic into an error. redb 2 detects a damaged file by its
/// checksums, but some damage (a file truncated below its recorded length, a wild page
/// pointer) trips an assertion or an out-of-bounds index inside redb instead of returning
/// an error (seen in this module's tests). A cache must never take the proxy down, so every
/// call into redb goes through here and a panic is handled like corruption: rebuild.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(format!("redb panicked: {}", crate::panics::message(&*p))),
    }
}

/// The most the cache file may occupy before it is compacted: twice the logical bound
/// plus 16 MiB for redb's own pages (tables, allocator state, a small file's minimum).
pub fn file_bound(max_size: u64) -> u64 {
    max_size.saturating_mul(2).saturating_add(16 << 20)
}

/// redb's in-memory page cache by default (`cache.memory` unset): 2 MiB.
///
/// The pages stay cached after the sessions that read or wrote them have ended: with 5,000
/// distinct mailboxes logging in, a cache as large as `cache.max_size` (the default before)
/// kept some 6 KiB per mailbox, most of what popsift held once they were gone (issue 16,
/// tests/benches/idle_sessions.rs: 14.7 KiB per idle session and 3.9× the starting memory
/// after they ended; bounded to 1 MiB, 9.7 KiB and 2.3×). A warm login does not read this
/// cache (its verdicts come from the in-memory memo, `store::verdict_memo`); a login that
/// misses the memo (after a restart, or a mailbox not seen recently) reads its header
/// blocks through the OS page cache instead: measured with 10,000 cached messages (60 MB),
/// ~60 ms with every page in redb's cache, ~150 ms reading them through the OS.
pub const DEFAULT_MEMORY: u64 = 2 << 20;

/// redb's page cache in bytes: `cache.memory` (`memory`), at least 1 MiB and at most
/// 1 GiB; [`DEFAULT_MEMORY`] when unset, and never more than the data it may hold
/// (`cache.max_size`, at least 1 MiB).
fn redb_cache_bytes(max_size: u64, memory: Option<u64>) -> usize {
    match memory {
        Some(m) => m.clamp(1 << 20, 1 << 30) as usize,
        None => DEFAULT_MEMORY.min(max_size.max(1 << 20)) as usize,
    }
}

/// Whether opening a file that needs repair (not closed cleanly) repairs it: at start, yes
/// (it keeps the cache over a crash); when reopening a file while popsift serves, no
/// ([`DatabaseError::RepairAborted`]: the caller rebuilds it, see
/// [`RedbHeaderCache::reopen_db`]). Moot for a file just created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    Run,
    Refuse,
}

fn create_db(path: &Path, cache_bytes: usize, repair: Repair) -> Result<Database, DatabaseError> {
    let mut b = redb::Builder::new();
    b.set_cache_size(cache_bytes);
    if repair == Repair::Refuse {
        b.set_repair_callback(|s: &mut redb::RepairSession| s.abort());
    }
    b.create(path)
}

/// Opens the file and checks every page's checksum (once, at start: it reads the whole
/// file), so damage is found here and not in the middle of a login.
fn open_checked(path: &Path, cache_bytes: usize, repair: Repair) -> Result<Database, Result<DatabaseError, String>> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut db = create_db(path, cache_bytes, repair)?;
        db.check_integrity()?;
        Ok::<_, DatabaseError>(db)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(Ok(e)),
        Err(_) => Err(Err("redb panicked while opening the file".into())),
    }
}

fn open_or_rebuild(path: &Path, cache_bytes: usize, repair: Repair) -> Result<Database, CacheError> {
    match open_checked(path, cache_bytes, repair) {
        Ok(db) => return Ok(db),
        // Another process has it open: deleting it would pull it from under that process.
        Err(Ok(e @ DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(CacheError::Open { path: path.to_path_buf(), source: e });
        }
        Err(Ok(e)) => {
            warn!(path = %path.display(), error = %e, "header cache unreadable (corrupt or truncated?); deleting and rebuilding it");
        }
        Err(Err(e)) => {
            warn!(path = %path.display(), error = %e, "header cache unreadable (corrupt or truncated?); deleting and rebuilding it");
        }
    }
    std::fs::remove_file(path).map_err(|source| CacheError::Remove { path: path.to_path_buf(), source })?;
    match open_checked(path, cache_bytes, repair) {
        Ok(db) => Ok(db),
        Err(Ok(source)) => Err(CacheError::Open { path: path.to_path_buf(), source }),
        Err(Err(detail)) => Err(CacheError::Store { path: path.to_path_buf(), detail }),
    }
}

fn lookup_in(
    db: &Database,
    scope: &Scope,
    wanted: &[Wanted],
    limit: usize,
) -> Result<Vec<Option<HeaderBlock>>, String> {
    let r = db.begin_read().map_err(|e| e.to_string())?;
    let table = match r.open_table(ENTRIES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; wanted.len()]),
        Err(e) => return Err(e.to_string()),
    };
    let mut key = scope.prefix();
    let plen = key.len();
    let mut out = Vec::with_capacity(wanted.len());
    for w in wanted {
        key.truncate(plen);
        key.extend_from_slice(w.uidl.as_bytes());
        let found = table.get(key.as_slice()).map_err(|e| e.to_string())?;
        out.push(found.and_then(|v| decode(v.value(), w.size, limit)));
    }
    Ok(out)
}

/// The header block in a stored value, if it fits the message and the current cap.
pub(crate) fn decode(v: &[u8], size: u64, limit: usize) -> Option<HeaderBlock> {
    if v.len() < VALUE_HEAD || v[0] != VALUE_VERSION {
        return None;
    }
    let stored_size = u64::from_le_bytes(v[1..9].try_into().ok()?);
    let truncated = v[9] & FLAG_TRUNCATED != 0;
    let bytes = &v[VALUE_HEAD..];
    // A block cut at another cap than today's would not be what TOP gives now.
    if stored_size != size || bytes.len() > limit || (truncated && bytes.len() < limit) {
        return None;
    }
    Some(HeaderBlock { bytes: bytes.to_vec(), truncated })
}

pub(crate) fn encode(size: u64, h: &HeaderBlock) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEAD + h.bytes.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&size.to_le_bytes());
    v.push(if h.truncated { FLAG_TRUNCATED } else { 0 });
    v.extend_from_slice(&h.bytes);
    v
}

struct Updated {
    stored: usize,
    gone: usize,
    trimmed: usize,
    bytes: u64,
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;
type IndexTable<'t> = redb::Table<'t, &'static [u8], u64>;

/// Removes one entry with its index and age records; returns its accounted size.
fn remove(entries: &mut Table, index: &mut IndexTable, age: &mut Table, key: &[u8]) -> Result<u64, redb::StorageError> {
    if let Some(seq) = index.remove(key)? {
        age.remove(seq.value().to_be_bytes().as_slice())?;
    }
    let Some(old) = entries.remove(key)? else { return Ok(0) };
    let n = (key.len() + old.value().len()) as u64;
    Ok(n)
}

fn update_in(
    db: &Database,
    scope: &Scope,
    fresh: &[Fresh],
    present: &HashSet<Arc<str>>,
    max_size: u64,
) -> Result<Updated, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let w = db.begin_write().map_err(|e| s(&e))?;
    let mut u = Updated { stored: 0, gone: 0, trimmed: 0, bytes: 0 };
    {
        let mut entries = w.open_table(ENTRIES).map_err(|e| s(&e))?;
        let mut index = w.open_table(INDEX).map_err(|e| s(&e))?;
        let mut age = w.open_table(AGE).map_err(|e| s(&e))?;
        let mut meta = w.open_table(META).map_err(|e| s(&e))?;

        // Entries of this scope whose UIDL is gone from the server (keys only: cheap).
        let prefix = scope.prefix();
        let mut gone_keys = Vec::new();
        for item in index.range(prefix.as_slice()..).map_err(|e| s(&e))? {
            let (k, _) = item.map_err(|e| s(&e))?;
            let k = k.value();
            if !k.starts_with(&prefix) {
                break;
            }
            let uidl = String::from_utf8_lossy(&k[prefix.len()..]);
            if !present.contains(uidl.as_ref()) {
                gone_keys.push(k.to_vec());
            }
        }
        if gone_keys.is_empty() && fresh.is_empty() {
            // A warm login with nothing new: no write, no fsync.
            drop((entries, index, age, meta));
            w.abort().map_err(|e| s(&e))?;
            return Ok(u);
        }
        let mut seq = meta.get("seq").map_err(|e| s(&e))?.map_or(0, |v| v.value());
        let mut bytes = meta.get("bytes").map_err(|e| s(&e))?.map_or(0, |v| v.value());
        for k in &gone_keys {
            bytes = bytes.saturating_sub(remove(&mut entries, &mut index, &mut age, k).map_err(|e| s(&e))?);
            u.gone += 1;
        }
        // Blocks that the trim below would evict again at once are not written at all: one
        // update never writes (much) more than `max_size`, so it cannot grow the file by more.
        let mut keep_from = fresh.len();
        let mut fresh_bytes = 0u64;
        while keep_from > 0 {
            let f = &fresh[keep_from - 1];
            let n = (scope.prefix().len() + f.uidl.len() + VALUE_HEAD + f.headers.bytes.len()) as u64;
            if fresh_bytes + n > max_size {
                break;
            }
            fresh_bytes += n;
            keep_from -= 1;
        }
        for f in &fresh[..keep_from] {
            // Not stored, but an older block under this UIDL must not outlive it.
            let key = scope.key(&f.uidl);
            bytes = bytes.saturating_sub(remove(&mut entries, &mut index, &mut age, &key).map_err(|e| s(&e))?);
        }
        for f in &fresh[keep_from..] {
            let key = scope.key(&f.uidl);
            bytes = bytes.saturating_sub(remove(&mut entries, &mut index, &mut age, &key).map_err(|e| s(&e))?);
            let value = encode(f.size, &f.headers);
            entries.insert(key.as_slice(), value.as_slice()).map_err(|e| s(&e))?;
            index.insert(key.as_slice(), seq).map_err(|e| s(&e))?;
            age.insert(seq.to_be_bytes().as_slice(), key.as_slice()).map_err(|e| s(&e))?;
            bytes += (key.len() + value.len()) as u64;
            seq += 1;
            u.stored += 1;
        }
        // Oldest first until under the bound.
        while bytes > max_size {
            let Some((_, k)) = age.pop_first().map_err(|e| s(&e))? else { break };
            let k = k.value().to_vec();
            index.remove(k.as_slice()).map_err(|e| s(&e))?;
            if let Some(old) = entries.remove(k.as_slice()).map_err(|e| s(&e))? {
                bytes = bytes.saturating_sub((k.len() + old.value().len()) as u64);
            }
            u.trimmed += 1;
        }
        if entries.is_empty().map_err(|e| s(&e))? {
            bytes = 0;
        }
        meta.insert("seq", seq).map_err(|e| s(&e))?;
        meta.insert("bytes", bytes).map_err(|e| s(&e))?;
        u.bytes = bytes;
    }
    w.commit().map_err(|e| s(&e))?;
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(s: &str) -> HeaderBlock {
        HeaderBlock { bytes: s.as_bytes().to_vec(), truncated: false }
    }

    fn fresh(uidl: &str, size: u64, h: &str) -> Fresh {
        Fresh { uidl: Arc::from(uidl), size, headers: hb(h) }
    }

    fn want(uidl: &str, size: u64) -> Wanted {
        Wanted { uidl: Arc::from(uidl), size }
    }

    fn present(u: &[&str]) -> HashSet<Arc<str>> {
        u.iter().map(|s| Arc::from(*s)).collect()
    }

    const LIMIT: usize = 256 * 1024;

    #[test]
    fn store_then_hit_and_size_mismatch_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
        let s = Scope::new("pop.example:995", "alice");
        assert_eq!(c.lookup_blocking(&s, &[want("u1", 100)], LIMIT), vec![None]);
        c.update_blocking(&s, &[fresh("u1", 100, "Subject: a\r\n\r\n")], &present(&["u1"]));
        let got = c.lookup_blocking(&s, &[want("u1", 100), want("u1", 101), want("u2", 100)], LIMIT);
        assert_eq!(got[0].as_ref().unwrap().bytes, b"Subject: a\r\n\r\n");
        assert!(got[1].is_none(), "same UIDL, other size: a reused UIDL is a miss");
        assert!(got[2].is_none());
        // Replacing a reused UIDL keeps one entry.
        c.update_blocking(&s, &[fresh("u1", 101, "Subject: b\r\n\r\n")], &present(&["u1"]));
        assert_eq!(c.lookup_blocking(&s, &[want("u1", 101)], LIMIT)[0].as_ref().unwrap().bytes, b"Subject: b\r\n\r\n");
        assert_eq!(c.stats_blocking().unwrap().0, 1);
    }

    /// Issue 12: one lock per mailbox ever seen was kept for the process's lifetime.
    #[tokio::test]
    async fn scope_locks_are_bounded_with_many_users() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(HeaderCache::open(dir.path(), 1 << 20).unwrap());
        let held = c.scope_lock(&Scope::new("h:110", "busy"));
        for i in 0..10 * SCOPE_LOCKS_SWEEP {
            let got = c.lookup(Scope::new("h:110", format!("user{i}")), Vec::new(), LIMIT).await;
            assert!(got.is_empty());
            assert!(c.scope_locks() <= SCOPE_LOCKS_SWEEP, "{} locks after {i} users", c.scope_locks());
        }
        // A lock in use is never swept: its holder still orders that mailbox.
        let again = c.scope_lock(&Scope::new("h:110", "busy"));
        assert!(Arc::ptr_eq(&held, &again));
    }

    /// Issue 16: once a mailbox's lookups and updates are done, its lock is gone from the
    /// map (not kept until a sweep), and the map's table shrinks back after a burst.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scope_locks_go_when_their_mailbox_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(HeaderCache::open(dir.path(), 1 << 20).unwrap());
        let held = c.scope_lock(&Scope::new("h:110", "busy"));
        for i in 0..200 {
            let scope = Scope::new("h:110", format!("user{i}"));
            assert!(c.lookup(scope.clone(), vec![want("u1", 10)], LIMIT).await[0].is_none());
            c.update_in_background(scope, vec![fresh("u1", 10, "A\r\n\r\n")], present(&["u1"])).await;
        }
        // Each update finishes on the blocking pool; wait (bounded) for the last of them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while c.scope_locks() > 1 {
            assert!(std::time::Instant::now() < deadline, "{} scope locks kept", c.scope_locks());
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The lock someone still holds stays, and still orders its mailbox.
        assert!(Arc::ptr_eq(&held, &c.scope_lock(&Scope::new("h:110", "busy"))));
        // The updates were written and are found by the next lookups.
        let again = c.lookup(Scope::new("h:110", "user7"), vec![want("u1", 10)], LIMIT).await;
        assert!(again[0].is_some());
        // Given back by its last holder, it goes too, and the emptied table shrinks.
        c.forget_scope_lock(&Scope::new("h:110", "busy"), held);
        assert_eq!(c.scope_locks(), 0);
        assert!(c.scopes.lock().unwrap().capacity() <= SCOPE_LOCKS_KEPT_ROOM);
    }

    #[test]
    fn scopes_never_leak() {
        let dir = tempfile::tempdir().unwrap();
        let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
        let alice = Scope::new("h:110", "alice");
        // Prefix-ish names must not collide: ("h:110","alice") vs ("h:110","alic"+"e…").
        let alic = Scope::new("h:110", "alic");
        let other_up = Scope::new("h:995", "alice");
        c.update_blocking(&alice, &[fresh("eu1", 10, "A\r\n\r\n")], &present(&["eu1"]));
        assert!(c.lookup_blocking(&alic, &[want("eu1", 10)], LIMIT)[0].is_none());
        assert!(c.lookup_blocking(&alic, &[want("u1", 10)], LIMIT)[0].is_none());
        assert!(c.lookup_blocking(&other_up, &[want("eu1", 10)], LIMIT)[0].is_none());
        // Eviction in one scope leaves the others alone.
        c.update_blocking(&alic, &[fresh("x", 10, "B\r\n\r\n")], &present(&["x"]));
        c.update_blocking(&alic, &[], &present(&[]));
        assert!(c.lookup_blocking(&alice, &[want("eu1", 10)], LIMIT)[0].is_some());
        assert!(c.lookup_blocking(&alic, &[want("x", 10)], LIMIT)[0].is_none());
    }

    #[test]
    fn gone_uidls_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
        let s = Scope::new("h:110", "bob");
        c.update_blocking(&s, &[fresh("a", 1, "A\r\n\r\n"), fresh("b", 2, "B\r\n\r\n")], &present(&["a", "b"]));
        c.update_blocking(&s, &[], &present(&["b"]));
        let got = c.lookup_blocking(&s, &[want("a", 1), want("b", 2)], LIMIT);
        assert!(got[0].is_none() && got[1].is_some());
        assert_eq!(c.stats_blocking().unwrap().0, 1);
    }

    #[test]
    fn size_bound_evicts_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let body = "X".repeat(1000);
        // Room for about three entries.
        let c = HeaderCache::open(dir.path(), 3500).unwrap();
        let s = Scope::new("h:110", "carol");
        let all: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
        let p: HashSet<Arc<str>> = all.iter().map(|u| Arc::from(u.as_str())).collect();
        for u in &all {
            c.update_blocking(&s, &[fresh(u, 1000, &body)], &p);
        }
        let got = c.lookup_blocking(&s, &all.iter().map(|u| want(u, 1000)).collect::<Vec<_>>(), LIMIT);
        let hits: Vec<bool> = got.iter().map(Option::is_some).collect();
        assert_eq!(hits, [false, false, false, true, true, true]);
        let (n, bytes) = c.stats_blocking().unwrap();
        assert_eq!(n, 3);
        assert!(bytes <= 3500, "{bytes}");
    }

    /// Issue 10: the file grew to 2.16 GB under `max_size: 256MiB`. Lookups overlapping
    /// updates keep old pages alive, so churn grows the file; once they are gone, the next
    /// update must bring the file back within `file_bound` (plus that update's data).
    #[test]
    fn file_size_returns_within_bound_after_churn() {
        let dir = tempfile::tempdir().unwrap();
        let max = 1 << 20;
        let c = RedbHeaderCache::open(dir.path(), max).unwrap();
        let s = Scope::new("h:110", "churn");
        let block = "H".repeat(64 * 1024);
        let batch = |round: usize| -> Vec<Fresh> {
            (0..16).map(|i| fresh(&format!("r{round}-{i}"), 9, &format!("{round}{block}"))).collect()
        };
        let reader = c.db().unwrap().begin_read().unwrap();
        for round in 0..40 {
            let b = batch(round);
            c.update_blocking(&s, &b, &b.iter().map(|f| f.uidl.clone()).collect());
        }
        let grown = std::fs::metadata(c.path()).unwrap().len();
        assert!(grown > file_bound(max), "the churn did not grow the file ({grown} bytes): the test proves nothing");
        drop(reader);
        let b = batch(99);
        c.update_blocking(&s, &b, &b.iter().map(|f| f.uidl.clone()).collect());
        let after = std::fs::metadata(c.path()).unwrap().len();
        let allowed = file_bound(max) + 2 * 16 * 64 * 1024;
        assert!(after <= allowed, "cache file {after} bytes after churn (grew to {grown}), bound {allowed}");
        let last: Vec<Wanted> = (0..16).map(|i| want(&format!("r99-{i}"), 9)).collect();
        assert!(c.lookup_blocking(&s, &last, LIMIT).iter().any(Option::is_some), "the cache still works");
        let (_, bytes) = c.stats_blocking().unwrap();
        assert!(bytes <= max, "{bytes}");
    }

    #[test]
    fn truncated_blocks_hit_only_at_the_same_cap() {
        let dir = tempfile::tempdir().unwrap();
        let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
        let s = Scope::new("h:110", "d");
        let h = HeaderBlock { bytes: vec![b'x'; 1024], truncated: true };
        c.update_blocking(&s, &[Fresh { uidl: Arc::from("t"), size: 5000, headers: h }], &present(&["t"]));
        assert!(c.lookup_blocking(&s, &[want("t", 5000)], 1024)[0].as_ref().unwrap().truncated);
        assert!(c.lookup_blocking(&s, &[want("t", 5000)], 2048)[0].is_none());
        assert!(c.lookup_blocking(&s, &[want("t", 5000)], 512)[0].is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_lookup_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(HeaderCache::open(dir.path(), 1 << 30).unwrap());
        let s = Scope::new("h:110", "g");
        // Every other message cached, so a mix-up shows as wrong hits or bytes.
        let all: Vec<Fresh> = (0..5000u64)
            .filter(|i| i % 2 == 0)
            .map(|i| fresh(&format!("u{i}"), i, &format!("S: {i}\r\n\r\n")))
            .collect();
        c.update_blocking(&s, &all, &all.iter().map(|f| f.uidl.clone()).collect());
        let wanted: Vec<Wanted> = (0..5000u64).map(|i| want(&format!("u{i}"), i)).collect();
        let got = c.lookup(s, wanted, LIMIT).await;
        assert_eq!(got.len(), 5000);
        for (i, h) in got.iter().enumerate() {
            match h {
                Some(h) => {
                    assert_eq!(i % 2, 0);
                    assert_eq!(h.bytes, format!("S: {i}\r\n\r\n").as_bytes());
                }
                None => assert_eq!(i % 2, 1),
            }
        }
    }

    /// Giving the page cache back (issue 16) closes the file and opens it anew: the old
    /// handle, and with it its page cache, is gone and everything stored is still there; a
    /// handle in use (a lookup or update in flight) is never closed under it; a reopen
    /// that fails (the file held by another process) is a miss, retried at the next use.
    #[test]
    fn release_reopens_with_everything_kept() {
        let dir = tempfile::tempdir().unwrap();
        let c = RedbHeaderCache::open(dir.path(), 1 << 20).unwrap();
        let s = Scope::new("h:110", "e");
        c.update_blocking(&s, &[fresh("a", 1, "A\r\n\r\n")], &present(&["a"]));
        let in_use = c.db().unwrap();
        assert!(!c.release_memory(), "a handle in use is kept");
        assert!(Arc::ptr_eq(&in_use, &c.db().unwrap()));
        let old = Arc::downgrade(&in_use);
        drop(in_use);
        assert!(c.release_memory());
        assert!(old.upgrade().is_none(), "the old handle and its page cache are gone");
        assert!(c.lookup_blocking(&s, &[want("a", 1)], LIMIT)[0].is_some(), "nothing lost");

        // The reopen fails: another process holds the file meanwhile.
        let other = closed_and_held(&c);
        assert!(c.lookup_blocking(&s, &[want("a", 1)], LIMIT)[0].is_none(), "a miss, not a failure");
        drop(other);
        assert!(c.lookup_blocking(&s, &[want("a", 1)], LIMIT)[0].is_none(), "not tried again at once");
        retry_now(&c);
        assert!(c.lookup_blocking(&s, &[want("a", 1)], LIMIT)[0].is_some(), "reopened at a use after the wait");
        assert!(c.reopen.lock().unwrap().is_none());
        assert!(c.release_memory());
    }

    /// The store as a release leaves it when another process took the file between the
    /// close and the reopen: closed, a reopen pending; the other process's handle.
    fn closed_and_held(c: &RedbHeaderCache) -> Database {
        c.lookup_blocking(&Scope::new("h:110", "x"), &[], LIMIT);
        *c.db.lock().unwrap() = None;
        let other = create_db(c.path(), 1 << 20, Repair::Run).unwrap();
        assert!(c.reopen_db().is_err(), "held elsewhere: not reopened");
        *c.reopen.lock().unwrap() = Some(Instant::now() + REOPEN_RETRY);
        other
    }

    /// Makes the next use try a pending reopen (as once [`REOPEN_RETRY`] has passed).
    fn retry_now(c: &RedbHeaderCache) {
        let mut at = c.reopen.lock().unwrap();
        assert!(at.is_some(), "a reopen is pending");
        *at = Some(Instant::now());
    }

    /// A file that cannot be opened as it was when the store reopens it (here: replaced by
    /// garbage while the store had it closed) is rebuilt, not retried forever: the cache
    /// works again, empty.
    #[test]
    fn a_damaged_file_is_rebuilt_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = RedbHeaderCache::open(dir.path(), 1 << 20).unwrap();
        let s = Scope::new("h:110", "e");
        c.update_blocking(&s, &[fresh("a", 1, "A\r\n\r\n")], &present(&["a"]));
        drop(closed_and_held(&c));
        std::fs::write(c.path(), vec![0x5a; 64 << 10]).unwrap();
        retry_now(&c);
        assert!(c.lookup_blocking(&s, &[want("a", 1)], LIMIT)[0].is_none(), "rebuilt: empty");
        assert!(c.reopen.lock().unwrap().is_none(), "no reopen pending");
        c.update_blocking(&s, &[fresh("b", 2, "B\r\n\r\n")], &present(&["b"]));
        assert!(c.lookup_blocking(&s, &[want("b", 2)], LIMIT)[0].is_some(), "and works");
    }

    /// A file left needing repair (a close that could not write its final commit, as
    /// after a crash) is repaired at start, but not when the store reopens it while popsift
    /// serves (the repair reads the whole file, under the lock every lookup takes): the
    /// repair is refused and the file rebuilt.
    #[test]
    fn a_file_needing_repair_is_rebuilt_not_repaired_at_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let crashed = dir.path().join("crashed.redb");
        {
            let path = dir.path().join("elsewhere.redb");
            let db = create_db(&path, 1 << 20, Repair::Run).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(ENTRIES).unwrap().insert(b"k".as_slice(), b"v".as_slice()).unwrap();
            tx.commit().unwrap();
            // The file as a crash leaves it: still marked open.
            std::fs::copy(&path, &crashed).unwrap();
        }
        let work = dir.path().join("work.redb");
        std::fs::copy(&crashed, &work).unwrap();
        assert!(matches!(create_db(&work, 1 << 20, Repair::Refuse), Err(DatabaseError::RepairAborted)));
        let repaired = create_db(&work, 1 << 20, Repair::Run).expect("repaired at start");
        let r = repaired.begin_read().unwrap();
        assert_eq!(r.open_table(ENTRIES).unwrap().get(b"k".as_slice()).unwrap().unwrap().value(), b"v");
        drop((r, repaired));

        let c = RedbHeaderCache::open(&dir.path().join("state"), 1 << 20).unwrap();
        drop(closed_and_held(&c));
        std::fs::copy(&crashed, c.path()).unwrap();
        retry_now(&c);
        let s = Scope::new("h:110", "e");
        c.update_blocking(&s, &[fresh("b", 2, "B\r\n\r\n")], &present(&["b"]));
        assert!(c.reopen.lock().unwrap().is_none(), "reopened");
        assert!(c.lookup_blocking(&s, &[want("b", 2)], LIMIT)[0].is_some(), "rebuilt, and works");
    }

    /// A store nobody used since it was opened (or gave its memory back) keeps its handle:
    /// nothing to give back, nothing to close and reopen (`net::idle_release`).
    #[test]
    fn an_unused_store_is_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let c = RedbHeaderCache::open(dir.path(), 1 << 20).unwrap();
        let s = Scope::new("h:110", "e");
        let handle = |c: &RedbHeaderCache| Arc::downgrade(c.db.lock().unwrap().as_ref().unwrap());
        assert!(!HeaderStore::used(&c), "opening is not a use");
        let first = handle(&c);
        assert!(c.release_memory(), "nothing to do is done");
        assert!(first.upgrade().is_some(), "an unused store keeps its handle");
        c.lookup_blocking(&s, &[want("a", 1)], LIMIT);
        assert!(HeaderStore::used(&c));
        assert!(c.release_memory());
        assert!(first.upgrade().is_none() && !HeaderStore::used(&c), "a used one is reopened, unused again");
        let second = handle(&c);
        assert!(c.release_memory());
        assert!(second.upgrade().is_some(), "and left alone until it is used");
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scope::new("h:110", "e");
        {
            let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
            c.update_blocking(&s, &[fresh("a", 1, "A\r\n\r\n")], &present(&["a"]));
        }
        let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
        assert!(c.lookup_blocking(&s, &[want("a", 1)], LIMIT)[0].is_some());
    }

    fn damaged(damage: impl Fn(&Path)) {
        let dir = tempfile::tempdir().unwrap();
        let s = Scope::new("h:110", "f");
        {
            let c = HeaderCache::open(dir.path(), 1 << 20).unwrap();
            let many: Vec<Fresh> = (0..200).map(|i| fresh(&format!("u{i}"), 7, &"H".repeat(300))).collect();
            c.update_blocking(&s, &many, &many.iter().map(|f| f.uidl.clone()).collect());
        }
        damage(&dir.path().join(FILE_NAME));
        let c = HeaderCache::open(dir.path(), 1 << 20).expect("a damaged cache is rebuilt, never fatal");
        // Whatever survived, lookups answer (hits must be exact, misses are fine) and the
        // cache works again afterwards.
        for h in c.lookup_blocking(&s, &[want("u1", 7)], LIMIT).into_iter().flatten() {
            assert_eq!(h.bytes, "H".repeat(300).as_bytes());
        }
        c.update_blocking(&s, &[fresh("new", 3, "N\r\n\r\n")], &present(&["new"]));
        assert_eq!(c.lookup_blocking(&s, &[want("new", 3)], LIMIT)[0].as_ref().unwrap().bytes, b"N\r\n\r\n");
    }

    #[test]
    fn truncated_file_is_rebuilt() {
        damaged(|p| {
            let len = std::fs::metadata(p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(len / 3).unwrap();
        });
    }

    #[test]
    fn garbage_file_is_rebuilt() {
        damaged(|p| std::fs::write(p, b"this is not a redb file at all\n".repeat(100)).unwrap());
    }

    #[test]
    fn overwritten_pages_are_detected_or_rebuilt() {
        damaged(|p| {
            let mut bytes = std::fs::read(p).unwrap();
            let len = bytes.len();
            for b in &mut bytes[len / 4..len / 2] {
                *b = 0xA5;
            }
            std::fs::write(p, bytes).unwrap();
        });
    }

    #[test]
    fn unusable_state_dir_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plainfile");
        std::fs::write(&file, b"x").unwrap();
        assert!(HeaderCache::open(&file.join("sub"), 1 << 20).is_err());
    }

    /// Issue (redis one-write): a cold login of a large mailbox held every fresh block
    /// until the end of the scan. The pending write never holds more than the bound, keeps
    /// the last blocks, and the dropped ones leave `present` (so their old entries go).
    #[test]
    fn pending_write_holds_at_most_the_bound() {
        let max = 1000;
        let mut w = PendingWrite::new(max);
        let body = format!("Subject: {}\r\n\r\n", "x".repeat(90));
        let all: Vec<Fresh> = (0..200).map(|i| fresh(&format!("u{i}"), 1000, &body)).collect();
        let uidls: HashSet<Arc<str>> = all.iter().map(|f| f.uidl.clone()).collect();
        for chunk in all.chunks(7) {
            w.append(chunk.to_vec());
            assert!(w.bytes() <= max, "{} > {max}", w.bytes());
        }
        let (kept, present) = w.finish(uidls);
        assert!(!kept.is_empty() && kept.iter().map(write_cost).sum::<u64>() <= max);
        assert_eq!(kept.last().unwrap().uidl.as_ref(), "u199", "the last blocks win");
        assert_eq!(present.len(), kept.len(), "skipped UIDLs are evicted");
        assert!(kept.iter().all(|f| present.contains(&f.uidl)));
    }
}
