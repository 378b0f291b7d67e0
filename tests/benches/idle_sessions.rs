//! Idle sessions (issue 16): what a logged-in session that waits for its client costs, and
//! whether that memory comes back when the sessions end.
//!
//! Run with `cargo bench --bench idle_sessions` (release build of popsift, the real binary
//! as a child process). `POPSIFT_IDLE_SESSIONS` sets the number of sessions (default 5,000);
//! `POPSIFT_IDLE_CACHE=off` runs popsift without its header cache.
//!
//! The upstream is a cheap async fake in this process (Dovecot spawns a process per POP3
//! session and cannot hold 5,000): any `USER uN` with `PASS pw` logs in, every mailbox has
//! the same 20 small messages (with TOP, UIDL and PIPELINING, like Dovecot). Each user is
//! distinct, so anything popsift keeps per user shows up in the figures.
//!
//! Steps, with the PSS of the popsift process (`Pss:` of `/proc/PID/smaps_rollup`, the
//! process's share of resident memory; socket buffers are kernel memory and not in it):
//! 1. `start`: popsift listening, no session yet;
//! 2. `warm`: after one session opened and closed (one-time set-up: rule set, header cache
//!    database, the runtime's threads);
//! 3. `during`: N sessions logged in (USER, PASS, STAT) and idle, PSS no longer falling
//!    (the logins' transient memory given back, see step 4); then a NOOP on every
//!    session, each must answer `+OK` (they are alive, not merely counted);
//! 4. `after`: every session ended with QUIT, popsift quiet (no CPU used for a second), its
//!    PSS no longer falling (the allocator returns freed pages after a decay time), and the
//!    runtime's extra blocking threads gone (they exit after tokio's 10 s keep-alive; waited
//!    for at most 40 s, the PSS before that printed too).
//!
//! Printed: per-session KiB = (during - warm) / N, and after / start. Targets (issue 16):
//! ≤ 5.25 KiB per session (4 KiB + 64 B per message of the view), after within 20 % of start.
//! The sessions log in in two halves with a plateau between them; the second half's slope,
//! (during - half) / (N - N/2), is what one more idle session costs once the bounded caches
//! the first logins fill (redb's page caches, the verdict memo) are full: the average above
//! also carries their fill.
//!
//! Where the bytes are: at each step the allocator's own figures (`popsift_allocator_bytes`
//! from `/metrics`: live objects, their pages, metadata, resident), the thread caches
//! (`tcache_bytes`: counted as allocated by jemalloc), the threads by name and their stacks'
//! PSS, the allocator's metadata split into extent descriptors, page radix tree and the rest
//! (what the peak leaves and jemalloc never gives back), and between `warm` and `during` the
//! live objects per size class (jemalloc's `curregs` from `/debug/allocator`), divided by N:
//! what one idle session holds, by object size, and
//! the slack the logins left (slab bytes holding no live object, per size class); between
//! `start` and `after` the same (what the ended sessions left live: caches that grow with
//! users or with the peak of sessions, and the pages those keep active). The **one-time
//! fill**, (half - warm) - (during - half), split into live objects, slack, metadata, thread
//! caches and stacks, is what the average carries beyond the slope.
//! `POPSIFT_IDLE_MESSAGES` sets the messages per mailbox (default 20; e.g. 200 with fewer
//! sessions separates the per-message from the per-session cost); `POPSIFT_IDLE_BIN` runs
//! another popsift binary (an earlier build kept for a before/after comparison);
//! `POPSIFT_IDLE_CACHE_MEMORY=16MiB` bounds redb's page cache (`cache.memory`).
//!
//! Not criterion: the figures are memory of another process at given moments, not times.
#[path = "plain_build.rs"]
mod plain_build;
#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;
// Only its tick reader is used here.
#[allow(dead_code)]
#[path = "proc_cpu.rs"]
mod proc_cpu;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Popsift, ProxyOpts};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Messages in every mailbox (`POPSIFT_IDLE_MESSAGES`, default 20).
fn messages() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::env::var("POPSIFT_IDLE_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(20))
}
/// Logins in flight at once (popsift and the fake share the machine's two cores).
const CONCURRENT_LOGINS: usize = 64;

