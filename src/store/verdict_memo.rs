//! An in-memory memo of rule verdicts per mailbox, valid for one rule-set generation.
//!
//! The header cache (redb) stores header blocks, not verdicts, because rules change. But
//! between two logins to the same mailbox the rules usually have not changed, and reading
//! back 10,000 header blocks and evaluating them again is what a warm login spends most of
//! its time on. So popsift also remembers, in memory, what evaluating each message produced
//! (verdict and tag rewrite), keyed by (upstream, user) → (UIDL, size), together with the
//! `Arc` of the rule set that produced it. A login whose rule set is that same `Arc`
//! (`Arc::ptr_eq`: the memo holds the `Arc`, so the address cannot be reused) takes the
//! memoised results and neither reads those headers nor evaluates them; after any reload the
//! memo is simply not used and is replaced at the next login. Nothing here is ever written to
//! disk, and a size mismatch (a reused UIDL) is a miss, as in the header cache. (UIDL,
//! size) is not an identity: the memo is not used for a listing with duplicate UIDLs, and a
//! memoised verdict that condemns is re-checked against fresh headers before any DELE
//! (see [`crate::session::verdicts`]).
//!
//! # Compact: one buffer per mailbox
//! The memo outlives the sessions (it is what makes a polling client's next login fast), so
//! what it keeps is what popsift holds once they have all ended (issue 16). Kept as a map
//! of `Arc<Evaluated>`, a mailbox of 20 messages was some 60 small allocations (each
//! evaluation, its UIDL, From and Subject, the map's table), made during the logins among the
//! sessions' own objects: 256 mailboxes left ~20,000 survivors that kept the allocator's
//! pages of those size classes from being given back. A [`MailboxMemo`] is instead one
//! exact-size buffer: a sorted offset table and the entries encoded after it (UIDL, size,
//! score, threshold, spam, action, bayes, fired rules, From, Subject, what each rule
//! matched, the classifier's clues), plus two side tables that only share `Arc`s already
//! held elsewhere: the rule ids (the rule set's own strings) and the tag rewrites (a
//! tagged spam's header blocks, too large to copy per login). A hit decodes one entry into
//! a fresh `Arc<Evaluated>` (a few small allocations per message of a warm login; a binary
//! search finds it). The buffers are still allocated during logins, among the sessions'
//! objects (a 20-message buffer is the size class of a session's future), so when no
//! session has run for a while they are moved to fresh allocations
//! ([`VerdictMemo::repack`], from `net::idle_release`), where they no longer pin the
//! pages the sessions left.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::rules::{Action, RuleSet, Verdict};
use crate::session::evaluated::{About, HeaderRewrite};
use crate::session::verdicts::Evaluated;
use crate::store::header_cache::Scope;
use crate::store::wire::{put_f64, put_str, put_uint, Reader};

/// Memoised results of one mailbox: (UIDL, LIST size) → evaluation, in one buffer (see the
/// module doc). Empty by default.
#[derive(Default)]
pub struct MailboxMemo {
    /// `[n u32 LE][n record offsets u32 LE, in (UIDL, size) order][records]`.
    buf: Box<[u8]>,
    /// Rule ids the records name by index.
    rules: Box<[Arc<str>]>,
    /// Tag rewrites the records name by index.
    rewrites: Box<[Arc<HeaderRewrite>]>,
}

impl std::fmt::Debug for MailboxMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxMemo").field("entries", &self.len()).field("bytes", &self.buf.len()).finish()
    }
}

const SPAM: u8 = 1;
const BAYES: u8 = 2;
const REWRITE: u8 = 4;
const ACTION_SHIFT: u8 = 3;

fn action_code(a: Option<Action>) -> u8 {
    match a {
        None => 0,
        Some(Action::Allow) => 1,
        Some(Action::Tag) => 2,
        Some(Action::Hide) => 3,
        Some(Action::Quarantine) => 4,
        Some(Action::Delete) => 5,
    }
}

fn action_of(code: u8) -> Option<Option<Action>> {
    Some(match code {
        0 => None,
        1 => Some(Action::Allow),
        2 => Some(Action::Tag),
        3 => Some(Action::Hide),
        4 => Some(Action::Quarantine),
        5 => Some(Action::Delete),
        _ => return None,
    })
}

