//! Why a rule fired, in words a mailbox owner can check: for each rule of a verdict, the
//! header it read and the text it matched, with a little context (issue 13, the review
//! page's detail view).
//!
//! A post-pass, never part of evaluation: [`super::eval`] only learns *that* a rule
//! matched (one pass per header target, no spans), which is what keeps it fast. Here each
//! FIRED rule's own matcher runs again on the same headers with a `find` to get the span:
//! its regex (the [`super::multiregex::MultiRegex`] pattern, or the backtracking one), its
//! keyword (the target's Aho-Corasick automaton, whole-word checks included), or the
//! address/domain that was listed. `exists`, `size_over` and `bayes:` rules say what made
//! them true; an `expr:` rule lists the rules it combines and whether each held (as the
//! evaluation found, "not needed" for one it skipped; nothing is re-run); a negated
//! rule says that nothing matched. Each explanation is bounded ([`MAX_CHARS`]): header
//! values can be long (an `ALL` target is the whole header block), the history keeps only a
//! few hundred characters per rule.
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::compile::{Cond, Form, Source, Target, TargetMatcher};
use super::eval::{addresses_of, is_word_byte, target_value};
use super::header::Headers;
use super::lists::{domain_of, for_each_suffix};
use super::RuleSet;

/// Most characters of one explanation (`before` + `found` + `after`).
pub const MAX_CHARS: usize = 200;
/// Characters of context on each side of a match.
const CONTEXT: usize = 30;
/// Most rules explained for one message (the rest get a one-line note).
const MAX_NODES: usize = 64;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the session path explains verdicts (and keeps From/Subject): on only when the
/// decision history records them (`history.enabled`), so a proxy without the review page
/// pays nothing. Set once at start.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// See [`set_enabled`].
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What one fired rule matched.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Matched {
    pub rule: String,
    /// What the rule read: a header target as written in rules (`subject`, `from:addr`,
    /// `ALL`), or `size`, `bayes`, `expr`, `exists`.
    pub header: String,
    /// Context before the match (or the whole explanation when there is no span).
    pub before: String,
    /// The matched text; empty when the rule has no span (negated, size, bayes, expr).
    pub found: String,
    pub after: String,
}

/// Explains each rule of `fired` (ids, as in [`super::Verdict::rules`]) against the headers
/// it was evaluated on. `bayes` is the classifier's probability, if one was computed.
pub fn explain(set: &RuleSet, h: &Headers, size: u64, fired: &[Arc<str>], bayes: Option<f64>) -> Vec<Matched> {
    Explainer::new(set, h, size, bayes).explain(fired)
}

/// One message's explanation state. The work is bounded by the number of rules explained
/// (at most [`MAX_NODES`], each explained once): an `expr` rule's operands are read from
/// the evaluation's own values ([`super::eval::Known`], computed once, as lazily as the
/// verdict was), never by re-running their matchers, so shared or deep sub-rules cost
/// nothing more and a backtracking `__` rule the evaluation skipped is not run here either.
struct Explainer<'s, 'h> {
    set: &'s RuleSet,
    h: &'h Headers,
    size: u64,
    bayes: Option<f64>,
    known: Option<super::eval::Known>,
    /// Target values built so far (`ALL` is built once per message, not once per rule).
    values: Vec<(&'s Target, Option<Cow<'h, str>>)>,
    /// Matcher runs (regex, keyword scan, list lookup, backtracking `find`), for tests.
    matcher_calls: usize,
}

impl<'s, 'h> Explainer<'s, 'h> {
    fn new(set: &'s RuleSet, h: &'h Headers, size: u64, bayes: Option<f64>) -> Self {
        Explainer { set, h, size, bayes, known: None, values: Vec::new(), matcher_calls: 0 }
    }

    fn explain(&mut self, fired: &[Arc<str>]) -> Vec<Matched> {
        let mut out: Vec<Matched> = Vec::with_capacity(fired.len());
        for id in fired {
            if out.iter().any(|m| *m.rule == **id) {
                continue;
            }
            let why = if out.len() >= MAX_NODES {
                Some(note("", format!("(not explained: more than {MAX_NODES} rules fired)")))
            } else {
                self.set.rules.iter().position(|x| x.id == *id).and_then(|r| self.why(r as u32))
            };
            let why = why.unwrap_or_else(|| Why {
                header: String::new(),
                before: "matched (not reproducible now)".into(),
                ..Why::default()
            });
            out.push(Matched {
                rule: id.to_string(),
                header: why.header,
                before: why.before,
                found: why.found,
                after: why.after,
            });
        }
        out
    }