/// PSS of a process in KiB.
fn pss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("popsift runs");
    s.lines().filter(|l| l.starts_with("Pss:")).filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).sum()
}

/// PSS in KiB per kind of mapping (`[heap]`, other anonymous memory, files), for the
/// breakdown printed with the figures.
fn pss_by_kind(pid: u32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut heap, mut anon, mut file, mut kind) = (0u64, 0u64, 0u64, 0usize);
    for l in s.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header line: address range, perms, offset, dev, inode, path.
            let path = l.split_whitespace().nth(5).unwrap_or("");
            kind = if path == "[heap]" {
                0
            } else if path.is_empty() || path.starts_with('[') {
                1
            } else {
                2
            };
        } else if first == "Pss:" {
            let k = l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            *[&mut heap, &mut anon, &mut file][kind] += k;
        }
    }
    format!("[heap] {} / other anonymous {} / files {}", kib(heap), kib(anon), kib(file))
}

/// User + system CPU ticks of a process.
fn cpu_ticks(pid: u32) -> u64 {
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "popsift runs");
    let (user, sys) = proc_cpu::user_sys_ticks(pid);
    user + sys
}

/// Waits until the process has used no CPU for a second (everything it was doing is done).
async fn wait_quiet(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut still) = (cpu_ticks(pid), 0);
    while still < 5 {
        assert!(Instant::now() < deadline, "popsift never went quiet");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = cpu_ticks(pid);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
}

/// Waits until the process's PSS stops falling (no drop of 1 % or more for 5 s, at most 60 s):
/// an allocator may give freed memory back some seconds after the free (jemalloc's decay).
/// Returns the last PSS.
async fn wait_pss_settled(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut low, mut since) = (pss_kib(pid), Instant::now());
    while since.elapsed() < Duration::from_secs(5) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = pss_kib(pid);
        if now * 100 < low * 99 {
            since = Instant::now();
        }
        low = low.min(now);
    }
    pss_kib(pid)
}

/// PSS in KiB of the threads' stacks: anonymous read-write mappings right above a guard
/// mapping (no access), as pthread lays out a thread's stack, plus the main thread's
/// `[stack]`. A thread's stack pages that it touched stay resident while it lives.
fn stacks_pss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut prev_guard_end, mut counting) = (0u64, None::<u64>, false);
    for l in s.lines() {
        let mut words = l.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let (lo, hi) = first.split_once('-').unwrap_or(("0", "0"));
            let (lo, hi) = (u64::from_str_radix(lo, 16).unwrap_or(0), u64::from_str_radix(hi, 16).unwrap_or(0));
            let perms = words.next().unwrap_or("");
            let path = words.nth(3).unwrap_or("");
            // A guard of at most 64 KiB below at most 16 MiB (the allocator's reserved
            // address space is larger and not below a guard).
            counting = path == "[stack]"
                || (path.is_empty() && perms == "rw-p" && prev_guard_end == Some(lo) && hi - lo <= 16 << 20);
            prev_guard_end = (path.is_empty() && perms == "---p" && hi - lo <= 64 << 10).then_some(hi);
        } else if first == "Pss:" && counting {
            total += words.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// The process's threads by name (`comm`), e.g. `tokio-runtime-w x 8, popsift x 1`.
fn thread_names(pid: u32) -> String {
    let mut names: Vec<(String, usize)> = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => names.push((name, 1)),
        }
    }
    names.sort();
    names.iter().map(|(n, c)| format!("{n} x {c}")).collect::<Vec<_>>().join(", ")
}

