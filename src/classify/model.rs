//! The model: token → (spam, ham) message counts, and how a message's tokens combine into a
//! spam probability.
//!
//! Per token, Gary Robinson's smoothed probability
//! `f(w) = (s·x + n·p(w)) / (s + n)`, where `p(w)` is the token's spam share corrected for
//! the unequal numbers of spam and ham trained, `n` the number of messages that had it,
//! `x = 0.5` the prior and `s = 0.45` its strength (SpamBayes' defaults). Tokens with
//! `|f(w) − 0.5| < 0.1` are not used; of the rest the 150 strongest are combined with
//! Fisher's method: `H = C⁻¹(−2 Σ ln f(w), 2n)`, `S = C⁻¹(−2 Σ ln(1 − f(w)), 2n)` and the
//! probability is `(1 + S − H) / 2` — SpamBayes' "chi-squared combining", also bogofilter's
//! default. It is near 0 or 1 when the evidence agrees and near 0.5 when it conflicts, which
//! is what makes an "unsure" band meaningful.
//!
//! Lookups go by a 64-bit hash of the token ([`token_hash`]), so classifying a message
//! builds no `String` per token: the tokenizer hashes each token as it writes it into one
//! reused buffer, and the model is one map from hash to counts (with the token's text kept
//! beside the counts for `train --stats` and the store). With ~10⁵ tokens the chance that
//! two share a hash is about 10⁻⁹.
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use super::tokenize::Tokenizer;
use crate::rules::Headers;

/// Robinson's `s`: how strongly the prior holds against little evidence.
const ROBINSON_S: f64 = 0.45;
/// Robinson's `x`: the probability of a token never seen.
const ROBINSON_X: f64 = 0.5;
/// Tokens closer to 0.5 than this are ignored.
const MIN_STRENGTH: f64 = 0.1;
/// At most this many tokens are combined.
const MAX_DISCRIMINATORS: usize = 150;

/// Token hash → (counts, token text). The keys are already hashes: the map does not hash
/// them again.
type TokenMap = HashMap<u64, Entry, BuildHasherDefault>;

/// One token's counts and text.
#[derive(Debug, Clone)]
struct Entry {
    counts: Counts,
    text: Box<str>,
}

/// The hash the model is keyed by: foldhash (quality variant) with a fixed seed, so it is
/// the same in every process and every run.
pub fn token_hash(token: &str) -> u64 {
    const STATE: foldhash::quality::FixedState = foldhash::quality::FixedState::with_seed(0x706f_7073_6966_7421);
    STATE.hash_one(token)
}

/// Passes an already computed hash through.
#[derive(Debug, Default, Clone, Copy)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with this hasher; anything else is folded in.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type BuildHasherDefault = std::hash::BuildHasherDefault<IdentityHasher>;

/// Spam and ham message counts of one token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub spam: u32,
    pub ham: u32,
}

/// A read-only model snapshot (the in-memory copy of the store), like a `RuleSet`.
#[derive(Debug, Clone)]
pub struct Model {
    tokens: TokenMap,
    nspam: u64,
    nham: u64,
    version: u32,
    min_spam: u64,
    min_ham: u64,
    /// Store generation this snapshot was read at (changes with every training batch).
    generation: u64,
    tokenizer: Tokenizer,
    /// Where the proxy's confident verdicts go to be learned (autolearn on), see
    /// [`super::autolearn`].
    autolearner: Option<std::sync::Arc<super::autolearn::Autolearner>>,
}

impl Default for Model {
    fn default() -> Self {
        Model::new(super::TOKENS_VERSION)
    }
}

impl Model {
    /// An empty model of a token-set version, with the default minimums.
    pub fn new(version: u32) -> Model {
        let d = super::BayesSettings::default();
        Model {
            tokens: TokenMap::default(),
            nspam: 0,
            nham: 0,
            version,
            min_spam: d.min_spam,
            min_ham: d.min_ham,
            generation: 0,
            tokenizer: Tokenizer::default(),
            autolearner: None,
        }
    }

    /// Builds a model from stored parts.
    pub fn from_parts(
        tokens: impl IntoIterator<Item = (Box<str>, Counts)>,
        nspam: u64,
        nham: u64,
        version: u32,
    ) -> Model {
        let tokens = tokens.into_iter().map(|(text, counts)| (token_hash(&text), Entry { counts, text })).collect();
        Model { tokens, nspam, nham, ..Model::new(version) }
    }

