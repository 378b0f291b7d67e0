//! The quarantine on Redis ([`super::quarantine::QuarantineStore`] for
//! `store.backend: redis`): a message quarantined through one instance is listed, shown and
//! restored through any other (and by `popsift quarantine` with the same `--config`).
//!
//! # Layout
//! - `<prefix>:q:msg:<id>`: the stored bytes, exactly what the Maildir store would write
//!   (popsift's `X-Popsift-*` fields, then the message), so `show`, `original` and the
//!   digest work the same;
//! - `<prefix>:q:all`: sorted set of ids by quarantine time (`list`, `find` by prefix);
//! - `<prefix>:q:user:<user>`: hash id → `<octets> <digest> <upstream>` (escaped), the
//!   user's quota and the "already quarantined" digests in one `HGETALL`;
//! - `<prefix>:q:owner`: hash id → the user's key part, so `remove` finds the user hash
//!   from what was stored, not from the (cleaned, trimmed) `X-Popsift-User` field.
//!
//! `show` and `remove` of a full id read that one message (one `GET`); only an id that is
//! not one (a prefix, as the CLI accepts) is looked for in the index, with `ZSCAN MATCH`.
//!
//! None of these keys has a TTL, so `maxmemory-policy volatile-lru` never evicts them.
//!
//! # Durability (RFC 1939 §6: a DELE is final once the session reaches UPDATE)
//! A copy is held in memory while it streams in (it is bounded by `quarantine.max_size`
//! and the LIST size, see [`crate::config::QuarantineSettings::copy_limit`]). At commit,
//! popsift first asks `CONFIG GET appendonly`/`appendfsync` (one round trip); unless they
//! are `yes`/`always` the commit fails, and the message is handled as
//! `quarantine.on_failure` (hidden by default, never deleted). Then one `MULTI`/`EXEC` writes
//! the three keys; with `appendfsync always` Redis fsyncs its AOF before it answers `EXEC`,
//! so an `OK` means the copy is on disk. A timeout or error at any step is a failed commit.
use std::sync::Arc;

use tracing::warn;

use super::quarantine::{
    copy_head, describe, header_value, new_id, Copy, CopySink, Listed, Meta, QuarantineError, QuarantineStore, Usage,
    DIGEST_LEN,
};
use super::redis::{key_part, Durability, Redis, RedisError};
use crate::config::RedisSettings;

/// How much of each message `list` reads (popsift's fields and the usual headers).
const LIST_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct RedisQuarantine {
    /// `Err` when the URL could not be used (then every operation fails: nothing deleted).
    redis: Result<Arc<Redis>, RedisError>,
    location: String,
}

fn failed(e: impl std::fmt::Display) -> QuarantineError {
    QuarantineError::Io { path: "redis".into(), source: std::io::Error::other(e.to_string()) }
}

impl RedisQuarantine {
    pub fn new(settings: &RedisSettings) -> RedisQuarantine {
        RedisQuarantine {
            redis: super::redis::shared(settings),
            location: format!("redis {}", crate::config::redacted_url(&settings.url)),
        }
    }

    fn redis(&self) -> Result<&Arc<Redis>, QuarantineError> {
        self.redis.as_ref().map_err(failed)
    }

    fn msg_key(r: &Redis, id: &str) -> String {
        r.key(&format!("q:msg:{id}"))
    }

    fn user_key(r: &Redis, user: &str) -> String {
        r.key(&format!("q:user:{}", key_part(user)))
    }

    fn all_key(r: &Redis) -> String {
        r.key("q:all")
    }

    /// Every id, oldest first (for `list`).
    fn ids(&self) -> Result<Vec<(String, u64)>, QuarantineError> {
        let r = self.redis()?;
        let mut p = redis::pipe();
        p.cmd("ZRANGE").arg(Self::all_key(r)).arg(0).arg(-1).arg("WITHSCORES");
        let (ids,): (Vec<(String, f64)>,) = r.blocking(r.query("quarantine", &p)).map_err(failed)?;
        Ok(ids.into_iter().map(|(id, t)| (id, t.max(0.0) as u64)).collect())
    }

    fn owner_key(r: &Redis) -> String {
        r.key("q:owner")
    }

    /// The one id `id` names: a unique prefix of a stored id, looked for with `ZSCAN MATCH`
    /// (only when `id` is not itself a stored id, which the callers try first).
    fn find_prefix(&self, id: &str) -> Result<String, QuarantineError> {
        if id.is_empty() {
            return Err(QuarantineError::NotFound(id.to_string()));
        }
        let r = self.redis()?;
        let pattern = format!("{}*", glob_escape(id));
        let mut found: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut p = redis::pipe();
            p.cmd("ZSCAN").arg(Self::all_key(r)).arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let ((next, pairs),): ((u64, Vec<String>),) = r.blocking(r.query("quarantine", &p)).map_err(failed)?;
            // ZSCAN answers member, score, member, score, ...
            for m in pairs.into_iter().step_by(2) {
                if m.starts_with(id) && !found.contains(&m) {
                    found.push(m);
                }
            }
            if found.len() > 1 {
                break;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            _ => Err(QuarantineError::NotFound(id.to_string())),
        }
    }

