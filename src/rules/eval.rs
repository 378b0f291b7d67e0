//! Evaluating a rule set against one message's headers: the proxy's hot path.
//!
//! One pass per header target (the regex matcher, an Aho-Corasick scan, hash lookups), then
//! `exists` and `size_over` rules, negations, `expr` rules in dependency order (sub-rules
//! that only feed `expr` rules are computed on demand, see `Deferred`), and finally
//! the verdict: score = sum of matched scores; an `allow` rule beats everything; otherwise the
//! most severe of the matched direct actions and (when score ≥ threshold) the configured
//! spam action.
use std::borrow::Cow;

use super::compile::{Form, Source, Target, TargetMatcher};
use super::header::{parse_addresses, parse_addresses_undecoded, Headers};
use super::lists::{domain_of, for_each_suffix};
use super::{Action, RuleSet, Verdict};

/// A fixed-size bit set over rule indices.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    #[inline]
    fn set(&mut self, i: u32, v: bool) {
        let (w, b) = ((i / 64) as usize, i % 64);
        if let Some(word) = self.0.get_mut(w) {
            if v {
                *word |= 1 << b;
            } else {
                *word &= !(1 << b);
            }
        }
    }
    #[inline]
    fn get(&self, i: u32) -> bool {
        self.0.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + b)
            })
        })
    }
}

/// The text a target presents to matchers; `None` when the header is absent.
pub fn target_value<'h>(h: &'h Headers, t: &Target) -> Option<Cow<'h, str>> {
    match (&t.source, t.form) {
        (Source::All, Form::Raw) => Some(Cow::Owned(h.all_raw())),
        (Source::All, _) => Some(Cow::Owned(h.all_decoded())),
        (Source::EnvelopeFrom, _) => super::envelope::envelope_from(h).map(Cow::Owned),
        (Source::Named(n), Form::Decoded) => h.get(n).map(Cow::Borrowed),
        (Source::Named(n), Form::Raw) => h.get_raw(n).map(Cow::Borrowed),
        (Source::Named(n), form) => {
            if !h.contains(n) {
                return None;
            }
            Some(Cow::Owned(mailbox_part(h.get_all_raw(n), form)))
        }
        (Source::ToCc, form) => {
            if !h.contains("to") && !h.contains("cc") {
                return None;
            }
            let mut parts = Vec::new();
            for name in ["to", "cc"] {
                if let Some(v) = match form {
                    Form::Decoded => h.get(name).map(Cow::Borrowed),
                    Form::Raw => h.get_raw(name).map(Cow::Borrowed),
                    _ => h.contains(name).then(|| Cow::Owned(mailbox_part(h.get_all_raw(name), form))),
                } {
                    parts.push(v);
                }
            }
            Some(Cow::Owned(parts.join("\n")))
        }
    }
}

fn mailbox_part<'a>(raws: impl Iterator<Item = &'a str>, form: Form) -> String {
    let mut out = String::new();
    for raw in raws {
        let boxes = if form == Form::NameRaw { parse_addresses_undecoded(raw) } else { parse_addresses(raw) };
        for m in boxes {
            let s = if form == Form::Addr { m.addr } else { m.name };
            if s.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&s);
        }
    }
    out
}

/// The addresses in a target's value, for `domain_in`/`address_in`.
pub(crate) fn addresses_of(h: &Headers, t: &Target, value: &str) -> Vec<String> {
    let raws: Vec<&str> = match &t.source {
        Source::Named(n) if t.form != Form::Addr => h.get_all_raw(n).collect(),
        Source::ToCc if t.form != Form::Addr => h.get_all_raw("to").chain(h.get_all_raw("cc")).collect(),
        _ => return value.lines().map(|l| l.trim().to_ascii_lowercase()).filter(|l| !l.is_empty()).collect(),
    };
    let mut out = Vec::new();
    for raw in raws {
        let boxes = parse_addresses(raw);
        if boxes.iter().all(|m| m.addr.is_empty()) {
            // Not an address header: take the bare value (e.g. a host name).
            let v = raw.trim().to_ascii_lowercase();
            if !v.is_empty() && !v.contains(char::is_whitespace) {
                out.push(v);
            }
        }
        for m in boxes {
            if !m.addr.is_empty() {
                out.push(m.addr.to_ascii_lowercase());
            }
        }
    }
    out
}

pub(crate) fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

