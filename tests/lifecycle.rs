//! Process lifecycle: SIGTERM stops accepting, lets running sessions finish, exits 0; bad
//! configs and rule files stop startup with a clear message and exit code 2.
mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

#[test]
fn sigterm_drains_running_sessions_then_exits_cleanly() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let mut p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), ..Default::default() });
    let mut c = RawPop::connect(&p.addr);
    c.login("alice", &pass);
    p.signal("TERM");
    p.wait_log("shutting down");
    // No new sessions: the listening socket goes away with the accept loop (bounded wait for
    // the abort to land, then it must stay closed).
    wait_until(Duration::from_secs(10), "the listener to close", || std::net::TcpStream::connect(&p.addr).is_err());
    // ...but the running one finishes normally, UPDATE included.
    assert!(c.command("STAT").starts_with(&format!("+OK {} ", all.len())));
    assert!(c.command("DELE 1").starts_with("+OK"));
    assert!(c.command("QUIT").starts_with("+OK"));
    assert_eq!(p.wait(Duration::from_secs(10)), Some(0));
    assert_eq!(d.mailbox("alice").len(), all.len() - 1);
    assert!(p.log().contains("all sessions finished"), "{}", p.log());
}

fn popsift(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_popsift")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "listeners:\n  - upstream: x:110\n    upstrem_tls: none\n").unwrap();
    let (code, err) = popsift(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("c.yaml:3:5") && err.contains("upstrem_tls"), "{err}");
    let (code, err) = popsift(&["serve", "--metrics", "off"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("no upstream"), "{err}");
    let rules = dir.path().join("bad.yaml");
    std::fs::write(&rules, "rules:\n  - id: X\n    header: Subject\n    regex: '(unclosed'\n    score: 1\n").unwrap();
    let (code, err) =
        popsift(&["serve", "--upstream", "127.0.0.1:1", "--metrics", "off", "--rules", rules.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(err.contains("bad.yaml:") && err.contains("X"), "{err}");
    let (code, out) = popsift(&["serve", "--help"]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn help_explains_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_popsift")).args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--config",
        "--listen",
        "--upstream ",
        "--upstream-tls",
        "--upstream-ca",
        "--rules",
        "--metrics",
        "--state-dir",
        "--dry-run",
    ] {
        assert!(text.contains(opt), "serve --help lacks {opt}:\n{text}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_popsift")).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "check", "scan", "quarantine"] {
        assert!(text.contains(sub), "--help lacks {sub}");
    }
}

/// README: SIGTERM gives running sessions `timeouts.drain` to finish; "a session cut off then
/// performs no UPDATE, so nothing is deleted" — neither its own DELE marks nor condemned spam.
#[test]
fn sigterm_drain_deadline_cuts_off_sessions_without_update() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let rules = spam_rules("delete");
    let mut p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        rules: &rules,
        extra: "timeouts:\n  drain: 1s\n",
        ..Default::default()
    });
    let mut c = RawPop::connect(&p.addr);
    c.login("alice", &pass);
    assert!(c.command("DELE 1").starts_with("+OK"));
    p.signal("TERM");
    // The client never QUITs: popsift exits at the drain deadline.
    assert_eq!(p.wait(Duration::from_secs(30)), Some(0));
    assert!(p.log().contains("drain deadline"), "{}", p.log());
    // The session was told, not dropped: it ended itself and logged its summary.
    assert!(p.log().contains("cut off at the shutdown's drain deadline"), "{}", p.log());
    assert!(c.is_closed(), "the cut-off session's connection is closed");
    // Dovecot ends its side when popsift's connection goes away; only then is "nothing
    // deleted" a fact rather than "not yet".
    wait_until(Duration::from_secs(20), "Dovecot to log the session's disconnect", || {
        d.log().lines().any(|l| l.contains("pop3(alice)") && l.contains("Disconnected"))
    });
    assert_eq!(keys(&d.mailbox("alice")), names(&all), "no UPDATE: every message is still there");
}
