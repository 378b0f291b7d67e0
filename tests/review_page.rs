//! The review page (issue 13) between a real Dovecot, the popsift binary, Python poplib and
//! (in `browser_*`) a real headless Chromium driven through WebDriver.
//!
//! What is pinned here: a visitor who is not logged in sees no mail; a mailbox's owner sees
//! only their own decisions and quarantine; a POST without the session or without the CSRF
//! token changes nothing; "Not spam" on a quarantined message puts it back into the same
//! mailbox, byte for byte, with its own UIDL and exact LIST/STAT sizes, until the client
//! DELEs it and QUITs; a `<script>` Subject is shown as text.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// One HTTP/1.1 exchange (`Connection: close`): (status, headers lower-cased, body).
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    // Read the head, then Content-Length octets (chromedriver keeps the connection open
    // whatever `Connection: close` says), or to EOF without a length.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if raw.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("{method} {addr}{path}: {e}"));
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
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

fn enc(pairs: &[(&str, &str)]) -> String {
    ::popsift::ui::form_encode(pairs)
}

/// Fetches the login form (its CSRF cookie and field), then posts `user`/`pass`.
fn login_post(addr: &str, user: &str, pass: &str) -> (u16, Vec<(String, String)>, String) {
    let (_, h, page) = http(addr, "GET", "/login", &[], "");
    let cookie = header(&h, "set-cookie").expect("a login cookie").split(';').next().unwrap().to_string();
    let token = attr_after(&page, "name=\"csrf\" value=\"").expect("a login token");
    // Without the form's token (a login forged by another site) nothing happens.
    let forged = enc(&[("user", user), ("password", pass)]);
    let (status, fh, _) = http(
        addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &cookie)],
        &forged,
    );
    assert!(
        status == 403 && !header(&fh, "set-cookie").is_some_and(|c| c.starts_with("popsift_session")),
        "forged login: {status}"
    );
    let form = enc(&[("user", user), ("password", pass), ("csrf", &token)]);
    http(addr, "POST", "/login", &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &cookie)], &form)
}

/// A logged-in page client.
struct Browser<'a> {
    addr: &'a str,
    cookie: String,
}

impl Browser<'_> {
    fn login<'a>(addr: &'a str, user: &str, pass: &str) -> Browser<'a> {
        let (status, h, body) = login_post(addr, user, pass);
        assert_eq!(status, 303, "login as {user}: {body}");
        let set = header(&h, "set-cookie").expect("a session cookie");
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
        let cookie = set.split(';').next().unwrap().to_string();
        Browser { addr, cookie }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let (s, _, b) = http(self.addr, "GET", path, &[("Cookie", &self.cookie)], "");
        (s, b)
    }

    fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let (s, _, b) = http(
            self.addr,
            "POST",
            path,
            &[("Cookie", &self.cookie), ("Content-Type", "application/x-www-form-urlencoded")],
            &enc(form),
        );
        (s, b)
    }

    fn csrf(&self) -> String {
        let (_, page) = self.get("/decisions");
        attr_after(&page, "name=\"csrf\" value=\"").expect("a CSRF token on the page")
    }
}

/// The attribute value following `marker` in `page`.
fn attr_after(page: &str, marker: &str) -> Option<String> {
    let i = page.find(marker)? + marker.len();
    Some(page[i..].split('"').next()?.to_string())
}

fn spam_message(n: usize, subject: &str, user: &str) -> TestMessage {
    let bytes = format!(
        "From: Offers <deals{n}@spam.example>\r\nTo: {user}@example.org\r\nSubject: {subject}\r\nMessage-ID: <s{n}.{user}@spam.example>\r\n\r\nBuy now, {user}.\r\n.leading dot line\r\nlast line\r\n"
    )
    .into_bytes();
    TestMessage { name: format!("{}.popsift-test-spam{n}", 1001 + n), bytes, kind: Kind::Spam }
}

fn ham_message(n: usize, user: &str) -> TestMessage {
    let bytes = format!("From: Friend <friend@example.org>\r\nTo: {user}@example.org\r\nSubject: Lunch {n} for {user}\r\n\r\nSee you.\r\n")
        .into_bytes();
    TestMessage { name: format!("{}.popsift-test-ham{n}", 1001 + n), bytes, kind: Kind::Ham }
}

