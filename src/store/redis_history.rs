//! The decision history and the review page's per-mailbox state on Redis
//! ([`super::history::History`] for `store.backend: redis`): a decision recorded, a message
//! released or a hidden message shown through one instance is seen by every other (and by
//! the review page of any of them).
//!
//! # Layout (under `<prefix>:h:`, `<mb>` = the [`super::history::mailbox_key`] escaped by
//! [`super::redis::key_part`], so it is upstream + user and no two mailboxes share a key)
//! - `d:<mb>`: sorted set of decisions, score = sequence (microseconds, as the redb store),
//!   member = `<sequence, 20 digits> <JSON>` (unique, and one `ZREVRANGEBYSCORE` answers a
//!   page of decisions without a second read);
//! - `u:<mb>`: hash UIDL → `<sequence> <fingerprint>` of its newest decision (a repeat at the
//!   next login is recognised without reading decisions);
//! - `shown:<mb>`: hash UIDL → time the owner said "Not spam" on a hidden message;
//! - `rel:<mb>`: hash released UIDL → JSON [`Released`];
//! - `mailboxes`: set of mailbox keys with decisions (the admin's list); a member whose
//!   `d:` key expired is removed when the list is next read;
//! - `seq`: the last sequence handed out, shared by every instance (see below).
//!
//! # Sequences are allocated by Redis
//! A decision's id is (mailbox, sequence), used by the review page's "Not spam"/"Spam"
//! forms. A per-process clock would give two instances recording the same mailbox at once
//! equal sequences, and a form could then act on the other message. So each mailbox batch
//! reserves its sequences in Redis with [`SEQ_SCRIPT`] (in the batch's first round trip, so
//! no extra one): at least the current time in microseconds (the scores stay times, which
//! the age trim and the rule counts use), and always above every sequence handed out before.
//!
//! # Bounded (as the redb store)
//! Every record trims `d:<mb>` by age (`ZREMRANGEBYSCORE` below `history.max_days`) and by
//! count (`ZREMRANGEBYRANK` beyond `history.max_per_mailbox`) in the same transaction, and
//! gives `d:` and `u:` a TTL of `max_days` (a mailbox nobody logs into stops costing
//! memory). `u:` entries older than the oldest kept decision are ignored (so a message whose
//! decision aged out is recorded again) and swept when the hash outgrows twice the bound.
//! `shown:` and `rel:` have no TTL: they are what the owner chose, and `maxmemory-policy
//! volatile-lru` never evicts them.
//!
//! # Round trips
//! A login's record: one pipeline of reads (`HMGET` of the UIDLs, the oldest kept sequence,
//! `HLEN`), one `MULTI`/`EXEC` of writes. A login's overrides: one pipeline (`HGETALL shown`,
//! `HGETALL rel`). [`History::has_overrides`] cannot know from memory what another instance
//! wrote, so it answers `true` and the login pays that one round trip.
//!
//! # Durable where it matters
//! A release or a "show" is state the owner chose: it is written only when Redis is durable
//! (`appendonly yes`, `appendfsync always`, asked as the quarantine does); otherwise it
//! fails with the reason and nothing changes (the review page says so; the quarantine copy
//! stays). Decisions are a log for review: written whatever the durability.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::history::{decode, fingerprint, Decision, History, HistoryError, HistorySettings, Query, Released};
use super::redis::{key_part, Durability, Redis};
use crate::config::RedisSettings;

/// Decisions read per page when a query filters.
const PAGE: usize = 500;

/// Reserves `ARGV[3]` sequences: answers the first, `max(now, last + 1)` with `ARGV[1]` =
/// now in microseconds and `ARGV[2]` = now + count - 1 (computed by the caller: the counter
/// is only ever written by `SET` of a decimal string or by `INCRBY`, never from a Lua float,
/// whose string form could be `1.8e+15`).
pub const SEQ_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last < now then
  redis.call('SET', KEYS[1], ARGV[2])
  return now
end
return redis.call('INCRBY', KEYS[1], ARGV[3]) - tonumber(ARGV[3]) + 1
"#;

/// A record's first round trip: the UIDLs' known decisions, the oldest kept (member,
/// score), the UIDL index size, and the batch's first sequence.
type FirstReads = (Vec<Option<String>>, Vec<(String, f64)>, u64, u64);

/// Removes from the set `KEYS[1]` each member `ARGV[i]` whose decisions key `KEYS[i + 1]`
/// does not exist, atomically (an instance recording into it meanwhile keeps it listed).
const PRUNE_SCRIPT: &str = r#"
local gone = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    gone = gone + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return gone
"#;

pub struct RedisHistory {
    redis: Arc<Redis>,
    settings: HistorySettings,
}

impl std::fmt::Debug for RedisHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHistory").field("redis", &self.redis).finish()
    }
}