fn match_target(h: &Headers, value: &Option<Cow<'_, str>>, tm: &TargetMatcher, hits: &mut Bits) {
    let text: &str = value.as_deref().unwrap_or("");
    if let Some((set, owners)) = &tm.regex {
        set.for_each_match(text, |p| {
            if let Some(rs) = owners.get(p) {
                for &r in rs {
                    hits.set(r, true);
                }
            }
        });
    }
    if let Some(kw) = &tm.keywords {
        let lowered = kw.haystack(text);
        let hay: &str = &lowered;
        let bytes = hay.as_bytes();
        for m in kw.ac.find_overlapping_iter(hay) {
            let Some(owners) = kw.owners.get(m.pattern().as_usize()) else {
                continue;
            };
            let mut whole: Option<bool> = None;
            for &(r, ww) in owners {
                if ww {
                    let ok = *whole.get_or_insert_with(|| {
                        let before = m.start() == 0 || !is_word_byte(bytes[m.start() - 1]);
                        let after = m.end() >= bytes.len() || !is_word_byte(bytes[m.end()]);
                        let first_word = bytes.get(m.start()).is_some_and(|&b| is_word_byte(b));
                        let last_word = m.end() > 0 && bytes.get(m.end() - 1).is_some_and(|&b| is_word_byte(b));
                        (before || !first_word) && (after || !last_word)
                    });
                    if !ok {
                        continue;
                    }
                }
                hits.set(r, true);
            }
        }
    }
    if (!tm.domains.is_empty() || !tm.addresses.is_empty()) && value.is_some() {
        for addr in addresses_of(h, &tm.target, text) {
            if let Some(rs) = tm.addresses.get(addr.as_str()) {
                rs.iter().for_each(|&r| hits.set(r, true));
            }
            if !tm.domains.is_empty() {
                let d = domain_of(&addr);
                for_each_suffix(&d, |s| {
                    if let Some(rs) = tm.domains.get(s) {
                        rs.iter().for_each(|&r| hits.set(r, true));
                    }
                });
            }
        }
    }
}

/// Evaluates `set` against parsed headers (no classifier: no `bayes:` rule fires).
pub fn evaluate(set: &RuleSet, h: &Headers, size: u64) -> Verdict {
    evaluate_with(set, h, size, None)
}

/// The classifier callback: ids of the rules that fired → spam probability.
pub type Classify<'a> = &'a mut dyn FnMut(&[&str]) -> Option<f64>;

/// How a deferred rule is computed: an index into `RuleSet::backtrack` or `RuleSet::exprs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deferred {
    Backtrack(u32),
    Expr(u32),
}

/// One message's evaluation state: the hits so far and the rules not computed yet.
///
/// A backtracking pattern over the whole header block can cost tens of microseconds, and
/// SpamAssassin's `__` sub-rules are mostly such patterns behind a cheap guard in their meta
/// (`__NAKED_TO && __PDS_TO_BRAND_SUBJECT`). Unreported backtracking and `expr` rules
/// therefore start *pending* and run only when an `expr` needs their value
/// ([`Expr::eval_lazy`](super::expr::Expr::eval_lazy)); a pending rule nobody asks for never
/// runs, and being unreported it cannot change the verdict.
struct Eval<'s, 'h> {
    set: &'s RuleSet,
    h: &'h Headers,
    hits: Bits,
    pending: Bits,
    /// Target values built so far (`ALL` is built once per message, not once per rule).
    values: Vec<(&'s Target, Option<Cow<'h, str>>)>,
}

impl Eval<'_, '_> {
    /// Runs backtracking rule `i` and returns its final value: negation applied, and out of
    /// steps means not firing, negated or not.
    fn run_backtrack(&mut self, i: usize) -> bool {
        let set = self.set;
        let Some((t, re, r)) = set.backtrack.get(i) else { return false };
        let vi = match self.values.iter().position(|(vt, _)| *vt == t) {
            Some(vi) => vi,
            None => {
                self.values.push((t, target_value(self.h, t)));
                self.values.len() - 1
            }
        };
        let neg = set.rules.get(*r as usize).is_some_and(|rule| rule.negate);
        match super::backtrack::try_match(re, self.values[vi].1.as_deref().unwrap_or("")) {
            Some(m) => m != neg,
            None => false,
        }
    }

    /// Computes every pending backtracking rule (before the classifier sees the hits).
    fn force_backtracks(&mut self) {
        for (i, b) in self.set.backtrack.iter().enumerate() {
            if self.pending.get(b.2) {
                self.pending.set(b.2, false);
                let v = self.run_backtrack(i);
                self.hits.set(b.2, v);
            }
        }
    }
}

impl super::expr::Operands for Eval<'_, '_> {
    fn known(&self, r: u32) -> Option<bool> {
        (!self.pending.get(r)).then(|| self.hits.get(r))
    }

    fn force(&mut self, r: u32) -> bool {
        if !self.pending.get(r) {
            return self.hits.get(r);
        }
        self.pending.set(r, false);
        let set = self.set;
        let v = match set.deferred.get(r as usize).copied().flatten() {
            Some(Deferred::Backtrack(i)) => self.run_backtrack(i as usize),
            Some(Deferred::Expr(i)) => match set.exprs.get(i as usize) {
                Some((_, x)) => {
                    let neg = set.rules.get(r as usize).is_some_and(|rule| rule.negate);
                    x.eval_lazy(self) != neg
                }
                None => false,
            },
            None => false,
        };
        self.hits.set(r, v);
        v
    }
}

