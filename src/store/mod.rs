//! On-disk state under the state directory.
//!
//! - [`quarantine`]: one Maildir per user (written with fsync before any DELE, digest-checked,
//!   bounded, with a per-user quota).
//! - [`header_cache`]: header blocks by (upstream, user, UIDL), so a login fetches only new ones.
//! - [`history`]: the decision history and the review page's overrides and releases.
//! - [`verdict_memo`]: in memory, what those headers evaluated to under the current rules.

pub mod header_cache;
pub mod history;
pub mod quarantine;
pub mod verdict_memo;