fn err(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Db { path: "redis".into(), detail: e.to_string() }
}

/// A sorted-set member: the sequence, then the JSON.
fn member(seq: u64, d: &Decision) -> Result<String, HistoryError> {
    let json = serde_json::to_string(d).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
    Ok(format!("{seq:020} {json}"))
}

fn unmember(m: &str) -> Result<(u64, Decision), HistoryError> {
    let (seq, json) = m.split_once(' ').ok_or_else(|| HistoryError::Corrupt(format!("bad member {m:.40?}")))?;
    let seq = seq.parse().map_err(|_| HistoryError::Corrupt(format!("bad sequence {seq:?}")))?;
    Ok((seq, decode(json.as_bytes())?))
}

impl RedisHistory {
    pub fn new(settings: &RedisSettings, history: HistorySettings) -> Result<RedisHistory, HistoryError> {
        Ok(RedisHistory { redis: super::redis::shared(settings).map_err(err)?, settings: history })
    }

    fn key(&self, kind: &str, mailbox: &str) -> String {
        self.redis.key(&format!("h:{kind}:{}", key_part(mailbox)))
    }

    fn run<T: redis::FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, HistoryError> {
        let r = &self.redis;
        r.blocking(r.query::<T>("history", p)).map_err(err)
    }

    /// `now` (seconds) in microseconds, with the clock's current sub-second part: the floor
    /// of the sequences [`SEQ_SCRIPT`] hands out.
    fn now_micros(now: u64) -> u64 {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_micros()))
            .unwrap_or(0);
        now.saturating_mul(1_000_000).saturating_add(micros)
    }

    /// Fails unless Redis is durable (see the module doc).
    fn require_durable(&self) -> Result<(), HistoryError> {
        let r = &self.redis;
        match r.blocking(r.durability()).map_err(err)? {
            Durability::Durable => Ok(()),
            Durability::NotDurable(why) => Err(err(format!(
                "redis is not durable ({why}; needs appendonly yes and appendfsync always): not saved"
            ))),
        }
    }

    /// Decisions of one mailbox below `before`, newest first, kept by `q`, at most `limit`.
    fn mailbox_decisions(
        &self,
        mailbox: &str,
        q: &Query,
        needle: Option<&str>,
        before: u64,
    ) -> Result<Vec<(u64, Decision)>, HistoryError> {
        let key = self.key("d", mailbox);
        let mut out = Vec::new();
        let mut offset = 0usize;
        loop {
            let mut p = redis::pipe();
            p.cmd("ZREVRANGEBYSCORE")
                .arg(&key)
                .arg(format!("({before}"))
                .arg("-inf")
                .arg("LIMIT")
                .arg(offset)
                .arg(PAGE);
            let (page,): (Vec<String>,) = self.run(&p)?;
            let n = page.len();
            for m in page {
                let (seq, d) = unmember(&m)?;
                if q.keeps(&d, needle) {
                    out.push((seq, d));
                    if out.len() >= q.limit {
                        return Ok(out);
                    }
                }
            }
            if n < PAGE {
                return Ok(out);
            }
            offset += n;
        }
    }
}

