//! Training: labelled messages → one batch of exact count changes.
//!
//! Each message is identified by the SHA-256 of its normalised header block (mbox `From `
//! line dropped, CRLF → LF), so training the same message twice changes nothing, training it
//! with the other label moves it (untrain + train), and `forget` untrains exactly what was
//! trained: the stored ids of the rules that fired then replace today's `rule:` tokens.
//! Everything is collected in memory and written by [`Trainer::commit`] in one transaction.
use std::collections::HashMap;
use std::sync::Arc;

use super::model::Model;
use super::store::{Batch, Digest, ModelStore, StoreError, TrainedMessage};
use super::tokenize::Tokenizer;
use crate::rules::{Headers, RuleSet};

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Trained,
    /// It was trained with the other label; now it has this one.
    Relabelled,
    /// Already trained with this label: nothing to do.
    Known,
    /// Forgotten (untrained).
    Forgotten,
    /// `forget` of a message that was never trained.
    NotKnown,
    /// Not a mail message (binary, no header fields).
    Unreadable,
    /// Train-on-error: the model already classifies it right and sure; not trained.
    Correct,
}

/// Train-on-error: a message is trained when the model's probability is on the wrong side
/// of this margin (spam below `1 − UNSURE`, ham above `UNSURE`).
pub const UNSURE: f64 = 0.2;
/// Train-on-error passes over the messages at most (a pass that trains nothing ends it).
pub const MAX_PASSES: usize = 4;

