//! A scripted misbehaving POP3 server on plain threads, for the bad-input cases of issue 12
//! that no real server produces on cue: a LIST with gaps, sizes that are not numbers, a
//! megabyte status line, garbage bytes, a TOP that never ends, a close right after `+OK`
//! to PASS, data nobody asked for.
//!
//! Each connection is numbered from 0. The script sees (connection, command line) and may
//! override the reply; `None` falls back to a well-behaved server with [`MAILBOX`], so a
//! script usually misbehaves on connection 0 only and a second session shows that popsift
//! keeps serving.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Two small messages, served by the fallback replies.
pub const MAILBOX: [&str; 2] = [
    "From: a@example.org\r\nSubject: first\r\nMessage-ID: <1@x>\r\n\r\nbody one\r\n",
    "From: b@example.org\r\nSubject: second\r\nMessage-ID: <2@x>\r\n\r\nbody two\r\n",
];

/// What the server does for one command.
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

pub struct Scripted {
    pub addr: String,
    /// Every command line received, with its connection number.
    pub commands: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Scripted {
    /// Whether any connection sent a DELE.
    pub fn saw_dele(&self) -> bool {
        self.commands.lock().unwrap().iter().any(|(_, c)| c.to_ascii_uppercase().starts_with("DELE"))
    }

    pub fn commands_of(&self, conn: usize) -> Vec<String> {
        self.commands.lock().unwrap().iter().filter(|(c, _)| *c == conn).map(|(_, l)| l.clone()).collect()
    }
}

pub fn start(script: impl Fn(usize, &str) -> Option<Reply> + Send + Sync + 'static) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let commands = Arc::new(Mutex::new(Vec::new()));
    let script: Arc<Script> = Arc::new(script);
    let log = commands.clone();
    std::thread::spawn(move || {
        for (conn, sock) in listener.incoming().enumerate() {
            let Ok(sock) = sock else { return };
            let (script, log) = (script.clone(), log.clone());
            std::thread::spawn(move || serve(conn, sock, &*script, &log));
        }
    });
    Scripted { addr, commands }
}

fn stuffed(msg: &str) -> String {
    let mut out = String::new();
    for line in msg.split_inclusive('\n') {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    out.push_str(".\r\n");
    out
}

/// The well-behaved reply to `line`.
fn fallback(line: &str) -> Reply {
    let mut words = line.split(' ');
    let kw = words.next().unwrap_or("").to_ascii_uppercase();
    let n = words.next().and_then(|w| w.parse::<usize>().ok()).filter(|n| (1..=MAILBOX.len()).contains(n));
    let text = match (kw.as_str(), n) {
        ("CAPA", _) => "+OK\r\nTOP\r\nUIDL\r\nUSER\r\n.\r\n".to_string(),
        ("USER", _) | ("NOOP", _) | ("RSET", _) => "+OK\r\n".into(),
        ("PASS", _) => "+OK logged in\r\n".into(),
        ("STAT", _) => format!("+OK {} {}\r\n", MAILBOX.len(), MAILBOX.iter().map(|m| m.len()).sum::<usize>()),
        ("LIST", None) => {
            let mut s = "+OK\r\n".to_string();
            for (i, m) in MAILBOX.iter().enumerate() {
                s.push_str(&format!("{} {}\r\n", i + 1, m.len()));
            }
            s + ".\r\n"
        }
        ("UIDL", None) => "+OK\r\n1 uid-1\r\n2 uid-2\r\n.\r\n".into(),
        ("TOP", Some(n)) => {
            let m = MAILBOX[n - 1];
            let head = &m[..m.find("\r\n\r\n").unwrap() + 4];
            format!("+OK\r\n{}", stuffed(head))
        }
        ("RETR", Some(n)) => format!("+OK {} octets\r\n{}", MAILBOX[n - 1].len(), stuffed(MAILBOX[n - 1])),
        ("DELE", Some(_)) => "+OK marked\r\n".into(),
        ("QUIT", _) => return Reply::SendThenClose(b"+OK bye\r\n".to_vec()),
        _ => "-ERR no such message or command\r\n".into(),
    };
    Reply::Send(text.into_bytes())
}

fn serve(conn: usize, sock: TcpStream, script: &Script, log: &Mutex<Vec<(usize, String)>>) {
    let _ = sock.set_nodelay(true);
    let mut w = sock.try_clone().unwrap();
    let mut r = BufReader::new(sock);
    if w.write_all(b"+OK scripted POP3 ready\r\n").is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = line.trim_end().to_string();
        log.lock().unwrap().push((conn, l.clone()));
        let reply = script(conn, &l).unwrap_or_else(|| fallback(&l));
        match reply {
            Reply::Send(b) => {
                if w.write_all(&b).is_err() {
                    return;
                }
            }
            Reply::SendThenClose(b) => {
                let _ = w.write_all(&b);
                let _ = w.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::SendForever(b, chunk) => {
                if w.write_all(&b).is_err() {
                    return;
                }
                // Bounded so a test that fails does not leave a thread spinning for ever.
                let deadline = std::time::Instant::now() + Duration::from_secs(120);
                while std::time::Instant::now() < deadline && w.write_all(&chunk).is_ok() {}
                return;
            }
            Reply::SendThenHang(b) => {
                let _ = w.write_all(&b);
                // Hold the connection open without a word until the peer closes it.
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut r, &mut sink);
                return;
            }
        }
    }
}