struct Setup {
    d: Dovecot,
    p: Popsift,
    ui: String,
}

fn users() -> Vec<(String, String)> {
    vec![("alice".into(), "alice-secret-pw".into()), ("bob".into(), "bob-secret-pw".into())]
}

fn setup(extra_ui: &str) -> Setup {
    let d = Dovecot::start(DovecotOptions { lock_session: false, users: users() });
    d.deliver_all(
        "alice",
        &[
            ham_message(0, "alice"),
            spam_message(1, "Cheap pills for alice", "alice"),
            spam_message(2, "<script>alert(1)</script>", "alice"),
        ],
    );
    d.deliver_all("bob", &[ham_message(0, "bob"), spam_message(1, "Bob only offer", "bob")]);
    let ui_port = free_port();
    let extra = format!("ui:\n  listen: 127.0.0.1:{ui_port}\n{extra_ui}");
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        rules: &spam_rules("quarantine"),
        extra: &extra,
        ..Default::default()
    });
    let ui = format!("127.0.0.1:{ui_port}");
    wait_until(Duration::from_secs(20), "the review page to listen", || p.log().contains("review page on"));
    Setup { d, p, ui }
}

/// Logs `user` in through popsift with poplib: the spam is quarantined (DELE at QUIT).
fn scan(s: &Setup, user: &str, opts: &PoplibOpts) -> PopFetch {
    poplib_fetch(&s.p.addr, user, s.d.password(user), opts)
}

