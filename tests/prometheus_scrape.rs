//! A real Prometheus scrapes popsift: start the metrics endpoint on a free loopback port,
//! start `prometheus` (Debian package `prometheus`) with a 1 s scrape interval, the shipped
//! `deploy/alerts.yml` and a private TSDB directory, then ask its HTTP API that
//!
//! - the target is up and the recorded values arrived unchanged,
//! - every alert rule loaded and evaluates without error against real data,
//! - every dashboard query runs without error (runtime errors such as many-to-many matching
//!   only show up here, not in `promtool check`).
//!
//! A missing `prometheus` binary fails the test: it is a CI dependency, not an option.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use popsift::metrics::{self, Direction, SessionResult};
use serde_json::Value;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Kills the Prometheus process when the test ends, however it ends.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` on Prometheus' API and parse the JSON body; None while it is not up yet.
fn api(addr: SocketAddr, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    serde_json::from_str(&body).ok()
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn query(addr: SocketAddr, q: &str) -> Value {
    let v = api(addr, &format!("/api/v1/query?query={}", percent_encode(q)))
        .unwrap_or_else(|| panic!("no answer from Prometheus for {q}"));
    assert_eq!(v["status"], "success", "query {q} failed: {v}");
    v["data"].clone()
}

/// The single value of an instant-vector query, or None if the vector is empty.
fn scalar(addr: SocketAddr, q: &str) -> Option<f64> {
    let data = query(addr, q);
    let result = data["result"].as_array()?;
    assert!(result.len() <= 1, "{q}: {result:?}");
    result.first()?["value"][1].as_str()?.parse().ok()
}

fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn real_prometheus_scrapes_popsift_and_runs_alerts_and_dashboard_queries() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let popsift = free_addr();
    rt.block_on(async { metrics::install(Some(popsift)) }).expect("install metrics");

    // Three sessions, two finished: one stays active while Prometheus scrapes.
    let _open = metrics::ActiveSession::start();
    for _ in 0..2 {
        metrics::ActiveSession::start().finish(SessionResult::Ok);
    }
    metrics::message_verdict("spam", "hide");
    metrics::rule_matched("subject-lottery");
    metrics::scan_duration(0.3);
    metrics::bytes(Direction::ToClient, 4096);
    metrics::upstream_error("timeout");
    metrics::rules_loaded(7);
    metrics::rules_reload(true);

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {alerts}\n\
             scrape_configs:\n  - job_name: popsift\n    static_configs:\n      - targets: [\"{popsift}\"]\n",
            alerts = root.join("deploy/alerts.yml").display(),
        ),
    )
    .unwrap();
    let prom_addr = free_addr();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cannot start `prometheus`: install Debian package `prometheus`; CI needs it");
    let _prometheus = Prometheus(child);

    let deadline = Duration::from_secs(60);
    let log_tail = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    // The target is scraped and healthy.
    let health = wait_for("the popsift target to be scraped", deadline, || {
        let t = api(prom_addr, "/api/v1/targets")?;
        let target = t["data"]["activeTargets"].as_array()?.first()?.clone();
        (target["health"] != "unknown").then_some(target)
    });
    assert_eq!(health["health"], "up", "{health}\n{}", log_tail());

    // The values arrived as recorded. A target reported healthy can precede the moment its
    // first scrape's samples answer queries, so wait for them before comparing.
    let got = |q: &str| scalar(prom_addr, q);
    wait_for("the first scrape's samples to answer queries", deadline, || {
        got(r#"popsift_sessions_total{result="ok"}"#).and(got(r#"up{job="popsift"}"#))
    });
    assert_eq!(got(r#"popsift_sessions_total{result="ok"}"#), Some(2.0));
    assert_eq!(got(r#"popsift_sessions_total{result="client_aborted"}"#), Some(0.0));
    assert_eq!(got("popsift_sessions_active"), Some(1.0));
    assert_eq!(got(r#"popsift_messages_total{verdict="spam",action="hide"}"#), Some(1.0));
    assert_eq!(got(r#"popsift_rule_matches_total{rule="subject-lottery"}"#), Some(1.0));
    assert_eq!(got(r#"popsift_bytes_total{direction="to_client"}"#), Some(4096.0));
    assert_eq!(got(r#"popsift_upstream_errors_total{kind="timeout"}"#), Some(1.0));
    assert_eq!(got("popsift_rules_loaded"), Some(7.0));
    assert_eq!(got("popsift_rules_last_reload_successful"), Some(1.0));
    assert_eq!(got(r#"popsift_scan_duration_seconds_bucket{le="0.5"}"#), Some(1.0));
    assert_eq!(got("popsift_scan_duration_seconds_count"), Some(1.0));
    assert_eq!(got(r#"up{job="popsift"}"#), Some(1.0));
    assert_eq!(got(&format!(r#"popsift_build_info{{version="{}"}}"#, env!("CARGO_PKG_VERSION"))), Some(1.0));

    // Every alert rule loaded and has been evaluated without error.
    let groups = wait_for("every alert rule to be evaluated", deadline, || {
        let r = api(prom_addr, "/api/v1/rules")?;
        let groups = r["data"]["groups"].as_array()?.clone();
        let rules: Vec<Value> =
            groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    });
    let shipped = std::fs::read_to_string(root.join("deploy/alerts.yml")).unwrap();
    assert_eq!(groups.len(), shipped.matches("- alert:").count(), "rules loaded");
    for rule in &groups {
        assert_eq!(rule["health"], "ok", "rule {} failed: {rule}", rule["name"]);
        // Nothing is wrong with this popsift: no alert may fire or even be pending.
        assert_eq!(rule["state"], "inactive", "rule {}: {rule}", rule["name"]);
    }

    // Every dashboard query runs (Grafana variables substituted).
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana-dashboard.json")).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$job", "popsift")
                .replace("$instance", ".*");
            // A query that runs but finds nothing (a misspelt metric or label) is as broken
            // as one that fails: every metric the dashboard shows exists from the first
            // scrape, so every query must return data. Rates need two samples: wait.
            wait_for(&format!("data for dashboard query {expr}"), deadline, || {
                let data = query(prom_addr, &expr);
                let empty = data["result"].as_array().is_some_and(|r| r.is_empty());
                (!empty).then_some(())
            });
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} dashboard queries");
    // The version stat finds this instance through the dashboard's own selector.
    assert_eq!(got(r#"count(popsift_build_info{job=~"popsift",instance=~".*"})"#), Some(1.0));

    drop(rt);
}
