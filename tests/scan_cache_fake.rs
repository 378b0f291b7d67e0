//! The login scan with the header cache and the early answer, against the scripted fake
//! upstream: what Dovecot cannot be made to show (no PIPELINING, a UIDL reused for another
//! message, a slow TOP). Real-server cache tests are in tests/header_cache.rs.
mod fake;

use std::time::{Duration, Instant};

use fake::popsift::{start as popsift, Client};
use fake::{msg, start as upstream, Behaviour};

const RULES: &str = r#"
rules:
  - id: HIDE_VIAGRA
    header: Subject
    regex: '(?i)viagra'
    action: hide
"#;

fn mailbox() -> Vec<Vec<u8>> {
    vec![
        msg("hello", "first ham\r\n"),
        msg("cheap viagra", "spam to hide\r\n"),
        msg("second ham", "two\r\n"),
        msg("third ham", "three\r\n"),
        msg("more viagra", "spam\r\n"),
    ]
}

fn no_pipelining() -> Behaviour {
    Behaviour {
        capa: Some(vec!["TOP".into(), "UIDL".into(), "USER".into(), "SASL PLAIN".into()]),
        ..Behaviour::default()
    }
}

/// Logs in with USER/PASS and returns (STAT, LIST body, UIDL body), then QUITs.
async fn session(addr: &str) -> (String, Vec<u8>, Vec<u8>) {
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
    let stat = c.cmd("STAT").await;
    let (_, list) = c.multi("LIST").await;
    let (_, uidl) = c.multi("UIDL").await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    (stat, list, uidl)
}

fn tops(commands: &[String]) -> Vec<String> {
    commands.iter().filter(|c| c.starts_with("TOP ")).cloned().collect()
}

