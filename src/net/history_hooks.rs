//! Where a session meets the decision history of the review page (issue 13), kept out of
//! the I/O pump: before the view opens, the owner's corrections apply (a hidden message they
//! called "Not spam" is shown; messages they released from the quarantine join the view,
//! served from popsift's copy); when the view is ready, the login's verdicts are recorded
//! (off the session: a bounded queue to a writer thread); after a successful UPDATE, the
//! released messages the client deleted leave the store.
//!
//! Only with a trusted UIDL listing (see `session::verdicts::uidl_trust`): overrides and
//! releases are keyed by UIDL.
//!
//! The overrides lookup has a named deadline (`timeouts.history_lookup`): a slow store
//! must not hold the login. Past it the login goes on with no overrides applied, logged and
//! counted (`popsift_login_step_timeouts_total{step="history_lookup"}`), and nothing is
//! condemned at this login (`before_view` returns `false`, the caller holds condemnation):
//! a missed "Not spam" must not let a message be copied and deleted; hidden stays hidden.
//! The same holds when the read fails (the store's error, say a file that could not be
//! opened again after giving its memory back, or the reading task's failure): logged, and
//! nothing condemned.
use std::sync::Arc;

use crate::net::driver::SessionContext;
use crate::session::view::{Entry, MailboxView};
use crate::store::history;
use crate::store::quarantine::Quarantine;

/// The mailbox key: `upstream` is the session's server (`HOST:PORT`), the listener's or
/// the one a per-user login named.
fn mailbox(upstream: &str, user: Option<&str>) -> Option<String> {
    user.map(|u| history::mailbox_key(upstream, u))
}

/// Applies the owner's "Not spam" overrides to `entries` and appends the released messages.
/// `false`: the overrides could not be read (in time, or at all), so nothing may be
/// condemned at this login (see the module doc).
pub async fn before_view(
    ctx: &SessionContext,
    upstream: &str,
    user: Option<&str>,
    uidl_trusted: bool,
    entries: &mut Vec<Entry>,
) -> bool {
    let (Some(h), Some(mb), true) = (&ctx.history, mailbox(upstream, user), uidl_trusted) else { return true };
    let q = Quarantine::for_config(&ctx.config);
    let limit = ctx.config.timeouts.history_lookup;
    // `overrides` changes `entries` only after its read has finished: cut short, nothing
    // has been applied.
    match tokio::time::timeout(limit, history::overrides(h.store().clone(), q, mb, entries)).await {
        Ok(Some(released)) => {
            entries.extend(released);
            true
        }
        // Logged by `overrides`.
        Ok(None) => false,
        Err(_) => {
            crate::metrics::login_step_timeout("history_lookup");
            tracing::warn!(deadline = ?limit, "review-page overrides not read within timeouts.history_lookup; this login goes on without them and condemns nothing");
            false
        }
    }
}

/// What the decision history needs of this login's entries, taken when the view is ready
/// (shared references, a few reference counts per message); `None` when the history is off.
pub fn batch(
    ctx: &SessionContext,
    upstream: &str,
    user: Option<&str>,
    entries: &[Entry],
) -> Option<history::LoginBatch> {
    let (Some(_), Some(mb)) = (&ctx.history, mailbox(upstream, user)) else { return None };
    Some(history::LoginBatch::of(&mb, entries, ctx.config.dry_run, history::now_secs()))
}

/// Records a login's verdicts (never blocks: a full queue drops and counts); the writer
/// thread builds and stores the decisions. Runs after the login's `+OK` went out (see
/// `Action::RecordHistory`).
pub fn record(ctx: &SessionContext, batch: history::LoginBatch) {
    if let Some(h) = &ctx.history {
        h.record_login(batch);
    }
}

/// After the upstream accepted QUIT (UPDATE done): released messages the client deleted
/// leave the store and the quarantine.
pub async fn after_update(ctx: &SessionContext, upstream: &str, user: Option<&str>, view: Option<&MailboxView>) {
    let uidls: Vec<Arc<str>> = view.map(MailboxView::released_deleted).unwrap_or_default();
    if uidls.is_empty() {
        return;
    }
    let (Some(h), Some(mb)) = (&ctx.history, mailbox(upstream, user)) else { return };
    let (store, q) = (h.store().clone(), Quarantine::for_config(&ctx.config));
    let _ = tokio::task::spawn_blocking(move || history::forget_released(&*store, &q, &mb, &uidls)).await;
}
