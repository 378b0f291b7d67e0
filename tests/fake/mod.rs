//! A small scripted POP3 server, only for what a real Dovecot cannot be made to do: APOP
//! checks without a real digest, servers without CAPA/TOP/UIDL, `-ERR` after a correct PASS,
//! dying mid-RETR, a TOP that returns the whole message, a scan held at TOP until the test
//! lets it go, a garbled TOP reply, STLS refused or followed by injected bytes, and a slow
//! server (a greeting or a reply dribbled an octet at a time, a command never answered or
//! answered late: what per-read timeouts could not stop), and any reply a test scripts per
//! connection and command ([`Behaviour::script`]: the bad-input cases of issue 12 — a LIST
//! with gaps, sizes that are not numbers, a megabyte status line, garbage bytes, a TOP that
//! never ends, a close right after `+OK` to PASS, data nobody asked for). Everything
//! else is tested against Dovecot. The log records commands, pipelining, UPDATE deletions
//! and connections opened/closed (wait on those, never on time).
#![allow(dead_code)]

pub mod popsift;
pub mod scripted;
#[path = "../support/wait.rs"]
pub mod wait;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Behaviour {
    pub greeting: String,
    pub capa: Option<Vec<String>>,
    pub top: bool,
    pub uidl: bool,
    /// `TOP n 0` returns the whole message.
    pub top_returns_whole: bool,
    /// PASS with the right password still gets `-ERR [IN-USE] …`.
    pub err_after_correct_pass: bool,
    /// Close the connection halfway through the body of RETR of this message.
    pub die_mid_retr: Option<usize>,
    /// Close the connection instead of answering QUIT in TRANSACTION.
    pub die_at_quit: bool,
    /// Send the greeting one octet per interval, endlessly (watching for popsift's close).
    pub greeting_every: Option<Duration>,
    /// The reply to this command keyword (e.g. `USER`, `LIST`, `RETR`) is dribbled one
    /// octet per interval, endlessly: a status line that never ends, or a multi-line body
    /// that never finishes (what per-read timeouts could not stop).
    pub dribble: Option<(&'static str, Duration)>,
    /// This command keyword is never answered (a hung server); the connection stays open
    /// until popsift closes it.
    pub stall: Option<&'static str>,
    /// The (normal) reply to this command keyword comes only after this long.
    pub delay: Option<(&'static str, Duration)>,
    /// Every TOP (supported or not) waits for a permit of this semaphore before it is
    /// answered: the test holds the scan exactly as long as it wants (`add_permits` to let
    /// TOPs through), instead of guessing with delays.
    pub top_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Like `top_gate`, for RETR (a quarantine copy held as long as the test wants).
    pub retr_gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Answer `TOP n 0` for this message with a line that is neither `+OK` nor `-ERR` (the
    /// scan fails with a protocol error while the connection stays up).
    pub bad_top_reply: Option<usize>,
    /// Consulted for every command line (with the connection's number, from 0) before
    /// anything else: `Some` overrides the reply (a LIST with gaps, a megabyte status line,
    /// garbage, data nobody asked for …), `None` falls back to the behaviour above.
    pub script: Option<ScriptFn>,
    /// The raw reply to STLS (e.g. `"+OK\r\n+OK injected\r\n"`); `None`: `-ERR`.
    pub stls_reply: Option<String>,
    pub user: String,
    pub pass: String,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            greeting: "+OK fake POP3 ready <1896.697170952@fake.example>".into(),
            capa: Some(vec![
                "TOP".into(),
                "UIDL".into(),
                "USER".into(),
                "SASL PLAIN".into(),
                "PIPELINING".into(),
                "RESP-CODES".into(),
            ]),
            top: true,
            uidl: true,
            top_returns_whole: false,
            err_after_correct_pass: false,
            die_mid_retr: None,
            die_at_quit: false,
            greeting_every: None,
            script: None,
            dribble: None,
            stall: None,
            delay: None,
            top_gate: None,
            retr_gate: None,
            bad_top_reply: None,
            stls_reply: None,
            user: "alice".into(),
            pass: "pw".into(),
        }
    }
}

/// What the fake server saw, for assertions (passwords included: this is test data).
#[derive(Default, Debug)]
pub struct Log {
    pub commands: Vec<String>,
    /// The connection (numbered from 0) each of `commands` came on.
    pub conns: Vec<usize>,
    /// Messages deleted by a completed UPDATE (1-based numbers).
    pub expunged: Vec<usize>,
    /// Commands that arrived while the next one was already buffered: the client pipelined.
    pub pipelined: usize,
    /// Connections accepted.
    pub connections: usize,
    /// Connections that have ended (closed by either side).
    pub closed: usize,
    /// Raw bytes received after an accepted STLS (a TLS ClientHello would land here: the
    /// fake speaks no TLS).
    pub after_stls: Vec<u8>,
}

/// What the server does for one command when a [`Behaviour::script`] overrides it.
pub enum Reply {
    /// Send these bytes, then read the next command.
    Send(Vec<u8>),
    /// Send these bytes, then close the connection.
    SendThenClose(Vec<u8>),
    /// Send these bytes, then keep sending `chunk` until the peer goes away.
    SendForever(Vec<u8>, Vec<u8>),
    /// Send these bytes, then say nothing more (the connection stays open).
    SendThenHang(Vec<u8>),
}

pub type Script = dyn Fn(usize, &str) -> Option<Reply> + Send + Sync;

/// A script, shareable between connections.
#[derive(Clone)]
pub struct ScriptFn(pub Arc<Script>);

impl std::fmt::Debug for ScriptFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptFn")
    }
}