/// Evaluates `set` with a classifier: after the header, `exists` and `size_over` rules (and
/// their negations), `classify` gets the ids of the rules that fired and returns the spam
/// probability (or `None`); the `bayes:` bands are set from it, then `expr` rules run, so
/// they can combine bands with other rules.
pub fn evaluate_with(set: &RuleSet, h: &Headers, size: u64, classify: Option<Classify<'_>>) -> Verdict {
    finish(run(set, h, size, classify))
}

/// What one evaluation knew about each rule: its final value, or `None` for a deferred rule
/// nobody asked for (never computed). For explaining a verdict without re-running matchers
/// ([`super::explain`]).
pub(crate) struct Known {
    hits: Bits,
    pending: Bits,
}

impl Known {
    pub(crate) fn get(&self, r: u32) -> Option<bool> {
        (!self.pending.get(r)).then(|| self.hits.get(r))
    }
}

/// Evaluates again as [`evaluate_with`] did, with the classifier's answer `bayes` given, and
/// keeps the per-rule values (the same lazy work: deferred rules stay pending).
pub(crate) fn evaluate_known(set: &RuleSet, h: &Headers, size: u64, bayes: Option<f64>) -> Known {
    let mut answer = |_: &[&str]| bayes;
    let classify: Option<Classify<'_>> = if bayes.is_some() { Some(&mut answer) } else { None };
    let ev = run(set, h, size, classify);
    Known { hits: ev.hits, pending: ev.pending }
}

/// Every rule's value, `expr` rules included (the deferred ones only on demand).
fn run<'s, 'h>(set: &'s RuleSet, h: &'h Headers, size: u64, classify: Option<Classify<'_>>) -> Eval<'s, 'h> {
    let mut hits = Bits::new(set.rules.len());
    // Built values (`ALL`, `EnvelopeFrom`, `From:addr`, …) are kept for the backtracking
    // rules over the same targets; a borrowed header value costs nothing to look up again.
    let mut values = Vec::new();
    for tm in &set.targets {
        let value = target_value(h, &tm.target);
        match_target(h, &value, tm, &mut hits);
        if matches!(value, Some(Cow::Owned(_))) {
            values.push((&tm.target, value));
        }
    }
    let mut pending = Bits::new(set.rules.len());
    for (r, d) in set.deferred.iter().enumerate() {
        if d.is_some() {
            pending.set(r as u32, true);
        }
    }
    let mut ev = Eval { set, h, hits, pending, values };
    for (i, (_, _, r)) in set.backtrack.iter().enumerate() {
        if !ev.pending.get(*r) {
            let v = ev.run_backtrack(i);
            ev.hits.set(*r, v);
        }
    }
    for (name, want, r) in &set.exists {
        ev.hits.set(*r, h.contains(name) == *want);
    }
    for &(limit, r) in &set.sizes {
        ev.hits.set(r, size > limit);
    }
    for &r in &set.negated {
        let v = ev.hits.get(r);
        ev.hits.set(r, !v);
    }
    if let Some(classify) = classify {
        // The classifier sees every non-`expr` rule that fired, as without deferral.
        ev.force_backtracks();
        let fired: Vec<&str> = ev.hits.ones().filter_map(|i| set.rules.get(i as usize).map(|r| &*r.id)).collect();
        if let Some(p) = classify(&fired) {
            for &(lo, hi, r) in &set.bayes {
                let neg = set.rules.get(r as usize).is_some_and(|rule| rule.negate);
                ev.hits.set(r, super::schema::in_band(p, lo, hi) != neg);
            }
        }
    }
    for (r, x) in &set.exprs {
        if ev.pending.get(*r) {
            continue;
        }
        let v = x.eval_lazy(&mut ev);
        let neg = set.rules.get(*r as usize).is_some_and(|rule| rule.negate);
        ev.hits.set(*r, v != neg);
    }
    ev
}

/// The verdict from the rules' values.
fn finish(ev: Eval<'_, '_>) -> Verdict {
    let set = ev.set;
    let hits = ev.hits;
    let mut score = 0.0;
    let mut allow = false;
    let mut direct: Option<Action> = None;
    let mut rules = Vec::new();
    for i in hits.ones() {
        let Some(rule) = set.rules.get(i as usize) else {
            continue;
        };
        if !rule.reported() {
            continue;
        }
        if let Some(s) = rule.score {
            score += s;
        }
        match rule.action {
            Some(Action::Allow) => allow = true,
            Some(a) => direct = direct.max(Some(a)),
            None => {}
        }
        rules.push(rule.id.clone());
    }
    let by_score = score >= set.threshold;
    let (spam, action) = if allow {
        (false, Some(Action::Allow))
    } else {
        let from_score = (by_score && set.spam_action != Action::Allow).then_some(set.spam_action);
        (by_score || direct.is_some(), direct.max(from_score))
    };
    Verdict { score, threshold: set.threshold, spam, action, rules }
}
