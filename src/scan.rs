//! `popsift check` and `popsift scan`: the rule maintainer's tools.
//!
//! `check` loads a rule path and prints a one-line summary (exit 0) or every error (exit 1).
//! `scan` evaluates messages on disk — `.eml` files, Maildir folders (`cur/` + `new/`), mbox
//! files, directories of messages — and prints each verdict, a summary and, with `--labels`,
//! how much spam was caught and how much ham was flagged.
//!
//! Exit codes: 0 done; 1 rule errors or bad arguments; 2 some inputs could not be read (the
//! readable ones are still scanned).
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::classify::eval::{operating_points, Scored};
use crate::classify::handle::load_model;
use crate::classify::Model;
use crate::cli::{CheckArgs, ScanArgs};
use crate::rules::{Action, EngineOptions, RuleSet, Verdict};

/// `popsift check`.
pub fn run_check(args: &CheckArgs) -> i32 {
    match RuleSet::load(&args.rules, &EngineOptions::default()) {
        Ok(set) => {
            let files = set.file_count();
            println!("rules: {} rules in {} file{} OK", set.len(), files, if files == 1 { "" } else { "s" },);
            0
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("rules: {} error{} in {}", e.len(), if e.len() == 1 { "" } else { "s" }, args.rules.display());
            1
        }
    }
}

/// One message read from disk: a label for output (path, or `path#N` inside an mbox) and
/// its bytes.
#[derive(Debug, Clone)]
pub struct MessageItem {
    pub label: String,
    pub bytes: Vec<u8>,
}

/// Reads messages from a path: an `.eml`/message file (an mbox `From ` first line is fine),
/// an mbox file with several messages (`path#1`, `path#2`, …), a Maildir (`cur/`, `new/`),
/// or a directory of message files (`*.eml`, `*.msg`, names without a dot, `*.mbox`, and
/// Maildirs inside it). Files are taken in name order. Any unreadable file is an error.
pub fn read_messages(path: &Path) -> std::io::Result<Vec<MessageItem>> {
    let (items, failed) = read_messages_lenient(path)?;
    match failed.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(items),
    }
}

/// Like [`read_messages`], but a file inside a directory that cannot be read is returned
/// in the second list instead of failing the whole path. A missing or unreadable `path`
/// itself is still an error.
#[allow(clippy::type_complexity)]
pub fn read_messages_lenient(path: &Path) -> std::io::Result<(Vec<MessageItem>, Vec<(PathBuf, std::io::Error)>)> {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    collect_messages(path, &mut out, &mut failed)?;
    Ok((out, failed))
}

fn collect_messages(
    path: &Path,
    out: &mut Vec<MessageItem>,
    failed: &mut Vec<(PathBuf, std::io::Error)>,
) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let is_maildir = path.join("cur").is_dir() && path.join("new").is_dir();
        if is_maildir {
            for sub in ["new", "cur"] {
                for f in sorted_entries(&path.join(sub))? {
                    if f.is_file() {
                        match std::fs::read(&f) {
                            Ok(bytes) => out.push(MessageItem { label: f.display().to_string(), bytes }),
                            Err(e) => failed.push((f, e)),
                        }
                    }
                }
            }
            return Ok(());
        }
        for f in sorted_entries(path)? {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            if f.is_dir() {
                if f.join("cur").is_dir() && f.join("new").is_dir() {
                    if let Err(e) = collect_messages(&f, out, failed) {
                        failed.push((f, e));
                    }
                }
                continue;
            }
            let lower = name.to_ascii_lowercase();
            let wanted = lower.ends_with(".eml")
                || lower.ends_with(".msg")
                || lower.ends_with(".mbox")
                || lower.ends_with(".mbx")
                || !lower.contains('.');
            if wanted {
                match read_file(&f) {
                    Ok(v) => out.extend(v),
                    Err(e) => failed.push((f, e)),
                }
            }
        }
        return Ok(());
    }
    out.extend(read_file(path)?);
    Ok(())
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

