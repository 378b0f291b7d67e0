//! The stores behind their interfaces, once per backend with the same assertions (issue 15):
//! the embedded one (redb files, Maildir) and Redis (a real `redis-server` started by the
//! test, AOF on). Plus what only Redis can do wrong: not durable (`appendfsync everysec`),
//! stopped mid-run and back, and answering garbage.
mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use popsift::classify::store::{Batch, TrainedMessage};
use popsift::config::{RedisSettings, StoreSettings};
use popsift::pop3::multiline::HeaderBlock;
use popsift::store::header_cache::{Fresh, HeaderCache, Scope, Wanted};
use popsift::store::history::{
    mailbox_key, now_secs, Decision, History, HistorySettings, Query, RedbHistory, Released,
};
use popsift::store::quarantine::{Meta, Quarantine, QuarantineError};
use popsift::store::redis_cache::RedisHeaderCache;
use popsift::store::redis_history::RedisHistory;
use popsift::store::redis_model::{open_for_reading, open_for_writing};
use support::{wait_until, RedisServer};

const LIMIT: usize = 256 * 1024;

fn settings(r: &RedisServer, prefix: &str) -> RedisSettings {
    RedisSettings {
        url: r.url(),
        key_prefix: prefix.into(),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
    }
}

fn redis_store(r: &RedisServer, prefix: &str) -> StoreSettings {
    StoreSettings { redis: Some(settings(r, prefix)) }
}

/// One backend: its header cache, quarantine and model store settings.
struct Backend {
    name: &'static str,
    dir: tempfile::TempDir,
    store: StoreSettings,
    _redis: Option<RedisServer>,
}

impl Backend {
    fn redb() -> Backend {
        Backend { name: "redb", dir: tempfile::tempdir().unwrap(), store: StoreSettings::default(), _redis: None }
    }

    fn redis() -> Backend {
        let r = RedisServer::start();
        Backend { name: "redis", dir: tempfile::tempdir().unwrap(), store: redis_store(&r, "t"), _redis: Some(r) }
    }

    fn both() -> [Backend; 2] {
        [Backend::redb(), Backend::redis()]
    }

    /// A new cache object each call (like a second process, or a restart).
    fn cache(&self, max: u64) -> HeaderCache {
        match &self.store.redis {
            Some(r) => {
                HeaderCache::with_store(Box::new(RedisHeaderCache::new(popsift::store::redis::shared(r).unwrap(), max)))
            }
            None => HeaderCache::open(self.dir.path(), max).unwrap(),
        }
    }

    fn quarantine(&self) -> Quarantine {
        Quarantine::for_store(&self.store, &self.dir.path().join("quarantine"))
    }
}

fn hb(s: &str) -> HeaderBlock {
    HeaderBlock { bytes: s.as_bytes().to_vec(), truncated: false }
}

fn fresh(uidl: &str, size: u64, h: &str) -> Fresh {
    Fresh { uidl: Arc::from(uidl), size, headers: hb(h) }
}

fn want(uidl: &str, size: u64) -> Wanted {
    Wanted { uidl: Arc::from(uidl), size }
}

fn present(u: &[&str]) -> HashSet<Arc<str>> {
    u.iter().map(|s| Arc::from(*s)).collect()
}