/// Threads of a process.
fn threads(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Waits until `cond` holds or `timeout` passed; whether it held.
async fn wait_until(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

/// Waits (bounded) until `cond` holds.
async fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message(i: usize) -> Vec<u8> {
    format!(
        "From: Sender {i} <s{i}@example.net>\r\nTo: someone@example.org\r\nSubject: idle bench message {i}\r\n\
         Message-ID: <idle-{i}@popsift.test>\r\nDate: Sun, 29 Nov 2026 12:00:00 +0000\r\n\r\nbody of message {i}\r\n"
    )
    .into_bytes()
}

/// The fake upstream: greeting, CAPA, USER/PASS, STAT, LIST, UIDL, TOP, RETR, NOOP, QUIT.
/// Counts the connections that ended.
async fn fake_upstream(closed: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind fake upstream");
    let addr = listener.local_addr().expect("addr").to_string();
    let messages: Arc<Vec<Vec<u8>>> = Arc::new((1..=messages()).map(message).collect());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (messages, closed) = (messages.clone(), closed.clone());
            tokio::spawn(async move {
                let _ = serve(sock, &messages).await;
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    addr
}

async fn serve(sock: TcpStream, messages: &[Vec<u8>]) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::with_capacity(512, r);
    w.write_all(b"+OK idle-bench fake ready\r\n").await?;
    let mut line = String::new();
    let mut logged_in = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let kw = words.next().unwrap_or("").to_ascii_uppercase();
        let arg =
            |s: Option<&str>| s.and_then(|a| a.parse::<usize>().ok()).filter(|n| (1..=messages.len()).contains(n));
        let mut out = Vec::new();
        match kw.as_str() {
            "CAPA" => out.extend_from_slice(b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nPIPELINING\r\nRESP-CODES\r\n.\r\n"),
            "USER" => out.extend_from_slice(b"+OK\r\n"),
            "PASS" if words.next() == Some("pw") => {
                logged_in = true;
                out.extend_from_slice(b"+OK logged in\r\n");
            }
            "PASS" => out.extend_from_slice(b"-ERR [AUTH] authentication failed\r\n"),
            "QUIT" => {
                w.write_all(b"+OK bye\r\n").await?;
                return Ok(());
            }
            _ if !logged_in => out.extend_from_slice(b"-ERR not logged in\r\n"),
            "STAT" => {
                let total: usize = messages.iter().map(Vec::len).sum();
                out.extend_from_slice(format!("+OK {} {total}\r\n", messages.len()).as_bytes());
            }
            "LIST" | "UIDL" if words.clone().next().is_none() => {
                out.extend_from_slice(b"+OK\r\n");
                for (i, m) in messages.iter().enumerate() {
                    let line = if kw == "LIST" {
                        format!("{} {}\r\n", i + 1, m.len())
                    } else {
                        format!("{} uid-{}\r\n", i + 1, i + 1)
                    };
                    out.extend_from_slice(line.as_bytes());
                }
                out.extend_from_slice(b".\r\n");
            }
            "TOP" | "RETR" => match arg(words.next()) {
                Some(n) => {
                    let m = &messages[n - 1];
                    // The test messages have no line starting with '.', so no stuffing needed.
                    let part = if kw == "TOP" {
                        let end = memchr::memmem::find(m, b"\r\n\r\n").map_or(m.len(), |p| p + 4);
                        &m[..end]
                    } else {
                        &m[..]
                    };
                    out.extend_from_slice(b"+OK\r\n");
                    out.extend_from_slice(part);
                    out.extend_from_slice(b".\r\n");
                }
                None => out.extend_from_slice(b"-ERR no such message\r\n"),
            },
            "NOOP" => out.extend_from_slice(b"+OK\r\n"),
            _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
        }
        w.write_all(&out).await?;
    }
}

/// One client session, holding its socket idle between commands.
struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(Duration::from_secs(120), self.r.read_line(&mut l))
            .await
            .expect("reply within 120 s")
            .expect("read");
        assert!(n > 0, "popsift closed the session");
        l
    }

    async fn command(&mut self, c: &str) -> String {
        self.w.write_all(format!("{c}\r\n").as_bytes()).await.expect("write");
        self.line().await
    }

    async fn login(addr: &str, i: usize) -> Client {
        let sock = TcpStream::connect(addr).await.expect("connect to popsift");
        sock.set_nodelay(true).expect("nodelay");
        let (r, w) = sock.into_split();
        let mut c = Client { r: BufReader::with_capacity(256, r), w };
        let g = c.line().await;
        assert!(g.starts_with("+OK"), "greeting {g:?}");
        assert!(c.command(&format!("USER u{i}")).await.starts_with("+OK"));
        let pass = c.command("PASS pw").await;
        assert!(pass.starts_with("+OK"), "login u{i}: {pass:?}");
        let stat = c.command("STAT").await;
        assert!(stat.starts_with(&format!("+OK {} ", messages())), "STAT {stat:?}");
        c
    }
}

/// Opens `n` sessions, at most [`CONCURRENT_LOGINS`] logins at a time.
async fn open_sessions(addr: &str, first: usize, n: usize) -> Vec<Client> {
    let mut clients = Vec::with_capacity(n);
    let mut next = first;
    while clients.len() < n {
        let batch = CONCURRENT_LOGINS.min(n - clients.len());
        let tasks: Vec<_> = (next..next + batch)
            .map(|i| {
                let addr = addr.to_string();
                tokio::spawn(async move { Client::login(&addr, i).await })
            })
            .collect();
        for t in tasks {
            clients.push(t.await.expect("login task"));
        }
        next += batch;
    }
    clients
}

/// Ends every session with QUIT (answered `+OK`).
async fn quit_all(clients: Vec<Client>) {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let r = c.command("QUIT").await;
                assert!(r.starts_with("+OK"), "QUIT {r:?}");
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("quit task");
    }
}

