//! Two popsift instances sharing one Redis (`store.backend: redis`) in front of one Dovecot
//! (issue 15): what one instance learns, the other uses; Redis trouble never costs a login
//! or a message. Everything real: Dovecot and `redis-server` started by the tests, the
//! popsift binary, Python poplib as the client, the `popsift` CLI for quarantine and training.
//!
//! `TOP` commands are counted on a [`Forwarder`] that both instances use as their upstream
//! (so both see the same upstream name, as two instances behind one balancer do).
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn popsift_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_popsift")).args(args).output().expect("run popsift");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tops(bytes: &[u8]) -> usize {
    bytes.windows(4).filter(|w| w == b"TOP ").count()
}

fn proxy(upstream: &str, rules: &str, extra: &str) -> Popsift {
    Popsift::start(&ProxyOpts { upstream, tls: "none", rules, extra, ..Default::default() })
}

fn config(p: &Popsift) -> String {
    p.config_path.display().to_string()
}

#[test]
fn warm_through_the_other_instance_and_one_quarantine_for_both() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let redis = RedisServer::start();
    let fwd = Forwarder::start(&d.pop3_addr());
    let rules = spam_rules("quarantine");
    let a = proxy(&fwd.addr, &rules, &redis.store_yaml("two"));
    let b = proxy(&fwd.addr, &rules, &redis.store_yaml("two"));

    // Cold login through A: TOP for every message; spam copied to Redis, then DELEd.
    let through_a = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(1);
    assert_eq!(through_a.messages, wire(&ham(&all)), "A shows only ham");
    let cold_tops = tops(&fwd.sent());
    assert!(cold_tops >= ham(&all).len(), "the cold login read headers with TOP ({cold_tops})");
    assert_eq!(d.mailbox("alice").len(), ham(&all).len(), "quarantined spam was deleted after its durable copy");

    // Warm through B, which never saw this mailbox: no TOP at all.
    let mark = fwd.sent().len();
    let through_b = poplib_fetch(&b.addr, "alice", &pass, &PoplibOpts::default());
    b.wait_sessions_finished(1);
    assert_eq!(through_b.messages, wire(&ham(&all)));
    let warm_tops = tops(&fwd.sent()[mark..]);
    assert_eq!(warm_tops, 0, "B's login took every header block from Redis");
    assert!(b.log().contains("redis store connected"), "{}", b.log());

    // Quarantined through A: listed and restored through B's CLI, gone for A's CLI too.
    let (ok, listed, err) = popsift_cli(&["quarantine", "--config", &config(&b), "list", "--json"]);
    assert!(ok, "{err}");
    let ids: Vec<String> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), spam(&all).len(), "{listed}");
    let out = tempfile::tempdir().unwrap();
    let eml = out.path().join("restored.eml");
    let (ok, _, err) = popsift_cli(&[
        "quarantine",
        "--config",
        &config(&b),
        "restore",
        &ids[0],
        "--to-eml",
        eml.to_str().unwrap(),
        "--remove",
        "--no-train",
    ]);
    assert!(ok, "{err}");
    let restored = std::fs::read(&eml).unwrap();
    assert!(wire(&spam(&all)).contains(&restored), "restored byte for byte as the server held it");
    let (ok, listed, err) = popsift_cli(&["quarantine", "--config", &config(&a), "list", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(listed.lines().count(), spam(&all).len() - 1, "A's view: the restored one is gone");
    assert_eq!(a.metric("popsift_store_degraded{reason=\"not_durable\"}"), Some(0.0));
}

fn redis_settings(redis: &RedisServer, prefix: &str) -> ::popsift::config::RedisSettings {
    ::popsift::config::RedisSettings {
        url: redis.url(),
        key_prefix: prefix.into(),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
    }
}

/// A message quarantined through A and released (the review page's "Not spam", here through
/// the store API with the same Redis) is served through B: listed with its own UIDL and
/// exact size, fetched byte for byte; once B's client deletes it, it is gone for A too.
#[test]
fn released_through_one_is_served_through_the_other() {
    use ::popsift::store::history::{mailbox_key, History, HistorySettings, Released};
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let redis = RedisServer::start();
    let rules = spam_rules("quarantine");
    let a = proxy(&d.pop3_addr(), &rules, &redis.store_yaml("rel"));
    let b = proxy(&d.pop3_addr(), &rules, &redis.store_yaml("rel"));
    let through_a = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(1);
    assert_eq!(through_a.messages, wire(&ham(&all)));
    assert_eq!(d.mailbox("alice").len(), ham(&all).len(), "spam copied, then deleted upstream");

    // "Not spam" on one quarantined copy.
    let settings = redis_settings(&redis, "rel");
    let store = ::popsift::config::StoreSettings { redis: Some(settings.clone()) };
    let q = ::popsift::store::quarantine::Quarantine::for_store(&store, Path::new("/nonexistent"));
    let listed = q.list().unwrap();
    let m = listed.iter().find(|m| m.user == "alice").expect("a copy of alice's spam");
    let original = q.original(&m.id).unwrap();
    let h = ::popsift::store::redis_history::RedisHistory::new(&settings, HistorySettings::default()).unwrap();
    let released = Released {
        uidl: "popsift-r-0123456789abcdef0123456789abcdef".into(),
        quarantine_id: m.id.clone(),
        size: original.len() as u64,
        time: 1,
    };
    h.release(&mailbox_key(&m.upstream, &m.user), &released).unwrap();

    // Through B, which released nothing itself: the server's ham, then the released message.
    let through_b = poplib_fetch(&b.addr, "alice", &pass, &PoplibOpts::default());
    b.wait_sessions_finished(1);
    let mut expected = wire(&ham(&all));
    expected.push(original.clone());
    assert_eq!(through_b.messages, expected, "released message served through B, byte for byte");
    assert!(wire(&spam(&all)).contains(&original), "as the server held it");
    assert_eq!(through_b.list.last().map(|l| l.1), Some(original.len() as u64), "exact LIST size");
    assert_eq!(through_b.uidl.last().map(|u| u.1.as_str()), Some(released.uidl.as_str()));

    // B's client deletes it: the release and its copy are gone, for A as well.
    let opts = PoplibOpts { delete: true, ..PoplibOpts::default() };
    let _ = poplib_fetch(&b.addr, "alice", &pass, &opts);
    b.wait_sessions_finished(2);
    wait_until(Duration::from_secs(10), "the release to be forgotten", || {
        h.released(&mailbox_key(&m.upstream, &m.user)).is_ok_and(|r| r.is_empty())
    });
    assert!(q.original(&m.id).is_err(), "its quarantine copy was removed");
    let again = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    assert!(again.messages.is_empty(), "everything was deleted by B's client: {:?}", again.list);
}

/// Autolearn through A writes the shared model: B (another process) loads the new counts.
#[test]
fn autolearn_through_one_is_seen_by_the_other() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let redis = RedisServer::start();
    let bayes = "bayes:\n  min_spam: 2\n  min_ham: 2\n  autolearn: { enabled: true, spam_above: 0.5, ham_below: 0.1, balance: 10.0 }\n";
    let extra = format!("{}{bayes}", redis.store_yaml("al"));
    let rules = spam_rules("hide");
    let a = proxy(&d.pop3_addr(), &rules, &extra);
    let b = proxy(&d.pop3_addr(), &rules, &extra);
    // A first model (autolearn adds to a model, it does not start one).
    train_three_of_each(&b);
    a.wait_log("bayes model loaded");
    b.wait_log("bayes model loaded");
    let loads = |p: &Popsift| p.log().matches("bayes model loaded").count();
    let b_loads = loads(&b);

    let f = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(1);
    assert_eq!(f.messages, wire(&ham(&all)));
    let known = || {
        let (ok, stats, _) = popsift_cli(&["train", "--config", &config(&b), "--stats"]);
        assert!(ok);
        stats
    };
    wait_until(Duration::from_secs(30), "autolearn through A to reach the shared model", || {
        !known().contains("3 spam, 3 ham, 6 messages known")
    });
    let stats = known();
    let messages: u64 = stats
        .split(", ")
        .find_map(|p| p.strip_suffix(" messages known"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no message count in {stats}"));
    assert!(messages > 6, "A's verdicts learned into the shared model: {stats}");
    // B's running process loads the new generation from Redis.
    wait_until(Duration::from_secs(20), "B to load the model A's autolearn wrote", || loads(&b) > b_loads);
    assert!(!a.state_dir().join("bayes.redb").exists(), "nothing written to A's local model file");
}

/// A blackholed Redis (a listener that never accepts, so every connect hangs until
/// `connect_timeout`): N concurrent logins each finish within a few timeouts, not N of them
/// in turn, because one connect attempt is in flight at a time and the sessions waiting for
/// it fail at once when it fails (then fail fast during the backoff). Mail flows; nothing is
/// deleted without a durable copy.
#[test]
fn blackholed_redis_costs_concurrent_logins_one_timeout_not_n() {
    const N: usize = 10;
    const TIMEOUT: Duration = Duration::from_secs(3);
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let store = format!(
        "store:\n  backend: redis\n  redis:\n    url: redis://{}\n    key_prefix: bh\n    connect_timeout: 3s\n    command_timeout: 3s\n",
        hole.local_addr().unwrap()
    );
    let a = proxy(&d.pop3_addr(), &spam_rules("quarantine"), &store);
    let started = std::time::Instant::now();
    let logins: Vec<_> = (0..N)
        .map(|_| {
            let (addr, pass) = (a.addr.clone(), pass.clone());
            std::thread::spawn(move || {
                let f = poplib_fetch(&addr, "alice", &pass, &PoplibOpts::default());
                (f, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for l in logins {
        let (f, took) = l.join().unwrap();
        assert_eq!(f.messages, wire(&ham(&all)), "spam hidden (quarantine.on_failure), ham served");
        slowest = slowest.max(took);
    }
    // In turn, the N logins' first Redis calls alone would take N timeouts (30 s).
    assert!(slowest < TIMEOUT * (N as u32) / 2, "{N} concurrent logins: the last finished after {slowest:?}");
    assert_eq!(d.mailbox("alice").len(), all.len(), "nothing deleted without a durable copy");
    assert!(a.log().contains("redis store unreachable"), "{}", a.log());
    drop(hole);
}

fn write_messages(dir: &Path, kind: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let m = if kind == "spam" {
            format!("From: promo{i}@spam.example\r\nSubject: cheap pills winner {i}\r\n\r\nbuy\r\n")
        } else {
            format!("From: colleague{i}@work.example\r\nSubject: meeting notes {i}\r\n\r\nhi\r\n")
        };
        std::fs::write(dir.join(format!("{kind}{i}.eml")), m).unwrap();
    }
}

#[test]
fn trained_through_one_is_seen_by_the_other() {
    let redis = RedisServer::start();
    let extra = format!("{}bayes:\n  min_spam: 2\n  min_ham: 2\n", redis.store_yaml("train"));
    let a = proxy("127.0.0.1:9", "rules: []\n", &extra);
    let b = proxy("127.0.0.1:9", "rules: []\n", &extra);
    let out = train_three_of_each(&a);
    assert!(out.contains("redis"), "the summary names the store: {out}");
    // B's running process picks the new generation up from Redis (its poll is 1 s).
    b.wait_log("bayes model loaded");
    assert!(b.log().contains("spam=3") && b.log().contains("ham=3"), "{}", b.log());
    // And B's CLI reads the same model.
    let (ok, stats, err) = popsift_cli(&["train", "--config", &config(&b), "--stats"]);
    assert!(ok, "{err}");
    assert!(stats.contains("3 spam, 3 ham, 6 messages known"), "{stats}");
    drop(a);
}

#[test]
fn redis_stopped_mid_run_logins_keep_working_and_nothing_is_lost() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let mut redis = RedisServer::start();
    let rules = spam_rules("quarantine");
    let a = proxy(&d.pop3_addr(), &rules, &redis.store_yaml("down"));
    a.wait_log("redis store connected");

    redis.stop();
    let f = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(1);
    assert_eq!(f.messages, wire(&ham(&all)), "the login worked; spam hidden (quarantine.on_failure: hide)");
    assert_eq!(d.mailbox("alice").len(), all.len(), "no durable copy, so nothing was deleted");
    assert!(a.log().contains("redis store unreachable"), "{}", a.log());
    // The owner's "Not spam" overrides live in Redis too: unread, so this login condemns
    // nothing (no quarantine copy is even tried); the spam stays hidden.
    assert!(a.log().contains("overrides and released messages not read; this login condemns nothing"), "{}", a.log());
    assert_eq!(a.metric("popsift_store_degraded{reason=\"unreachable\"}"), Some(1.0));

    // Back: the model poll reconnects within the backoff (≤ 5 s), and the next login
    // quarantines (copies, then deletes) the spam.
    redis.start_again();
    wait_until(Duration::from_secs(20), "popsift to use redis again", || {
        a.metric("popsift_store_degraded{reason=\"unreachable\"}") == Some(0.0)
    });
    assert!(a.log().contains("redis store reachable again"));
    let f = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(2);
    assert_eq!(f.messages, wire(&ham(&all)));
    assert_eq!(d.mailbox("alice").len(), ham(&all).len(), "spam deleted after its copy was in Redis");
    let (ok, listed, err) = popsift_cli(&["quarantine", "--config", &config(&a), "list", "--json"]);
    assert!(ok, "{err}");
    assert_eq!(listed.lines().count(), spam(&all).len());
}

#[test]
fn redis_with_everysec_falls_back_to_hide_with_a_warning() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let redis = RedisServer::start_with("everysec");
    let a = proxy(&d.pop3_addr(), &spam_rules("quarantine"), &redis.store_yaml("es"));
    a.wait_log("redis is not durable");
    let f = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(1);
    assert_eq!(f.messages, wire(&ham(&all)), "spam hidden");
    assert_eq!(d.mailbox("alice").len(), all.len(), "nothing deleted without a durable copy");
    assert!(a.log().contains("appendfsync everysec"), "the warning says why: {}", a.log());
    assert_eq!(a.metric("popsift_store_degraded{reason=\"not_durable\"}"), Some(1.0));
    assert_eq!(redis.command(&["EXISTS", "es:q:all"]).as_deref(), Some(":0"), "no copy was written at all");
    assert_eq!(redis.command(&["EXISTS", "es:q:owner"]).as_deref(), Some(":0"));
    // The header cache's hash and the decision history (decisions, newest per UIDL, the
    // mailbox set, the id counter `h:seq`): logs, written whatever the durability; no
    // quarantine key at all.
    assert_eq!(redis.command(&["EXISTS", "es:h:seq"]).as_deref(), Some(":1"), "decision ids are reserved in Redis");
    assert_eq!(redis.command(&["DBSIZE"]).as_deref(), Some(":5"), "header cache and history only");
}

/// A Redis slower than `command_timeout` (a forwarder holding each reply 3 s; the timeout is
/// 500 ms): the login is not held up beyond the timeouts, spam is hidden, nothing deleted.
#[test]
fn slow_redis_never_stalls_a_login() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let redis = RedisServer::start();
    let slow = Forwarder::start(&format!("127.0.0.1:{}", redis.port));
    let store = redis.store_yaml("slow").replace(&redis.url(), &format!("redis://{}", slow.addr));
    let a = proxy(&d.pop3_addr(), &spam_rules("quarantine"), &store);
    a.wait_log("redis store connected");
    slow.set_delay(Duration::from_secs(3));
    let t = std::time::Instant::now();
    let f = poplib_fetch(&a.addr, "alice", &pass, &PoplibOpts::default());
    a.wait_sessions_finished(1);
    // Each Redis call gives up after 500 ms; the connection is then dropped and later
    // calls fail at once (backoff), so a whole login stays within a few timeouts.
    assert!(t.elapsed() < Duration::from_secs(10), "login took {:?}", t.elapsed());
    assert_eq!(f.messages, wire(&ham(&all)));
    assert_eq!(d.mailbox("alice").len(), all.len(), "no durable copy in time: nothing deleted");
    assert!(a.log().contains("timed out") && a.log().contains("redis store unreachable"), "{}", a.log());
}

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The shipped Redis fragment is what the quarantine needs: popsift finds it durable.
#[test]
fn shipped_redis_fragment_is_durable_for_popsift() {
    let redis = RedisServer::start_with_conf(&repo_file("deploy/redis/popsift-redis.conf"));
    assert_eq!(redis.bulk(&["CONFIG", "GET", "appendfsync"]), None, "an array reply, not a bulk string");
    let a = proxy("127.0.0.1:9", "rules: []\n", &redis.store_yaml("frag"));
    a.wait_log("redis store connected");
    assert!(a.log().contains("durability=Durable"), "{}", a.log());
    assert_eq!(a.metric("popsift_store_degraded{reason=\"not_durable\"}"), Some(0.0));
}

/// The shipped HAProxy config, with this test's addresses, in front of two instances
/// sharing one Redis: logins through it work, its POP3 health check passes, and the second
/// login is warm whichever instance it lands on.
#[test]
fn shipped_haproxy_config_balances_two_instances() {
    let haproxy = require_program("haproxy", "haproxy");
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let redis = RedisServer::start();
    let fwd = Forwarder::start(&d.pop3_addr());
    let rules = spam_rules("hide");
    let a = proxy(&fwd.addr, &rules, &redis.store_yaml("ha"));
    let b = proxy(&fwd.addr, &rules, &redis.store_yaml("ha"));
    let shipped = std::fs::read_to_string(repo_file("deploy/haproxy/popsift-n.cfg")).unwrap();
    let port = free_port();
    let cfg: String = shipped
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .map(|l| match l.trim() {
            "bind :110" => format!("    bind 127.0.0.1:{port}"),
            "default-server inter 10s fall 3 rise 2" => "    default-server inter 500ms fall 3 rise 1".to_string(),
            _ => l.to_string(),
        })
        .chain([format!("    server p1 {} check", a.addr), format!("    server p2 {} check", b.addr)])
        .collect::<Vec<_>>()
        .join("\n");
    assert!(cfg.contains(&format!("bind 127.0.0.1:{port}")), "the shipped config still has `bind :110`");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, format!("{cfg}\n")).unwrap();
    let check = Command::new(&haproxy).arg("-c").arg("-f").arg(&path).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let mut child = Command::new(&haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    // Both servers UP: their health checks (greeting +OK, QUIT) reached both instances.
    let checked = |p: &Popsift| p.log().matches("session finished").count() >= 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(checked(&a) && checked(&b)) {
        assert!(
            std::time::Instant::now() < deadline,
            "HAProxy's health checks did not reach both instances; haproxy log:\n{}\npopsift a:\n{}",
            std::fs::read_to_string(dir.path().join("haproxy.log")).unwrap_or_default(),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = poplib_fetch(&addr, "alice", &pass, &PoplibOpts::default());
    assert_eq!(first.messages, wire(&ham(&all)));
    let mark = fwd.sent().len();
    // leastconn with idle servers alternates; two more logins land on both instances.
    for _ in 0..2 {
        let again = poplib_fetch(&addr, "alice", &pass, &PoplibOpts::default());
        assert_eq!(again.messages, wire(&ham(&all)));
    }
    assert_eq!(tops(&fwd.sent()[mark..]), 0, "warm through either instance");
    let logins = |p: &Popsift| {
        p.log().lines().filter(|l| l.contains("session finished") && l.contains("user=\"alice\"")).count()
    };
    assert_eq!(logins(&a) + logins(&b), 3);
    assert!(logins(&a) >= 1 && logins(&b) >= 1, "leastconn spread the logins over both instances");
    let _ = child.kill();
    let _ = child.wait();
}

/// Trains 3 spam and 3 ham through `popsift train --all` with this instance's config; returns
/// the command's output (it fails the test if the command failed).
fn train_three_of_each(p: &Popsift) -> String {
    let msgs = tempfile::tempdir().unwrap();
    write_messages(&msgs.path().join("spam"), "spam", 3);
    write_messages(&msgs.path().join("ham"), "ham", 3);
    let (ok, out, err) = popsift_cli(&[
        "train",
        "--config",
        &config(p),
        "--all",
        "--spam",
        msgs.path().join("spam").to_str().unwrap(),
        "--ham",
        msgs.path().join("ham").to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    out
}