#[test]
fn header_cache_same_assertions_on_both_backends() {
    for b in Backend::both() {
        let c = b.cache(1 << 20);
        let s = Scope::new("pop.example:995", "alice");
        assert_eq!(c.lookup_blocking(&s, &[want("u1", 100)], LIMIT), vec![None], "{}", b.name);
        c.update_blocking(&s, &[fresh("u1", 100, "Subject: a\r\n\r\n")], &present(&["u1"]));
        let got = c.lookup_blocking(&s, &[want("u1", 100), want("u1", 101), want("u2", 100)], LIMIT);
        assert_eq!(got[0].as_ref().unwrap().bytes, b"Subject: a\r\n\r\n", "{}", b.name);
        assert!(got[1].is_none(), "{}: same UIDL, other size is a miss", b.name);
        assert!(got[2].is_none(), "{}", b.name);
        // A reused UIDL is replaced, one entry.
        c.update_blocking(&s, &[fresh("u1", 101, "Subject: b\r\n\r\n")], &present(&["u1"]));
        assert_eq!(c.lookup_blocking(&s, &[want("u1", 101)], LIMIT)[0].as_ref().unwrap().bytes, b"Subject: b\r\n\r\n");
        assert_eq!(c.stats_blocking().unwrap().0, 1, "{}", b.name);

        // Scopes never leak, even with names that are prefixes of each other or contain ':'.
        let alice = Scope::new("h:110", "alice");
        let alic = Scope::new("h:110", "alic");
        let colon = Scope::new("h", "110:alice");
        c.update_blocking(&alice, &[fresh("eu1", 10, "A\r\n\r\n")], &present(&["eu1"]));
        assert!(c.lookup_blocking(&alic, &[want("eu1", 10)], LIMIT)[0].is_none(), "{}", b.name);
        assert!(c.lookup_blocking(&colon, &[want("eu1", 10)], LIMIT)[0].is_none(), "{}", b.name);

        // UIDLs gone from the server are evicted.
        let bob = Scope::new("h:110", "bob");
        c.update_blocking(&bob, &[fresh("a", 1, "A\r\n\r\n"), fresh("b", 2, "B\r\n\r\n")], &present(&["a", "b"]));
        c.update_blocking(&bob, &[], &present(&["b"]));
        let got = c.lookup_blocking(&bob, &[want("a", 1), want("b", 2)], LIMIT);
        assert!(got[0].is_none() && got[1].is_some(), "{}", b.name);

        // A block truncated at the cap hits only at the same cap.
        let d = Scope::new("h:110", "d");
        let h = HeaderBlock { bytes: vec![b'x'; 1024], truncated: true };
        c.update_blocking(&d, &[Fresh { uidl: Arc::from("t"), size: 5000, headers: h }], &present(&["t"]));
        assert!(c.lookup_blocking(&d, &[want("t", 5000)], 1024)[0].as_ref().unwrap().truncated, "{}", b.name);
        assert!(c.lookup_blocking(&d, &[want("t", 5000)], 2048)[0].is_none(), "{}", b.name);

        // Another cache object on the same store (a restart, or another instance) sees it all.
        drop(c);
        let again = b.cache(1 << 20);
        assert!(again.lookup_blocking(&alice, &[want("eu1", 10)], LIMIT)[0].is_some(), "{}", b.name);
    }
}

#[test]
fn header_cache_lookup_keeps_order_for_thousands() {
    for b in Backend::both() {
        let c = b.cache(1 << 30);
        let s = Scope::new("h:110", "g");
        let all: Vec<Fresh> = (0..3000u64)
            .filter(|i| i % 2 == 0)
            .map(|i| fresh(&format!("u{i}"), i, &format!("S: {i}\r\n\r\n")))
            .collect();
        c.update_blocking(&s, &all, &all.iter().map(|f| f.uidl.clone()).collect());
        let wanted: Vec<Wanted> = (0..3000u64).map(|i| want(&format!("u{i}"), i)).collect();
        let got = c.lookup_blocking(&s, &wanted, LIMIT);
        assert_eq!(got.len(), 3000);
        for (i, h) in got.iter().enumerate() {
            match h {
                Some(h) => {
                    assert_eq!((i % 2, h.bytes.as_slice()), (0, format!("S: {i}\r\n\r\n").as_bytes()), "{}", b.name)
                }
                None => assert_eq!(i % 2, 1, "{}", b.name),
            }
        }
    }
}

fn meta(user: &str, uidl: &str, size: u64) -> Meta {
    Meta { user: user.into(), upstream: "h:110".into(), uidl: uidl.into(), score: 7.5, rules: vec!["r1".into()], size }
}