fn kib(k: u64) -> String {
    format!("{:.1} MiB", k as f64 / 1024.0)
}

fn main() {
    let n: usize = std::env::var("POPSIFT_IDLE_SESSIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    // This process holds both ends popsift talks to: 2 descriptors per session.
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
    let want = (2 * n as u64 + 256).min(hard);
    rlimit::setrlimit(rlimit::Resource::NOFILE, want, hard).expect("raise RLIMIT_NOFILE");
    assert!(want >= 2 * n as u64 + 64, "RLIMIT_NOFILE hard limit {hard} is too low for {n} sessions");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let closed = Arc::new(AtomicUsize::new(0));
    let upstream = fake_upstream(closed.clone()).await;
    // POPSIFT_IDLE_CACHE=off: without the header cache, whose in-memory page cache (bounded
    // by `cache.memory`, 2 MiB by default, shared by all sessions) fills with the header
    // blocks written.
    let cache_off = std::env::var("POPSIFT_IDLE_CACHE").is_ok_and(|v| v == "off");
    // POPSIFT_IDLE_CACHE_MEMORY=16MiB: redb's page cache bounded (`cache.memory`).
    let cache = match std::env::var("POPSIFT_IDLE_CACHE_MEMORY") {
        _ if cache_off => "cache: { enabled: false }\n".to_string(),
        Ok(m) => format!("cache: {{ memory: {m} }}\n"),
        Err(_) => String::new(),
    };
    let extra = format!("max_sessions: {}\n{cache}", n + 16);
    // POPSIFT_IDLE_BIN: another popsift binary (an earlier build, for before/after figures).
    let bin = plain_build::popsift("POPSIFT_IDLE_BIN");
    let p = Popsift::start(&ProxyOpts {
        upstream: &upstream,
        rules: "rules: []\n",
        extra: &extra,
        log_level: "info",
        bin: Some(&bin),
        ..Default::default()
    });
    let pid = p.pid();
    println!(
        "idle sessions benchmark: {n} logged-in idle sessions of {} messages, header cache {}, popsift pid {pid}",
        messages(),
        if cache_off { "off" } else { "on" }
    );
    // jemalloc's arenas: each keeps its own slabs per size class (see README, "Idle sessions").
    if let Some(v) = p.allocator_json() {
        let opt = &v["jemalloc"]["opt"];
        println!(
            "allocator: {} arenas (one of them jemalloc's for huge objects), thread caches up to {} B per object",
            v["jemalloc"]["arenas"]["narenas"], opt["tcache_max"]
        );
    }
    wait_quiet(pid).await;
    let start = pss_kib(pid);
    let mut stages = vec![Stage::take("start", &p)];
    let bins_start = size_classes(&p);

    let warmup = open_sessions(&p.addr, 0, 1).await;
    quit_all(warmup).await;
    wait_for("the warm-up session to end upstream", Duration::from_secs(30), || closed.load(Ordering::SeqCst) >= 1)
        .await;
    wait_quiet(pid).await;
    let warm = pss_kib(pid);
    stages.push(Stage::take("warm", &p));
    let bins_warm = size_classes(&p);

    // In two halves, with a plateau between them: the second half's slope is what one
    // more idle session costs once the bounded caches that the first logins fill (redb's
    // page caches, the verdict memo) are full.
    let first = n / 2;
    let t = Instant::now();
    let mut clients = open_sessions(&p.addr, 1, first).await;
    let mut login_time = t.elapsed();
    wait_quiet(pid).await;
    let half = wait_pss_settled(pid).await;
    stages.push(Stage::take("half", &p));
    let t = Instant::now();
    clients.extend(open_sessions(&p.addr, 1 + first, n - first).await);
    login_time += t.elapsed();
    wait_quiet(pid).await;
    // Idle sessions stay idle: what the allocator frees later (the logins' transient memory)
    // is not theirs.
    let during = wait_pss_settled(pid).await;
    let during_kinds = pss_by_kind(pid);
    stages.push(Stage::take("during", &p));
    let bins_during = size_classes(&p);

    // Every session is alive: each answers a NOOP.
    let tasks: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            tokio::spawn(async move {
                let r = c.command("NOOP").await;
                assert!(r.starts_with("+OK"), "NOOP {r:?}");
                c
            })
        })
        .collect();
    for t in tasks {
        clients.push(t.await.expect("noop task"));
    }
    wait_quiet(pid).await;
    let after_noop = pss_kib(pid);

    quit_all(clients).await;
    wait_for("every upstream session to end", Duration::from_secs(120), || closed.load(Ordering::SeqCst) > n).await;
    wait_quiet(pid).await;
    let after_at_once = pss_kib(pid);
    let settled = wait_pss_settled(pid).await;
    // The runtime's blocking threads that the logins started exit after tokio's keep-alive
    // (10 s idle), and with them their allocator caches and stacks: "after" waits for that
    // (bounded), so it is what the process keeps, not what is on its way out.
    let warm_threads = stages.get(1).map_or(0, |s| s.threads);
    let threads_back = wait_until(Duration::from_secs(40), || threads(pid) <= warm_threads).await;
    let after = if threads_back { wait_pss_settled(pid).await } else { settled };
    let after_kinds = pss_by_kind(pid);
    stages.push(Stage::take("after", &p));
    let bins_after = size_classes(&p);

    let per = (during.saturating_sub(warm)) as f64 / n as f64;
    let per_noop = (after_noop.saturating_sub(warm)) as f64 / n as f64;
    println!("logins: {n} in {:.1} s", login_time.as_secs_f64());
    println!("{:<34} {:>10}", "PSS at start", kib(start));
    println!("{:<34} {:>10}", "PSS after one session (warm)", kib(warm));
    println!("{:<34} {:>10}   {per:.2} KiB per session", format!("PSS with {n} idle sessions"), kib(during));
    let slope = during.saturating_sub(half) as f64 / (n - first).max(1) as f64;
    println!(
        "{:<34} {:>10}   {slope:.2} KiB per session added after it (caches already full)",
        format!("  (with the first {first})"),
        kib(half)
    );
    println!("{:<34} {:>10}   {per_noop:.2} KiB per session", "PSS after a NOOP on each", kib(after_noop));
    println!(
        "{:<34} {:>10}   after/start {:.2}, after/warm {:.2}",
        "PSS after all sessions ended",
        kib(after),
        after as f64 / start as f64,
        after as f64 / warm as f64
    );
    println!("{:<34} {:>10}", "  (right after the last session)", kib(after_at_once));
    println!(
        "{:<34} {:>10}   ({} threads, warm {warm_threads}{})",
        "  (settled, before threads exited)",
        kib(settled),
        threads(pid),
        if threads_back { "" } else { "; the extra threads did not exit within 40 s" }
    );
    println!("during: {during_kinds}");
    println!("after:  {after_kinds}");
    println!();
    println!("allocator (MiB) and threads at each step:");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "step", "allocated", "active", "metadata", "resident", "PSS", "threads", "stacks", "tcache"
    );
    for s in &stages {
        let f = |k: &str| {
            s.alloc
                .iter()
                .find(|(n, _)| n == k)
                .map_or("-".to_string(), |(_, v)| format!("{:.1}", *v as f64 / 1048576.0))
        };
        println!(
            "{:<8} {:>10} {:>10} {:>10} {:>10} {:>10.1} {:>8} {:>8.1} {:>8}",
            s.name,
            f("allocated"),
            f("active"),
            f("metadata"),
            f("resident"),
            s.pss_kib as f64 / 1024.0,
            s.threads,
            s.stacks_kib as f64 / 1024.0,
            s.tcache.map_or("-".to_string(), |b| format!("{:.1}", b as f64 / 1048576.0))
        );
    }
    for s in &stages {
        println!("threads {:<7} {}", s.name, s.thread_names);
    }
    for s in &stages {
        if let Some((edata, rtree, rest)) = s.metadata {
            let m = |b: u64| b as f64 / 1048576.0;
            println!(
                "metadata {:<6} edata {:.2} MiB, rtree {:.2} MiB, other {:.2} MiB",
                s.name,
                m(edata),
                m(rtree),
                m(rest)
            );
        }
    }
    if let (Some(w), Some(h), Some(d)) = (stages.get(1), stages.get(2), stages.get(3)) {
        print_fixed_fill(w, h, d, first, n - first);
    }
    if let (Some(w), Some(d)) = (stages.get(1), stages.get(3)) {
        let per = |k: &str| {
            let v = |s: &Stage| s.alloc.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v as i64);
            (v(d) - v(w)) as f64 / n as f64
        };
        println!(
            "per session: allocated {:.0} B, active {:.0} B, metadata {:.0} B, resident {:.0} B, PSS {:.0} B",
            per("allocated"),
            per("active"),
            per("metadata"),
            per("resident"),
            (d.pss_kib as f64 - w.pss_kib as f64) * 1024.0 / n as f64
        );
    }
    if let (Some(w), Some(d)) = (&bins_warm, &bins_during) {
        let (w, d) = (&w.counts(), &d.counts());
        print_size_classes(&format!("live objects per session by size class (during - warm, / {n}):"), w, d, n);
    }
    // Slack that the logins left while the sessions are idle: slabs partly filled by
    // objects of the login burst (freed since) or spread over several arenas.
    if let (Some(w), Some(d)) = (&bins_warm, &bins_during) {
        print_slack("allocator slack by size class, during - warm:", w, d);
    }
    // What stayed live after every session ended, per mailbox (the sessions' users were
    // all distinct): caches that grow with users show up here, as do per-thread caches.
    if let (Some(s), Some(a)) = (&bins_start, &bins_after) {
        let (sc, ac) = (&s.counts(), &a.counts());
        print_size_classes(&format!("live objects per ended session by size class (after - start, / {n}):"), sc, ac, n);
        print_slack("allocator slack (slab bytes holding no live object) by size class, after - start:", s, a);
    }
}