/// Train-on-error over token sets: trains `model` with each message it gets wrong or is
/// unsure about, in passes until nothing changes. Until the model holds `min_spam` spam and
/// `min_ham` ham (the minimum for giving probabilities at all) every message of the short
/// class is trained. Returns which messages were trained.
pub fn learn_on_error(model: &mut Model, items: &[(Vec<String>, bool)], min_spam: u64, min_ham: u64) -> Vec<bool> {
    let mut trained = vec![false; items.len()];
    for _ in 0..MAX_PASSES {
        let mut changed = false;
        for (i, (tokens, spam)) in items.iter().enumerate() {
            if trained[i] {
                continue;
            }
            let p = if model.nspam() == 0 || model.nham() == 0 {
                0.5
            } else {
                super::model::combine(model.clues(tokens.iter().map(String::as_str)).iter().map(|c| c.1))
            };
            let right = if *spam {
                p > 1.0 - UNSURE && model.nspam() >= min_spam
            } else {
                p < UNSURE && model.nham() >= min_ham
            };
            if !right {
                model.learn(tokens, *spam, 1);
                trained[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    trained
}

/// Totals for the summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrainSummary {
    pub trained: usize,
    pub relabelled: usize,
    pub known: usize,
    pub forgotten: usize,
    pub not_known: usize,
    pub unreadable: usize,
    /// Train-on-error: already classified right, not trained.
    pub correct: usize,
}

impl TrainSummary {
    pub fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Trained => self.trained += 1,
            Outcome::Relabelled => self.relabelled += 1,
            Outcome::Known => self.known += 1,
            Outcome::Forgotten => self.forgotten += 1,
            Outcome::NotKnown => self.not_known += 1,
            Outcome::Unreadable => self.unreadable += 1,
            Outcome::Correct => self.correct += 1,
        }
    }
}

/// The header block of a message, normalised for hashing and tokenizing: without an mbox
/// `From ` line, LF line ends, up to the first empty line. `None` for something that is not
/// a mail message (a NUL byte in the header block, or no header field at all).
pub fn normalised_block(msg: &[u8]) -> Option<Vec<u8>> {
    let mut m = msg;
    if m.starts_with(b"From ") {
        m = memchr::memchr(b'\n', m).map(|i| &m[i + 1..]).unwrap_or(&[]);
    }
    let block = crate::mailfiles::header_block(m);
    if block.contains(&0) {
        return None;
    }
    let mut out = Vec::with_capacity(block.len());
    let mut i = 0;
    while i < block.len() {
        if block[i] == b'\r' && block.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(block[i]);
        i += 1;
    }
    let first = out.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let is_field = first
        .iter()
        .position(|&b| b == b':')
        .is_some_and(|c| c > 0 && first[..c].iter().all(|&b| b.is_ascii_graphic() && b != b':'));
    is_field.then_some(out)
}

/// SHA-256 of a normalised block.
pub fn digest(block: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, block);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Ids of the rules that fire on a header block (before `bayes:` and `expr:` rules: the
/// evidence the classifier can weigh).
pub fn fired_rules(rules: Option<&RuleSet>, h: &Headers, size: u64) -> Vec<String> {
    match rules {
        Some(set) => set.fired_before_bayes(h, size).into_iter().map(|r| r.to_string()).collect(),
        None => Vec::new(),
    }
}

/// Accumulates training in memory; [`commit`](Self::commit) writes it.
pub struct Trainer<'s> {
    store: &'s dyn ModelStore,
    tokenizer: Tokenizer,
    rules: Option<Arc<RuleSet>>,
    known: HashMap<Digest, TrainedMessage>,
    batch: Batch,
    summary: TrainSummary,
    /// The model as it will be after commit (for train-on-error decisions).
    model: Model,
    /// Minimum spam and ham for probabilities: train-on-error trains up to them.
    min: (u64, u64),
}

impl<'s> Trainer<'s> {
    /// A trainer over `store`. Refuses a model made with another token-set version.
    pub fn new(
        store: &'s dyn ModelStore,
        tokenizer: Tokenizer,
        rules: Option<Arc<RuleSet>>,
    ) -> Result<Trainer<'s>, StoreError> {
        let known = store.trained()?;
        if let Some(m) = known.values().find(|m| m.version != super::TOKENS_VERSION) {
            return Err(StoreError::Version { found: m.version, want: super::TOKENS_VERSION });
        }
        let model = store.load()?;
        let min = (super::BayesSettings::default().min_spam, super::BayesSettings::default().min_ham);
        Ok(Trainer {
            store,
            tokenizer,
            rules,
            known,
            batch: Batch::default(),
            summary: TrainSummary::default(),
            model,
            min,
        })
    }

    fn apply(&mut self, tokens: &[String], spam: bool, delta: i64) {
        self.model.learn(tokens, spam, delta as i32);
        for t in tokens {
            let e = self.batch.tokens.entry(t.clone()).or_default();
            if spam {
                e.0 += delta;
            } else {
                e.1 += delta;
            }
        }
        if spam {
            self.batch.nspam += delta;
        } else {
            self.batch.nham += delta;
        }
    }

    /// The model as it will be after [`Self::commit`].
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Whether a message (whole, or its header block) is trained already, with either label.
    pub fn knows(&self, msg: &[u8]) -> bool {
        normalised_block(msg).is_some_and(|b| self.known.contains_key(&digest(&b)))
    }

    /// Sets the minimum spam and ham counts (config `bayes.min_spam`/`min_ham`).
    pub fn with_minimums(mut self, min_spam: u64, min_ham: u64) -> Self {
        self.min = (min_spam, min_ham);
        self
    }

    /// Trains one message (bytes of a whole message or its header block) with a label.
    pub fn train(&mut self, msg: &[u8], spam: bool) -> Outcome {
        let o = self.train_inner(msg, spam);
        self.summary.add(o);
        o
    }

    fn train_inner(&mut self, msg: &[u8], spam: bool) -> Outcome {
        let Some(block) = normalised_block(msg) else { return Outcome::Unreadable };
        let d = digest(&block);
        let h = Headers::parse(&block);
        let mut outcome = Outcome::Trained;
        if let Some(old) = self.known.get(&d).cloned() {
            if old.spam == spam {
                return Outcome::Known;
            }
            let refs: Vec<&str> = old.rules.iter().map(String::as_str).collect();
            let old_tokens = self.tokenizer.tokens(&h, &refs);
            self.apply(&old_tokens, old.spam, -1);
            self.batch.remove.push(d);
            outcome = Outcome::Relabelled;
        }
        let fired = fired_rules(self.rules.as_deref(), &h, msg.len() as u64);
        let refs: Vec<&str> = fired.iter().map(String::as_str).collect();
        let tokens = self.tokenizer.tokens(&h, &refs);
        self.apply(&tokens, spam, 1);
        let rec = TrainedMessage { spam, version: super::TOKENS_VERSION, rules: fired };
        self.batch.remove.retain(|x| *x != d);
        self.batch.add.retain(|(x, _)| *x != d);
        self.batch.add.push((d, rec.clone()));
        self.known.insert(d, rec);
        outcome
    }

    /// Train-on-error over many messages: known messages with the same label are skipped,
    /// relabelled ones always moved, and of the rest only those the model gets wrong or is
    /// unsure about are trained, in passes (see [`learn_on_error`]).
    pub fn train_on_error(&mut self, items: &[(&[u8], bool)]) -> Vec<Outcome> {
        let mut outcomes = vec![Outcome::Correct; items.len()];
        let mut pending = Vec::new();
        for (i, &(msg, spam)) in items.iter().enumerate() {
            let Some(block) = normalised_block(msg) else {
                outcomes[i] = Outcome::Unreadable;
                continue;
            };
            let d = digest(&block);
            match self.known.get(&d) {
                Some(old) if old.spam == spam => outcomes[i] = Outcome::Known,
                Some(_) => outcomes[i] = self.train_inner(msg, spam),
                None => pending.push(i),
            }
        }
        let toks: Vec<(Vec<String>, bool)> = pending
            .iter()
            .map(|&i| {
                (message_tokens(&self.tokenizer, self.rules.as_deref(), items[i].0).unwrap_or_default(), items[i].1)
            })
            .collect();
        let mut scratch = self.model.clone();
        let picked = learn_on_error(&mut scratch, &toks, self.min.0, self.min.1);
        for (k, &i) in pending.iter().enumerate() {
            if picked[k] {
                outcomes[i] = self.train_inner(items[i].0, items[i].1);
            }
        }
        for &o in &outcomes {
            self.summary.add(o);
        }
        outcomes
    }

    /// Untrains one message, if it was trained.
    pub fn forget(&mut self, msg: &[u8]) -> Outcome {
        let o = self.forget_inner(msg);
        self.summary.add(o);
        o
    }

    fn forget_inner(&mut self, msg: &[u8]) -> Outcome {
        let Some(block) = normalised_block(msg) else { return Outcome::Unreadable };
        let d = digest(&block);
        let Some(old) = self.known.remove(&d) else { return Outcome::NotKnown };
        let h = Headers::parse(&block);
        let refs: Vec<&str> = old.rules.iter().map(String::as_str).collect();
        let tokens = self.tokenizer.tokens(&h, &refs);
        self.apply(&tokens, old.spam, -1);
        self.batch.add.retain(|(x, _)| *x != d);
        self.batch.remove.push(d);
        Outcome::Forgotten
    }

    /// Totals so far.
    pub fn summary(&self) -> TrainSummary {
        self.summary
    }

    /// Writes everything in one transaction.
    pub fn commit(self) -> Result<TrainSummary, StoreError> {
        if !self.batch.is_empty() {
            self.store.apply(&self.batch)?;
        }
        Ok(self.summary)
    }
}

/// Tokens of a message for classification or in-memory training (cross-validation): the
/// normalised header block's tokens plus the rules that fire on it.
pub fn message_tokens(tokenizer: &Tokenizer, rules: Option<&RuleSet>, msg: &[u8]) -> Option<Vec<String>> {
    let block = normalised_block(msg)?;
    let h = Headers::parse(&block);
    let fired = fired_rules(rules, &h, msg.len() as u64);
    let refs: Vec<&str> = fired.iter().map(String::as_str).collect();
    Some(tokenizer.tokens(&h, &refs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalising_ignores_line_ends_and_mbox_line() {
        let a = normalised_block(b"From x@y Mon\nSubject: a\r\nFrom: b\r\n\r\nbody").unwrap();
        let b = normalised_block(b"Subject: a\nFrom: b\n\nother body").unwrap();
        assert_eq!(a, b);
        assert_eq!(digest(&a), digest(&b));
        assert!(normalised_block(b"\x00\x01binary").is_none());
        assert!(normalised_block(b"just some text\n").is_none());
        assert!(normalised_block(b"").is_none());
    }
}
