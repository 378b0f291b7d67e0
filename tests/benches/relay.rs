//! Relay overhead (issue 2, "Performance"): the same Dovecot mailbox downloaded directly and
//! through popsift, one command at a time and pipelined, side by side in one run.
//!
//! Run with `cargo bench --bench relay` (a plain release build of popsift, built by the
//! bench with `cargo build --release`: see `plain_build.rs`). Mailboxes: `small` = 2,000 ×
//! 10 KB, `large` = 20 × 5 MB, delivered once into one Dovecot. popsift runs with
//! `rules: []` (nothing to evaluate, so this measures the relay itself) and `--log-level info`.
//! Only the download is timed (the RETRs of every message until the last terminator), not the
//! login scan, which has its own subsection in README ("Login scan latency"). Each measurement
//! is repeated (`POPSIFT_BENCH_REPS`, default 7) after one warm-up; the median is reported with
//! the ratio popsift / direct. Target: ≤ 1.2×. Every time ratio is paired: each round downloads
//! once through every peer (in an order that rotates), and the ratio printed is the median
//! over the rounds of that round's ratio, so a load that drifts between rounds (this machine's wall times
//! scatter by ±30 % from one minute to the next) moves both sides of a ratio alike.
//!
//! Peers measured in the same run, interleaved with direct and popsift (issue 16): a plain
//! byte pump (two threads per connection) and HAProxy in TCP mode (Debian `haproxy`, from a
//! generated config, the bench panics when it is missing) and the tokio copy: a relay on
//! popsift's own runtime with no protocol work (`copy_bidirectional`, a process of its own:
//! this bench's binary started again, see `tokio_copy`). Issue 16's target: popsift ≤
//! 1.10× direct and ≤ HAProxy + 5 % in all four cells. Under each row: the tokio copy's
//! figures, and 95 % intervals of the paired ratios (`paired_interval`): what this run can
//! tell apart from noise.
//!
//! `POPSIFT_BENCH_BASELINE=PATH` adds another popsift binary (an earlier build) to the same
//! rotation and prints its median and popsift / baseline under each row (time and CPU).
//! `POPSIFT_BENCH_BIN=PATH` measures that build as "popsift" instead of the plain release build.
//!
//! CPU columns (issue 16): the CPU time popsift and HAProxy used per download (all threads,
//! from `/proc/PID/task/*/schedstat`, so the 10 ms ticks of `/proc/PID/stat` do not limit it),
//! popsift / HAProxy, and each one's user-space share (utime / (utime + stime), summed over
//! the runs). CPU time is what a loaded machine distorts least: compare those columns when
//! the wall times scatter. Each download starts once popsift's CPU has settled after the
//! login (its decision history is written in the background after the `+OK`).
//!
//! Not criterion: the thing measured is a pair of external processes and the figure wanted is
//! a ratio of two medians printed side by side, which a plain `main` does with less machinery.
#[path = "plain_build.rs"]
mod plain_build;
#[path = "proc_cpu.rs"]
mod proc_cpu;
#[path = "../support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// One POP3 connection reading replies byte-exact out of a large buffer.
struct Pop {
    sock: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Pop {
    fn connect(addr: &str) -> Pop {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).expect("nodelay");
        sock.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        let mut p = Pop { sock, buf: vec![0; 1 << 20], start: 0, end: 0 };
        let g = p.line();
        assert!(g.starts_with(b"+OK"), "greeting {:?}", String::from_utf8_lossy(&g));
        p
    }

    fn fill(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self.sock.read(&mut self.buf[self.end..]).expect("read");
        assert!(n > 0, "server closed the connection");
        self.end += n;
    }

    fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(p) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let l = self.buf[self.start..self.start + p + 1].to_vec();
                self.start += p + 1;
                return l;
            }
            self.fill();
        }
    }

    /// Reads one multi-line reply (status line + body + terminator); returns its body octets.
    fn multiline(&mut self) -> usize {
        let status = self.line();
        assert!(status.starts_with(b"+OK"), "{:?}", String::from_utf8_lossy(&status));
        // The body starts at a line start; the terminator is "\r\n.\r\n" or a first line ".\r\n".
        // `scanned` is relative to the body start (fill may move the buffer's contents).
        let mut scanned = 0usize;
        loop {
            let region = &self.buf[self.start..self.end];
            if region.starts_with(b".\r\n") {
                self.start += 3;
                return 0;
            }
            let from = scanned.saturating_sub(4);
            if let Some(p) = memchr::memmem::find(&region[from..], b"\r\n.\r\n") {
                let len = from + p + 2;
                self.start += len + 3;
                return len;
            }
            scanned = region.len();
            self.fill();
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write");
    }

    fn command(&mut self, c: &str) -> Vec<u8> {
        self.send(format!("{c}\r\n").as_bytes());
        self.line()
    }

    fn login(addr: &str, user: &str, pass: &str) -> (Pop, usize) {
        let mut p = Pop::connect(addr);
        assert!(p.command(&format!("USER {user}")).starts_with(b"+OK"));
        assert!(p.command(&format!("PASS {pass}")).starts_with(b"+OK"));
        let stat = String::from_utf8(p.command("STAT")).expect("utf8");
        let n = stat.split(' ').nth(1).and_then(|n| n.parse().ok()).expect("STAT count");
        (p, n)
    }

    fn quit(mut self) {
        assert!(self.command("QUIT").starts_with(b"+OK"));
    }
}