#[test]
fn quarantine_same_assertions_on_both_backends() {
    for b in Backend::both() {
        let q = b.quarantine();
        let msg = b"From: spammer@example.com\r\nSubject: buy now\r\n\r\nbody\r\n.dot\r\n";
        let where_ = q.store(&meta("alice", "U1", msg.len() as u64), msg).unwrap();
        q.store(&meta("bob", "U2", 5), b"Subject: other\r\n\r\nx\r\n").unwrap();
        let list = q.list().unwrap();
        assert_eq!(list.len(), 2, "{}: {list:?}", b.name);
        let a = list.iter().find(|m| m.user == "alice").unwrap();
        assert_eq!((a.subject.as_str(), a.from.as_str(), a.uidl.as_str()), ("buy now", "spammer@example.com", "U1"));
        assert_eq!(a.rules, "r1", "{}", b.name);
        assert_eq!(q.original(&a.id).unwrap(), msg, "{}: restored byte for byte ({where_:?})", b.name);
        assert!(q.show(&a.id).unwrap().starts_with(b"X-Popsift-Quarantined: "), "{}", b.name);

        // Usage: the quota counts every copy; digests only from the upstream asked about.
        let u = q.usage("alice", "h:110");
        assert_eq!(u.messages, 1, "{}", b.name);
        assert!(u.bytes >= msg.len() as u64, "{}", b.name);
        assert_eq!(u.digests.len(), 1, "{}", b.name);
        assert!(q.usage("alice", "other:110").digests.is_empty(), "{}", b.name);
        let mut c = q.begin(&meta("alice", "U1", msg.len() as u64)).unwrap();
        c.write(msg).unwrap();
        assert!(u.digests.contains(&c.digest()), "{}: the same message has the same digest", b.name);
        drop(c);
        assert_eq!(q.list().unwrap().len(), 2, "{}: an abandoned copy leaves nothing", b.name);

        // Exact ids (the review page, released messages): a prefix names nothing, and
        // removing by a prefix removes nothing; the CLI keeps unique prefixes.
        let prefix = &a.id[..a.id.len() - 1];
        assert_eq!(q.show(prefix).unwrap(), q.show(&a.id).unwrap(), "{}: the CLI takes a prefix", b.name);
        assert_eq!(q.listed(&a.id).unwrap().id, a.id, "{}", b.name);
        assert!(matches!(q.listed(prefix), Err(QuarantineError::NotFound(_))), "{}", b.name);
        assert!(matches!(q.original_exact(prefix), Err(QuarantineError::NotFound(_))), "{}", b.name);
        assert!(matches!(q.remove_exact(prefix), Err(QuarantineError::NotFound(_))), "{}", b.name);
        assert!(q.remove_exact("").is_err() && q.original_exact("../alice").is_err(), "{}", b.name);
        assert_eq!(q.list().unwrap().len(), 2, "{}: nothing removed by a prefix", b.name);
        assert_eq!(q.original_exact(&a.id).unwrap(), msg, "{}", b.name);

        // Ids by unique prefix; remove takes it off the list and the quota.
        assert!(q.show("").is_err() && q.show("no-such-id").is_err(), "{}", b.name);
        q.remove(&a.id).unwrap();
        assert_eq!(q.list().unwrap().len(), 1, "{}", b.name);
        assert_eq!(q.usage("alice", "h:110").messages, 0, "{}", b.name);
        assert!(q.original(&a.id).is_err(), "{}", b.name);

        // A user name with spaces at its ends (the stored field is trimmed): removing the
        // copy still takes it off that user's quota.
        q.store(&meta(" carol ", "U3", 5), b"Subject: c\r\n\r\nx\r\n").unwrap();
        assert_eq!(q.usage(" carol ", "h:110").messages, 1, "{}", b.name);
        let c = q.list().unwrap().into_iter().find(|m| m.uidl == "U3").unwrap();
        q.remove(&c.id).unwrap();
        assert_eq!(q.usage(" carol ", "h:110").messages, 0, "{}: off the quota", b.name);
    }
}

fn history_of(b: &Backend, settings: HistorySettings) -> Box<dyn History> {
    match &b.store.redis {
        Some(r) => Box::new(RedisHistory::new(r, settings).unwrap()),
        None => Box::new(RedbHistory::open(b.dir.path(), settings).unwrap()),
    }
}

