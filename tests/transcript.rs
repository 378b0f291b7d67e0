//! Session transcripts against the scripted fake upstream: only behaviour a real Dovecot
//! cannot be made to show (see tests/fake/mod.rs). Real-server tests are in tests/dovecot_*.rs.
mod fake;

use fake::popsift::{start as popsift, start_with_tls, Client};
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

/// Issue 16: pipelined RETRs of bodies that fill the client's output queue past its flush
/// size (64 KiB) are written partly straight from the upstream's read buffer (the end of
/// each body that fills the queue) and partly through the queue: the client still gets
/// every reply whole, byte for byte, in order (dot-stuffing kept).
#[tokio::test]
async fn pipelined_large_bodies_arrive_whole_and_in_order() {
    let body: String = (0..600)
        .map(|i| {
            if i % 50 == 7 {
                format!(".dot line {i}\r\n")
            } else {
                format!("filler line {i} of a larger message body ok\r\n")
            }
        })
        .collect();
    let mailbox: Vec<Vec<u8>> = (1..=4).map(|i| msg(&format!("big {i}"), &body)).collect();
    let up = upstream(Behaviour::default(), mailbox.clone()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    let order = [1, 2, 3, 4, 2, 4, 1, 3, 3, 1];
    let mut sent = String::from("USER alice\r\nPASS pw\r\n");
    for n in order {
        sent.push_str(&format!("RETR {n}\r\n"));
    }
    sent.push_str("QUIT\r\n");
    c.send(&sent).await;
    let all = c.rest().await;
    let mut want = b"+OK\r\n+OK logged in\r\n".to_vec();
    for n in order {
        let m = &mailbox[n - 1];
        want.extend_from_slice(format!("+OK {} octets\r\n", m.len()).as_bytes());
        for line in m.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                want.push(b'.');
            }
            want.extend_from_slice(line);
        }
        want.extend_from_slice(b".\r\n");
    }
    want.extend_from_slice(b"+OK bye\r\n");
    assert!(want.len() > 3 * 64 * 1024, "the replies fill the queue several times");
    assert_eq!(all.len(), want.len());
    assert!(all == want, "relayed replies differ");
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
    // The fake pipelines before login, so the scan's first requests went out behind PASS
    // (issue 16) and were refused with it; no scan followed: no TOP, no LIST of its own.
    let cmds = up.log.lock().unwrap().commands.clone();
    assert!(!cmds.iter().any(|c| c.starts_with("TOP")), "{cmds:?}");
    assert_eq!(cmds.iter().filter(|c| *c == "LIST").count(), 1, "{cmds:?}");
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
    let b = Behaviour { stall: Some("LIST"), ..Behaviour::default() };
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
    {
        let log = up.log.lock().unwrap();
        assert!(log.expunged.is_empty());
        assert!(!log.commands.iter().any(|c| c.starts_with("DELE") || c == "QUIT"), "{:?}", log.commands);
    }
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

/// `upstream_tls: starttls` and a server that refuses STLS: the login is refused before
/// anything else is sent (README: popsift never falls back to clear text). The client's
/// USER/PASS, sent anyway, never reach the server.
#[tokio::test]
async fn starttls_refused_by_the_server_sends_nothing_in_clear() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = start_with_tls(&up.addr, "starttls", RULES, "").await;
    let (mut c, greeting) = Client::connect(&p.addr).await;
    assert!(greeting.starts_with("-ERR [SYS/TEMP]"), "{greeting}");
    c.send("USER alice\r\nPASS pw\r\n").await;
    c.rest().await;
    up.wait_closed(1).await;
    assert_eq!(up.commands(), ["STLS"], "only STLS was sent in clear");
}

/// RFC 2595 §4 / the STARTTLS injection attack: bytes that follow the `+OK` to STLS before
/// the handshake are an attacker's; popsift refuses instead of reading them as replies later.
#[tokio::test]
async fn data_injected_after_the_stls_reply_is_refused() {
    let b = Behaviour { stls_reply: Some("+OK begin TLS\r\n+OK injected\r\n".into()), ..Behaviour::default() };
    let up = upstream(b, mailbox()).await;
    let p = start_with_tls(&up.addr, "starttls", RULES, "").await;
    let (mut c, greeting) = Client::connect(&p.addr).await;
    assert!(greeting.starts_with("-ERR [SYS/TEMP]"), "{greeting}");
    c.send("USER alice\r\nPASS pw\r\n").await;
    c.rest().await;
    up.wait_closed(1).await;
    assert_eq!(up.commands(), ["STLS"]);
    let after = up.log.lock().unwrap().after_stls.clone();
    assert!(after.is_empty(), "popsift went on after the injected data ({} bytes sent)", after.len());
}