/// Prints what the first half of the logins added beyond what the same number of sessions
/// added in the second half (the slope): the one-time fill the average per session carries,
/// by kind (live objects, allocator slack, allocator metadata, thread caches, thread stacks,
/// PSS). `w`, `h`, `d`: warm, after the first half (`first` sessions), during (`first` +
/// `second`).
fn print_fixed_fill(w: &Stage, h: &Stage, d: &Stage, first: usize, second: usize) {
    let v = |s: &Stage, k: &str| s.alloc.iter().find(|(n, _)| n == k).map_or(0.0, |(_, v)| *v as f64);
    let names = ["live objects", "slack", "metadata", "thread caches", "thread stacks", "PSS"];
    let kinds = |s: &Stage| {
        let tcache = s.tcache.unwrap_or(0) as f64;
        [
            v(s, "allocated") - tcache,
            v(s, "active") - v(s, "allocated"),
            v(s, "metadata"),
            tcache,
            s.stacks_kib as f64 * 1024.0,
            s.pss_kib as f64 * 1024.0,
        ]
    };
    let scale = first as f64 / second.max(1) as f64;
    let (w, h, d) = (kinds(w), kinds(h), kinds(d));
    let parts: Vec<String> = (0..names.len())
        .map(|i| format!("{} {:.1}", names[i], ((h[i] - w[i]) - (d[i] - h[i]) * scale) / 1048576.0))
        .collect();
    println!("one-time fill of the first {first} logins beyond the slope (MiB): {}", parts.join(", "));
}

