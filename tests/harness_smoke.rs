//! Proves the integration-test harness against Dovecot directly (no popsift in between): the
//! server starts from its generated config, the test mailbox is delivered and served in order,
//! and every client (poplib plain/STLS/implicit TLS, fetchmail, getmail6) sees exactly
//! [`expected_wire_form`] of the stored messages (modulo the documented client transforms).
//! Deletion and lock semantics that the proxy tests rely on are pinned here too.
//!
//! These tests need Dovecot, fetchmail, getmail6 and python3 installed (`.ci/run`); a missing
//! one is a failure, never a skip.
mod support;

use support::*;

fn assert_messages_eq(client: &str, got: &[Vec<u8>], expected: &[Vec<u8>], mbox: &[TestMessage]) {
    assert_eq!(got.len(), expected.len(), "{client}: message count");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            g == e,
            "{client}: message {} ({}) differs: got {} bytes, expected {} bytes",
            i + 1,
            mbox[i].name,
            g.len(),
            e.len()
        );
    }
}

#[test]
fn mailbox_has_the_promised_shape() {
    let mbox = test_mailbox();
    assert!(mbox.len() >= 24, "a few dozen messages");
    assert!(mbox.iter().filter(|m| m.kind == Kind::Spam).count() >= 5);
    assert!(mbox.iter().any(|m| m.bytes.len() > 3_000_000));
    assert!(mbox.iter().any(|m| m.bytes.windows(3).any(|w| w == b"\n..")));
    assert!(mbox.iter().any(|m| m.bytes.windows(3).any(|w| w == b"\n.\n")));
    assert!(mbox.iter().any(|m| m.bytes.windows(2).any(|w| w == b"\r\n")));
    assert!(mbox.iter().any(|m| !m.bytes.ends_with(b"\n")));
    let mut names: Vec<&str> = mbox.iter().map(|m| m.name.as_str()).collect();
    let sorted = {
        let mut s = names.clone();
        s.sort();
        s
    };
    assert_eq!(names, sorted, "names sort in delivery order");
    names.dedup();
    assert_eq!(names.len(), mbox.len(), "names are unique");
    assert_eq!(expected_wire_form(b"a\nb"), b"a\r\nb\r\n");
    assert_eq!(expected_wire_form(b"a\r\nb\n"), b"a\r\nb\r\n");
}

#[test]
fn poplib_plain_stls_implicit_see_the_stored_messages_in_order() {
    let (d, mbox) = Dovecot::start_with_test_mailbox();
    let expected = wire(&mbox);
    let pass = d.password("alice").to_string();
    for (tls, addr) in [(Tls::None, d.pop3_addr()), (Tls::Stls, d.pop3_addr()), (Tls::Implicit, d.pop3s_addr())] {
        let f = poplib_fetch(
            &addr,
            "alice",
            &pass,
            &PoplibOpts { tls, ca: Some(d.ca_pem().to_path_buf()), ..Default::default() },
        );
        let client = format!("poplib {tls:?}");
        assert_eq!(f.stat.0, mbox.len(), "{client}: STAT count");
        let sizes: Vec<u64> = f.list.iter().map(|&(_, s)| s).collect();
        let want: Vec<u64> = mbox.iter().map(|m| expected_list_size(&m.bytes)).collect();
        assert_eq!(sizes, want, "{client}: LIST sizes");
        assert_eq!(f.stat.1, want.iter().sum::<u64>(), "{client}: STAT octets");
        assert_eq!(f.uidl.len(), mbox.len(), "{client}: UIDL");
        assert_eq!(f.stuffing_violations, 0, "{client}: dot-stuffing");
        assert_messages_eq(&client, &f.messages, &expected, &mbox);
        assert!(f.quit_reply.as_deref().unwrap_or("").starts_with("+OK"));
        if tls == Tls::None {
            let capa = f.capa.clone().unwrap_or_default();
            assert!(capa.iter().any(|c| c == "STLS"), "STLS offered: {capa:?}");
        }
    }
    // UIDLs are stable across sessions.
    let a = poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts::default());
    let b = poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts::default());
    assert_eq!(a.uidl, b.uidl);
    // TOP n <huge> is a full retrieval (fetchmail's habit).
    let t =
        poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts { top_lines: Some(99_999_999), ..Default::default() });
    assert_messages_eq("poplib TOP", &t.messages, &expected, &mbox);
    // APOP works (plaintext passwd-file).
    let ap = poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts { apop: true, ..Default::default() });
    assert_eq!(ap.stat.0, mbox.len());
    assert_eq!(d.mailbox("alice").len(), mbox.len(), "nothing deleted");
    assert_eq!(d.uidls("alice"), a.uidl, "Dovecot::uidls matches poplib");
}

#[test]
fn poplib_delete_empties_and_drop_without_quit_keeps() {
    let (d, mbox) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let dropped =
        poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts { delete: true, quit: false, ..Default::default() });
    assert_eq!(dropped.messages.len(), mbox.len());
    assert!(dropped.quit_reply.is_none());
    // The server notices the closed socket asynchronously; the session must not commit. Wait
    // until Dovecot has ended that session (its disconnect line), then look.
    wait_until(std::time::Duration::from_secs(20), "Dovecot to log the dropped session", || {
        d.log().lines().any(|l| l.contains("pop3(alice)") && l.contains("Disconnected"))
    });
    let stored = d.mailbox("alice");
    assert_eq!(stored.len(), mbox.len(), "drop without QUIT deletes nothing");
    for m in &mbox {
        assert_eq!(stored.get(&m.name), Some(&m.bytes), "{} intact", m.name);
    }
    let deleted = poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts { delete: true, ..Default::default() });
    assert_eq!(deleted.messages.len(), mbox.len());
    assert!(d.mailbox("alice").is_empty(), "DELE + QUIT empties");
}