    /// Applies the config: minimum training and the tokenizer's ignore list.
    pub fn with_settings(self, s: &super::BayesSettings) -> Model {
        let mut m = self.with_minimums(s.min_spam, s.min_ham);
        m.tokenizer = Tokenizer::from_settings(s);
        m
    }

    /// Classifies with this tokenizer (it must be the one the counts were made with).
    pub fn with_tokenizer(mut self, t: Tokenizer) -> Model {
        self.tokenizer = t;
        self
    }

    /// Sets the store generation the snapshot was read at.
    pub fn with_generation(mut self, generation: u64) -> Model {
        self.generation = generation;
        self
    }

    /// Attaches the proxy's autolearn queue to this snapshot.
    pub fn with_autolearner(mut self, a: Option<std::sync::Arc<super::autolearn::Autolearner>>) -> Model {
        self.autolearner = a;
        self
    }

    /// The autolearn queue, when autolearn is on.
    pub fn autolearner(&self) -> Option<&super::autolearn::Autolearner> {
        self.autolearner.as_deref()
    }

    /// Store generation this snapshot was read at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The tokenizer this model's tokens come from.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The spam probability of parsed headers given the rules that fired, or `None` when the
    /// model is not ready.
    pub fn classify(&self, h: &Headers, rules_fired: &[&str]) -> Option<f64> {
        if !self.ready() {
            return None;
        }
        thread_local! {
            // One buffer per thread, reused: classifying allocates nothing per message once
            // it has grown to the largest token set seen.
            static SCRATCH: std::cell::RefCell<super::tokenize::TokenSet> = Default::default();
        }
        SCRATCH.with(|cell| {
            let mut set = cell.borrow_mut();
            self.tokenizer.fill_token_hashes(h, rules_fired, &mut set);
            Some(self.combine_hashes(set.hashes()))
        })
    }

    /// Chi-squared combining of the strongest clues among token hashes (each once).
    fn combine_hashes(&self, hashes: &[u64]) -> f64 {
        let mut clues: Vec<(f64, u64)> = Vec::with_capacity(hashes.len());
        for &k in hashes {
            if let Some(e) = self.tokens.get(&k) {
                let p = self.token_probability(e.counts);
                if (p - 0.5).abs() >= MIN_STRENGTH {
                    clues.push((p, k));
                }
            }
        }
        if clues.len() > MAX_DISCRIMINATORS {
            // The strongest, ties broken by hash so the choice does not depend on order.
            let key = |c: &(f64, u64)| (-(c.0 - 0.5).abs(), c.1);
            clues.select_nth_unstable_by(MAX_DISCRIMINATORS, |a, b| {
                let (ka, kb) = (key(a), key(b));
                ka.0.total_cmp(&kb.0).then(ka.1.cmp(&kb.1))
            });
            clues.truncate(MAX_DISCRIMINATORS);
        }
        combine(clues.iter().map(|c| c.0))
    }

    /// Sets the minimum numbers of trained spam and ham below which there is no probability.
    pub fn with_minimums(mut self, min_spam: u64, min_ham: u64) -> Model {
        self.min_spam = min_spam;
        self.min_ham = min_ham;
        self
    }

    /// Trained spam messages.
    pub fn nspam(&self) -> u64 {
        self.nspam
    }

    /// Trained ham messages.
    pub fn nham(&self) -> u64 {
        self.nham
    }

    /// Token-set version the counts were made with.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Number of distinct tokens.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// Counts of one token.
    pub fn counts(&self, token: &str) -> Counts {
        self.tokens.get(&token_hash(token)).map(|e| e.counts).unwrap_or_default()
    }