#[test]
fn review_page_over_http_isolation_csrf_release_and_escaping() {
    let s = setup("");
    let alice = scan(&s, "alice", &PoplibOpts::default());
    assert_eq!(alice.messages.len(), 1, "only ham is visible at first");
    scan(&s, "bob", &PoplibOpts::default());
    assert_eq!(s.d.mailbox("alice").len(), 1, "the spam was quarantined and deleted upstream");

    // Not logged in: no mail, and a POST changes nothing.
    let (status, h, body) = http(&s.ui, "GET", "/decisions", &[], "");
    assert_eq!((status, header(&h, "location")), (303, Some("/login")));
    assert!(!body.contains("Cheap pills"));
    let (status, _, body) = http(&s.ui, "GET", "/quarantine", &[], "");
    assert!(status == 303 && !body.contains("Cheap pills"));
    let (status, _, _) =
        http(&s.ui, "POST", "/release", &[("Content-Type", "application/x-www-form-urlencoded")], "id=x&csrf=y");
    assert_eq!(status, 403);

    // A wrong password is refused by the mail server itself.
    let (status, h, body) = login_post(&s.ui, "alice", "wrong");
    assert!(
        status == 401 && !header(&h, "set-cookie").is_some_and(|c| c.starts_with("popsift_session")),
        "{status} {body}"
    );

    let a = Browser::login(&s.ui, "alice", s.d.password("alice"));
    // The decision history is written off the session: wait for it.
    wait_until(Duration::from_secs(20), "alice's decisions to be recorded", || {
        a.get("/decisions").1.contains("Cheap pills")
    });
    let (_, page) = a.get("/decisions");
    assert!(page.contains("Lunch 0 for alice"), "ham decisions are listed too");
    assert!(!page.contains("Bob only offer") && !page.contains("for bob"), "alice never sees bob's mail");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !page.contains("<script>"),
        "Subject shown as text"
    );
    assert!(page.contains(">Not spam</button>") && page.contains(">Spam</button>"));
    let (_, q) = a.get("/decisions?action=quarantine");
    assert!(q.contains("Cheap pills") && !q.contains("Lunch 0"));
    let (_, q) = a.get("/decisions?q=PILLS");
    assert!(q.contains("Cheap pills") && !q.contains("alert(1)"));
    // The detail: why (the rule and its description) and the headers as the server held them.
    let row = q.split("<tr").find(|r| r.contains("Cheap pills")).unwrap();
    let link = attr_after(row, "href=\"").unwrap().replace("&amp;", "&");
    let (status, detail) = a.get(&link);
    assert_eq!(status, 200, "{detail}");
    assert!(
        detail.contains("SPAM_DOMAIN") && detail.contains("the test mailbox&#39;s spam sender domain")
            || detail.contains("the test mailbox's spam sender domain"),
        "{detail}"
    );
    assert!(detail.contains("Message-ID: &lt;s1.alice@spam.example&gt;"), "{detail}");
    // What the rule matched, recorded at login: the header it read and the span.
    assert!(detail.contains("from:addr: </span>deals1<mark>@spam.example</mark>"), "{detail}");
    // Bob cannot open alice's decision by its address.
    assert_eq!(b_get_after_login(&s, &link).0, 404);

    // The quarantine page lists alice's two messages, not bob's.
    let (_, qpage) = a.get("/quarantine");
    assert!(qpage.contains("Cheap pills") && !qpage.contains("Bob only offer"));
    let b = Browser::login(&s.ui, "bob", s.d.password("bob"));
    let (_, bq) = b.get("/quarantine");
    let bob_id = attr_after(&bq, "name=\"id\" value=\"").expect("bob's quarantined message");
    // Alice cannot release or delete bob's message, even with her own valid token.
    let csrf = a.csrf();
    let (status, _) = a.post("/release", &[("csrf", &csrf), ("id", &bob_id)]);
    assert_eq!(status, 404);
    let (status, _) = a.post("/quarantine/delete", &[("csrf", &csrf), ("id", &bob_id)]);
    assert_eq!(status, 404);
    assert!(b.get("/quarantine").1.contains("Bob only offer"), "bob's message is still there");

    // Find alice's "Cheap pills" in her quarantine.
    let row = qpage.split("<tr>").find(|r| r.contains("Cheap pills")).expect("the row");
    let id = attr_after(row, "name=\"id\" value=\"").unwrap();
    // Forged: no token, or bob's token, or no session: nothing happens.
    let (status, _) = a.post("/release", &[("id", &id)]);
    assert_eq!(status, 403);
    let (status, _) = a.post("/release", &[("id", &id), ("csrf", &b.csrf())]);
    assert_eq!(status, 403);
    let after_forgery = scan(&s, "alice", &PoplibOpts::default());
    assert_eq!(after_forgery.messages.len(), 1, "forged POSTs released nothing");
    // Exact ids only: a prefix of the id (Maildir ids start with the epoch seconds, so a
    // prefix can name another user's copy later) releases and deletes nothing.
    let prefix = &id[..id.len() - 1];
    let (status, body) = a.post("/release", &[("csrf", &csrf), ("id", prefix)]);
    assert!(status == 404 && body.contains("nothing was changed"), "{status} {body}");
    let (status, body) = a.post("/quarantine/delete", &[("csrf", &csrf), ("id", prefix)]);
    assert!(status == 404 && body.contains("nothing was changed"), "{status} {body}");
    assert_eq!(a.get(&format!("/quarantine/view?id={prefix}")).0, 404);
    assert_eq!(scan(&s, "alice", &PoplibOpts::default()).messages.len(), 1, "a prefix released nothing");
    assert!(a.get("/quarantine").1.contains("Cheap pills"), "a prefix deleted nothing");

    // "Not spam": released into alice's mailbox.
    let (status, body) = a.post("/release", &[("csrf", &csrf), ("id", &id)]);
    assert_eq!(status, 200, "{body}");
    let original = spam_message(1, "Cheap pills for alice", "alice");
    let want = expected_wire_form(&original.bytes);
    let got = scan(&s, "alice", &PoplibOpts::default());
    assert_eq!(got.messages.len(), 2, "{:?}", got.uidl);
    assert_eq!(got.messages[1], want, "the released message is byte for byte what the server held");
    assert_eq!(got.stuffing_violations, 0);
    let (n, uidl) = &got.uidl[1];
    assert_eq!(*n, 2);
    assert!(uidl.starts_with("popsift-r-"), "{uidl}");
    assert_ne!(uidl, &got.uidl[0].1);
    assert_eq!(got.list[1], (2, want.len() as u64), "LIST size is exact");
    assert_eq!(got.stat, (2, got.list.iter().map(|(_, s)| s).sum()));
    // TOP n 0 answers its headers.
    let top = scan(&s, "alice", &PoplibOpts { top_lines: Some(0), ..Default::default() });
    assert!(top.messages[1].starts_with(b"From: Offers") && top.messages[1].ends_with(b"\r\n\r\n"));
    // Stable: the same UIDL at the next login (a client keeping mail on the server does
    // not fetch it twice).
    assert_eq!(scan(&s, "alice", &PoplibOpts::default()).uidl[1].1, *uidl);
    // Bob's mailbox did not get it.
    assert_eq!(scan(&s, "bob", &PoplibOpts::default()).messages.len(), 1);
    // Releasing twice is answered with a clear message, never a 500.
    let (status, body) = a.post("/release", &[("csrf", &csrf), ("id", "no-such-id")]);
    assert!(status == 404 && body.contains("nothing was changed"), "{status} {body}");

    // DELE + QUIT: gone from the view and from popsift's store.
    let del = scan(&s, "alice", &PoplibOpts { delete: true, ..Default::default() });
    assert_eq!(del.messages.len(), 2);
    let after = scan(&s, "alice", &PoplibOpts::default());
    assert!(after.messages.is_empty(), "{:?}", after.uidl);
    assert!(!a.get("/quarantine").1.contains("Cheap pills"), "the released copy left the quarantine");
    // The other quarantined message (the <script> one) is untouched.
    assert!(a.get("/quarantine").1.contains("&lt;script&gt;"));

    // Delete for good.
    let (_, qpage) = a.get("/quarantine");
    let id = attr_after(&qpage, "name=\"id\" value=\"").unwrap();
    let (status, _) = a.post("/quarantine/delete", &[("csrf", &csrf), ("id", &id)]);
    assert_eq!(status, 200);
    assert!(a.get("/quarantine").1.contains("The quarantine is empty"));

    // Log out: the cookie no longer works.
    let (status, _) = a.post("/logout", &[("csrf", &csrf)]);
    assert_eq!(status, 303);
    assert_eq!(a.get("/decisions").0, 303);
    // Login attempts are limited per address (five a minute): four so far, one more wrong
    // one, then 429 even with the right password.
    assert_eq!(login_post(&s.ui, "alice", "wrong").0, 401);
    assert_eq!(login_post(&s.ui, "alice", s.d.password("alice")).0, 429);
    // Passwords never reach the log.
    let log = s.p.log();
    assert!(!log.contains("alice-secret-pw") && !log.contains("bob-secret-pw"), "a password leaked into the log");
}

