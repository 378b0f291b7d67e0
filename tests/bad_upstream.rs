//! Issue 12, "bad input": popsift (the real binary) in front of a scripted upstream that
//! misbehaves in one way per test. Each case pins the same promises:
//!
//! - the client gets a clear `-ERR` (`[SYS/TEMP]` when the upstream is at fault) and the
//!   session ends;
//! - the log says what happened, and has no "panicked" in it;
//! - no DELE reaches the upstream (no UPDATE without the client's QUIT, RFC 1939 §6);
//! - popsift keeps serving: a second session against the same (now well-behaved) upstream
//!   succeeds;
//! - `popsift_sessions_active` returns to 0.
// `fake` and `support` both bring the shared wait helper.
#![allow(clippy::duplicate_mod)]
mod fake;
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use fake::{Behaviour, Fake as Scripted, Reply, ScriptFn};
use support::{Popsift, ProxyOpts, RawPop};

/// A short upstream reply timeout keeps the stalled cases quick.
const EXTRA: &str = "timeouts:\n  upstream_reply: 2s\n";

/// Two small messages, served when the script does not override a reply.
const MAILBOX: [&str; 2] = [
    "From: a@example.org\r\nSubject: first\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n",
    "From: b@example.org\r\nSubject: second\r\nMessage-ID: <2@x>\r\n\r\nbody two\r\n",
];

fn start(script: impl Fn(usize, &str) -> Option<Reply> + Send + Sync + 'static) -> (Scripted, Popsift) {
    start_with(EXTRA, script)
}

/// [`start`] with another config tail (`extra`).
fn start_with(
    extra: &str,
    script: impl Fn(usize, &str) -> Option<Reply> + Send + Sync + 'static,
) -> (Scripted, Popsift) {
    // No PIPELINING: one command at a time, so each misbehaviour meets the command it is for.
    let capa = Some(["TOP", "UIDL", "USER"].map(String::from).to_vec());
    let b = Behaviour { capa, script: ScriptFn::new(script), ..Behaviour::default() };
    let up = fake::start_in_thread(b, MAILBOX.iter().map(|m| m.as_bytes().to_vec()).collect());
    let p = Popsift::start(&ProxyOpts { upstream: &up.addr, extra, ..Default::default() });
    (up, p)
}

/// Only the first upstream connection misbehaves on `kw` (a command keyword or whole line).
fn on_first(
    kw: &'static str,
    reply: impl Fn() -> Reply + Send + Sync + 'static,
) -> impl Fn(usize, &str) -> Option<Reply> {
    move |conn, line| (conn == 0 && line.eq_ignore_ascii_case(kw)).then(&reply)
}