    /// Every token with its counts.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Counts)> {
        self.tokens.values().map(|e| (&*e.text, e.counts))
    }

    /// Whether the model has enough training to give probabilities (and the current token
    /// set).
    pub fn ready(&self) -> bool {
        self.version == super::TOKENS_VERSION && self.nspam >= self.min_spam && self.nham >= self.min_ham
    }

    /// Adds (`delta` = 1) or removes (`delta` = −1) one message's token set.
    pub fn learn(&mut self, tokens: &[String], spam: bool, delta: i32) {
        let n = if spam { &mut self.nspam } else { &mut self.nham };
        *n = n.saturating_add_signed(delta as i64);
        for t in tokens {
            let k = token_hash(t);
            let e =
                self.tokens.entry(k).or_insert_with(|| Entry { counts: Counts::default(), text: t.as_str().into() });
            let c = &mut e.counts;
            let v = if spam { &mut c.spam } else { &mut c.ham };
            *v = v.saturating_add_signed(delta);
            if c.spam == 0 && c.ham == 0 {
                self.tokens.remove(&k);
            }
        }
    }

    /// Robinson's f(w) for a token's counts.
    pub fn token_probability(&self, c: Counts) -> f64 {
        let (s, h) = (c.spam as f64, c.ham as f64);
        let spam_ratio = if self.nspam > 0 { (s / self.nspam as f64).min(1.0) } else { 0.0 };
        let ham_ratio = if self.nham > 0 { (h / self.nham as f64).min(1.0) } else { 0.0 };
        let n = s + h;
        if spam_ratio + ham_ratio == 0.0 {
            return ROBINSON_X;
        }
        let p = spam_ratio / (spam_ratio + ham_ratio);
        (ROBINSON_S * ROBINSON_X + n * p) / (ROBINSON_S + n)
    }

    /// The tokens that count for this message, strongest first, with their f(w).
    pub fn clues<'t>(&self, tokens: impl IntoIterator<Item = &'t str>) -> Vec<(&'t str, f64)> {
        let mut clues: Vec<(&str, f64)> = tokens
            .into_iter()
            .filter_map(|t| {
                let c = self.tokens.get(&token_hash(t))?.counts;
                let p = self.token_probability(c);
                ((p - 0.5).abs() >= MIN_STRENGTH).then_some((t, p))
            })
            .collect();
        clues.sort_by(|a, b| (b.1 - 0.5).abs().total_cmp(&(a.1 - 0.5).abs()).then_with(|| a.0.cmp(b.0)));
        clues.truncate(MAX_DISCRIMINATORS);
        clues
    }

    /// The spam probability of a message's token set, or `None` when the model is not
    /// ready (too little training, or another token-set version).
    pub fn probability(&self, tokens: &[String]) -> Option<f64> {
        self.probability_of(tokens.iter().map(String::as_str))
    }

    /// [`Self::probability`] over any token iterator.
    pub fn probability_of<'t>(&self, tokens: impl IntoIterator<Item = &'t str>) -> Option<f64> {
        if !self.ready() {
            return None;
        }
        Some(combine(self.clues(tokens).iter().map(|c| c.1)))
    }
}

/// Fisher/Robinson chi-squared combining of token probabilities.
pub fn combine(probs: impl Iterator<Item = f64>) -> f64 {
    let (mut ln_h, mut ln_s, mut n) = (0.0f64, 0.0f64, 0u32);
    for p in probs {
        let p = p.clamp(1e-9, 1.0 - 1e-9);
        ln_h += p.ln();
        ln_s += (1.0 - p).ln();
        n += 1;
    }
    if n == 0 {
        return 0.5;
    }
    let h = 1.0 - chi2q(-2.0 * ln_h, 2 * n);
    let s = 1.0 - chi2q(-2.0 * ln_s, 2 * n);
    ((1.0 + s - h) / 2.0).clamp(0.0, 1.0)
}

/// P(χ² ≥ x2) for `v` (even) degrees of freedom.
fn chi2q(x2: f64, v: u32) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    for i in 1..v / 2 {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn chi2q_known_values() {
        // P(χ²₂ ≥ 2) = e^-1.
        assert!((chi2q(2.0, 2) - (-1.0f64).exp()).abs() < 1e-12);
        assert!(chi2q(0.0, 10) > 0.999);
        assert!(chi2q(1000.0, 10) < 1e-100);
    }

    #[test]
    fn untrained_model_has_no_probability() {
        let mut m = Model::default();
        for _ in 0..19 {
            m.learn(&toks(&["a"]), true, 1);
            m.learn(&toks(&["b"]), false, 1);
        }
        assert_eq!(m.probability(&toks(&["a"])), None);
        m.learn(&toks(&["a"]), true, 1);
        m.learn(&toks(&["b"]), false, 1);
        assert!(m.probability(&toks(&["a", "c"])).unwrap() > 0.9);
        assert!(m.probability(&toks(&["b"])).unwrap() < 0.1);
        assert_eq!(m.probability(&toks(&["unknown"])), Some(0.5));
    }

    #[test]
    fn learn_then_unlearn_is_exact() {
        let mut m = Model::default();
        m.learn(&toks(&["a", "b"]), true, 1);
        m.learn(&toks(&["b"]), false, 1);
        m.learn(&toks(&["a", "b"]), true, -1);
        assert_eq!(m.counts("a"), Counts::default());
        assert_eq!(m.counts("b"), Counts { spam: 0, ham: 1 });
        assert_eq!((m.nspam(), m.nham(), m.token_count()), (0, 1, 1));
    }
}