fn b_get_after_login(s: &Setup, path: &str) -> (u16, String) {
    Browser::login(&s.ui, "bob", s.d.password("bob")).get(path)
}

#[test]
fn not_spam_on_a_hidden_message_shows_it_from_the_next_login() {
    let d = Dovecot::start(DovecotOptions { lock_session: false, users: users() });
    d.deliver_all("alice", &[ham_message(0, "alice"), spam_message(1, "Hidden offer", "alice")]);
    let ui_port = free_port();
    let extra = format!("ui:\n  listen: 127.0.0.1:{ui_port}\n");
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        rules: &spam_rules("hide"),
        extra: &extra,
        ..Default::default()
    });
    let ui = format!("127.0.0.1:{ui_port}");
    wait_until(Duration::from_secs(20), "the review page to listen", || p.log().contains("review page on"));
    let first = poplib_fetch(&p.addr, "alice", d.password("alice"), &PoplibOpts::default());
    assert_eq!(first.messages.len(), 1);
    let a = Browser::login(&ui, "alice", d.password("alice"));
    wait_until(Duration::from_secs(20), "the decision", || a.get("/decisions").1.contains("Hidden offer"));
    let (_, page) = a.get("/decisions?action=hide");
    let row = page.split("<tr").find(|r| r.contains("Hidden offer")).unwrap();
    let (mb, seq) =
        (attr_after(row, "name=\"mb\" value=\"").unwrap(), attr_after(row, "name=\"seq\" value=\"").unwrap());
    let (status, body) = a.post("/notspam", &[("csrf", &a.csrf()), ("mb", &mb), ("seq", &seq)]);
    assert_eq!(status, 200, "{body}");
    let next = poplib_fetch(&p.addr, "alice", d.password("alice"), &PoplibOpts::default());
    assert_eq!(next.messages.len(), 2, "shown from the next login");
    assert_eq!(
        next.messages[1],
        expected_wire_form(&spam_message(1, "Hidden offer", "alice").bytes),
        "the server's copy"
    );
    // "Spam" on the ham trains it (the page says so) and changes no mail.
    let (_, page) = a.get("/decisions?q=Lunch");
    let row = page.split("<tr").find(|r| r.contains("Lunch 0")).unwrap();
    let (mb, seq) =
        (attr_after(row, "name=\"mb\" value=\"").unwrap(), attr_after(row, "name=\"seq\" value=\"").unwrap());
    let (status, body) = a.post("/spam", &[("csrf", &a.csrf()), ("mb", &mb), ("seq", &seq)]);
    assert!(status == 200 && body.contains("Trained as spam"), "{status} {body}");
    let (_, stats) = a.get("/stats");
    assert!(stats.contains("SPAM_DOMAIN") && stats.contains("Trained on 1 spam and 1 ham"), "{stats}");
}

