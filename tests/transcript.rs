//! Session transcripts against the scripted fake upstream: only behaviour a real Dovecot
//! cannot be made to show (see tests/fake/mod.rs). Real-server tests are in tests/dovecot_*.rs.
mod fake;

use fake::popsift::{start as popsift, Client};
use fake::{msg, start as upstream, Behaviour};

const RULES: &str = r#"
rules:
  - id: HIDE_VIAGRA
    header: Subject
    regex: '(?i)viagra'
    action: hide
  - id: DELETE_LOTTERY
    header: Subject
    keywords: ["lottery winner"]
    action: delete
"#;

fn mailbox() -> Vec<Vec<u8>> {
    vec![
        msg("hello", "first ham\r\n.leading dot\r\n..two dots\r\n"),
        msg("cheap viagra", "spam to hide\r\n"),
        msg("you are a lottery winner", "spam to delete\r\n"),
        msg("second ham", "last\r\n"),
    ]
}

async fn login(c: &mut Client) {
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
}

#[tokio::test]
async fn filtered_view_and_update() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, greeting) = Client::connect(&p.addr).await;
    assert_eq!(greeting, "+OK fake POP3 ready <1896.697170952@fake.example>", "greeting relayed unchanged");
    let (status, caps) = c.multi("CAPA").await;
    assert!(status.starts_with("+OK"));
    let caps = String::from_utf8(caps).unwrap();
    assert!(caps.contains("PIPELINING\r\n") && caps.contains("IMPLEMENTATION popsift/") && caps.contains("SASL PLAIN"));
    login(&mut c).await;
    let m = mailbox();
    let total = m[0].len() + m[3].len();
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {total}"));
    let (_, list) = c.multi("LIST").await;
    assert_eq!(String::from_utf8(list).unwrap(), format!("1 {}\r\n2 {}\r\n.\r\n", m[0].len(), m[3].len()));
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uidl, b"1 uid-1\r\n2 uid-4\r\n.\r\n");
    let (status, body) = c.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {} octets", m[0].len()));
    assert_eq!(body, b"From: a@example.org\r\nSubject: hello\r\nMessage-ID: <hello@x>\r\n\r\nfirst ham\r\n..leading dot\r\n...two dots\r\n.\r\n", "dot-stuffing preserved");
    assert!(c.cmd("RETR 3").await.starts_with("-ERR no such message"));
    assert_eq!(c.cmd("DELE 2").await, "+OK message 2 deleted");
    assert!(c.cmd("DELE 2").await.contains("already deleted"));
    assert!(c.cmd("STLS").await.starts_with("-ERR"));
    assert_eq!(c.cmd("QUIT").await, "+OK bye");
    let log = up.log.lock().unwrap();
    assert_eq!(log.expunged, vec![3, 4], "condemned #3 and the client's #2 (upstream #4) deleted at QUIT");
    assert!(!log.commands.iter().any(|c| c == "DELE 2"), "hidden message untouched: {:?}", log.commands);
}

#[tokio::test]
async fn drop_without_quit_deletes_nothing() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    drop(c);
    // The session is over when popsift has closed its upstream connection: whatever it was
    // going to send (DELE, QUIT) it has sent by then.
    up.wait_closed(1).await;
    let log = up.log.lock().unwrap();
    assert!(log.expunged.is_empty());
    assert!(!log.commands.iter().any(|c| c.starts_with("DELE") || c == "QUIT"), "{:?}", log.commands);
}

#[tokio::test]
async fn pipelined_client_commands_answered_in_order() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    c.send("USER alice\r\nPASS pw\r\nSTAT\r\nRETR 2\r\nNOOP\r\nLIST 1\r\nRETR 1\r\nQUIT\r\n").await;
    let all = String::from_utf8(c.rest().await).unwrap();
    let m = mailbox();
    let expected_start =
        format!("+OK\r\n+OK logged in\r\n+OK 2 {}\r\n+OK {} octets\r\n", m[0].len() + m[3].len(), m[3].len());
    assert!(all.starts_with(&expected_start), "{all}");
    assert!(all.contains("last\r\n.\r\n+OK\r\n+OK 1 "), "{all}");
    assert!(all.ends_with("...two dots\r\n.\r\n+OK bye\r\n"), "{all}");
}