fn read_file(path: &Path) -> std::io::Result<Vec<MessageItem>> {
    let bytes = std::fs::read(path)?;
    let label = path.display().to_string();
    let parts = split_mbox(&bytes);
    if parts.len() <= 1 {
        return Ok(vec![MessageItem { label, bytes }]);
    }
    Ok(parts
        .into_iter()
        .enumerate()
        .map(|(i, m)| MessageItem { label: format!("{label}#{}", i + 1), bytes: m.to_vec() })
        .collect())
}

/// Splits mbox content at `From ` lines that start the file or follow an empty line.
/// Content not starting with `From ` is one message.
pub fn split_mbox(bytes: &[u8]) -> Vec<&[u8]> {
    if !bytes.starts_with(b"From ") {
        return vec![bytes];
    }
    let mut starts = vec![0usize];
    let mut i = 0;
    while let Some(p) = memchr::memmem::find(&bytes[i..], b"\nFrom ") {
        let at = i + p + 1;
        let prev = &bytes[..at - 1];
        if prev.ends_with(b"\n") || prev.ends_with(b"\n\r") || prev.is_empty() {
            starts.push(at);
        }
        i = at;
    }
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(bytes.len());
        out.push(&bytes[s..e]);
    }
    out
}

/// The header block of a message: up to and including the first empty line.
pub fn header_block(msg: &[u8]) -> &[u8] {
    let mut pos = 0;
    while pos < msg.len() {
        let end = memchr::memchr(b'\n', &msg[pos..]).map(|i| pos + i + 1).unwrap_or(msg.len());
        let line = &msg[pos..end];
        if line == b"\n" || line == b"\r\n" {
            return &msg[..end];
        }
        pos = end;
    }
    msg
}

/// Reads a labels TSV: `file name <TAB> spam|ham [<TAB> …]`; a header row is skipped.
pub fn read_labels(path: &Path) -> std::io::Result<HashMap<String, bool>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(name), Some(label)) = (cols.next(), cols.next()) else {
            continue;
        };
        match label.trim().to_ascii_lowercase().as_str() {
            "spam" => out.insert(name.trim().to_string(), true),
            "ham" => out.insert(name.trim().to_string(), false),
            _ => continue,
        };
    }
    Ok(out)
}

/// The key a labels file uses for a message: its file name.
pub fn label_key(label: &str) -> String {
    let base = label.rsplit('/').next().unwrap_or(label);
    base.to_string()
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `popsift scan`.
pub fn run_scan(args: &ScanArgs) -> i32 {
    let Some(spam_action) = Action::parse(&args.spam_action) else {
        eprintln!("scan: --spam-action {:?}: expected allow, tag, hide, quarantine or delete", args.spam_action);
        return 1;
    };
    let opts = EngineOptions { spam_action };
    let t0 = Instant::now();
    let set = match RuleSet::load(&args.rules, &opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let compile_time = t0.elapsed();
    let model = match load_scan_model(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("scan: {e}");
            return 1;
        }
    };
    let labels = match &args.labels {
        Some(p) => match read_labels(p) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("scan: cannot read labels {}: {e}", p.display());
                return 1;
            }
        },
        None => None,
    };
    let mut code = 0;
    let mut items = Vec::new();
    for p in &args.paths {
        match read_messages(p) {
            Ok(v) => items.extend(v),
            Err(e) => {
                eprintln!("scan: cannot read {}: {e}", p.display());
                code = 2;
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
fn load_scan_model(args: &ScanArgs) -> Result<Option<Model>, String> {
    let r = crate::train_cmd::resolve(args.config.as_deref(), args.state_dir.as_deref(), Some(&args.rules))?;
    match load_model(&r.state_dir, &r.settings, std::time::Duration::from_secs(10)) {
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
        Err(e) => Err(e.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_split() {
        let m = b"From a\nSubject: 1\n\nbody\nFrom b\n\nFrom c\nSubject: 2\n\nx\n";
        let parts = split_mbox(m);
        assert_eq!(parts.len(), 2);
        assert!(parts[1].starts_with(b"From c"));
        assert_eq!(split_mbox(b"Subject: x\n\n").len(), 1);
    }

    #[test]
    fn header_block_stops_at_blank_line() {
        assert_eq!(header_block(b"A: b\r\n\r\nbody"), b"A: b\r\n\r\n");
        assert_eq!(header_block(b"A: b"), b"A: b");
    }
}