/// A relay peer run as its own process (HAProxy, the tokio copy), killed on drop.
struct PeerProcess {
    addr: String,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl PeerProcess {
    /// Spawns `cmd` (which listens on `addr`) and waits until a probe connection through it
    /// is answered by Dovecot's greeting.
    fn spawn(mut cmd: Command, addr: String, name: &str, dir: Option<tempfile::TempDir>) -> PeerProcess {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(&addr) {
                s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                let mut b = [0u8; 3];
                if s.read_exact(&mut b).is_ok() && &b == b"+OK" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "{name} did not start listening on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        PeerProcess { addr, child, _dir: dir }
    }

    /// HAProxy in TCP mode in front of `upstream`, from a generated config in a temp dir.
    fn haproxy(upstream: &str) -> PeerProcess {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy is not installed (Debian package `haproxy`, see .ci/run)");
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = format!("127.0.0.1:{}", free_port());
        // TCP mode, nothing else: the plainest relay HAProxy does.
        let cfg = format!(
            "global\n    maxconn 1024\n\ndefaults\n    mode tcp\n    timeout connect 10s\n    timeout client 300s\n    timeout server 300s\n\nlisten pop3\n    bind {addr}\n    server dovecot {upstream}\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let mut cmd = Command::new(bin);
        cmd.arg("-f").arg(&path).arg("-db");
        PeerProcess::spawn(cmd, addr, "haproxy", Some(dir))
    }

    /// The tokio copy (see [`tokio_copy`]): this bench's own binary, started again in that role.
    fn tokio_copy(upstream: &str) -> PeerProcess {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(std::env::current_exe().expect("the bench's own path"));
        cmd.env(TOKIO_COPY, format!("{addr} {upstream}"));
        PeerProcess::spawn(cmd, addr, "the tokio copy", None)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Set (to "LISTEN UPSTREAM") when the bench's binary is started as the tokio copy.
const TOKIO_COPY: &str = "POPSIFT_BENCH_TOKIO_COPY";

/// The tokio copy: what a relay built on popsift's runtime pays for the hop with no protocol
/// work at all (issue 16), so the latency-bound cells have a floor measured in the same run.
/// A process of its own like popsift (the pump's threads share the bench client's process);
/// tokio's multi-threaded runtime as popsift runs it (a worker per core), per connection
/// `copy_bidirectional` with 64 KiB buffers (popsift's read chunk) and `TCP_NODELAY`.
fn tokio_copy(spec: &str) {
    let (listen, upstream) = spec.split_once(' ').expect("LISTEN UPSTREAM");
    let (listen, upstream) = (listen.to_string(), upstream.to_string());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, 64 << 10, 64 << 10).await;
            });
        }
    });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pattern {
    OneAtATime,
    Pipelined,
}

/// CPU a proxy process used during one download: all threads' on-CPU time (schedstat, ns)
/// and the user / system split (`/proc/PID/stat`, 10 ms ticks: meaningful summed over runs).
#[derive(Clone, Copy, Default)]
struct Cpu {
    total: Duration,
    user_ticks: u64,
    sys_ticks: u64,
}

impl Cpu {
    fn of(pid: u32) -> Cpu {
        let (user_ticks, sys_ticks) = proc_cpu::user_sys_ticks(pid);
        Cpu { total: proc_cpu::cpu(pid), user_ticks, sys_ticks }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            total: self.total.saturating_sub(before.total),
            user_ticks: self.user_ticks.saturating_sub(before.user_ticks),
            sys_ticks: self.sys_ticks.saturating_sub(before.sys_ticks),
        }
    }

    fn add(&mut self, o: Cpu) {
        self.total += o.total;
        self.user_ticks += o.user_ticks;
        self.sys_ticks += o.sys_ticks;
    }

    /// The user-space part of the CPU time (the total split by the ticks' user share), in ms
    /// per run.
    fn user_ms(&self, reps: usize) -> f64 {
        let all = self.user_ticks + self.sys_ticks;
        if all == 0 {
            return 0.0;
        }
        self.total.as_secs_f64() * 1e3 * self.user_ticks as f64 / all as f64 / reps as f64
    }

    /// The user-space share of the CPU time, in percent.
    fn user_percent(&self) -> String {
        let all = self.user_ticks + self.sys_ticks;
        if all == 0 {
            return "-".to_string();
        }
        format!("{}%", self.user_ticks * 100 / all)
    }
}

