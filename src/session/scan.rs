//! Turning the login scan (LIST, UIDL, `TOP n 0`) and the rule verdicts into the mailbox
//! view: which messages the client sees, which stay hidden, which are condemned.
use std::sync::Arc;

use crate::classify::Model;
use crate::pop3::multiline::HeaderBlock;
use crate::rules::{Action, RuleSet, Verdict};
use crate::session::tag::{self, TagSettings};
use crate::session::view::{Disposition, Entry, HeaderRewrite};

/// What the scan learned about one upstream message.
#[derive(Debug, Clone)]
pub struct ScanItem {
    pub upstream: u32,
    pub size: u64,
    pub uidl: Option<Arc<str>>,
    /// `None` when the upstream could not serve TOP (the message is shown unfiltered) or
    /// when `memo` already holds the result.
    pub headers: Option<HeaderBlock>,
    /// The result of an earlier evaluation with the same rule set (see
    /// `store::verdict_memo`); when present the headers are neither read nor evaluated.
    pub memo: Option<Arc<Evaluated>>,
}

/// What evaluating one message's header block produced. The tag rewrite is computed for
/// every spam message whose block is complete, whatever its disposition, so the result can
/// be reused by a later login.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub verdict: Verdict,
    pub rewrite: Option<Arc<HeaderRewrite>>,
}

/// Evaluates one header block (with the classifier model when there is one).
pub fn evaluate(
    h: &HeaderBlock,
    size: u64,
    rules: &RuleSet,
    model: Option<&Model>,
    tagging: &TagSettings,
) -> Evaluated {
    // Classifying costs a tokenization per message: only when some rule reads the result.
    let model = model.filter(|_| rules.uses_bayes());
    let (verdict, _) = rules.evaluate_with_model(&h.bytes, size, model);
    // A capped header block cannot be rewritten exactly: such a message is left as is.
    let rewrite = if h.truncated {
        None
    } else {
        let spam = verdict.spam && verdict.action != Some(Action::Allow);
        tag::rewrite(&h.bytes, &verdict, spam, tagging)
            .map(|replacement| Arc::new(HeaderRewrite { original: h.bytes.clone(), replacement }))
    };
    Evaluated { verdict, rewrite }
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

/// Evaluates every scanned message into view entries. Visible spam (and, under dry run,
/// every condemned message) is tagged; its size grows by exactly the header change. The
/// entries are returned rather than a view so that quarantine can settle the fate of
/// its messages (stored → condemned; failed → hidden or shown) before the view is fixed.
pub fn build_entries(
    items: Vec<ScanItem>,
    rules: &RuleSet,
    model: Option<&Model>,
    dry_run: bool,
    tagging: &TagSettings,
) -> Vec<Entry> {
    items
        .into_iter()
        .map(|item| {
            let evaluated = match (&item.memo, &item.headers) {
                (Some(m), _) => Some(m.clone()),
                (None, Some(h)) => Some(Arc::new(evaluate(h, item.size, rules, model, tagging))),
                (None, None) => None,
            };
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
            }
        })
        .collect()
}

/// Entries awaiting quarantine (their disposition is `Hidden` until stored).
pub fn quarantine_candidates(entries: &[Entry], dry_run: bool) -> Vec<usize> {
    if dry_run {
        return Vec::new();
    }
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.verdict().is_some_and(|v| v.action == Some(Action::Quarantine)))
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
