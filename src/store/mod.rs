//! On-disk state under the state directory.
//!
//! - [`quarantine`]: the quarantine Maildir (written with fsync before any DELE).
//! - [`header_cache`]: header blocks by (upstream, user, UIDL), so a login fetches only new ones.

pub mod header_cache;
pub mod quarantine;