impl MailboxMemo {
    /// The memo of `items` ((UIDL, LIST size, evaluation); for a key given twice the last
    /// one counts). `None` when it would not fit the buffer's 32-bit offsets (not memoised).
    pub fn build<'a>(items: impl IntoIterator<Item = (&'a str, u64, &'a Evaluated)>) -> Option<MailboxMemo> {
        let sorted: BTreeMap<(&str, u64), &Evaluated> = items.into_iter().map(|(u, s, e)| ((u, s), e)).collect();
        let n = sorted.len();
        let head = 4 + 4 * n;
        let mut buf: Vec<u8> = Vec::with_capacity(head + n * 96);
        buf.resize(head, 0);
        let mut rules: Vec<Arc<str>> = Vec::new();
        let mut rule_index: HashMap<&str, u64> = HashMap::new();
        let mut rewrites: Vec<Arc<HeaderRewrite>> = Vec::new();
        // Each tagged message usually has a rewrite of its own: a map, not a scan per message.
        let mut rewrite_index: HashMap<*const HeaderRewrite, u64> = HashMap::new();
        for (i, ((uidl, size), e)) in sorted.iter().enumerate() {
            let at = u32::try_from(buf.len()).ok()?;
            buf.get_mut(4 + 4 * i..8 + 4 * i)?.copy_from_slice(&at.to_le_bytes());
            put_str(&mut buf, uidl);
            put_uint(&mut buf, *size);
            let v = &e.verdict;
            put_f64(&mut buf, v.score);
            put_f64(&mut buf, v.threshold);
            let mut flags = action_code(v.action) << ACTION_SHIFT;
            if v.spam {
                flags |= SPAM;
            }
            if e.about.bayes.is_some() {
                flags |= BAYES;
            }
            if e.rewrite.is_some() {
                flags |= REWRITE;
            }
            buf.push(flags);
            if let Some(b) = e.about.bayes {
                put_f64(&mut buf, b);
            }
            if let Some(r) = &e.rewrite {
                let at = *rewrite_index.entry(Arc::as_ptr(r)).or_insert_with(|| {
                    rewrites.push(r.clone());
                    (rewrites.len() - 1) as u64
                });
                put_uint(&mut buf, at);
            }
            put_uint(&mut buf, v.rules.len() as u64);
            for id in &v.rules {
                let at = *rule_index.entry(id).or_insert_with(|| {
                    rules.push(id.clone());
                    (rules.len() - 1) as u64
                });
                put_uint(&mut buf, at);
            }
            put_str(&mut buf, &e.about.from);
            put_str(&mut buf, &e.about.subject);
            put_uint(&mut buf, e.about.matched.len() as u64);
            for m in e.about.matched.iter() {
                for s in [&m.rule, &m.header, &m.before, &m.found, &m.after] {
                    put_str(&mut buf, s);
                }
            }
            put_uint(&mut buf, e.about.clues.len() as u64);
            for c in e.about.clues.iter() {
                put_str(&mut buf, &c.token);
                put_f64(&mut buf, c.probability);
                put_uint(&mut buf, u64::from(c.spam));
                put_uint(&mut buf, u64::from(c.ham));
            }
        }
        u32::try_from(buf.len()).ok()?;
        buf.get_mut(..4)?.copy_from_slice(&u32::try_from(n).ok()?.to_le_bytes());
        Some(MailboxMemo { buf: buf.into_boxed_slice(), rules: rules.into(), rewrites: rewrites.into() })
    }

    /// A copy in fresh allocations (see [`VerdictMemo::repack`]).
    fn copied(&self) -> MailboxMemo {
        MailboxMemo { buf: self.buf.clone(), rules: self.rules.clone(), rewrites: self.rewrites.clone() }
    }

    /// Messages memoised.
    pub fn len(&self) -> usize {
        self.buf.get(..4).and_then(|b| b.try_into().ok()).map_or(0, |b| u32::from_le_bytes(b) as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record at sorted position `i`, positioned after its key, and its key.
    fn record(&self, i: usize) -> Option<(&str, u64, Reader<'_>)> {
        let at = self.buf.get(4 + 4 * i..8 + 4 * i)?;
        let at = u32::from_le_bytes(at.try_into().ok()?) as usize;
        let mut r = Reader::new(self.buf.get(at..)?);
        let uidl = r.str()?;
        let size = r.uint()?;
        Some((uidl, size, r))
    }

    /// What `(uidl, size)` evaluated to, decoded afresh; `None` for a miss (absent, or
    /// memoised under another size: a reused UIDL).
    pub fn get(&self, uidl: &str, size: u64) -> Option<Arc<Evaluated>> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (u, s, r) = self.record(mid)?;
            match (u, s).cmp(&(uidl, size)) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return self.decode(r).map(Arc::new),
            }
        }
        None
    }

    fn decode(&self, mut r: Reader<'_>) -> Option<Evaluated> {
        let score = r.f64()?;
        let threshold = r.f64()?;
        let flags = r.byte()?;
        let action = action_of(flags >> ACTION_SHIFT)?;
        let bayes = if flags & BAYES != 0 { Some(r.f64()?) } else { None };
        let rewrite = if flags & REWRITE != 0 {
            Some(self.rewrites.get(usize::try_from(r.uint()?).ok()?)?.clone())
        } else {
            None
        };
        let n = usize::try_from(r.uint()?).ok()?;
        let mut rules = Vec::with_capacity(n.min(self.rules.len().max(1) * 4));
        for _ in 0..n {
            rules.push(self.rules.get(usize::try_from(r.uint()?).ok()?)?.clone());
        }
        let from = r.str()?.into();
        let subject = r.str()?.into();
        let n = usize::try_from(r.uint()?).ok()?;
        let mut matched = Vec::with_capacity(n.min(r.rest.len()));
        for _ in 0..n {
            matched.push(crate::rules::explain::Matched {
                rule: r.str()?.to_string(),
                header: r.str()?.to_string(),
                before: r.str()?.to_string(),
                found: r.str()?.to_string(),
                after: r.str()?.to_string(),
            });
        }
        let n = usize::try_from(r.uint()?).ok()?;
        let mut clues = Vec::with_capacity(n.min(r.rest.len()));
        for _ in 0..n {
            clues.push(crate::classify::explain::Clue {
                token: r.str()?.to_string(),
                probability: r.f64()?,
                spam: r.u32()?,
                ham: r.u32()?,
            });
        }
        Some(Evaluated {
            verdict: Verdict { score, threshold, spam: flags & SPAM != 0, action, rules },
            rewrite,
            about: About { from, subject, bayes, matched: matched.into(), clues: clues.into() },
        })
    }
}