impl History for RedisHistory {
    fn record(&self, batch: &[Decision], now: u64) -> Result<usize, HistoryError> {
        let mut by_mailbox: Vec<(&str, Vec<&Decision>)> = Vec::new();
        for d in batch {
            match by_mailbox.iter_mut().find(|(m, _)| *m == d.mailbox) {
                Some((_, v)) => v.push(d),
                None => by_mailbox.push((&d.mailbox, vec![d])),
            }
        }
        let cutoff = now.saturating_sub(self.settings.max_days * 86_400).saturating_mul(1_000_000);
        let ttl = (self.settings.max_days * 86_400).max(1);
        let mut written = 0;
        for (mailbox, ds) in by_mailbox {
            let (dk, uk) = (self.key("d", mailbox), self.key("u", mailbox));
            // Round trip 1: what is known of these UIDLs, the oldest decision kept, the size
            // of the UIDL index, and the batch's sequences (one per decision at most; the
            // repeats skipped below leave gaps, which cost nothing).
            let mut p = redis::pipe();
            p.cmd("HMGET").arg(&uk);
            for d in &ds {
                p.arg(&d.uidl);
            }
            p.cmd("ZRANGE").arg(&dk).arg(0).arg(0).arg("WITHSCORES").cmd("HLEN").arg(&uk);
            let floor = Self::now_micros(now);
            let count = ds.len() as u64;
            p.cmd("EVAL")
                .arg(SEQ_SCRIPT)
                .arg(1)
                .arg(self.redis.key("h:seq"))
                .arg(floor)
                .arg(floor + count - 1)
                .arg(count);
            let (known, oldest, uidls, first): FirstReads = self.run(&p)?;
            let mut next_seq = first;
            let oldest = oldest.first().map_or(u64::MAX, |(_, s)| *s as u64).max(cutoff);
            // Round trip 2: one transaction of writes.
            let mut p = redis::pipe();
            p.atomic();
            let mut seen: HashMap<&str, u64> = HashMap::new();
            for (d, prev) in ds.iter().zip(known) {
                let fp = fingerprint(d);
                let prev = prev.as_deref().and_then(|v| {
                    let (s, f) = v.split_once(' ')?;
                    Some((s.parse::<u64>().ok()?, f.parse::<u64>().ok()?))
                });
                let repeat = seen.get(d.uidl.as_str()).copied().or(prev.filter(|(s, _)| *s >= oldest).map(|(_, f)| f));
                if repeat == Some(fp) {
                    continue;
                }
                let seq = next_seq;
                next_seq += 1;
                p.cmd("ZADD").arg(&dk).arg(seq).arg(member(seq, d)?).ignore();
                p.cmd("HSET").arg(&uk).arg(&d.uidl).arg(format!("{seq} {fp}")).ignore();
                seen.insert(&d.uidl, fp);
                written += 1;
            }
            if seen.is_empty() {
                continue;
            }
            p.cmd("ZREMRANGEBYSCORE").arg(&dk).arg("-inf").arg(format!("({cutoff}")).ignore();
            let keep = self.settings.max_per_mailbox.max(1);
            p.cmd("ZREMRANGEBYRANK").arg(&dk).arg(0).arg(-(keep as i64) - 1).ignore();
            p.cmd("EXPIRE").arg(&dk).arg(ttl).ignore();
            p.cmd("EXPIRE").arg(&uk).arg(ttl).ignore();
            p.cmd("SADD").arg(self.redis.key("h:mailboxes")).arg(mailbox).ignore();
            self.run::<()>(&p)?;
            if uidls > 2 * keep {
                self.sweep_uidls(&uk, oldest)?;
            }
        }
        Ok(written)
    }

    fn decisions(&self, q: &Query) -> Result<Vec<(u64, Decision)>, HistoryError> {
        let needle = q.search.as_deref().map(str::to_lowercase).filter(|s| !s.is_empty());
        let before = q.before.unwrap_or(u64::MAX);
        match &q.mailbox {
            Some(mb) => self.mailbox_decisions(mb, q, needle.as_deref(), before),
            None => {
                let mut out = Vec::new();
                for mb in self.mailboxes()? {
                    out.extend(self.mailbox_decisions(&mb, q, needle.as_deref(), before)?);
                }
                out.sort_by_key(|b| std::cmp::Reverse(b.0));
                out.truncate(q.limit);
                Ok(out)
            }
        }
    }

    fn decision(&self, mailbox: &str, seq: u64) -> Result<Option<Decision>, HistoryError> {
        let mut p = redis::pipe();
        p.cmd("ZRANGEBYSCORE").arg(self.key("d", mailbox)).arg(seq).arg(seq);
        let (found,): (Vec<String>,) = self.run(&p)?;
        found.first().map(|m| unmember(m).map(|(_, d)| d)).transpose()
    }

    fn mailboxes(&self) -> Result<Vec<String>, HistoryError> {
        let mut p = redis::pipe();
        p.cmd("SMEMBERS").arg(self.redis.key("h:mailboxes"));
        let (mut all,): (Vec<String>,) = self.run(&p)?;
        // A mailbox whose decisions all expired leaves the set lazily: skipped here, and
        // removed from the set (checked again atomically: another instance may be recording
        // into it right now).
        if !all.is_empty() {
            let mut p = redis::pipe();
            for mb in &all {
                p.cmd("EXISTS").arg(self.key("d", mb));
            }
            let exists: Vec<u64> = self.run(&p)?;
            let (live, dead): (Vec<_>, Vec<_>) =
                all.into_iter().zip(exists.into_iter().chain(std::iter::repeat(1))).partition(|(_, e)| *e > 0);
            all = live.into_iter().map(|(mb, _)| mb).collect();
            if !dead.is_empty() {
                let mut p = redis::pipe();
                p.cmd("EVAL").arg(PRUNE_SCRIPT).arg(dead.len() + 1).arg(self.redis.key("h:mailboxes"));
                for (mb, _) in &dead {
                    p.arg(self.key("d", mb));
                }
                for (mb, _) in &dead {
                    p.arg(mb);
                }
                let _: (u64,) = self.run(&p)?;
            }
        }
        all.sort();
        Ok(all)
    }

