//! popsift between a real Dovecot and real clients (Python poplib, fetchmail, getmail6).
//! Every test starts its own Dovecot (tests/support) and a popsift binary in front of it.
mod support;

use support::*;

fn alice(d: &Dovecot) -> (&'static str, String) {
    ("alice", d.password("alice").to_string())
}

#[test]
fn poplib_through_popsift_hides_spam_and_keeps_everything() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let before = d.mailbox(user);
    let direct = poplib_fetch(&d.pop3_addr(), user, &pass, &PoplibOpts::default());
    let rules = spam_rules("hide");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let through = poplib_fetch(&p.addr, user, &pass, &PoplibOpts::default());

    let ham = ham(&all);
    assert_eq!(through.messages.len(), ham.len(), "only ham is visible");
    assert_eq!(through.messages, wire(&ham), "ham byte-identical to the stored form");
    assert_eq!(through.stuffing_violations, 0);
    // Byte-identical to a direct fetch of the same messages.
    let direct_ham: Vec<Vec<u8>> =
        direct.messages.iter().zip(&all).filter(|(_, m)| m.kind == Kind::Ham).map(|(b, _)| b.clone()).collect();
    assert_eq!(through.messages, direct_ham);
    // UIDLs through popsift equal Dovecot's for the same messages; sizes too.
    let direct_ham_uidls: Vec<String> =
        direct.uidl.iter().zip(&all).filter(|(_, m)| m.kind == Kind::Ham).map(|((_, u), _)| u.clone()).collect();
    let through_uidls: Vec<String> = through.uidl.iter().map(|(_, u)| u.clone()).collect();
    assert_eq!(through_uidls, direct_ham_uidls);
    let direct_ham_sizes: Vec<u64> =
        direct.list.iter().zip(&all).filter(|(_, m)| m.kind == Kind::Ham).map(|((_, s), _)| *s).collect();
    assert_eq!(through.list.iter().map(|(_, s)| *s).collect::<Vec<_>>(), direct_ham_sizes);
    assert_eq!(through.stat, (ham.len(), direct_ham_sizes.iter().sum()));
    // Renumbered 1..V.
    assert_eq!(through.list.iter().map(|(n, _)| *n).collect::<Vec<_>>(), (1..=ham.len()).collect::<Vec<_>>());
    // CAPA: honest rewrite.
    let capa = through.capa.clone().expect("CAPA answered");
    assert!(capa.contains(&"PIPELINING".to_string()) && capa.contains(&"IMPLEMENTATION".to_string()));
    assert!(!capa.contains(&"STLS".to_string()));
    // The greeting is Dovecot's own: same text, and an APOP timestamp `<…@…>` (RFC 1939 §7),
    // which Dovecot makes anew for every connection, so only its shape can be compared here;
    // the APOP login below proves the relayed timestamp is the one Dovecot checks against.
    let stamp = |g: &str| {
        let (text, rest) = g.split_once('<').unwrap_or_else(|| panic!("no APOP timestamp in greeting {g:?}"));
        assert!(rest.ends_with('>') && rest.contains('@'), "malformed APOP timestamp in {g:?}");
        text.to_string()
    };
    assert_eq!(stamp(&through.greeting), stamp(&direct.greeting), "greeting text relayed unchanged");
    let apop = poplib_fetch(&p.addr, user, &pass, &PoplibOpts { apop: true, ..Default::default() });
    assert_eq!(apop.messages, through.messages, "APOP with the relayed timestamp logs in");
    // Hidden messages are still on the server; nothing changed.
    assert_eq!(d.mailbox(user), before);
    // The password never reaches the log.
    assert!(!p.log().contains(&pass), "password leaked into the log");
}

#[test]
fn delete_action_removes_spam_only_after_quit() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("delete");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    // A client that drops without QUIT deletes nothing, not even condemned spam.
    let dropped = poplib_fetch(&p.addr, user, &pass, &PoplibOpts { delete: true, quit: false, ..Default::default() });
    assert_eq!(dropped.messages.len(), ham(&all).len());
    // Whatever that session was going to do upstream is done once it logged its summary.
    p.wait_sessions_finished(1);
    assert_eq!(keys(&d.mailbox(user)), names(&all), "drop without QUIT: all messages present");
    // Keep mode with QUIT: condemned spam is gone, every ham message stays.
    let kept = poplib_fetch(&p.addr, user, &pass, &PoplibOpts::default());
    assert_eq!(kept.messages, wire(&ham(&all)));
    let after = d.mailbox(user);
    assert_eq!(keys(&after), names(&ham(&all)), "spam deleted at QUIT, ham kept");
    for m in ham(&all) {
        assert_eq!(after[&m.name], m.bytes, "ham {} unaltered on the server", m.name);
    }
}

