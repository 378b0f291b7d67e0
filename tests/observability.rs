//! Metrics and logs of real sessions: popsift between Dovecot and poplib, then a scrape of
//! `/metrics` asserting exact counter movements, `promtool check metrics` on that scrape, and
//! no credential in the logs at any level.
mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

const RULES: &str = r#"
rules:
  - id: SPAM_DOMAIN
    header: From:addr
    regex: '(?i)@spam\.example$'
    action: delete
  - id: VIAGRA_SUBJECT
    header: Subject
    regex: 'VIAGRA'
    action: delete
"#;

/// The value of one sample line `name{labels} value` in an exposition.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("series {series} not in scrape:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_real_session_moves_the_counters_by_exactly_what_happened() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), rules: RULES, ..Default::default() });
    let before = p.scrape();
    assert_eq!(sample(&before, "popsift_sessions_total{result=\"ok\"}"), 0.0);
    assert_eq!(sample(&before, "popsift_rules_loaded"), 2.0);

    let got = poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts::default());
    let n_ham = ham(&all).len();
    let n_spam = spam(&all).len();
    assert_eq!(got.messages.len(), n_ham);
    // A failed login.
    let err = try_poplib_fetch(&p.addr, "alice", "wrong-password", &PoplibOpts::default()).unwrap_err();
    assert!(err.contains("-ERR [AUTH]"), "refused at PASS: {err}");
    // The counters move when each session ends: wait for both summary lines.
    p.wait_sessions_finished(2);

    let after = p.scrape();
    assert_eq!(sample(&after, "popsift_sessions_total{result=\"ok\"}"), 1.0);
    assert_eq!(sample(&after, "popsift_sessions_total{result=\"auth_failed\"}"), 1.0);
    assert_eq!(sample(&after, "popsift_sessions_active"), 0.0);
    assert_eq!(sample(&after, "popsift_messages_scanned_total"), all.len() as f64);
    assert_eq!(sample(&after, "popsift_messages_total{verdict=\"spam\",action=\"delete\"}"), n_spam as f64);
    assert_eq!(sample(&after, "popsift_messages_total{verdict=\"ham\",action=\"none\"}"), n_ham as f64);
    let by_domain = all
        .iter()
        .filter(|m| {
            let head = String::from_utf8_lossy(&m.bytes);
            let head = head.split("\n\n").next().unwrap_or("").to_ascii_lowercase();
            head.lines()
                .any(|l| l.starts_with("from:") && l.trim_end().trim_end_matches('>').ends_with("@spam.example"))
        })
        .count();
    assert_eq!(sample(&after, "popsift_rule_matches_total{rule=\"SPAM_DOMAIN\"}"), by_domain as f64);
    assert_eq!(sample(&after, "popsift_scan_duration_seconds_count"), 1.0);
    assert_eq!(sample(&after, "popsift_rule_eval_duration_seconds_count"), all.len() as f64);
    assert_eq!(sample(&after, "popsift_upstream_connect_duration_seconds_count"), 2.0);
    let delivered: usize = got.messages.iter().map(|m| m.len()).sum();
    assert!(sample(&after, "popsift_bytes_total{direction=\"to_client\"}") > delivered as f64);
    assert_eq!(sample(&after, "popsift_upstream_errors_total{kind=\"connect\"}"), 0.0);
    // Spam was deleted at QUIT.
    assert_eq!(d.mailbox("alice").len(), n_ham);

    // The scrape of a real session passes promtool's linter.
    let mut child = Command::new(require_program("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(after.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // One summary line per session.
    let log = p.log();
    assert_eq!(log.matches("session finished").count(), 2, "{log}");
}

#[test]
fn upstream_errors_are_counted() {
    let port = free_port();
    let upstream = format!("127.0.0.1:{port}");
    let p = Popsift::start(&ProxyOpts { upstream: &upstream, rules: RULES, ..Default::default() });
    let err = try_poplib_fetch(&p.addr, "alice", "x", &PoplibOpts::default()).unwrap_err();
    assert!(err.contains("SYS/TEMP"), "{err}");
    p.wait_sessions_finished(1);
    let m = p.scrape();
    assert_eq!(sample(&m, "popsift_upstream_errors_total{kind=\"connect\"}"), 1.0);
    assert_eq!(sample(&m, "popsift_sessions_total{result=\"upstream_error\"}"), 1.0);
}

#[test]
fn credentials_never_reach_the_logs_at_any_level() {
    let (d, _all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    for format in ["human", "json"] {
        let p = Popsift::start(&ProxyOpts {
            upstream: &d.pop3_addr(),
            rules: RULES,
            extra: "dry_run: true\n",
            log_level: "trace",
            args: &["--log-format", format],
            ..Default::default()
        });
        // USER/PASS, a failed PASS, APOP, and SASL PLAIN both as initial response and as a
        // continuation line.
        poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts::default());
        let refused = try_poplib_fetch(&p.addr, "alice", "Wrong-Secret-42", &PoplibOpts::default())
            .expect_err("the wrong password must be refused");
        // Refused at PASS by Dovecot (RFC 2449 AUTH response code), not later by a command.
        assert!(refused.contains("-ERR [AUTH]"), "{refused}");
        poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts { apop: true, ..Default::default() });
        let plain = base64(format!("\0alice\0{pass}").as_bytes());
        let mut c = RawPop::connect(&p.addr);
        let r = c.command(&format!("AUTH PLAIN {plain}"));
        assert!(r.starts_with("+OK"), "{r}");
        assert!(c.command("QUIT").starts_with("+OK"));
        let mut c = RawPop::connect(&p.addr);
        assert!(c.command("AUTH PLAIN").starts_with('+'));
        assert!(c.command(&plain).starts_with("+OK"));
        assert!(c.command("QUIT").starts_with("+OK"));
        // Five sessions: USER/PASS, the refused PASS, APOP, and the two SASL logins.
        p.wait_sessions_finished(5);
        let log = p.log();
        assert!(log.contains("session finished"), "logging works: {log}");
        assert!(log.contains("alice"), "the user name is logged");
        // Every session's summary says which session: client address, upstream, user (the
        // task-local label of `popsift::logging`, printed where the session span was).
        let finished: Vec<&str> = log.lines().filter(|l| l.contains("session finished")).collect();
        assert_eq!(finished.len(), 5, "{log}");
        for line in &finished {
            let (peer, upstream, user) = if format == "json" {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let span = &v["span"];
                assert_eq!(span["name"], "session", "{line}");
                assert_eq!(v["spans"][0], *span, "{line}");
                let s = |k: &str| span[k].as_str().map(str::to_string);
                (s("peer"), s("upstream"), s("user"))
            } else {
                let label = line.split_once(" session{").and_then(|(_, r)| r.split_once("}: ")).map(|(l, _)| l);
                let label = label.unwrap_or_else(|| panic!("no session label: {line}"));
                let field = |k: &str| label.split(' ').find_map(|f| f.strip_prefix(k)).map(str::to_string);
                (field("peer="), field("upstream="), field("user="))
            };
            assert!(peer.is_some_and(|p| p.starts_with("127.0.0.1:")), "{line}");
            assert_eq!(upstream, Some(d.pop3_addr()), "{line}");
            let want = if format == "json" { "alice" } else { "\"alice\"" };
            assert_eq!(user.as_deref(), Some(want), "{line}");
        }
        for secret in [pass.as_str(), "Wrong-Secret-42", plain.as_str()] {
            assert!(!log.contains(secret), "{format} log at trace level contains a credential");
        }
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
