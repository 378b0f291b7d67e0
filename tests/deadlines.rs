//! Deadlines per phase, not per read (issue 10, item 5), against the real popsift binary and
//! a scripted upstream (tests/fake/mod.rs): a client that trickles its command line, an
//! upstream that trickles its greeting, a status line or a listing, and a client that
//! leaves while the upstream stalls. Each must end the session within a bounded time and
//! give its slot back (`max_sessions: 1`, then a new client is served). The unit tests of
//! `net::conn` check the same deadlines under paused time.
// `fake` and `support` both bring the shared wait helper.
#![allow(clippy::duplicate_mod)]
mod fake;
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use fake::popsift::Client;
use fake::Behaviour;
use support::{Popsift, ProxyOpts};
use tokio::io::AsyncWriteExt;

/// The slow server's dribble interval (one octet per this).
const EVERY: Duration = Duration::from_millis(200);

/// The scripted upstream with two small messages, misbehaving as `b` says.
async fn slow(b: Behaviour) -> fake::Fake {
    fake::start(b, vec![fake::msg("slow 1", "body 1\r\n"), fake::msg("slow 2", "body 2\r\n")]).await
}

fn proxy(upstream: &str, extra: &str) -> Popsift {
    Popsift::start(&ProxyOpts { upstream, extra, ..ProxyOpts::default() })
}

