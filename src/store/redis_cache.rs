//! The header cache on Redis ([`super::header_cache::HeaderStore`] for
//! `store.backend: redis`): every popsift instance sharing the Redis sees the header blocks
//! any of them read, so a login is warm whichever instance the balancer picks.
//!
//! # Layout
//! One hash per mailbox: `<prefix>:hc:<upstream>:<user>` (both parts escaped by
//! [`super::redis::key_part`], so no two mailboxes share a key), field = UIDL, value = the
//! same `[version][size][flags][header bytes]` encoding as the redb store, so the same
//! size check (a reused UIDL is a miss) and truncation check apply.
//!
//! # Round trips (2 per login, whatever the mailbox size)
//! The scan asks once per login ([`HeaderStore::one_call_per_login`]): one `HMGET` with the
//! UIDL of every message the in-memory verdict memo does not already answer, right after
//! UIDL. An update, once per login after the scan (all fresh blocks together), is one `EVAL`
//! of a short script that drops the UIDLs gone from the server, writes the fresh blocks and
//! renews the TTL atomically, after the client has its answer. So a login costs the cache two
//! round trips. Never one command per message or per scan window.
//!
//! # Memory
//! One lookup holds the header blocks of the messages it asks for (what the scan needs
//! anyway, decoded one by one as the reply is consumed), never the mailbox's other entries
//! (no `HGETALL`) and never bodies; a cold scan holds its fresh blocks until the one write.
//! So a login through Redis holds about the mailbox's header bytes once (measured in
//! `tests/benches/redis_store.rs`), where the embedded store holds a few `scan.window_bytes`.
//!
//! # Bounds
//! Each mailbox hash expires [`TTL`] after its last update (a mailbox nobody reads stops
//! costing memory), one update writes at most `cache.max_size`, and the Redis-wide bound is
//! Redis's own `maxmemory` with `maxmemory-policy volatile-lru`
//! (`deploy/redis/popsift-redis.conf`): only keys with a TTL — header cache hashes — are
//! ever evicted, never quarantined messages or the model, which have none.
//!
//! # Failure
//! Any error or timeout (bounded by `store.redis.command_timeout`) is logged at debug level,
//! counted in `popsift_store_errors_total{op}`, and answered as all misses; a failed update
//! is dropped. The session goes on with `TOP`.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use super::header_cache::{decode, encode, Fresh, HeaderStore, Scope, Wanted};
use super::redis::{key_part, Redis};
use crate::pop3::multiline::HeaderBlock;

/// The update in one round trip (`EVAL`, atomic). `KEYS[1]`: the mailbox hash. `ARGV`: TTL,
/// then the counts of present UIDLs, skipped UIDLs and fresh pairs, then the present UIDLs,
/// the skipped UIDLs, and (UIDL, encoded block) pairs. Answers the number of entries evicted.
const UPDATE_SCRIPT: &str = r"
local key = KEYS[1]
local np, ns, nf = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local present = {}
for i = 5, 4 + np do present[ARGV[i]] = true end
local gone = 0
for _, u in ipairs(redis.call('HKEYS', key)) do
  if not present[u] then
    redis.call('HDEL', key, u)
    gone = gone + 1
  end
end
local at = 5 + np
for i = at, at + ns - 1 do redis.call('HDEL', key, ARGV[i]) end
at = at + ns
for i = 0, nf - 1 do redis.call('HSET', key, ARGV[at + 2 * i], ARGV[at + 2 * i + 1]) end
if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, ARGV[1]) end
return gone
";

/// A mailbox's cached headers expire this long after its last login.
pub const TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug)]
pub struct RedisHeaderCache {
    redis: Arc<Redis>,
    max_size: u64,
}

impl RedisHeaderCache {
    pub fn new(redis: Arc<Redis>, max_size: u64) -> RedisHeaderCache {
        RedisHeaderCache { redis, max_size }
    }

    fn key(&self, scope: &Scope) -> String {
        self.redis.key(&format!("hc:{}:{}", key_part(&scope.upstream), key_part(&scope.user)))
    }
}