/// Downloads every message; returns (download time, octets, CPU the process `cpu_of` used
/// during the download).
fn download(addr: &str, user: &str, pass: &str, pattern: Pattern, cpu_of: Option<u32>) -> (Duration, usize, Cpu) {
    let (mut p, n) = Pop::login(addr, user, pass);
    // The login's background work (popsift's decision history writes its 2,000 records
    // after the `+OK`) ends before the clock starts: it is no part of the relay's cost.
    let cpu_before = cpu_of.map(|pid| {
        proc_cpu::settled_cpu(pid);
        Cpu::of(pid)
    });
    let started = Instant::now();
    let mut octets = 0;
    match pattern {
        Pattern::OneAtATime => {
            for i in 1..=n {
                p.send(format!("RETR {i}\r\n").as_bytes());
                octets += p.multiline();
            }
        }
        Pattern::Pipelined => {
            let cmds: String = (1..=n).map(|i| format!("RETR {i}\r\n")).collect();
            // Writing all commands while the replies pile up could deadlock for huge command
            // lists; here they are at most ~20 KB, far below the socket buffers.
            p.send(cmds.as_bytes());
            for _ in 0..n {
                octets += p.multiline();
            }
        }
    }
    let t = started.elapsed();
    let cpu = match (cpu_of, cpu_before) {
        (Some(pid), Some(before)) => Cpu::of(pid).since(before),
        _ => Cpu::default(),
    };
    p.quit();
    (t, octets, cpu)
}

/// The per-round ratios `a[i] / b[i]` (both measured in round `i`), sorted.
fn round_ratios(a: &[Duration], b: &[Duration]) -> Vec<f64> {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.as_secs_f64() / b.as_secs_f64()).collect();
    r.sort_by(f64::total_cmp);
    r
}

/// The median over the rounds of `a[i] / b[i]`.
fn paired_ratio(a: &[Duration], b: &[Duration]) -> f64 {
    let r = round_ratios(a, b);
    r[r.len() / 2]
}

/// A 95 % confidence interval of that median, from the order statistics of the rounds'
/// ratios (distribution-free: ranks n/2 ∓ 0.98·√n, the binomial's normal approximation).
/// What a run can tell apart (issue 16): two builds of the same code (the baseline) differ
/// by as much as this on this machine, so a target within it is not decided by one run.
fn paired_interval(a: &[Duration], b: &[Duration]) -> (f64, f64) {
    let r = round_ratios(a, b);
    let n = r.len() as f64;
    let k = ((n - 1.96 * n.sqrt()) / 2.0).floor().max(1.0) as usize;
    (r[k - 1], r[r.len() - k])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn body(size: usize, seed: u64) -> String {
    let mut x = seed;
    let mut out = String::with_capacity(size + 100);
    while out.len() < size {
        for _ in 0..76 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 58) as usize] as char);
        }
        out.push_str("\r\n");
    }
    out
}

fn message(i: usize, size: usize) -> Vec<u8> {
    format!(
        "From: Bench <bench@example.net>\r\nTo: alice@example.org\r\nSubject: bench message {i}\r\nMessage-ID: <bench-{i}@popsift.test>\r\n\r\n{}",
        body(size, i as u64)
    )
    .into_bytes()
}

/// Positions in a row's list of peers (direct, popsift, pump, HAProxy, tokio copy, baseline).
const DIRECT: usize = 0;
const POPSIFT: usize = 1;
const PUMP: usize = 2;
const HAPROXY: usize = 3;
const TOKIO: usize = 4;
const BASELINE: usize = 5;