#[tokio::test]
async fn pipelined_relay_to_upstream_without_pipelining() {
    let b = Behaviour { capa: Some(vec!["TOP".into(), "UIDL".into(), "USER".into()]), ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    let (_, caps) = c.multi("CAPA").await;
    assert!(String::from_utf8(caps).unwrap().contains("PIPELINING"), "popsift pipelines for the client");
    c.send("USER alice\r\nPASS pw\r\nRETR 1\r\nRETR 2\r\nTOP 1 99999999\r\nQUIT\r\n").await;
    let all = String::from_utf8(c.rest().await).unwrap();
    assert_eq!(all.matches("first ham").count(), 2, "{all}");
    assert_eq!(all.matches("\r\nlast\r\n").count(), 1, "{all}");
    assert!(all.ends_with("+OK bye\r\n"));
    // The client pipelined, but the server did not offer PIPELINING (RFC 2449 §6.6): popsift
    // must send it one command at a time, each after the previous reply.
    let log = up.log.lock().unwrap();
    assert!(log.commands.iter().filter(|c| c.starts_with("RETR")).count() >= 2, "{:?}", log.commands);
    assert_eq!(log.pipelined, 0, "commands reached a non-pipelining server back to back: {:?}", log.commands);
}

#[tokio::test]
async fn apop_is_relayed() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, g) = Client::connect(&p.addr).await;
    assert!(g.ends_with("<1896.697170952@fake.example>"));
    assert!(c.cmd("APOP alice 00000000000000000000000000000000").await.starts_with("-ERR [AUTH]"));
    assert_eq!(c.cmd("APOP alice c4c9334bac560ecc979e58001b3e22fb").await, "+OK apop ok");
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
}

#[tokio::test]
async fn sasl_continuation_is_relayed() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert!(c.cmd("*").await.starts_with("-ERR"));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("AGFsaWNlAHB3").await, "+OK sasl ok");
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
}

