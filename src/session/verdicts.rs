//! Turning the login scan (LIST, UIDL, `TOP n 0`) and the rule verdicts into the mailbox
//! view: which messages the client sees, which stay hidden, which are condemned.
//!
//! # A message's identity is never assumed
//! UIDLs are the only key that survives between sessions, but servers break RFC 1939 §7
//! ("unique … 1 to 70 characters in the range 0x21 to 0x7E") — duplicates within one
//! listing, missing entries, overlong values. [`uidl_trust`] checks a listing; when it
//! fails, every UIDL-keyed shortcut (header cache, verdict memo) is off for the session.
//! And even with a clean listing, a verdict that *condemns* (delete, quarantine) is acted on
//! only if it was computed from the message's own headers in this session:
//! [`to_recheck`] names the condemned messages whose verdict came from the cache or the
//! memo, the scan fetches their `TOP n 0` again, and [`recheck`] evaluates them anew. A
//! cached verdict may hide or tag, never delete.
use std::collections::HashSet;
use std::sync::Arc;

use crate::classify::Model;
use crate::pop3::multiline::HeaderBlock;
use crate::rules::{Action, RuleSet};
pub use crate::session::evaluated::Evaluated;
use crate::session::evaluated::{cut, About};
use crate::session::tag::{self, TagSettings};
use crate::session::view::{Disposition, Entry, HeaderRewrite};

/// What the scan learned about one upstream message.
#[derive(Debug, Clone)]
pub struct ScanItem {
    pub upstream: u32,
    pub size: u64,
    pub uidl: Option<Arc<str>>,
    /// The result of an earlier evaluation with the same rule set (see
    /// `store::verdict_memo`); when present the headers are neither read nor evaluated.
    pub memo: Option<Arc<Evaluated>>,
    /// This message's header block, read in this session, already evaluated during the
    /// scan (which then drops the block to bound its memory, see `net::login_scan`).
    /// Neither this nor `memo`: TOP failed or is not supported, the message is shown
    /// unfiltered.
    pub evaluated: Option<Arc<Evaluated>>,
}

/// What the login scan (LIST, UIDL, `TOP n 0` or the header cache) found, before the
/// verdicts become view entries.
#[derive(Debug, Default)]
pub struct ScanOutcome {
    pub items: Vec<ScanItem>,
    /// False when the server refused TOP: the mailbox is shown unfiltered.
    pub top_supported: bool,
    pub uidl_supported: bool,
    /// UIDL is supported and the listing passed [`uidl_trust`]: UIDL-keyed shortcuts (cache,
    /// memo, quarantine bookkeeping) may be used.
    pub uidl_trusted: bool,
    /// Per item: its headers or verdict came from the cache or the memo, not from this
    /// session's `TOP` (see [`to_recheck`]).
    pub unverified: Vec<bool>,
    /// Messages whose TOP failed although TOP works for others.
    pub top_failures: usize,
    /// Header blocks taken from the cache, and `TOP` commands sent.
    pub cache_hits: usize,
    pub tops_sent: usize,
    /// Header blocks evaluated during the scan, and the CPU seconds that took.
    pub evaluated: usize,
    pub eval_seconds: f64,
}

/// Why a UIDL listing cannot be used as a key (RFC 1939 §7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidlProblem {
    #[error("UIDL {0:?} is listed for more than one message")]
    Duplicate(String),
    #[error("message {0} has no UIDL")]
    Missing(u32),
    #[error("message {0}'s UIDL is not 1-70 characters in 0x21-0x7E")]
    Malformed(u32),
    #[error("UIDL lists message {0}, which LIST does not")]
    Unlisted(u32),
}

/// Checks that `uidls` gives every LIST entry exactly one unique, well-formed UIDL.
pub fn uidl_trust(list: &[(u32, u64)], uidls: &[(u32, String)]) -> Result<(), UidlProblem> {
    let listed: HashSet<u32> = list.iter().map(|(n, _)| *n).collect();
    let mut seen_n = HashSet::with_capacity(uidls.len());
    let mut seen_u: HashSet<&str> = HashSet::with_capacity(uidls.len());
    for (n, u) in uidls {
        if !listed.contains(n) {
            return Err(UidlProblem::Unlisted(*n));
        }
        if u.is_empty() || u.len() > 70 || !u.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(UidlProblem::Malformed(*n));
        }
        if !seen_u.insert(u.as_str()) {
            return Err(UidlProblem::Duplicate(u.clone()));
        }
        seen_n.insert(*n);
    }
    match list.iter().find(|(n, _)| !seen_n.contains(n)) {
        Some((n, _)) => Err(UidlProblem::Missing(*n)),
        None => Ok(()),
    }
}

