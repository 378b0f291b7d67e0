//! popsift: a spam-filtering POP3 proxy.
//!
//! Data flows one way: bytes → [`pop3`] values → [`session`] decides → actions → [`net`]
//! performs them. The rule engine ([`rules`]) is compiled once per (re)load and shared
//! read-only between sessions. The binary's subcommands live in [`cmd`] (with
//! [`cmd::serve::serve`], the startup wiring as a library call); [`locate`] finds config and
//! rules; [`mailfiles`] reads .eml, Maildir and mbox files.
#![forbid(unsafe_code)]

pub mod allocator;
pub mod classify;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod edge;
pub mod hex;
pub mod locate;
pub mod logging;
pub mod mailfiles;
pub mod metrics;
pub mod net;
pub mod panics;
pub mod pop3;
pub mod rules;
pub mod sa_import;
pub mod session;
pub mod store;
pub mod ui;
