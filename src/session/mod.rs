//! The per-client session, as decisions over values: no sockets, no clock.
//! [`machine::Machine`] is the session; the other modules are its parts.
//!
//! - [`view`]: the filtered mailbox the client sees (virtual ↔ upstream numbers, sizes,
//!   deletion marks, what UPDATE must delete).
//! - [`auth`]: the AUTHORIZATION state passed through: what to do with each line, SASL
//!   exchanges, whose mailbox a login opens.
//! - [`pipeline`]: the TRANSACTION command queue: what goes upstream when, what each
//!   command is owed, bounded memory, UPDATE's DELE batches (only after QUIT).
//! - [`capa`]: how the upstream's capability list is rewritten for the client.
//! - [`gate`]: the network edge's say in AUTHORIZATION (STLS, plain-text refusal, the
//!   failed-login throttle), decided here and performed by the driver.
//! - [`plan`]: what to do with each client command in AUTHORIZATION and TRANSACTION:
//!   answer locally, relay upstream, or end the session.
//! - [`relay`]: what a fetched message becomes: status size, tagged header block, the
//!   bounded quarantine copy.
//! - [`verdicts`]: turning LIST/UIDL/TOP results and rule verdicts into view entries.
//! - [`evaluated`]: what evaluating one header block produced (shared by the view, the
//!   verdicts and the verdict memo).
//! - [`machine`]: the whole session as one sans-IO state machine over all of the above.
//! - [`phase`]: what the session is doing, named in every timeout and error.
//! - [`top_window`]: the login scan's `TOP n 0` windows (count and byte bounds, no-TOP).
//! - [`upstream_from_user`]: per-user upstream (`HOST:USER` logins): the allow list and
//!   the SSRF check, before any connection.
//!
//! `net::driver` executes these decisions; everything here is unit-tested without I/O.

// Peer data never panics a session (issue 12): no unwrap/expect/indexing outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod auth;
pub mod capa;
pub mod evaluated;
pub mod gate;
#[doc(hidden)]
pub mod invariants;
pub mod login_pipeline;
pub mod machine;
pub mod phase;
pub mod pipeline;
pub mod plan;
pub mod relay;
pub mod tag;
pub mod top_window;
pub mod upstream_from_user;
pub mod verdicts;
pub mod view;

pub use view::{Disposition, Entry, MailboxView, ViewError};