/// Entries whose verdict condemns them (delete or quarantine) but was not computed from
/// headers read in this session: their `TOP n 0` must be fetched again before any DELE.
pub fn to_recheck(entries: &[Entry], unverified: &[bool], dry_run: bool) -> Vec<usize> {
    if dry_run {
        return Vec::new();
    }
    entries
        .iter()
        .zip(unverified)
        .enumerate()
        .filter(|(_, (e, &u))| {
            u && e.verdict().is_some_and(|v| matches!(v.action, Some(Action::Delete | Action::Quarantine)))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Replaces `entries[i]` for each rechecked index with the evaluation of the headers just
/// fetched (`None`: TOP failed, the message is shown unfiltered, never condemned).
pub fn recheck(
    entries: &mut [Entry],
    rechecked: &[usize],
    fresh: Vec<Option<HeaderBlock>>,
    rules: &RuleSet,
    model: Option<&Model>,
    dry_run: bool,
    tagging: &TagSettings,
) {
    let (at, items): (Vec<usize>, Vec<ScanItem>) = rechecked
        .iter()
        .zip(fresh)
        .filter_map(|(&i, headers)| {
            let e = entries.get(i)?;
            let evaluated = headers.map(|h| Arc::new(evaluate(&h, e.upstream_size, rules, model, tagging)));
            Some((
                i,
                ScanItem { upstream: e.upstream, size: e.upstream_size, uidl: e.uidl.clone(), memo: None, evaluated },
            ))
        })
        .unzip();
    for (i, e) in at.into_iter().zip(build_entries(items, dry_run)) {
        if let Some(slot) = entries.get_mut(i) {
            *slot = e;
        }
    }
}

/// Evaluates one header block (with the classifier model when there is one).
pub fn evaluate(
    h: &HeaderBlock,
    size: u64,
    rules: &RuleSet,
    model: Option<&Model>,
    tagging: &TagSettings,
) -> Evaluated {
    // Autolearn hook (classify::autolearn): confident verdicts are queued for training.
    let learn = model;
    // Classifying costs a tokenization per message: only when some rule reads the result.
    let model = model.filter(|_| rules.uses_bayes());
    let headers = crate::rules::Headers::parse(&h.bytes);
    let (verdict, bayes) = rules.evaluate_headers_with_model(&headers, size, model);
    crate::classify::autolearn::offer(learn, &h.bytes, h.truncated, &verdict);
    // Only the decision history reads `about` beyond the probability: without it, nothing
    // is copied or explained.
    let about = if crate::rules::explain::enabled() {
        let matched = if verdict.rules.is_empty() {
            Box::default()
        } else {
            crate::rules::explain::explain(rules, &headers, size, &verdict.rules, bayes).into()
        };
        // The tokens only where there is something to explain (spam, a rule, or a
        // probability leaning to spam): they live with the verdict in the session and the
        // verdict memo, and a mailbox is mostly plain ham.
        let worth = verdict.spam || !verdict.rules.is_empty() || bayes.is_some_and(|p| p >= 0.5);
        let clues = match (model, bayes) {
            (Some(m), Some(_)) if worth => {
                let fired: Vec<&str> = verdict.rules.iter().map(|r| &**r).collect();
                crate::classify::explain::weighed_most(m, &headers, &fired).into()
            }
            _ => Box::default(),
        };
        About { from: cut(headers.get("from")), subject: cut(headers.get("subject")), bayes, matched, clues }
    } else {
        About { bayes, ..About::default() }
    };
    // A capped header block cannot be rewritten exactly: such a message is left as is.
    let rewrite = if h.truncated {
        None
    } else {
        let spam = verdict.spam && verdict.action != Some(Action::Allow);
        tag::rewrite(&h.bytes, &verdict, spam, tagging)
            .map(|replacement| Arc::new(HeaderRewrite { original: h.bytes.clone(), replacement }))
    };
    Evaluated { verdict, rewrite, about }
}

/// How a verdict maps onto the view. Under `dry_run` every message stays visible and
/// nothing is deleted; the verdict is still recorded and logged.
pub fn disposition(action: Option<Action>, dry_run: bool) -> Disposition {
    if dry_run {
        return Disposition::Visible;
    }
    match action {
        None | Some(Action::Allow) | Some(Action::Tag) => Disposition::Visible,
        Some(Action::Hide) => Disposition::Hidden,
        // Hidden until its copy is safely on disk; only then condemned (see net::driver).
        Some(Action::Quarantine) => Disposition::Hidden,
        Some(Action::Delete) => Disposition::Condemned,
    }
}

/// Turns every scanned message's evaluation (made during the scan, or memoised) into view
/// entries. Visible spam (and, under dry run, every condemned message) is tagged; its size
/// grows by exactly the header change. The entries are returned rather than a view so that
/// quarantine can settle the fate of its messages (stored → condemned; failed → hidden or
/// shown) before the view is fixed. Nothing is evaluated here: the scan evaluates each
/// header block as it arrives and drops it (see `net::login_scan`), [`recheck`] evaluates
/// fresh blocks itself.
pub fn build_entries(items: Vec<ScanItem>, dry_run: bool) -> Vec<Entry> {
    items
        .into_iter()
        .map(|item| {
            let evaluated = item.memo.or(item.evaluated);
            let d = disposition(evaluated.as_ref().and_then(|e| e.verdict.action), dry_run);
            // Visible messages carry their tag; so do quarantine candidates: if the copy fails
            // and the config says to show the message, it is shown tagged.
            let rewrite = match &evaluated {
                Some(e) if d == Disposition::Visible || e.verdict.action == Some(Action::Quarantine) => {
                    e.rewrite.clone()
                }
                _ => None,
            };
            let size = match &rewrite {
                Some(r) => (item.size + r.replacement.len() as u64).saturating_sub(r.original.len() as u64),
                None => item.size,
            };
            Entry {
                upstream: item.upstream,
                upstream_size: item.size,
                size,
                uidl: item.uidl,
                disposition: d,
                rewrite,
                evaluated,
                released: None,
            }
        })
        .collect()
}

/// Condemned entries become hidden: left on the server, not deleted (for a login whose
/// owner corrections could not be read, see `Machine::hold_condemnation`).
pub fn hold_condemned(entries: &mut [Entry]) {
    for e in entries.iter_mut().filter(|e| e.disposition == Disposition::Condemned) {
        e.disposition = Disposition::Hidden;
    }
}

/// Entries awaiting quarantine (their disposition is `Hidden` until stored).
pub fn quarantine_candidates(entries: &[Entry], dry_run: bool) -> Vec<usize> {
    if dry_run {
        return Vec::new();
    }
    entries
        .iter()
        .enumerate()
        // A message shown after all (the owner's "Not spam" on the review page) is not copied.
        .filter(|(_, e)| e.disposition != Disposition::Visible)
        .filter(|(_, e)| e.verdict().is_some_and(|v| v.action == Some(Action::Quarantine)))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uidl_listings_that_are_not_identities() {
        let list = [(1, 10), (2, 10), (3, 20)];
        let u = |v: &[(u32, &str)]| v.iter().map(|(n, s)| (*n, s.to_string())).collect::<Vec<_>>();
        assert_eq!(uidl_trust(&list, &u(&[(1, "a"), (2, "b"), (3, "c")])), Ok(()));
        assert_eq!(uidl_trust(&list, &u(&[(1, "a"), (2, "a"), (3, "c")])), Err(UidlProblem::Duplicate("a".into())));
        assert_eq!(uidl_trust(&list, &u(&[(1, "a"), (3, "c")])), Err(UidlProblem::Missing(2)));
        let long = "x".repeat(71);
        assert_eq!(uidl_trust(&list, &u(&[(1, "a"), (2, &long), (3, "c")])), Err(UidlProblem::Malformed(2)));
        assert_eq!(uidl_trust(&list, &u(&[(1, &"x".repeat(70)), (2, "b"), (3, "c")])), Ok(()));
        assert_eq!(uidl_trust(&list, &u(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")])), Err(UidlProblem::Unlisted(4)));
        assert_eq!(uidl_trust(&[], &[]), Ok(()));
    }

    #[test]
    fn dispositions() {
        assert_eq!(disposition(None, false), Disposition::Visible);
        assert_eq!(disposition(Some(Action::Allow), false), Disposition::Visible);
        assert_eq!(disposition(Some(Action::Tag), false), Disposition::Visible);
        assert_eq!(disposition(Some(Action::Hide), false), Disposition::Hidden);
        assert_eq!(disposition(Some(Action::Quarantine), false), Disposition::Hidden);
        assert_eq!(disposition(Some(Action::Delete), false), Disposition::Condemned);
        assert_eq!(disposition(Some(Action::Delete), true), Disposition::Visible);
        assert_eq!(disposition(Some(Action::Hide), true), Disposition::Visible);
    }
}