struct Slot {
    rules: Arc<RuleSet>,
    /// Generation of the classifier model the verdicts were made with (`None`: no model).
    model: Option<u64>,
    entries: Arc<MailboxMemo>,
    last_used: u64,
}

/// Process-wide memo, bounded by the number of mailboxes it remembers.
pub struct VerdictMemo {
    inner: Mutex<(HashMap<Scope, Slot>, u64)>,
    max_mailboxes: usize,
}

impl VerdictMemo {
    pub fn new(max_mailboxes: usize) -> VerdictMemo {
        VerdictMemo { inner: Mutex::new((HashMap::new(), 0)), max_mailboxes: max_mailboxes.max(1) }
    }

    /// The memo for `scope` if it was made with exactly `rules`; empty otherwise.
    pub fn known(&self, scope: &Scope, rules: &Arc<RuleSet>) -> Arc<MailboxMemo> {
        self.known_with_model(scope, rules, None)
    }

    /// The memo for `scope` if it was made with exactly `rules` and the classifier model of
    /// generation `model`; empty otherwise (training invalidates it like a rule reload).
    pub fn known_with_model(&self, scope: &Scope, rules: &Arc<RuleSet>, model: Option<u64>) -> Arc<MailboxMemo> {
        let Ok(mut guard) = self.inner.lock() else { return Arc::default() };
        let (map, clock) = &mut *guard;
        *clock += 1;
        match map.get_mut(scope) {
            Some(slot) if Arc::ptr_eq(&slot.rules, rules) && slot.model == model => {
                slot.last_used = *clock;
                slot.entries.clone()
            }
            _ => Arc::default(),
        }
    }

    /// Replaces the memo of `scope` with exactly `entries` (messages gone from the server
    /// drop out), made with `rules`. Evicts the least recently used mailbox when full.
    pub fn store(&self, scope: Scope, rules: Arc<RuleSet>, entries: MailboxMemo) {
        self.store_with_model(scope, rules, None, entries)
    }

