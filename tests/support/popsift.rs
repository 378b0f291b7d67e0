//! Runs the real `popsift` binary (built by cargo for the integration tests) in front of an
//! upstream, from a generated config in a temp dir, on a free loopback port. Its stderr (the
//! log) goes to a file the test can read. Drop kills it.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct Popsift {
    pub addr: String,
    pub metrics_addr: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Child,
    argv: Vec<String>,
    bin: String,
}

fn spawn(bin: &str, dir: &Path, argv: &[String]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("popsift.log")).unwrap();
    Command::new(bin)
        .args(argv)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn popsift")
}

/// How popsift reaches its upstream.
pub struct ProxyOpts<'a> {
    pub upstream: &'a str,
    /// `none`, `starttls` or `implicit`.
    pub tls: &'a str,
    pub ca: Option<&'a Path>,
    /// Rule file contents (written to `rules/test.yaml`).
    pub rules: &'a str,
    /// Extra top-level YAML config lines.
    pub extra: &'a str,
    /// Extra command-line arguments after `serve`.
    pub args: &'a [&'a str],
    /// `--log-level` (default `debug`; benchmarks use `info` so logging costs nothing per
    /// command).
    pub log_level: &'a str,
    /// Extra keys of the listener (network edge: `tls`, `proxy_protocol`, …), each line
    /// indented by four spaces.
    pub listener: &'a str,
    /// The listener's host (default `127.0.0.1`; `[::1]` for IPv6).
    pub listen_host: &'a str,
    /// Another popsift binary to run (benchmarks: an earlier build as the baseline).
    pub bin: Option<&'a str>,
}

impl Default for ProxyOpts<'_> {
    fn default() -> Self {
        ProxyOpts {
            upstream: "",
            tls: "none",
            ca: None,
            rules: "rules: []\n",
            extra: "",
            args: &[],
            log_level: "debug",
            listener: "",
            listen_host: "127.0.0.1",
            bin: None,
        }
    }
}

impl Popsift {
    pub fn start(o: &ProxyOpts) -> Popsift {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = dir.path().join("rules");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(rules.join("test.yaml"), o.rules).unwrap();
        let port = free_port();
        let metrics_port = free_port();
        let ca = o.ca.map(|c| format!("    upstream_ca: {}\n", c.display())).unwrap_or_default();
        let config = format!(
            "listeners:\n  - listen: '{}:{port}'\n    upstream: {}\n    upstream_tls: {}\n{ca}{}rules: {}\nstate_dir: {}\nmetrics: 127.0.0.1:{metrics_port}\n{}",
            o.listen_host,
            o.upstream,
            o.tls,
            o.listener,
            rules.display(),
            dir.path().join("state").display(),
            o.extra
        );
        let config_path = dir.path().join("popsift.yaml");
        std::fs::write(&config_path, config).unwrap();
        let argv: Vec<String> = ["--log-level", o.log_level, "serve", "--config"]
            .iter()
            .map(|s| s.to_string())
            .chain(std::iter::once(config_path.display().to_string()))
            .chain(o.args.iter().map(|s| s.to_string()))
            .collect();
        let bin = o.bin.unwrap_or(env!("CARGO_BIN_EXE_popsift")).to_string();
        let child = spawn(&bin, dir.path(), &argv);
        let p = Popsift {
            addr: format!("{}:{port}", o.listen_host),
            metrics_addr: format!("127.0.0.1:{metrics_port}"),
            dir,
            config_path,
            child,
            argv,
            bin,
        };
        p.wait_ready();
        p
    }

    /// Kills the process (SIGKILL) if it still runs, then starts it again with the same
    /// config, ports and state directory; the log file is appended to.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let before = self.listening_lines();
        self.child = spawn(&self.bin, self.dir.path(), &self.argv);
        self.wait_listening(before + 1);
    }

    fn wait_ready(&self) {
        self.wait_listening(1);
    }

    fn listening_lines(&self) -> usize {
        self.log().lines().filter(|l| l.contains("listening") && l.contains(&self.addr)).count()
    }

    /// Waits until the log holds `n` "listening" lines for our address (the log is appended
    /// to across restarts, so a restart waits for one more than before).
    fn wait_listening(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // Wait for the "listening" log line rather than probing the port: a probe connection
        // would be a session of its own (an upstream connect, counted in the metrics).
        while Instant::now() < deadline {
            if self.listening_lines() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("popsift did not start listening on {}; log:\n{}", self.addr, self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("popsift.log")).unwrap_or_default()
    }

    /// How many "session finished" summary lines the log holds (one per ended session).
    pub fn sessions_finished(&self) -> usize {
        self.log().matches("session finished").count()
    }

    /// Waits (bounded) until `n` sessions have logged their summary line: everything those
    /// sessions were going to do upstream (QUIT, DELE) is done.
    pub fn wait_sessions_finished(&self, n: usize) {
        let what = format!("{n} \"session finished\" log line(s) on {}", self.addr);
        super::wait::wait_until(Duration::from_secs(30), &what, || self.sessions_finished() >= n);
    }

    /// Waits (bounded) until the log contains `text`.
    pub fn wait_log(&self, text: &str) {
        super::wait::wait_until(Duration::from_secs(30), &format!("{text:?} in the log"), || self.log().contains(text));
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (e.g. "HUP", "KILL", "TERM").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status();
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                panic!("popsift did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The body of `GET /metrics`.
    pub fn scrape(&self) -> String {
        let out = self.get("/metrics").expect("metrics endpoint");
        match out.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_string(),
            None => out,
        }
    }

    /// The value of `series` in `GET /metrics` (see [`metric_in`]).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_in(&self.scrape(), series)
    }

    /// Waits (bounded, 60 s) until `series` is at least `at_least` (absent counts as 0).
    pub async fn wait_metric(&self, series: &str, at_least: f64) {
        let what = format!("{series} to reach {at_least}");
        let reached = || self.metric(series).unwrap_or(0.0) >= at_least;
        super::wait::wait_until_async(Duration::from_secs(60), &what, reached).await;
    }

    /// jemalloc's statistics (`GET /debug/allocator`, JSON); `None` when not served.
    pub fn allocator_json(&self) -> Option<serde_json::Value> {
        let out = self.get("/debug/allocator")?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(body).ok()
    }

    /// `GET path` on the metrics port: the whole response, head and body.
    fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.metrics_addr).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }
}

impl Drop for Popsift {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` in a Prometheus exposition: one series written whole
/// (`name{label="v"}`), or for a bare name the sum of all its series (with any labels);
/// `None` when absent. The tests' one reader of the exposition.
pub fn metric_in(exposition: &str, series: &str) -> Option<f64> {
    let bare = !series.contains('{');
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        if name == series || (bare && name.split('{').next() == Some(series)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}
