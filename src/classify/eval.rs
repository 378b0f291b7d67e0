//! k-fold cross-validation of rules + classifier over labelled messages, header-only.
//!
//! Each message is reduced to its header block (what `TOP n 0` returns); its LIST size is
//! the whole message's. Messages are dealt into `k` folds by their digest (stable, not by
//! file order), a model is trained on `k − 1` folds and every message of the held-out fold
//! is evaluated with the rule set and that model, exactly as the proxy would. Optionally the
//! test folds are stripped of a list of header fields first (the collectors' fields), to
//! show the figures do not depend on them. Reported: spam caught and ham flagged by the
//! verdict at the rule set's threshold, and the spam caught at 0.1 %, 0.5 % and 1 % ham
//! flagged by the classifier's probability alone, with the probability threshold for each.
use super::model::Model;
use super::tokenize::Tokenizer;
use super::train::{digest, learn_on_error, message_tokens, normalised_block};
use crate::rules::{Headers, RuleSet};

/// One labelled message.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub bytes: Vec<u8>,
    pub spam: bool,
}

/// One scored message: truth, verdict, probability.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub spam: bool,
    pub flagged: bool,
    pub probability: Option<f64>,
}

/// Cross-validation figures.
#[derive(Debug, Clone)]
pub struct Report {
    pub spam: usize,
    pub ham: usize,
    /// Share of spam the verdict flags (rules + bands at the threshold).
    pub caught: f64,
    /// Share of ham the verdict flags.
    pub flagged: f64,
    /// (ham-flagged budget, spam caught by probability alone, probability threshold).
    pub operating_points: Vec<(f64, f64, f64)>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "verdict at threshold: spam caught {:.1}% of {}, ham flagged {:.2}% of {}",
            self.caught * 100.0,
            self.spam,
            self.flagged * 100.0,
            self.ham
        )?;
        for (budget, caught, t) in &self.operating_points {
            writeln!(
                f,
                "bayes alone: {:.1}% spam caught at <= {:.1}% ham flagged (p >= {t:.4})",
                caught * 100.0,
                budget * 100.0
            )?;
        }
        Ok(())
    }
}

/// For each ham-flagged budget: the share of spam with probability above the lowest
/// threshold that flags at most that share of ham, and that threshold.
pub fn operating_points(scored: &[Scored], budgets: &[f64]) -> Vec<(f64, f64, f64)> {
    let mut hams: Vec<f64> = scored.iter().filter(|s| !s.spam).map(|s| s.probability.unwrap_or(0.5)).collect();
    let spams: Vec<f64> = scored.iter().filter(|s| s.spam).map(|s| s.probability.unwrap_or(0.5)).collect();
    hams.sort_by(|a, b| b.total_cmp(a));
    budgets
        .iter()
        .map(|&b| {
            let allowed = (b * hams.len() as f64).floor() as usize;
            // Flag p > t where t is the (allowed+1)-th highest ham probability.
            let t = hams.get(allowed).copied().unwrap_or(0.0);
            let caught = spams.iter().filter(|&&p| p > t).count();
            (b, if spams.is_empty() { 0.0 } else { caught as f64 / spams.len() as f64 }, t)
        })
        .collect()
}

/// Removes every field whose name the tokenizer-style pattern list matches.
pub fn strip_fields(msg: &[u8], names: &Tokenizer) -> Vec<u8> {
    let block = crate::mailfiles::header_block(msg);
    let h = Headers::parse(block);
    let mut out = Vec::with_capacity(msg.len());
    let mut pos = 0;
    for f in h.fields() {
        if names.ignores(f.name()) {
            let r = f.range();
            out.extend_from_slice(&msg[pos..r.start]);
            pos = r.end;
        }
    }
    out.extend_from_slice(&msg[pos..]);
    out
}

/// Runs k-fold cross-validation. `strip` (when given) is removed from test messages;
/// `on_error` trains each fold the way `popsift train` does by default (train-on-error),
/// otherwise every training message is trained.
pub fn cross_validate(
    messages: &[Labelled],
    rules: &RuleSet,
    tokenizer: &Tokenizer,
    k: usize,
    strip: Option<&Tokenizer>,
    on_error: bool,
) -> (Report, Vec<Scored>) {
    let k = k.max(2);
    let prepared = folds(messages, rules, tokenizer, k);
    let mut scored = Vec::with_capacity(prepared.len());
    for fold in 0..k {
        let mut model = Model::default().with_minimums(1, 1).with_tokenizer(tokenizer.clone());
        let train: Vec<(Vec<String>, bool)> =
            prepared.iter().filter(|p| p.0 != fold).map(|(_, t, m)| (t.clone(), m.spam)).collect();
        if on_error {
            let d = super::BayesSettings::default();
            learn_on_error(&mut model, &train, d.min_spam, d.min_ham);
        } else {
            for (t, spam) in &train {
                model.learn(t, *spam, 1);
            }
        }
        for (f, _, m) in &prepared {
            if *f != fold {
                continue;
            }
            let bytes = match strip {
                Some(s) => strip_fields(&m.bytes, s),
                None => m.bytes.clone(),
            };
            let Some(block) = normalised_block(&bytes) else { continue };
            let (v, p) = rules.evaluate_with_model(&block, m.bytes.len() as u64, Some(&model));
            scored.push(Scored { spam: m.spam, flagged: v.spam, probability: p });
        }
    }
    let spam = scored.iter().filter(|s| s.spam).count();
    let ham = scored.len() - spam;
    let share = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let report = Report {
        spam,
        ham,
        caught: share(scored.iter().filter(|s| s.spam && s.flagged).count(), spam),
        flagged: share(scored.iter().filter(|s| !s.spam && s.flagged).count(), ham),
        operating_points: operating_points(&scored, &[0.001, 0.005, 0.01]),
    };
    (report, scored)
}

