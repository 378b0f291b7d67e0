//! Integration-test harness: a real Dovecot POP3 server, a standard test mailbox and real
//! POP3 clients (Python `poplib`, `fetchmail` 6.4, `getmail6`), each run from a generated
//! configuration in its own temporary directory on free loopback ports.
//!
//! Integration tests include it with `mod support;` and use `support::*`.
//!
//! # Why real peers
//! popsift must be invisible to real clients talking to real servers (issue 2). A scripted fake
//! upstream proves only what its author believed; Dovecot and the three clients each have
//! quirks (listed below) that the proxy must survive, so the integration tests run them for real.
//! A test that needs Dovecot **panics** when it is missing: a CI machine without Dovecot must
//! fail, never skip (`.ci/run` installs it).
//!
//! # Pieces
//! - [`Dovecot`] ([`dovecot`]): a standalone Dovecot 2.3 from a generated config under a temp
//!   dir (never reads `/etc/dovecot`); plain POP3 with STLS and implicit-TLS POP3S, a per-process
//!   test CA ([`Dovecot::ca_pem`]); MDA-style [`Dovecot::deliver`] and [`Dovecot::mailbox`] to
//!   look at what is left on the server.
//! - [`test_mailbox`] ([`mailbox`]): the standard mailbox (ham and spam-like messages, dot lines,
//!   a ~3 MB message, LF and CRLF files, one without a final newline) and [`expected_wire_form`].
//! - Clients ([`clients`]): [`poplib_fetch`], [`fetchmail_fetch`], [`getmail_fetch`] and a tiny
//!   line-oriented [`RawPop`] for transcripts (e.g. holding a session open).
//! - [`Popsift`] ([`popsift`]): the real binary from a generated config; `signal`, `restart`
//!   (same config, port and state dir, e.g. after SIGKILL), `scrape`, `log`.
//! - [`Forwarder`] ([`forwarder`]): a cuttable TCP forwarder to put between popsift and Dovecot
//!   — `cut()`, `cut_after_upstream_bytes(n)`, `cut_when_client_sends(b"QUIT\r\n")`,
//!   `set_delay` for a slow server — for the connection faults Dovecot cannot make on cue.
//! - [`RedisServer`] ([`redis`]): a real `redis-server` with AOF on a free port, stoppable
//!   and restartable on the same data (the shared-store tests, issue 15).
//! - [`wait_until`] ([`wait`]): wait for a condition with a bounded deadline, never a sleep
//!   standing in for a wait.
//!
//! # Quick start for a proxy test
//! ```ignore
//! mod support;
//! use support::*;
//! let (dovecot, mbox) = Dovecot::start_with_test_mailbox();   // alice / alice-secret-pw
//! // … start popsift with upstream = dovecot.pop3_addr() (STLS) or pop3s_addr() (implicit),
//! //   trusting dovecot.ca_pem() …
//! let f = poplib_fetch(&proxy_addr, "alice", "alice-secret-pw", &PoplibOpts::default());
//! let want: Vec<Vec<u8>> = ham(&mbox).iter().map(|m| expected_wire_form(&m.bytes)).collect();
//! assert_eq!(f.messages, want);
//! assert_eq!(dovecot.mailbox("alice").len(), mbox.len());     // hidden spam still there
//! ```
//!
//! # Quirks met, and what the harness does about them
//! | peer | quirk | handling |
//! |---|---|---|
//! | Dovecot | refuses mail access as root / below `first_valid_uid` | static userdb → `popsift-mail` ([`mail_user`]); `first_valid_uid` = its uid |
//! | Dovecot | login processes run as `dovenull` | temp dirs are 0755 |
//! | Dovecot | serves stored LF as CRLF; adds a final CRLF to a file without final newline | [`expected_wire_form`] |
//! | Dovecot | LIST/STAT size does **not** count that added final CRLF (2 octets less than RETR) | [`expected_list_size`] |
//! | Dovecot | no session lock by default; `pop3_lock_session = yes` → `-ERR [IN-USE] …` | [`DovecotOptions::lock_session`] |
//! | Dovecot | POP3 order of new mail = file-name order | test mailbox names are `NNNN.popsift-test-…` in delivery order |
//! | poplib | strips line ends, un-stuffs only `..`, 2048-byte line limit | the script reads RETR raw ([`PopFetch::stuffing_violations`]) |
//! | fetchmail | warns when run as root | ignored (stderr) |
//! | fetchmail | auto-upgrades to STLS when offered, then verifies the cert | [`Tls::None`] → `sslproto ''`; STLS/implicit → `sslcertck sslcertfile CA` |
//! | fetchmail | checks the cert name against the poll name, no IP SANs | `poll localhost via 127.0.0.1` + `sslcommonname localhost` |
//! | fetchmail | picks CRAM-MD5 when offered | default kept; [`FetchmailOpts::auth`] to force `password` etc. |
//! | fetchmail | exit 1 = no mail | empty list |
//! | fetchmail | adds `Received:`, rewrites addresses, fetches only "new" mail | `set invisible`, `no rewrite`, `fetchall` |
//! | fetchmail | strips CR for the MDA; retrieves with `RETR n` (6.4.37) | compare with [`lf_form`] |
//! | getmail6 | refuses to deliver as root | destination `user = popsift-mail`, Maildir chowned |
//! | getmail6 | replaces `Return-Path:`, re-folds headers > 78 chars, writes LF, adds final newline | [`getmail_comparable`] / [`assert_getmail_equal`] |
//! | getmail6 | has no STLS for POP3 | [`getmail_fetch`] panics on [`Tls::Stls`] |
//! | getmail6 | verifies the cert name with its own matcher | `ssl_cert_hostname = localhost` |
//!
//! # Deviations from the requested API
//! - [`PoplibOpts`] has `top_lines: Option<u64>` (fetch with `TOP n k`) instead of `top_full`;
//!   `top_lines: Some(99_999_999)` is fetchmail's old full-retrieval habit.
//! - [`PopFetch`] has extra fields `greeting`, `capa`, `stuffing_violations`.
//! - [`try_poplib_fetch`] returns the client's error (for `-ERR [IN-USE]`, wrong password);
//!   [`poplib_fetch`] panics on it.
//! - [`fetchmail_fetch`] returns messages with LF line ends (what fetchmail gives an MDA);
//!   [`fetchmail_fetch_with`] takes [`FetchmailOpts`] (adds `auth`).
//! - [`getmail_fetch`] supports [`Tls::None`] and [`Tls::Implicit`] only.
//! - Extras: [`Dovecot::start_with_test_mailbox`], [`Dovecot::uidls`], [`Dovecot::deliver_all`],
//!   [`Dovecot::log`], [`Dovecot::dir`], [`Dovecot::password`], [`Dovecot::maildir`],
//!   [`expected_list_size`], [`ham`], [`spam`], [`RawPop`], [`run_with_timeout`],
//!   [`require_program`].
//!
//! # Parallel tests
//! cargo runs the tests of one binary on several threads. Every Dovecot and every client run
//! gets its own temp dir; ports come from [`free_port`], which never hands out the same port
//! twice in one process; the unprivileged mail user is created once per process
//! ([`mail_user`], a `OnceLock`, tolerating "already exists" from another process).
//! Everything started is stopped on `Drop` (Dovecot) or waited for (clients, with timeouts).
#![allow(dead_code)]