    /// The evaluation's value of rule `r` (`None`: never computed, the verdict did not need it).
    fn known(&mut self, r: u32) -> Option<bool> {
        let (set, h, size, bayes) = (self.set, self.h, self.size, self.bayes);
        self.known.get_or_insert_with(|| super::eval::evaluate_known(set, h, size, bayes)).get(r)
    }

    /// Why rule `r`, which fired, holds for these headers; `None` when it cannot be shown.
    fn why(&mut self, r: u32) -> Option<Why> {
        let set = self.set;
        let rule = set.rules.get(r as usize)?;
        match rule.cond {
            Cond::Header => {
                if rule.negate {
                    // It fired, so nothing matched: no matcher needs to run again.
                    return Some(note(targets_of(set, r), "nothing matched (the rule fires when nothing does)".into()));
                }
                self.header_match(r)
            }
            Cond::Exists => {
                let (name, want, _) = set.exists.iter().find(|e| e.2 == r)?;
                let present = self.h.contains(name);
                if (present == *want) == rule.negate {
                    return None;
                }
                Some(match self.h.get(name) {
                    Some(v) => snippet(name, v, 0..v.len()),
                    None => note(name.clone(), "no such header".into()),
                })
            }
            Cond::Size => {
                let (limit, _) = set.sizes.iter().find(|e| e.1 == r)?;
                let size = self.size;
                if (size > *limit) == rule.negate {
                    return None;
                }
                let cmp = if size > *limit { "over" } else { "not over" };
                Some(note("size", format!("{size} octets, {cmp} {limit}")))
            }
            Cond::Bayes => {
                let (lo, hi, _) = set.bayes.iter().find(|e| e.2 == r)?;
                let p = self.bayes?;
                if super::schema::in_band(p, *lo, *hi) == rule.negate {
                    return None;
                }
                let inside = if rule.negate { "outside" } else { "in" };
                Some(note("bayes", format!("probability {p:.3}, {inside} {lo}..{hi}")))
            }
            Cond::Expr => {
                let (_, x) = set.exprs.iter().find(|e| e.0 == r)?;
                let mut deps = Vec::new();
                x.deps(&mut deps);
                let mut seen = Vec::with_capacity(deps.len());
                let mut parts = Vec::with_capacity(deps.len());
                for d in deps {
                    if seen.contains(&d) {
                        continue;
                    }
                    seen.push(d);
                    let Some(dep) = set.rules.get(d as usize) else { continue };
                    let value = match self.known(d) {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "not needed",
                    };
                    parts.push(format!("{} {value}", dep.id));
                }
                Some(note("expr", parts.join(", ")))
            }
        }
    }

    /// The value of target `t`, built once per message.
    fn value(&mut self, t: &'s Target) -> Option<&str> {
        let i = match self.values.iter().position(|(vt, _)| *vt == t) {
            Some(i) => i,
            None => {
                self.values.push((t, target_value(self.h, t)));
                self.values.len() - 1
            }
        };
        self.values.get(i).and_then(|(_, v)| v.as_deref())
    }

    /// The first match of header rule `r`: its regex, keyword, listed address or domain, or
    /// its backtracking regex.
    fn header_match(&mut self, r: u32) -> Option<Why> {
        let set = self.set;
        let h = self.h;
        for tm in set.targets.iter().filter(|tm| owns(tm, r)) {
            self.matcher_calls += 1;
            let Some(text) = self.value(&tm.target) else { continue };
            if let Some(w) = target_match(h, tm, text, r) {
                return Some(w);
            }
        }
        for (t, re, rr) in &set.backtrack {
            if *rr != r {
                continue;
            }
            self.matcher_calls += 1;
            let Some(value) = self.value(t) else { continue };
            if let Some(range) = super::backtrack::find(re, value) {
                return Some(snippet(&target_name(t), value, range));
            }
        }
        None
    }
}

#[derive(Debug, Default)]
struct Why {
    header: String,
    before: String,
    found: String,
    after: String,
}

fn note(header: impl Into<String>, text: String) -> Why {
    Why { header: header.into(), before: cut_chars(&text, MAX_CHARS), ..Why::default() }
}

