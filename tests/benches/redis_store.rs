//! Warm login through the shared Redis store vs the embedded redb store (issue 15), same
//! run, interleaved; Redis round trips per login; Redis memory per cached message.
//!
//! Not a criterion benchmark: each figure is an end-to-end login (PASS → `+OK`) against a
//! real Dovecot holding `REDIS_BENCH_N` messages (default 2,000, 2–10 KB header blocks), with
//! the real popsift binary (release build under `cargo bench`) and a real `redis-server`
//! (AOF, `appendfsync always`). "Warm" means every header block is in the store but the
//! process is new (restarted before each login), so the in-memory verdict memo is empty and
//! every block is read from the store — exactly the login that lands on another instance
//! behind a balancer. `REDIS_BENCH_REPEAT` (default 5) logins per store, alternating, medians
//! printed.
//!
//! Round trips: from `INFO commandstats` deltas around one login: each `HMGET` is one round
//! trip (the lookup, once per login), each `EVAL` one (the update script, once per login).
//! The decision history is off in both instances here (its calls run in its own writer
//! thread after the login; `tests/store_backends.rs` counts them).
//! Memory: `INFO memory` `used_memory` before and after the first (cold) login, divided by
//! the messages cached.
//!
//! Cases: `REDIS_BENCH_CASES` (default `2000:0,10000:40`), each `messages:body_kb`: 2,000
//! messages with small bodies, and 10,000 messages of about 50 KB (a 40 KB body), where a
//! per-window lookup would have cost dozens of round trips. `REDIS_BENCH_N` (one number)
//! still runs one case with small bodies. Peak memory of each popsift process (`VmHWM`,
//! new process per login) is printed per store.
//!
//! Run: `cargo bench --bench redis_store`.
#[path = "plain_build.rs"]
mod plain_build;
#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

const RULES: &str = r#"
rules:
  - id: SPAM_DOMAIN
    header: From:addr
    regex: '(?i)@(spam|bulk)\.example$'
    action: hide
  - id: VIAGRA
    header: Subject
    regex: '(?i)v[i1]agra|c[i1]al[i1]s'
    action: hide
"#;

/// A message with a 2–10 KB header block (Received chain) and a body of `body_kb` KB
/// (plus a line); deterministic.
fn message(i: usize, body_kb: usize) -> Vec<u8> {
    let target = 2000 + (i * 7919) % 8000;
    let mut h = String::with_capacity(target + 600);
    let mut hop = 0;
    while h.len() + 300 < target {
        h.push_str(&format!(
            "Received: from relay{hop}.mx{i}.example.net (relay{hop}.mx{i}.example.net [192.0.2.{}])\r\n\tby mx{hop}.example.org (Postfix) with ESMTPS id {:08X}{hop}\r\n\tfor <alice@example.org>; Mon, 23 Nov 2026 10:{:02}:{:02} +0000\r\n",
            hop % 250,
            i * 31 + hop,
            hop % 60,
            i % 60
        ));
        hop += 1;
    }
    let subject = if i % 50 == 7 { "cheap viagra today".to_string() } else { format!("Quarterly report part {i}") };
    h.push_str(&format!(
        "From: colleague{}@example.com\r\nTo: alice@example.org\r\nSubject: {subject}\r\nMessage-ID: <{i}.bench@example.com>\r\n\r\nHello, message {i}.\r\n",
        i % 97
    ));
    let line = "The quarterly figures are attached below for your review, as discussed.\r\n";
    for _ in 0..(body_kb * 1024) / line.len() {
        h.push_str(line);
    }
    h.into_bytes()
}

