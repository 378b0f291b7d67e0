//! The decision history: what popsift decided for each message at login, kept so the review
//! page ([`crate::ui`]) can show a mailbox's owner what was done and let them undo it.
//!
//! A [`Decision`] holds the message's identity (mailbox, UIDL, size), a little of its
//! headers (From, Subject, Date: enough to find it and to train on it later), the verdict
//! (score, rules, bayes probability, action) and what was applied (disposition, dry run).
//! Never a body. The review page's own state lives here too: "show this hidden message"
//! overrides and the messages released from quarantine back into a mailbox.
//!
//! # Bounded
//! Per mailbox at most `history.max_per_mailbox` decisions and none older than
//! `history.max_days`; both are enforced on every write. One message seen at many logins is
//! one decision: a write whose (UIDL, size, action, disposition) equals the newest stored
//! decision for that UIDL is skipped, so a mailbox of 2,000 unchanged messages costs
//! nothing at the next login.
//!
//! # Never blocks a session
//! Sessions hand their login's decisions to a [`Recorder`] with `try_send` into a bounded
//! queue; one writer thread commits each batch in one transaction. A full queue (a slow
//! disk) drops the batch and counts it (`popsift_history_dropped_total`): the history is
//! for review, the mail flow never waits for it.
//!
//! The store is a trait ([`History`]); [`RedbHistory`] is the embedded one,
//! `<state_dir>/history.redb`, and [`super::redis_history::RedisHistory`] the shared one
//! (`store.backend: redis`), so every instance behind a balancer sees one history.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

/// File name under the state directory.
pub const FILE_NAME: &str = "history.redb";

/// (mailbox, sequence) → [`Decision`] in the binary form of [`super::history_codec`] (records
/// written before it are JSON, and still read). Sequences are microseconds since the epoch,
/// made unique per write, so a range scan is in time order.
const DECISIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("decisions");
/// (mailbox, UIDL) → (sequence, [`fingerprint`]) of its newest decision: a repeat is
/// recognised without reading the decision itself.
const BY_UIDL: TableDefinition<(&str, &str), (u64, u64)> = TableDefinition::new("by_uidl");

/// FNV-1a over what makes a decision new: size, action, disposition, dry run.
pub(crate) fn fingerprint(d: &Decision) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let size = d.size.to_le_bytes();
    let parts: [&[u8]; 5] = [&size, d.action.as_bytes(), b"\0", d.disposition.as_bytes(), &[u8::from(d.dry_run)]];
    for b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
/// (mailbox, UIDL) → time the owner said "Not spam" on a hidden message: shown from then on.
const SHOWN: TableDefinition<(&str, &str), u64> = TableDefinition::new("shown");
/// (mailbox, released UIDL) → JSON [`Released`].
const RELEASED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("released");

/// Checked `history:` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    pub enabled: bool,
    pub max_days: u64,
    pub max_per_mailbox: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        HistorySettings { enabled: true, max_days: 30, max_per_mailbox: 10_000 }
    }
}

/// The key naming one mailbox: the upstream as configured and the login's user name, byte
/// for byte (the same identity as the quarantine folder and the header cache).
pub fn mailbox_key(upstream: &str, user: &str) -> String {
    format!("{user}\u{1f}{upstream}")
}

/// The (user, upstream) of a [`mailbox_key`].
pub fn split_mailbox(key: &str) -> (&str, &str) {
    key.split_once('\u{1f}').unwrap_or((key, ""))
}

/// One verdict applied at login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Decision {
    /// Unix seconds.
    pub time: u64,
    pub mailbox: String,
    pub uidl: String,
    /// LIST size.
    pub size: u64,
    pub from: String,
    pub subject: String,
    pub score: f64,
    pub threshold: f64,
    pub rules: Vec<String>,
    /// The classifier's spam probability, when a model was consulted.
    pub bayes: Option<f64>,
    /// `none`, `allow`, `tag`, `hide`, `quarantine`, `delete`.
    pub action: String,
    /// What the view did: `visible`, `hidden`, `condemned`.
    pub disposition: String,
    pub dry_run: bool,
    pub spam: bool,
    /// What each fired rule matched, bounded (see [`crate::rules::explain`]). Absent in
    /// records written before it was kept.
    #[serde(default)]
    pub matched: Vec<crate::rules::explain::Matched>,
    /// The tokens that weighed most in `bayes` (see [`crate::classify::explain`]).
    #[serde(default)]
    pub clues: Vec<crate::classify::explain::Clue>,
}

impl Decision {
    /// The header block recorded for this decision, for training when the message itself
    /// is gone from the server.
    pub fn header_block(&self) -> Vec<u8> {
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        format!("From: {}\r\nSubject: {}\r\n\r\n", clean(&self.from), clean(&self.subject)).into_bytes()
    }
}

/// A quarantined message released back into its mailbox by "Not spam".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The UIDL the client sees: `popsift-r-<first 32 hex digits of the digest>`. The `-`
    /// and the prefix keep it apart from server UIDLs in practice; the driver also drops a
    /// release whose UIDL the server itself lists.
    pub uidl: String,
    /// The quarantine file (its id for [`crate::store::quarantine::Quarantine::original`]).
    pub quarantine_id: String,
    /// Octets of the message as the server held it (what LIST and STAT report).
    pub size: u64,
    pub time: u64,
}

/// A query on the decisions of one mailbox (or all of them, for the admin).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `None`: every mailbox.
    pub mailbox: Option<String>,
    /// Keep only this action (`none`, `tag`, `hide`, …) or `spam`/`ham` by verdict.
    pub action: Option<String>,
    /// Keep only decisions where this rule fired.
    pub rule: Option<String>,
    /// Case-insensitive substring of From or Subject.
    pub search: Option<String>,
    /// Only decisions with a sequence below this (paging, newest first).
    pub before: Option<u64>,
    pub limit: usize,
}

impl Query {
    pub(crate) fn keeps(&self, d: &Decision, needle: Option<&str>) -> bool {
        if let Some(a) = &self.action {
            let ok = match a.as_str() {
                "spam" => d.spam,
                "ham" => !d.spam,
                a => d.action == a,
            };
            if !ok {
                return false;
            }
        }
        if let Some(r) = &self.rule {
            if !d.rules.iter().any(|x| x == r) {
                return false;
            }
        }
        if let Some(n) = needle {
            if !contains_ci(&d.from, n) && !contains_ci(&d.subject, n) {
                return false;
            }
        }
        true
    }
}

fn contains_ci(hay: &str, lower_needle: &str) -> bool {
    hay.to_lowercase().contains(lower_needle)
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("decision history {path}: {detail}")]
    Db { path: PathBuf, detail: String },
    #[error("decision history: a stored record is unreadable: {0}")]
    Corrupt(String),
}