    /// Moves every mailbox's memo (buffer, key, table) to fresh allocations, then frees
    /// the old ones; called when no session has run for a while (`net::idle_release`).
    /// The memo is written during logins, so its buffers sit among the sessions' own
    /// objects (a 20-message mailbox's buffer is the size class of a session's future) and,
    /// once the sessions are gone, each keeps an otherwise empty allocator page from being
    /// given back. Allocated anew while nothing else runs, the copies fill a few pages
    /// together. Entries, rule sets and recency are unchanged.
    ///
    /// The copying happens outside the lock (a memo of 256 large mailboxes is many
    /// megabytes, and logins take the lock on the runtime's workers); a mailbox stored
    /// again meanwhile keeps its new memo.
    pub fn repack(&self) {
        let copies = self.copies();
        self.install(copies);
    }

    /// Every mailbox's memo and key copied, with the original each was copied from; taken
    /// under the lock, copied outside it.
    fn copies(&self) -> Vec<(Scope, Arc<MailboxMemo>, Arc<MailboxMemo>)> {
        let originals: Vec<(Scope, Arc<MailboxMemo>)> = match self.inner.lock() {
            Ok(guard) => guard.0.iter().map(|(scope, slot)| (scope.clone(), slot.entries.clone())).collect(),
            Err(_) => return Vec::new(),
        };
        // Copied while the originals are alive, so the copies cannot take their places.
        originals
            .into_iter()
            .map(|(scope, original)| {
                let copy = Arc::new(original.copied());
                (scope.clone(), original, copy)
            })
            .collect()
    }

    /// Puts the copies in place of the mailboxes still holding the memo they were made
    /// from; a mailbox stored again since keeps its new memo.
    fn install(&self, copies: Vec<(Scope, Arc<MailboxMemo>, Arc<MailboxMemo>)>) {
        let mut copies: HashMap<Scope, (Arc<MailboxMemo>, Arc<MailboxMemo>)> =
            copies.into_iter().map(|(scope, original, copy)| (scope, (original, copy))).collect();
        let Ok(mut guard) = self.inner.lock() else { return };
        let (map, _) = &mut *guard;
        let mut fresh = HashMap::with_capacity(map.len());
        for (scope, slot) in map.drain() {
            match copies.remove_entry(&scope) {
                Some((key, (original, copy))) if Arc::ptr_eq(&original, &slot.entries) => {
                    fresh.insert(key, Slot { entries: copy, ..slot });
                }
                _ => {
                    fresh.insert(scope, slot);
                }
            }
        }
        // The originals go as their last holder lets go (a login may still read one).
        *map = fresh;
    }