#[test]
fn fetchmail_keep_and_delete_through_popsift() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("hide");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let expected: Vec<Vec<u8>> = ham(&all).iter().map(|m| lf_form(&expected_wire_form(&m.bytes))).collect();
    let got = fetchmail_fetch(&p.addr, user, &pass, true, Tls::None, None);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected, "fetchmail --keep gets the ham byte for byte");
    assert_eq!(keys(&d.mailbox(user)), names(&all), "--keep deletes nothing");
    let got = fetchmail_fetch(&p.addr, user, &pass, false, Tls::None, None);
    assert_eq!(got, expected);
    assert_eq!(
        keys(&d.mailbox(user)),
        names(&spam(&all)),
        "fetchmail deleted the ham it fetched; hidden spam untouched"
    );
}

#[test]
fn getmail_through_popsift() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("delete");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let got = getmail_fetch(&p.addr, user, &pass, false, Tls::None, None);
    assert_getmail_equal(&got, &wire(&ham(&all)));
    assert_eq!(keys(&d.mailbox(user)), names(&ham(&all)), "condemned spam deleted at getmail's QUIT");
    let got = getmail_fetch(&p.addr, user, &pass, true, Tls::None, None);
    assert_getmail_equal(&got, &wire(&ham(&all)));
    assert!(d.mailbox(user).is_empty());
}

#[test]
fn upstream_implicit_tls_and_starttls_with_test_ca() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("hide");
    for (addr, tls) in [(d.pop3s_addr(), "implicit"), (d.pop3_addr(), "starttls")] {
        let p = Popsift::start(&ProxyOpts {
            upstream: &addr,
            tls,
            ca: Some(d.ca_pem()),
            rules: &rules,
            ..Default::default()
        });
        let got = poplib_fetch(&p.addr, user, &pass, &PoplibOpts::default());
        assert_eq!(got.messages, wire(&ham(&all)), "over {tls}");
        // Without the test CA the certificate is refused: -ERR [SYS/TEMP], never plain text.
        let p = Popsift::start(&ProxyOpts { upstream: &addr, tls, rules: &rules, ..Default::default() });
        let err = try_poplib_fetch(&p.addr, user, &pass, &PoplibOpts::default()).unwrap_err();
        assert!(err.contains("SYS/TEMP"), "{tls}: {err}");
        assert!(p.log().contains("certificate") || p.log().contains("UnknownIssuer"), "{}", p.log());
    }
}

#[test]
fn fetchmail_full_top_equals_retr() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("hide");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let top = poplib_fetch(&p.addr, user, &pass, &PoplibOpts { top_lines: Some(99_999_999), ..Default::default() });
    assert_eq!(top.messages, wire(&ham(&all)));
}

#[test]
fn apop_through_popsift_to_dovecot() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("hide");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let got = poplib_fetch(&p.addr, user, &pass, &PoplibOpts { apop: true, ..Default::default() });
    assert_eq!(got.messages.len(), ham(&all).len());
    assert!(got.greeting.contains('<'), "APOP timestamp survives: {}", got.greeting);
}

#[test]
fn dovecot_lock_in_use_is_relayed() {
    let d = Dovecot::start(DovecotOptions { lock_session: true, ..Default::default() });
    let all = test_mailbox();
    d.deliver_all("alice", &all);
    let pass = d.password("alice").to_string();
    let rules = spam_rules("hide");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let mut first = RawPop::connect(&p.addr);
    first.login("alice", &pass);
    let err = try_poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts::default()).unwrap_err();
    assert!(err.contains("IN-USE"), "{err}");
    assert!(first.command("STAT").starts_with("+OK"), "first session unaffected");
    assert!(first.command("QUIT").starts_with("+OK"));
    assert_eq!(d.mailbox("alice").len(), all.len());
}

/// Issue 16: with Dovecot advertising PIPELINING before login, popsift sends the scan's
/// STAT, LIST, CAPA and UIDL behind PASS. A wrong password: the client sees Dovecot's `-ERR`
/// and nothing of the replies behind it (the next reply is its USER's, not a leftover
/// `-ERR Unknown command.`); the connection stays usable (Dovecot closes after three
/// invalid commands in a row: CAPA keeps them apart), the right password then logs in and
/// the mailbox is complete; the failed login is logged once.
#[test]
fn wrong_password_with_the_scan_pipelined_behind_pass() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let (user, pass) = alice(&d);
    let rules = spam_rules("hide");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), tls: "none", rules: &rules, ..Default::default() });
    let mut c = RawPop::connect(&p.addr);
    assert!(c.command(&format!("USER {user}")).starts_with("+OK"));
    let refused = c.command("PASS wrong-password");
    assert!(refused.starts_with("-ERR [AUTH]"), "{refused}");
    assert_eq!(c.command(&format!("USER {user}")), "+OK", "the reply to USER, nothing left over");
    assert!(c.command(&format!("PASS {pass}")).starts_with("+OK"));
    let stat = c.command("STAT");
    assert_eq!(stat.split(' ').nth(1), Some(ham(&all).len().to_string().as_str()), "{stat}");
    assert!(c.command("QUIT").starts_with("+OK"));
    p.wait_sessions_finished(1);
    let log = p.log();
    assert_eq!(log.matches("login failed:").count(), 1, "{log}");
    assert!(!log.contains("wrong-password") && !log.contains(&pass), "passwords are never logged");
    assert!(!log.contains("Unknown command"), "{log}");
}
