//! Login scan latency (issue 6): how long a mail client waits for the `+OK` to its PASS when
//! popsift sits in front of a distant server, against a naive client that fetches headers
//! with `TOP n 0` one at a time.
//!
//! Not a criterion benchmark: each figure is one end-to-end login against real Dovecot with
//! tens of seconds of simulated latency, so statistics over many iterations would take hours;
//! every scenario is measured `SCAN_BENCH_REPEAT` times (default 3) and the median printed.
//!
//! Set-up per mailbox size: a Dovecot on loopback (generated config, as in the tests), a
//! mailbox of N messages with 2–10 KB headers, a delay forwarder ([`delay_proxy`]) adding
//! `SCAN_BENCH_RTT_MS` (default 50) of round-trip time in front of Dovecot, and the real
//! popsift binary (release build under `cargo bench`) in front of the forwarder. The client
//! talks to popsift over loopback without delay. Dovecot's own index is built by one direct
//! login before measuring, so the figures are popsift's and the link's, not Dovecot's first
//! indexing.
//!
//! Measured, as login-to-`+OK` (from sending PASS to reading its `+OK`; the PASS round trip
//! to the server is included):
//! - cold: empty header cache (new state dir);
//! - warm: the same popsift again (every header cached), 3 s after the cold login so that
//!   its background cache write is done (a client polls minutes apart);
//! - warm + 1: after one new message was delivered;
//! - warm, memo missed: after a rule reload (SIGHUP), so the verdict memo has nothing for the
//!   new rule set: every header comes from the header cache and is evaluated again;
//! - no pipelining: `scan: { pipelining: false }`, empty cache (for sizes above
//!   `SCAN_BENCH_NOPIPE_MAX`, default 1000, this would take N × RTT: it is measured on a
//!   mailbox of that size and extrapolated linearly, and the output says so);
//! - naive: a client directly against the delayed server: login, LIST, UIDL, then `TOP n 0`
//!   one at a time for the first `SCAN_BENCH_NAIVE_PREFIX` (default 200) messages,
//!   extrapolated linearly to N (the output says so).
//!
//! History mode (issue 13: "recording decisions adds ≤ 5 % to a cold login scan"):
//! `cargo bench --bench scan_latency -- --history` (or `SCAN_BENCH_HISTORY=1`) measures only
//! cold logins, with `history: { enabled: false }` and `true` interleaved (off, on, off, on …)
//! for `SCAN_BENCH_ROUNDS` rounds (default 7, at least 5), each through a fresh popsift and
//! state dir behind the same delay forwarder; it prints the medians of login-to-`+OK` wall
//! time and of popsift's CPU time per login (all threads, from schedstat, read once it stops
//! growing so the history writer's commit is included), and their on/off ratios. Sizes
//! default to 2000 in this mode.
//!
//! Run: `cargo bench --bench scan_latency` or `tests/benches/scan_latency.sh`.
//! Another popsift build (e.g. the previous one, to compare): `SCAN_BENCH_BIN=PATH`.
//! `SCAN_BENCH_CACHE_MEMORY=256KiB`: the header cache's page cache (`cache.memory`) bounded
//! to that instead of its default (issue 16: what a smaller cache costs a login).
//! Sizes: `SCAN_BENCH_SIZES=1000,10000` (default). Window: `SCAN_BENCH_WINDOW` (default:
//! popsift's default `scan.window`).
#[path = "plain_build.rs"]
mod plain_build;
#[path = "../support/mod.rs"]
mod support;

#[path = "delay_proxy.rs"]
mod delay_proxy;

#[path = "proc_cpu.rs"]
mod proc_cpu;

use std::time::{Duration, Instant};

use support::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Rules of the shape the shipped set uses (regexes on headers, keyword lists). Only
/// `hide`: a `delete` would shrink the mailbox at each QUIT and skew the warm figures.
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
  - id: LOTTERY
    header: Subject
    keywords: ["lottery winner", "you have won", "claim your prize"]
    action: hide
"#;

