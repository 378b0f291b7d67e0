//! Issue 10, "never lose mail": a message's identity is never assumed, a mailbox's identity
//! cannot collide, quarantine copies are bounded. Each case runs the real popsift binary in
//! front of the scripted upstream (`fake::scripted`: duplicate UIDLs, per-user mailboxes,
//! a RETR longer than LIST) and asserts the data outcome: which `DELE`s reached the server
//! and which files are in the quarantine. The property test at the end drives the pure
//! decision code (`session::verdicts`) with random mailboxes, duplicate UIDLs and stale caches.
// `fake` and `support` both bring the shared wait helper.
#![allow(clippy::duplicate_mod)]
mod fake;
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use fake::msg;
use fake::popsift::Client;
use fake::scripted::{start as scripted, Item};
use support::{Popsift, ProxyOpts};

const DELETE_VIAGRA: &str = r#"
rules:
  - id: DELETE_VIAGRA
    header: Subject
    regex: '(?i)viagra'
    action: delete
"#;

const QUARANTINE_VIAGRA: &str = r#"
rules:
  - id: QUARANTINE_VIAGRA
    header: Subject
    regex: '(?i)viagra'
    action: quarantine
"#;

fn proxy(upstream: &str, rules: &str, extra: &str) -> Popsift {
    Popsift::start(&ProxyOpts { upstream, rules, extra, ..ProxyOpts::default() })
}

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// USER/PASS login as `user`, STAT, QUIT. Returns the STAT reply.
async fn session(addr: &str, user: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd(&format!("USER {user}")).await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
    let stat = c.cmd("STAT").await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    stat
}

/// AUTH PLAIN login (`\0user\0pw`), STAT, QUIT.
async fn sasl_session(addr: &str, user: &str) -> String {
    let (mut c, _) = Client::connect(addr).await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    let resp = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0pw"));
    assert_eq!(c.cmd(&resp).await, "+OK sasl ok");
    let stat = c.cmd("STAT").await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    stat
}

/// Files in `<quarantine>/<folder>/new`.
fn copies(state: &Path, folder: &str) -> Vec<PathBuf> {
    let dir = state.join("quarantine").join(folder).join("new");
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn folders(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("quarantine"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn cache_updates(p: &Popsift) -> usize {
    p.log().matches("header cache updated").count()
}

/// Ham and spam of the same size (subjects of equal length).
fn ham() -> Vec<u8> {
    msg("hello there", "wanted mail\r\n")
}
fn spam() -> Vec<u8> {
    msg("viagra deal", "wanted mail\r\n")
}

// Before: the second login DELEd both messages (memo and cache keyed by (UIDL, size) gave
// the ham the spam's verdict). After: only the spam, in every login and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_uidl_ham_and_condemned_only_the_condemned_is_deleted() {
    assert_eq!(ham().len(), spam().len());
    for order in [[ham(), spam()], [spam(), ham()]] {
        let spam_no = if order[0] == spam() { "DELE 1" } else { "DELE 2" };
        let up = scripted(order.iter().map(|m| Item::new(m.clone(), "same")).collect()).await;
        let mut p = proxy(&up.addr, DELETE_VIAGRA, "");
        for round in 0..3 {
            let before = up.deles().len();
            let stat = session(&p.addr, "alice").await;
            assert_eq!(stat, format!("+OK 1 {}", ham().len()), "round {round}: the ham stays visible");
            assert_eq!(up.deles()[before..], [spam_no.to_string()], "round {round}: only the spam is deleted");
            if round == 1 {
                p.restart();
            }
        }
        assert!(p.log().contains("UIDLs are not unique"), "logged");
        assert!(p
            .scrape()
            .lines()
            .any(|l| l.starts_with("popsift_uidl_untrusted_sessions_total ") && !l.ends_with(" 0")));
    }
}

// A listed message without a UIDL line (RFC 1939 §7 requires one): no UIDL-keyed shortcut,
// so every login reads every header block again, and the session is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_uidl_switches_the_cache_off() {
    let no_uidl = Item { uidl: None, ..Item::new(ham(), "-") };
    let up = scripted(vec![Item::new(spam(), "v1"), no_uidl]).await;
    let p = proxy(&up.addr, DELETE_VIAGRA, "");
    for round in 0..2 {
        let before = up.commands().len();
        assert_eq!(session(&p.addr, "alice").await, format!("+OK 1 {}", ham().len()));
        let tops = up.commands()[before..].iter().filter(|c| c.starts_with("TOP ")).count();
        assert_eq!(tops, 2, "round {round}: both headers read from the server");
    }
    assert_eq!(up.deles(), ["DELE 1", "DELE 1"]);
    let metric =
        p.scrape().lines().find(|l| l.starts_with("popsift_uidl_untrusted_sessions_total ")).map(str::to_string);
    assert_eq!(metric.as_deref(), Some("popsift_uidl_untrusted_sessions_total 2"));
    assert_eq!(cache_updates(&p), 0, "nothing stored under untrusted UIDLs");
}

// A UIDL the server reuses, with the same size, for a different message: the header cache
// (which survives a restart) holds the old message's headers. Before: the ham was DELEd on
// the cached spam's verdict. After: the condemning verdict is re-checked with a fresh TOP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_uidl_same_size_after_restart_never_deletes_the_ham() {
    let up = scripted(vec![Item::new(spam(), "u1"), Item::new(msg("plain ham 1", "x\r\n"), "u2")]).await;
    let mut p = proxy(&up.addr, DELETE_VIAGRA, "");
    assert!(session(&p.addr, "alice").await.starts_with("+OK 1 "));
    assert_eq!(up.deles(), ["DELE 1"]);
    wait_until("the header cache write", || cache_updates(&p) >= 1);
    p.restart();
    // The server now lists a ham under u1, same size.
    up.set_mailbox("", vec![Item::new(ham(), "u1"), Item::new(msg("plain ham 1", "x\r\n"), "u2")]);
    let tops_before = up.commands().iter().filter(|c| c.starts_with("TOP ")).count();
    assert!(session(&p.addr, "alice").await.starts_with("+OK 2 "), "the ham is shown");
    assert_eq!(up.deles(), ["DELE 1"], "no DELE in the second session");
    let tops: Vec<String> = up.commands().into_iter().filter(|c| c.starts_with("TOP ")).skip(tops_before).collect();
    assert_eq!(tops, ["TOP 1 0"], "the cache served u2; only the condemned u1 was re-checked");
}

