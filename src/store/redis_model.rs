//! The classifier model on Redis ([`crate::classify::ModelStore`] for
//! `store.backend: redis`): `popsift train` through any instance's config teaches the model
//! every instance reads, and each `serve` sees a new generation within one poll
//! ([`crate::classify::handle::POLL`]).
//!
//! # Layout (under `<prefix>:bayes:`)
//! - `spam`, `ham`: hashes token → count (`HINCRBY`, so concurrent trainers add up);
//! - `messages`: hash digest (hex) → the same encoding as the redb store (label, token-set
//!   version, rule ids), which keeps training idempotent and `forget` exact;
//! - `meta`: hash `nspam`, `nham`, `version`, `generation`.
//!
//! A batch is one `MULTI`/`EXEC`: readers see the old or the new model, never half. Counts
//! that a racing `forget` drove below zero read as zero (the redb store clamps the same way).
//! Loading is one pipeline (`HGETALL` ×3 + `HGETALL meta`); checking for a new model is one
//! `HGET meta generation`. Errors are [`StoreError::Io`] naming Redis; `serve` keeps its
//! last snapshot, `train` reports the error and exits 2 (nothing is half-written).
use std::collections::HashMap;
use std::sync::Arc;

use super::redis::{Redis, RedisError};
use crate::classify::model::{Counts, Model};
use crate::classify::store::{decode_message, encode_message, Batch, Digest, ModelStore, StoreError, TrainedMessage};
use crate::config::{RedisSettings, StoreSettings};

#[derive(Debug)]
pub struct RedisModelStore {
    redis: Arc<Redis>,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io { path: "redis".into(), detail: e.to_string() }
}

fn hex(d: &Digest) -> String {
    crate::hex::lower(d)
}

fn unhex(s: &str) -> Option<Digest> {
    if s.len() != 64 {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, out) in d.iter_mut().enumerate() {
        *out = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

impl RedisModelStore {
    pub fn new(settings: &RedisSettings) -> Result<RedisModelStore, StoreError> {
        Ok(RedisModelStore { redis: super::redis::shared(settings).map_err(io)? })
    }

    fn key(&self, part: &str) -> String {
        self.redis.key(&format!("bayes:{part}"))
    }

    fn run<T: redis::FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, StoreError> {
        let r = &self.redis;
        r.blocking(r.query::<T>("model", p)).map_err(|e: RedisError| io(e))
    }

    /// Whether any model was trained (the redb store's "file exists").
    pub fn exists(&self) -> Result<bool, StoreError> {
        let mut p = redis::pipe();
        p.cmd("EXISTS").arg(self.key("meta"));
        let (n,): (u64,) = self.run(&p)?;
        Ok(n > 0)
    }
}

impl ModelStore for RedisModelStore {
    fn load(&self) -> Result<Model, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(self.key("spam")).cmd("HGETALL").arg(self.key("ham")).cmd("HGETALL").arg(self.key("meta"));
        type Got = (HashMap<String, i64>, HashMap<String, i64>, HashMap<String, i64>);
        let (spam, ham, meta): Got = self.run(&p)?;
        let clamp = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
        let mut tokens: HashMap<Box<str>, Counts> = HashMap::with_capacity(spam.len().max(ham.len()));
        for (t, n) in spam {
            tokens.entry(t.into_boxed_str()).or_insert(Counts { spam: 0, ham: 0 }).spam = clamp(n);
        }
        for (t, n) in ham {
            tokens.entry(t.into_boxed_str()).or_insert(Counts { spam: 0, ham: 0 }).ham = clamp(n);
        }
        tokens.retain(|_, c| c.spam > 0 || c.ham > 0);
        let get = |k: &str| meta.get(k).copied().unwrap_or(0).max(0) as u64;
        let version = match get("version") {
            0 => crate::classify::TOKENS_VERSION,
            v => v as u32,
        };
        Ok(Model::from_parts(tokens, get("nspam"), get("nham"), version).with_generation(get("generation")))
    }

    fn trained(&self) -> Result<HashMap<Digest, TrainedMessage>, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(self.key("messages"));
        let (all,): (HashMap<String, Vec<u8>>,) = self.run(&p)?;
        let mut out = HashMap::with_capacity(all.len());
        for (k, v) in all {
            match (unhex(&k), decode_message(&v)) {
                (Some(d), Some(m)) => {
                    out.insert(d, m);
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        path: self.key("messages").into(),
                        detail: format!("bad entry {k:?}"),
                    })
                }
            }
        }
        Ok(out)
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut p = redis::pipe();
        p.atomic();
        let (spam, ham, meta, msgs) = (self.key("spam"), self.key("ham"), self.key("meta"), self.key("messages"));
        for (t, &(ds, dh)) in &batch.tokens {
            if ds != 0 {
                p.cmd("HINCRBY").arg(&spam).arg(t).arg(ds).ignore();
            }
            if dh != 0 {
                p.cmd("HINCRBY").arg(&ham).arg(t).arg(dh).ignore();
            }
        }
        p.cmd("HINCRBY").arg(&meta).arg("nspam").arg(batch.nspam).ignore();
        p.cmd("HINCRBY").arg(&meta).arg("nham").arg(batch.nham).ignore();
        p.cmd("HSET").arg(&meta).arg("version").arg(crate::classify::TOKENS_VERSION).ignore();
        p.cmd("HINCRBY").arg(&meta).arg("generation").arg(1).ignore();
        for d in &batch.remove {
            p.cmd("HDEL").arg(&msgs).arg(hex(d)).ignore();
        }
        for (d, m) in &batch.add {
            p.cmd("HSET").arg(&msgs).arg(hex(d)).arg(encode_message(m)).ignore();
        }
        self.run::<()>(&p)
    }

    fn generation(&self) -> Result<u64, StoreError> {
        let mut p = redis::pipe();
        p.cmd("HGET").arg(self.key("meta")).arg("generation");
        let (g,): (Option<u64>,) = self.run(&p)?;
        Ok(g.unwrap_or(0))
    }

    fn location(&self) -> String {
        format!("redis {} ({})", crate::config::redacted_url(&self.redis.settings().url), self.key("*"))
    }
}

/// The model store the configuration names, for writing (created when missing).
pub fn open_for_writing(state_dir: &std::path::Path, store: &StoreSettings) -> Result<Box<dyn ModelStore>, StoreError> {
    match &store.redis {
        Some(r) => Ok(Box::new(RedisModelStore::new(r)?)),
        None => Ok(Box::new(crate::classify::RedbStore::open(state_dir)?)),
    }
}

/// The model store the configuration names, for reading: `None` when no model was
/// trained yet (a reader never creates one).
pub fn open_for_reading(
    state_dir: &std::path::Path,
    store: &StoreSettings,
    wait: std::time::Duration,
) -> Result<Option<Box<dyn ModelStore>>, StoreError> {
    match &store.redis {
        Some(r) => {
            let s = RedisModelStore::new(r)?;
            Ok(if s.exists()? { Some(Box::new(s)) } else { None })
        }
        None => {
            Ok(crate::classify::RedbStore::open_existing(state_dir, wait)?.map(|s| Box::new(s) as Box<dyn ModelStore>))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn digests_round_trip_through_hex() {
        let d: super::Digest = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(super::unhex(&super::hex(&d)), Some(d));
        assert_eq!(super::unhex("zz"), None);
        assert_eq!(super::unhex(&"g".repeat(64)), None);
    }
}