/// A message with a realistic header block of 2–10 KB (Received chains, DKIM, ARC,
/// List-* headers) and a small body. Deterministic in `i`.
fn message(i: usize) -> Vec<u8> {
    let target = 2000 + (i * 7919) % 8000;
    let mut h = String::with_capacity(target + 600);
    let mut hop = 0;
    while h.len() + 400 < target {
        h.push_str(&format!(
            "Received: from relay{hop}.mx{i}.example.net (relay{hop}.mx{i}.example.net [192.0.2.{}])\r\n\tby mx{hop}.example.org (Postfix) with ESMTPS id {:08X}{hop}\r\n\tfor <alice@example.org>; Mon, 23 Nov 2026 10:{:02}:{:02} +0000\r\n",
            hop % 250,
            i * 31 + hop,
            hop % 60,
            i % 60
        ));
        if hop % 3 == 2 {
            h.push_str(&format!(
                "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender{i}.example; s=sel{hop};\r\n\th=from:to:subject:date:message-id; bh={:044};\r\n\tb={:0>172}\r\n",
                i * 977 + hop,
                i
            ));
        }
        hop += 1;
    }
    let subject = match i % 50 {
        7 => "cheap viagra today".to_string(),
        19 => "you are a lottery winner".to_string(),
        _ => format!("Quarterly report part {i}"),
    };
    let from = if i % 50 == 33 { format!("promo{i}@bulk.example") } else { format!("colleague{}@example.com", i % 97) };
    h.push_str(&format!(
        "From: {from}\r\nTo: alice@example.org\r\nSubject: {subject}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{i}.bench@example.com>\r\nList-Id: <bench.example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    h.push_str(&format!("Hello,\r\n\r\nthis is message {i} of the benchmark mailbox.\r\n").repeat(8));
    h.into_bytes()
}

/// A minimal blocking POP3 client without the test harness's 30 s read timeout (a serial
/// scan of 1,000 messages at 50 ms takes longer than that).
struct Pop {
    r: std::io::BufReader<std::net::TcpStream>,
}

impl Pop {
    fn connect(addr: &str) -> Pop {
        let s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3600))).unwrap();
        let mut p = Pop { r: std::io::BufReader::new(s) };
        let g = p.line();
        assert!(g.starts_with("+OK"), "greeting: {g}");
        p
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut buf = Vec::new();
        let n = self.r.read_until(b'\n', &mut buf).expect("read line");
        assert!(n > 0, "connection closed by server");
        String::from_utf8_lossy(&buf).trim_end().to_string()
    }

    fn command(&mut self, c: &str) -> String {
        use std::io::Write;
        self.r.get_mut().write_all(format!("{c}\r\n").as_bytes()).expect("write");
        self.line()
    }

    fn read_multiline(&mut self) {
        use std::io::BufRead;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = self.r.read_until(b'\n', &mut buf).expect("read line");
            assert!(n > 0, "connection closed inside a multi-line reply");
            if buf == b".\r\n" {
                return;
            }
        }
    }

    fn login(&mut self, user: &str, pass: &str) {
        assert!(self.command(&format!("USER {user}")).starts_with("+OK"));
        assert!(self.command(&format!("PASS {pass}")).starts_with("+OK"));
    }
}

/// PASS → `+OK` through `addr`, then STAT; returns (elapsed, visible messages).
fn login(addr: &str, user: &str, pass: &str) -> (Duration, usize) {
    let mut c = Pop::connect(addr);
    let r = c.command(&format!("USER {user}"));
    assert!(r.starts_with("+OK"), "USER: {r}");
    let t0 = Instant::now();
    let r = c.command(&format!("PASS {pass}"));
    let elapsed = t0.elapsed();
    assert!(r.starts_with("+OK"), "PASS: {r}");
    let stat = c.command("STAT");
    assert!(stat.starts_with("+OK"), "STAT: {stat}");
    let n = stat.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    let _ = c.command("QUIT");
    (elapsed, n)
}

/// The naive scan directly against the delayed server: login + LIST + UIDL, then `prefix`
/// TOPs one at a time. Returns (fixed part, per-TOP time).
fn naive(addr: &str, user: &str, pass: &str, prefix: usize) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut c = Pop::connect(addr);
    c.login(user, pass);
    assert!(c.command("LIST").starts_with("+OK"));
    c.read_multiline();
    assert!(c.command("UIDL").starts_with("+OK"));
    c.read_multiline();
    let fixed = t0.elapsed();
    let t1 = Instant::now();
    for n in 1..=prefix {
        let r = c.command(&format!("TOP {n} 0"));
        assert!(r.starts_with("+OK"), "TOP: {r}");
        c.read_multiline();
    }
    let per_top = t1.elapsed() / prefix as u32;
    let _ = c.command("QUIT");
    (fixed, per_top)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

struct Proxy {
    p: Popsift,
}

fn popsift(upstream: &str, state: &std::path::Path, scan_extra: &str) -> Proxy {
    Proxy { p: start_popsift(upstream, state, "", scan_extra) }
}