/// Prints the live objects of `later` minus those of `earlier`, per size class, divided by
/// `n`, largest first, leaving out classes whose difference is under 2 bytes per `n` (a
/// large object, e.g. a cache's slab page, counts by its bytes, not its count).
fn print_size_classes(title: &str, earlier: &[(u64, u64)], later: &[(u64, u64)], n: usize) {
    println!("{title}");
    let mut rows: Vec<(u64, f64)> = later
        .iter()
        .map(|&(size, count)| {
            let before = earlier.iter().find(|(s, _)| *s == size).map_or(0, |(_, c)| *c);
            (size, (count as f64 - before as f64) / n as f64)
        })
        .filter(|(size, per)| (*size as f64 * per).abs() >= 2.0)
        .collect();
    rows.sort_by(|a, b| (b.0 as f64 * b.1).total_cmp(&(a.0 as f64 * a.1)));
    let total: f64 = rows.iter().map(|(s, c)| *s as f64 * c).sum();
    for (size, per) in rows.iter().take(16) {
        println!("  {size:>7} B x {per:>6.2} = {:>7.0} B", *size as f64 * per);
    }
    println!("  total {total:.0} B per session in live objects");
}

/// What popsift's allocator and threads looked like at one step.
struct Stage {
    name: &'static str,
    pss_kib: u64,
    /// `popsift_allocator_bytes` by kind (empty when not exported).
    alloc: Vec<(String, u64)>,
    threads: u64,
    /// PSS of the threads' stacks (KiB).
    stacks_kib: u64,
    /// Bytes in the threads' allocator caches (jemalloc's `tcache_bytes`).
    tcache: Option<u64>,
    /// The threads by name.
    thread_names: String,
    /// The allocator's metadata split: extent descriptors (`edata`), its radix tree of pages
    /// (`rtree`), the rest (arenas, thread caches' stacks …), bytes; `None` if not served.
    metadata: Option<(u64, u64, u64)>,
}

