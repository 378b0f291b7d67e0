//! The shared backend: one Redis connection per process, used by every store that
//! `store.backend: redis` moves out of the state directory (header cache, quarantine,
//! classifier model; a decision history store can use the same [`Redis::query`]).
//!
//! # Why it is built this way
//! - **One multiplexed connection** (`redis`'s tokio [`ConnectionManager`]): sessions send
//!   their pipelines concurrently over it, and a login costs a fixed number of round trips
//!   (one `HMGET` and one update script for the header cache, see [`super::redis_cache`])
//!   — never one per message.
//! - **Every call is bounded**: establishing a connection by `store.redis.connect_timeout`,
//!   each command or pipeline by `store.redis.command_timeout`. A call that fails or times
//!   out is an `Err` the caller turns into its fallback (cache miss → `TOP`; quarantine →
//!   `quarantine.on_failure`; model write → dropped and counted); nothing waits longer.
//! - **Reconnect with backoff** (a circuit breaker): after a failure the connection is
//!   dropped and calls fail at once (no connect attempt, no waiting) until the backoff has
//!   passed: 100 ms, doubling up to 5 s. One connect attempt is in flight at a time: calls
//!   that arrive meanwhile wait for it (at most one `connect_timeout`) and, if it failed,
//!   fail at once rather than each trying in turn, so N sessions against a blackholed
//!   Redis finish in about one timeout, not N. The first call after it connects afresh, so a Redis that comes back is used
//!   again within 5 s. `popsift_store_degraded{reason="unreachable"}` is 1 meanwhile.
//! - **Durability is checked, not assumed**: a message may be `DELE`d upstream only once
//!   its copy is durable (RFC 1939 §6: DELE is final at UPDATE). Redis acknowledges a write
//!   before it reaches the disk unless it runs with `appendonly yes` and `appendfsync
//!   always` (then the AOF is fsynced before the reply is sent; `WAITAOF` needs Redis 7.2).
//!   [`Redis::durability`] asks `CONFIG GET` at every new connection, and the quarantine asks
//!   again before each copy (one round trip; a `CONFIG SET` at run time is seen at once). A
//!   Redis that refuses `CONFIG` (some managed services) counts as not durable.
//!   `popsift_store_degraded{reason="not_durable"}` says so, with a warning in the log.
//! - **Garbage never panics**: replies are decoded with `FromRedisValue` into the expected
//!   types; anything else is an error like a timeout.
//!
//! # Sync callers
//! The store traits are synchronous (they already run on tokio's blocking pool, or in a CLI
//! command). [`Redis::blocking`] runs a call on the current runtime's handle from a blocking
//! thread, on `serve`'s runtime from a plain thread of `serve` (the history writer,
//! autolearn: the connection's task must live on a runtime that keeps running), or on a
//! private single-thread runtime when there is none (the CLI tools). On the
//! multi-thread runtime of `serve` it goes through `block_in_place`, so even a call from an
//! async task (a web handler, say) blocks only its own worker, never panics; it should still
//! be called from the blocking pool.
//!
//! # Keys
//! `<key_prefix>:<kind>:...`, with user-supplied parts (upstream, user name) escaped by
//! [`key_part`] so that no two (upstream, user) pairs share a key.
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;
use tracing::{info, warn};

use crate::config::{redacted_url, RedisSettings};

/// First wait after a failure; doubled per further failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("redis {url}: bad URL: {detail}")]
    Url { url: String, detail: String },
    #[error("redis unavailable (retrying after a failure; last: {last})")]
    Backoff { last: String },
    #[error("redis connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("redis command timed out after {0:?}")]
    CommandTimeout(Duration),
    #[error("redis: {0}")]
    Failed(String),
    #[error("redis answered something unexpected: {0}")]
    Garbage(String),
}

/// What `CONFIG GET appendonly`/`appendfsync` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `appendonly yes` and `appendfsync always`: an acknowledged write is on disk.
    Durable,
    /// Anything else, with the reason (for the log and the quarantine's error).
    NotDurable(String),
}

#[derive(Debug)]
struct Health {
    /// Calls fail at once until then.
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

/// The process's Redis connection (see the module doc). Cheap to share (`Arc`).
pub struct Redis {
    client: redis::Client,
    settings: RedisSettings,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    health: Mutex<Health>,
    durability: Mutex<Option<Durability>>,
    /// The multi-thread runtime this store was made on (`serve`), if any: calls from threads
    /// outside any runtime (the history writer, autolearn) run on it, so the connection's
    /// background task always lives on a runtime that keeps running.
    home: Option<tokio::runtime::Handle>,
    /// For callers outside any tokio runtime when there is no `home` (CLI tools).
    own_runtime: OnceLock<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("settings", &self.settings).finish()
    }
}