impl HeaderStore for RedisHeaderCache {
    fn lookup_blocking(&self, scope: &Scope, wanted: &[Wanted], header_limit: usize) -> Vec<Option<HeaderBlock>> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let mut p = redis::pipe();
        p.cmd("HMGET").arg(self.key(scope));
        for w in wanted {
            p.arg(w.uidl.as_bytes());
        }
        let got: Result<(Vec<Option<Vec<u8>>>,), _> = self.redis.blocking(self.redis.query("header_lookup", &p));
        match got {
            // Consumed one by one: each stored value is freed once decoded, so the lookup
            // holds the mailbox's header bytes about once, not twice.
            Ok((values,)) if values.len() == wanted.len() => values
                .into_iter()
                .zip(wanted)
                .map(|(v, w)| v.as_deref().and_then(|v| decode(v, w.size, header_limit)))
                .collect(),
            Ok((values,)) => {
                crate::metrics::store_error("header_lookup");
                debug!(asked = wanted.len(), got = values.len(), "redis HMGET answered the wrong number of values");
                vec![None; wanted.len()]
            }
            Err(e) => {
                debug!(error = %e, "header cache lookup on redis failed; scanning with TOP");
                vec![None; wanted.len()]
            }
        }
    }

    fn update_blocking(&self, scope: &Scope, fresh: &[Fresh], present: &HashSet<Arc<str>>) {
        let key = self.key(scope);
        let r = &self.redis;
        // Like the redb store: never write more than `max_size` in one update (the last
        // blocks win); an older block under a skipped UIDL must not outlive it.
        let mut keep_from = fresh.len();
        let mut bytes = 0u64;
        while keep_from > 0 {
            let f = &fresh[keep_from - 1];
            let n = super::header_cache::write_cost(f);
            if bytes + n > self.max_size {
                break;
            }
            bytes += n;
            keep_from -= 1;
        }
        // One round trip: the script evicts the UIDLs not in `present`, deletes the skipped
        // ones, writes the fresh blocks and renews the TTL, atomically.
        let mut p = redis::pipe();
        p.cmd("EVAL")
            .arg(UPDATE_SCRIPT)
            .arg(1)
            .arg(&key)
            .arg(TTL.as_secs())
            .arg(present.len())
            .arg(keep_from)
            .arg(fresh.len() - keep_from);
        for u in present {
            p.arg(u.as_bytes());
        }
        for f in &fresh[..keep_from] {
            p.arg(f.uidl.as_bytes());
        }
        for f in &fresh[keep_from..] {
            p.arg(f.uidl.as_bytes()).arg(encode(f.size, &f.headers));
        }
        let done: Result<(u64,), super::redis::RedisError> = r.blocking(r.query("header_update", &p));
        if let Ok((gone,)) = &done {
            debug!(stored = fresh.len() - keep_from, gone, "header cache updated on redis");
        }
        if let Err(e) = done {
            debug!(error = %e, "header cache update on redis failed; dropped (the next login reads those headers with TOP)");
        }
    }

    /// Entries and Redis memory (`MEMORY USAGE`) of every header cache hash under the prefix
    /// (a `SCAN`: for tests, the bench and logs, not for sessions).
    fn stats_blocking(&self) -> Option<(u64, u64)> {
        let r = &self.redis;
        let pattern = r.key("hc:*");
        r.blocking(async {
            let (mut entries, mut bytes, mut cursor) = (0u64, 0u64, 0u64);
            loop {
                let mut p = redis::pipe();
                p.cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
                let ((next, keys),): ((u64, Vec<String>),) = r.query("header_lookup", &p).await.ok()?;
                if !keys.is_empty() {
                    let mut p = redis::pipe();
                    for k in &keys {
                        p.cmd("HLEN").arg(k).cmd("MEMORY").arg("USAGE").arg(k);
                    }
                    let counts: Vec<Option<u64>> = r.query("header_lookup", &p).await.ok()?;
                    for pair in counts.chunks(2) {
                        entries += pair[0].unwrap_or(0);
                        bytes += pair.get(1).copied().flatten().unwrap_or(0);
                    }
                }
                if next == 0 {
                    return Some((entries, bytes));
                }
                cursor = next;
            }
        })
    }

    fn location(&self) -> String {
        format!("redis {}", crate::config::redacted_url(&self.redis.settings().url))
    }

    fn one_call_per_login(&self) -> bool {
        true
    }

    fn max_write_bytes(&self) -> u64 {
        self.max_size
    }
}