impl Stage {
    fn take(name: &'static str, p: &Popsift) -> Stage {
        let alloc = p
            .scrape()
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("popsift_allocator_bytes{kind=\"")?;
                let (kind, value) = rest.split_once("\"} ")?;
                Some((kind.to_string(), value.trim().parse::<f64>().ok()? as u64))
            })
            .collect();
        // Thread caches: objects freed by a thread and kept for its next allocations (not
        // live, but counted as allocated by jemalloc); an idle thread keeps its cache.
        let merged = p.allocator_json().map(|v| v["jemalloc"]["stats.arenas"]["merged"].clone());
        let tcache = merged.as_ref().and_then(|m| m["tcache_bytes"].as_u64());
        // What grows with the peak and is never given back (jemalloc's base allocations).
        let metadata = p.allocator_json().and_then(|v| {
            let st = &v["jemalloc"]["stats"];
            let (all, edata, rtree) =
                (st["metadata"].as_u64()?, st["metadata_edata"].as_u64()?, st["metadata_rtree"].as_u64()?);
            Some((edata, rtree, all.saturating_sub(edata + rtree)))
        });
        Stage {
            name,
            pss_kib: pss_kib(p.pid()),
            alloc,
            threads: threads(p.pid()),
            stacks_kib: stacks_pss_kib(p.pid()),
            tcache,
            thread_names: thread_names(p.pid()),
            metadata,
        }
    }
}