/// Logistic regression over the same token sets, for comparison with the chi-squared
/// combining (measured, not shipped): binary features, plain SGD with L2 decay, `epochs`
/// passes in a fixed shuffled order. Returns the operating points of its probability alone
/// (0.1 %, 0.5 %, 1 % ham flagged), from k-fold cross-validation like [`cross_validate`].
pub fn logistic_cross_validate(
    messages: &[Labelled],
    rules: &RuleSet,
    tokenizer: &Tokenizer,
    k: usize,
    epochs: usize,
) -> Vec<(f64, f64, f64)> {
    use std::collections::HashMap;
    let k = k.max(2);
    let prepared: Vec<(usize, Vec<String>, bool)> =
        folds(messages, rules, tokenizer, k).into_iter().map(|(f, t, m)| (f, t, m.spam)).collect();
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let mut scored = Vec::new();
    for fold in 0..k {
        let train: Vec<&(usize, Vec<String>, bool)> = prepared.iter().filter(|p| p.0 != fold).collect();
        let n = train.len();
        let mut w: HashMap<&str, f64> = HashMap::new();
        let mut bias = 0.0;
        let (rate, l2) = (0.05, 1e-4);
        for epoch in 0..epochs {
            for i in 0..n {
                let (_, tokens, spam) = train[(i * 7919 + epoch * 104_729) % n];
                let z = bias + tokens.iter().map(|t| w.get(t.as_str()).copied().unwrap_or(0.0)).sum::<f64>();
                let g = (if *spam { 1.0 } else { 0.0 }) - sigmoid(z);
                bias += rate * g;
                for t in tokens {
                    let e = w.entry(t.as_str()).or_insert(0.0);
                    *e += rate * (g - l2 * *e);
                }
            }
        }
        for (f, tokens, spam) in &prepared {
            if *f == fold {
                let z = bias + tokens.iter().map(|t| w.get(t.as_str()).copied().unwrap_or(0.0)).sum::<f64>();
                scored.push(Scored { spam: *spam, flagged: false, probability: Some(sigmoid(z)) });
            }
        }
    }
    operating_points(&scored, &[0.001, 0.005, 0.01])
}

/// Each readable message with its fold (from the digest of its header block, so a message
/// lands in the same fold in every run) and its tokens.
fn folds<'a>(
    messages: &'a [Labelled],
    rules: &RuleSet,
    tokenizer: &Tokenizer,
    k: usize,
) -> Vec<(usize, Vec<String>, &'a Labelled)> {
    messages
        .iter()
        .filter_map(|m| {
            let fold = digest(&normalised_block(&m.bytes)?)[0] as usize % k;
            Some((fold, message_tokens(tokenizer, Some(rules), &m.bytes)?, m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_points_pick_thresholds_from_ham() {
        let mut s = Vec::new();
        for i in 0..1000 {
            s.push(Scored { spam: false, flagged: false, probability: Some(i as f64 / 10_000.0) });
        }
        s.push(Scored { spam: false, flagged: false, probability: Some(0.95) });
        for p in [0.99, 0.97, 0.5, 0.09] {
            s.push(Scored { spam: true, flagged: false, probability: Some(p) });
        }
        let pts = operating_points(&s, &[0.001, 0.01]);
        // One ham in 1001 may be flagged at 0.1 %: the threshold is the second highest ham.
        assert_eq!(pts[0].2, 0.0999);
        assert_eq!(pts[0].1, 0.75);
    }

    #[test]
    fn strips_named_fields_only() {
        let t = Tokenizer::new(["X-Barracuda*"]);
        let out = strip_fields(b"A: 1\r\nX-Barracuda-X: 2\r\n  folded\r\nB: 3\r\n\r\nbody", &t);
        assert_eq!(out, b"A: 1\r\nB: 3\r\n\r\nbody");
    }
}