/// Waits (bounded) until `cond` holds of the log.
fn wait_log(p: &Popsift, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = p.log();
        if cond(&log) {
            return;
        }
        assert!(Instant::now() < deadline, "waited for {what}; log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_sessions_finished(p: &Popsift, n: usize) {
    wait_log(p, &format!("{n} finished session(s)"), |l| l.matches("session finished").count() >= n);
}

/// Waits (bounded) until `popsift_sessions_active` is 0.
fn wait_no_active_sessions(p: &Popsift) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = p.scrape();
        if m.lines().any(|l| l == "popsift_sessions_active 0") {
            return;
        }
        assert!(Instant::now() < deadline, "popsift_sessions_active stuck:\n{m}\nlog:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Logs in; returns PASS's reply.
fn login(c: &mut RawPop) -> String {
    let r = c.command("USER alice");
    assert!(r.starts_with("+OK"), "USER: {r}");
    c.command("PASS pw")
}

/// The promises every case shares, after the misbehaving session: `err` is what the client
/// got, `logged` a text the log must contain.
fn assert_contained(up: &Scripted, p: &Popsift, err: &str, logged: &str) {
    assert!(err.starts_with("-ERR [SYS/TEMP]"), "client reply: {err:?}");
    assert!(!err.contains(&up.addr) && !err.contains("127.0.0.1"), "the -ERR names the upstream: {err}");
    wait_sessions_finished(p, 1);
    wait_log(p, logged, |l| l.contains(logged));

    // popsift keeps serving: a whole second session works.
    let mut c = RawPop::connect(&p.addr);
    assert_eq!(login(&mut c), "+OK logged in");
    assert!(c.command("STAT").starts_with("+OK 2 "), "second session STAT");
    assert!(c.command("RETR 1").starts_with("+OK"));
    assert!(c.read_multiline().ends_with(b"body one\r\n"));
    assert_eq!(c.command("QUIT"), "+OK bye");
    wait_sessions_finished(p, 2);

    assert!(!up.saw_dele(), "a DELE reached the upstream: {:?}", up.commands_of(0));
    let log = p.log();
    assert!(!log.contains("panicked"), "a panic:\n{log}");
    wait_no_active_sessions(p);
    assert_eq!(p.metric("popsift_session_panics_total").unwrap_or(0.0), 0.0);
}

/// The client's side of a session whose login scan fails: PASS gets the `-ERR`, then the
/// connection closes (a later `RETR 2`, the panic trigger, gets no answer).
fn login_refused(p: &Popsift) -> String {
    let mut c = RawPop::connect(&p.addr);
    let err = login(&mut c);
    c.send_raw(b"RETR 2\r\n");
    assert!(c.read_until_closed().is_empty(), "nothing after the -ERR");
    err
}

/// The case: LIST numbers `1 37`, `5 37`. Before: the login succeeded, `RETR 2`
/// panicked the session (`upstream - 1` used as an index) and `popsift_sessions_active`
/// stayed at 1. Now the LIST is refused at the boundary.
#[test]
fn list_with_gaps() {
    let (up, p) = start(on_first("LIST", || Reply::Send(b"+OK\r\n1 37\r\n5 37\r\n.\r\n".to_vec())));
    let err = login_refused(&p);
    assert_contained(&up, &p, &err, "upstream reply refused");
    assert!(p.log().contains("where 2 was due"), "the log says what was wrong:\n{}", p.log());
    assert_eq!(p.metric("popsift_upstream_invalid_replies_total{reply=\"list\"}"), Some(1.0));
}

#[test]
fn list_sizes_that_are_not_numbers() {
    let (up, p) = start(on_first("LIST", || Reply::Send(b"+OK\r\n1 abc\r\n2 -5\r\n.\r\n".to_vec())));
    let err = login_refused(&p);
    assert_contained(&up, &p, &err, "upstream reply refused");
    assert_eq!(p.metric("popsift_upstream_invalid_replies_total{reply=\"list\"}"), Some(1.0));
}

/// A STAT whose count and size disagree with LIST (RFC 1939 §5): the listing is not the
/// mailbox the server would act on. Refused at login like an invalid LIST, nothing deleted.
#[test]
fn stat_that_disagrees_with_list() {
    let (up, p) = start(on_first("STAT", || Reply::Send(b"+OK 7 99999\r\n".to_vec())));
    let err = login_refused(&p);
    assert_contained(&up, &p, &err, "upstream reply refused");
    assert!(p.log().contains("STAT reply breaks RFC 1939"), "the log says what was wrong:\n{}", p.log());
    assert_eq!(p.metric("popsift_upstream_invalid_replies_total{reply=\"stat\"}"), Some(1.0));
}

/// `TOP n 0` answered with a header line and then silence: bounded by the reply timeout.
#[test]
fn top_reply_that_stalls() {
    let (up, p) = start(on_first("TOP 1 0", || Reply::SendThenHang(b"+OK\r\nSubject: never ends\r\n".to_vec())));
    let started = Instant::now();
    let err = login_refused(&p);
    assert!(started.elapsed() < Duration::from_secs(20), "not bounded by the 2 s reply timeout");
    assert!(err.contains("timed out"), "{err}");
    assert_contained(&up, &p, &err, "scan timed out");
}

/// `TOP n 0` answered with an endless stream of header lines: bounded by the size LIST
/// announced, not read for ever.
#[test]
fn top_reply_that_never_terminates() {
    let filler = "X-Filler: ".to_string() + &"y".repeat(1000) + "\r\n";
    let (up, p) = start(on_first("TOP 1 0", move || {
        Reply::SendForever(b"+OK\r\nSubject: endless\r\n".to_vec(), filler.repeat(64).into_bytes())
    }));
    let err = login_refused(&p);
    assert_contained(&up, &p, &err, "longer than");
}

/// The server accepts the password and hangs up at once.
#[test]
fn server_closes_right_after_pass_ok() {
    let (up, p) = start(on_first("PASS pw", || Reply::SendThenClose(b"+OK logged in\r\n".to_vec())));
    let err = login_refused(&p);
    assert_contained(&up, &p, &err, "upstream closed the connection during scan");
}

/// A one-megabyte status line (to PASS): refused at the line cap.
#[test]
fn megabyte_status_line() {
    let (up, p) = start(on_first("PASS pw", || {
        let mut line = b"+OK ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 1 << 20));
        line.extend_from_slice(b"\r\n");
        Reply::Send(line)
    }));
    let mut c = RawPop::connect(&p.addr);
    let err = login(&mut c);
    assert!(c.read_until_closed().is_empty());
    assert_contained(&up, &p, &err, "line longer than");
}

/// Binary garbage instead of a status line.
#[test]
fn garbage_bytes() {
    let (up, p) =
        start(on_first("LIST", || Reply::Send(b"\x00\xff\xfe\x1b[31m garbage \x80\x81\r\n\xc3\x28\r\n".to_vec())));
    let err = login_refused(&p);
    assert_contained(&up, &p, &err, "unexpected reply");
}

/// The same behind a RETR body read by a one-command-at-a-time client: the body is written
/// to the client straight from the read buffer (issue 16), and only its octets: the line
/// behind the terminator stays buffered and ends the session at the next command.
#[test]
fn upstream_data_behind_a_relayed_body() {
    let (up, p) = start(|conn, line| {
        if conn != 0 || line != "RETR 1" {
            return None;
        }
        let stored = MAILBOX[0];
        Some(Reply::Send(format!("+OK {} octets\r\n{stored}.\r\n+OK nobody asked\r\n", stored.len()).into_bytes()))
    });
    let mut c = RawPop::connect(&p.addr);
    assert_eq!(login(&mut c), "+OK logged in");
    assert!(c.command("RETR 1").starts_with("+OK"));
    assert_eq!(c.read_multiline(), MAILBOX[0].as_bytes(), "the body, whole and alone");
    let err = c.command("NOOP");
    assert!(c.read_until_closed().is_empty());
    assert_contained(&up, &p, &err, "no command outstanding");
    assert!(!up.commands_of(0).iter().any(|l| l == "NOOP"), "the command was not sent on a desynchronised stream");
}

/// A server that sends a body and then pauses (a slow link, a large message read from
/// disk): what arrived reaches the client while the server still sends the rest, as through
/// a byte pump (issue 16). Before, a part shorter than 64 KiB waited in popsift's output
/// queue until the body ended or the reply timeout cut the session.
#[test]
fn body_part_reaches_the_client_while_the_server_sends_the_rest() {
    let part: Vec<String> = (0..100).map(|i| format!("line {i:03} of a body the server is still sending")).collect();
    let sent: String = part.iter().map(|l| format!("{l}\r\n")).collect();
    let (_up, p) = start_with(
        "timeouts:\n  upstream_reply: 60s\n",
        on_first("RETR 1", move || Reply::SendThenHang(format!("+OK 99999 octets\r\n{sent}").into_bytes())),
    );
    let mut c = RawPop::connect(&p.addr);
    assert_eq!(login(&mut c), "+OK logged in");
    c.set_read_timeout(Duration::from_secs(10));
    assert!(c.command("RETR 1").starts_with("+OK"));
    for line in &part {
        assert_eq!(&c.read_line(), line, "the body's first part, while the server is silent");
    }
}

/// The same for pipelined commands: the first reply, whole, reaches the client while the
/// server has not begun the second one; it does not wait behind it in popsift's queue.
#[test]
fn pipelined_reply_reaches_the_client_while_the_next_one_is_pending() {
    let (_up, p) =
        start_with("timeouts:\n  upstream_reply: 60s\n", on_first("RETR 2", || Reply::SendThenHang(Vec::new())));
    let mut c = RawPop::connect(&p.addr);
    assert_eq!(login(&mut c), "+OK logged in");
    c.set_read_timeout(Duration::from_secs(10));
    c.send_raw(b"RETR 1\r\nRETR 2\r\n");
    assert!(c.read_line().starts_with("+OK"), "RETR 1's status line");
    assert_eq!(c.read_multiline(), MAILBOX[0].as_bytes(), "RETR 1's body, while RETR 2 is unanswered");
}

/// A line arrives that no command asked for (here: right behind the last `TOP` reply of
/// the scan). Trusting it would pair every later reply with the wrong command: the next
/// command's reply would be this line, and RETR would relay another reply as a message.
#[test]
fn upstream_data_with_no_command_outstanding() {
    let (up, p) = start(|conn, line| {
        if conn != 0 || line != "TOP 2 0" {
            return None;
        }
        let head = &MAILBOX[1][..MAILBOX[1].find("\r\n\r\n").unwrap() + 4];
        Some(Reply::Send(format!("+OK\r\n{head}.\r\n+OK nobody asked\r\n").into_bytes()))
    });
    let mut c = RawPop::connect(&p.addr);
    assert_eq!(login(&mut c), "+OK logged in");
    let err = c.command("NOOP");
    assert!(c.read_until_closed().is_empty());
    assert_contained(&up, &p, &err, "no command outstanding");
    assert!(!up.commands_of(0).iter().any(|l| l == "NOOP"), "the command was not sent on a desynchronised stream");
}