// Before: both SASL users shared `_unknown`; bob's spam (same UIDL and size as alice's
// quarantined one) was taken as "already quarantined" and DELEd with no copy. After: each
// user has a folder, and each copy is written before its DELE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sasl_users_with_colliding_uidl_are_both_copied() {
    let alice_spam = msg("viagra for A", "alice's\r\n");
    let bob_spam = msg("viagra for B", "bob's!!\r\n");
    assert_eq!(alice_spam.len(), bob_spam.len());
    let up = scripted(vec![]).await;
    up.set_mailbox("alice", vec![Item::new(alice_spam.clone(), "q1")]);
    up.set_mailbox("bob", vec![Item::new(bob_spam.clone(), "q1")]);
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, "");
    let state = p.state_dir();
    assert_eq!(sasl_session(&p.addr, "alice").await, "+OK 0 0");
    assert_eq!(up.deles(), ["DELE 1"]);
    assert_eq!(copies(&state, "alice").len(), 1);
    assert_eq!(sasl_session(&p.addr, "bob").await, "+OK 0 0");
    assert_eq!(up.deles(), ["DELE 1", "DELE 1"]);
    let (a, b) = (copies(&state, "alice"), copies(&state, "bob"));
    assert_eq!((a.len(), b.len()), (1, 1), "folders: {:?}", folders(&state));
    assert!(std::fs::read(&a[0]).unwrap().ends_with(&alice_spam));
    assert!(std::fs::read(&b[0]).unwrap().ends_with(&bob_spam));
    assert!(!state.join("quarantine/_unknown").exists());
}

// One user: a copy is made, the client leaves before QUIT (no DELE), then the server lists
// a different spam under the same UIDL and size. Before: "already quarantined" by (UIDL,
// size), DELEd with no copy. After: the digest differs, so it is copied first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_quarantined_means_same_content() {
    let first = msg("viagra one!", "first\r\n");
    let second = msg("viagra two!", "other\r\n");
    assert_eq!(first.len(), second.len());
    let up = scripted(vec![Item::new(first.clone(), "q1")]).await;
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, "");
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
    drop(c);
    wait_until("the dropped session's end", || p.log().contains("session finished"));
    assert_eq!(copies(&p.state_dir(), "alice").len(), 1);
    assert!(up.deles().is_empty(), "no UPDATE without QUIT");
    // The same message again: no second copy, DELE.
    assert_eq!(session(&p.addr, "alice").await, "+OK 0 0");
    assert_eq!(copies(&p.state_dir(), "alice").len(), 1, "same content is not copied twice");
    assert_eq!(up.deles(), ["DELE 1"]);
    // Another message under the same UIDL and size: copied before its DELE.
    up.set_mailbox("", vec![Item::new(second.clone(), "q1")]);
    assert_eq!(session(&p.addr, "alice").await, "+OK 0 0");
    let all = copies(&p.state_dir(), "alice");
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|f| std::fs::read(f).unwrap().ends_with(&second)));
    assert_eq!(up.deles(), ["DELE 1", "DELE 1"]);
}