impl ScriptFn {
    pub fn new(f: impl Fn(usize, &str) -> Option<Reply> + Send + Sync + 'static) -> Option<ScriptFn> {
        Some(ScriptFn(Arc::new(f)))
    }
}

/// A small test message with the given Subject and body.
pub fn msg(subject: &str, body: &str) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\n\r\n{body}").into_bytes()
}

pub struct Fake {
    pub addr: String,
    pub log: Arc<Mutex<Log>>,
    /// The mailbox; each session sees the state at its connect (swap it between sessions to
    /// reuse UIDLs: message `i` always has UIDL `uid-i`).
    pub messages: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Fake {
    /// Commands received so far (a copy).
    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().commands.clone()
    }

    /// Commands received on connection `conn` (numbered from 0).
    pub fn commands_of(&self, conn: usize) -> Vec<String> {
        let l = self.log.lock().unwrap();
        l.commands.iter().zip(&l.conns).filter(|(_, c)| **c == conn).map(|(s, _)| s.clone()).collect()
    }

    /// Whether any connection sent a DELE.
    pub fn saw_dele(&self) -> bool {
        self.commands().iter().any(|c| c.to_ascii_uppercase().starts_with("DELE"))
    }

    pub fn set_messages(&self, m: Vec<Vec<u8>>) {
        *self.messages.lock().unwrap() = m;
    }

    /// How many `TOP` commands arrived so far.
    pub fn tops(&self) -> usize {
        self.log.lock().unwrap().commands.iter().filter(|c| c.starts_with("TOP ")).count()
    }

    /// Connections that have ended so far.
    pub fn closed(&self) -> usize {
        self.log.lock().unwrap().closed
    }

    /// Waits (bounded) until `n` connections have ended: the session upstream is over, so
    /// whatever it was going to send (QUIT, DELE) has been sent.
    pub async fn wait_closed(&self, n: usize) {
        let what = format!("{n} upstream connection(s) to close");
        wait::wait_until_async(std::time::Duration::from_secs(20), &what, || self.closed() >= n).await;
    }
}

/// Counts a connection as closed when its task ends, however it ends.
struct ClosedOnDrop(Arc<Mutex<Log>>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.lock() {
            l.closed += 1;
        }
    }
}

