//! Per-user upstream (issue 14 item 1) with the real binary in front of two real Dovecot
//! instances (two "providers", both with a mailbox `alice` holding different mail), one
//! listener with `upstream_from_user` and no `upstream` of its own:
//!
//! - poplib and fetchmail log in as `127.0.0.1:PORT:alice` and get that provider's mail,
//!   filtered (a rule hides one message);
//! - AUTH PLAIN (initial response and challenge) is rewritten to the real user name;
//! - a server not in `allow` is refused with `-ERR [AUTH]` before any connection: a
//!   listening socket at that address records that nobody connected; `localhost` allowed
//!   only through a `*.example` pattern is refused the same way;
//! - malformed names (empty part, overlong host, another separator) get `-ERR` and the
//!   process keeps serving; each refusal is one stable failed-login line;
//! - the review page takes `HOST:USER` under the same allow list, and shows the quarantine
//!   copies keyed by the real server and user;
//! - the listener's `upstream_tls`/`upstream_ca` apply to the named server (implicit TLS).
mod support;

use std::net::TcpListener;

use support::*;

const RULES: &str = "rules:\n  - id: CASINO\n    header: Subject\n    keywords: [casino]\n    action: hide\n";

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: someone@people.example\r\nTo: alice@127.0.0.1\r\nSubject: {subject}\r\nMessage-ID: <{}@t>\r\n\r\nHello.\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}

/// A provider with `alice`, holding one message per subject.
fn provider(subjects: &[&str]) -> Dovecot {
    let d = Dovecot::start(DovecotOptions { lock_session: false, users: vec![("alice".into(), "alice-pw".into())] });
    for (i, s) in subjects.iter().enumerate() {
        d.deliver("alice", &format!("{i:04}.popsift-test"), &message(s));
    }
    d
}

fn subjects(messages: &[Vec<u8>]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m);
            text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("?").trim().to_string()
        })
        .collect()
}

/// popsift with one per-user-upstream listener allowing exactly `allow`.
fn proxy(allow: &[String]) -> Popsift {
    let list = allow.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    let listener = format!("    upstream_from_user: {{ separator: ':', allow: [{list}] }}\n");
    Popsift::start(&ProxyOpts { upstream: "", tls: "none", rules: RULES, listener: &listener, ..Default::default() })
}

#[test]
fn each_login_reaches_the_server_it_names_filtered() {
    let a = provider(&["lunch on friday", "casino bonus", "quarterly report"]);
    let b = provider(&["casino night", "invoice"]);
    let p = proxy(&[a.pop3_addr(), b.pop3_addr()]);

    let via_a = poplib_fetch(&p.addr, &format!("{}:alice", a.pop3_addr()), "alice-pw", &PoplibOpts::default());
    assert!(!via_a.greeting.contains('<'), "no APOP timestamp: {}", via_a.greeting);
    assert_eq!(subjects(&via_a.messages), ["lunch on friday", "quarterly report"]);
    let via_b = poplib_fetch(&p.addr, &format!("{}:alice", b.pop3_addr()), "alice-pw", &PoplibOpts::default());
    assert_eq!(subjects(&via_b.messages), ["invoice"]);

    let opts = FetchmailOpts { keep: true, tls: Tls::None, ca: None, auth: None };
    let fetched = fetchmail_fetch_with(&p.addr, &format!("{}:alice", b.pop3_addr()), "alice-pw", &opts);
    assert_eq!(subjects(&fetched), ["invoice"]);

    // Each session is logged (and its mailbox keyed) under the server it named.
    let log = p.log();
    for up in [a.pop3_addr(), b.pop3_addr()] {
        assert!(log.contains(&format!("upstream={up}")), "{up} not in the log:\n{log}");
    }
    // A wrong password is a failed login at the named server (the fail2ban line).
    let mut c = RawPop::connect(&p.addr);
    assert!(c.command(&format!("USER {}:alice", a.pop3_addr())).starts_with("+OK"));
    assert!(c.command("PASS wrong").starts_with("-ERR"));
    p.wait_log(&format!("user=\"alice\" upstream={} reason=upstream-refused", a.pop3_addr()));
}

