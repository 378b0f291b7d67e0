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
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::rules::RuleSet;
use crate::session::verdicts::Evaluated;
use crate::store::header_cache::Scope;

/// Memoised results of one mailbox: (UIDL, LIST size) → evaluation.
pub type MailboxMemo = HashMap<(Arc<str>, u64), Arc<Evaluated>>;

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
    use crate::rules::Verdict;

    fn eval(score: f64) -> Arc<Evaluated> {
        Arc::new(Evaluated {
            verdict: Verdict { score, threshold: 5.0, spam: false, action: None, rules: vec![] },
            rewrite: None,
            about: Default::default(),
        })
    }

    #[test]
    fn valid_only_for_the_same_rule_set_and_scope() {
        let memo = VerdictMemo::new(2);
        let rules = Arc::new(RuleSet::empty());
        let alice = Scope::new("pop:995", "alice");
        let mut m = MailboxMemo::new();
        m.insert((Arc::from("u1"), 100), eval(1.0));
        memo.store(alice.clone(), rules.clone(), m);
        assert_eq!(memo.known(&alice, &rules).len(), 1);
        assert!(memo.known(&Scope::new("pop:995", "bob"), &rules).is_empty(), "other users see nothing");
        assert!(memo.known(&Scope::new("other:995", "alice"), &rules).is_empty(), "other upstreams neither");
        memo.store_with_model(alice.clone(), rules.clone(), Some(3), memo.known(&alice, &rules).as_ref().clone());
        assert_eq!(memo.known_with_model(&alice, &rules, Some(3)).len(), 1);
        assert!(memo.known_with_model(&alice, &rules, Some(4)).is_empty(), "training invalidates");
        assert!(memo.known(&alice, &rules).is_empty(), "so does dropping the model");
        let reloaded = Arc::new(RuleSet::empty());
        assert!(memo.known(&alice, &reloaded).is_empty(), "a reload invalidates");
    }

    #[test]
    fn bounded_by_mailboxes_lru() {
        let memo = VerdictMemo::new(2);
        let rules = Arc::new(RuleSet::empty());
        let s = |u: &str| Scope::new("pop:995", u);
        memo.store(s("a"), rules.clone(), MailboxMemo::new());
        memo.store(s("b"), rules.clone(), MailboxMemo::new());
        let _ = memo.known(&s("a"), &rules); // a is now more recent than b
        let mut m = MailboxMemo::new();
        m.insert((Arc::from("x"), 1), eval(0.0));
        memo.store(s("c"), rules.clone(), m.clone());
        memo.store(s("a"), rules.clone(), m);
        assert_eq!(memo.known(&s("a"), &rules).len(), 1);
        assert_eq!(memo.known(&s("c"), &rules).len(), 1);
        let inner = memo.inner.lock().unwrap();
        assert!(!inner.0.contains_key(&s("b")), "least recently used evicted");
    }
}
