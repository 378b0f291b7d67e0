//! A scripted POP3 server whose listing lies in the ways real servers have: UIDLs that
//! repeat or are missing, a LIST size smaller than what RETR then sends, and one mailbox
//! per user name (USER/PASS and SASL PLAIN, any name, password `pw`), so that two users'
//! messages can share a UIDL and a size. For the identity cases of issue 10; the plain
//! fake in `mod.rs` covers the rest.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use super::Log;

/// One message as this server presents it.
#[derive(Clone, Debug)]
pub struct Item {
    pub message: Vec<u8>,
    /// `None`: no UIDL line for this message.
    pub uidl: Option<String>,
    /// The size LIST announces; `None`: the true size.
    pub list_size: Option<u64>,
    /// RETR streams this many filler octets after `message` (generated, never held).
    pub retr_filler: u64,
}

impl Item {
    pub fn new(message: Vec<u8>, uidl: &str) -> Item {
        Item { message, uidl: Some(uidl.into()), list_size: None, retr_filler: 0 }
    }

    fn list_size(&self) -> u64 {
        self.list_size.unwrap_or(self.message.len() as u64)
    }
}

pub struct Scripted {
    pub addr: String,
    pub log: Arc<Mutex<Log>>,
    /// Mailboxes by user name; `""` is the mailbox of any user not listed.
    pub mailboxes: Arc<Mutex<HashMap<String, Vec<Item>>>>,
    /// User names as logged in (USER or the SASL PLAIN identity), in order.
    pub logins: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    pub fn commands(&self) -> Vec<String> {
        self.log.lock().unwrap().commands.clone()
    }

    /// The `DELE` commands received so far.
    pub fn deles(&self) -> Vec<String> {
        self.commands().into_iter().filter(|c| c.starts_with("DELE ")).collect()
    }

    pub fn set_mailbox(&self, user: &str, items: Vec<Item>) {
        self.mailboxes.lock().unwrap().insert(user.into(), items);
    }
}

fn stuff_into(msg: &[u8], out: &mut Vec<u8>) {
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
}