#[test]
fn auth_plain_is_rewritten_for_the_named_server() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let a = provider(&["lunch on friday", "casino bonus"]);
    let p = proxy(&[a.pop3_addr()]);
    let name = format!("{}:alice", a.pop3_addr());

    let mut c = RawPop::connect(&p.addr);
    assert_eq!(c.command("CAPA"), "+OK Capability list follows");
    let capa = String::from_utf8(c.read_multiline()).unwrap();
    assert!(capa.contains("SASL PLAIN LOGIN\r\n") && capa.contains("USER\r\n"), "{capa}");
    let initial = b64(format!("\0{name}\0alice-pw").as_bytes());
    assert!(c.command(&format!("AUTH PLAIN {initial}")).starts_with("+OK"));
    assert!(c.command("STAT").starts_with("+OK 1 "), "one message shown, the casino one hidden");

    // Without an initial response: popsift's empty challenge, then the response.
    let mut c = RawPop::connect(&p.addr);
    assert_eq!(c.command("AUTH PLAIN"), "+ ");
    assert!(c.command(&b64(format!("{name}\0{name}\0alice-pw").as_bytes())).starts_with("+OK"));
    assert!(c.command("LIST 1").starts_with("+OK 1 "));
    assert!(c.command("LIST 2").starts_with("-ERR"), "the casino message is hidden");
    assert!(c.command("QUIT").starts_with("+OK"));
    // APOP cannot work here.
    let mut c = RawPop::connect(&p.addr);
    assert!(c.command("APOP alice c4c9334bac560ecc979e58001b3e22fb").starts_with("-ERR [AUTH]"));
}

#[test]
fn servers_not_allowed_are_refused_before_any_connection() {
    let a = provider(&["lunch on friday"]);
    // A POP3 port nobody may reach through popsift: any connection would be recorded.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let p = proxy(&[a.pop3_addr(), format!("*.example:{trap_port}")]);

    let mut c = RawPop::connect(&p.addr);
    let refused = [
        format!("USER 127.0.0.1:{trap_port}:alice"),
        // Matches no entry: a pattern names domains, and localhost is not under .example.
        format!("USER localhost:{trap_port}:alice"),
    ];
    for line in &refused {
        let r = c.command(line);
        assert!(r.starts_with("-ERR [AUTH]"), "{line}: {r}");
    }
    // Bad names: clear errors, the session goes on.
    let long = "h".repeat(300);
    for (line, why) in [
        (format!("USER :{}:alice", trap_port), "empty"),
        (format!("USER {}:", a.pop3_addr()), "empty"),
        (format!("USER {long}:alice"), "too long"),
        ("USER 127.0.0.1#alice".to_string(), "HOST:USER"),
        (format!("USER {}:0:alice", "127.0.0.1"), "bad port"),
    ] {
        let r = c.command(&line);
        assert!(r.starts_with("-ERR [AUTH]") && r.contains(why), "{line}: {r}");
    }
    assert!(matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "nobody connected");
    // The same session, and the process, still serve an allowed login.
    c.login(&format!("{}:alice", a.pop3_addr()), "alice-pw");
    assert!(c.command("STAT").starts_with("+OK 1 "));
    assert!(c.command("QUIT").starts_with("+OK"));
    let f = poplib_fetch(&p.addr, &format!("{}:alice", a.pop3_addr()), "alice-pw", &PoplibOpts::default());
    assert_eq!(f.messages.len(), 1);
    // Every refusal is one failed-login line for fail2ban, the upstream as named.
    p.wait_log(&format!("upstream=127.0.0.1:{trap_port} reason=upstream-not-allowed"));
    p.wait_log("upstream=- reason=upstream-not-allowed");
    assert!(matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock), "nobody connected");
}