#[tokio::test]
async fn without_pipelining_one_at_a_time_then_warm_sends_no_top() {
    let up = upstream(no_pipelining(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let cold = session(&p.addr).await;
    assert_eq!(cold.0, format!("+OK 3 {}", mailbox()[0].len() + mailbox()[2].len() + mailbox()[3].len()));
    let first = up.commands();
    assert_eq!(tops(&first), ["TOP 1 0", "TOP 2 0", "TOP 3 0", "TOP 4 0", "TOP 5 0"]);
    assert_eq!(up.log.lock().unwrap().pipelined, 0, "never more than one command in flight without PIPELINING");

    let warm = session(&p.addr).await;
    assert_eq!(warm, cold, "the warm view equals the cold one");
    let second = up.commands()[first.len()..].to_vec();
    assert!(tops(&second).is_empty(), "warm login sent TOP: {second:?}");
    assert!(second.contains(&"UIDL".to_string()) && second.contains(&"LIST".to_string()));
}

#[tokio::test]
async fn with_pipelining_commands_are_pipelined() {
    // The counterpart of the test above, so that its `pipelined == 0` can fail.
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    session(&p.addr).await;
    assert!(up.log.lock().unwrap().pipelined > 0);
}

#[tokio::test]
async fn reused_uidl_with_another_size_is_a_miss() {
    let up = upstream(no_pipelining(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    let cold = session(&p.addr).await;
    assert!(String::from_utf8_lossy(&cold.2).contains("uid-3"));
    // The server reuses uid-3 for a different (spam) message of another size.
    let mut m = mailbox();
    m[2] = msg("viagra reused uidl", "a different message\r\n");
    assert_ne!(m[2].len(), mailbox()[2].len());
    up.set_messages(m.clone());
    let before = up.commands().len();
    let warm = session(&p.addr).await;
    let second = up.commands()[before..].to_vec();
    assert_eq!(tops(&second), ["TOP 3 0"], "only the changed message is fetched");
    // And it is judged by its new headers: now hidden.
    assert_eq!(warm.0, format!("+OK 2 {}", m[0].len() + m[3].len()));
    assert!(!String::from_utf8_lossy(&warm.2).contains("uid-3"));
}

/// A SASL PLAIN login is keyed by the identity inside the exchange (issue 10), never by a
/// USER tried before it: the second SASL login and a USER/PASS login as the same user are
/// warm, so all three used the key `alice`.
#[tokio::test]
async fn sasl_logins_use_the_cache_under_their_own_identity() {
    let up = upstream(Behaviour::default(), mailbox()).await;
    let p = popsift(&up.addr, RULES, "").await;
    for round in 0..2 {
        let before = up.commands().len();
        let (mut c, _) = Client::connect(&p.addr).await;
        // A failed USER first: its name must not become the cache key of the SASL login.
        assert!(c.cmd("USER bob").await.starts_with("+OK"));
        assert!(c.cmd("PASS nope").await.starts_with("-ERR"));
        assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
        assert_eq!(c.cmd("AGFsaWNlAHB3").await, "+OK sasl ok");
        assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
        let cmds = up.commands()[before..].to_vec();
        let expected = if round == 0 { 5 } else { 0 };
        assert_eq!(tops(&cmds).len(), expected, "round {round}: {cmds:?}");
    }
    let before = up.commands().len();
    session(&p.addr).await;
    assert!(tops(&up.commands()[before..]).is_empty(), "USER alice shares the SASL login's cache entries");
}

#[tokio::test]
async fn early_answer_then_first_command_waits_for_the_full_scan() {
    let b = Behaviour { top_delay: Some(Duration::from_millis(250)), ..no_pipelining() };
    let up = upstream(b, mailbox()).await;
    // 5 TOPs at 250 ms: the scan takes >= 1.25 s; the +OK is due after 300 ms.
    let p = popsift(&up.addr, RULES, "scan: { early_answer_after: 300ms }\ncache: { enabled: false }\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    let t0 = Instant::now();
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
    let login = t0.elapsed();
    assert!(login < Duration::from_millis(1000), "login answered after {login:?}");
    let tops_at_login = tops(&up.commands()).len();
    assert!(tops_at_login < 5, "the scan was still running at +OK ({tops_at_login} TOPs)");
    // The first command is answered from the complete, filtered view.
    let stat = c.cmd("STAT").await;
    let m = mailbox();
    assert_eq!(stat, format!("+OK 3 {}", m[0].len() + m[2].len() + m[3].len()), "spam hidden, nothing missing");
    assert!(t0.elapsed() >= Duration::from_millis(1250));
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uidl, b"1 uid-1\r\n2 uid-3\r\n3 uid-4\r\n.\r\n");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn early_answer_off_waits_for_the_scan() {
    let b = Behaviour { top_delay: Some(Duration::from_millis(250)), ..no_pipelining() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "scan: { early_answer_after: 'off' }\ncache: { enabled: false }\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    let t0 = Instant::now();
    assert_eq!(c.cmd("PASS pw").await, "+OK logged in");
    assert!(t0.elapsed() >= Duration::from_millis(1250));
    assert_eq!(tops(&up.commands()).len(), 5);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn early_answer_with_pipelined_commands_queued_behind_the_scan() {
    let b = Behaviour { top_delay: Some(Duration::from_millis(200)), ..no_pipelining() };
    let up = upstream(b, mailbox()).await;
    let p = popsift(&up.addr, RULES, "scan: { early_answer_after: 200ms }\ncache: { enabled: false }\n").await;
    let (mut c, _) = Client::connect(&p.addr).await;
    assert!(c.cmd("USER alice").await.starts_with("+OK"));
    // PASS and the TRANSACTION commands in one write: the +OK comes early, the rest in order.
    c.send("PASS pw\r\nSTAT\r\nNOOP\r\nQUIT\r\n").await;
    assert_eq!(c.line().await, "+OK logged in");
    assert!(c.line().await.starts_with("+OK 3 "));
    assert!(c.line().await.starts_with("+OK"));
    assert!(c.line().await.starts_with("+OK"));
}