fn decision(mb: &str, uidl: &str, action: &str, subject: &str, time: u64) -> Decision {
    Decision {
        time,
        mailbox: mb.into(),
        uidl: uidl.into(),
        size: 100,
        from: "a@example.org".into(),
        subject: subject.into(),
        score: 6.0,
        threshold: 5.0,
        rules: vec!["r1".into()],
        action: action.into(),
        disposition: "hidden".into(),
        spam: action != "none",
        ..Decision::default()
    }
}

fn uidls(v: &[(u64, Decision)]) -> Vec<&str> {
    v.iter().map(|(_, d)| d.uidl.as_str()).collect()
}

#[test]
fn history_same_assertions_on_both_backends() {
    let q = |mb: &str| Query { mailbox: Some(mb.into()), limit: 100, ..Query::default() };
    for b in Backend::both() {
        let (m1, m2) = (mailbox_key("h:110", "alice"), mailbox_key("h:110", "bob"));
        let h = history_of(&b, HistorySettings::default());
        let now = now_secs();
        let n = h
            .record(&[decision(&m1, "u1", "hide", "Cheap pills", now), decision(&m1, "u2", "none", "Lunch", now)], now)
            .unwrap();
        assert_eq!(n, 2, "{}", b.name);
        h.record(&[decision(&m2, "u1", "quarantine", "Other box", now)], now).unwrap();
        let all = h.decisions(&q(&m1)).unwrap();
        assert_eq!(uidls(&all), ["u2", "u1"], "{}: newest first, one mailbox", b.name);
        let found = h.decisions(&Query { search: Some("PILLS".into()), ..q(&m1) }).unwrap();
        assert_eq!(uidls(&found), ["u1"], "{}", b.name);
        let found = h.decisions(&Query { action: Some("none".into()), ..q(&m1) }).unwrap();
        assert_eq!(uidls(&found), ["u2"], "{}", b.name);
        assert_eq!(h.decisions(&Query { limit: 10, ..Query::default() }).unwrap().len(), 3, "{}", b.name);
        assert_eq!(h.mailboxes().unwrap(), [m1.clone(), m2.clone()], "{}", b.name);
        assert_eq!(h.rule_counts(Some(&m1), now).unwrap(), vec![("r1".to_string(), [2, 2, 2])], "{}", b.name);
        let (seq, d) = &all[1];
        assert_eq!(h.decision(&m1, *seq).unwrap().as_ref(), Some(d), "{}", b.name);
        assert_eq!(h.decision(&m1, seq + 12345).unwrap(), None, "{}", b.name);
        let older = h.decisions(&Query { before: Some(all[0].0), ..q(&m1) }).unwrap();
        assert_eq!(uidls(&older), ["u1"], "{}: paging", b.name);

        // One message seen at many logins is one decision; a new verdict is a new one.
        assert_eq!(h.record(&[decision(&m1, "u1", "hide", "Cheap pills", now)], now).unwrap(), 0, "{}", b.name);
        assert_eq!(h.record(&[decision(&m1, "u1", "quarantine", "Cheap pills", now)], now).unwrap(), 1, "{}", b.name);

        // Overrides and releases: per mailbox, and seen by a second store object (another
        // instance, or a restart).
        h.show(&m1, "u1", now).unwrap();
        let r = Released { uidl: "popsift-r-ab".into(), quarantine_id: "q1".into(), size: 10, time: now };
        h.release(&m1, &r).unwrap();
        drop(h);
        let h = history_of(&b, HistorySettings::default());
        assert!(h.has_overrides(&m1), "{}", b.name);
        assert!(h.shown(&m1).unwrap().contains("u1") && h.shown(&m2).unwrap().is_empty(), "{}", b.name);
        assert_eq!(h.released(&m1).unwrap(), vec![r.clone()], "{}", b.name);
        assert_eq!(h.overrides_of(&m1).unwrap().1, vec![r], "{}", b.name);
        assert!(h.released(&m2).unwrap().is_empty(), "{}", b.name);
        h.unrelease(&m1, "popsift-r-ab").unwrap();
        assert!(h.released(&m1).unwrap().is_empty(), "{}", b.name);
    }
}