/// What one reading of the allocator says per size class: (size, live objects, slack),
/// slack being the bytes of its slabs not holding a live object (pages kept active by
/// the objects still in them: fragmentation). Small classes (`bins`) and large ones
/// (`lextents`, no slack) from jemalloc's statistics at `/debug/allocator`.
struct SizeClasses(Vec<(u64, u64, u64)>);

/// Live objects per size class, (size, count), and each class's slack; `None` when the
/// statistics are not served.
fn size_classes(p: &Popsift) -> Option<SizeClasses> {
    let v = p.allocator_json()?;
    let j = &v["jemalloc"];
    let field = |key: &str, f: &str| -> Vec<u64> {
        j["arenas"][key].as_array().map(|a| a.iter().map(|b| b[f].as_u64().unwrap_or(0)).collect()).unwrap_or_default()
    };
    let counts = |key: &str, f: &str| -> Vec<u64> {
        j["stats.arenas"]["merged"][key]
            .as_array()
            .map(|a| a.iter().map(|b| b[f].as_u64().unwrap_or(0)).collect())
            .unwrap_or_default()
    };
    let (sizes, slab_sizes) = (field("bin", "size"), field("bin", "slab_size"));
    let (regs, slabs) = (counts("bins", "curregs"), counts("bins", "curslabs"));
    let mut out: Vec<(u64, u64, u64)> = (0..sizes.len().min(regs.len()))
        .map(|i| {
            let slab = slab_sizes.get(i).copied().unwrap_or(0) * slabs.get(i).copied().unwrap_or(0);
            (sizes[i], regs[i], slab.saturating_sub(sizes[i] * regs[i]))
        })
        .collect();
    out.extend(field("lextent", "size").into_iter().zip(counts("lextents", "curlextents")).map(|(s, c)| (s, c, 0)));
    Some(SizeClasses(out))
}

impl SizeClasses {
    fn counts(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|&(s, c, _)| (s, c)).collect()
    }

    /// Slack (bytes) per size class.
    fn slack(&self) -> Vec<(u64, u64)> {
        self.0.iter().map(|&(s, _, k)| (s, k)).collect()
    }
}

/// Prints how the allocator's slack per size class changed from `earlier` to `later`, in
/// KiB, largest first (the size classes whose slabs are kept by few live objects).
fn print_slack(title: &str, earlier: &SizeClasses, later: &SizeClasses) {
    println!("{title}");
    let before = earlier.slack();
    let mut rows: Vec<(u64, i64)> = later
        .slack()
        .into_iter()
        .map(|(size, k)| (size, k as i64 - before.iter().find(|(s, _)| *s == size).map_or(0, |(_, b)| *b as i64)))
        .filter(|(_, d)| d.abs() >= 16 * 1024)
        .collect();
    rows.sort_by_key(|(_, d)| -d);
    let total: i64 = rows.iter().map(|(_, d)| d).sum();
    for (size, d) in rows.iter().take(10) {
        println!("  {size:>7} B: {:>8.0} KiB", *d as f64 / 1024.0);
    }
    println!("  total {:.1} MiB", total as f64 / 1048576.0);
}