/// The `Not spam` form of the decision whose row mentions `text`: (mb, seq).
fn decision_form(a: &Browser, text: &str) -> (String, String) {
    let (_, page) = a.get(&format!("/decisions?{}", enc(&[("q", text)])));
    let row = page
        .split("<tr")
        .find(|r| r.contains(text) && r.contains("name=\"mb\""))
        .unwrap_or_else(|| panic!("no row for {text}: {page}"));
    (attr_after(row, "name=\"mb\" value=\"").unwrap(), attr_after(row, "name=\"seq\" value=\"").unwrap())
}

#[test]
fn not_spam_with_the_allowlist_box_lets_the_sender_through_from_the_next_login() {
    let s = setup("");
    assert_eq!(scan(&s, "alice", &PoplibOpts::default()).messages.len(), 1);
    let a = Browser::login(&s.ui, "alice", s.d.password("alice"));
    wait_until(Duration::from_secs(20), "alice's decisions", || a.get("/decisions").1.contains("Cheap pills"));
    let (mb, seq) = decision_form(&a, "Cheap pills");
    let (status, body) = a.post("/notspam", &[("csrf", &a.csrf()), ("mb", &mb), ("seq", &seq), ("allow", "1")]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("is released") && body.contains("deals1@spam.example is on your allowlist"), "{body}");
    // The list file on disk: the address under a comment line.
    let list = s.p.dir.path().join("rules/users/alice@127.0.0.1/allowlist.txt");
    let text = std::fs::read_to_string(&list).unwrap_or_else(|e| panic!("{}: {e}", list.display()));
    assert!(text.starts_with('#') && text.lines().any(|l| l == "deals1@spam.example"), "{text}");
    // Twice: said so, nothing added.
    let (_, again) = a.post("/notspam", &[("csrf", &a.csrf()), ("mb", &mb), ("seq", &seq), ("allow", "1")]);
    assert!(again.contains("no longer in the quarantine") || again.contains("already on your allowlist"), "{again}");
    assert_eq!(std::fs::read_to_string(&list).unwrap().matches("deals1@spam.example").count(), 1);

    // A NEW message from that sender: the rules would quarantine it, the allowlist (hot
    // reloaded at the next login) lets it through unfiltered.
    let new = "From: Offers <deals1@spam.example>\r\nTo: alice@example.org\r\nSubject: Another offer\r\nMessage-ID: <new.alice@spam.example>\r\n\r\nHello again.\r\n";
    s.d.deliver("alice", "1009.popsift-test-new", new.as_bytes());
    let got = scan(&s, "alice", &PoplibOpts::default());
    assert!(
        got.messages.contains(&expected_wire_form(new.as_bytes())),
        "the new message is shown as sent: {:?}",
        got.uidl
    );
    // Another sender of that domain is still caught.
    assert!(s.d.mailbox("alice").len() >= 2, "nothing of alice's was deleted by the allowed login");
    // The `<script>` spam (deals2@) is still quarantined, not shown.
    assert!(!got.messages.iter().any(|m| String::from_utf8_lossy(m).contains("alert(1)")));

    // A mailbox server without per-mailbox rules: a clear message, the release still done.
    drop(a);
    let s2 = setup("rules_per_user:\n  enabled: false\n");
    scan(&s2, "alice", &PoplibOpts::default());
    let a2 = Browser::login(&s2.ui, "alice", s2.d.password("alice"));
    wait_until(Duration::from_secs(20), "alice's decisions", || a2.get("/decisions").1.contains("Cheap pills"));
    let (mb, seq) = decision_form(&a2, "Cheap pills");
    let (status, body) = a2.post("/notspam", &[("csrf", &a2.csrf()), ("mb", &mb), ("seq", &seq), ("allow", "1")]);
    assert!(status == 200 && body.contains("is released") && body.contains("no per-mailbox rules"), "{body}");
}