/// The targets a header rule reads, for a rule that fired because nothing matched.
fn targets_of(set: &RuleSet, r: u32) -> String {
    let mut names: Vec<String> = Vec::new();
    let mut add = |t: &Target| {
        let n = target_name(t);
        if !names.contains(&n) {
            names.push(n);
        }
    };
    for tm in &set.targets {
        if owns(tm, r) {
            add(&tm.target);
        }
    }
    for (t, _, rr) in &set.backtrack {
        if *rr == r {
            add(t);
        }
    }
    names.join(", ")
}

fn owns(tm: &TargetMatcher, r: u32) -> bool {
    tm.regex.as_ref().is_some_and(|(_, o)| o.iter().any(|v| v.contains(&r)))
        || tm.keywords.as_ref().is_some_and(|k| k.owners.iter().any(|v| v.iter().any(|(x, _)| *x == r)))
        || tm.domains.values().any(|v| v.contains(&r))
        || tm.addresses.values().any(|v| v.contains(&r))
}

/// A target as rules write it: `subject`, `from:addr`, `ALL`, `ToCc:name`.
pub fn target_name(t: &Target) -> String {
    let base = match &t.source {
        Source::Named(n) => n.clone(),
        Source::All => "ALL".into(),
        Source::ToCc => "ToCc".into(),
        Source::EnvelopeFrom => "EnvelopeFrom".into(),
    };
    match t.form {
        Form::Decoded => base,
        Form::Raw => format!("{base}:raw"),
        Form::Addr => format!("{base}:addr"),
        Form::Name => format!("{base}:name"),
        Form::NameRaw => format!("{base}:name:raw"),
    }
}

/// The first match of header rule `r` on one target's value: its regex, keyword, or listed
/// address or domain.
fn target_match(h: &Headers, tm: &TargetMatcher, text: &str, r: u32) -> Option<Why> {
    let name = target_name(&tm.target);
    if let Some((set, owners)) = &tm.regex {
        for (p, o) in owners.iter().enumerate() {
            if o.contains(&r) {
                if let Some(range) = set.find(p, text) {
                    return Some(snippet(&name, text, range));
                }
            }
        }
    }
    if let Some(kw) = &tm.keywords {
        let lowered = kw.haystack(text);
        let hay: &str = &lowered;
        let bytes = hay.as_bytes();
        for m in kw.ac.find_overlapping_iter(hay) {
            let Some(owners) = kw.owners.get(m.pattern().as_usize()) else { continue };
            let Some(&(_, whole)) = owners.iter().find(|(x, _)| *x == r) else { continue };
            if whole {
                // The same whole-word test as evaluation (`rules::eval`).
                let before = m.start() == 0 || !is_word_byte(bytes[m.start() - 1]);
                let after = m.end() >= bytes.len() || !is_word_byte(bytes[m.end()]);
                let first_word = bytes.get(m.start()).is_some_and(|&b| is_word_byte(b));
                let last_word = m.end() > 0 && bytes.get(m.end() - 1).is_some_and(|&b| is_word_byte(b));
                let whole_word = (before || !first_word) && (after || !last_word);
                if !whole_word {
                    continue;
                }
            }
            return Some(snippet(&name, hay, m.range()));
        }
    }
    if !tm.domains.is_empty() || !tm.addresses.is_empty() {
        for addr in addresses_of(h, &tm.target, text) {
            if tm.addresses.get(addr.as_str()).is_some_and(|v| v.contains(&r)) {
                return Some(Why {
                    header: name,
                    found: cut_chars(&addr, MAX_CHARS - 20),
                    after: " (listed address)".into(),
                    ..Why::default()
                });
            }
            let mut listed = None;
            for_each_suffix(&domain_of(&addr), |s| {
                if listed.is_none() && tm.domains.get(s).is_some_and(|v| v.contains(&r)) {
                    listed = Some(s.to_string());
                }
            });
            if let Some(d) = listed {
                let after = cut_chars(&format!(" (listed domain {d})"), MAX_CHARS / 2);
                return Some(Why { header: name, found: cut_chars(&addr, MAX_CHARS / 2), after, ..Why::default() });
            }
        }
    }
    None
}

