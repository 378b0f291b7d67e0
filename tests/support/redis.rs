//! A real `redis-server` (Debian `redis-server` 7.0) for the shared-store tests: its own temp
//! dir, a free loopback port, AOF on (`appendfsync always` unless told otherwise), no RDB
//! snapshots. [`RedisServer::stop`] / [`RedisServer::start_again`] take it down and bring it
//! back on the same port and data (for "Redis stopped mid-run"). Drop stops it.
//!
//! Panics when `redis-server` is missing: CI must fail, not skip (`.ci/run` installs it).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, require_program};

pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    fsync: &'static str,
    /// A config file given first on the command line (`deploy/redis/popsift-redis.conf`);
    /// the durability flags are then not passed, so the file's settings apply.
    conf: Option<std::path::PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// AOF with `appendfsync always`: durable, so the quarantine may use it.
    pub fn start() -> RedisServer {
        RedisServer::start_with("always")
    }

    /// AOF with the given `appendfsync` (`always`, `everysec`, `no`).
    pub fn start_with(fsync: &'static str) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = RedisServer { port: free_port(), dir, fsync, conf: None, child: None };
        r.start_again();
        r
    }

    /// With a config file (its `appendonly`/`appendfsync`/`save` apply); port, bind address
    /// and directory are still the test's.
    pub fn start_with_conf(conf: &Path) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut r = RedisServer { port: free_port(), dir, fsync: "", conf: Some(conf.to_path_buf()), child: None };
        r.start_again();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The `store:` block of a popsift config using this server.
    pub fn store_yaml(&self, prefix: &str) -> String {
        format!(
            "store:\n  backend: redis\n  redis:\n    url: {}\n    key_prefix: {prefix}\n    connect_timeout: 500ms\n    command_timeout: 500ms\n",
            self.url()
        )
    }

    /// Starts (or restarts) the server on the same port and directory; waits for `PING`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let bin = require_program("redis-server", "redis-server");
        let log =
            std::fs::File::create(self.dir.path().join(format!("redis-{}.log", Instant::now().elapsed().as_nanos())))
                .expect("redis log file");
        let mut cmd = Command::new(bin);
        if let Some(conf) = &self.conf {
            cmd.arg(conf);
        }
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(self.dir.path());
        if self.conf.is_none() {
            cmd.args(["--appendonly", "yes", "--appendfsync", self.fsync, "--save", ""]);
        }
        let child = cmd
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "redis-server on {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (SIGKILL: like a crash; the AOF with `always` holds every reply it
    /// gave) and waits until the port refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends one command (RESP array of bulk strings) on a fresh connection and returns the
    /// first reply line (without CRLF), or `None` when the server is not reachable. Enough
    /// for `PING`, `CONFIG SET`, `DBSIZE`, `INFO` (the caller reads bulk replies with
    /// [`RedisServer::bulk`]).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let raw = self.raw(args)?;
        let end = raw.windows(2).position(|w| w == b"\r\n")?;
        Some(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    /// The body of a bulk-string reply (e.g. `INFO commandstats`).
    pub fn bulk(&self, args: &[&str]) -> Option<String> {
        let raw = self.raw(args)?;
        let end = raw.windows(2).position(|w| w == b"\r\n")?;
        if raw.first() != Some(&b'$') {
            return None;
        }
        Some(String::from_utf8_lossy(&raw[end + 2..]).trim_end().to_string())
    }

    fn raw(&self, args: &[&str]) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        // Read until the reply is complete: a line, or a bulk string of the announced length.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return if buf.is_empty() { None } else { Some(buf) };
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                if buf[0] == b'$' {
                    let len: i64 = std::str::from_utf8(&buf[1..end]).ok()?.parse().ok()?;
                    if len < 0 || buf.len() >= end + 2 + len as usize + 2 {
                        return Some(buf);
                    }
                } else if buf[0] != b'*' {
                    return Some(buf);
                } else {
                    // Arrays: good enough to return what came in one read.
                    return Some(buf);
                }
            }
        }
    }

    /// `calls` of one command in `INFO commandstats` (e.g. `hmget`), 0 when never called.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.bulk(&["INFO", "commandstats"]).unwrap_or_default();
        let key = format!("cmdstat_{}:", command.to_ascii_lowercase());
        info.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|rest| rest.split(',').find_map(|kv| kv.strip_prefix("calls=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Total commands processed (`INFO stats` `total_commands_processed`).
    pub fn total_commands(&self) -> u64 {
        let info = self.bulk(&["INFO", "stats"]).unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