fn stuff(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// [`start`] for a test without a runtime of its own: the server runs on a runtime in a
/// thread of its own for the rest of the test process.
pub fn start_in_thread(b: Behaviour, messages: Vec<Vec<u8>>) -> Fake {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            tx.send(start(b, messages).await).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv().unwrap()
}

pub async fn start(b: Behaviour, messages: Vec<Vec<u8>>) -> Fake {
    let shared = Arc::new(Mutex::new(messages));
    let shared2 = shared.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Log::default()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let b = b.clone();
            let messages = shared2.lock().unwrap().clone();
            let log = log2.clone();
            let conn = {
                let mut l = log.lock().unwrap();
                l.connections += 1;
                l.connections - 1
            };
            tokio::spawn(async move {
                let _closed = ClosedOnDrop(log.clone());
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let greeting = format!("{}\r\n", b.greeting);
                match b.greeting_every {
                    Some(every) => {
                        // Dribble the greeting while watching for popsift's close.
                        for o in greeting.bytes().cycle() {
                            if w.write_all(&[o]).await.is_err() {
                                return;
                            }
                            let mut l = String::new();
                            tokio::select! {
                                n = r.read_line(&mut l) => if n.unwrap_or(0) == 0 { return },
                                _ = tokio::time::sleep(every) => {}
                            }
                        }
                    }
                    None => {
                        w.write_all(greeting.as_bytes()).await.ok();
                    }
                }
                let mut logged_in = false;
                let mut user_ok = false;
                let mut deleted = vec![false; messages.len()];
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end().to_string();
                    {
                        let mut lg = log.lock().unwrap();
                        lg.commands.push(l.clone());
                        lg.conns.push(conn);
                        if !r.buffer().is_empty() {
                            lg.pipelined += 1;
                        }
                    }
                    let mut parts = l.split(' ');
                    let kw = parts.next().unwrap_or("").to_ascii_uppercase();
                    let args: Vec<&str> = parts.collect();
                    let num = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
                    if let Some(reply) = b.script.as_ref().and_then(|s| (s.0)(conn, &l)) {
                        match reply {
                            Reply::Send(x) => {
                                if w.write_all(&x).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                            Reply::SendThenClose(x) => {
                                w.write_all(&x).await.ok();
                                w.shutdown().await.ok();
                                return;
                            }
                            Reply::SendForever(x, chunk) => {
                                if w.write_all(&x).await.is_err() {
                                    return;
                                }
                                // Bounded so a failing test does not leave a task spinning.
                                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                                while tokio::time::Instant::now() < deadline && w.write_all(&chunk).await.is_ok() {}
                                return;
                            }
                            Reply::SendThenHang(x) => {
                                w.write_all(&x).await.ok();
                                // Hold the connection open without a word until the peer closes it.
                                let mut rest = String::new();
                                while r.read_line(&mut rest).await.unwrap_or(0) > 0 {
                                    rest.clear();
                                }
                                return;
                            }
                        }
                    }
                    if b.stall.is_some_and(|k| k == kw) {
                        // Never answer; wait for popsift to close.
                        let mut rest = String::new();
                        while r.read_line(&mut rest).await.unwrap_or(0) > 0 {
                            rest.clear();
                        }
                        return;
                    }
                    if let Some((_, every)) = b.dribble.filter(|(k, _)| *k == kw) {
                        let start: &[u8] = if matches!(kw.as_str(), "LIST" | "UIDL" | "RETR" | "TOP" | "CAPA") {
                            b"+OK here it comes\r\n"
                        } else {
                            b"+OK "
                        };
                        if w.write_all(start).await.is_err() {
                            return;
                        }
                        loop {
                            let mut more = String::new();
                            tokio::select! {
                                n = r.read_line(&mut more) => if n.unwrap_or(0) == 0 { return },
                                _ = tokio::time::sleep(every) => {
                                    if w.write_all(b"x").await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    if let Some((_, d)) = b.delay.filter(|(k, _)| *k == kw) {
                        tokio::time::sleep(d).await;
                    }
                    if kw == "RETR" {
                        if let Some(gate) = &b.retr_gate {
                            match gate.acquire().await {
                                Ok(p) => p.forget(),
                                Err(_) => return,
                            }
                        }
                    }
                    if kw == "TOP" {
                        if let Some(gate) = &b.top_gate {
                            match gate.acquire().await {
                                Ok(p) => p.forget(),
                                Err(_) => return,
                            }
                        }
                        if b.bad_top_reply.is_some() && num(0) == b.bad_top_reply {
                            w.write_all(b"what?\r\n").await.ok();
                            continue;
                        }
                    }
                    let reply: Vec<u8> = match kw.as_str() {
                        "CAPA" => match &b.capa {
                            Some(c) => format!("+OK\r\n{}\r\n.\r\n", c.join("\r\n")).into_bytes(),
                            None => b"-ERR unknown command\r\n".to_vec(),
                        },
                        "STLS" if !logged_in => match &b.stls_reply {
                            Some(reply) if reply.starts_with("+OK") => {
                                // Accepted: from here on the client would speak TLS. Keep
                                // whatever arrives, raw, until the connection ends.
                                w.write_all(reply.as_bytes()).await.ok();
                                let mut raw = r.buffer().to_vec();
                                let mut chunk = [0u8; 4096];
                                loop {
                                    use tokio::io::AsyncReadExt;
                                    match r.get_mut().read(&mut chunk).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => raw.extend_from_slice(&chunk[..n]),
                                    }
                                }
                                log.lock().unwrap().after_stls = raw;
                                return;
                            }
                            Some(reply) => reply.clone().into_bytes(),
                            None => b"-ERR STLS not available\r\n".to_vec(),
                        },
                        "USER" => {
                            user_ok = args.first() == Some(&b.user.as_str());
                            b"+OK\r\n".to_vec()
                        }
                        "PASS" => {
                            if user_ok && args.join(" ") == b.pass {
                                if b.err_after_correct_pass {
                                    b"-ERR [IN-USE] mailbox locked by another session\r\n".to_vec()
                                } else {
                                    logged_in = true;
                                    b"+OK logged in\r\n".to_vec()
                                }
                            } else {
                                b"-ERR [AUTH] authentication failed\r\n".to_vec()
                            }
                        }
                        "APOP" => {
                            // Accept a fixed digest: the real digest check is Dovecot's job.
                            if args.first() == Some(&b.user.as_str())
                                && args.get(1) == Some(&"c4c9334bac560ecc979e58001b3e22fb")
                            {
                                logged_in = true;
                                b"+OK apop ok\r\n".to_vec()
                            } else {
                                b"-ERR [AUTH] bad digest\r\n".to_vec()
                            }
                        }
                        "AUTH" if args.first().map(|m| m.eq_ignore_ascii_case("PLAIN")) == Some(true) => {
                            // RFC 5034: empty challenge, then the base64 response line.
                            w.write_all(b"+ \r\n").await.ok();
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let resp = line.trim_end().to_string();
                            log.lock().unwrap().commands.push(resp.clone());
                            // "\0alice\0pw" in base64
                            if resp == "AGFsaWNlAHB3" {
                                logged_in = true;
                                b"+OK sasl ok\r\n".to_vec()
                            } else if resp == "*" {
                                b"-ERR canceled\r\n".to_vec()
                            } else {
                                b"-ERR [AUTH] sasl failed\r\n".to_vec()
                            }
                        }
                        "QUIT" => {
                            if logged_in {
                                if b.die_at_quit {
                                    return;
                                }
                                let mut lg = log.lock().unwrap();
                                for (i, d) in deleted.iter().enumerate() {
                                    if *d {
                                        lg.expunged.push(i + 1);
                                    }
                                }
                            }
                            w.write_all(b"+OK bye\r\n").await.ok();
                            return;
                        }
                        _ if !logged_in => b"-ERR not logged in\r\n".to_vec(),
                        "STAT" => {
                            let live: Vec<_> = messages.iter().zip(&deleted).filter(|(_, d)| !**d).collect();
                            format!("+OK {} {}\r\n", live.len(), live.iter().map(|(m, _)| m.len()).sum::<usize>())
                                .into_bytes()
                        }
                        "LIST" if args.is_empty() => {
                            let mut s = "+OK\r\n".to_string();
                            for (i, m) in messages.iter().enumerate() {
                                if !deleted[i] {
                                    s.push_str(&format!("{} {}\r\n", i + 1, m.len()));
                                }
                            }
                            s.push_str(".\r\n");
                            s.into_bytes()
                        }
                        "UIDL" if b.uidl && args.is_empty() => {
                            let mut s = "+OK\r\n".to_string();
                            for (i, d) in deleted.iter().enumerate() {
                                if !d {
                                    s.push_str(&format!("{} uid-{}\r\n", i + 1, i + 1));
                                }
                            }
                            s.push_str(".\r\n");
                            s.into_bytes()
                        }
                        "TOP" if b.top => match num(0).filter(|n| *n >= 1 && *n <= messages.len()) {
                            Some(n) => {
                                let m = &messages[n - 1];
                                let lines = args.get(1).and_then(|a| a.parse::<usize>().ok()).unwrap_or(0);
                                let body = if b.top_returns_whole {
                                    m.clone()
                                } else {
                                    // RFC 1939 §7: the header, the blank line, then k body lines.
                                    let end =
                                        m.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(m.len());
                                    let mut out = m[..end].to_vec();
                                    for line in m[end..].split_inclusive(|&c| c == b'\n').take(lines) {
                                        out.extend_from_slice(line);
                                    }
                                    out
                                };
                                let mut out = b"+OK\r\n".to_vec();
                                out.extend_from_slice(&stuff(&body));
                                out
                            }
                            None => b"-ERR no such message\r\n".to_vec(),
                        },
                        "RETR" => match num(0).filter(|n| *n >= 1 && *n <= messages.len()) {
                            Some(n) => {
                                let mut out = format!("+OK {} octets\r\n", messages[n - 1].len()).into_bytes();
                                let body = stuff(&messages[n - 1]);
                                if b.die_mid_retr == Some(n) {
                                    out.extend_from_slice(&body[..body.len() / 2]);
                                    w.write_all(&out).await.ok();
                                    return;
                                }
                                out.extend_from_slice(&body);
                                out
                            }
                            None => b"-ERR no such message\r\n".to_vec(),
                        },
                        "DELE" => match num(0).filter(|n| *n >= 1 && *n <= messages.len()) {
                            Some(n) => {
                                deleted[n - 1] = true;
                                b"+OK marked\r\n".to_vec()
                            }
                            None => b"-ERR no such message\r\n".to_vec(),
                        },
                        "NOOP" => b"+OK\r\n".to_vec(),
                        "RSET" => {
                            deleted.iter_mut().for_each(|d| *d = false);
                            b"+OK\r\n".to_vec()
                        }
                        _ => b"-ERR unknown command\r\n".to_vec(),
                    };
                    if w.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Fake { addr, log, messages: shared }
}