/// PASS → `+OK` time of one login (USER/PASS, STAT, QUIT).
fn login(addr: &str, user: &str, pass: &str) -> Duration {
    let mut c = RawPop::connect(addr);
    assert!(c.command(&format!("USER {user}")).starts_with("+OK"));
    let t = Instant::now();
    let r = c.command(&format!("PASS {pass}"));
    let d = t.elapsed();
    assert!(r.starts_with("+OK"), "PASS: {r}");
    assert!(c.command("STAT").starts_with("+OK"));
    let _ = c.command("QUIT");
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn used_memory(r: &RedisServer) -> u64 {
    let info = r.bulk(&["INFO", "memory"]).unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Peak resident memory of a process (`VmHWM`), KB.
fn peak_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let repeat: usize = env_or("REDIS_BENCH_REPEAT", 5);
    let cases: Vec<(usize, usize)> = match std::env::var("REDIS_BENCH_N").ok().and_then(|v| v.parse().ok()) {
        Some(n) => vec![(n, 0)],
        None => std::env::var("REDIS_BENCH_CASES")
            .unwrap_or_else(|_| "2000:0,10000:40".into())
            .split(',')
            .filter_map(|c| {
                let (n, kb) = c.split_once(':').unwrap_or((c, "0"));
                Some((n.trim().parse().ok()?, kb.trim().parse().ok()?))
            })
            .collect(),
    };
    for (n, body_kb) in cases {
        run(n, body_kb, repeat);
    }
}

fn run(n: usize, body_kb: usize, repeat: usize) {
    println!("== {n} messages, {body_kb} KB bodies ==");
    let d = Dovecot::start(DovecotOptions::default());
    let (user, pass) = ("alice", d.password("alice").to_string());
    let mut header_bytes = 0usize;
    for i in 0..n {
        let m = message(i, body_kb);
        header_bytes += m.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        d.deliver(user, &format!("{i:06}.bench"), &m);
    }
    println!("mailbox: {n} messages, {:.1} MB of headers (avg {} B)", header_bytes as f64 / 1e6, header_bytes / n);
    let redis = RedisServer::start();
    // The decision history is off in both (its own round trips, in its writer thread after
    // the login, are counted by `tests/store_backends.rs`): these figures are the header
    // cache's.
    let extra_scan = "scan: { early_answer_after: 'off' }\nhistory: { enabled: false }\n";
    // `POPSIFT_BENCH_BIN=PATH`: that build instead of the plain release build.
    let bin = plain_build::popsift("POPSIFT_BENCH_BIN");
    let start = |extra: String| {
        Popsift::start(&ProxyOpts {
            upstream: &d.pop3_addr(),
            rules: RULES,
            extra: &extra,
            log_level: "info",
            bin: Some(&bin),
            ..Default::default()
        })
    };
    let mut redb = start(extra_scan.to_string());
    let mut shared = start(format!("{extra_scan}{}", redis.store_yaml("bench")));

    // Cold logins fill both stores (and Dovecot's index); memory measured around Redis's.
    let _ = login(&redb.addr, user, &pass);
    let before = used_memory(&redis);
    let (hmget0, eval0) = (redis.calls("hmget"), redis.calls("eval"));
    let cold = login(&shared.addr, user, &pass);
    // The update is one atomic EVAL: once counted, it has fully landed.
    wait_until(Duration::from_secs(120), "the Redis header cache write", || redis.calls("eval") > eval0);
    let last = used_memory(&redis);
    let per_message = (last.saturating_sub(before)) as f64 / n as f64;
    println!("cold login through redis: {:.3} s", cold.as_secs_f64());
    let (hmget1, eval1) = (redis.calls("hmget") - hmget0, redis.calls("eval") - eval0);
    println!("redis round trips, cold login: {} ({hmget1} HMGET, {eval1} update EVAL)", hmget1 + eval1);
    println!(
        "redis memory: {:.1} MB for {n} cached header blocks: {:.0} B per message ({:.2}x the header bytes)",
        (last - before) as f64 / 1e6,
        per_message,
        per_message / (header_bytes as f64 / n as f64)
    );

    let mut t_redb = Vec::new();
    let mut t_redis = Vec::new();
    let mut trips = Vec::new();
    let (mut peak_redb, mut peak_redis) = (Vec::new(), Vec::new());
    for _ in 0..repeat {
        redb.restart();
        t_redb.push(login(&redb.addr, user, &pass));
        redb.wait_sessions_finished(1);
        peak_redb.push(peak_kb(redb.pid()));
        shared.restart();
        let calls = |c: &str| redis.calls(c);
        let (hmget, eval) = (calls("hmget"), calls("eval"));
        t_redis.push(login(&shared.addr, user, &pass));
        shared.wait_sessions_finished(1);
        wait_until(Duration::from_secs(30), "the update's EVAL", || calls("eval") > eval);
        trips.push((calls("hmget") - hmget) + (calls("eval") - eval));
        peak_redis.push(peak_kb(shared.pid()));
    }
    let (a, b) = (median(t_redb.clone()), median(t_redis.clone()));
    println!("warm login (new process, store warm), {n} messages, median of {repeat}, interleaved:");
    println!("  redb : {:.3} s  {:?}", a.as_secs_f64(), t_redb.iter().map(|d| d.as_millis()).collect::<Vec<_>>());
    println!("  redis: {:.3} s  {:?}", b.as_secs_f64(), t_redis.iter().map(|d| d.as_millis()).collect::<Vec<_>>());
    println!("  redis / redb = {:.2}x", b.as_secs_f64() / a.as_secs_f64());
    println!("redis round trips per warm login: {trips:?} (one HMGET + one update EVAL)");
    let (pa, pb) = (median_u64(peak_redb), median_u64(peak_redis));
    println!(
        "peak RSS of popsift over a warm login (median): redb {:.1} MB, redis {:.1} MB",
        pa as f64 / 1024.0,
        pb as f64 / 1024.0
    );
}

fn median_u64(mut v: Vec<u64>) -> u64 {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or(0)
}
