//! Autolearn: the proxy trains the model on its own very confident verdicts (off by default).
//!
//! Modelled on rspamd's autolearn (and SpamAssassin's `bayes_auto_learn`): after the login
//! scan, a message whose verdict score is at least `spam_above` (and is spam) is learned as
//! spam, one whose score is at most `ham_below` (and is not spam) as ham. A balance guard keeps
//! one class from running away: a class is not learned while its trained count already
//! exceeds the other's by more than the `balance` ratio (`(n_class + 1) / (n_other + 1) >
//! balance`), as rspamd's `check_balance` does — otherwise a mailbox full of one kind of mail
//! would teach the model that everything is that kind.
//!
//! Sessions never wait for it: [`Autolearner::offer`] decides from the verdict, drops
//! duplicates seen recently, and hands the header block to a bounded queue with `try_send`
//! (a full queue drops the offer and counts it). One background thread drains the queue in
//! batches: it opens the configured model store (the redb file, waiting for a `popsift
//! train` run if one holds it; or Redis with `store.backend: redis`, shared by every instance),
//! trains each message with [`Trainer`] — never relabelling a message the user or an earlier
//! run already trained — and commits the batch in one transaction. The proxy's
//! [`super::ModelHandle`] sees the new counts at its next poll. Manual training
//! (`popsift train`, restores from the quarantine) always wins: it is never overridden.
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use super::store::Digest;
use super::train::{digest, normalised_block, Outcome, Trainer};
use super::{BayesSettings, Tokenizer};
use crate::rules::{RulesHandle, Verdict};

/// Offers waiting for the background thread at most; more are dropped (and counted).
pub const QUEUE: usize = 256;
/// Messages trained per store transaction at most.
const BATCH: usize = 64;
/// Digests remembered to skip repeated offers of one message (re-scanned at every login);
/// the set is cleared when it reaches this size.
const RECENT: usize = 50_000;

/// Checked `bayes.autolearn` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AutolearnSettings {
    pub enabled: bool,
    /// Verdict score at or above which a spam verdict is learned as spam.
    pub spam_above: f64,
    /// Verdict score at or below which a ham verdict is learned as ham.
    pub ham_below: f64,
    /// A class is not learned while `(its count + 1) / (the other's + 1)` exceeds this.
    pub balance: f64,
}

impl Default for AutolearnSettings {
    /// SpamAssassin's `bayes_auto_learn_threshold_spam` (12) and `…_nonspam` (0.1); a
    /// balance of 3, so neither class grows beyond three times the other.
    fn default() -> Self {
        AutolearnSettings { enabled: false, spam_above: 12.0, ham_below: 0.1, balance: 3.0 }
    }
}

/// What became of one offer (the `result` label of `popsift_bayes_autolearn_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutolearnResult {
    /// Learned as spam.
    Spam,
    /// Learned as ham.
    Ham,
    /// Not learned: the class already outnumbers the other by the balance ratio.
    Balance,
    /// Not learned: already trained (by the user, or an earlier autolearn).
    Known,
    /// Not learned: the queue was full.
    Dropped,
    /// Not learned: the store could not be opened or written (logged).
    Failed,
}

impl AutolearnResult {
    pub const ALL: [AutolearnResult; 6] = [
        AutolearnResult::Spam,
        AutolearnResult::Ham,
        AutolearnResult::Balance,
        AutolearnResult::Known,
        AutolearnResult::Dropped,
        AutolearnResult::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AutolearnResult::Spam => "spam",
            AutolearnResult::Ham => "ham",
            AutolearnResult::Balance => "skipped_balance",
            AutolearnResult::Known => "skipped_known",
            AutolearnResult::Dropped => "dropped",
            AutolearnResult::Failed => "failed",
        }
    }
}

/// One message to learn.
struct Job {
    block: Vec<u8>,
    spam: bool,
}

/// Counts per [`AutolearnResult`], readable by tests and the metrics.
#[derive(Debug, Default)]
pub struct AutolearnCounts([AtomicU64; 6]);

impl AutolearnCounts {
    fn add(&self, r: AutolearnResult, n: u64) {
        let i = AutolearnResult::ALL.iter().position(|&x| x == r).unwrap_or(0);
        self.0[i].fetch_add(n, Ordering::Relaxed);
        crate::metrics::bayes_autolearn(r.label(), n);
    }

    /// How many offers ended with `r` so far.
    pub fn get(&self, r: AutolearnResult) -> u64 {
        let i = AutolearnResult::ALL.iter().position(|&x| x == r).unwrap_or(0);
        self.0[i].load(Ordering::Relaxed)
    }
}

/// The proxy's autolearn queue and its background thread.
pub struct Autolearner {
    settings: AutolearnSettings,
    tx: Mutex<Option<SyncSender<Job>>>,
    recent: Mutex<HashSet<Digest>>,
    counts: Arc<AutolearnCounts>,
    /// Offers handed to the thread and not finished yet (for tests: wait until idle).
    pending: Arc<AtomicU64>,
}

impl std::fmt::Debug for Autolearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autolearner").field("settings", &self.settings).finish()
    }
}

impl Autolearner {
    /// Starts the background thread for `state_dir`'s model, or `None` when autolearn is off.
    /// `rules` gives the rule set whose fired rules become `rule:` tokens, as in training.
    pub fn start(state_dir: &Path, bayes: &BayesSettings, rules: Arc<RulesHandle>) -> Option<Arc<Autolearner>> {
        Autolearner::start_in(state_dir, &crate::config::StoreSettings::default(), bayes, rules)
    }