#[test]
fn history_is_bounded_by_count_and_age_on_both_backends() {
    for b in Backend::both() {
        let h = history_of(&b, HistorySettings { enabled: true, max_days: 30, max_per_mailbox: 3 });
        let mb = mailbox_key("h:110", "alice");
        let now = now_secs();
        let batch: Vec<Decision> = (0..5).map(|i| decision(&mb, &format!("u{i}"), "hide", "s", now)).collect();
        assert_eq!(h.record(&batch, now).unwrap(), 5, "{}", b.name);
        let q = Query { mailbox: Some(mb.clone()), limit: 100, ..Query::default() };
        assert_eq!(uidls(&h.decisions(&q).unwrap()), ["u4", "u3", "u2"], "{}", b.name);
        // A message whose decision was trimmed away is recorded again when seen.
        assert_eq!(h.record(&[decision(&mb, "u0", "hide", "s", now)], now).unwrap(), 1, "{}", b.name);
        // 31 days on, everything recorded now is too old: the next write prunes it.
        let later = now + 31 * 86_400;
        h.record(&[decision(&mb, "new", "hide", "s", later)], later).unwrap();
        assert_eq!(uidls(&h.decisions(&q).unwrap()), ["new"], "{}", b.name);
    }
}

/// The history's round trips per login on Redis: one read (`HMGET` of the UIDLs) when
/// nothing is new, plus one transaction (`MULTI`/`EXEC`) when something is; and the
/// login's override read is one pipeline. Never one per message.
#[test]
fn redis_history_round_trips_per_login_are_constant() {
    let r = RedisServer::start();
    let h = RedisHistory::new(&settings(&r, "rt"), HistorySettings::default()).unwrap();
    let mb = mailbox_key("h:110", "alice");
    let now = now_secs();
    let batch: Vec<Decision> = (0..2000).map(|i| decision(&mb, &format!("u{i}"), "hide", "s", now)).collect();
    let (hmget, multi) = (r.calls("hmget"), r.calls("multi"));
    assert_eq!(h.record(&batch, now).unwrap(), 2000);
    assert_eq!((r.calls("hmget") - hmget, r.calls("multi") - multi), (1, 1), "first login: read + write");
    let (hmget, multi) = (r.calls("hmget"), r.calls("multi"));
    assert_eq!(h.record(&batch, now).unwrap(), 0);
    assert_eq!((r.calls("hmget") - hmget, r.calls("multi") - multi), (1, 0), "unchanged mailbox: one read");
    let (hkeys, hvals) = (r.calls("hkeys"), r.calls("hvals"));
    h.overrides_of(&mb).unwrap();
    assert_eq!((r.calls("hkeys") - hkeys, r.calls("hvals") - hvals), (1, 1), "one pipeline");
}

/// Two instances recording the same mailbox at the same moment: every decision gets its own
/// id (sequences come from Redis, not from each process's clock), and each id finds its own
/// decision (the review page's "Not spam"/"Spam" forms act on the message they show).
#[test]
fn redis_history_ids_are_distinct_across_instances() {
    let r = RedisServer::start();
    let mb = mailbox_key("h:110", "alice");
    let now = now_secs();
    let per = 1000;
    for round in 0..3 {
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|who| {
                let (s, mb, barrier) = (settings(&r, "ids"), mb.clone(), barrier.clone());
                std::thread::spawn(move || {
                    // A store object per "instance".
                    let h = RedisHistory::new(&s, HistorySettings::default()).unwrap();
                    let batch: Vec<Decision> =
                        (0..per).map(|i| decision(&mb, &format!("{who}{round}-{i}"), "hide", "s", now)).collect();
                    barrier.wait();
                    h.record(&batch, now).unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), per);
        }
    }
    let h = RedisHistory::new(&settings(&r, "ids"), HistorySettings::default()).unwrap();
    let all = h.decisions(&Query { mailbox: Some(mb.clone()), limit: 100_000, ..Query::default() }).unwrap();
    assert_eq!(all.len(), 6 * per);
    let ids: HashSet<u64> = all.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(ids.len(), all.len(), "two decisions share an id");
    for (seq, d) in all.iter().step_by(97) {
        assert_eq!(h.decision(&mb, *seq).unwrap().as_ref(), Some(d), "id {seq} finds its own decision");
    }
    // Still times (the age trim and the rule counts read them as microseconds).
    assert!(all.iter().all(|(seq, _)| *seq / 1_000_000 >= now && *seq / 1_000_000 < now + 60));
}

