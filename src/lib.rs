//! popsift: a spam-filtering POP3 proxy.
//!
//! Data flows one way: bytes → [`pop3`] values → [`session`] decides → actions → [`net`]
//! performs them. The rule engine ([`rules`]) is compiled once per (re)load and shared
//! read-only between sessions.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod metrics;
pub mod net;
pub mod pop3;
pub mod quarantine_cmd;
pub mod rules;
pub mod sa_import;
pub mod scan;
pub mod session;
pub mod store;