/// The decision store (see the module doc). Every method may block on disk: call it off the
/// async threads.
pub trait History: Send + Sync {
    /// Stores one login's decisions (one transaction), skipping repeats, then prunes.
    fn record(&self, batch: &[Decision], now: u64) -> Result<usize, HistoryError>;
    /// Decisions matching `q`, newest first, with their sequence numbers.
    fn decisions(&self, q: &Query) -> Result<Vec<(u64, Decision)>, HistoryError>;
    /// One decision.
    fn decision(&self, mailbox: &str, seq: u64) -> Result<Option<Decision>, HistoryError>;
    /// Every mailbox with a decision (for the admin).
    fn mailboxes(&self) -> Result<Vec<String>, HistoryError>;
    /// Per rule, the decisions it fired in over the last 1, 7 and 30 days.
    fn rule_counts(&self, mailbox: Option<&str>, now: u64) -> Result<Vec<(String, [u64; 3])>, HistoryError>;
    /// From the next login on, show the hidden message `uidl` of `mailbox`.
    fn show(&self, mailbox: &str, uidl: &str, now: u64) -> Result<(), HistoryError>;
    /// UIDLs the owner asked to see.
    fn shown(&self, mailbox: &str) -> Result<HashSet<String>, HistoryError>;
    /// Adds a released message to `mailbox`.
    fn release(&self, mailbox: &str, r: &Released) -> Result<(), HistoryError>;
    /// The messages released into `mailbox`.
    fn released(&self, mailbox: &str) -> Result<Vec<Released>, HistoryError>;
    /// The client deleted a released message (DELE + QUIT): forget it.
    fn unrelease(&self, mailbox: &str, uidl: &str) -> Result<(), HistoryError>;
    /// Whether `mailbox` may have "show" overrides or released messages, answered from
    /// memory (never blocks): a login of a mailbox without any skips reading them.
    fn has_overrides(&self, mailbox: &str) -> bool;
    /// [`History::shown`] and [`History::released`] together (a shared store answers both
    /// in one round trip).
    fn overrides_of(&self, mailbox: &str) -> Result<(HashSet<String>, Vec<Released>), HistoryError> {
        Ok((self.shown(mailbox)?, self.released(mailbox)?))
    }
    /// Gives back the memory the store keeps between uses (its page cache), called when no
    /// session has run for a while (see `net::idle_release`). `false`: in use now (a write
    /// in flight), try again later. Nothing stored is lost.
    fn release_memory(&self) -> bool {
        true
    }
    /// Whether the store was used (read or written) since it was opened or last gave its
    /// memory back: an unused store has nothing to give back (see `net::idle_release`).
    fn used(&self) -> bool {
        false
    }
}

/// The embedded store.
pub struct RedbHistory {
    path: PathBuf,
    /// `None` after [`History::release_memory`] could not reopen the file: opened again at
    /// the next use (see [`RedbHistory::db`]).
    db: std::sync::Mutex<Option<Arc<Database>>>,
    settings: HistorySettings,
    last_seq: std::sync::Mutex<u64>,
    /// Mailboxes with a "show" override or a released message (kept from open on).
    with_overrides: std::sync::Mutex<HashSet<String>>,
    /// Set by every use ([`RedbHistory::db`]), cleared when the file is reopened.
    used: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RedbHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbHistory").field("path", &self.path).finish()
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// redb's page cache for the history file (issue 16). redb keeps every page it wrote in
/// its cache, up to 1 GiB by default: with 5,000 distinct mailboxes logging in, the
/// history's pages were 12–14 KiB per mailbox that stayed after the sessions ended
/// (tests/benches/idle_sessions.rs). Appends touch only the right edge of the B-trees and the
/// review page reads one mailbox at a time, so 1 MiB keeps the hot pages; colder ones are
/// read through the OS page cache. (4 MiB, the bound before, was a quarter of popsift's
/// whole starting memory kept for good once 5,000 mailboxes had logged in.)
const HISTORY_CACHE_BYTES: usize = 1 << 20;

/// Opens (creating) the file with its page cache bounded (issue 16: redb's default is 1 GiB).
fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new().set_cache_size(HISTORY_CACHE_BYTES).create(path)
}

