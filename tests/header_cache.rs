//! The header cache against a real Dovecot: cold and warm logins give the same view and the
//! warm one sends no TOP; messages deleted by another client are evicted; a damaged cache
//! file is rebuilt; two users never see each other's cached headers.
//!
//! Within one popsift process a warm login is answered by the in-memory verdict memo, which
//! never reads the cache file; those answers are counted as `result="memo"`, apart from the
//! cache's own hits. Only a restart (empty memo) shows the file at work, so the tests that
//! claim redb hits restart popsift, and count TOPs with Dovecot's own logout counters.
mod support;

use std::time::Duration;

use ::popsift::store::header_cache::{HeaderCache, Scope, Wanted, FILE_NAME};
use support::*;

const RULES: &str = r#"
rules:
  - id: HIDE_SUBJECT
    header: Subject
    regex: 'HIDE'
    action: hide
"#;

fn message(i: usize, subject: &str) -> Vec<u8> {
    format!(
        "From: sender{i}@example.org\r\nTo: alice@example.org\r\nSubject: {subject}\r\nMessage-ID: <m{i}@example.org>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nbody of message {i}\r\n"
    )
    .into_bytes()
}

/// `n` messages; every third one has a subject the rules hide.
fn deliver(d: &Dovecot, user: &str, n: usize) {
    for i in 0..n {
        let subject = if i % 3 == 1 { format!("HIDE me {i}") } else { format!("hello {i}") };
        d.deliver(user, &format!("{i:04}.cache-test"), &message(i, &subject));
    }
}

/// `popsift_header_cache_lookups_total{result=…}` (0 before the first lookup).
fn lookups(p: &Popsift, result: &str) -> u64 {
    let label = format!("result=\"{result}\"");
    p.scrape()
        .lines()
        .find(|l| l.starts_with("popsift_header_cache_lookups_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// TOP commands per ended session, counted by Dovecot itself (its logout line,
/// `pop3_logout_format` default `top=%t/%p, …`), oldest first. Dovecot writes that line
/// after its reply to QUIT, so this waits (bounded) until `n` sessions have logged out.
fn dovecot_tops(d: &Dovecot, n: usize) -> Vec<usize> {
    let tops = || -> Vec<usize> {
        d.log()
            .lines()
            .filter(|l| l.contains("pop3(") && l.contains("Disconnected"))
            .filter_map(|l| l.split("top=").nth(1)?.split('/').next()?.parse().ok())
            .collect()
    };
    wait_until(Duration::from_secs(20), &format!("{n} Dovecot logout lines"), || tops().len() >= n);
    tops()
}

fn fetch(p: &Popsift, d: &Dovecot, user: &str) -> PopFetch {
    poplib_fetch(&p.addr, user, d.password(user), &PoplibOpts::default())
}

fn same_view(a: &PopFetch, b: &PopFetch) {
    assert_eq!(a.stat, b.stat);
    assert_eq!(a.list, b.list);
    assert_eq!(a.uidl, b.uidl);
    assert_eq!(a.messages, b.messages);
}

/// Stops popsift gracefully so that the cache file is closed and can be opened here.
fn stop(mut p: Popsift) {
    p.signal("TERM");
    p.wait(Duration::from_secs(40));
}

fn start(d: &Dovecot, state: &std::path::Path) -> Popsift {
    let args = ["--state-dir", state.to_str().unwrap()];
    Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), rules: RULES, args: &args, ..Default::default() })
}

