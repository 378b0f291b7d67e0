//! I/O at the edge: sockets, TLS, timeouts. Decisions live in [`crate::session`]; this module
//! only performs them.
//!
//! - [`conn`]: a buffered connection that yields lines and multi-line bodies with named
//!   timeouts and size caps.
//! - [`tls`]: the rustls client configuration (platform + webpki roots + `--upstream-ca`).
//! - [`upstream`]: connecting to the real server: TCP, implicit TLS or STLS, greeting, CAPA.
//! - [`outbox`]: the client's output queue (copied replies and shared body parts, in order).
//! - [`login_scan`]: performs the login scan (STAT, LIST, UIDL, windowed `TOP n 0`, the
//!   header cache, evaluation off the async threads, rechecks).
//! - [`quarantine_copy`]: performs the quarantine copies (RETR into the user's Maildir).
//! - [`driver`]: one client session from accept to close: the I/O pump that performs the
//!   actions of [`crate::session::machine`] under named timeouts.
//! - [`listener`]: accept loops, the session cap, graceful shutdown.
//! - [`cut_off`]: the drain deadline beside a running session.
//! - [`http`]: the bounded HTTP/1.1 server behind `/metrics` (and later HTTP listeners).
//! - [`fd_budget`]: raising `RLIMIT_NOFILE` and checking the descriptor budget at start.

// Peer data never panics a session (issue 12): no unwrap/expect/indexing outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod conn;
pub mod cut_off;
pub mod driver;
pub mod error;
pub mod fd_budget;
pub mod history_hooks;
pub mod http;
pub mod idle_release;
pub mod listener;
pub mod login_scan;
pub mod outbox;
pub mod quarantine_copy;
pub mod stream;
pub mod tls;
#[cfg(test)]
pub(crate) mod type_size;
pub mod upstream;

pub use error::{Phase, SessionError};