/// `text[range]` with up to [`CONTEXT`] characters either side, `…` where cut, control
/// characters (the line breaks of an `ALL` value) shown as spaces; at most [`MAX_CHARS`].
fn snippet(header: &str, text: &str, range: std::ops::Range<usize>) -> Why {
    let (Some(pre), Some(mid), Some(post)) = (text.get(..range.start), text.get(range.clone()), text.get(range.end..))
    else {
        return note(header, cut_chars(text, MAX_CHARS));
    };
    let found = cut_chars(mid, MAX_CHARS - 2 * (CONTEXT + 1));
    let pre_chars = pre.chars().count();
    let before: String = if pre_chars > CONTEXT {
        let tail: String = pre.chars().skip(pre_chars - CONTEXT).collect();
        format!("…{tail}")
    } else {
        pre.to_string()
    };
    Why {
        header: header.to_string(),
        before: clean(&before),
        found: clean(&found),
        after: clean(&cut_chars(post, CONTEXT)),
    }
}

/// The first `n` characters of `s` (`…` appended when cut), control characters as spaces.
fn cut_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => clean(&format!("{}…", s.get(..i).unwrap_or(""))),
        None => clean(s),
    }
}

fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::EngineOptions;
    use std::path::Path;

    fn set(yaml: &str) -> RuleSet {
        RuleSet::from_yaml(Path::new("t.yaml"), yaml, &EngineOptions::default()).unwrap()
    }

    fn run(set: &RuleSet, block: &[u8]) -> Vec<Matched> {
        let h = Headers::parse(block);
        let v = set.evaluate_headers(&h, block.len() as u64);
        explain(set, &h, block.len() as u64, &v.rules, None)
    }

    #[test]
    fn regex_match_with_context() {
        let s = set("rules:\n  - id: pills\n    header: Subject\n    regex: '(?i)v[i1]agra'\n    score: 3\n");
        let m = run(&s, b"Subject: Cheap V1AGRA for you today\r\n\r\n");
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].rule.as_str(), m[0].header.as_str()), ("pills", "subject"));
        assert_eq!(
            (m[0].before.as_str(), m[0].found.as_str(), m[0].after.as_str()),
            ("Cheap ", "V1AGRA", " for you today")
        );
    }

    #[test]
    fn pattern_without_literal_is_found() {
        let s = set("rules:\n  - id: digits\n    header: Subject\n    regex: '\\d{4,}'\n    score: 1\n");
        let m = run(&s, b"Subject: order 123456 shipped\r\n\r\n");
        assert_eq!(m[0].found, "123456");
    }

    #[test]
    fn keyword_whole_word_and_listed_domain() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.txt"), "spam.example\n").unwrap();
        let yaml = "rules:\n  - id: kw\n    header: Subject\n    keywords: [cash]\n    whole_word: true\n    score: 1\n  - id: dom\n    header: From\n    domain_in: bad.txt\n    score: 1\n";
        let path = dir.path().join("r.yaml");
        std::fs::write(&path, yaml).unwrap();
        let s = RuleSet::load(&path, &EngineOptions::default()).unwrap();
        let m = run(&s, b"From: A <a@mx.spam.example>\r\nSubject: cashcash or CASH now\r\n\r\n");
        let kw = m.iter().find(|m| m.rule == "kw").unwrap();
        // "cashcash" is not the whole word: the match is the later "CASH".
        assert_eq!(kw.found, "CASH");
        assert!(kw.before.ends_with("or "), "{kw:?}");
        let dom = m.iter().find(|m| m.rule == "dom").unwrap();
        assert_eq!(dom.found, "a@mx.spam.example");
        assert!(dom.after.contains("spam.example"));
    }

    #[test]
    fn exists_size_negated_and_expr_say_why() {
        let yaml = "rules:
  - id: noid
    header: Message-ID
    exists: false
  - id: big
    size_over: 10
  - id: nosub
    header: Subject
    regex: 'hello'
    negate: true
  - id: both
    expr: 'noid && big'
    score: 2
";
        let s = set(yaml);
        let block = b"Subject: bye\r\n\r\n";
        let h = Headers::parse(block);
        let ids: Vec<Arc<str>> = ["both", "nosub", "noid", "big"].iter().map(|s| Arc::from(*s)).collect();
        let m = explain(&s, &h, 5000, &ids, None);
        assert_eq!(m[0].header, "expr");
        assert_eq!(m[0].before, "noid yes, big yes");
        assert!(m[1].before.contains("nothing matched"), "{:?}", m[1]);
        assert_eq!(m[2].before, "no such header");
        assert_eq!(m[3].before, "5000 octets, over 10");
    }

    #[test]
    fn long_values_are_bounded() {
        let s = set("rules:\n  - id: all\n    header: ALL\n    regex: 'x+'\n    score: 1\n");
        let long = format!("Subject: {}{}{}\r\nX-A: b\r\n\r\n", "a".repeat(500), "x".repeat(1000), "b".repeat(500));
        let m = run(&s, long.as_bytes());
        let total = m[0].before.chars().count() + m[0].found.chars().count() + m[0].after.chars().count();
        assert!(total <= MAX_CHARS + 2, "{total}");
        assert!(m[0].before.starts_with('…') && m[0].found.ends_with('…'));
        assert!(!m[0].after.contains('\n') && !m[0].after.contains('\r'));
    }

    /// A wide, deep `expr` tree (fan-out 10, depth 6) over shared backtracking `__` leaves:
    /// explaining it runs no matcher again and no more backtracking than evaluation did
    /// (re-deriving each operand recursively was ~10^5 runs).
    #[test]
    fn wide_deep_expr_is_bounded() {
        let mut y = String::from("rules:\n");
        for i in 0..10 {
            // Only the last leaf matches: lazy evaluation has to run all ten once.
            let word = if i == 9 { "hit".to_string() } else { format!("miss{i}") };
            y += &format!(
                "  - id: __L5_{i}\n    header: ALL\n    regex: '(?m)^Subject: (?!x){word}'\n    backtrack: true\n"
            );
        }
        for level in (1..5).rev() {
            for i in 0..10 {
                let ops: Vec<String> = (0..10).map(|j| format!("__L{}_{j}", level + 1)).collect();
                y += &format!("  - id: __L{level}_{i}\n    expr: '{}'\n", ops.join(" || "));
            }
        }
        let ops: Vec<String> = (0..10).map(|j| format!("__L1_{j}")).collect();
        y += &format!("  - id: top\n    expr: '{}'\n    score: 5\n", ops.join(" || "));
        y += "  - id: subj\n    header: Subject\n    regex: 'hit'\n    score: 1\n";
        let s = set(&y);
        let block = b"Subject: hit\r\n\r\n";
        let h = Headers::parse(block);
        let (runs0, _) = crate::rules::backtrack::runs();
        let v = s.evaluate_headers(&h, block.len() as u64);
        let (runs1, _) = crate::rules::backtrack::runs();
        assert_eq!(&*v.rules, [Arc::from("top"), Arc::from("subj")]);
        let mut e = Explainer::new(&s, &h, block.len() as u64, None);
        let m = e.explain(&v.rules);
        let (runs2, _) = crate::rules::backtrack::runs();
        // Leaves the prefilter rejects never start the backtracking engine.
        assert_eq!(runs1 - runs0, 1, "evaluation runs the matching leaf once");
        assert!(runs2 - runs1 <= runs1 - runs0, "explain: {} backtracking runs", runs2 - runs1);
        assert_eq!(e.matcher_calls, 1, "only `subj` is matched again");
        assert_eq!(m[0].before, "__L1_0 yes, __L1_1 not needed, __L1_2 not needed, __L1_3 not needed, __L1_4 not needed, __L1_5 not needed, __L1_6 not needed, __L1_7 not needed, __L1_8 not needed, __L1_9 not needed");
        assert_eq!(m[1].found, "hit");
    }

    #[test]
    fn explained_rules_are_capped() {
        let mut y = String::from("rules:\n");
        for i in 0..(MAX_NODES + 6) {
            y += &format!("  - id: r{i}\n    header: Subject\n    regex: 'a'\n    score: 1\n");
        }
        let s = set(&y);
        let block = b"Subject: a\r\n\r\n";
        let h = Headers::parse(block);
        let v = s.evaluate_headers(&h, block.len() as u64);
        let mut e = Explainer::new(&s, &h, block.len() as u64, None);
        let m = e.explain(&v.rules);
        assert_eq!(m.len(), MAX_NODES + 6);
        assert_eq!(e.matcher_calls, MAX_NODES);
        assert!(m[MAX_NODES].before.contains("not explained"), "{:?}", m[MAX_NODES]);
    }
}