#[tokio::test]
async fn err_after_correct_pass_is_relayed_and_nothing_scanned() {
    let b = Behaviour { err_after_correct_pass: true, ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS pw").await, "-ERR [IN-USE] mailbox locked by another session");
    assert!(c.cmd("STAT").await.starts_with("-ERR"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert!(!up.log.lock().unwrap().commands.iter().any(|c| c == "LIST"));
}

#[tokio::test]
async fn upstream_without_capa_top_uidl_passes_unfiltered() {
    let b = Behaviour { capa: None, top: false, uidl: false, ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    let (_, caps) = c.multi("CAPA").await;
    let caps = String::from_utf8(caps).unwrap();
    assert!(caps.starts_with("USER\r\nPIPELINING\r\nIMPLEMENTATION popsift/"), "{caps}");
    login(&mut c).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 4 "), "unfiltered");
    assert!(c.cmd("UIDL").await.starts_with("-ERR"));
    let (_, caps) = c.multi("CAPA").await;
    assert!(!String::from_utf8(caps).unwrap().contains("TOP"));
    assert_eq!(c.cmd("QUIT").await, "+OK bye");
    assert!(up.log.lock().unwrap().expunged.is_empty());
}

#[tokio::test]
async fn upstream_without_top_refused_when_configured() {
    let b = Behaviour { top: false, ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "scan:\n  without_top: refuse\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert!(c.cmd("PASS pw").await.starts_with("-ERR [SYS/PERM]"));
}

#[tokio::test]
async fn top_returning_whole_message_still_filters() {
    let b = Behaviour { top_returns_whole: true, ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    let (_, body) = c.multi("RETR 2").await;
    assert!(String::from_utf8(body).unwrap().contains("second ham"));
}

#[tokio::test]
async fn upstream_dying_mid_retr_closes_client_and_proxy_survives() {
    let b = Behaviour { die_mid_retr: Some(1), ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    assert!(c.cmd("RETR 1").await.starts_with("+OK"));
    let rest = c.rest().await;
    assert!(!rest.ends_with(b"\r\n.\r\n"), "a truncated reply must not look complete");
    assert!(up.log.lock().unwrap().expunged.is_empty());
    // popsift keeps serving.
    let (mut c2, g) = Client::connect(&p.addr).await;
    assert!(g.starts_with("+OK"));
    login(&mut c2).await;
    assert!(c2.cmd("STAT").await.starts_with("+OK 2"));
}

#[tokio::test]
async fn unreachable_upstream_gets_sys_temp() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = popsift(&format!("127.0.0.1:{port}"), RULES, "").await;
    let (_c, greeting) = Client::connect(&p.addr).await;
    assert!(greeting.starts_with("-ERR [SYS/TEMP]"), "{greeting}");
}

#[tokio::test]
async fn upstream_dying_at_quit_tells_client() {
    let b = Behaviour { die_at_quit: true, ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    let r = c.cmd("QUIT").await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
}

#[tokio::test]
async fn bad_commands_get_rfc_errors() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("RETR 1").await.starts_with("-ERR"));
    login(&mut c).await;
    assert!(c.cmd("RETR x").await.starts_with("-ERR RETR: invalid message number"));
    assert!(c.cmd("RETR 0").await.starts_with("-ERR no such message"));
    assert!(c.cmd("XYZZY").await.starts_with("-ERR unknown command"));
    assert!(c.cmd("LIST 99").await.starts_with("-ERR no such message"));
    assert!(c.cmd("RSET").await.starts_with("+OK maildrop has 2 messages"));
}

#[tokio::test]
async fn dry_run_shows_everything_and_deletes_nothing() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "dry_run: true\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 4 "));
    assert_eq!(c.cmd("QUIT").await, "+OK bye");
    assert!(up.log.lock().unwrap().expunged.is_empty());
}

const TAG_RULES: &str = r#"
rules:
  - id: SUBJ_PILLS
    header: Subject
    regex: '(?i)pills'
    score: 6.0
"#;

/// Unstuffs a raw multi-line body (with terminator) into the message bytes.
fn content(body: &[u8]) -> Vec<u8> {
    popsift::pop3::unstuff(&body[..body.len() - 3])
}

#[tokio::test]
async fn tagged_spam_has_exact_sizes() {
    let spam = b"From: s@spam.example\r\nX-Spam-Flag: NO\r\nSubject: cheap pills\r\n\r\n.dotted body\r\n".to_vec();
    let ham = msg("hello", "ham\r\n");
    let up = upstream(Behaviour::default(), vec![ham.clone(), spam.clone()]).await;
    let p = popsift(&up.addr, TAG_RULES, "tag:\n  subject_prefix: '[SPAM] '\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    let (_, list) = c.multi("LIST").await;
    let list = String::from_utf8(list).unwrap();
    let sizes: Vec<usize> =
        list.lines().filter(|l| *l != ".").map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    let (status, body) = c.multi("RETR 2").await;
    let tagged = content(&body);
    assert_eq!(sizes[1], tagged.len(), "LIST size equals the bytes RETR sends");
    assert_eq!(status, format!("+OK {} octets", tagged.len()));
    let text = String::from_utf8(tagged).unwrap();
    assert_eq!(
        text,
        "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=6.0 required=5.0 tests=SUBJ_PILLS\r\nX-Spam-Level: ******\r\nFrom: s@spam.example\r\nSubject: [SPAM] cheap pills\r\n\r\n.dotted body\r\n"
    );
    assert!(body.ends_with(b"\r\n..dotted body\r\n.\r\n"), "body stays stuffed");
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(content(&body), ham, "ham untouched");
    assert_eq!(sizes[0], ham.len());
    // TOP with a line count gets the same headers; fetchmail's full TOP equals RETR.
    let (_, top) = c.multi("TOP 2 0").await;
    assert!(String::from_utf8(content(&top)).unwrap().starts_with("X-Spam-Flag: YES\r\n"));
    let (_, full) = c.multi("TOP 2 99999999").await;
    assert_eq!(String::from_utf8(content(&full)).unwrap(), text);
    assert_eq!(c.cmd("QUIT").await, "+OK bye");
}

#[tokio::test]
async fn hung_upstream_hits_the_named_reply_timeout() {
    let b = Behaviour { stall_on_list: true, ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "timeouts:\n  upstream_reply: 1s\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    let r = c.cmd("PASS pw").await;
    assert!(r.starts_with("-ERR [SYS/TEMP]") && r.contains("scan timed out"), "{r}");
    assert!(c.rest().await.is_empty(), "connection closed after the error");
}

#[tokio::test]
async fn idle_client_is_logged_out_without_update() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "timeouts:\n  client_idle: 1s\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    let started = std::time::Instant::now();
    let rest = c.rest().await;
    assert_eq!(rest, b"-ERR autologout: idle for 1s\r\n");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    up.wait_closed(1).await;
    let log = up.log.lock().unwrap();
    assert!(log.expunged.is_empty(), "autologout performs no UPDATE (RFC 1939 §3)");
    assert!(!log.commands.iter().any(|c| c.starts_with("DELE") || c == "QUIT"), "{:?}", log.commands);
    drop(log);
}

#[tokio::test]
async fn overlong_client_line_gets_an_error_and_deletes_nothing() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    c.send(&"X".repeat(40_000)).await;
    let r = c.line().await;
    assert!(r.starts_with("-ERR line too long"), "{r}");
    up.wait_closed(1).await;
    let log = up.log.lock().unwrap();
    assert!(log.expunged.is_empty());
    assert!(!log.commands.iter().any(|c| c.starts_with("DELE") || c == "QUIT"), "{:?}", log.commands);
    drop(log);
    // popsift is still up.
    let (_c2, g) = Client::connect(&p.addr).await;
    assert!(g.starts_with("+OK"));
}

#[tokio::test]
async fn several_listeners_each_with_its_own_upstream() {
    use std::sync::Arc;
    let up1 = upstream(Behaviour::default(), mailbox()).await;
    let up2 = upstream(
        Behaviour { greeting: "+OK second server".into(), ..Behaviour::default() },
        vec![msg("only", "one\r\n")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.yaml"), RULES).unwrap();
    let yaml = format!(
        "listeners:\n  - listen: 127.0.0.1:0\n    upstream: {}\n    upstream_tls: none\n  - listen: 127.0.0.2:0\n    upstream: {}\n    upstream_tls: none\nmetrics: 'off'\nrules: {}\n",
        up1.addr,
        up2.addr,
        dir.path().join("r.yaml").display()
    );
    let file = popsift::config::ConfigFile::parse(&yaml, std::path::Path::new("t.yaml")).unwrap();
    let config = Arc::new(popsift::config::Config::build(file, &popsift::cli::ServeArgs::default()).unwrap());
    let rules = popsift::rules::RulesHandle::load(&config.rules, Default::default()).unwrap();
    let sockets = popsift::net::listener::bind(&config).await.unwrap();
    let addrs: Vec<String> = sockets.iter().map(|s| s.local_addr().unwrap().to_string()).collect();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(popsift::net::listener::serve(config, sockets, rules, rx));
    let (mut a, g1) = Client::connect(&addrs[0]).await;
    let (mut b, g2) = Client::connect(&addrs[1]).await;
    assert!(g1.starts_with("+OK fake POP3 ready"));
    assert_eq!(g2, "+OK second server");
    login(&mut a).await;
    login(&mut b).await;
    assert!(a.cmd("STAT").await.starts_with("+OK 2 "));
    assert!(b.cmd("STAT").await.starts_with("+OK 1 "));
}
