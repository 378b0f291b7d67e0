//! What one hop costs on this machine before any proxy code runs (issue 16): two processes
//! bounce one octet over a loopback TCP connection, once sleeping in `read` between the
//! bounces (what every relay does while it waits: popsift, HAProxy, the pump) and once
//! spinning on a non-blocking socket (neither side ever sleeps). The difference is the price
//! of putting a process to sleep and waking it again, paid twice per extra hop and command by
//! any proxy in the relay bench's one-at-a-time cells; on a VM it includes waking a halted
//! virtual CPU.
//!
//! `cargo bench --bench wake_cost` (`POPSIFT_WAKE_ROUNDS=N`, default 100,000 round trips per
//! way). No popsift, no Dovecot: the figure is the floor the relay bench's ratios sit on.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Set (to "ADDR MODE ROUNDS") when this bench's binary is started again as the echoing peer.
const PEER: &str = "POPSIFT_WAKE_PEER";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sleep,
    Spin,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sleep => "sleep",
            Mode::Spin => "spin",
        }
    }
}

/// Reads exactly one octet: blocking, or spinning over `WouldBlock`.
fn recv_one(s: &mut TcpStream, mode: Mode) {
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => return,
            Ok(_) => panic!("peer closed the connection"),
            Err(e) if mode == Mode::Spin && e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn prepare(s: &TcpStream, mode: Mode) {
    s.set_nodelay(true).expect("nodelay");
    s.set_nonblocking(mode == Mode::Spin).expect("nonblocking");
}

/// The echoing peer: answers every octet with one.
fn peer(spec: &str) {
    let mut parts = spec.split(' ');
    let (addr, mode, rounds) = (parts.next(), parts.next(), parts.next());
    let mode = if mode == Some("spin") { Mode::Spin } else { Mode::Sleep };
    let rounds: usize = rounds.and_then(|r| r.parse().ok()).expect("ROUNDS");
    let mut s = TcpStream::connect(addr.expect("ADDR")).expect("connect");
    prepare(&s, mode);
    for _ in 0..rounds {
        recv_one(&mut s, mode);
        s.write_all(b"x").expect("write");
    }
}

/// Microseconds per round trip of `rounds` bounces with a peer process in `mode`.
fn measure(mode: Mode, rounds: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(PEER, format!("{addr} {} {rounds}", mode.name()))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the peer");
    let (mut s, _) = listener.accept().expect("accept");
    prepare(&s, mode);
    // Warm-up: the first bounces page in code and grow the socket's state.
    let warm = rounds / 10;
    for _ in 0..warm {
        s.write_all(b"x").expect("write");
        recv_one(&mut s, mode);
    }
    let started = Instant::now();
    for _ in warm..rounds {
        s.write_all(b"x").expect("write");
        recv_one(&mut s, mode);
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / (rounds - warm) as f64;
    child.wait().expect("peer");
    per
}

fn main() {
    if let Ok(spec) = std::env::var(PEER) {
        return peer(&spec);
    }
    let rounds: usize = std::env::var("POPSIFT_WAKE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    println!("wake cost: {rounds} round trips of one octet over loopback TCP between two processes, per way");
    // Alternated, three times each: the two ways see the same drift in load.
    let (mut sleeps, mut spins) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        sleeps.push(measure(Mode::Sleep, rounds));
        spins.push(measure(Mode::Spin, rounds));
    }
    sleeps.sort_by(f64::total_cmp);
    spins.sort_by(f64::total_cmp);
    let (sleep, spin) = (sleeps[1], spins[1]);
    println!("sleeping in read: {sleep:.1} µs per round trip (runs {sleeps:.1?})");
    println!("spinning:         {spin:.1} µs per round trip (runs {spins:.1?})");
    println!(
        "one sleep + wake-up: {:.1} µs (a round trip has two); a proxy adds two per one-at-a-time command",
        (sleep - spin) / 2.0
    );
}
