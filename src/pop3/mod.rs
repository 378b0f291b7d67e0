//! The POP3 wire format, pure: bytes in, values out, no I/O and no clock.
//!
//! - [`line`]: the line splitter every decoder starts from, with its length cap.
//! - [`command`]: client commands (RFC 1939 §§4–7, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH).
//! - [`status`]: single-line server replies: `+OK`, `-ERR`, SASL `+ ` continuations and
//!   RFC 2449 §8 response codes.
//! - [`multiline`]: the multi-line response framing of RFC 1939 §3 (dot-stuffing), as an
//!   incremental scanner that finds the terminator without copying, plus stuff/unstuff.
//! - [`capa`]: the CAPA list (RFC 2449 §5).
//!
//! Every decoder is incremental and chunk-independent: feeding the same bytes in any split
//! gives the same result (the tests replay every input at every split point).

// Peer data never panics a session (issue 12): no unwrap/expect/indexing outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod capa;
pub mod command;
#[doc(hidden)]
pub mod invariants;
pub mod line;
pub mod listing;
pub mod multiline;
pub mod status;

pub use command::{Command, CommandError, Secret};
pub use line::{split_line, Line};
pub use multiline::{
    dot_stuff, find_header_end, stuff_lines, unstuff, BodyFeed, BodyScanner, HeaderCollector, HeaderEnd,
    HeaderSplitter, Unstuffer,
};
pub use status::{Status, StatusKind};
