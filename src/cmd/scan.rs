//! `popsift scan`: the rule maintainer's tool for trying rules on mail on disk.
//!
//! `scan` evaluates messages on disk — `.eml` files, Maildir folders (`cur/` + `new/`), mbox
//! files, directories of messages — and prints each verdict, a summary and, with `--labels`,
//! how much spam was caught and how much ham was flagged.
//!
//! Messages are read by [`crate::mailfiles`]. Exit codes ([`Exit`]): 0 done; 1 rule errors;
//! 2 bad arguments, or some inputs could not be read (the readable ones are still scanned).
use std::io::Write;
use std::time::Instant;

use super::Exit;
use crate::classify::eval::{operating_points, Scored};
use crate::classify::handle::load_model_from;
use crate::classify::Model;
use crate::cli::ScanArgs;
use crate::mailfiles::{header_block, label_key, read_labels, read_messages};
use crate::rules::{Action, EngineOptions, RuleSet, Verdict};

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `popsift scan`.
pub fn run(args: &ScanArgs) -> Exit {
    let Some(spam_action) = Action::parse(&args.spam_action) else {
        eprintln!("scan: --spam-action {:?}: expected allow, tag, hide, quarantine or delete", args.spam_action);
        return Exit::Usage;
    };
    let resolved =
        match crate::cmd::train::resolve(args.config.as_deref(), args.state_dir.as_deref(), args.rules.as_deref()) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("scan: {e}");
                return Exit::Usage;
            }
        };
    let opts = EngineOptions { spam_action };
    let t0 = Instant::now();
    let rules = match super::rules_path(resolved.rules.clone(), &resolved.state_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("scan: {e}");
            return Exit::Usage;
        }
    };
    let set = match RuleSet::load(&rules, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Exit::Data;
        }
    };
    let compile_time = t0.elapsed();
    let model = match load_scan_model(&resolved) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("scan: {e}");
            return Exit::Usage;
        }
    };
    let labels = match &args.labels {
        Some(p) => match read_labels(p) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("scan: cannot read labels {}: {e}", p.display());
                return Exit::Usage;
            }
        },
        None => None,
    };
    let mut code = Exit::Ok;
    let mut items = Vec::new();
    for p in &args.paths {
        match read_messages(p) {
            Ok(v) => items.extend(v),
            Err(e) => {
                eprintln!("scan: cannot read {}: {e}", p.display());
                code = Exit::Usage;
            }
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut stats = Stats::default();
    let mut eval_time = std::time::Duration::ZERO;
    let repeat = args.repeat.max(1);
    for item in &items {
        let block = header_block(&item.bytes);
        let start = Instant::now();
        let (mut v, mut p) = set.evaluate_with_model(block, item.bytes.len() as u64, model.as_ref());
        for _ in 1..repeat {
            (v, p) = set.evaluate_with_model(std::hint::black_box(block), item.bytes.len() as u64, model.as_ref());
        }
        eval_time += start.elapsed();
        let label = labels.as_ref().and_then(|l| l.get(&label_key(&item.label)).copied());
        stats.add(&item.label, &v, label);
        if let Some(truth) = label {
            stats.scored.push(Scored { spam: truth, flagged: v.spam, probability: p });
        }
        let _ = if args.json {
            writeln!(out, "{}", verdict_json_with_bayes(&item.label, &v, p))
        } else {
            writeln!(out, "{}", verdict_line(&item.label, &v))
        };
    }
    let _ = out.flush();
    drop(out);
    let summary = stats.summary(labels.is_some());
    // In JSON mode stdout stays pure JSON lines: the summary goes to stderr.
    if args.json {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if args.timing {
        let n = (items.len() * repeat).max(1) as f64;
        let line = format!(
            "timing: {} rules compiled in {:.1} ms; {} evaluations, {:.2} µs/message (parse + decode + rules)\n",
            set.len(),
            compile_time.as_secs_f64() * 1e3,
            items.len() * repeat,
            eval_time.as_secs_f64() * 1e6 / n
        );
        if args.json {
            eprint!("{line}");
        } else {
            print!("{line}");
        }
    }
    code
}

/// `path<TAB>spam|ham<TAB>score<TAB>action|-<TAB>rule,rule`.
pub fn verdict_line(label: &str, v: &Verdict) -> String {
    let rules: Vec<&str> = v.rules.iter().map(|r| &**r).collect();
    format!(
        "{label}\t{}\t{:.1}\t{}\t{}",
        if v.spam { "spam" } else { "ham" },
        v.score,
        v.action.map(Action::as_str).unwrap_or("-"),
        rules.join(",")
    )
}

/// One JSON object: `path`, `verdict`, `score`, `action` (null when none), `rules`.
pub fn verdict_json(label: &str, v: &Verdict) -> String {
    verdict_json_with_bayes(label, v, None)
}

/// [`verdict_json`] plus `bayes`: the classifier's spam probability, or null without a
/// (sufficiently trained) model.
pub fn verdict_json_with_bayes(label: &str, v: &Verdict, bayes: Option<f64>) -> String {
    let obj = serde_json::json!({
        "path": label,
        "verdict": if v.spam { "spam" } else { "ham" },
        "score": (v.score * 1000.0).round() / 1000.0,
        "action": v.action.map(Action::as_str),
        "rules": v.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "bayes": bayes.map(|p| (p * 1e6).round() / 1e6),
    });
    let _ = json_str;
    obj.to_string()
}

/// The classifier model for `scan`: `--state-dir` (or the config's `state_dir`, or the
/// default) — the one `popsift train` writes. `None` when no model was trained there.
fn load_scan_model(r: &crate::cmd::train::Resolved) -> Result<Option<Model>, crate::classify::store::StoreError> {
    match load_model_from(&r.state_dir, &r.store, &r.settings, std::time::Duration::from_secs(10)) {
        Ok(Some(m)) if !m.ready() => {
            eprintln!(
                "scan: the classifier in {} has too little training ({} spam, {} ham; needs {} and {}): no bayes probabilities",
                r.state_dir.display(),
                m.nspam(),
                m.nham(),
                r.settings.min_spam,
                r.settings.min_ham
            );
            Ok(Some(m))
        }
        Ok(m) => Ok(m),
        Err(e) => Err(e),
    }
}

#[derive(Default)]
struct Stats {
    total: usize,
    spam: usize,
    allowed: usize,
    actions: std::collections::BTreeMap<&'static str, usize>,
    labeled_spam: usize,
    caught: usize,
    labeled_ham: usize,
    flagged: Vec<String>,
    unlabeled: usize,
    /// Labelled messages with the classifier's probability, for the operating points.
    scored: Vec<Scored>,
}

impl Stats {
    fn add(&mut self, label: &str, v: &Verdict, truth: Option<bool>) {
        self.total += 1;
        if v.spam {
            self.spam += 1;
        }
        if v.action == Some(Action::Allow) {
            self.allowed += 1;
        }
        if let Some(a) = v.action {
            *self.actions.entry(a.as_str()).or_default() += 1;
        }
        match truth {
            Some(true) => {
                self.labeled_spam += 1;
                if v.spam {
                    self.caught += 1;
                }
            }
            Some(false) => {
                self.labeled_ham += 1;
                if v.spam {
                    self.flagged.push(label.to_string());
                }
            }
            None => self.unlabeled += 1,
        }
    }

    fn summary(&self, with_labels: bool) -> String {
        let mut s = format!(
            "summary: {} messages, {} spam, {} ham ({} allowed)",
            self.total,
            self.spam,
            self.total - self.spam,
            self.allowed
        );
        if !self.actions.is_empty() {
            let acts: Vec<String> = self.actions.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("; actions: {}", acts.join(" ")));
        }
        s.push('\n');
        if with_labels {
            let pct = |a: usize, b: usize| {
                if b == 0 {
                    0.0
                } else {
                    a as f64 * 100.0 / b as f64
                }
            };
            s.push_str(&format!(
                "labels: spam caught {}/{} ({:.1}%), ham flagged {}/{} ({:.1}%), unlabeled {}\n",
                self.caught,
                self.labeled_spam,
                pct(self.caught, self.labeled_spam),
                self.flagged.len(),
                self.labeled_ham,
                pct(self.flagged.len(), self.labeled_ham),
                self.unlabeled
            ));
            if self.scored.iter().any(|s| s.probability.is_some()) {
                for (budget, caught, t) in operating_points(&self.scored, &[0.001, 0.005, 0.01]) {
                    s.push_str(&format!(
                        "bayes: spam caught {:.1}% at <= {:.1}% ham flagged (probability > {t:.4})\n",
                        caught * 100.0,
                        budget * 100.0
                    ));
                }
            }
            for f in self.flagged.iter().take(50) {
                s.push_str(&format!("ham flagged: {f}\n"));
            }
        }
        s
    }
}