    /// As [`Autolearner::start`], learning into the model store `store` names (Redis with
    /// `store.backend: redis`, so every instance's autolearn teaches the one shared model).
    pub fn start_in(
        state_dir: &Path,
        store: &crate::config::StoreSettings,
        bayes: &BayesSettings,
        rules: Arc<RulesHandle>,
    ) -> Option<Arc<Autolearner>> {
        if !bayes.autolearn.enabled {
            return None;
        }
        let (tx, rx) = sync_channel(QUEUE);
        let counts = Arc::new(AutolearnCounts::default());
        let pending = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            state_dir: state_dir.to_path_buf(),
            store: store.clone(),
            bayes: bayes.clone(),
            rules,
            counts: counts.clone(),
            pending: pending.clone(),
        };
        let spawned = std::thread::Builder::new().name("popsift-autolearn".into()).spawn(move || worker.run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the autolearn thread; autolearn is off");
            return None;
        }
        Some(Arc::new(Autolearner {
            settings: bayes.autolearn.clone(),
            tx: Mutex::new(Some(tx)),
            recent: Mutex::new(HashSet::new()),
            counts,
            pending,
        }))
    }

    /// Looks at one evaluated header block; queues it for learning when the verdict is
    /// confident enough. Never blocks on the store (a full queue drops the offer).
    pub fn offer(&self, block: &[u8], truncated: bool, verdict: &Verdict) {
        let s = &self.settings;
        let spam = if verdict.spam && verdict.score >= s.spam_above {
            true
        } else if !verdict.spam && verdict.score <= s.ham_below {
            false
        } else {
            return;
        };
        // A capped block is not the message's real header block: its digest would differ.
        if truncated {
            return;
        }
        let Some(norm) = normalised_block(block) else { return };
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            if recent.len() >= RECENT {
                recent.clear();
            }
            if !recent.insert(digest(&norm)) {
                return;
            }
        }
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        self.pending.fetch_add(1, Ordering::SeqCst);
        match tx.try_send(Job { block: norm, spam }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                self.counts.add(AutolearnResult::Dropped, 1);
            }
        }
    }

    /// Counts so far.
    pub fn counts(&self) -> &AutolearnCounts {
        &self.counts
    }

    /// Offers queued or being trained right now.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }
}

/// The background thread's state.
struct Worker {
    state_dir: PathBuf,
    /// Which model store to write: the redb file in `state_dir`, or Redis.
    store: crate::config::StoreSettings,
    bayes: BayesSettings,
    rules: Arc<RulesHandle>,
    counts: Arc<AutolearnCounts>,
    pending: Arc<AtomicU64>,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let n = jobs.len() as u64;
            // A panic in the store (redb on some damage) must not end autolearn for good.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.learn(&jobs)));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, messages = n, "autolearn: cannot train the model; these messages are not learned");
                    self.counts.add(AutolearnResult::Failed, n);
                }
                Err(p) => {
                    tracing::error!(panic = %crate::panics::message(&*p), "autolearn: training panicked");
                    self.counts.add(AutolearnResult::Failed, n);
                }
            }
            self.pending.fetch_sub(n, Ordering::SeqCst);
        }
    }

    fn learn(&self, jobs: &[Job]) -> Result<(), super::StoreError> {
        match self.learn_once(jobs) {
            // Damage found only when reading every entry (or writing): moved aside as well,
            // then the batch goes into a new model.
            Err(e @ super::StoreError::Corrupt { .. }) if self.store.redis.is_none() => {
                super::store::move_aside(&self.state_dir, &e)?;
                self.learn_once(jobs)
            }
            r => r,
        }
    }

    fn learn_once(&self, jobs: &[Job]) -> Result<(), super::StoreError> {
        let store: Box<dyn super::ModelStore> = match &self.store.redis {
            Some(r) => Box::new(crate::store::redis_model::RedisModelStore::new(r)?),
            None => Box::new(super::store::open_or_rebuild(&self.state_dir)?),
        };
        let tokenizer = Tokenizer::from_settings(&self.bayes);
        let mut trainer = Trainer::new(&*store, tokenizer, Some(self.rules.current()))?
            .with_minimums(self.bayes.min_spam, self.bayes.min_ham);
        let mut results = Vec::with_capacity(jobs.len());
        for job in jobs {
            if trainer.knows(&job.block) {
                results.push(AutolearnResult::Known);
                continue;
            }
            let m = trainer.model();
            let (mine, other) = if job.spam { (m.nspam(), m.nham()) } else { (m.nham(), m.nspam()) };
            if (mine + 1) as f64 / (other + 1) as f64 > self.bayes.autolearn.balance {
                results.push(AutolearnResult::Balance);
                continue;
            }
            results.push(match trainer.train(&job.block, job.spam) {
                Outcome::Trained if job.spam => AutolearnResult::Spam,
                Outcome::Trained => AutolearnResult::Ham,
                _ => AutolearnResult::Known,
            });
        }
        trainer.commit()?;
        for r in results {
            self.counts.add(r, 1);
        }
        Ok(())
    }
}

/// The autolearn hook of a session: offers a freshly evaluated header block when the
/// snapshot carries an autolearner (see [`super::Model::autolearner`]).
pub fn offer(model: Option<&super::Model>, block: &[u8], truncated: bool, verdict: &Verdict) {
    if let Some(a) = model.and_then(|m| m.autolearner()) {
        a.offer(block, truncated, verdict);
    }
}

impl Drop for Autolearner {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has finished its queue.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}
