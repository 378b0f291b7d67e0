//! Heap allocations per TRANSACTION command (issue 16), counted by the real popsift binary's
//! allocator in front of a real Dovecot: jemalloc's per-size-class request counters
//! (`nrequests` of every small bin and large extent, `GET /debug/allocator` on the metrics
//! port) before and after a thousand commands of one kind, one at a time as fetchmail,
//! getmail and poplib send them. A one-command-at-a-time relay of a 10 KB message makes as
//! many syscalls as HAProxy (2 reads, 2 writes, 2 waits); what popsift spends beyond that
//! is user space, allocations among it. The bounds pin the counts measured after the
//! per-command path stopped allocating, so a change that brings allocations back into the
//! relay fails here, not only in a benchmark.
//!
//! popsift runs here without jemalloc's thread caches (`_RJEM_MALLOC_CONF=tcache:false`):
//! a thread cache reports its requests to the shared counters only when it flushes, so
//! with it the counts of a window drift by several hundred either way; without it every
//! request is counted as it happens.
//!
//! Not timing-sensitive: counts, not durations. Whatever else the process allocates during
//! a window (the statistics print and the requests for it) is about a hundred allocations
//! spread over a thousand commands, covered by the bounds' slack.
mod support;

use std::time::{Duration, Instant};

use support::*;

/// Commands of each kind per counting window.
const N: u64 = 1000;

/// Allocation requests the process has made so far (all size classes, all threads), or
/// `None` when the binary serves no allocator statistics.
fn requests(p: &Popsift) -> Option<u64> {
    let v = p.allocator_json()?;
    let merged = &v["jemalloc"]["stats.arenas"]["merged"];
    let sum = |key: &str| -> u64 {
        merged[key].as_array().map_or(0, |a| a.iter().map(|b| b["nrequests"].as_u64().unwrap_or(0)).sum())
    };
    Some(sum("bins") + sum("lextents"))
}

/// A reading newer than `last`: the endpoint serves a printed copy for up to a second
/// (`allocator::STATS_MAX_AGE`), so this polls until the count moves (the print itself
/// allocates, so a new print always differs), within a bounded deadline.
fn fresh_requests(p: &Popsift, last: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = requests(p).expect("allocator statistics served");
        if now != last {
            return now;
        }
        assert!(Instant::now() < deadline, "allocator statistics never refreshed");
        // Not faster: every request to the endpoint allocates too (a few dozen objects).
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A message of about 10 KB (the relay bench's small cell).
fn message(i: usize) -> Vec<u8> {
    let mut m =
        format!("From: a@example.org\r\nTo: b@example.org\r\nSubject: message {i}\r\nMessage-ID: <m{i}@x>\r\n\r\n")
            .into_bytes();
    while m.len() < 10_000 {
        m.extend_from_slice(b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n");
    }
    m
}

#[test]
fn transaction_commands_allocate_almost_nothing() {
    let d = Dovecot::start(DovecotOptions::default());
    for i in 0..4 {
        d.deliver("alice", &format!("m{i}"), &message(i));
    }
    // `POPSIFT_ALLOC_BIN=PATH` counts another build (how the figures before the change were
    // taken; its bounds then need not hold).
    let bin = std::env::var("POPSIFT_ALLOC_BIN").ok();
    // Exact counts (module doc); popsift inherits the variable, this test binary does not
    // run on jemalloc.
    std::env::set_var("_RJEM_MALLOC_CONF", "tcache:false");
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        log_level: "info",
        bin: bin.as_deref(),
        ..Default::default()
    });
    let mut c = RawPop::connect(&p.addr);
    c.login("alice", d.password("alice"));
    assert!(c.command("STAT").starts_with("+OK 4 "));

    // (command, multi-line reply, most allocations per command allowed). Measured after
    // the change: one per command that goes upstream (the boxed per-command future of
    // `net::driver`, which an idle session must not keep), none for one answered locally;
    // the statistics requests add about 0.1. Before it: 9 (RETR, TOP), 6 (NOOP), 4 (STAT),
    // 5 (LIST n, UIDL n).
    let kinds: [(&str, bool, f64); 6] = [
        ("RETR 2", true, 1.3),
        ("TOP 3 5", true, 1.3),
        ("NOOP", false, 1.3),
        ("STAT", false, 0.3),
        ("LIST 1", false, 0.3),
        ("UIDL 4", false, 0.3),
    ];
    let run = |c: &mut RawPop, cmd: &str, multi: bool, n: u64| {
        for _ in 0..n {
            let status = c.command(cmd);
            assert!(status.starts_with("+OK"), "{cmd}: {status}");
            if multi {
                c.read_multiline();
            }
        }
    };
    // Warm up: every buffer at its working size, the login's background work (the decision
    // history) written, the statistics printer's thread started.
    for (cmd, multi, _) in kinds {
        run(&mut c, cmd, multi, 50);
    }
    let mut last = fresh_requests(&p, 0);
    let mut report = Vec::new();
    let mut over = Vec::new();
    for (cmd, multi, bound) in kinds {
        run(&mut c, cmd, multi, N);
        let after = fresh_requests(&p, last);
        let per = (after - last) as f64 / N as f64;
        report.push(format!("{cmd}: {per:.2}"));
        if per > bound {
            over.push(format!("{cmd}: {per:.2} > {bound}"));
        }
        last = after;
    }
    eprintln!("allocations per command: {}", report.join(", "));
    if bin.is_none() {
        assert!(over.is_empty(), "allocations per command over their bound: {over:?} (all: {report:?})");
    }
    assert!(c.command("QUIT").starts_with("+OK"));
}