pub mod clients;
pub mod dovecot;
pub mod forwarder;
pub mod mailbox;
pub mod popsift;
pub mod redis;
pub mod wait;

pub use clients::*;
#[allow(unused_imports)]
pub use dovecot::*;
#[allow(unused_imports)]
pub use forwarder::*;
pub use mailbox::*;
#[allow(unused_imports)]
pub use popsift::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use wait::*;

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A free TCP port on 127.0.0.1: bind port 0, read the port, release it.
///
/// There is an unavoidable window between releasing the port and the server binding it;
/// ports handed out by this process are remembered and never handed out again, so two tests
/// of one binary cannot collide. [`Dovecot::start`] retries with new ports if its bind fails.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        if given.lock().expect("port set poisoned").insert(port) {
            return port;
        }
    }
}

/// How a client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// Plain POP3, no TLS at all (clients that would upgrade by themselves are told not to).
    None,
    /// Plain connection upgraded with `STLS` (RFC 2595) before login.
    Stls,
    /// TLS from the first byte (POP3S).
    Implicit,
}

/// The unprivileged system user that owns test mail (`popsift-mail`).
///
/// Dovecot refuses to access mail as root (uid below `first_valid_uid`), and getmail6 refuses to
/// deliver as root, so both get this user. Created with `useradd --system` the first time it is
/// needed in this process; "already exists" (exit 9, e.g. created by an earlier test binary or a
/// concurrent one) is fine.
pub struct MailUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

pub const MAIL_USER: &str = "popsift-mail";

pub fn mail_user() -> &'static MailUser {
    static USER: OnceLock<MailUser> = OnceLock::new();
    USER.get_or_init(|| {
        for attempt in 0..20 {
            if let Some((uid, gid)) = lookup_user(MAIL_USER) {
                return MailUser { name: MAIL_USER, uid, gid };
            }
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    MAIL_USER,
                ])
                .output()
                .unwrap_or_else(|e| panic!("cannot run useradd to create {MAIL_USER} (tests must run as root): {e}"));
            // 0 = created, 9 = already exists; 10 (cannot lock /etc/passwd) = someone else is
            // creating it right now: look again after a short pause.
            match out.status.code() {
                Some(0) | Some(9) | Some(10) => {}
                _ => panic!("useradd {MAIL_USER} failed (attempt {attempt}): {}", String::from_utf8_lossy(&out.stderr)),
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("user {MAIL_USER} still missing after useradd");
    })
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            return Some((f[2].parse().ok()?, f[3].parse().ok()?));
        }
    }
    None
}

/// Locate an executable: `$PATH`, then the sbin directories (a non-login root shell may lack
/// them). `None` when it is not installed.
pub fn find_program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Like [`find_program`] but panics with the Debian package to install.
pub fn require_program(name: &str, package: &str) -> std::path::PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!(
            "`{name}` not found: install the Debian package `{package}` (`.ci/run` does). \
             Integration tests fail rather than skip when a real peer is missing."
        )
    })
}