/// One key component: bytes outside `[A-Za-z0-9._@+-]` (so `:` too) become `%XX`, so the
/// `:`-separated key is unambiguous (the quarantine's folder-name escaping).
pub fn key_part(s: &str) -> String {
    super::quarantine::user_dir_name(s)
}

impl Redis {
    /// Checks the URL; connects lazily at the first call.
    pub fn new(settings: &RedisSettings) -> Result<Redis, RedisError> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| RedisError::Url { url: redacted_url(&settings.url), detail: e.to_string() })?;
        Ok(Redis {
            client,
            settings: settings.clone(),
            conn: tokio::sync::Mutex::new(None),
            health: Mutex::new(Health { retry_at: None, backoff: BACKOFF_MIN, last_error: String::new() }),
            durability: Mutex::new(None),
            home: tokio::runtime::Handle::try_current()
                .ok()
                .filter(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread),
            own_runtime: OnceLock::new(),
        })
    }

    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// `<key_prefix>:<rest>`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.settings.key_prefix)
    }

    /// Whether calls are currently failing fast (after a failure, within the backoff).
    pub fn is_down(&self) -> bool {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).retry_at.is_some_and(|t| Instant::now() < t)
    }

    /// The durability seen at the last check (`None`: not connected yet).
    pub fn last_durability(&self) -> Option<Durability> {
        self.durability.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failed(&self, op: &'static str, e: &RedisError) {
        crate::metrics::store_error(op);
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let first = h.retry_at.is_none();
        h.retry_at = Some(Instant::now() + h.backoff);
        h.backoff = (h.backoff * 2).min(BACKOFF_MAX);
        h.last_error = e.to_string();
        if first {
            warn!(url = %redacted_url(&self.settings.url), error = %e, op, "redis store unreachable: header cache misses, quarantine falls back to quarantine.on_failure, model writes are dropped; reconnecting with backoff");
        }
        crate::metrics::store_degraded("unreachable", true);
    }

    fn succeeded(&self) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.retry_at.take().is_some() {
            info!(url = %redacted_url(&self.settings.url), "redis store reachable again");
        }
        h.backoff = BACKOFF_MIN;
        crate::metrics::store_degraded("unreachable", false);
    }

    /// The connection, made now if there is none (bounded by `connect_timeout`, durability
    /// checked). Fails at once within the backoff after a failure.
    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        {
            let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            if h.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(RedisError::Backoff { last: h.last_error.clone() });
            }
        }
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Circuit breaker: while one call was connecting, the others waited on the lock
        // above (for one `connect_timeout` at most). If that attempt failed, they fail now
        // instead of each trying (and waiting) in turn: one attempt in flight, never N.
        {
            let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
            if h.retry_at.is_some_and(|t| Instant::now() < t) {
                return Err(RedisError::Backoff { last: h.last_error.clone() });
            }
        }
        let s = &self.settings;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(s.connect_timeout)
            .set_response_timeout(s.command_timeout)
            .set_number_of_retries(0);
        let made = tokio::time::timeout(s.connect_timeout, async {
            let mut c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
            let d = durability_of(&mut c).await;
            Ok::<_, redis::RedisError>((c, d))
        })
        .await;
        let (conn, durability) = match made {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                let e = RedisError::Failed(e.to_string());
                self.failed("connect", &e);
                return Err(e);
            }
            Err(_) => {
                let e = RedisError::ConnectTimeout(s.connect_timeout);
                self.failed("connect", &e);
                return Err(e);
            }
        };
        info!(url = %redacted_url(&s.url), durability = ?durability, "redis store connected");
        self.note_durability(durability);
        self.succeeded();
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn note_durability(&self, d: Durability) {
        let mut cur = self.durability.lock().unwrap_or_else(|p| p.into_inner());
        if let Durability::NotDurable(why) = &d {
            if cur.as_ref() != Some(&d) {
                warn!(reason = %why, "redis is not durable (needs appendonly yes and appendfsync always): quarantine falls back to quarantine.on_failure, nothing is deleted upstream");
            }
        } else if matches!(cur.as_ref(), Some(Durability::NotDurable(_))) {
            info!("redis is durable again (appendonly yes, appendfsync always): quarantine resumes");
        }
        crate::metrics::store_degraded("not_durable", d != Durability::Durable);
        *cur = Some(d);
    }

    /// Runs one command or pipeline within `command_timeout`. `op` names it in the
    /// `popsift_store_errors_total` metric. A failure drops the connection and starts the
    /// backoff; a reply of the wrong shape is [`RedisError::Garbage`].
    pub async fn query<T: FromRedisValue>(&self, op: &'static str, pipe: &redis::Pipeline) -> Result<T, RedisError> {
        let mut conn = self.connection().await?;
        let t = self.settings.command_timeout;
        match tokio::time::timeout(t, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.kind() == redis::ErrorKind::TypeError => {
                crate::metrics::store_error(op);
                Err(RedisError::Garbage(e.to_string()))
            }
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::ResponseError || e.kind() == redis::ErrorKind::ExecAbortError =>
            {
                // Redis said no (OOM, wrong type, ...): the connection itself is fine.
                crate::metrics::store_error(op);
                Err(RedisError::Failed(e.to_string()))
            }
            Ok(Err(e)) => {
                let e = RedisError::Failed(e.to_string());
                self.drop_connection().await;
                self.failed(op, &e);
                Err(e)
            }
            Err(_) => {
                let e = RedisError::CommandTimeout(t);
                self.drop_connection().await;
                self.failed(op, &e);
                Err(e)
            }
        }
    }

    async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Asks `CONFIG GET appendonly` and `appendfsync` now (one round trip) and records the
    /// answer (log on change, `popsift_store_degraded{reason="not_durable"}`).
    pub async fn durability(&self) -> Result<Durability, RedisError> {
        let mut conn = self.connection().await?;
        let t = self.settings.command_timeout;
        let d = match tokio::time::timeout(t, durability_of(&mut conn)).await {
            Ok(d) => d,
            Err(_) => {
                let e = RedisError::CommandTimeout(t);
                self.drop_connection().await;
                self.failed("quarantine", &e);
                return Err(e);
            }
        };
        self.note_durability(d.clone());
        Ok(d)
    }

    /// Runs `f` (a future using this store) to completion from synchronous code: on the
    /// current runtime from a blocking-pool thread, or on a private runtime outside any.
    pub fn blocking<F: std::future::Future>(&self, f: F) -> F::Output {
        match tokio::runtime::Handle::try_current() {
            // `block_in_place` also makes a call from an async worker thread safe (it hands
            // the worker's other tasks to another thread first); on a blocking-pool thread
            // it just runs the closure.
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| h.block_on(f))
            }
            Ok(h) => h.block_on(f),
            // A plain thread of `serve` (history writer, autolearn): on the serve runtime,
            // never on a private one whose tasks stop running between calls (a connection
            // made there would stall every session's calls).
            Err(_) => match &self.home {
                Some(home) => home.block_on(f),
                None => self.on_own_runtime(f),
            },
        }
    }

    /// Runs `f` on the private single-thread runtime (made at first use).
    fn on_own_runtime<F: std::future::Future>(&self, f: F) -> F::Output {
        let rt = self.own_runtime.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a single-thread tokio runtime can be built")
        });
        rt.block_on(f)
    }
}