/// [`open_db`], then the tables every read expects (a read of a missing table is an error,
/// not an empty answer). The one way the file is opened: at start, and when it is opened
/// again after giving its memory back, so a file deleted or replaced while popsift runs
/// comes back whole. Cheap when they exist: one read transaction, no write, no fsync.
fn open_initialised(path: &Path) -> Result<Database, String> {
    let db = open_db(path).map_err(|e| e.to_string())?;
    let complete = {
        let r = db.begin_read().map_err(|e| e.to_string())?;
        let mut present = 0;
        for t in r.list_tables().map_err(|e| e.to_string())? {
            if [DECISIONS.name(), BY_UIDL.name(), SHOWN.name(), RELEASED.name()].contains(&t.name()) {
                present += 1;
            }
        }
        present == 4
    };
    if !complete {
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        {
            tx.open_table(DECISIONS).map_err(|e| e.to_string())?;
            tx.open_table(BY_UIDL).map_err(|e| e.to_string())?;
            tx.open_table(SHOWN).map_err(|e| e.to_string())?;
            tx.open_table(RELEASED).map_err(|e| e.to_string())?;
        }
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(db)
}

impl RedbHistory {
    /// Opens (creating) `<state_dir>/history.redb`.
    pub fn open(state_dir: &Path, settings: HistorySettings) -> Result<RedbHistory, HistoryError> {
        let path = state_dir.join(FILE_NAME);
        let db_err = |detail: String| HistoryError::Db { path: path.clone(), detail };
        std::fs::create_dir_all(state_dir).map_err(|e| db_err(e.to_string()))?;
        let db = open_initialised(&path).map_err(db_err)?;
        let mut with_overrides = HashSet::new();
        {
            let r = db.begin_read().map_err(|e| db_err(e.to_string()))?;
            let shown = r.open_table(SHOWN).map_err(|e| db_err(e.to_string()))?;
            for item in shown.iter().map_err(|e| db_err(e.to_string()))? {
                let (k, _) = item.map_err(|e| db_err(e.to_string()))?;
                with_overrides.insert(k.value().0.to_string());
            }
            let released = r.open_table(RELEASED).map_err(|e| db_err(e.to_string()))?;
            for item in released.iter().map_err(|e| db_err(e.to_string()))? {
                let (k, _) = item.map_err(|e| db_err(e.to_string()))?;
                with_overrides.insert(k.value().0.to_string());
            }
        }
        Ok(RedbHistory {
            path,
            db: std::sync::Mutex::new(Some(Arc::new(db))),
            settings,
            last_seq: std::sync::Mutex::new(0),
            with_overrides: std::sync::Mutex::new(with_overrides),
            used: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The open database, opened again if [`History::release_memory`] closed it and could
    /// not reopen it (the error is then this call's, as for any failing write or read).
    /// Callers keep the handle for as long as their transaction lives, so a release never
    /// closes the file under one.
    fn db(&self) -> Result<Arc<Database>, HistoryError> {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock a release resets it in: no use is missed.
        self.used.store(true, Ordering::Relaxed);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Arc::new(open_initialised(&self.path).map_err(|e| self.err(e))?);
        *slot = Some(db.clone());
        Ok(db)
    }

    fn mark_overrides(&self, mailbox: &str) {
        self.with_overrides.lock().unwrap_or_else(|p| p.into_inner()).insert(mailbox.to_string());
    }

    fn err(&self, e: impl std::fmt::Display) -> HistoryError {
        HistoryError::Db { path: self.path.clone(), detail: e.to_string() }
    }

    /// A fresh, strictly increasing sequence number: `now` (Unix seconds) in microseconds
    /// plus the clock's microseconds within the second (so a restart within the same second
    /// does not reuse a key), or one more than the last one given.
    fn next_seq(&self, now: u64) -> u64 {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::from(d.subsec_micros())).unwrap_or(0);
        let mut last = self.last_seq.lock().unwrap_or_else(|p| p.into_inner());
        *last = now.saturating_mul(1_000_000).saturating_add(micros).max(*last + 1);
        *last
    }

    fn prune(
        &self,
        table: &mut redb::Table<(&str, u64), &[u8]>,
        by_uidl: &mut redb::Table<(&str, &str), (u64, u64)>,
        mailbox: &str,
        now: u64,
    ) -> Result<(), HistoryError> {
        let cutoff = now.saturating_sub(self.settings.max_days * 86_400).saturating_mul(1_000_000);
        let mut doomed: Vec<u64> = Vec::new();
        let mut seqs = Vec::new();
        for item in table.range((mailbox, 0)..=(mailbox, u64::MAX)).map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            seqs.push(k.value().1);
        }
        let excess = (seqs.len() as u64).saturating_sub(self.settings.max_per_mailbox) as usize;
        for (i, &s) in seqs.iter().enumerate() {
            if i < excess || s < cutoff {
                doomed.push(s);
            }
        }
        for s in doomed {
            if let Some(v) = table.remove((mailbox, s)).map_err(|e| self.err(e))? {
                if let Some(uidl) = super::history_codec::uidl_of(v.value()) {
                    let newest = by_uidl.get((mailbox, uidl.as_str())).map_err(|e| self.err(e))?.map(|g| g.value().0);
                    if newest == Some(s) {
                        by_uidl.remove((mailbox, uidl.as_str())).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A stored decision: binary (see [`super::history_codec`]) or JSON.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decision, HistoryError> {
    super::history_codec::decode(bytes)
}

impl History for RedbHistory {
    fn record(&self, batch: &[Decision], now: u64) -> Result<usize, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        let mut written = 0;
        {
            let mut table = tx.open_table(DECISIONS).map_err(|e| self.err(e))?;
            let mut by_uidl = tx.open_table(BY_UIDL).map_err(|e| self.err(e))?;
            let mut touched: Vec<&str> = Vec::new();
            // One encoding buffer for the whole batch.
            let mut buf = Vec::with_capacity(256);
            for d in batch {
                let fp = fingerprint(d);
                let prev =
                    by_uidl.get((d.mailbox.as_str(), d.uidl.as_str())).map_err(|e| self.err(e))?.map(|g| g.value());
                if prev.is_some_and(|(_, f)| f == fp) {
                    continue;
                }
                let seq = self.next_seq(now);
                buf.clear();
                super::history_codec::encode_into(d, &mut buf);
                table.insert((d.mailbox.as_str(), seq), buf.as_slice()).map_err(|e| self.err(e))?;
                by_uidl.insert((d.mailbox.as_str(), d.uidl.as_str()), (seq, fp)).map_err(|e| self.err(e))?;
                written += 1;
                if !touched.contains(&d.mailbox.as_str()) {
                    touched.push(d.mailbox.as_str());
                }
            }
            for mb in touched {
                self.prune(&mut table, &mut by_uidl, mb, now)?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(written)
    }

    fn decisions(&self, q: &Query) -> Result<Vec<(u64, Decision)>, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(DECISIONS).map_err(|e| self.err(e))?;
        let needle = q.search.as_deref().map(str::to_lowercase).filter(|s| !s.is_empty());
        let before = q.before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let push = |k: (&str, u64), v: &[u8], out: &mut Vec<(u64, Decision)>| -> Result<(), HistoryError> {
            if k.1 >= before {
                return Ok(());
            }
            let d = decode(v)?;
            if q.keeps(&d, needle.as_deref()) {
                out.push((k.1, d));
            }
            Ok(())
        };
        match &q.mailbox {
            Some(mb) => {
                let range = table.range((mb.as_str(), 0)..(mb.as_str(), before)).map_err(|e| self.err(e))?;
                for item in range.rev() {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    push(k.value(), v.value(), &mut out)?;
                    if out.len() >= q.limit {
                        break;
                    }
                }
            }
            None => {
                // Every mailbox: newest first across them all.
                for item in table.iter().map_err(|e| self.err(e))? {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    push(k.value(), v.value(), &mut out)?;
                }
                out.sort_by_key(|b| std::cmp::Reverse(b.0));
                out.truncate(q.limit);
            }
        }
        Ok(out)
    }

    fn decision(&self, mailbox: &str, seq: u64) -> Result<Option<Decision>, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(DECISIONS).map_err(|e| self.err(e))?;
        let v = table.get((mailbox, seq)).map_err(|e| self.err(e))?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn mailboxes(&self) -> Result<Vec<String>, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(BY_UIDL).map_err(|e| self.err(e))?;
        let mut out: Vec<String> = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let mb = k.value().0;
            if out.last().map(String::as_str) != Some(mb) {
                out.push(mb.to_string());
            }
        }
        Ok(out)
    }

    fn rule_counts(&self, mailbox: Option<&str>, now: u64) -> Result<Vec<(String, [u64; 3])>, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(DECISIONS).map_err(|e| self.err(e))?;
        let mut counts: std::collections::BTreeMap<String, [u64; 3]> = Default::default();
        let limits = [1u64, 7, 30].map(|d| now.saturating_sub(d * 86_400));
        let mut add = |v: &[u8]| -> Result<(), HistoryError> {
            let d = decode(v)?;
            for r in &d.rules {
                let c = counts.entry(r.clone()).or_default();
                for (slot, &limit) in c.iter_mut().zip(&limits) {
                    if d.time >= limit {
                        *slot += 1;
                    }
                }
            }
            Ok(())
        };
        match mailbox {
            Some(mb) => {
                for item in table.range((mb, 0)..=(mb, u64::MAX)).map_err(|e| self.err(e))? {
                    add(item.map_err(|e| self.err(e))?.1.value())?;
                }
            }
            None => {
                for item in table.iter().map_err(|e| self.err(e))? {
                    add(item.map_err(|e| self.err(e))?.1.value())?;
                }
            }
        }
        Ok(counts.into_iter().collect())
    }

    fn show(&self, mailbox: &str, uidl: &str, now: u64) -> Result<(), HistoryError> {
        self.mark_overrides(mailbox);
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.open_table(SHOWN).map_err(|e| self.err(e))?.insert((mailbox, uidl), now).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn shown(&self, mailbox: &str) -> Result<HashSet<String>, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(SHOWN).map_err(|e| self.err(e))?;
        let mut out = HashSet::new();
        for item in table.range((mailbox, "")..).map_err(|e| self.err(e))? {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let (mb, uidl) = k.value();
            if mb != mailbox {
                break;
            }
            out.insert(uidl.to_string());
        }
        Ok(out)
    }

    fn release(&self, mailbox: &str, r: &Released) -> Result<(), HistoryError> {
        let json = serde_json::to_vec(r).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
        self.mark_overrides(mailbox);
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.open_table(RELEASED)
            .map_err(|e| self.err(e))?
            .insert((mailbox, r.uidl.as_str()), json.as_slice())
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn released(&self, mailbox: &str) -> Result<Vec<Released>, HistoryError> {
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(RELEASED).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.range((mailbox, "")..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.value().0 != mailbox {
                break;
            }
            out.push(serde_json::from_slice(v.value()).map_err(|e| HistoryError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    fn unrelease(&self, mailbox: &str, uidl: &str) -> Result<(), HistoryError> {
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.open_table(RELEASED).map_err(|e| self.err(e))?.remove((mailbox, uidl)).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Closes the file and opens it again, so the new handle starts with an empty page
    /// cache (redb keeps the pages a burst of logins wrote for good, issue 16). Only when
    /// nothing holds the handle: a write or read in flight keeps it (`false`, try later).
    /// The decisions, overrides and releases are all in the file; what this struct keeps
    /// besides (sequence, mailboxes with overrides) stays. A failed reopen is logged and
    /// retried at the next use ([`RedbHistory::db`]): that use fails like any write to a
    /// failing disk (logged; the mail flow never waits for the history), and a login then
    /// condemns nothing (`net::history_hooks`). A store not used since it was opened has
    /// nothing cached: left as it is.
    fn release_memory(&self) -> bool {
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = match crate::store::release::take_for_release(&mut slot, &self.used) {
            Ok(db) => db,
            Err(done) => return done,
        };
        drop(db);
        self.used.store(false, Ordering::Relaxed);
        match open_initialised(&self.path) {
            Ok(db) => *slot = Some(Arc::new(db)),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "decision history not reopened after giving its memory back; trying again at its next use")
            }
        }
        true
    }

    fn used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    fn has_overrides(&self, mailbox: &str) -> bool {
        self.with_overrides.lock().unwrap_or_else(|p| p.into_inner()).contains(mailbox)
    }
}

/// The decisions of one login's view: every message the rules evaluated.
pub fn login_decisions(
    mailbox: &str,
    entries: &[crate::session::view::Entry],
    dry_run: bool,
    now: u64,
) -> Vec<Decision> {
    LoginBatch::of(mailbox, entries, dry_run, now).decisions()
}

/// One login's verdicts as a session hands them over: the mailbox and, per evaluated message,
/// its UIDL, size, disposition and verdict, all shared (`Arc`) with the view, so taking it
/// costs the session a few reference counts per message; the writer thread turns it into
/// [`Decision`]s (string copies, encoding) off the session.
pub struct LoginBatch {
    mailbox: String,
    dry_run: bool,
    now: u64,
    items: Vec<LoginItem>,
}

struct LoginItem {
    uidl: Arc<str>,
    size: u64,
    disposition: crate::session::view::Disposition,
    evaluated: Arc<crate::session::evaluated::Evaluated>,
}

impl LoginBatch {
    /// The evaluated entries of a view (those with a UIDL).
    pub fn of(mailbox: &str, entries: &[crate::session::view::Entry], dry_run: bool, now: u64) -> LoginBatch {
        let items = entries
            .iter()
            .filter_map(|e| {
                Some(LoginItem {
                    uidl: e.uidl.clone()?,
                    size: e.upstream_size,
                    disposition: e.disposition,
                    evaluated: e.evaluated.clone()?,
                })
            })
            .collect();
        LoginBatch { mailbox: mailbox.to_string(), dry_run, now, items }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The decisions (on the writer thread).
    pub fn decisions(&self) -> Vec<Decision> {
        use crate::session::view::Disposition;
        self.items
            .iter()
            .map(|it| {
                let (ev, v) = (&*it.evaluated, &it.evaluated.verdict);
                Decision {
                    time: self.now,
                    mailbox: self.mailbox.clone(),
                    uidl: it.uidl.to_string(),
                    size: it.size,
                    from: ev.about.from.to_string(),
                    subject: ev.about.subject.to_string(),
                    score: v.score,
                    threshold: v.threshold,
                    rules: v.rules.iter().map(|r| r.to_string()).collect(),
                    bayes: ev.about.bayes,
                    action: v.action.map_or("none", |a| a.as_str()).to_string(),
                    disposition: match it.disposition {
                        Disposition::Visible => "visible",
                        Disposition::Hidden => "hidden",
                        Disposition::Condemned => "condemned",
                    }
                    .to_string(),
                    dry_run: self.dry_run,
                    spam: v.spam,
                    matched: ev.about.matched.to_vec(),
                    clues: ev.about.clues.to_vec(),
                }
            })
            .collect()
    }
}

/// Shows the messages whose UIDL the owner said "Not spam" to (see [`History::show`]);
/// returns how many entries changed.
pub fn apply_shown(entries: &mut [crate::session::view::Entry], shown: &HashSet<String>) -> usize {
    use crate::session::view::Disposition;
    if shown.is_empty() {
        return 0;
    }
    let mut n = 0;
    for e in entries.iter_mut() {
        if e.disposition != Disposition::Visible && e.uidl.as_deref().is_some_and(|u| shown.contains(u)) {
            // The owner said it is not spam: shown as the server holds it, untagged.
            e.disposition = Disposition::Visible;
            e.rewrite = None;
            e.size = e.upstream_size;
            n += 1;
        }
    }
    n
}

/// The view entries of the messages released into `mailbox` (see
/// [`crate::session::view::released_entry`]), read from the quarantine. A release whose
/// quarantine copy is gone is forgotten; one whose UIDL the server itself lists is skipped
/// (logged), so a client never sees two messages with one UIDL. Blocking.
pub fn released_entries(
    store: &dyn History,
    quarantine: &crate::store::quarantine::Quarantine,
    mailbox: &str,
    server_uidls: &HashSet<Arc<str>>,
) -> Vec<crate::session::view::Entry> {
    let released = match store.released(mailbox) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "released messages not read; not shown at this login");
            return Vec::new();
        }
    };
    entries_of_released(store, quarantine, mailbox, server_uidls, released)
}

/// [`released_entries`] of releases already read.
fn entries_of_released(
    store: &dyn History,
    quarantine: &crate::store::quarantine::Quarantine,
    mailbox: &str,
    server_uidls: &HashSet<Arc<str>>,
    released: Vec<Released>,
) -> Vec<crate::session::view::Entry> {
    let mut out = Vec::new();
    for r in released {
        if server_uidls.contains(r.uidl.as_str()) {
            tracing::warn!(uidl = r.uidl, "a released message's UIDL is also on the server: not shown");
            continue;
        }
        match quarantine.original_exact(&r.quarantine_id) {
            Ok(bytes) => out.push(crate::session::view::released_entry(&r.uidl, Arc::from(bytes))),
            // Only a copy that is really gone ends the release; a store that cannot answer now
            // (Redis down, a disk error) leaves it for the next login.
            Err(e @ crate::store::quarantine::QuarantineError::NotFound(_)) => {
                tracing::warn!(uidl = r.uidl, error = %e, "a released message's copy is gone; release forgotten");
                let _ = store.unrelease(mailbox, &r.uidl);
            }
            Err(e) => {
                tracing::warn!(uidl = r.uidl, error = %e, "a released message's copy cannot be read now; not shown at this login");
            }
        }
    }
    out
}

/// At login, on the blocking pool: applies the owner's "show" overrides to `entries` (see
/// [`apply_shown`]) and returns the released messages' entries (see [`released_entries`]),
/// to be appended after the server's own. `None`: they could not be read (the store
/// failed, or the task reading them did), logged; `entries` are untouched and the caller
/// must not condemn anything at this login (a missed "Not spam", see
/// `net::history_hooks`).
pub async fn overrides(
    store: Arc<dyn History>,
    quarantine: crate::store::quarantine::Quarantine,
    mailbox: String,
    entries: &mut [crate::session::view::Entry],
) -> Option<Vec<crate::session::view::Entry>> {
    // Most mailboxes have none: no trip to the blocking pool (measured: ~10 ms of a 2,000
    // message cold login on a loaded machine).
    if !store.has_overrides(&mailbox) {
        return Some(Vec::new());
    }
    let on_server: HashSet<Arc<str>> = entries.iter().filter_map(|e| e.uidl.clone()).collect();
    let read = tokio::task::spawn_blocking(move || match store.overrides_of(&mailbox) {
        Ok((shown, released)) => {
            Some((shown, entries_of_released(&*store, &quarantine, &mailbox, &on_server, released)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "overrides and released messages not read; this login condemns nothing");
            None
        }
    });
    match read.await {
        Ok(Some((shown, released))) => {
            apply_shown(entries, &shown);
            Some(released)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reading the overrides failed; this login condemns nothing");
            None
        }
    }
}

/// After a successful UPDATE: the released messages the client deleted leave the store and
/// the quarantine. Blocking.
pub fn forget_released(
    store: &dyn History,
    quarantine: &crate::store::quarantine::Quarantine,
    mailbox: &str,
    uidls: &[Arc<str>],
) {
    let Ok(released) = store.released(mailbox) else { return };
    for r in released.iter().filter(|r| uidls.iter().any(|u| **u == *r.uidl)) {
        if let Err(e) = quarantine.remove_exact(&r.quarantine_id) {
            tracing::warn!(uidl = r.uidl, error = %e, "released message deleted by the client, but its copy was not removed");
        }
        if let Err(e) = store.unrelease(mailbox, &r.uidl) {
            tracing::warn!(uidl = r.uidl, error = %e, "released message deleted by the client, but still listed as released");
        }
    }
}

/// Hands login batches to a writer thread (see the module doc).
pub struct Recorder {
    store: Arc<dyn History>,
    tx: SyncSender<Batch>,
    dropped: AtomicU64,
}

/// What the writer thread is handed.
enum Batch {
    Decisions(Vec<Decision>),
    Login(LoginBatch),
}

/// How long the writer waits for another batch before it empties its allocator cache.
const IDLE_FLUSH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The writer's next batch (`None`: every sender is gone). Once no batch has come for
/// `after` ([`IDLE_FLUSH_AFTER`]) since the last one (`worked`: a batch was written since the
/// last flush), the writer empties its allocator cache and then waits without a timeout
/// (issue 16): the free objects a burst of logins' writes left in it would otherwise keep
/// their slabs' pages for as long as the process runs (see
/// [`crate::allocator::flush_thread_cache`], passed as `flush`). One flush per pause in the
/// logins, off their path; none while the batches keep coming, none without work.
fn next_batch<F: FnOnce() -> bool>(
    rx: &std::sync::mpsc::Receiver<Batch>,
    after: std::time::Duration,
    worked: &mut bool,
    flush: F,
) -> Option<Batch> {
    use std::sync::mpsc::RecvTimeoutError;
    let batch = if *worked {
        match rx.recv_timeout(after) {
            Ok(batch) => Some(batch),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                flush();
                rx.recv().ok()
            }
        }
    } else {
        rx.recv().ok()
    };
    *worked = batch.is_some();
    batch
}

/// Batches waiting for the writer at most; beyond, batches are dropped and counted.
pub const QUEUE_BATCHES: usize = 256;

impl Recorder {
    /// Starts the writer thread over `store`.
    pub fn start(store: Arc<dyn History>) -> Arc<Recorder> {
        let (tx, rx) = sync_channel::<Batch>(QUEUE_BATCHES);
        let writer = Arc::clone(&store);
        let spawned = std::thread::Builder::new().name("popsift-history".into()).spawn(move || {
            let mut worked = false;
            while let Some(batch) = next_batch(&rx, IDLE_FLUSH_AFTER, &mut worked, crate::allocator::flush_thread_cache)
            {
                let batch = match batch {
                    Batch::Decisions(d) => d,
                    Batch::Login(l) => l.decisions(),
                };
                if let Err(e) = writer.record(&batch, now_secs()) {
                    tracing::warn!(error = %e, decisions = batch.len(), "decision history not written");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "decision history writer not started: decisions are not recorded");
        }
        Arc::new(Recorder { store, tx, dropped: AtomicU64::new(0) })
    }

    /// Queues one login's decisions; never waits. `false`: dropped (queue full or writer gone).
    pub fn record(&self, batch: Vec<Decision>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let n = batch.len();
        self.send(Batch::Decisions(batch), n)
    }

    /// Queues one login's verdicts (see [`LoginBatch`]); never waits.
    pub fn record_login(&self, batch: LoginBatch) -> bool {
        if batch.is_empty() {
            return true;
        }
        let n = batch.len();
        self.send(Batch::Login(batch), n)
    }

    fn send(&self, batch: Batch, n: usize) -> bool {
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::history_dropped(n);
                false
            }
        }
    }

    /// Batches dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The store behind the writer (for reads).
    pub fn store(&self) -> &Arc<dyn History> {
        &self.store
    }
}

/// The recorder over the configured store (`<state_dir>/history.redb`, or Redis with
/// `store.backend: redis`, see [`super::redis_history`]), opened once per process and shared
/// by the sessions and the review page (a redb file can be opened only once). `None`
/// (logged) when it cannot be opened: the proxy runs on without a history.
pub fn shared(
    state_dir: &Path,
    settings: HistorySettings,
    store: &crate::config::StoreSettings,
) -> Option<Arc<Recorder>> {
    if !settings.enabled {
        return None;
    }
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, Weak};
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Recorder>>>> = OnceLock::new();
    let mut open = OPEN.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let key = match &store.redis {
        Some(r) => PathBuf::from(format!("redis\u{1f}{}\u{1f}{}", r.url, r.key_prefix)),
        None => state_dir.join(FILE_NAME),
    };
    if let Some(r) = open.get(&key).and_then(Weak::upgrade) {
        return Some(r);
    }
    let opened: Result<Arc<dyn History>, HistoryError> = match &store.redis {
        Some(r) => super::redis_history::RedisHistory::new(r, settings).map(|h| Arc::new(h) as Arc<dyn History>),
        None => RedbHistory::open(state_dir, settings).map(|h| Arc::new(h) as Arc<dyn History>),
    };
    match opened {
        Ok(h) => {
            // Sessions now explain their verdicts for the history (`rules::explain`).
            crate::rules::explain::set_enabled(true);
            let r = Recorder::start(h);
            open.insert(key, Arc::downgrade(&r));
            Some(r)
        }
        Err(e) => {
            tracing::error!(error = %e, "decision history unavailable: decisions are not recorded");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer empties its allocator cache once no batch has come for a while after one
    /// was written, then waits on without a timeout; a batch is still taken, a closed queue
    /// ends it, and a quiet queue before any work flushes nothing.
    #[test]
    fn the_writer_flushes_its_cache_when_the_batches_pause() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        const AFTER: std::time::Duration = std::time::Duration::from_millis(10);
        let flushes = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = sync_channel::<Batch>(1);
        let (flushed_tx, flushed) = std::sync::mpsc::channel::<()>();
        let counted = Arc::clone(&flushes);
        let writer = std::thread::spawn(move || {
            let flush = || {
                counted.fetch_add(1, Ordering::SeqCst);
                flushed_tx.send(()).is_ok()
            };
            let mut worked = false;
            // Quiet before any work: no flush, the first batch is taken when it comes.
            let first = next_batch(&rx, AFTER, &mut worked, flush).is_some();
            // Quiet after work: one flush, then the next batch is still taken.
            let after_pause = next_batch(&rx, AFTER, &mut worked, flush).is_some();
            (first, after_pause, next_batch(&rx, AFTER, &mut worked, flush).is_none())
        });
        // Longer than AFTER with nothing queued: a flush here would be one without work.
        std::thread::sleep(AFTER * 5);
        assert_eq!(flushes.load(Ordering::SeqCst), 0, "no flush before any batch");
        tx.send(Batch::Decisions(Vec::new())).unwrap();
        flushed.recv_timeout(std::time::Duration::from_secs(20)).expect("flushed once the queue was quiet");
        tx.send(Batch::Decisions(Vec::new())).unwrap();
        drop(tx);
        assert_eq!(writer.join().unwrap(), (true, true, true));
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "one flush per pause, none at the close");
    }

    fn d(mb: &str, uidl: &str, action: &str, subject: &str, time: u64) -> Decision {
        Decision {
            time,
            mailbox: mb.into(),
            uidl: uidl.into(),
            size: 100,
            from: "a@example.org".into(),
            subject: subject.into(),
            score: 6.0,
            threshold: 5.0,
            rules: vec!["r1".into()],
            action: action.into(),
            disposition: "hidden".into(),
            spam: action != "none",
            ..Decision::default()
        }
    }

    fn open(settings: HistorySettings) -> (tempfile::TempDir, RedbHistory) {
        let dir = tempfile::tempdir().unwrap();
        let h = RedbHistory::open(dir.path(), settings).unwrap();
        (dir, h)
    }

    #[test]
    fn newest_first_filtered_and_per_mailbox() {
        let (_d, h) = open(HistorySettings::default());
        let now = now_secs();
        h.record(&[d("m1", "u1", "hide", "Cheap pills", now), d("m1", "u2", "none", "Lunch", now)], now).unwrap();
        h.record(&[d("m2", "u1", "quarantine", "Other box", now)], now).unwrap();
        let all = h.decisions(&Query { mailbox: Some("m1".into()), limit: 10, ..Query::default() }).unwrap();
        assert_eq!(all.iter().map(|(_, d)| d.uidl.as_str()).collect::<Vec<_>>(), ["u2", "u1"]);
        let q = Query { mailbox: Some("m1".into()), search: Some("PILLS".into()), limit: 10, ..Query::default() };
        assert_eq!(h.decisions(&q).unwrap().len(), 1);
        let q = Query { mailbox: Some("m1".into()), action: Some("none".into()), limit: 10, ..Query::default() };
        assert_eq!(h.decisions(&q).unwrap()[0].1.uidl, "u2");
        assert_eq!(h.decisions(&Query { limit: 10, ..Query::default() }).unwrap().len(), 3);
        assert_eq!(h.mailboxes().unwrap(), ["m1", "m2"]);
        let counts = h.rule_counts(Some("m1"), now).unwrap();
        assert_eq!(counts, vec![("r1".to_string(), [2, 2, 2])]);
    }

    #[test]
    fn a_repeated_verdict_is_one_decision() {
        let (_d, h) = open(HistorySettings::default());
        let now = now_secs();
        assert_eq!(h.record(&[d("m", "u1", "hide", "s", now)], now).unwrap(), 1);
        assert_eq!(h.record(&[d("m", "u1", "hide", "s", now)], now).unwrap(), 0);
        // A new verdict for the same message is a new decision.
        assert_eq!(h.record(&[d("m", "u1", "quarantine", "s", now)], now).unwrap(), 1);
    }

    #[test]
    fn json_records_of_earlier_versions_read_next_to_binary_ones() {
        let (_d, h) = open(HistorySettings::default());
        let now = now_secs();
        let old = d("m", "old", "hide", "Written as JSON", now);
        // A second ago (older than 30 days would be pruned).
        let seq = (now - 1) * 1_000_000;
        {
            let tx = h.db().unwrap().begin_write().unwrap();
            let json = serde_json::to_vec(&old).unwrap();
            tx.open_table(DECISIONS).unwrap().insert(("m", seq), json.as_slice()).unwrap();
            tx.open_table(BY_UIDL).unwrap().insert(("m", "old"), (seq, fingerprint(&old))).unwrap();
            tx.commit().unwrap();
        }
        h.record(&[d("m", "new", "hide", "Written binary", now)], now).unwrap();
        let all = h.decisions(&Query { mailbox: Some("m".into()), limit: 10, ..Query::default() }).unwrap();
        assert_eq!(
            all.iter().map(|(_, d)| d.subject.as_str()).collect::<Vec<_>>(),
            ["Written binary", "Written as JSON"]
        );
        assert_eq!(h.decision("m", seq).unwrap(), Some(old.clone()));
        // Its repeat is still recognised.
        assert_eq!(h.record(&[old], now).unwrap(), 0);
    }

    #[test]
    fn a_login_batch_holds_the_views_evaluated_entries() {
        use crate::session::evaluated::Evaluated;
        use crate::session::view::{Disposition, Entry};
        let ev = Arc::new(Evaluated {
            verdict: crate::rules::Verdict {
                score: 9.0,
                threshold: 5.0,
                spam: true,
                action: Some(crate::rules::Action::Hide),
                rules: vec!["R".into()],
            },
            rewrite: None,
            about: Default::default(),
        });
        let e = |u: Option<&str>, ev: Option<Arc<Evaluated>>| Entry {
            upstream: 1,
            upstream_size: 42,
            size: 42,
            uidl: u.map(Arc::from),
            disposition: Disposition::Hidden,
            rewrite: None,
            evaluated: ev,
            released: None,
        };
        let entries = [e(Some("a"), Some(ev.clone())), e(Some("b"), None), e(None, Some(ev))];
        let b = LoginBatch::of("m", &entries, true, 7);
        assert_eq!(b.len(), 1);
        let d = &b.decisions()[0];
        assert_eq!((d.uidl.as_str(), d.size, d.action.as_str(), d.disposition.as_str()), ("a", 42, "hide", "hidden"));
        assert!(d.dry_run && d.spam && d.time == 7 && d.rules == ["R"]);
    }

    #[test]
    fn bounded_by_count_and_age() {
        let (_d, h) = open(HistorySettings { enabled: true, max_days: 30, max_per_mailbox: 3 });
        let now = now_secs();
        let batch: Vec<Decision> = (0..5).map(|i| d("m", &format!("u{i}"), "hide", "s", now)).collect();
        h.record(&batch, now).unwrap();
        let left = h.decisions(&Query { mailbox: Some("m".into()), limit: 100, ..Query::default() }).unwrap();
        assert_eq!(left.iter().map(|(_, d)| d.uidl.as_str()).collect::<Vec<_>>(), ["u4", "u3", "u2"]);
        // 31 days on, everything recorded now is too old: the next write prunes it.
        let later = now + 31 * 86_400;
        h.record(&[d("m", "new", "hide", "s", later)], later).unwrap();
        let left = h.decisions(&Query { mailbox: Some("m".into()), limit: 100, ..Query::default() }).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].1.uidl, "new");
    }

    /// Giving the page cache back (issue 16) closes the file and opens it anew: the old
    /// handle is gone, decisions and overrides are kept; a handle in use is never closed;
    /// a failed reopen fails that use (logged by the writer) and is retried at the next.
    #[test]
    fn release_reopens_with_everything_kept() {
        let (_d, h) = open(HistorySettings::default());
        let all = Query { limit: 10, ..Query::default() };
        assert_eq!(h.record(&[d("m1", "u1", "hide", "one", 1)], now_secs()).unwrap(), 1);
        h.show("m1", "u1", 1).unwrap();
        let in_use = h.db().unwrap();
        assert!(!h.release_memory(), "a handle in use is kept");
        let old = Arc::downgrade(&in_use);
        drop(in_use);
        assert!(h.release_memory());
        assert!(old.upgrade().is_none(), "the old handle and its page cache are gone");
        assert_eq!(h.decisions(&all).unwrap().len(), 1, "nothing lost");
        assert!(h.has_overrides("m1") && h.shown("m1").unwrap().contains("u1"));

        *h.db.lock().unwrap() = None;
        let other = open_db(&h.path).unwrap();
        assert!(h.decisions(&all).is_err(), "the file is held elsewhere: an error, not a panic");
        drop(other);
        assert_eq!(h.decisions(&all).unwrap().len(), 1, "reopened at the next use");
    }

    /// A file deleted (or replaced by an empty one) while popsift runs comes back whole
    /// when the store opens it again, after giving its memory back or at its next use: its
    /// tables are there, so reads answer (empty) instead of failing.
    #[test]
    fn a_file_gone_while_running_comes_back_with_its_tables() {
        let (dir, h) = open(HistorySettings::default());
        let all = Query { limit: 10, ..Query::default() };
        h.record(&[d("m1", "u1", "hide", "one", now_secs())], now_secs()).unwrap();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        assert!(h.release_memory());
        assert!(h.shown("m1").unwrap().is_empty(), "a read of the new file answers");
        assert!(h.released("m1").unwrap().is_empty() && h.decisions(&all).unwrap().is_empty());

        *h.db.lock().unwrap() = None;
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        assert!(h.mailboxes().unwrap().is_empty(), "reopened at the next use, with its tables");
        assert_eq!(h.record(&[d("m1", "u2", "hide", "two", now_secs())], now_secs()).unwrap(), 1);
        assert_eq!(h.decisions(&all).unwrap().len(), 1);
    }

    /// A store nobody used since it was opened (or gave its memory back) keeps its handle:
    /// nothing to give back, nothing to close, fsync and reopen (`net::idle_release`).
    #[test]
    fn an_unused_store_is_left_open() {
        let (_d, h) = open(HistorySettings::default());
        let handle = |h: &RedbHistory| Arc::downgrade(h.db.lock().unwrap().as_ref().unwrap());
        assert!(!h.used(), "opening is not a use");
        let first = handle(&h);
        assert!(h.release_memory(), "nothing to do is done");
        assert!(first.upgrade().is_some(), "an unused store keeps its handle");
        h.shown("m1").unwrap();
        assert!(h.used());
        assert!(h.release_memory());
        assert!(first.upgrade().is_none() && !h.used(), "a used one is reopened, unused again");
        let second = handle(&h);
        assert!(h.release_memory());
        assert!(second.upgrade().is_some(), "and left alone until it is used");
    }

    /// A login whose "Not spam" overrides cannot be read (here: the file was closed to give
    /// its memory back and another handle holds it, so reopening fails) gets `None`, its
    /// entries untouched: the caller then condemns nothing (`net::history_hooks`). With the
    /// store readable again, the override applies.
    #[tokio::test]
    async fn unreadable_overrides_are_none_never_an_empty_set() {
        use crate::session::view::{Disposition, Entry};
        let (d, h) = open(HistorySettings::default());
        h.show("m1", "u1", 1).unwrap();
        let q = crate::store::quarantine::Quarantine::new(&d.path().join("quarantine"));
        let entry = Entry {
            upstream: 1,
            upstream_size: 10,
            size: 10,
            uidl: Some("u1".into()),
            disposition: Disposition::Condemned,
            rewrite: None,
            evaluated: None,
            released: None,
        };
        let mut entries = vec![entry];
        // Closed, as a failed reopen leaves it, and the file held elsewhere.
        *h.db.lock().unwrap() = None;
        let other = open_db(&d.path().join(FILE_NAME)).unwrap();
        let h: Arc<dyn History> = Arc::new(h);
        let read = overrides(h.clone(), q.clone(), "m1".into(), &mut entries).await;
        assert!(read.is_none(), "a failed read is not \"no overrides\"");
        assert_eq!(entries[0].disposition, Disposition::Condemned, "nothing applied");
        drop(other);
        let read = overrides(h, q, "m1".into(), &mut entries).await;
        assert_eq!(read.map(|r| r.len()), Some(0), "readable again: no releases");
        assert_eq!(entries[0].disposition, Disposition::Visible, "the override applies");
    }

    #[test]
    fn overrides_and_releases_are_per_mailbox() {
        let (_d, h) = open(HistorySettings::default());
        assert!(!h.has_overrides("m1"));
        h.show("m1", "u1", 1).unwrap();
        assert!(h.shown("m1").unwrap().contains("u1"));
        assert!(h.has_overrides("m1") && !h.has_overrides("m2"));
        assert!(h.shown("m").unwrap().is_empty());
        let r = Released { uidl: "popsift-r-ab".into(), quarantine_id: "q1".into(), size: 10, time: 1 };
        h.release("m1", &r).unwrap();
        assert_eq!(h.released("m1").unwrap(), vec![r]);
        assert!(h.released("m2").unwrap().is_empty());
        h.unrelease("m1", "popsift-r-ab").unwrap();
        assert!(h.released("m1").unwrap().is_empty());
        // Known again after a reopen.
        let dir = _d.path().to_path_buf();
        drop(h);
        let h = RedbHistory::open(&dir, HistorySettings::default()).unwrap();
        assert!(h.has_overrides("m1") && !h.has_overrides("m2"));
    }

    #[test]
    fn a_release_naming_an_id_prefix_serves_and_deletes_nothing() {
        use crate::store::quarantine::{Meta, Quarantine};
        let (d, h) = open(HistorySettings::default());
        let q = Quarantine::new(&d.path().join("quarantine"));
        // Bob's copy; a release of alice's records only a prefix of an id (Maildir ids
        // start with the epoch seconds, so such a prefix can name bob's copy).
        let meta = Meta { user: "bob".into(), upstream: "a:110".into(), uidl: "b1".into(), ..Meta::default() };
        q.store(&meta, b"Subject: bob's\r\n\r\nx\r\n").unwrap();
        let bob = q.list().unwrap().remove(0).id;
        let prefix = &bob[..bob.len() - 1];
        assert!(q.show(prefix).is_ok(), "the prefix does resolve (for the CLI)");
        let r = Released { uidl: "popsift-r-1".into(), quarantine_id: prefix.into(), size: 10, time: 1 };
        h.release("alice", &r).unwrap();
        h.release("carol", &r).unwrap();
        assert!(released_entries(&h, &q, "alice", &HashSet::new()).is_empty(), "bob's copy is not served to alice");
        forget_released(&h, &q, "carol", &[Arc::from("popsift-r-1")]);
        assert_eq!(q.list().unwrap().len(), 1, "bob's copy is not deleted");
        assert!(h.released("carol").unwrap().is_empty());
        // The full id serves it.
        let r = Released { quarantine_id: bob.clone(), ..r };
        h.release("bob", &r).unwrap();
        assert_eq!(released_entries(&h, &q, "bob", &HashSet::new()).len(), 1);
    }

    #[test]
    fn shown_overrides_make_hidden_entries_visible_and_untagged() {
        use crate::session::view::{Disposition, Entry, HeaderRewrite};
        let e = |u: &str, d| Entry {
            upstream: 1,
            upstream_size: 10,
            size: 30,
            uidl: Some(u.into()),
            disposition: d,
            rewrite: Some(Arc::new(HeaderRewrite { original: vec![], replacement: vec![] })),
            evaluated: None,
            released: None,
        };
        let mut entries =
            vec![e("a", Disposition::Hidden), e("b", Disposition::Hidden), e("c", Disposition::Condemned)];
        let shown: HashSet<String> = ["a".to_string(), "c".to_string()].into();
        assert_eq!(apply_shown(&mut entries, &shown), 2);
        assert_eq!(entries[0].disposition, Disposition::Visible);
        assert!(entries[0].rewrite.is_none() && entries[0].size == 10);
        assert_eq!(entries[1].disposition, Disposition::Hidden);
        assert_eq!(entries[2].disposition, Disposition::Visible);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        struct Slow(std::sync::Mutex<()>);
        impl History for Slow {
            fn record(&self, _: &[Decision], _: u64) -> Result<usize, HistoryError> {
                let _g = self.0.lock().unwrap();
                Ok(0)
            }
            fn decisions(&self, _: &Query) -> Result<Vec<(u64, Decision)>, HistoryError> {
                Ok(vec![])
            }
            fn decision(&self, _: &str, _: u64) -> Result<Option<Decision>, HistoryError> {
                Ok(None)
            }
            fn mailboxes(&self) -> Result<Vec<String>, HistoryError> {
                Ok(vec![])
            }
            fn rule_counts(&self, _: Option<&str>, _: u64) -> Result<Vec<(String, [u64; 3])>, HistoryError> {
                Ok(vec![])
            }
            fn show(&self, _: &str, _: &str, _: u64) -> Result<(), HistoryError> {
                Ok(())
            }
            fn shown(&self, _: &str) -> Result<HashSet<String>, HistoryError> {
                Ok(HashSet::new())
            }
            fn release(&self, _: &str, _: &Released) -> Result<(), HistoryError> {
                Ok(())
            }
            fn released(&self, _: &str) -> Result<Vec<Released>, HistoryError> {
                Ok(vec![])
            }
            fn unrelease(&self, _: &str, _: &str) -> Result<(), HistoryError> {
                Ok(())
            }
            fn has_overrides(&self, _: &str) -> bool {
                false
            }
        }
        let slow = Arc::new(Slow(std::sync::Mutex::new(())));
        let guard = slow.0.lock().unwrap();
        let rec = Recorder::start(slow.clone());
        // The writer takes one batch and blocks on the lock; the queue holds QUEUE_BATCHES.
        let started = std::time::Instant::now();
        let mut refused = 0;
        for _ in 0..QUEUE_BATCHES + 10 {
            if !rec.record(vec![Decision::default()]) {
                refused += 1;
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "record must never wait");
        assert!(refused >= 9, "refused {refused}");
        assert_eq!(rec.dropped(), refused);
        drop(guard);
    }
}