/// Waits until a new client gets a `+OK` greeting (the only session slot is free again).
async fn slot_is_free(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (mut c, greeting) = Client::connect(addr).await;
        if greeting.starts_with("+OK") {
            assert!(c.cmd("QUIT").await.starts_with("+OK"));
            return;
        }
        assert!(Instant::now() < deadline, "the session slot was not freed; last greeting {greeting:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the metrics say no session is running.
async fn no_session_active(p: &Popsift) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = tokio::task::block_in_place(|| p.scrape());
        if body.lines().any(|l| l == "popsift_sessions_active 0") {
            return;
        }
        assert!(Instant::now() < deadline, "sessions still active:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_client_is_cut_at_client_line_and_its_slot_freed() {
    let up = slow(Behaviour::default()).await;
    let p = proxy(&up.addr, "max_sessions: 1\ntimeouts: { client_line: 3s }\n");
    let (mut c, greeting) = Client::connect(&p.addr).await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    // 30 octets, one a second: a per-read timeout of 10 minutes would never fire.
    let line = b"USER slowloris-slowloris-abc\r\n";
    assert_eq!(line.len(), 30);
    let started = Instant::now();
    let mut sent = 0;
    let reply = loop {
        if sent < line.len() && c.sock.write_all(&line[sent..sent + 1]).await.is_ok() {
            sent += 1;
        }
        tokio::select! {
            l = c.line() => break l,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let took = started.elapsed();
    assert!(reply.starts_with("-ERR") && reply.contains("not completed within 3s"), "{reply:?}");
    assert!(sent < line.len(), "the line was completed ({sent} octets) before the cut");
    assert!(took < Duration::from_secs(8), "cut after {took:?}");
    assert_eq!(c.line().await, "", "connection not closed after the -ERR");
    slot_is_free(&p.addr).await;
    let log = p.log();
    assert!(log.contains("client command line timed out after 3s"), "{log}");
    assert!(up.commands().iter().all(|c| !c.starts_with("DELE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_greeting_gets_sys_temp_within_the_greeting_deadline() {
    let up = slow(Behaviour { greeting_every: Some(Duration::from_millis(300)), ..Behaviour::default() }).await;
    let p = proxy(&up.addr, "max_sessions: 1\ntimeouts: { greeting: 2s }\n");
    let started = Instant::now();
    let (_c, first) = Client::connect(&p.addr).await;
    let took = started.elapsed();
    assert!(first.starts_with("-ERR [SYS/TEMP]") && first.contains("greeting timed out"), "{first:?}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    up.wait_closed(1).await;
    slot_is_free_or_greeting_err(&p.addr).await;
}

/// With an upstream that always dribbles its greeting, a freed slot shows as a new session
/// that gets the upstream's failure (not "too many sessions").
async fn slot_is_free_or_greeting_err(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_c, greeting) = Client::connect(addr).await;
        if greeting.contains("greeting timed out") {
            return;
        }
        assert!(Instant::now() < deadline, "the session slot was not freed; last greeting {greeting:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_status_line_gets_sys_temp_within_upstream_reply() {
    let up = slow(Behaviour { dribble: Some(("USER", EVERY)), ..Behaviour::default() }).await;
    let p = proxy(&up.addr, "max_sessions: 1\ntimeouts: { upstream_reply: 2s }\n");
    let (mut c, greeting) = Client::connect(&p.addr).await;
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let started = Instant::now();
    let reply = c.cmd("USER alice").await;
    let took = started.elapsed();
    assert!(reply.starts_with("-ERR [SYS/TEMP]") && reply.contains("login timed out after 2s"), "{reply:?}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    up.wait_closed(1).await;
    no_session_active(&p).await;
    assert!(up.commands().iter().all(|c| !c.starts_with("DELE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_listing_in_the_scan_gets_sys_temp_under_min_rate() {
    let up = slow(Behaviour { dribble: Some(("LIST", EVERY)), ..Behaviour::default() }).await;
    let p = proxy(&up.addr, "max_sessions: 1\ntimeouts: { upstream_reply: 2s, upstream_min_rate: 1KiB }\n");
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    let started = Instant::now();
    let reply = c.cmd("PASS pw").await;
    let took = started.elapsed();
    assert!(reply.starts_with("-ERR [SYS/TEMP]") && reply.contains("scan too slow"), "{reply:?}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    up.wait_closed(1).await;
    no_session_active(&p).await;
    assert!(up.commands().iter().all(|c| !c.starts_with("DELE")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_while_upstream_stalls_ends_the_session_promptly() {
    client_leaves_while_upstream_stalls(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reset_while_upstream_stalls_ends_the_session_promptly() {
    client_leaves_while_upstream_stalls(true).await;
}

/// The client closes (or resets, with `SO_LINGER` 0) while the upstream never answers RETR.
async fn client_leaves_while_upstream_stalls(reset: bool) {
    let up = slow(Behaviour { stall: Some("RETR"), ..Behaviour::default() }).await;
    // Default timeouts: the upstream reply alone would hold the session for 120 s.
    let p = proxy(&up.addr, "max_sessions: 1\n");
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS pw").await.starts_with("+OK"));
    c.send("RETR 1\r\n").await;
    // Wait until the command reached the upstream, then leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.commands().iter().any(|c| c == "RETR 1") {
        assert!(Instant::now() < deadline, "RETR never reached the upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = Instant::now();
    if reset {
        socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO)).unwrap();
    }
    drop(c);
    up.wait_closed(1).await;
    no_session_active(&p).await;
    let took = left.elapsed();
    assert!(took < Duration::from_secs(10), "session ended {took:?} after the client left");
    let log = p.log();
    let why = if reset { "client I/O error" } else { "client closed" };
    assert!(log.lines().any(|l| l.contains("session finished") && l.contains(why)), "{log}");
    slot_is_free(&p.addr).await;
    assert!(up.commands().iter().all(|c| !c.starts_with("DELE")));
}

/// Watching the client during upstream waits must not cost a client that pipelines its
/// commands, QUIT included, and then half-closes (shutdown of its write side): it still gets
/// every reply and its UPDATE (RFC 1939 §6), in AUTHORIZATION as in TRANSACTION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_then_half_close_still_get_replies_and_update() {
    let messages = (1..=3).map(|i| fake::msg(&format!("m{i}"), "body\r\n")).collect();
    let up = fake::start(fake::Behaviour::default(), messages).await;
    let p = fake::popsift::start(&up.addr, "rules: []\n", "").await;
    let (mut c, greeting) = Client::connect(&p.addr).await;
    assert!(greeting.starts_with("+OK"));
    c.send("USER alice\r\nPASS pw\r\nSTAT\r\nDELE 1\r\nRETR 2\r\nQUIT\r\n").await;
    c.sock.shutdown().await.unwrap();
    let rest = String::from_utf8_lossy(&c.rest().await).into_owned();
    let statuses: Vec<&str> = rest.lines().filter(|l| l.starts_with('+') || l.starts_with('-')).collect();
    assert_eq!(statuses.len(), 6, "{rest}");
    assert!(statuses.iter().all(|l| l.starts_with("+OK")), "{rest}");
    assert!(rest.contains("body\r\n.\r\n+OK"), "RETR 2 not relayed whole: {rest}");
    assert_eq!(up.log.lock().unwrap().expunged, vec![1], "the client's DELE was not carried out");
}

/// The same with a server slow to answer RETR, so popsift certainly sees the client's EOF
/// while it waits: the queued QUIT keeps the session going to its UPDATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_after_quit_while_the_upstream_is_slow_still_updates() {
    let up = slow(Behaviour { delay: Some(("RETR", Duration::from_secs(1))), ..Behaviour::default() }).await;
    let p = proxy(&up.addr, "");
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS pw").await.starts_with("+OK"));
    c.send("DELE 1\r\nRETR 2\r\nQUIT\r\n").await;
    c.sock.shutdown().await.unwrap();
    let rest = String::from_utf8_lossy(&c.rest().await).into_owned();
    assert!(rest.contains("body 2\r\n.\r\n+OK bye"), "{rest}");
    let commands = up.commands();
    let tail: Vec<&str> = commands.iter().rev().take(2).rev().map(|s| s.as_str()).collect();
    assert_eq!(tail, ["DELE 1", "QUIT"], "{commands:?}");
}

/// A client that pipelines commands and never reads the replies is cut after `client_idle`
/// of blocked writing, as a client fault (not counted as an upstream error, no `-ERR
/// [SYS/TEMP]`), and its slot is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_cut_as_a_client_fault() {
    let messages = (1..=5000).map(|i| fake::msg(&format!("m{i}"), "b\r\n")).collect();
    let up = fake::start(fake::Behaviour::default(), messages).await;
    let p = proxy(&up.addr, "max_sessions: 1\ntimeouts: { client_idle: 2s }\n");
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS pw").await.starts_with("+OK"));
    // ~70 KB per reply, 70 MB in all: far more than the socket buffers hold.
    c.send(&"UIDL\r\n".repeat(1000)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.log().lines().any(|l| l.contains("session finished")) {
        assert!(Instant::now() < deadline, "the session did not end:\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = p.log();
    let line = log.lines().find(|l| l.contains("session finished")).unwrap();
    assert!(line.contains("writing to the client timed out") && line.contains("ClientAborted"), "{line}");
    let metrics = tokio::task::block_in_place(|| p.scrape());
    assert!(
        !metrics.lines().any(|l| l.starts_with("popsift_upstream_errors_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(c);
    slot_is_free(&p.addr).await;
}