fn main() {
    if let Ok(spec) = std::env::var(TOKIO_COPY) {
        return tokio_copy(&spec);
    }
    // `cargo bench --bench relay -- FILTER`: run only the rows whose "user pattern" contains
    // FILTER (e.g. `small`, `large pipelined`); `cargo bench` itself adds `--bench`.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let reps: usize = std::env::var("POPSIFT_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let users = vec![("small".to_string(), "small-pw".to_string()), ("large".to_string(), "large-pw".to_string())];
    let d = Dovecot::start(DovecotOptions { lock_session: false, users });
    for i in 0..2000 {
        d.deliver("small", &format!("{}.bench-small", 100_000 + i), &message(i, 10 * 1024));
    }
    for i in 0..20 {
        d.deliver("large", &format!("{}.bench-large", 100_000 + i), &message(i, 5 * 1024 * 1024));
    }
    // `POPSIFT_BENCH_BIN=PATH`: measure that build instead of the plain release build.
    let bin = plain_build::popsift("POPSIFT_BENCH_BIN");
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        tls: "none",
        rules: "rules: []\n",
        log_level: "info",
        bin: Some(&bin),
        ..Default::default()
    });
    // A byte pump that understands nothing (support::Forwarder: two blocking threads per
    // connection, 64 KiB buffers, TCP_NODELAY), in the bench's own process (its threads share
    // the client's); the tokio copy is the same floor for a relay on popsift's runtime, in a
    // process of its own.
    let pump = Forwarder::start(&d.pop3_addr());
    let haproxy = PeerProcess::haproxy(&d.pop3_addr());
    let tokio_copy = PeerProcess::tokio_copy(&d.pop3_addr());
    // An earlier popsift build as a baseline in the same run (`POPSIFT_BENCH_BASELINE=PATH`):
    // "no worse than before" measured under the same load, not across runs.
    let baseline_bin = std::env::var("POPSIFT_BENCH_BASELINE").ok();
    let baseline = baseline_bin.as_deref().map(|bin| {
        Popsift::start(&ProxyOpts {
            upstream: &d.pop3_addr(),
            tls: "none",
            rules: "rules: []\n",
            log_level: "info",
            bin: Some(bin),
            ..Default::default()
        })
    });
    println!("relay benchmark: median of {reps} runs after 1 warm-up; download only (login scan excluded)");
    println!("popsift: {} (rules: []), pid {}", bin, p.pid());
    println!();
    let head = [
        "mailbox", "pattern", "direct", "popsift", "pump", "haproxy", "popsift", "pump", "haproxy", "popsift", "MB/s",
        "CPU", "CPU", "CPU", "user", "user",
    ];
    let row = |c: [&str; 16]| {
        println!(
            "{:<14} {:<14} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]
        )
    };
    row(head);
    row([
        "", "", "ms", "ms", "ms", "ms", "/direct", "/direct", "/direct", "/haproxy", "popsift", "popsift", "haproxy",
        "/haproxy", "popsift", "haproxy",
    ]);
    row(["", "", "", "", "", "", "", "", "", "", "", "ms/run", "ms/run", "", "", ""]);
    for (user, label) in [("small", "2000 x 10 KB"), ("large", "20 x 5 MB")] {
        let pass = d.password(user).to_string();
        for pattern in [Pattern::OneAtATime, Pattern::Pipelined] {
            let name = if pattern == Pattern::OneAtATime { "one at a time" } else { "pipelined" };
            if filter.as_ref().is_some_and(|f| !format!("{user} {name}").contains(f.as_str())) {
                continue;
            }
            let mut octets = 0;
            // Who downloads: address, the process whose CPU is counted, name in messages.
            let mut peers = vec![
                (d.pop3_addr(), None, "direct"),
                (p.addr.clone(), Some(p.pid()), "popsift"),
                (pump.addr.clone(), None, "the pump"),
                (haproxy.addr.clone(), Some(haproxy.pid()), "haproxy"),
                (tokio_copy.addr.clone(), Some(tokio_copy.pid()), "the tokio copy"),
            ];
            if let Some(b) = &baseline {
                peers.push((b.addr.clone(), Some(b.pid()), "the baseline"));
            }
            // Warm-up (Dovecot builds its index and caches).
            for (addr, _, _) in &peers {
                let _ = download(addr, user, &pass, pattern, None);
            }
            // Per peer its download times and the CPU (all threads, from schedstat) its
            // process used per download.
            let mut times = vec![Vec::new(); peers.len()];
            let mut cpus = vec![Cpu::default(); peers.len()];
            for round in 0..reps {
                let mut sizes = Vec::new();
                // The order within a round rotates from round to round (issue 16): whoever
                // runs first after another's session ends (Dovecot's index writes, the
                // previous proxy's teardown) is not always the same one.
                for i in (0..peers.len()).cycle().skip(round % peers.len()).take(peers.len()) {
                    let (addr, pid, name) = &peers[i];
                    let (t, o, c) = download(addr, user, &pass, pattern, *pid);
                    times[i].push(t);
                    cpus[i].add(c);
                    if i == POPSIFT {
                        octets = o;
                    }
                    sizes.push((*name, o));
                }
                for (who, o) in &sizes {
                    assert_eq!(*o, sizes[0].1, "{who} delivered a different number of octets than {}", sizes[0].0);
                }
            }
            let (cpu, cpu_haproxy) = (cpus[POPSIFT], cpus[HAPROXY]);
            // Time ratios are paired: the median over the rounds of each round's ratio (the
            // two downloads ran in the same round, under the same load), not a ratio of medians.
            let paired = |a: usize, b: usize| format!("{:.2}x", paired_ratio(&times[a], &times[b]));
            let (r_vd, r_pd, r_hd, r_vh) =
                (paired(POPSIFT, DIRECT), paired(PUMP, DIRECT), paired(HAPROXY, DIRECT), paired(POPSIFT, HAPROXY));
            let r_vb = times.get(BASELINE).map(|_| (paired(BASELINE, DIRECT), paired(POPSIFT, BASELINE)));
            let (r_td, r_vt) = (paired(TOKIO, DIRECT), paired(POPSIFT, TOKIO));
            let interval = |a: usize, b: usize| {
                let (lo, hi) = paired_interval(&times[a], &times[b]);
                format!("{lo:.2}–{hi:.2}")
            };
            let mut intervals = vec![
                format!("popsift / direct {}", interval(POPSIFT, DIRECT)),
                format!("popsift / haproxy {}", interval(POPSIFT, HAPROXY)),
                format!("haproxy / direct {}", interval(HAPROXY, DIRECT)),
                format!("popsift / tokio copy {}", interval(POPSIFT, TOKIO)),
            ];
            if times.get(BASELINE).is_some() {
                intervals.push(format!("popsift / baseline {}", interval(POPSIFT, BASELINE)));
            }
            let medians: Vec<Duration> = times.into_iter().map(median).collect();
            let (md, mv, mp, mh) = (medians[DIRECT], medians[POPSIFT], medians[PUMP], medians[HAPROXY]);
            let based = medians.get(BASELINE).copied();
            let ms = |t: Duration| format!("{:.1}", t.as_secs_f64() * 1e3);
            let ratio = |a: Duration, b: Duration| format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64());
            let cpu_ms = |c: Cpu| format!("{:.1}", c.total.as_secs_f64() * 1e3 / reps as f64);
            row([
                label,
                name,
                &ms(md),
                &ms(mv),
                &ms(mp),
                &ms(mh),
                &r_vd,
                &r_pd,
                &r_hd,
                &r_vh,
                &format!("{:.0}", octets as f64 / 1e6 / mv.as_secs_f64()),
                &cpu_ms(cpu),
                &cpu_ms(cpu_haproxy),
                &ratio(cpu.total, cpu_haproxy.total),
                &cpu.user_percent(),
                &cpu_haproxy.user_percent(),
            ]);
            let cpu_tokio = cpus[TOKIO];
            println!(
                "{:<14} {:<14} {:>9} tokio copy {} ms = {} direct, popsift / tokio copy = {}; tokio copy CPU {} ms/run, popsift / tokio copy CPU = {}",
                "",
                "",
                "",
                ms(medians[TOKIO]),
                r_td,
                r_vt,
                cpu_ms(cpu_tokio),
                ratio(cpu.total, cpu_tokio.total)
            );
            println!("{:<14} {:<14} {:>9} 95 % intervals: {}", "", "", "", intervals.join(", "));
            if let (Some(mb), Some((r_bd, r_vb))) = (based, r_vb) {
                let cpu_based = cpus[BASELINE];
                println!(
                    "{:<14} {:<14} {:>9} baseline {} ms = {}, popsift / baseline = {}; baseline CPU {} ms/run, popsift / baseline CPU = {}",
                    "",
                    "",
                    "",
                    ms(mb),
                    r_bd,
                    r_vb,
                    cpu_ms(cpu_based),
                    ratio(cpu.total, cpu_based.total)
                );
                // User space is where the two builds differ most (issue 16); its share comes
                // from 10 ms ticks, so it is rough for short runs.
                let (uv, ub) = (cpu.user_ms(reps), cpu_based.user_ms(reps));
                println!(
                    "{:<14} {:<14} {:>9} user-space CPU popsift {uv:.1} ms/run, baseline {ub:.1} ms/run, popsift / baseline = {:.2}x",
                    "",
                    "",
                    "",
                    uv / ub.max(f64::MIN_POSITIVE)
                );
            }
        }
    }
}
