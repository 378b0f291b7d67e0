//! A small cuttable TCP forwarder to put between popsift and Dovecot, so a test can make the
//! upstream connection drop at a chosen moment (Dovecot cannot be told to die mid-reply).
//!
//! Plain threads: one acceptor, two pumps per connection (client → upstream, upstream →
//! client). Everything a connection sends upstream is recorded ([`Forwarder::sent`]), so a test
//! can wait for popsift to reach a phase ([`Forwarder::wait_sent`], e.g. `b"TOP 3 0"`).
//!
//! Ways to cut (each closes both sockets of every open connection; the listener keeps
//! accepting, so the next session works):
//! - [`Forwarder::cut`] closes them now.
//! - [`Forwarder::cut_after_upstream_bytes`]: after exactly `n` more octets were passed from
//!   the upstream towards popsift (mid-reply cuts).
//! - [`Forwarder::cut_when_client_sends`]: when popsift's bytes contain a pattern (e.g.
//!   `b"QUIT\r\n"`): the chunk holding it **is** delivered upstream, and from that moment not
//!   one more upstream byte reaches popsift; then both sides are closed. This is "the command
//!   reached the server but its reply never came back".
//!
//! [`Forwarder::set_delay`] sleeps before passing each upstream chunk on: a slow server, so a
//! login scan takes long enough to interrupt.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    /// Open connections: (client side, upstream side) clones, for cutting.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    /// Every octet sent towards the upstream, all connections, in order.
    sent: Mutex<Vec<u8>>,
    /// Octets passed upstream → client since the last `cut_after_upstream_bytes`.
    passed: AtomicU64,
    /// `cut_after_upstream_bytes` limit (u64::MAX = none).
    limit: AtomicU64,
    /// Pattern for `cut_when_client_sends`.
    trigger: Mutex<Option<Vec<u8>>>,
    /// Set when the trigger fired: upstream bytes are dropped from then on.
    frozen: AtomicBool,
    delay_ms: AtomicU64,
    cuts: AtomicU64,
}

impl Shared {
    fn cut_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().expect("conns"));
        self.cuts.fetch_add(1, Ordering::SeqCst);
        for (c, u) in conns {
            let _ = c.shutdown(Shutdown::Both);
            let _ = u.shutdown(Shutdown::Both);
        }
    }
}

/// See the module docs. Dropping it stops accepting (open connections are cut).
pub struct Forwarder {
    /// `127.0.0.1:PORT` to give popsift as its upstream.
    pub addr: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Forwards every connection made to [`Forwarder::addr`] to `upstream`.
    pub fn start(upstream: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let addr = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared { limit: AtomicU64::new(u64::MAX), ..Default::default() });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st, up) = (shared.clone(), stop.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&up) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                sh.conns
                    .lock()
                    .expect("conns")
                    .push((client.try_clone().expect("clone"), server.try_clone().expect("clone")));
                let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let a = sh.clone();
                std::thread::spawn(move || pump_up(client, server, &a));
                let b = sh.clone();
                std::thread::spawn(move || pump_down(s2, c2, &b));
            }
        });
        Forwarder { addr, shared, stop }
    }

    /// Closes both sides of every open connection now.
    pub fn cut(&self) {
        self.shared.cut_all();
    }

    /// Passes exactly `n` more octets from the upstream, then cuts.
    pub fn cut_after_upstream_bytes(&self, n: u64) {
        self.shared.passed.store(0, Ordering::SeqCst);
        self.shared.limit.store(n, Ordering::SeqCst);
    }

    /// When the bytes sent upstream contain `pattern`: deliver that chunk, pass no further
    /// upstream byte back, and cut.
    pub fn cut_when_client_sends(&self, pattern: &[u8]) {
        *self.shared.trigger.lock().expect("trigger") = Some(pattern.to_vec());
    }

    /// Sleep this long before passing on each chunk from the upstream.
    pub fn set_delay(&self, d: Duration) {
        self.shared.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Everything sent towards the upstream so far.
    pub fn sent(&self) -> Vec<u8> {
        self.shared.sent.lock().expect("sent").clone()
    }

    /// Waits until the bytes sent upstream contain `pattern`; panics after `timeout`.
    pub fn wait_sent(&self, pattern: &[u8], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !contains(&self.sent(), pattern) {
            assert!(
                Instant::now() < deadline,
                "{:?} not sent upstream within {timeout:?}",
                String::from_utf8_lossy(pattern)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many times connections were cut (by any means).
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Waits until a cut happened; panics after `timeout`.
    pub fn wait_cut(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.cuts() == 0 {
            assert!(Instant::now() < deadline, "forwarder did not cut within {timeout:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.shared.cut_all();
        // Wake the acceptor so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// popsift → upstream.
fn pump_up(mut from: TcpStream, mut to: TcpStream, sh: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let fired = {
            let mut sent = sh.sent.lock().expect("sent");
            // Search the new chunk plus a tail of what came before (a pattern split across reads).
            let start = sent.len().saturating_sub(64);
            sent.extend_from_slice(&buf[..n]);
            let trigger = sh.trigger.lock().expect("trigger");
            let fired = trigger.as_deref().is_some_and(|t| contains(&sent[start..], t));
            if fired {
                sh.frozen.store(true, Ordering::SeqCst);
            }
            fired
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if fired {
            *sh.trigger.lock().expect("trigger") = None;
            // Give the server a moment to read the command before the close reaches it.
            std::thread::sleep(Duration::from_millis(100));
            sh.cut_all();
            sh.frozen.store(false, Ordering::SeqCst);
            return;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// upstream → popsift.
fn pump_down(mut from: TcpStream, mut to: TcpStream, sh: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = sh.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if sh.frozen.load(Ordering::SeqCst) {
            continue;
        }
        let limit = sh.limit.load(Ordering::SeqCst);
        let passed = sh.passed.fetch_add(n as u64, Ordering::SeqCst);
        if limit != u64::MAX && passed + n as u64 >= limit {
            let take = limit.saturating_sub(passed) as usize;
            let _ = to.write_all(&buf[..take]);
            let _ = to.flush();
            sh.limit.store(u64::MAX, Ordering::SeqCst);
            // Let the partial reply reach popsift before the close does.
            std::thread::sleep(Duration::from_millis(50));
            sh.cut_all();
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