/// One HTTP/1.1 exchange (`Connection: close`, read to EOF): (status, headers, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Logs in to the review page; the session cookie when the login was accepted.
fn ui_login(ui: &str, user: &str, pass: &str) -> Option<String> {
    let (_, h, page) = http(ui, "GET", "/login", &[], "");
    let cookie = header(&h, "set-cookie").expect("a login cookie").split(';').next().unwrap().to_string();
    let marker = "name=\"csrf\" value=\"";
    let i = page.find(marker).expect("a login token") + marker.len();
    let token = page[i..].split('"').next().unwrap();
    let form = ::popsift::ui::form_encode(&[("user", user), ("password", pass), ("csrf", token)]);
    let (status, h, _) = http(
        ui,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &cookie)],
        &form,
    );
    let session = header(&h, "set-cookie").filter(|c| c.starts_with("popsift_session"))?;
    assert_eq!(status, 303);
    Some(session.split(';').next().unwrap().to_string())
}

#[test]
fn the_review_page_takes_host_user_and_shows_that_mailbox() {
    let a = provider(&["lunch on friday", "casino bonus"]);
    let ui_port = free_port();
    let list = format!("'{}'", a.pop3_addr());
    let listener = format!("    upstream_from_user: {{ allow: [{list}] }}\n");
    let extra = format!("ui:\n  listen: 127.0.0.1:{ui_port}\n");
    let rules = RULES.replace("action: hide", "action: quarantine");
    let p = Popsift::start(&ProxyOpts {
        upstream: "",
        tls: "none",
        rules: &rules,
        listener: &listener,
        extra: &extra,
        ..Default::default()
    });
    let ui = format!("127.0.0.1:{ui_port}");
    wait_until(std::time::Duration::from_secs(20), "the review page to listen", || p.log().contains("review page on"));
    let name = format!("{}:alice", a.pop3_addr());
    let f = poplib_fetch(&p.addr, &name, "alice-pw", &PoplibOpts::default());
    assert_eq!(subjects(&f.messages), ["lunch on friday"]);
    assert_eq!(a.mailbox("alice").len(), 1, "the casino message went to the quarantine");

    assert!(ui_login(&ui, "alice", "alice-pw").is_none(), "no server named, none configured");
    assert!(ui_login(&ui, &format!("{}:alice", "evil.example"), "alice-pw").is_none(), "not allowed");
    assert!(ui_login(&ui, &name, "wrong").is_none());
    let cookie = ui_login(&ui, &name, "alice-pw").expect("HOST:USER logs in");
    // The quarantine copy is keyed by the real server and user: the owner sees it.
    let (status, _, page) = http(&ui, "GET", "/quarantine", &[("Cookie", &cookie)], "");
    assert!(status == 200 && page.contains("casino bonus"), "{status}: {page}");
}

#[test]
fn the_named_server_is_reached_over_the_listeners_upstream_tls() {
    let a = provider(&["lunch on friday", "casino bonus"]);
    // The listener's `upstream_tls` and `upstream_ca` apply to every server a login names.
    let listener = format!("    upstream_from_user: {{ allow: ['{}'] }}\n", a.pop3s_addr());
    let p = Popsift::start(&ProxyOpts {
        upstream: "",
        tls: "implicit",
        ca: Some(a.ca_pem()),
        rules: RULES,
        listener: &listener,
        ..Default::default()
    });
    let f = poplib_fetch(&p.addr, &format!("{}:alice", a.pop3s_addr()), "alice-pw", &PoplibOpts::default());
    assert_eq!(subjects(&f.messages), ["lunch on friday"]);
    // The plain port of the same server is not in `allow`.
    let e = try_poplib_fetch(&p.addr, &format!("{}:alice", a.pop3_addr()), "alice-pw", &PoplibOpts::default());
    assert!(e.is_err_and(|e| e.contains("-ERR [AUTH]")));
}