/// Starts the server with `mailbox` for every user.
pub async fn start(mailbox: Vec<Item>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Log::default()));
    let mailboxes = Arc::new(Mutex::new(HashMap::from([(String::new(), mailbox)])));
    let logins = Arc::new(Mutex::new(Vec::new()));
    let s = Scripted { addr, log: log.clone(), mailboxes: mailboxes.clone(), logins: logins.clone() };
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let (log, mailboxes, logins) = (log.clone(), mailboxes.clone(), logins.clone());
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"+OK scripted POP3 ready\r\n").await.ok();
                let mut user: Option<String> = None;
                let mut items: Option<Vec<Item>> = None;
                let mut deleted: Vec<bool> = Vec::new();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let l = line.trim_end_matches(['\r', '\n']).to_string();
                    log.lock().unwrap().commands.push(l.clone());
                    let (kw, arg) = l.split_once(' ').unwrap_or((&l, ""));
                    let kw = kw.to_ascii_uppercase();
                    let num = |items: &[Item]| arg.parse::<usize>().ok().filter(|n| *n >= 1 && *n <= items.len());
                    let mut login: Option<String> = None;
                    let reply: Vec<u8> = match (kw.as_str(), &items) {
                        ("CAPA", _) => b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nPIPELINING\r\n.\r\n".to_vec(),
                        ("USER", None) => {
                            user = Some(arg.to_string());
                            b"+OK\r\n".to_vec()
                        }
                        ("PASS", None) => match user.take() {
                            Some(name) if arg == "pw" => {
                                login = Some(name);
                                b"+OK logged in\r\n".to_vec()
                            }
                            _ => b"-ERR [AUTH] authentication failed\r\n".to_vec(),
                        },
                        ("AUTH", None) if arg.eq_ignore_ascii_case("PLAIN") => {
                            w.write_all(b"+ \r\n").await.ok();
                            line.clear();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            let resp = line.trim_end().to_string();
                            log.lock().unwrap().commands.push(resp.clone());
                            let decoded = base64::engine::general_purpose::STANDARD.decode(&resp).unwrap_or_default();
                            let parts: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
                            match parts.as_slice() {
                                [_, authcid, pw] if *pw == b"pw" => {
                                    login = Some(String::from_utf8_lossy(authcid).into_owned());
                                    b"+OK sasl ok\r\n".to_vec()
                                }
                                _ => b"-ERR [AUTH] sasl failed\r\n".to_vec(),
                            }
                        }
                        ("QUIT", Some(_)) => {
                            {
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
                        ("QUIT", None) => {
                            w.write_all(b"+OK bye\r\n").await.ok();
                            return;
                        }
                        (_, None) => b"-ERR not logged in\r\n".to_vec(),
                        ("STAT", Some(m)) => {
                            let live = m.iter().zip(&deleted).filter(|(_, d)| !**d);
                            let (n, size) = live.fold((0, 0), |(n, s), (i, _)| (n + 1, s + i.list_size()));
                            format!("+OK {n} {size}\r\n").into_bytes()
                        }
                        ("LIST", Some(m)) if arg.is_empty() => {
                            let mut s = "+OK\r\n".to_string();
                            for (i, it) in m.iter().enumerate().filter(|(i, _)| !deleted[*i]) {
                                s.push_str(&format!("{} {}\r\n", i + 1, it.list_size()));
                            }
                            s.push_str(".\r\n");
                            s.into_bytes()
                        }
                        ("UIDL", Some(m)) if arg.is_empty() => {
                            let mut s = "+OK\r\n".to_string();
                            for (i, it) in m.iter().enumerate().filter(|(i, _)| !deleted[*i]) {
                                if let Some(u) = &it.uidl {
                                    s.push_str(&format!("{} {u}\r\n", i + 1));
                                }
                            }
                            s.push_str(".\r\n");
                            s.into_bytes()
                        }
                        ("TOP", Some(m)) => {
                            let (n, _) = arg.split_once(' ').unwrap_or((arg, "0"));
                            match n.parse::<usize>().ok().filter(|n| *n >= 1 && *n <= m.len()) {
                                Some(n) => {
                                    let msg = &m[n - 1].message;
                                    let end =
                                        msg.windows(4).position(|w| w == b"\r\n\r\n").map_or(msg.len(), |p| p + 4);
                                    let mut out = b"+OK\r\n".to_vec();
                                    stuff_into(&msg[..end], &mut out);
                                    out.extend_from_slice(b".\r\n");
                                    out
                                }
                                None => b"-ERR no such message\r\n".to_vec(),
                            }
                        }
                        ("RETR", Some(m)) => match num(m) {
                            Some(n) => {
                                let it = &m[n - 1];
                                let mut out = format!("+OK {} octets\r\n", it.list_size()).into_bytes();
                                stuff_into(&it.message, &mut out);
                                if !out.ends_with(b"\r\n") {
                                    out.extend_from_slice(b"\r\n");
                                }
                                if w.write_all(&out).await.is_err() {
                                    return;
                                }
                                // The filler, 64 KiB at a time: never held whole here either.
                                let line = b"filler filler filler filler filler filler filler filler filler\r\n";
                                let chunk: Vec<u8> = line.iter().copied().cycle().take(line.len() * 1000).collect();
                                let mut left = it.retr_filler;
                                while left > 0 {
                                    let k = left.min(chunk.len() as u64) as usize;
                                    if w.write_all(&chunk[..k]).await.is_err() {
                                        return;
                                    }
                                    left -= k as u64;
                                }
                                if it.retr_filler > 0 {
                                    w.write_all(b"\r\n").await.ok();
                                }
                                b".\r\n".to_vec()
                            }
                            None => b"-ERR no such message\r\n".to_vec(),
                        },
                        ("DELE", Some(m)) => match num(m) {
                            Some(n) if !deleted[n - 1] => {
                                deleted[n - 1] = true;
                                b"+OK marked\r\n".to_vec()
                            }
                            _ => b"-ERR no such message\r\n".to_vec(),
                        },
                        ("NOOP", Some(_)) => b"+OK\r\n".to_vec(),
                        ("RSET", Some(_)) => {
                            deleted.iter_mut().for_each(|d| *d = false);
                            b"+OK\r\n".to_vec()
                        }
                        _ => b"-ERR unknown command\r\n".to_vec(),
                    };
                    if let Some(name) = login {
                        logins.lock().unwrap().push(name.clone());
                        let m = {
                            let boxes = mailboxes.lock().unwrap();
                            boxes.get(&name).or_else(|| boxes.get("")).cloned().unwrap_or_default()
                        };
                        deleted = vec![false; m.len()];
                        items = Some(m);
                    }
                    if w.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    s
}