/// The process's connection for these settings, made once and shared by every store (so
/// the header cache, the quarantine and the model use one connection and one backoff).
pub fn shared(settings: &RedisSettings) -> Result<std::sync::Arc<Redis>, RedisError> {
    type Registry = Mutex<Vec<std::sync::Arc<Redis>>>;
    static ALL: OnceLock<Registry> = OnceLock::new();
    let mut all = ALL.get_or_init(Registry::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = all.iter().find(|r| r.settings == *settings) {
        return Ok(r.clone());
    }
    let r = std::sync::Arc::new(Redis::new(settings)?);
    all.push(r.clone());
    Ok(r)
}

/// `CONFIG GET appendonly` + `CONFIG GET appendfsync` in one pipeline.
async fn durability_of(conn: &mut ConnectionManager) -> Durability {
    let mut p = redis::pipe();
    p.cmd("CONFIG").arg("GET").arg("appendonly").cmd("CONFIG").arg("GET").arg("appendfsync");
    let got: Result<(Vec<String>, Vec<String>), _> = p.query_async(conn).await;
    match got {
        Ok((aof, fsync)) => judge(aof.get(1).map(String::as_str), fsync.get(1).map(String::as_str)),
        Err(e) => Durability::NotDurable(format!("CONFIG GET refused or failed: {e}")),
    }
}

/// The verdict on the two settings (pure, unit-tested).
fn judge(appendonly: Option<&str>, appendfsync: Option<&str>) -> Durability {
    match (appendonly, appendfsync) {
        (Some(a), Some(f)) if a.eq_ignore_ascii_case("yes") && f.eq_ignore_ascii_case("always") => Durability::Durable,
        (a, f) => Durability::NotDurable(format!(
            "appendonly {}, appendfsync {}",
            a.unwrap_or("(unknown)"),
            f.unwrap_or("(unknown)")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_needs_aof_and_fsync_always() {
        assert_eq!(judge(Some("yes"), Some("always")), Durability::Durable);
        assert!(matches!(judge(Some("yes"), Some("everysec")), Durability::NotDurable(r) if r.contains("everysec")));
        assert!(matches!(judge(Some("no"), Some("always")), Durability::NotDurable(_)));
        assert!(matches!(judge(None, None), Durability::NotDurable(_)));
    }

    #[test]
    fn key_parts_are_unambiguous() {
        assert_eq!(key_part("h:110"), "h%3A110");
        assert_ne!(key_part("a:b"), key_part("a%3Ab"));
    }

    fn settings(url: &str) -> RedisSettings {
        RedisSettings {
            url: url.into(),
            key_prefix: "t".into(),
            connect_timeout: Duration::from_millis(300),
            command_timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn unreachable_fails_within_the_timeout_then_fast() {
        // A port nothing listens on (bound and dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = Redis::new(&settings(&format!("redis://127.0.0.1:{port}"))).unwrap();
        let t = Instant::now();
        let got: Result<Option<String>, _> = r.blocking(r.query("connect", redis::pipe().get("k")));
        assert!(got.is_err());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(r.is_down());
        let t = Instant::now();
        let again: Result<Option<String>, _> = r.blocking(r.query("connect", redis::pipe().get("k")));
        assert!(matches!(again, Err(RedisError::Backoff { .. })), "{again:?}");
        assert!(t.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn a_silent_server_times_out() {
        // Accepts connections and never answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let keeper = std::thread::spawn(move || {
            // Holds every accepted socket open, unanswered, until the test is done.
            let mut held = Vec::new();
            while stopped.recv_timeout(Duration::from_millis(5)).is_err() {
                if let Ok((s, _)) = l.accept() {
                    held.push(s);
                }
            }
        });
        let r = Redis::new(&settings(&format!("redis://127.0.0.1:{port}"))).unwrap();
        let t = Instant::now();
        let got: Result<Option<String>, _> = r.blocking(r.query("connect", redis::pipe().get("k")));
        assert!(got.is_err());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        stop.send(()).unwrap();
        keeper.join().unwrap();
    }

    /// A blackholed Redis (a listener that never accepts, so connects hang until the
    /// timeout): N concurrent calls finish in about one `connect_timeout`, not N of them,
    /// because only one connect attempt is made and the waiters fail once it has failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_calls_against_a_blackhole_share_one_timeout() {
        // Never accepted: the handshake may complete in the backlog, but nothing answers.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let r = std::sync::Arc::new(Redis::new(&settings(&format!("redis://127.0.0.1:{port}"))).unwrap());
        const N: usize = 8;
        let t = Instant::now();
        let calls: Vec<_> = (0..N)
            .map(|_| {
                let r = r.clone();
                tokio::spawn(async move { r.query::<Option<String>>("connect", redis::pipe().get("k")).await })
            })
            .collect();
        let mut failed_fast = 0;
        for c in calls {
            let got = c.await.unwrap();
            assert!(got.is_err(), "{got:?}");
            failed_fast += usize::from(matches!(got, Err(RedisError::Backoff { .. })));
        }
        let took = t.elapsed();
        // One timeout is 300 ms; N in turn would be 2.4 s. The count below is the proof; the
        // bound only rules out the serial case, with room for a loaded machine.
        assert!(took < Duration::from_millis(2000), "{N} calls took {took:?}");
        assert_eq!(failed_fast, N - 1, "exactly one connect attempt");
        drop(l);
    }

    /// From an async task on the multi-thread runtime (where `Handle::block_on` alone
    /// would panic), a blocking call still answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_from_an_async_task_does_not_panic() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let r = Redis::new(&settings(&format!("redis://127.0.0.1:{port}"))).unwrap();
        let got: Result<Option<String>, _> = r.blocking(r.query("connect", redis::pipe().get("k")));
        assert!(got.is_err());
    }

    #[test]
    fn bad_url_is_an_error() {
        assert!(Redis::new(&settings("redis://[::1")).is_err());
    }
}
