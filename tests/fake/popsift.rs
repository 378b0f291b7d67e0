//! Runs popsift in-process on a free loopback port, in front of a given upstream.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use popsift::cli::ServeArgs;
use popsift::config::{Config, ConfigFile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub struct Proxy {
    pub addr: String,
    pub dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// `extra` is appended to the generated YAML config (top-level keys).
pub async fn start(upstream: &str, rules_yaml: &str, extra: &str) -> Proxy {
    start_with_tls(upstream, "none", rules_yaml, extra).await
}

/// Like [`start`], with `upstream_tls` set to `tls` (`none`, `starttls`, `implicit`).
pub async fn start_with_tls(upstream: &str, tls: &str, rules_yaml: &str, extra: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/test.yaml"), rules_yaml).unwrap();
    let yaml = format!(
        "listeners:\n  - listen: 127.0.0.1:0\n    upstream: {upstream}\n    upstream_tls: {tls}\nmetrics: 'off'\nrules: {}\nstate_dir: {}\n{extra}",
        dir.path().join("rules").display(),
        dir.path().join("state").display()
    );
    let file = ConfigFile::parse(&yaml, Path::new("test.yaml")).unwrap();
    let config = Arc::new(Config::build(file, &ServeArgs::default()).unwrap());
    let (stop, rx) = watch::channel(false);
    let running = popsift::cmd::serve::start(config, rx).await.unwrap();
    let addr = running.addrs[0].to_string();
    Proxy { addr, dir, stop }
}

/// A raw POP3 client that reads exactly what the server sends.
pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: &str) -> (Client, String) {
        let sock = TcpStream::connect(addr).await.unwrap();
        let mut c = Client { sock, buf: Vec::new() };
        let greeting = c.line().await;
        (c, greeting)
    }

    async fn fill(&mut self) -> bool {
        self.buf.reserve(65536);
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), self.sock.read_buf(&mut self.buf))
            .await
            .expect("server reply timed out")
            .unwrap_or(0);
        n > 0
    }

    /// One line without CRLF; "" at EOF.
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..p]).into_owned();
                self.buf.drain(..p + 2);
                return l;
            }
            if !self.fill().await {
                return String::new();
            }
        }
    }

    /// One line if it arrives within `d`, else `None` (nothing is lost: a partial read stays
    /// buffered for the next call).
    pub async fn line_within(&mut self, d: std::time::Duration) -> Option<String> {
        tokio::time::timeout(d, self.line()).await.ok()
    }

    /// The raw body of a multi-line reply up to and including the terminator line.
    pub async fn body(&mut self) -> Vec<u8> {
        let mut s = popsift::pop3::BodyScanner::new();
        let mut pos = 0;
        loop {
            if let Some(n) = s.feed(&self.buf[pos..]) {
                let body: Vec<u8> = self.buf.drain(..pos + n).collect();
                return body;
            }
            pos = self.buf.len();
            if !self.fill().await {
                panic!("connection closed inside a multi-line reply: {:?}", String::from_utf8_lossy(&self.buf));
            }
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.sock.write_all(text.as_bytes()).await.unwrap();
    }

    pub async fn cmd(&mut self, c: &str) -> String {
        self.send(&format!("{c}\r\n")).await;
        self.line().await
    }

    /// Sends a multi-line command; returns the status line and (on +OK) the body.
    pub async fn multi(&mut self, c: &str) -> (String, Vec<u8>) {
        let status = self.cmd(c).await;
        if status.starts_with("+OK") {
            (status, self.body().await)
        } else {
            (status, Vec::new())
        }
    }

    /// Reads until EOF, returning what arrived.
    pub async fn rest(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }
}