/// A mail server that greets and then never answers (a web login to it would otherwise hang
/// until the UI's 120 s connection limit cut the browser off).
#[test]
fn a_login_to_a_silent_mail_server_ends_at_the_named_timeout_with_a_clear_page() {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = server.local_addr().unwrap().to_string();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let silent = std::thread::spawn(move || {
        let mut held = Vec::new();
        server.set_nonblocking(true).unwrap();
        // Until the test ends: greet every connection, read, never answer.
        while stop_rx.try_recv().is_err() {
            match server.accept() {
                Ok((mut c, _)) => {
                    let _ = c.write_all(b"+OK silent server ready\r\n");
                    held.push(c);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    let ui_port = free_port();
    let p = Popsift::start(&ProxyOpts {
        upstream: &upstream,
        extra: &format!("ui:\n  listen: 127.0.0.1:{ui_port}\n  login_timeout: 2s\n"),
        ..Default::default()
    });
    let ui = format!("127.0.0.1:{ui_port}");
    wait_until(Duration::from_secs(20), "the review page to listen", || p.log().contains("review page on"));
    let started = std::time::Instant::now();
    let (status, _, body) = login_post(&ui, "alice", "pw");
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("did not answer the login check within 2 s"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(60), "ended by the named timeout, not a longer one");
    assert!(p.log().contains("ui.login_timeout"), "{}", p.log());
    let _ = stop_tx.send(());
    silent.join().unwrap();
}

/// A CA and a `localhost`/127.0.0.1 leaf signed by it, as PEM files in `dir`: (ca, cert, key).
fn make_pki(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("review page test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let paths =
        [dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}-cert.pem")), dir.join(format!("{name}-key.pem"))];
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], leaf_key.serialize_pem()).unwrap();
    let [ca, cert, key] = paths;
    (ca, cert, key)
}

/// `GET /login` over TLS verified against `ca`: the status line, or the TLS error.
fn https_status(addr: &str, ca: &std::path::Path) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(format!("GET /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    match text.lines().next() {
        Some(l) if l.starts_with("HTTP/1.1") => Ok(l.to_string()),
        _ => Err(format!("no HTTP answer: {text:?}")),
    }
}

/// The review page under TLS uses the listeners' certificate holder: re-read on SIGHUP, a
/// broken pair at reload keeps the old one.
#[test]
fn the_review_page_certificate_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, cert_a, key_a) = make_pki(dir.path(), "a");
    let (ca_b, cert_b, key_b) = make_pki(dir.path(), "b");
    let (cert, key) = (dir.path().join("live-cert.pem"), dir.path().join("live-key.pem"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let d = Dovecot::start(DovecotOptions::default());
    let ui_port = free_port();
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        extra: &format!(
            "ui:\n  listen: 127.0.0.1:{ui_port}\n  tls: {{ cert: {}, key: {} }}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    });
    let ui = format!("127.0.0.1:{ui_port}");
    wait_until(Duration::from_secs(20), "the review page to listen", || p.log().contains("review page on https"));
    assert!(https_status(&ui, &ca_a).is_ok_and(|l| l.contains(" 200")), "certificate A at start");
    assert!(https_status(&ui, &ca_b).is_err(), "certificate B is not served yet");
    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    p.signal("HUP");
    p.wait_log("TLS certificate reloaded");
    assert!(https_status(&ui, &ca_b).is_ok_and(|l| l.contains(" 200")), "certificate B after SIGHUP");
    assert!(https_status(&ui, &ca_a).is_err(), "certificate A is gone");
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    p.signal("HUP");
    p.wait_log("TLS certificate not reloaded; keeping the previous one");
    assert!(https_status(&ui, &ca_b).is_ok_and(|l| l.contains(" 200")), "certificate B kept");
}

#[test]
fn the_admin_sees_every_mailbox() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_popsift"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"admin-pw-123\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let s = setup(&format!("  admin_password_hash: '{hash}'\n"));
    scan(&s, "alice", &PoplibOpts::default());
    scan(&s, "bob", &PoplibOpts::default());
    assert_eq!(login_post(&s.ui, "admin", "wrong").0, 401);
    let admin = Browser::login(&s.ui, "admin", "admin-pw-123");
    wait_until(Duration::from_secs(20), "both mailboxes' decisions", || {
        let page = admin.get("/decisions").1;
        page.contains("Cheap pills") && page.contains("Bob only offer")
    });
    let (_, q) = admin.get("/quarantine");
    assert!(q.contains("Cheap pills") && q.contains("Bob only offer"));
    assert!(!s.p.log().contains("admin-pw-123"));
}

#[test]
fn a_non_loopback_ui_without_tls_refuses_to_start_and_a_busy_port_does_not_stop_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("popsift.yaml");
    std::fs::write(
        &cfg,
        "listeners:\n  - upstream: 127.0.0.1:1\n    upstream_tls: none\nui:\n  listen: 0.0.0.0:8080\nmetrics: 'off'\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_popsift"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ui.listen") && err.contains("tls"), "{err}");

    // The UI's port is taken: the proxy still serves POP3.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let d = Dovecot::start(DovecotOptions::default());
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        extra: &format!("ui:\n  listen: {busy_addr}\n"),
        ..Default::default()
    });
    let f = poplib_fetch(&p.addr, "alice", d.password("alice"), &PoplibOpts::default());
    assert!(f.messages.is_empty());
    assert!(p.log().contains("the review page is not running"), "{}", p.log());
}

// ---- a real browser ----

/// A chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wd(d: &Driver, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    wd_try(d, method, path, body).unwrap_or_else(|v| panic!("WebDriver {method} {path}: {v}"))
}

/// One WebDriver call: `Err` with the error value when the driver answers an error.
fn wd_try(
    d: &Driver,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, serde_json::Value> {
    let addr = d.url.trim_start_matches("http://");
    let text = if method == "GET" || method == "DELETE" { String::new() } else { body.to_string() };
    let (status, _, resp) = http(addr, method, path, &[("Content-Type", "application/json")], &text);
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap_or_else(|e| panic!("WebDriver {path}: {e}: {resp}"));
    if status == 200 {
        Ok(v["value"].clone())
    } else {
        Err(v)
    }
}

struct Page<'a> {
    d: &'a Driver,
    id: String,
}

impl Page<'_> {
    fn open(d: &Driver) -> Page<'_> {
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find_program("chromium").expect("chromium").display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1000,700"]
            }
        }}});
        let v = wd(d, "POST", "/session", caps);
        Page { d, id: v["sessionId"].as_str().expect("a session id").to_string() }
    }

    fn go(&self, url: &str) {
        wd(self.d, "POST", &format!("/session/{}/url", self.id), serde_json::json!({ "url": url }));
    }

    fn find(&self, using: &str, value: &str) -> String {
        let v = wd(
            self.d,
            "POST",
            &format!("/session/{}/element", self.id),
            serde_json::json!({"using": using, "value": value}),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("find {using} {value}: {v}"))
            .to_string()
    }

    fn type_in(&self, css: &str, text: &str) {
        let e = self.find("css selector", css);
        wd(self.d, "POST", &format!("/session/{}/element/{e}/value", self.id), serde_json::json!({ "text": text }));
    }

    fn click(&self, using: &str, value: &str) {
        let e = self.find(using, value);
        wd(self.d, "POST", &format!("/session/{}/element/{e}/click", self.id), serde_json::json!({}));
    }

    fn source(&self) -> String {
        wd(self.d, "GET", &format!("/session/{}/source", self.id), serde_json::Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's text once a navigation has settled and `cond` holds on it (a click on a
    /// submit button returns before the next page is there).
    fn text_when(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < end {
            let found = wd_try(
                self.d,
                "POST",
                &format!("/session/{}/element", self.id),
                serde_json::json!({"using": "css selector", "value": "body"}),
            );
            if let Ok(e) = found {
                let e = e["element-6066-11e4-a52e-4f735466cecf"].as_str().unwrap_or_default().to_string();
                let path = format!("/session/{}/element/{e}/text", self.id);
                if let Ok(t) = wd_try(self.d, "GET", &path, serde_json::Value::Null) {
                    last = t.as_str().unwrap_or_default().to_string();
                    if cond(&last) {
                        return last;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}; page text:\n{last}");
    }

    fn text(&self) -> String {
        let e = self.find("css selector", "body");
        wd(self.d, "GET", &format!("/session/{}/element/{e}/text", self.id), serde_json::Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = wd(self.d, "GET", &format!("/session/{}/screenshot", self.id), serde_json::Value::Null);
        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap()
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        let addr = self.d.url.trim_start_matches("http://").to_string();
        let _ = std::panic::catch_unwind(|| http(&addr, "DELETE", &format!("/session/{}", self.id), &[], ""));
    }
}

fn chromedriver() -> Driver {
    let bin = require_program("chromedriver", "chromium-driver");
    require_program("chromium", "chromium");
    let port = free_port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let d = Driver { child, url: format!("http://127.0.0.1:{port}") };
    wait_until(Duration::from_secs(20), "chromedriver to answer /status", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http(&format!("127.0.0.1:{port}"), "GET", "/status", &[], "").2.contains("\"ready\":true")
    });
    d
}

#[test]
fn browser_log_in_release_with_one_click_and_fetch_the_same_bytes() {
    let s = setup("");
    scan(&s, "alice", &PoplibOpts::default());
    scan(&s, "bob", &PoplibOpts::default());
    let driver = chromedriver();
    let page = Page::open(&driver);
    let base = format!("http://{}", s.ui);

    // Not logged in: the login form, no mail.
    page.go(&format!("{base}/decisions"));
    let text = page.text();
    assert!(text.contains("Log in") && !text.contains("Cheap pills"), "{text}");

    page.type_in("input[name=user]", "alice");
    page.type_in("input[name=password]", s.d.password("alice"));
    page.click("css selector", "button[type=submit]");
    page.text_when("the page after logging in", |t| t.contains("Log out"));
    wait_until(Duration::from_secs(20), "alice's decisions in the browser", || {
        page.go(&format!("{base}/decisions"));
        page.text().contains("Cheap pills")
    });
    let text = page.text();
    assert!(text.contains("<script>alert(1)</script>"), "the Subject is shown as text: {text}");
    assert!(!page.source().contains("<script>alert"), "and never as markup");
    assert!(!text.contains("Bob only offer"), "alice never sees bob's mail");
    let png = page.screenshot();
    assert!(png.starts_with(b"\x89PNG"));
    if std::env::var_os("POPSIFT_SAVE_SCREENSHOT").is_some() {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/review-page.png"), &png).unwrap();
    }

    // The detail page says what the rule matched.
    page.click("xpath", "//a[contains(., 'Cheap pills')]");
    let detail = page.text_when("the decision's detail", |t| t.contains("Why"));
    assert!(detail.contains("from:addr: deals1@spam.example"), "{detail}");

    // The quarantine: tick "add sender to my allowlist", one click on "Not spam" in the
    // row of "Cheap pills".
    page.go(&format!("{base}/quarantine"));
    assert!(page.text().contains("Cheap pills"));
    page.click("xpath", "//tr[td[contains(., 'Cheap pills')]]//input[@name='allow']");
    page.click("xpath", "//tr[td[contains(., 'Cheap pills')]]//button[text()='Not spam']");
    let t = page.text_when("the release to be confirmed", |t| t.contains("is released"));
    assert!(t.contains("deals1@spam.example is on your allowlist"), "{t}");

    let got = scan(&s, "alice", &PoplibOpts::default());
    let want = expected_wire_form(&spam_message(1, "Cheap pills for alice", "alice").bytes);
    assert_eq!(got.messages.len(), 2);
    assert_eq!(got.messages[1], want, "fetched with poplib: the same bytes the server held");
    assert_eq!(got.list[1].1, want.len() as u64);

    // Log out in the browser: the decisions page is gone.
    page.go(&format!("{base}/decisions"));
    page.click("xpath", "//button[text()='Log out']");
    page.text_when("the login form after logging out", |t| t.contains("User name"));
    page.go(&format!("{base}/decisions"));
    let t = page.text_when("the login form", |t| t.contains("User name"));
    assert!(!t.contains("Cheap pills"));
}