/// popsift in front of `upstream` with the bench's rules, `state` as its state dir, the early
/// answer off, `SCAN_BENCH_WINDOW` if set, and `extra` config / `scan_extra` scan keys.
/// `SCAN_BENCH_BIN=PATH`: measure another popsift build (e.g. the previous release).
fn start_popsift(upstream: &str, state: &std::path::Path, extra: &str, scan_extra: &str) -> Popsift {
    let window = std::env::var("SCAN_BENCH_WINDOW").ok().map(|w| format!(", window: {w}")).unwrap_or_default();
    let cache =
        std::env::var("SCAN_BENCH_CACHE_MEMORY").map(|m| format!("cache: {{ memory: {m} }}\n")).unwrap_or_default();
    let extra = format!("{extra}{cache}scan: {{ early_answer_after: 'off'{window}{scan_extra} }}\n");
    let args = ["--state-dir", state.to_str().unwrap()];
    let bin = plain_build::popsift("SCAN_BENCH_BIN");
    Popsift::start(&ProxyOpts {
        upstream,
        rules: RULES,
        extra: &extra,
        args: &args,
        bin: Some(&bin),
        ..Default::default()
    })
}

fn run(n: usize, rtt: Duration, repeat: usize) {
    println!("\n== {n} messages, RTT {} ms ==", rtt.as_millis());
    let d = Dovecot::start(DovecotOptions::default());
    let (user, pass) = ("alice", d.password("alice").to_string());
    let t = Instant::now();
    let mut header_bytes = 0usize;
    for i in 0..n {
        let m = message(i);
        header_bytes += m.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        d.deliver(user, &format!("{i:06}.bench"), &m);
    }
    // Let Dovecot build its index once (not part of any figure).
    let _ = naive(&d.pop3_addr(), user, &pass, 1);
    println!(
        "mailbox: {n} messages, {:.1} MB of headers (avg {} B), set up in {:.1} s",
        header_bytes as f64 / 1e6,
        header_bytes / n,
        t.elapsed().as_secs_f64()
    );
    let delayed = delay_proxy::start(d.pop3_addr(), rtt / 2);

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut warm1 = Vec::new();
    let mut memo_miss = Vec::new();
    let mut visible = 0;
    for round in 0..repeat {
        let state = tempfile::tempdir().unwrap();
        let px = popsift(&delayed, state.path(), "");
        let (c, v) = login(&px.p.addr, user, &pass);
        cold.push(c);
        visible = v;
        // The cold login's cache write runs in the background after its +OK; a client polls
        // minutes later. Let it finish so "warm" measures a warm cache, not that write.
        std::thread::sleep(Duration::from_secs(3));
        let (w, v2) = login(&px.p.addr, user, &pass);
        assert_eq!(v, v2, "warm view differs from cold");
        if round == 0 {
            for l in
                px.p.log()
                    .lines()
                    .filter(|l| l.contains("mailbox listed") || l.contains("scan done") || l.contains("cache lookup"))
            {
                let fields: Vec<&str> = l.split_whitespace().filter(|f| f.contains('=') && !f.contains('{')).collect();
                println!("  popsift log: {}", fields.join(" "));
            }
        }
        warm.push(w);
        d.deliver(user, &format!("{:06}.bench-new{round}", n + round), &message(n + round));
        let (w1, _) = login(&px.p.addr, user, &pass);
        warm1.push(w1);
        // A rule reload gives the verdict memo nothing to match: every header comes back from
        // the header cache (its page cache, then the file) and is evaluated again — what a
        // login pays whenever the memo misses (a reload, or a mailbox evicted from the memo).
        px.p.signal("HUP");
        px.p.wait_log("rules reloaded");
        let (m, _) = login(&px.p.addr, user, &pass);
        memo_miss.push(m);
    }
    let (cold, warm, warm1, memo_miss) = (median(cold), median(warm), median(warm1), median(memo_miss));
    println!("popsift cold (empty cache)   : {}  ({visible} of {n} visible)", secs(cold));
    println!("popsift warm (all cached)    : {}", secs(warm));
    println!("popsift warm + 1 new message : {}", secs(warm1));
    println!(
        "popsift warm, memo missed    : {}  (after a rule reload: headers from the cache, evaluated again)",
        secs(memo_miss)
    );

    let nopipe_max: usize = env_or("SCAN_BENCH_NOPIPE_MAX", 1000);
    let nopipe = if n <= nopipe_max {
        let state = tempfile::tempdir().unwrap();
        let px = popsift(&delayed, state.path(), ", pipelining: false");
        let (t, _) = login(&px.p.addr, user, &pass);
        println!("popsift, pipelining off, cold: {}", secs(t));
        t
    } else {
        let e = rtt * n as u32;
        println!(
            "popsift, pipelining off, cold: ~{} (NOT measured: {n} × RTT; measured at {nopipe_max} messages, see above; set SCAN_BENCH_NOPIPE_MAX to measure)",
            secs(e)
        );
        e
    };

    let prefix: usize = env_or::<usize>("SCAN_BENCH_NAIVE_PREFIX", 200).clamp(1, n.max(1));
    let (fixed, per_top) = naive(&delayed, user, &pass, prefix);
    let naive_total = fixed + per_top * n as u32;
    println!(
        "naive TOP one at a time       : {} (extrapolated: login+LIST+UIDL {} + {n} × {:.1} ms per TOP measured over the first {prefix})",
        secs(naive_total),
        secs(fixed),
        per_top.as_secs_f64() * 1e3
    );
    let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!(
        "ratios: naive/cold = {:.0}×, naive/warm = {:.0}×, cold/warm = {:.1}×, no-pipelining/cold = {:.1}×",
        r(naive_total, cold),
        r(naive_total, warm),
        r(cold, warm),
        r(nopipe, cold)
    );
    if n >= 10_000 && rtt == Duration::from_millis(50) {
        let ok = |b: bool| if b { "met" } else { "NOT met" };
        println!(
            "targets (10,000 msgs, 50 ms): cold ≤ 2 s {}; warm ≤ 0.2 s {}; ≥ 100× naive {}",
            ok(cold <= Duration::from_secs(2)),
            ok(warm <= Duration::from_millis(200)),
            ok(r(naive_total, cold) >= 100.0)
        );
    }
}