// Before: `a/b`, `a\b` and `a_b` all mapped to folder `a_b`; the second and third logins
// found "their" message already quarantined (same UIDL and size) and DELEd it uncopied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_names_that_sanitise_alike_get_separate_folders() {
    let users = ["a/b", "a\\b", "a_b"];
    let up = scripted(vec![]).await;
    for (i, u) in users.iter().enumerate() {
        up.set_mailbox(u, vec![Item::new(msg(&format!("viagra no {i}"), "x\r\n"), "same")]);
    }
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, "");
    for u in users {
        assert_eq!(session(&p.addr, u).await, "+OK 0 0");
    }
    let state = p.state_dir();
    assert_eq!(folders(&state), ["a%2Fb", "a%5Cb", "a_b"]);
    for (i, f) in ["a%2Fb", "a%5Cb", "a_b"].iter().enumerate() {
        let c = copies(&state, f);
        assert_eq!(c.len(), 1, "{f}");
        assert!(std::fs::read(&c[0]).unwrap().ends_with(&msg(&format!("viagra no {i}"), "x\r\n")), "{f}");
    }
    assert_eq!(up.deles().len(), 3);
}

// Before: `USER bob<NUL>x` was relayed (a server may log in "bob" while popsift keys by the
// whole name). After: refused with -ERR, never relayed; the same for a SASL identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_in_user_names_are_refused_and_not_relayed() {
    let up = scripted(vec![Item::new(ham(), "u1")]).await;
    let p = proxy(&up.addr, DELETE_VIAGRA, "");
    let (mut c, _) = Client::connect(&p.addr).await;
    for bad in ["USER bob\0x\r\n", "USER bob\u{1b}x\r\n", "USER bob\rx\r\n"] {
        c.send(bad).await;
        let r = c.line().await;
        assert!(r.starts_with("-ERR"), "{bad:?}: {r}");
    }
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    let bad = base64::engine::general_purpose::STANDARD.encode("\0bo\nb\0pw");
    assert!(c.cmd(&bad).await.starts_with("-ERR"));
    // The session goes on: a clean login works.
    assert!(c.cmd("USER bob").await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let cmds = up.commands();
    assert!(cmds.iter().all(|l| !l.bytes().any(|b| b < 0x20)), "{cmds:?}");
    assert!(!cmds.contains(&bad), "the SASL response was relayed: {cmds:?}");
    assert_eq!(cmds.iter().filter(|l| l.starts_with("USER")).collect::<Vec<_>>(), ["USER bob"]);
    assert_eq!(*up.logins.lock().unwrap(), ["bob"]);
}

// A quota of one message: the second quarantine candidate is not copied and not DELEd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_is_not_deleted() {
    let up = scripted(vec![
        Item::new(msg("viagra one", "1\r\n"), "v1"),
        Item::new(msg("viagra two", "2\r\n"), "v2"),
        Item::new(ham(), "h1"),
    ])
    .await;
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, "quarantine: { quota_messages: 1, on_failure: hide }\n");
    assert_eq!(session(&p.addr, "alice").await, format!("+OK 1 {}", ham().len()));
    assert_eq!(up.deles(), ["DELE 1"], "only the copied message is deleted");
    assert_eq!(copies(&p.state_dir(), "alice").len(), 1);
    assert!(p.log().contains("quota"), "the refusal is logged");
    // The next login: still over quota, still not deleted; the copy is not duplicated.
    session(&p.addr, "alice").await;
    assert_eq!(up.deles(), ["DELE 1", "DELE 1"]);
    assert_eq!(copies(&p.state_dir(), "alice").len(), 1);
}