/// A mailbox whose decisions expired leaves `h:mailboxes` when the list is read, not only
/// the list: the set does not keep every mailbox ever seen.
#[test]
fn redis_history_drops_expired_mailboxes_from_the_set() {
    let r = RedisServer::start();
    let h = RedisHistory::new(&settings(&r, "mbx"), HistorySettings::default()).unwrap();
    let (m1, m2) = (mailbox_key("h:110", "alice"), mailbox_key("h:110", "bob"));
    let now = now_secs();
    h.record(&[decision(&m1, "u1", "hide", "s", now), decision(&m2, "u1", "hide", "s", now)], now).unwrap();
    assert_eq!(r.command(&["SCARD", "mbx:h:mailboxes"]).as_deref(), Some(":2"));
    // As when its TTL runs out.
    let dead = format!("mbx:h:d:{}", popsift::store::redis::key_part(&m1));
    assert_eq!(r.command(&["DEL", &dead]).as_deref(), Some(":1"));
    assert_eq!(h.mailboxes().unwrap(), [m2.as_str()]);
    assert_eq!(r.command(&["SCARD", "mbx:h:mailboxes"]).as_deref(), Some(":1"), "the dead member is removed");
    assert_eq!(r.command(&["SISMEMBER", "mbx:h:mailboxes", &m2]).as_deref(), Some(":1"));
    // Recording into it again lists it again.
    h.record(&[decision(&m1, "u2", "hide", "s", now)], now).unwrap();
    assert_eq!(h.mailboxes().unwrap(), [m1, m2]);
}

/// The header cache on Redis: a login's lookup is one `HMGET` and its update one `EVAL`
/// (evictions, skipped and fresh blocks together), whatever the number of messages.
#[test]
fn redis_header_cache_round_trips_per_login_are_constant() {
    let r = RedisServer::start();
    let b = Backend { name: "redis", dir: tempfile::tempdir().unwrap(), store: redis_store(&r, "rtc"), _redis: None };
    let c = b.cache(256 << 20);
    let s = Scope::new("h:110", "alice");
    let n = 5000;
    let fresh: Vec<Fresh> = (0..n).map(|i| fresh(&format!("u{i}"), 100, "Subject: x\r\n\r\n")).collect();
    let uidls: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let all: Vec<&str> = uidls.iter().map(String::as_str).collect();
    let (hmget, eval) = (r.calls("hmget"), r.calls("eval"));
    c.update_blocking(&s, &fresh, &present(&all));
    let wanted: Vec<Wanted> = uidls.iter().map(|u| want(u, 100)).collect();
    assert!(c.lookup_blocking(&s, &wanted, LIMIT).iter().all(Option::is_some));
    // Half the messages gone from the server: evicted by the same one call.
    c.update_blocking(&s, &[], &present(&all[..n / 2]));
    assert_eq!((r.calls("hmget") - hmget, r.calls("eval") - eval), (1, 2));
    let found = c.lookup_blocking(&s, &wanted, LIMIT);
    assert_eq!(found.iter().filter(|f| f.is_some()).count(), n / 2);
    assert!(found[..n / 2].iter().all(Option::is_some));
}