/// DELE marks are popsift's until QUIT (README "How a session goes" 4, RFC 1939 §6), also
/// when a client pipelines hundreds of commands, which goes through the driver's read-ahead
/// (it tops up its queue from the client socket without waiting).
#[tokio::test]
async fn pipelined_dele_rset_quit_through_the_read_ahead_deletes_only_at_quit() {
    const N: usize = 300;
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let m = mailbox();

    // Without QUIT: marks, RSET, marks again, many RETRs, then the client vanishes.
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    let mut batch = String::from("DELE 1\r\nRSET\r\nDELE 1\r\nDELE 2\r\n");
    batch.push_str(&"STAT\r\n".repeat(N));
    c.send(&batch).await;
    for expect in ["+OK", "+OK", "+OK", "+OK"] {
        assert!(c.line().await.starts_with(expect));
    }
    for _ in 0..N {
        assert_eq!(c.line().await, "+OK 0 0", "both visible messages marked");
    }
    drop(c);
    up.wait_closed(1).await;
    {
        let log = up.log.lock().unwrap();
        assert!(log.expunged.is_empty(), "no QUIT, no UPDATE");
        assert!(!log.commands.iter().any(|c| c.starts_with("DELE") || c == "QUIT"), "{:?}", log.commands);
    }

    // With QUIT: DELE 1, RSET (unmarks it), DELE 2, N × (STAT, RETR 1), QUIT — one write.
    let before = up.commands().len();
    let (mut c, _) = Client::connect(&p.addr).await;
    login(&mut c).await;
    let mut batch = String::from("DELE 1\r\nRSET\r\nDELE 2\r\n");
    batch.push_str(&"STAT\r\nRETR 1\r\n".repeat(N));
    batch.push_str("QUIT\r\n");
    c.send(&batch).await;
    assert!(c.line().await.starts_with("+OK"), "DELE 1");
    assert!(c.line().await.starts_with("+OK"), "RSET");
    assert!(c.line().await.starts_with("+OK"), "DELE 2");
    for i in 0..N {
        assert_eq!(c.line().await, format!("+OK 1 {}", m[0].len()), "STAT #{i}");
        let status = c.line().await;
        assert_eq!(status, format!("+OK {} octets", m[0].len()), "RETR #{i}");
        let body = c.body().await;
        assert_eq!(content(&body), m[0]);
    }
    assert_eq!(c.line().await, "+OK bye");
    up.wait_closed(2).await;
    let log = up.log.lock().unwrap();
    let cmds = &log.commands[before..];
    // The DELEs go out only at QUIT: after every RETR, right before QUIT.
    let last_retr = cmds.iter().rposition(|c| c.starts_with("RETR")).unwrap();
    let deles: Vec<(usize, &String)> = cmds.iter().enumerate().filter(|(_, c)| c.starts_with("DELE")).collect();
    assert!(deles.iter().all(|(i, _)| *i > last_retr), "DELE before QUIT: {cmds:?}");
    let mut sent: Vec<&str> = deles.iter().map(|(_, c)| c.as_str()).collect();
    sent.sort();
    assert_eq!(sent, ["DELE 3", "DELE 4"], "condemned #3 and the client's #2 (upstream #4); #1 was RSET");
    assert_eq!(cmds.last().map(String::as_str), Some("QUIT"));
    assert_eq!(log.expunged, vec![3, 4]);
}

/// `max_sessions`: one more client gets `-ERR [SYS/TEMP]` at once, with no upstream
/// connection; when a session ends, its slot is free again.
#[tokio::test]
async fn max_sessions_refuses_the_extra_client_and_frees_the_slot() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "max_sessions: 1\n").await;
    let (mut a, g) = Client::connect(&p.addr).await;
    assert!(g.starts_with("+OK"));
    login(&mut a).await;
    let (mut b, g) = Client::connect(&p.addr).await;
    assert!(g.starts_with("-ERR [SYS/TEMP]") && g.contains("too many sessions"), "{g}");
    assert!(b.rest().await.is_empty(), "the refused connection is closed");
    assert_eq!(up.log.lock().unwrap().connections, 1, "the refused client cost no upstream connection");
    assert!(a.cmd("STAT").await.starts_with("+OK 2 "), "the running session is unaffected");
    assert_eq!(a.cmd("QUIT").await, "+OK bye");
    // The slot is released when the first session's task ends (bounded wait; each refused
    // attempt is answered at once).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_c, g) = Client::connect(&p.addr).await;
        if g.starts_with("+OK") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no free session slot after the first QUIT: {g}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Before login, STLS and unknown commands get their own `-ERR` reason (a clear error, not a
/// generic "not logged in"); nothing reaches the server.
#[tokio::test]
async fn authorization_state_errors_say_why() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    let r = c.cmd("STLS").await;
    assert!(r.starts_with("-ERR STLS is not available"), "{r}");
    assert_eq!(c.cmd("XYZZY").await, "-ERR unknown command");
    assert_eq!(c.cmd("STAT").await, "-ERR not logged in yet (AUTHORIZATION state)");
    assert_eq!(c.cmd("QUIT").await, "+OK bye");
    up.wait_closed(1).await;
    let cmds = up.commands();
    assert!(!cmds.iter().any(|c| c == "STLS" || c == "XYZZY" || c == "STAT"), "{cmds:?}");
}