    fn rule_counts(&self, mailbox: Option<&str>, now: u64) -> Result<Vec<(String, [u64; 3])>, HistoryError> {
        let limits = [1u64, 7, 30].map(|d| now.saturating_sub(d * 86_400));
        let mailboxes = match mailbox {
            Some(m) => vec![m.to_string()],
            None => self.mailboxes()?,
        };
        let mut counts: std::collections::BTreeMap<String, [u64; 3]> = Default::default();
        for mb in mailboxes {
            let mut p = redis::pipe();
            p.cmd("ZRANGEBYSCORE").arg(self.key("d", &mb)).arg(limits[2].saturating_mul(1_000_000)).arg("+inf");
            let (all,): (Vec<String>,) = self.run(&p)?;
            for m in all {
                let (_, d) = unmember(&m)?;
                for r in &d.rules {
                    let c = counts.entry(r.clone()).or_default();
                    for (slot, &limit) in c.iter_mut().zip(&limits) {
                        if d.time >= limit {
                            *slot += 1;
                        }
                    }
                }
            }
        }
        Ok(counts.into_iter().collect())
    }

    fn show(&self, mailbox: &str, uidl: &str, now: u64) -> Result<(), HistoryError> {
        self.require_durable()?;
        let mut p = redis::pipe();
        p.cmd("HSET").arg(self.key("shown", mailbox)).arg(uidl).arg(now).ignore();
        self.run(&p)
    }

    fn shown(&self, mailbox: &str) -> Result<HashSet<String>, HistoryError> {
        let mut p = redis::pipe();
        p.cmd("HKEYS").arg(self.key("shown", mailbox));
        let (all,): (Vec<String>,) = self.run(&p)?;
        Ok(all.into_iter().collect())
    }

    fn release(&self, mailbox: &str, r: &Released) -> Result<(), HistoryError> {
        let json = serde_json::to_string(r).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        self.require_durable()?;
        let mut p = redis::pipe();
        p.cmd("HSET").arg(self.key("rel", mailbox)).arg(&r.uidl).arg(json).ignore();
        self.run(&p)
    }

    fn released(&self, mailbox: &str) -> Result<Vec<Released>, HistoryError> {
        let mut p = redis::pipe();
        p.cmd("HVALS").arg(self.key("rel", mailbox));
        let (all,): (Vec<String>,) = self.run(&p)?;
        let mut out: Vec<Released> = all
            .iter()
            .map(|j| serde_json::from_str(j).map_err(|e| HistoryError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?;
        // Stable order (the redb store's: by UIDL), whichever order the hash keeps.
        out.sort_by(|a, b| a.uidl.cmp(&b.uidl));
        Ok(out)
    }

    fn unrelease(&self, mailbox: &str, uidl: &str) -> Result<(), HistoryError> {
        let mut p = redis::pipe();
        p.cmd("HDEL").arg(self.key("rel", mailbox)).arg(uidl).ignore();
        self.run(&p)
    }

    /// Another instance may have written overrides: always asked (one round trip).
    fn has_overrides(&self, _mailbox: &str) -> bool {
        true
    }

    fn overrides_of(&self, mailbox: &str) -> Result<(HashSet<String>, Vec<Released>), HistoryError> {
        let mut p = redis::pipe();
        p.cmd("HKEYS").arg(self.key("shown", mailbox)).cmd("HVALS").arg(self.key("rel", mailbox));
        let (shown, rel): (Vec<String>, Vec<String>) = self.run(&p)?;
        let mut released: Vec<Released> = rel
            .iter()
            .map(|j| serde_json::from_str(j).map_err(|e| HistoryError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?;
        released.sort_by(|a, b| a.uidl.cmp(&b.uidl));
        Ok((shown.into_iter().collect(), released))
    }
}

impl RedisHistory {
    /// Drops `u:` entries older than the oldest kept decision (rare: the hash outgrew twice
    /// the per-mailbox bound).
    fn sweep_uidls(&self, uk: &str, oldest: u64) -> Result<(), HistoryError> {
        let mut p = redis::pipe();
        p.cmd("HGETALL").arg(uk);
        let (all,): (HashMap<String, String>,) = self.run(&p)?;
        let stale: Vec<&String> = all
            .iter()
            .filter(|(_, v)| v.split_once(' ').and_then(|(s, _)| s.parse::<u64>().ok()).map_or(true, |s| s < oldest))
            .map(|(k, _)| k)
            .collect();
        if stale.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        for chunk in stale.chunks(1000) {
            p.cmd("HDEL").arg(uk).arg(chunk).ignore();
        }
        self.run(&p)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn members_round_trip_and_sort_by_sequence() {
        let d = super::Decision { uidl: "u 1".into(), subject: "a b".into(), ..Default::default() };
        let m = super::member(42, &d).unwrap();
        assert_eq!(super::unmember(&m).unwrap(), (42, d.clone()));
        assert!(super::member(9, &d).unwrap() < super::member(10, &d).unwrap());
        assert!(super::unmember("garbage").is_err());
    }
}