    /// The stored bytes of exactly `id`, `None` when there is no such message (one `GET`).
    fn get(&self, id: &str) -> Result<Option<Vec<u8>>, QuarantineError> {
        let r = self.redis()?;
        let mut p = redis::pipe();
        p.cmd("GET").arg(Self::msg_key(r, id));
        let (got,): (Option<Vec<u8>>,) = r.blocking(r.query("quarantine", &p)).map_err(failed)?;
        Ok(got)
    }

    /// Removes the message `id` (a full id) whose stored bytes are `stored`: one transaction.
    fn remove_found(&self, id: &str, stored: &[u8]) -> Result<(), QuarantineError> {
        let r = self.redis()?;
        let mut p = redis::pipe();
        p.cmd("HGET").arg(Self::owner_key(r)).arg(id);
        let (owner,): (Option<String>,) = r.blocking(r.query("quarantine", &p)).map_err(failed)?;
        // Copies made before the owner hash existed: the user from the stored field.
        let user_key = match owner {
            Some(part) => r.key(&format!("q:user:{part}")),
            None => Self::user_key(r, &header_value(stored, "X-Popsift-User")),
        };
        let mut p = redis::pipe();
        p.atomic()
            .cmd("DEL")
            .arg(Self::msg_key(r, id))
            .ignore()
            .cmd("ZREM")
            .arg(Self::all_key(r))
            .arg(id)
            .ignore()
            .cmd("HDEL")
            .arg(user_key)
            .arg(id)
            .ignore()
            .cmd("HDEL")
            .arg(Self::owner_key(r))
            .arg(id)
            .ignore();
        r.blocking(r.query::<()>("quarantine", &p)).map_err(failed)
    }

    /// The stored bytes of exactly `id` (never a prefix: the review page and the serving of
    /// released messages must not reach another message whose id starts the same way).
    fn lookup_exact(&self, id: &str) -> Result<(String, Vec<u8>), QuarantineError> {
        if id.is_empty() {
            return Err(QuarantineError::NotFound(id.to_string()));
        }
        let bytes = self.get(id)?.ok_or_else(|| QuarantineError::NotFound(id.to_string()))?;
        Ok((id.to_string(), bytes))
    }

    /// The full id and stored bytes `id` names (an id, or a unique prefix of one).
    fn lookup(&self, id: &str) -> Result<(String, Vec<u8>), QuarantineError> {
        if id.is_empty() {
            return Err(QuarantineError::NotFound(id.to_string()));
        }
        if let Some(bytes) = self.get(id)? {
            return Ok((id.to_string(), bytes));
        }
        let full = self.find_prefix(id)?;
        let bytes = self.get(&full)?.ok_or_else(|| QuarantineError::NotFound(id.to_string()))?;
        Ok((full, bytes))
    }

    /// Writes a finished copy (see the module doc): durability check, then one transaction.
    fn commit(
        &self,
        id: &str,
        user: &str,
        upstream: &str,
        digest: &str,
        stored: &[u8],
    ) -> Result<String, QuarantineError> {
        let r = self.redis()?;
        let msg_key = Self::msg_key(r, id);
        r.blocking(async {
            match r.durability().await {
                Ok(Durability::Durable) => {}
                Ok(Durability::NotDurable(why)) => {
                    return Err(failed(format!(
                        "redis is not durable ({why}; needs appendonly yes and appendfsync always): not copied"
                    )))
                }
                Err(e) => return Err(failed(e)),
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let mut p = redis::pipe();
            p.atomic()
                .cmd("SET")
                .arg(&msg_key)
                .arg(stored)
                .ignore()
                .cmd("ZADD")
                .arg(Self::all_key(r))
                .arg(now.as_secs())
                .arg(id)
                .ignore()
                .cmd("HSET")
                .arg(Self::user_key(r, user))
                .arg(id)
                .arg(format!("{} {digest} {}", stored.len(), key_part(upstream)))
                .ignore()
                .cmd("HSET")
                .arg(Self::owner_key(r))
                .arg(id)
                .arg(key_part(user))
                .ignore();
            r.query::<()>("quarantine", &p).await.map_err(failed)
        })?;
        Ok(msg_key)
    }
}

/// A copy in memory until commit.
struct MemorySink {
    store: Arc<RedisQuarantine>,
    id: String,
    user: String,
    upstream: String,
    stored: Vec<u8>,
    digest_at: usize,
}

impl CopySink for MemorySink {
    fn write(&mut self, chunk: &[u8]) -> Result<(), QuarantineError> {
        self.stored.extend_from_slice(chunk);
        Ok(())
    }

