//! A scripted upstream that is slow on purpose: it dribbles its greeting, or one reply, an
//! octet at a time, or never answers one command — what a real Dovecot will not do, and what
//! per-read timeouts could not stop (issue 10, item 5). It also reports when popsift closes
//! the connection, so a test can wait for the session's end instead of sleeping.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How the slow server misbehaves.
#[derive(Clone, Debug)]
pub struct Slowness {
    /// Send the greeting one octet per interval.
    pub greeting_every: Option<Duration>,
    /// The command keyword (e.g. `USER`, `LIST`, `RETR`) whose reply is dribbled one octet
    /// per `reply_every`, endlessly (a status line that never ends, or a multi-line body
    /// that never finishes).
    pub dribble: Option<&'static str>,
    pub reply_every: Duration,
    /// The command keyword whose reply never comes.
    pub stall: Option<&'static str>,
    /// The command keyword whose (normal) reply comes only after this long.
    pub delay: Option<(&'static str, Duration)>,
    /// Messages in the mailbox (each small), for LIST/UIDL/TOP/RETR.
    pub messages: usize,
}

impl Default for Slowness {
    fn default() -> Self {
        Slowness {
            greeting_every: None,
            dribble: None,
            reply_every: Duration::from_millis(200),
            stall: None,
            delay: None,
            messages: 2,
        }
    }
}

/// The running slow server.
pub struct SlowServer {
    pub addr: String,
    /// Connections popsift has closed (EOF or error on read), and a wakeup for each.
    pub closed: Arc<Mutex<usize>>,
    pub closed_notify: Arc<Notify>,
    pub commands: Arc<Mutex<Vec<String>>>,
}

impl SlowServer {
    /// Waits until popsift has closed `n` connections; panics after `limit`.
    pub async fn wait_closed(&self, n: usize, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.closed_notify.notified();
                if *self.closed.lock().unwrap() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| panic!("popsift did not close the upstream connection within {limit:?}"));
    }
}

fn message(i: usize) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: slow {i}\r\nMessage-ID: <slow{i}@x>\r\n\r\nbody {i}\r\n").into_bytes()
}

/// Starts the slow server. It accepts any USER/PASS.
pub async fn start_slow(s: Slowness) -> SlowServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let closed = Arc::new(Mutex::new(0usize));
    let closed_notify = Arc::new(Notify::new());
    let commands = Arc::new(Mutex::new(Vec::new()));
    let (closed2, notify2, commands2) = (closed.clone(), closed_notify.clone(), commands.clone());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let s = s.clone();
            let (closed, notify, commands) = (closed2.clone(), notify2.clone(), commands2.clone());
            tokio::spawn(async move {
                serve(sock, &s, &commands).await;
                *closed.lock().unwrap() += 1;
                notify.notify_waiters();
            });
        }
    });
    SlowServer { addr, closed, closed_notify, commands }
}

/// Serves one connection until popsift closes it (or a write fails).
async fn serve(sock: tokio::net::TcpStream, s: &Slowness, commands: &Mutex<Vec<String>>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let greeting = b"+OK slow fake ready\r\n";
    match s.greeting_every {
        Some(every) => {
            // Dribble the greeting while watching for popsift's close.
            for b in greeting.iter().cycle() {
                if w.write_all(&[*b]).await.is_err() {
                    return;
                }
                let mut line = String::new();
                tokio::select! {
                    n = r.read_line(&mut line) => if n.unwrap_or(0) == 0 { return },
                    _ = tokio::time::sleep(every) => {}
                }
            }
        }
        None => {
            if w.write_all(greeting).await.is_err() {
                return;
            }
        }
    }
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end().to_string();
        commands.lock().unwrap().push(l.clone());
        let kw = l.split(' ').next().unwrap_or("").to_ascii_uppercase();
        if s.stall.is_some_and(|k| k == kw) {
            // Never answer; wait for popsift to close.
            let mut rest = String::new();
            while r.read_line(&mut rest).await.unwrap_or(0) > 0 {
                rest.clear();
            }
            return;
        }
        if s.dribble.is_some_and(|k| k == kw) {
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
                    _ = tokio::time::sleep(s.reply_every) => {
                        if w.write_all(b"x").await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Some((_, d)) = s.delay.filter(|(k, _)| *k == kw) {
            tokio::time::sleep(d).await;
        }
        let arg = l.split(' ').nth(1).and_then(|a| a.parse::<usize>().ok()).filter(|n| (1..=s.messages).contains(n));
        let reply: Vec<u8> = match kw.as_str() {
            "CAPA" => b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nPIPELINING\r\nRESP-CODES\r\n.\r\n".to_vec(),
            "USER" | "NOOP" | "RSET" | "DELE" => b"+OK\r\n".to_vec(),
            "PASS" => b"+OK logged in\r\n".to_vec(),
            "STAT" => format!("+OK {} {}\r\n", s.messages, (1..=s.messages).map(|i| message(i).len()).sum::<usize>())
                .into_bytes(),
            "LIST" => {
                let mut out = b"+OK\r\n".to_vec();
                for i in 1..=s.messages {
                    out.extend_from_slice(format!("{i} {}\r\n", message(i).len()).as_bytes());
                }
                out.extend_from_slice(b".\r\n");
                out
            }
            "UIDL" => {
                let mut out = b"+OK\r\n".to_vec();
                for i in 1..=s.messages {
                    out.extend_from_slice(format!("{i} slow-{i}\r\n").as_bytes());
                }
                out.extend_from_slice(b".\r\n");
                out
            }
            "TOP" | "RETR" => match arg {
                Some(n) => {
                    let m = message(n);
                    let m = if kw == "TOP" {
                        m[..m.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4].to_vec()
                    } else {
                        m
                    };
                    let mut out = b"+OK\r\n".to_vec();
                    out.extend_from_slice(&m);
                    out.extend_from_slice(b".\r\n");
                    out
                }
                None => b"-ERR no such message\r\n".to_vec(),
            },
            "QUIT" => {
                let _ = w.write_all(b"+OK bye\r\n").await;
                return;
            }
            _ => b"-ERR unknown command\r\n".to_vec(),
        };
        if w.write_all(&reply).await.is_err() {
            return;
        }
    }
}
