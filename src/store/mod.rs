//! On-disk state under the state directory.
//!
//! - [`quarantine`]: the quarantine Maildir (written with fsync before any DELE).

pub mod quarantine;