#[test]
fn warm_login_gives_the_same_view_without_top() {
    let d = Dovecot::start(DovecotOptions::default());
    deliver(&d, "alice", 30);
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), rules: RULES, ..Default::default() });
    let cold = fetch(&p, &d, "alice");
    assert_eq!(cold.stat.0, 20, "every third message hidden");
    assert_eq!((lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")), (0, 30, 0));
    let warm = fetch(&p, &d, "alice");
    same_view(&cold, &warm);
    assert_eq!(
        (lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")),
        (0, 30, 30),
        "the warm login in the same process is answered by the memo"
    );
    let log = p.log();
    assert!(log.contains("tops_sent=30") && log.contains("tops_sent=0"), "cold sent 30 TOPs, warm none:\n{log}");
    assert!(p.state_dir().join(FILE_NAME).is_file());

    // One new message: one miss, one TOP.
    d.deliver("alice", "0030.cache-test", &message(30, "HIDE new"));
    let third = fetch(&p, &d, "alice");
    assert_eq!(third.stat, cold.stat, "the new message is hidden");
    assert_eq!((lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")), (0, 31, 60));
    assert!(p.log().contains("tops_sent=1"));
    assert_eq!(dovecot_tops(&d, 3), [30, 0, 1], "Dovecot's own TOP counts per session");
}

#[test]
fn message_deleted_by_another_client_is_evicted() {
    let d = Dovecot::start(DovecotOptions::default());
    deliver(&d, "alice", 6);
    let state = tempfile::tempdir().unwrap();
    let p = start(&d, state.path());
    let before = poplib_fetch(&d.pop3_addr(), "alice", d.password("alice"), &PoplibOpts::default());
    fetch(&p, &d, "alice");
    // Another client deletes message 3 directly on the server.
    let mut other = RawPop::connect(&d.pop3_addr());
    other.login("alice", d.password("alice"));
    assert!(other.command("DELE 3").starts_with("+OK"));
    assert!(other.command("QUIT").starts_with("+OK"));
    let after = fetch(&p, &d, "alice");
    assert_eq!(after.uidl.len(), 3, "6 messages, 2 hidden, 1 deleted");
    assert_eq!((lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")), (0, 6, 5));
    // A third login waits for the second one's cache update; then stop and look inside.
    fetch(&p, &d, "alice");
    stop(p);
    let cache = HeaderCache::open(state.path(), 1 << 30).unwrap();
    let scope = Scope::new(d.pop3_addr(), "alice");
    let wanted: Vec<Wanted> = before
        .uidl
        .iter()
        .zip(&before.list)
        .map(|((_, u), (_, s))| Wanted { uidl: u.as_str().into(), size: *s })
        .collect();
    let found = cache.lookup_blocking(&scope, &wanted, 256 * 1024);
    let present: Vec<bool> = found.iter().map(Option::is_some).collect();
    assert_eq!(present, [true, true, false, true, true, true], "only the deleted message's entry is gone");
    assert_eq!(cache.stats_blocking().unwrap().0, 5);
}

fn damaged_cache_is_rebuilt(damage: impl Fn(&std::path::Path)) {
    let d = Dovecot::start(DovecotOptions::default());
    deliver(&d, "alice", 12);
    let state = tempfile::tempdir().unwrap();
    let p = start(&d, state.path());
    let cold = fetch(&p, &d, "alice");
    fetch(&p, &d, "alice"); // waits for the first update, so the file has content
    stop(p);
    damage(&state.path().join(FILE_NAME));
    let p = start(&d, state.path());
    let after = fetch(&p, &d, "alice");
    same_view(&cold, &after);
    let log = p.log();
    assert!(log.contains("rebuilding"), "the damage was noticed and logged:\n{log}");
    assert_eq!((lookups(&p, "hit"), lookups(&p, "miss")), (0, 12), "the rebuilt cache starts empty");
    fetch(&p, &d, "alice"); // waits for the rebuilt cache's update
    stop(p);
    // The rebuilt file works: a fresh process (empty memo) reads every header block from it.
    let p = start(&d, state.path());
    let warm = fetch(&p, &d, "alice");
    same_view(&cold, &warm);
    assert_eq!((lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")), (12, 0, 0), "and works again");
}

#[test]
fn truncated_cache_file_is_rebuilt() {
    damaged_cache_is_rebuilt(|path| {
        let len = std::fs::metadata(path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(len / 2).unwrap();
    });
}

#[test]
fn garbage_cache_file_is_rebuilt() {
    damaged_cache_is_rebuilt(|path| {
        let mut bytes = std::fs::read(path).unwrap();
        for b in bytes.iter_mut().skip(64).step_by(7) {
            *b ^= 0x5a;
        }
        std::fs::write(path, bytes).unwrap();
    });
}

/// Gives both users the same UIDLs for their messages (same UIDVALIDITY and UIDs), so that
/// a cache keyed by UIDL alone would hand one user's headers to the other.
fn fix_uidlist(d: &Dovecot, user: &str, names: &[String]) {
    let mut text = format!("3 V1700000000 N{} G0123456789abcdef0123456789abcdef\n", names.len() + 1);
    for (i, n) in names.iter().enumerate() {
        text.push_str(&format!("{} :{n}\n", i + 1));
    }
    let path = d.maildir(user).join("dovecot-uidlist");
    std::fs::write(&path, text).unwrap();
    let u = mail_user();
    std::os::unix::fs::chown(&path, Some(u.uid), Some(u.gid)).unwrap();
}

#[test]
fn two_users_never_share_cached_headers() {
    let d = Dovecot::start(DovecotOptions {
        users: vec![("alice".into(), "alice-pw".into()), ("bob".into(), "bob-pw".into())],
        ..Default::default()
    });
    // Same names, same sizes, different subjects: alice's are hidden, bob's are not.
    let names: Vec<String> = (0..5).map(|i| format!("{i:04}.two-users")).collect();
    for (i, n) in names.iter().enumerate() {
        d.deliver("alice", n, &message(i, &format!("HIDE alice {i}")));
        d.deliver("bob", n, &message(i, &format!("keep bob-- {i}")));
    }
    fix_uidlist(&d, "alice", &names);
    fix_uidlist(&d, "bob", &names);
    let direct_a = poplib_fetch(&d.pop3_addr(), "alice", "alice-pw", &PoplibOpts::default());
    let direct_b = poplib_fetch(&d.pop3_addr(), "bob", "bob-pw", &PoplibOpts::default());
    assert_eq!(direct_a.uidl, direct_b.uidl, "the test needs colliding UIDLs");
    assert_eq!(direct_a.list, direct_b.list, "and equal sizes");

    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), rules: RULES, ..Default::default() });
    let a = fetch(&p, &d, "alice");
    assert_eq!(a.stat.0, 0, "all of alice's messages hidden");
    let b = fetch(&p, &d, "bob");
    assert_eq!(b.stat.0, 5, "bob's messages judged by bob's headers");
    assert_eq!(b.messages, direct_b.messages);
    assert_eq!(lookups(&p, "hit"), 0, "bob got no hit from alice's entries");
    // Both warm now, each from their own entries.
    assert_eq!(fetch(&p, &d, "alice").stat.0, 0);
    assert_eq!(fetch(&p, &d, "bob").messages, direct_b.messages);
    assert_eq!(lookups(&p, "memo"), 10);
}

/// Warm logins reuse the previous login's verdicts only while the rule set is the same: after
/// a reload (SIGHUP) the very next login applies the new rules to the cached headers.
#[test]
fn a_rule_reload_applies_at_once_to_cached_mailboxes() {
    let d = Dovecot::start(DovecotOptions::default());
    deliver(&d, "alice", 9);
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), rules: RULES, ..Default::default() });
    let cold = fetch(&p, &d, "alice");
    assert_eq!(cold.stat.0, 6, "every third message hidden");
    let warm = fetch(&p, &d, "alice");
    same_view(&cold, &warm);
    // New rules: hide nothing but message 0.
    let rules_file = p.dir.path().join("rules/test.yaml");
    std::fs::write(
        &rules_file,
        "rules:\n  - id: HIDE_ZERO\n    header: Subject\n    regex: 'hello 0$'\n    action: hide\n",
    )
    .unwrap();
    p.signal("HUP");
    // The set is swapped before "rules reloaded" is logged.
    p.wait_log("rules reloaded");
    let after = fetch(&p, &d, "alice");
    assert_eq!(after.stat.0, 8, "the new rules apply at once: only message 0 hidden");
    assert_eq!(
        (lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")),
        (9, 9, 9),
        "after the reload the memo is void: the headers came from the cache file"
    );
    assert_eq!(dovecot_tops(&d, 3), [9, 0, 0], "no TOP was needed after the reload");
}

/// README, "Header cache": after a restart (empty memo) the first login reads every header
/// block back from the cache file and sends no TOP. The hits are the file's own
/// (`result="hit"`, no memo), and Dovecot counts the TOPs.
#[test]
fn restart_with_an_intact_cache_file_sends_no_top() {
    let d = Dovecot::start(DovecotOptions::default());
    deliver(&d, "alice", 15);
    let state = tempfile::tempdir().unwrap();
    let p = start(&d, state.path());
    let cold = fetch(&p, &d, "alice");
    assert_eq!(cold.stat.0, 10, "every third message hidden");
    fetch(&p, &d, "alice"); // waits for the cold login's cache update
    stop(p);
    let p = start(&d, state.path());
    let warm = fetch(&p, &d, "alice");
    same_view(&cold, &warm);
    assert_eq!((lookups(&p, "hit"), lookups(&p, "miss"), lookups(&p, "memo")), (15, 0, 0));
    assert_eq!(dovecot_tops(&d, 3), [15, 0, 0], "cold: 15 TOPs; warm and after the restart: none");
}