    /// [`Self::store`] for verdicts made with the classifier model of generation `model`.
    pub fn store_with_model(&self, scope: Scope, rules: Arc<RuleSet>, model: Option<u64>, entries: MailboxMemo) {
        let Ok(mut guard) = self.inner.lock() else { return };
        let (map, clock) = &mut *guard;
        *clock += 1;
        if !map.contains_key(&scope) && map.len() >= self.max_mailboxes {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(scope, Slot { rules, model, entries: Arc::new(entries), last_used: *clock });
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::explain::Clue;
    use crate::rules::explain::Matched;

    fn eval(score: f64) -> Evaluated {
        Evaluated {
            verdict: Verdict { score, threshold: 5.0, spam: false, action: None, rules: vec![] },
            rewrite: None,
            about: Default::default(),
        }
    }

    fn memo_of(items: &[(&str, u64, Evaluated)]) -> MailboxMemo {
        MailboxMemo::build(items.iter().map(|(u, s, e)| (*u, *s, e))).unwrap()
    }

    /// Every field of an evaluation, compared exactly (floats by their bits).
    fn assert_same(a: &Evaluated, b: &Evaluated) {
        let (va, vb) = (&a.verdict, &b.verdict);
        assert_eq!(va.score.to_bits(), vb.score.to_bits());
        assert_eq!(va.threshold.to_bits(), vb.threshold.to_bits());
        assert_eq!((va.spam, va.action, &va.rules), (vb.spam, vb.action, &vb.rules));
        assert_eq!(a.rewrite, b.rewrite);
        assert_eq!(a.about.bayes.map(f64::to_bits), b.about.bayes.map(f64::to_bits));
        assert_eq!(a.about, b.about);
        let bits = |c: &[Clue]| c.iter().map(|c| c.probability.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.about.clues), bits(&b.about.clues));
    }

    /// The compact form gives back exactly what was stored: verdict, action, fired rules,
    /// tag rewrite, From, Subject, bayes, what each rule matched and the clues.
    #[test]
    fn every_field_round_trips_exactly() {
        let rewrite = Arc::new(HeaderRewrite {
            original: b"Subject: x\r\n\r\n".to_vec(),
            replacement: b"Subject: [SPAM] x\r\n\r\n".to_vec(),
        });
        let ids: Vec<Arc<str>> = vec![Arc::from("money"), Arc::from("bayes_99"), Arc::from("caps")];
        let mut full = Vec::new();
        for (i, action) in [
            None,
            Some(Action::Allow),
            Some(Action::Tag),
            Some(Action::Hide),
            Some(Action::Quarantine),
            Some(Action::Delete),
        ]
        .into_iter()
        .enumerate()
        {
            full.push(Evaluated {
                verdict: Verdict {
                    score: 0.1 + i as f64 * 1.7,
                    threshold: -0.0,
                    spam: i % 2 == 0,
                    action,
                    rules: ids.iter().skip(i % 3).cloned().collect(),
                },
                rewrite: (i % 2 == 0).then(|| rewrite.clone()),
                about: About {
                    from: format!("Sénder {i} <s{i}@example.net>").into(),
                    subject: if i == 1 { "".into() } else { "Ünïcödé subject \u{1f4e7}".into() },
                    bayes: (i != 3).then_some(0.999_999_999_7 - i as f64 / 3.0),
                    matched: vec![
                        Matched {
                            rule: "money".into(),
                            header: "subject".into(),
                            before: "free ".into(),
                            found: "money".into(),
                            after: "!".into()
                        };
                        i % 3
                    ]
                    .into(),
                    clues: vec![
                        Clue { token: format!("tok{i}"), probability: 1.0 / 3.0, spam: u32::MAX, ham: i as u32 };
                        i
                    ]
                    .into(),
                },
            });
        }
        let items: Vec<(String, u64, Evaluated)> = full
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("uidl-{}", 9 - i), 1000 + i as u64 * 300, e.clone()))
            .collect();
        let memo = MailboxMemo::build(items.iter().map(|(u, s, e)| (u.as_str(), *s, e))).unwrap();
        assert_eq!(memo.len(), items.len());
        for (u, s, e) in &items {
            let got = memo.get(u, *s).unwrap_or_else(|| panic!("{u} memoised"));
            assert_same(&got, e);
            if let (Some(a), Some(b)) = (&got.rewrite, &e.rewrite) {
                assert!(Arc::ptr_eq(a, b), "the rewrite is shared, not copied");
            }
            for (a, b) in got.verdict.rules.iter().zip(&e.verdict.rules) {
                assert!(Arc::ptr_eq(a, b), "rule ids are the rule set's own strings");
            }
            assert!(memo.get(u, s + 1).is_none(), "a size mismatch (a reused UIDL) is a miss");
        }
        assert!(memo.get("uidl-x", 1000).is_none());
        assert!(MailboxMemo::default().get("uidl-9", 1000).is_none());
    }

    /// Many messages: each is found by its key (the offsets are sorted), the last of a key
    /// given twice counts, and the mailbox is a single buffer (plus the shared side tables).
    #[test]
    fn many_entries_are_found_and_the_last_duplicate_wins() {
        let mut items: Vec<(String, u64, Evaluated)> =
            (0..2000).map(|i| (format!("{:x}", i * 7919 % 2003), i, eval(i as f64))).collect();
        items.push((items[5].0.clone(), 5, eval(-1.0)));
        let memo = MailboxMemo::build(items.iter().map(|(u, s, e)| (u.as_str(), *s, e))).unwrap();
        assert_eq!(memo.len(), 2000);
        for (u, s, e) in items.iter().skip(6).take(1990) {
            assert_same(&memo.get(u, *s).unwrap(), e);
        }
        assert_eq!(memo.get(&items[5].0, 5).unwrap().verdict.score, -1.0);
        assert!(memo.rules.is_empty() && memo.rewrites.is_empty(), "nothing besides the buffer");
    }

    #[test]
    fn valid_only_for_the_same_rule_set_and_scope() {
        let memo = VerdictMemo::new(2);
        let rules = Arc::new(RuleSet::empty());
        let alice = Scope::new("pop:995", "alice");
        memo.store(alice.clone(), rules.clone(), memo_of(&[("u1", 100, eval(1.0))]));
        assert_eq!(memo.known(&alice, &rules).len(), 1);
        assert!(memo.known(&Scope::new("pop:995", "bob"), &rules).is_empty(), "other users see nothing");
        assert!(memo.known(&Scope::new("other:995", "alice"), &rules).is_empty(), "other upstreams neither");
        memo.store_with_model(alice.clone(), rules.clone(), Some(3), memo_of(&[("u1", 100, eval(1.0))]));
        assert_eq!(memo.known_with_model(&alice, &rules, Some(3)).len(), 1);
        assert!(memo.known_with_model(&alice, &rules, Some(4)).is_empty(), "training invalidates");
        assert!(memo.known(&alice, &rules).is_empty(), "so does dropping the model");
        let reloaded = Arc::new(RuleSet::empty());
        assert!(memo.known(&alice, &reloaded).is_empty(), "a reload invalidates");
    }

    /// Repacking keeps every entry, its rule set and the recency order.
    #[test]
    fn repack_keeps_everything() {
        let memo = VerdictMemo::new(2);
        let rules = Arc::new(RuleSet::empty());
        let s = |u: &str| Scope::new("pop:995", u);
        memo.store(s("a"), rules.clone(), memo_of(&[("x", 1, eval(2.5))]));
        memo.store(s("b"), rules.clone(), memo_of(&[("y", 2, eval(3.5))]));
        let before = memo.known(&s("a"), &rules); // a is now more recent than b
        memo.repack();
        let entries = |u: &str| memo.inner.lock().unwrap().0.get(&s(u)).unwrap().entries.clone();
        assert!(!Arc::ptr_eq(&before, &entries("a")), "moved to a fresh allocation");
        assert_same(&entries("a").get("x", 1).unwrap(), &eval(2.5));
        assert_same(&entries("b").get("y", 2).unwrap(), &eval(3.5));
        memo.store(s("c"), rules.clone(), MailboxMemo::default());
        assert!(memo.known(&s("b"), &rules).is_empty(), "b is still the least recently used");
        assert_eq!(memo.known(&s("a"), &rules).len(), 1, "and a still valid for its rule set");
    }

    /// A mailbox stored again while the repack copied keeps what was stored last.
    #[test]
    fn repack_keeps_a_memo_stored_meanwhile() {
        let memo = VerdictMemo::new(4);
        let rules = Arc::new(RuleSet::empty());
        let s = |u: &str| Scope::new("pop:995", u);
        memo.store(s("a"), rules.clone(), memo_of(&[("x", 1, eval(2.5))]));
        memo.store(s("b"), rules.clone(), memo_of(&[("y", 2, eval(3.5))]));
        let copies = memo.copies();
        memo.store(s("a"), rules.clone(), memo_of(&[("z", 3, eval(4.5))]));
        let b_before = memo.known(&s("b"), &rules);
        memo.install(copies);
        let a = memo.known(&s("a"), &rules);
        assert!(a.get("x", 1).is_none(), "the stale copy did not replace the newer memo");
        assert_same(&a.get("z", 3).unwrap(), &eval(4.5));
        let b = memo.known(&s("b"), &rules);
        assert!(!Arc::ptr_eq(&b_before, &b), "an unchanged mailbox took its copy");
        assert_same(&b.get("y", 2).unwrap(), &eval(3.5));
    }

    #[test]
    fn bounded_by_mailboxes_lru() {
        let memo = VerdictMemo::new(2);
        let rules = Arc::new(RuleSet::empty());
        let s = |u: &str| Scope::new("pop:995", u);
        memo.store(s("a"), rules.clone(), MailboxMemo::default());
        memo.store(s("b"), rules.clone(), MailboxMemo::default());
        let _ = memo.known(&s("a"), &rules); // a is now more recent than b
        memo.store(s("c"), rules.clone(), memo_of(&[("x", 1, eval(0.0))]));
        memo.store(s("a"), rules.clone(), memo_of(&[("x", 1, eval(0.0))]));
        assert_eq!(memo.known(&s("a"), &rules).len(), 1);
        assert_eq!(memo.known(&s("c"), &rules).len(), 1);
        let inner = memo.inner.lock().unwrap();
        assert!(!inner.0.contains_key(&s("b")), "least recently used evicted");
    }
}