// A quota in bytes: a message larger than what is left is not copied and not DELEd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_size_quota_is_not_deleted() {
    let big = msg("viagra big", &"y".repeat(4000));
    let up = scripted(vec![Item::new(big, "v1")]).await;
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, "quarantine: { quota_size: 2KiB, on_failure: show }\n");
    assert!(session(&p.addr, "alice").await.starts_with("+OK 1 "), "on_failure: show");
    assert!(up.deles().is_empty());
    assert!(copies(&p.state_dir(), "alice").is_empty());
}

// A quarantine store that hangs (here: a FIFO with no writer in the user's folder, so
// reading the folder's usage blocks, as on a hung network mount). Before: the login waited
// forever. After: past `timeouts.quarantine_usage` the copy fails, `on_failure` applies, the
// spam is shown and nothing is DELEd; logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_quarantine_usage_scan_falls_back_to_on_failure() {
    let up = scripted(vec![Item::new(msg("viagra stuck", "1\r\n"), "v1"), Item::new(ham(), "h1")]).await;
    let extra = "timeouts: { quarantine_usage: 500ms }\nquarantine: { on_failure: show }\n";
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, extra);
    let new = p.state_dir().join("quarantine/alice/new");
    std::fs::create_dir_all(&new).unwrap();
    let made = std::process::Command::new("mkfifo").arg(new.join("hung")).status().unwrap();
    assert!(made.success(), "mkfifo");
    let stat = tokio::time::timeout(Duration::from_secs(30), session(&p.addr, "alice")).await;
    assert!(stat.expect("the login is not held by the hung store").starts_with("+OK 2 "), "on_failure: show");
    assert!(up.deles().is_empty(), "nothing copied, nothing deleted: {:?}", up.deles());
    assert!(p.log().contains("timeouts.quarantine_usage"), "logged");
    let m = p.scrape();
    assert!(m.contains("popsift_login_step_timeouts_total{step=\"quarantine_usage\"} 1"), "{m}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// Before: LIST said 100 octets, RETR streamed 50 MB; popsift held it all, wrote a 50 MB
// copy and DELEd. After: the copy stops at LIST size + slack, is discarded, nothing is
// DELEd, and popsift's peak RSS stays far below the 50 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retr_longer_than_list_is_not_copied_nor_deleted_and_memory_stays_bounded() {
    let spam = msg("viagra liar", "short\r\n");
    let filler = 50 * 1024 * 1024;
    let up = scripted(vec![
        Item { message: spam, uidl: Some("big".into()), list_size: Some(100), retr_filler: filler },
        Item::new(ham(), "h1"),
    ])
    .await;
    let p = proxy(&up.addr, QUARANTINE_VIAGRA, "cache: { enabled: false }\n");
    let baseline = vm_hwm_kib(p.pid());
    assert_eq!(session(&p.addr, "alice").await, format!("+OK 1 {}", ham().len()));
    assert!(up.deles().is_empty(), "{:?}", up.deles());
    let state = p.state_dir();
    assert!(copies(&state, "alice").is_empty());
    let tmp = std::fs::read_dir(state.join("quarantine/alice/tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(tmp, 0, "the partial copy is removed");
    let peak = vm_hwm_kib(p.pid());
    eprintln!("popsift VmHWM: {baseline} KiB at start, {peak} KiB after a 50 MB RETR");
    assert!(peak < baseline + 20 * 1024, "peak RSS {peak} KiB (start {baseline} KiB) grew with the 50 MB RETR");
    assert!(p.log().contains("more than"), "the reason is logged");
}

// The header cache file bound (`cache.max_size` on disk) is tested where the churn can be
// driven: `store::header_cache::tests::file_size_returns_within_bound_after_churn` (before:
// a 1 MiB cache's file grew to 135 MB; after: 4.7 MB).

mod decisions {
    //! The decision code alone, for many random mailboxes: no message whose own headers do
    //! not condemn it is ever in the DELE set, whatever the UIDLs, sizes, cache and memo say.
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;

    use popsift::pop3::multiline::HeaderBlock;
    use popsift::rules::{Action, EngineOptions, RuleSet};
    use popsift::session::tag::TagSettings;
    use popsift::session::verdicts::{build_entries, evaluate, recheck, to_recheck, uidl_trust, Evaluated, ScanItem};
    use popsift::session::view::Disposition;
    use proptest::prelude::*;

    fn rules(words: &[String]) -> RuleSet {
        let mut y = String::from("rules:\n");
        for (i, w) in words.iter().enumerate() {
            let action = ["delete", "quarantine", "hide", "tag"][i % 4];
            y.push_str(&format!("  - id: R{i}\n    header: Subject\n    regex: '{w}'\n    action: {action}\n"));
        }
        if words.is_empty() {
            y = "rules: []\n".into();
        }
        RuleSet::from_yaml(Path::new("p.yaml"), &y, &EngineOptions::default()).unwrap()
    }

    fn headers(subject: &str) -> HeaderBlock {
        HeaderBlock { bytes: format!("From: a@b\r\nSubject: {subject}\r\n\r\n").into_bytes(), truncated: false }
    }

    fn condemns(set: &RuleSet, h: &HeaderBlock, size: u64) -> bool {
        matches!(set.evaluate(&h.bytes, size).action, Some(Action::Delete | Action::Quarantine))
    }

    /// One message: subject words, UIDL (from a tiny alphabet: duplicates are common), size.
    fn message() -> impl Strategy<Value = (String, String, u64)> {
        ("(spam|ham|news|win|note)( (spam|ham|news|win|note)){0,2}", "u[0-3]", 1u64..4)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn nothing_deleted_that_its_own_headers_do_not_condemn(
            now in proptest::collection::vec(message(), 0..8),
            before in proptest::collection::vec(message(), 0..8),
            words in proptest::collection::vec("(spam|win|news)", 0..3),
            memo_first in any::<bool>(),
        ) {
            let set = rules(&words);
            let tag = TagSettings::default();
            // What an earlier login stored: cache (UIDL → headers, last one wins) and memo
            // ((UIDL, size) → evaluation), from another state of the mailbox.
            let mut cache: HashMap<String, (u64, HeaderBlock)> = HashMap::new();
            let mut memo: HashMap<(String, u64), Arc<Evaluated>> = HashMap::new();
            for (s, u, size) in &before {
                let h = headers(s);
                let evaluated = Some(Arc::new(evaluate(&h, *size, &set, None, &tag)));
                let items = vec![ScanItem { upstream: 1, size: *size, uidl: None, memo: None, evaluated }];
                let e = build_entries(items, false).remove(0);
                memo.insert((u.clone(), *size), e.evaluated.clone().unwrap());
                cache.insert(u.clone(), (*size, h));
            }
            // This login, as net::login_scan does it.
            let list: Vec<(u32, u64)> = now.iter().enumerate().map(|(i, m)| (i as u32 + 1, m.2)).collect();
            let uidls: Vec<(u32, String)> = now.iter().enumerate().map(|(i, m)| (i as u32 + 1, m.1.clone())).collect();
            let trusted = uidl_trust(&list, &uidls).is_ok();
            let mut items = Vec::new();
            let mut unverified = Vec::new();
            for (i, (s, u, size)) in now.iter().enumerate() {
                let mut item = ScanItem { upstream: i as u32 + 1, size: *size, uidl: Some(Arc::from(u.as_str())), memo: None, evaluated: None };
                let mut cached = None;
                if trusted {
                    if memo_first {
                        item.memo = memo.get(&(u.clone(), *size)).cloned();
                    }
                    if item.memo.is_none() {
                        cached = cache.get(u).filter(|(cs, _)| cs == size).map(|(_, h)| h.clone());
                    }
                }
                unverified.push(item.memo.is_some() || cached.is_some());
                if item.memo.is_none() {
                    // Evaluated as the scan reads it: from the cache, or `TOP n 0`.
                    let h = cached.unwrap_or_else(|| headers(s));
                    item.evaluated = Some(Arc::new(evaluate(&h, *size, &set, None, &tag)));
                }
                items.push(item);
            }
            let mut entries = build_entries(items, false);
            let again = to_recheck(&entries, &unverified, false);
            let fresh = again.iter().map(|&i| Some(headers(&now[i].0))).collect();
            recheck(&mut entries, &again, fresh, &set, None, false, &tag);
            for (i, e) in entries.iter().enumerate() {
                // Condemned, or a quarantine candidate (DELEd once its copy is stored).
                let deleted = e.disposition == Disposition::Condemned
                    || e.verdict().is_some_and(|v| v.action == Some(Action::Quarantine));
                if deleted {
                    prop_assert!(condemns(&set, &headers(&now[i].0), now[i].2),
                        "message {} ({:?}) would be DELEd but its own headers do not condemn it", i + 1, now[i]);
                }
            }
        }
    }
}