/// A release is state the owner chose: on a Redis that may lose acknowledged writes it is
/// refused with the reason (nothing half-saved), and accepted once Redis is durable.
#[test]
fn redis_without_fsync_always_refuses_a_release() {
    let r = RedisServer::start_with("everysec");
    let h = RedisHistory::new(&settings(&r, "hr"), HistorySettings::default()).unwrap();
    let mb = mailbox_key("h:110", "alice");
    let rel = Released { uidl: "popsift-r-cd".into(), quarantine_id: "q2".into(), size: 10, time: 1 };
    let err = h.release(&mb, &rel).unwrap_err().to_string();
    assert!(err.contains("not durable") && err.contains("everysec"), "{err}");
    assert!(h.show(&mb, "u1", 1).is_err());
    assert!(h.released(&mb).unwrap().is_empty() && h.shown(&mb).unwrap().is_empty(), "nothing saved");
    assert_eq!(r.command(&["CONFIG", "SET", "appendfsync", "always"]).as_deref(), Some("+OK"));
    h.release(&mb, &rel).unwrap();
    assert_eq!(h.released(&mb).unwrap(), vec![rel]);
}

fn trained(spam: bool) -> TrainedMessage {
    TrainedMessage { spam, version: popsift::classify::TOKENS_VERSION, rules: vec!["r".into()] }
}

#[test]
fn model_store_same_assertions_on_both_backends() {
    for b in Backend::both() {
        let dir = b.dir.path();
        assert!(open_for_reading(dir, &b.store, Duration::from_secs(1)).unwrap().is_none(), "{}: none yet", b.name);
        {
            let w = open_for_writing(dir, &b.store).unwrap();
            let mut batch = Batch { nspam: 1, nham: 1, ..Batch::default() };
            batch.tokens.insert("viagra".into(), (1, 0));
            batch.tokens.insert("meeting".into(), (0, 1));
            batch.tokens.insert("the".into(), (1, 1));
            batch.add.push(([1u8; 32], trained(true)));
            batch.add.push(([2u8; 32], trained(false)));
            w.apply(&batch).unwrap();
        }
        let r = open_for_reading(dir, &b.store, Duration::from_secs(1)).unwrap().expect("a model now");
        let m = r.load().unwrap();
        assert_eq!((m.nspam(), m.nham(), m.token_count()), (1, 1, 3), "{}", b.name);
        assert_eq!((m.counts("the").spam, m.counts("the").ham), (1, 1), "{}", b.name);
        let g1 = r.generation().unwrap();
        assert_eq!(m.generation(), g1, "{}", b.name);
        assert_eq!(r.trained().unwrap().get(&[1u8; 32]), Some(&trained(true)), "{}", b.name);
        drop(r);
        {
            // Forget one: counts go back, the token that reaches zero disappears.
            let w = open_for_writing(dir, &b.store).unwrap();
            let mut batch = Batch { nspam: -1, ..Batch::default() };
            batch.tokens.insert("viagra".into(), (-1, 0));
            batch.tokens.insert("the".into(), (-1, 0));
            batch.remove.push([1u8; 32]);
            w.apply(&batch).unwrap();
        }
        let r = open_for_reading(dir, &b.store, Duration::from_secs(1)).unwrap().unwrap();
        let m = r.load().unwrap();
        assert_eq!((m.nspam(), m.nham(), m.token_count()), (0, 1, 2), "{}", b.name);
        assert!(r.generation().unwrap() > g1, "{}", b.name);
        assert!(!r.trained().unwrap().contains_key(&[1u8; 32]), "{}", b.name);
    }
}

/// `appendfsync everysec`: an acknowledged write may be lost in a crash, so no quarantine
/// copy is made (the session then hides the message, never deletes it), and the metric
/// and the error say why.
#[test]
fn redis_without_fsync_always_takes_no_quarantine_copy() {
    let r = RedisServer::start_with("everysec");
    let q = Quarantine::for_store(&redis_store(&r, "nd"), std::path::Path::new("/nonexistent"));
    let err = q.store(&meta("alice", "U1", 10), b"Subject: x\r\n\r\nbody\r\n").unwrap_err().to_string();
    assert!(err.contains("not durable") && err.contains("everysec"), "{err}");
    assert!(q.list().unwrap().is_empty(), "nothing was written");
    // Once the server is made durable at run time, copies are taken again.
    assert_eq!(r.command(&["CONFIG", "SET", "appendfsync", "always"]).as_deref(), Some("+OK"));
    q.store(&meta("alice", "U1", 10), b"Subject: x\r\n\r\nbody\r\n").unwrap();
    assert_eq!(q.list().unwrap().len(), 1);
}

