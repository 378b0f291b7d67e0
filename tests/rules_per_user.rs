//! Per-mailbox rules (issue 14) with the real binary in front of a real Dovecot holding two
//! mailboxes, fetched with Python's `poplib`:
//!
//! - a rule in `rules/users/alice@127.0.0.1/` hides a message from alice only; bob, with the
//!   same mail, sees everything;
//! - editing alice's file applies at her next login (no reload signal, no wait);
//! - a broken file in alice's directory keeps her previous set (the error with
//!   file:line:col is logged) and does not touch bob;
//! - an allowlist entry added with `allowlist_add` lets a globally hidden sender through for
//!   that mailbox at its next login;
//! - `popsift check --config` validates the config and every mailbox directory.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const GLOBAL: &str = "rules:\n  - id: G_CASINO\n    header: Subject\n    keywords: [casino]\n    action: hide\n";

/// Four small messages; subjects name what the rules look for.
const MESSAGES: [(&str, &str); 4] = [
    ("friend@people.example", "lunch on friday"),
    ("news@shop.example", "weekly deals"),
    ("promo@casino.example", "casino bonus"),
    ("boss@work.example", "quarterly report"),
];

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: someone@127.0.0.1\r\nSubject: {subject}\r\nMessage-ID: <{}@t>\r\n\r\nHello.\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

fn start() -> (Dovecot, Popsift) {
    let dovecot = Dovecot::start(DovecotOptions {
        lock_session: false,
        users: vec![("alice".into(), "alice-pw".into()), ("bob".into(), "bob-pw".into())],
    });
    for user in ["alice", "bob"] {
        for (i, (from, subject)) in MESSAGES.iter().enumerate() {
            dovecot.deliver(user, &format!("{i:04}.popsift-test-{user}"), &message(from, subject));
        }
    }
    let proxy =
        Popsift::start(&ProxyOpts { upstream: &dovecot.pop3_addr(), tls: "none", rules: GLOBAL, ..Default::default() });
    (dovecot, proxy)
}

