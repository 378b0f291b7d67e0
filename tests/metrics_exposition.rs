//! The real `/metrics` endpoint: install the exporter on a free loopback port, record a known
//! number of events through the public API, scrape over plain TCP (a hand-written HTTP/1.1
//! GET, as Prometheus would send), assert exact values, and let `promtool check metrics` lint
//! the scrape.
//!
//! The global recorder can be installed once per process, so everything lives in one test.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use popsift::metrics::{self, Direction, SessionResult};

fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap()
}

/// GET `path` over a raw socket; returns (status line, headers, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to metrics endpoint {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header/body separator");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let body = if headers.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status.to_owned(), headers.to_owned(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

/// The value of the sample line `series` (name plus labels exactly as rendered).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[track_caller]
fn assert_value(body: &str, series: &str, expected: f64) {
    match value(body, series) {
        Some(v) => assert_eq!(v, expected, "{series}\n--- scrape ---\n{body}"),
        None => panic!("series {series} missing\n--- scrape ---\n{body}"),
    }
}

fn promtool_check_metrics(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian package `prometheus` (CI needs it)");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- scrape ---\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[test]
fn scrape_shows_exact_counts_and_passes_promtool() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let addr = free_port();

    // Before install: recording is a no-op and there is nothing to render.
    drop(metrics::ActiveSession::start());
    assert!(metrics::render().is_none());

    rt.block_on(async { metrics::install(Some(addr)) }).expect("install metrics");
    // A second install is refused, not a panic.
    assert!(rt.block_on(async { metrics::install(None) }).is_err());

    // First scrape: everything with a known label set is there at 0.
    let (status, headers, body) = http_get(addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}\n{headers}");
    for r in ["ok", "auth_failed", "upstream_error", "client_aborted"] {
        assert_value(&body, &format!("popsift_sessions_total{{result=\"{r}\"}}"), 0.0);
    }
    for k in metrics::UPSTREAM_ERROR_KINDS {
        assert_value(&body, &format!("popsift_upstream_errors_total{{kind=\"{k}\"}}"), 0.0);
    }
    assert_value(&body, "popsift_sessions_active", 0.0);
    assert_value(&body, "popsift_scan_duration_seconds_count", 0.0);
    assert!(value(&body, "popsift_rules_loaded").is_none(), "set by the first rule load only");
    promtool_check_metrics(&body);

    // A known number of events through every API function.
    for result in [SessionResult::Ok, SessionResult::Ok, SessionResult::AuthFailed] {
        metrics::ActiveSession::start().finish(result);
    }
    for _ in 0..5 {
        metrics::message_scanned();
    }
    metrics::message_verdict("ham", "none");
    metrics::message_verdict("ham", "none");
    metrics::message_verdict("spam", "hide");
    metrics::message_verdict("spam", "quarantine");
    metrics::message_verdict("spam", "bogus-action");
    metrics::rule_matched("subject-viagra");
    metrics::rule_matched("subject-viagra");
    metrics::rule_matched("from \"bad\"\\domain");
    metrics::scan_duration(0.3);
    metrics::scan_duration(0.3);
    metrics::scan_duration(20.0);
    metrics::rule_eval_duration(0.000_2);
    metrics::upstream_error("timeout");
    metrics::upstream_error("timeout");
    metrics::upstream_error("tls");
    metrics::upstream_connect_duration(0.02);
    metrics::bytes(Direction::FromUpstream, 1000);
    metrics::bytes(Direction::FromUpstream, 500);
    metrics::bytes(Direction::ToClient, 700);
    metrics::rules_loaded(42);
    metrics::rules_reload(true);
    metrics::rules_reload(false);
    metrics::quarantine_message();
    metrics::quarantine_error();
    metrics::header_cache_lookup(true);
    metrics::header_cache_lookup(true);
    metrics::header_cache_lookup(false);

    let (status, _, body) = http_get(addr, "/metrics");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_value(&body, "popsift_sessions_total{result=\"ok\"}", 2.0);
    assert_value(&body, "popsift_sessions_total{result=\"auth_failed\"}", 1.0);
    assert_value(&body, "popsift_sessions_total{result=\"client_aborted\"}", 0.0);
    // Every session guard is gone (the one before install counted nowhere).
    assert_value(&body, "popsift_sessions_active", 0.0);
    assert_value(&body, "popsift_messages_scanned_total", 5.0);
    assert_value(&body, "popsift_messages_total{verdict=\"ham\",action=\"none\"}", 2.0);
    assert_value(&body, "popsift_messages_total{verdict=\"spam\",action=\"hide\"}", 1.0);
    assert_value(&body, "popsift_messages_total{verdict=\"spam\",action=\"quarantine\"}", 1.0);
    assert_value(&body, "popsift_messages_total{verdict=\"spam\",action=\"other\"}", 1.0);
    assert_value(&body, "popsift_messages_total{verdict=\"spam\",action=\"tag\"}", 0.0);
    assert_value(&body, "popsift_rule_matches_total{rule=\"subject-viagra\"}", 2.0);
    // Label values are escaped in the exposition.
    assert_value(&body, r#"popsift_rule_matches_total{rule="from \"bad\"\\domain"}"#, 1.0);
    assert_value(&body, "popsift_scan_duration_seconds_bucket{le=\"0.25\"}", 0.0);
    assert_value(&body, "popsift_scan_duration_seconds_bucket{le=\"0.5\"}", 2.0);
    assert_value(&body, "popsift_scan_duration_seconds_bucket{le=\"10\"}", 2.0);
    assert_value(&body, "popsift_scan_duration_seconds_bucket{le=\"30\"}", 3.0);
    assert_value(&body, "popsift_scan_duration_seconds_bucket{le=\"+Inf\"}", 3.0);
    assert_value(&body, "popsift_scan_duration_seconds_count", 3.0);
    assert_value(&body, "popsift_scan_duration_seconds_sum", 20.6);
    assert_value(&body, "popsift_rule_eval_duration_seconds_bucket{le=\"0.00025\"}", 1.0);
    assert_value(&body, "popsift_rule_eval_duration_seconds_bucket{le=\"0.0001\"}", 0.0);
    assert_value(&body, "popsift_rule_eval_duration_seconds_count", 1.0);
    assert_value(&body, "popsift_upstream_errors_total{kind=\"timeout\"}", 2.0);
    assert_value(&body, "popsift_upstream_errors_total{kind=\"tls\"}", 1.0);
    assert_value(&body, "popsift_upstream_errors_total{kind=\"connect\"}", 0.0);
    assert_value(&body, "popsift_upstream_connect_duration_seconds_bucket{le=\"0.025\"}", 1.0);
    assert_value(&body, "popsift_upstream_connect_duration_seconds_count", 1.0);
    assert_value(&body, "popsift_bytes_total{direction=\"from_upstream\"}", 1500.0);
    assert_value(&body, "popsift_bytes_total{direction=\"to_client\"}", 700.0);
    assert_value(&body, "popsift_rules_loaded", 42.0);
    assert_value(&body, "popsift_rules_reloads_total{result=\"success\"}", 1.0);
    assert_value(&body, "popsift_rules_reloads_total{result=\"failure\"}", 1.0);
    assert_value(&body, "popsift_rules_last_reload_successful", 0.0);
    assert_value(&body, "popsift_quarantine_messages_total", 1.0);
    assert_value(&body, "popsift_quarantine_errors_total", 1.0);
    assert_value(&body, "popsift_header_cache_lookups_total{result=\"hit\"}", 2.0);
    assert_value(&body, "popsift_header_cache_lookups_total{result=\"miss\"}", 1.0);
    assert_value(&body, &format!("popsift_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for ts in ["popsift_rules_last_reload_success_timestamp_seconds", "popsift_start_time_seconds"] {
        let v = value(&body, ts).unwrap_or_else(|| panic!("{ts} missing"));
        assert!((now - v).abs() < 120.0, "{ts} = {v}, now = {now}");
    }
    // Every metric in the table is described (has HELP and TYPE lines) and appears.
    for m in metrics::METRICS {
        let kind = match m.kind {
            metrics::MetricKind::Counter => "counter",
            metrics::MetricKind::Gauge => "gauge",
            metrics::MetricKind::Histogram => "histogram",
        };
        assert!(body.contains(&format!("# HELP {} ", m.name)), "no HELP for {}", m.name);
        assert!(body.contains(&format!("# TYPE {} {kind}\n", m.name)), "no TYPE for {}", m.name);
    }
    promtool_check_metrics(&body);

    // The rule label cap: after RULE_LABEL_CAP distinct ids, the rest go to `_other`.
    for i in 0..metrics::RULE_LABEL_CAP + 10 {
        metrics::rule_matched(&format!("rule-{i}"));
    }
    let body = metrics::render().expect("render after install");
    let rule_series = body.lines().filter(|l| l.starts_with("popsift_rule_matches_total{")).count();
    assert_eq!(rule_series, metrics::RULE_LABEL_CAP + 1, "cap plus _other");
    // Two ids were admitted before the loop, so 12 of the loop's ids overflow.
    assert_value(&body, "popsift_rule_matches_total{rule=\"_other\"}", 12.0);
    assert_value(&body, "popsift_rule_matches_total{rule=\"subject-viagra\"}", 2.0);
    promtool_check_metrics(&body);

    rt.shutdown_timeout(Duration::from_secs(1));
}