#[test]
fn fetchmail_keep_plain_stls_implicit_then_delete() {
    let (d, mbox) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let expected: Vec<Vec<u8>> = wire(&mbox).iter().map(|m| lf_form(m)).collect();
    for (tls, addr) in [(Tls::None, d.pop3_addr()), (Tls::Stls, d.pop3_addr()), (Tls::Implicit, d.pop3s_addr())] {
        let got = fetchmail_fetch(&addr, "alice", &pass, true, tls, Some(d.ca_pem()));
        assert_messages_eq(&format!("fetchmail {tls:?}"), &got, &expected, &mbox);
    }
    assert_eq!(d.mailbox("alice").len(), mbox.len(), "--keep keeps");
    // USER/PASS instead of the default CRAM-MD5 works too.
    let got = fetchmail_fetch_with(
        &d.pop3_addr(),
        "alice",
        &pass,
        &FetchmailOpts { keep: true, tls: Tls::None, ca: None, auth: Some("password".into()) },
    );
    assert_eq!(got.len(), mbox.len());
    let got = fetchmail_fetch(&d.pop3_addr(), "alice", &pass, false, Tls::None, None);
    assert_eq!(got.len(), mbox.len());
    assert!(d.mailbox("alice").is_empty(), "fetchmail without keep deletes");
    let again = fetchmail_fetch(&d.pop3_addr(), "alice", &pass, false, Tls::None, None);
    assert!(again.is_empty(), "exit 1 (no mail) is an empty list");
}

#[test]
fn getmail_plain_and_implicit_then_delete() {
    let (d, mbox) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let expected = wire(&mbox);
    let got = getmail_fetch(&d.pop3_addr(), "alice", &pass, false, Tls::None, None);
    assert_getmail_equal(&got, &expected);
    let got = getmail_fetch(&d.pop3s_addr(), "alice", &pass, false, Tls::Implicit, Some(d.ca_pem()));
    assert_getmail_equal(&got, &expected);
    assert_eq!(d.mailbox("alice").len(), mbox.len(), "delete = false keeps");
    let got = getmail_fetch(&d.pop3_addr(), "alice", &pass, true, Tls::None, None);
    assert_eq!(got.len(), mbox.len());
    assert!(d.mailbox("alice").is_empty(), "delete = true deletes");
}

#[test]
fn lock_session_makes_the_second_login_in_use() {
    let d = Dovecot::start(DovecotOptions { lock_session: true, ..Default::default() });
    d.deliver("alice", "1001.one", b"Subject: one\n\nbody\n");
    let pass = d.password("alice").to_string();
    let mut first = RawPop::connect(&d.pop3_addr());
    assert!(first.greeting.starts_with("+OK"));
    first.login("alice", &pass);
    let err = try_poplib_fetch(&d.pop3_addr(), "alice", &pass, &PoplibOpts::default())
        .expect_err("second login must fail while the first holds the lock");
    assert!(err.contains("[IN-USE]"), "got: {err}");
    let mut second = RawPop::connect(&d.pop3_addr());
    assert!(second.command("USER alice").starts_with("+OK"));
    let r = second.command(&format!("PASS {pass}"));
    assert!(r.starts_with("-ERR [IN-USE]"), "got: {r}");
    assert!(first.command("QUIT").starts_with("+OK"));
    // Without the lock (Dovecot's default) two sessions coexist.
    let free = Dovecot::start(DovecotOptions::default());
    let mut a = RawPop::connect(&free.pop3_addr());
    a.login("alice", free.password("alice"));
    let mut b = RawPop::connect(&free.pop3_addr());
    b.login("alice", free.password("alice"));
}

#[test]
fn raw_client_reads_multiline_byte_exact() {
    let d = Dovecot::start(DovecotOptions::default());
    let mbox = test_mailbox();
    let dots = mbox.iter().find(|m| m.name.ends_with("ham-dot-lines")).expect("dot message");
    d.deliver("alice", &dots.name, &dots.bytes);
    let mut p = RawPop::connect(&d.pop3_addr());
    p.login("alice", d.password("alice"));
    assert!(p.command("RETR 1").starts_with("+OK"));
    assert_eq!(p.read_multiline(), expected_wire_form(&dots.bytes));
    assert!(p.command("QUIT").starts_with("+OK"));
}

#[test]
#[should_panic(expected = "install the Debian package `no-such-package`")]
fn a_missing_peer_fails_loudly() {
    require_program("popsift-no-such-program", "no-such-package");
}

#[test]
fn two_servers_run_side_by_side() {
    let a = Dovecot::start(DovecotOptions {
        users: vec![("alice".into(), "a-pw".into()), ("bob".into(), "b-pw".into())],
        ..Default::default()
    });
    let b = Dovecot::start(DovecotOptions::default());
    assert_ne!(a.pop3_addr(), b.pop3_addr());
    a.deliver("bob", "1001.for-bob", b"Subject: hi\n\nbob\n");
    let bob = poplib_fetch(&a.pop3_addr(), "bob", "b-pw", &PoplibOpts::default());
    assert_eq!(bob.messages, vec![b"Subject: hi\r\n\r\nbob\r\n".to_vec()]);
    let alice = poplib_fetch(&a.pop3_addr(), "alice", "a-pw", &PoplibOpts::default());
    assert_eq!(alice.stat, (0, 0));
    let wrong = try_poplib_fetch(&a.pop3_addr(), "bob", "a-pw", &PoplibOpts::default());
    assert!(wrong.expect_err("wrong password").contains("-ERR"));
    assert_eq!(b.mailbox("alice").len(), 0);
}