/// Redis stopped mid-run: every call fails within the timeouts (then at once, during the
/// backoff), no quarantine copy is claimed, and once it is back the stores use it again
/// with the data it held (AOF).
#[test]
fn redis_stopped_and_back() {
    let mut r = RedisServer::start();
    let store = redis_store(&r, "sb");
    let b = Backend { name: "redis", dir: tempfile::tempdir().unwrap(), store: store.clone(), _redis: None };
    let c = b.cache(1 << 20);
    let q = b.quarantine();
    let s = Scope::new("h:110", "alice");
    c.update_blocking(&s, &[fresh("u1", 10, "A\r\n\r\n")], &present(&["u1"]));
    q.store(&meta("alice", "U1", 10), b"Subject: kept\r\n\r\nx\r\n").unwrap();

    r.stop();
    let t = Instant::now();
    assert_eq!(c.lookup_blocking(&s, &[want("u1", 10)], LIMIT), vec![None], "a miss, not an error");
    assert!(q.store(&meta("alice", "U2", 10), b"Subject: lost\r\n\r\nx\r\n").is_err(), "no durable copy: an error");
    assert!(open_for_writing(b.dir.path(), &store).unwrap().apply(&Batch { nspam: 1, ..Batch::default() }).is_err());
    c.update_blocking(&s, &[fresh("u2", 10, "B\r\n\r\n")], &present(&["u1", "u2"]));
    assert!(t.elapsed() < Duration::from_secs(3), "calls are bounded: {:?}", t.elapsed());
    assert!(q.usage("alice", "h:110").messages == u64::MAX, "unknown usage reads as a full quota");

    r.start_again();
    wait_until(Duration::from_secs(15), "the cache to answer from redis again", || {
        c.lookup_blocking(&s, &[want("u1", 10)], LIMIT)[0].is_some()
    });
    let list = q.list().unwrap();
    assert_eq!(list.len(), 1, "the copy made before the outage survived it (AOF): {list:?}");
    assert_eq!(list[0].subject, "kept");
}

/// A "Redis" that answers garbage: lookups miss, writes fail, nothing panics or hangs.
#[test]
fn garbage_answers_never_panic() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut conns = Vec::new();
        while stopped.recv_timeout(Duration::from_millis(5)).is_err() {
            if let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                conns.push(s);
            }
            for s in &mut conns {
                let mut buf = [0u8; 65536];
                if let Ok(n) = s.read(&mut buf) {
                    if n > 0 {
                        // Wrong types, a bad length, a stray status: for every request.
                        let _ = s.write_all(b":42\r\n+OK\r\n$3\r\nabc\r\n*1\r\n:7\r\n%junk\r\n");
                    }
                }
            }
        }
    });
    let settings = RedisSettings {
        url: format!("redis://127.0.0.1:{port}"),
        key_prefix: "g".into(),
        connect_timeout: Duration::from_millis(500),
        command_timeout: Duration::from_millis(500),
    };
    let store = StoreSettings { redis: Some(settings.clone()) };
    let c = HeaderCache::with_store(Box::new(RedisHeaderCache::new(
        popsift::store::redis::shared(&settings).unwrap(),
        1 << 20,
    )));
    let s = Scope::new("h:110", "alice");
    let t = Instant::now();
    assert_eq!(c.lookup_blocking(&s, &[want("u1", 10), want("u2", 10)], LIMIT), vec![None, None]);
    c.update_blocking(&s, &[fresh("u1", 10, "A\r\n\r\n")], &present(&["u1"]));
    let q = Quarantine::for_store(&store, std::path::Path::new("/nonexistent"));
    assert!(q.store(&meta("alice", "U1", 10), b"x\r\n").is_err());
    assert!(q.list().is_err() || q.list().unwrap().is_empty());
    let model = open_for_reading(std::path::Path::new("/nonexistent"), &store, Duration::from_secs(1))
        .map(|m| m.map(|m| m.load()));
    assert!(!matches!(model, Ok(Some(Ok(_)))), "no model is made out of garbage");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    stop.send(()).unwrap();
    server.join().unwrap();
}