/// Cold login through a fresh popsift (new state dir) with the history on or off: (PASS to
/// `+OK`, popsift's CPU time for the login including the history write after it).
fn cold_login_cpu(upstream: &str, user: &str, pass: &str, history: bool) -> (Duration, Duration) {
    let state = tempfile::tempdir().unwrap();
    let p = start_popsift(upstream, state.path(), &format!("history: {{ enabled: {history} }}\n"), "");
    let before = proc_cpu::settled_cpu(p.pid());
    let (wall, _) = login(&p.addr, user, pass);
    (wall, proc_cpu::settled_cpu(p.pid()).saturating_sub(before))
}

/// The history's cost on a cold login scan (see the module doc, "History mode").
fn history_cost(n: usize, rtt: Duration, rounds: usize) {
    println!("\n== history on/off: {n} messages, RTT {} ms, {rounds} rounds ==", rtt.as_millis());
    let d = Dovecot::start(DovecotOptions::default());
    let (user, pass) = ("alice", d.password("alice").to_string());
    for i in 0..n {
        d.deliver(user, &format!("{i:06}.bench"), &message(i));
    }
    let _ = naive(&d.pop3_addr(), user, &pass, 1);
    let delayed = delay_proxy::start(d.pop3_addr(), rtt / 2);
    let (mut wall, mut cpu): ([Vec<Duration>; 2], [Vec<Duration>; 2]) = Default::default();
    for _ in 0..rounds {
        for (i, on) in [false, true].into_iter().enumerate() {
            let (w, c) = cold_login_cpu(&delayed, user, &pass, on);
            wall[i].push(w);
            cpu[i].push(c);
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let per_round: Vec<String> =
        cpu[0].iter().zip(&cpu[1]).map(|(a, b)| format!("{:.1}/{:.1}", ms(*a), ms(*b))).collect();
    let [w_off, w_on] = wall.map(median);
    let [c_off, c_on] = cpu.map(median);
    println!("history off: {:.1} ms wall (PASS to +OK), {:.1} ms popsift CPU per login", ms(w_off), ms(c_off));
    println!("history on : {:.1} ms wall, {:.1} ms CPU", ms(w_on), ms(c_on));
    println!(
        "on/off     : {:.3} wall, {:.3} CPU (target ≤ 1.05); CPU ms per round off/on: {}",
        ms(w_on) / ms(w_off).max(1e-9),
        ms(c_on) / ms(c_off).max(1e-9),
        per_round.join(" ")
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `--history` selects the history mode.
    let history = std::env::args().any(|a| a == "--history") || std::env::var_os("SCAN_BENCH_HISTORY").is_some();
    let sizes: Vec<usize> = std::env::var("SCAN_BENCH_SIZES")
        .unwrap_or_else(|_| if history { "2000".into() } else { "1000,10000".into() })
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rtt = Duration::from_millis(env_or("SCAN_BENCH_RTT_MS", 50));
    let repeat: usize = env_or::<usize>("SCAN_BENCH_REPEAT", 3).max(1);
    if history {
        let rounds = env_or::<usize>("SCAN_BENCH_ROUNDS", 7).max(5);
        println!("scan_latency --history: cold login scans with the decision history off and on");
        for n in sizes {
            history_cost(n, rtt, rounds);
        }
        return;
    }
    println!("scan_latency: login-to-+OK through popsift (release build) vs a naive serial TOP scan");
    for n in sizes {
        run(n, rtt, repeat);
    }
}