fn mailbox_dir(proxy: &Popsift, user: &str) -> PathBuf {
    let d = proxy.dir.path().join("rules").join("users").join(format!("{user}@127.0.0.1"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `text` as an editor does: a new file renamed over the old one.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The subjects `user` sees through the proxy, in order.
fn subjects(proxy: &Popsift, user: &str, pass: &str) -> Vec<String> {
    let f = poplib_fetch(&proxy.addr, user, pass, &PoplibOpts::default());
    f.messages
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("?").trim().to_string()
        })
        .collect()
}

fn all_but(hidden: &[&str]) -> Vec<String> {
    MESSAGES.iter().map(|(_, s)| s.to_string()).filter(|s| !hidden.contains(&s.as_str())).collect()
}

const HIDE_DEALS: &str = "rules:\n  - id: A_DEALS\n    header: Subject\n    keywords: [deals]\n    action: hide\n";
const HIDE_REPORT: &str =
    "rules:\n  - id: A_REPORT\n    header: From:addr\n    domain_in: work.txt\n    action: hide\n";
const BROKEN: &str = "rules:\n  - id: A_BROKEN\n    header: Subject\n    regex: '(unclosed'\n    action: hide\n";

#[test]
fn per_mailbox_rules_apply_to_one_mailbox_reload_at_next_login_and_survive_a_broken_file() {
    let (dovecot, proxy) = start();
    // Without any mailbox directory both see the same filtered mailbox.
    assert_eq!(subjects(&proxy, "alice", "alice-pw"), all_but(&["casino bonus"]));

    // 1. alice's own rule hides "weekly deals" for her only.
    let alice = mailbox_dir(&proxy, "alice");
    save(&alice.join("mine.yaml"), HIDE_DEALS);
    assert_eq!(subjects(&proxy, "alice", "alice-pw"), all_but(&["casino bonus", "weekly deals"]));
    assert_eq!(subjects(&proxy, "bob", "bob-pw"), all_but(&["casino bonus"]));
    proxy.wait_log("per-mailbox rules loaded");

    // 2. Edited (a rule reading a list file beside it): applies at her next login.
    std::fs::write(alice.join("work.txt"), "# colleagues\nwork.example\n").unwrap();
    save(&alice.join("mine.yaml"), HIDE_REPORT);
    assert_eq!(subjects(&proxy, "alice", "alice-pw"), all_but(&["casino bonus", "quarterly report"]));

    // 3. Broken: the error is logged with file:line:col and alice keeps the previous set.
    save(&alice.join("mine.yaml"), BROKEN);
    assert_eq!(subjects(&proxy, "alice", "alice-pw"), all_but(&["casino bonus", "quarterly report"]));
    let where_ = format!("{}:4:12: rule A_BROKEN: regex", alice.join("mine.yaml").display());
    proxy.wait_log(&where_);
    assert!(proxy.log().contains("keeping this mailbox's previous rules"), "{}", proxy.log());
    assert_eq!(subjects(&proxy, "bob", "bob-pw"), all_but(&["casino bonus"]));

    // 4. The allowlist (as the review page will write it) beats the global rule, for alice.
    save(&alice.join("mine.yaml"), "rules: []\n");
    let settings = ::popsift::rules::users::PerUserSettings::defaults_for(&proxy.dir.path().join("rules"));
    assert!(::popsift::rules::users::allowlist_add(&settings, "alice", "127.0.0.1", "casino.example").unwrap());
    assert_eq!(subjects(&proxy, "alice", "alice-pw"), all_but(&[]));
    assert_eq!(subjects(&proxy, "bob", "bob-pw"), all_but(&["casino bonus"]));

    // Hidden is not deleted: both mailboxes still hold all four messages.
    assert_eq!(dovecot.mailbox("alice").len(), MESSAGES.len());
    assert_eq!(dovecot.mailbox("bob").len(), MESSAGES.len());
    // Nothing in the log carries a password.
    let log = proxy.log();
    assert!(!log.contains("alice-pw") && !log.contains("bob-pw"));
}

#[test]
fn over_the_limit_the_global_rules_apply_to_that_mailbox() {
    let (_dovecot, proxy) = start();
    let bob = mailbox_dir(&proxy, "bob");
    // Default max_files is 16.
    for i in 0..17 {
        std::fs::write(bob.join(format!("{i:02}.yaml")), "rules: []\n").unwrap();
    }
    save(&bob.join("00.yaml"), HIDE_DEALS.replace("A_DEALS", "B_DEALS").as_str());
    assert_eq!(subjects(&proxy, "bob", "bob-pw"), all_but(&["casino bonus"]));
    proxy.wait_log("rules_per_user.max_files");
    assert!(proxy.log().contains(&bob.display().to_string()));
    std::fs::remove_file(bob.join("16.yaml")).unwrap();
    assert_eq!(subjects(&proxy, "bob", "bob-pw"), all_but(&["casino bonus", "weekly deals"]));
}

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_popsift")).arg("check").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_validates_the_config_and_every_mailbox_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("rules");
    let users = tmp.path().join("per-user");
    std::fs::create_dir_all(users.join("alice@pop.example")).unwrap();
    std::fs::create_dir_all(users.join("bob@pop.example")).unwrap();
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("10-global.yaml"), GLOBAL).unwrap();
    std::fs::write(users.join("alice@pop.example/a.yaml"), HIDE_DEALS).unwrap();
    std::fs::write(users.join("bob@pop.example/allowlist.txt"), "casino.example\n").unwrap();
    let config = tmp.path().join("popsift.yaml");
    let text = format!(
        "listeners:\n  - listen: 127.0.0.1:1110\n    upstream: pop.example:995\nrules: {}\nrules_per_user:\n  dir: {}\n  max_files: 4\n  max_bytes: 64KiB\n",
        rules.display(),
        users.display()
    );
    std::fs::write(&config, &text).unwrap();
    let c = config.to_str().unwrap();
    let (code, out) = check(&["--config", c]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("config: ") && out.contains("rules: 1 rules in 1 file OK"), "{out}");
    assert!(out.contains("per-mailbox rules: 2 mailboxes"), "{out}");

    // A broken mailbox file: exit 1, file:line:col, and which mailbox.
    std::fs::write(users.join("bob@pop.example/b.yaml"), BROKEN).unwrap();
    let (code, out) = check(&["--config", c]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bob@pop.example/b.yaml:4:12: rule A_BROKEN: regex"), "{out}");
    assert!(out.contains("1 of 2 mailboxes broken"), "{out}");

    // Without --config the default directory (`users/` in the rules directory) is checked.
    std::fs::create_dir_all(rules.join("users/carol@pop.example")).unwrap();
    std::fs::write(
        rules.join("users/carol@pop.example/c.yaml"),
        "rules:\n  - id: G_CASINO\n    header: Subject\n    regex: x\n",
    )
    .unwrap();
    let (code, out) = check(&["--rules", rules.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("c.yaml:2:9: rule G_CASINO") && out.contains("duplicate id"), "{out}");

    // A bad config key is a config error (exit 2) with file:line:col.
    std::fs::write(&config, text.replace("max_files", "max_filez")).unwrap();
    let (code, out) = check(&["--config", c]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("popsift.yaml:") && out.contains("max_filez"), "{out}");
}