    fn commit(mut self: Box<Self>, digest: &str, _len: u64) -> Result<std::path::PathBuf, QuarantineError> {
        if digest.len() != DIGEST_LEN {
            return Err(failed("bad digest length"));
        }
        self.stored[self.digest_at..self.digest_at + DIGEST_LEN].copy_from_slice(digest.as_bytes());
        let key = self.store.commit(&self.id, &self.user, &self.upstream, digest, &self.stored)?;
        Ok(format!("redis:{key}").into())
    }
}

impl QuarantineStore for RedisQuarantine {
    fn begin(&self, meta: &Meta) -> Result<Copy, QuarantineError> {
        // Cheap checks first: a store known to be down or not durable fails now, before
        // the message is fetched.
        let r = self.redis()?;
        if r.is_down() {
            return Err(failed("redis unreachable (reconnecting)"));
        }
        // Not known to be durable: ask now (one round trip), so a server made durable at run
        // time is used at once, and a known non-durable one costs no RETR.
        if r.last_durability() != Some(Durability::Durable) {
            match r.blocking(r.durability()) {
                Ok(Durability::Durable) => {}
                Ok(Durability::NotDurable(why)) => {
                    return Err(failed(format!(
                        "redis is not durable ({why}; needs appendonly yes and appendfsync always): not copied"
                    )))
                }
                Err(e) => return Err(failed(e)),
            }
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        let (head, digest_at) = copy_head(meta, now);
        let mut stored = Vec::with_capacity(head.len() + (meta.size as usize).min(64 << 20));
        stored.extend_from_slice(head.as_bytes());
        let me = Arc::new(RedisQuarantine { redis: self.redis.clone(), location: self.location.clone() });
        Ok(Copy::new(Box::new(MemorySink {
            store: me,
            id: new_id(),
            user: meta.user.clone(),
            upstream: meta.upstream.clone(),
            stored,
            digest_at,
        })))
    }

    fn usage(&self, user: &str, upstream: &str) -> Usage {
        let got = self.redis().and_then(|r| {
            let mut p = redis::pipe();
            p.cmd("HGETALL").arg(Self::user_key(r, user));
            r.blocking(r.query::<(Vec<(String, String)>,)>("quarantine", &p)).map_err(failed)
        });
        let (entries,) = match got {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "quarantine usage unknown (redis); taking the quota as full, so nothing is deleted");
                return Usage { messages: u64::MAX, bytes: u64::MAX, digests: Default::default() };
            }
        };
        let mut out = Usage::default();
        let up = key_part(upstream);
        for (_, v) in entries {
            let mut parts = v.splitn(3, ' ');
            let (Some(len), Some(digest), Some(from)) = (parts.next(), parts.next(), parts.next()) else { continue };
            out.messages += 1;
            out.bytes += len.parse::<u64>().unwrap_or(0);
            if from == up && digest.len() == DIGEST_LEN {
                out.digests.insert(digest.to_string());
            }
        }
        out
    }

    fn list(&self) -> Result<Vec<Listed>, QuarantineError> {
        let r = self.redis()?;
        let ids = self.ids()?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let mut p = redis::pipe();
            for (id, _) in chunk {
                p.cmd("GETRANGE").arg(Self::msg_key(r, id)).arg(0).arg(LIST_HEAD - 1);
            }
            let heads: Vec<Vec<u8>> = r.blocking(r.query("quarantine", &p)).map_err(failed)?;
            for ((id, _), head) in chunk.iter().zip(heads) {
                if !head.is_empty() {
                    out.push(describe(id, &head));
                }
            }
        }
        out.sort_by(|a, b| (a.quarantined_at, &a.id).cmp(&(b.quarantined_at, &b.id)));
        Ok(out)
    }

    fn show(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        self.lookup(id).map(|(_, bytes)| bytes)
    }

    fn show_exact(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        self.lookup_exact(id).map(|(_, bytes)| bytes)
    }

    fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        let (id, stored) = self.lookup(id)?;
        self.remove_found(&id, &stored)
    }

    fn remove_exact(&self, id: &str) -> Result<(), QuarantineError> {
        let (id, stored) = self.lookup_exact(id)?;
        self.remove_found(&id, &stored)
    }

    fn location(&self) -> String {
        self.location.clone()
    }
}

/// `s` with Redis glob specials (`* ? [ ] \\`) escaped, for a literal `MATCH` prefix.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_specials_are_escaped() {
        assert_eq!(super::glob_escape("a*b?[c]\\d"), "a\\*b\\?\\[c\\]\\\\d");
        assert_eq!(super::glob_escape("1764.M1P2.host"), "1764.M1P2.host");
    }
}
