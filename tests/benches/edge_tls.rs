//! Client-side TLS overhead (issue 14): sessions per second and relay throughput through
//! popsift with an implicit-TLS listener against the same popsift set-up with a plain one,
//! measured in the same run, alternating A/B so that machine load hits both alike.
//!
//! Not a criterion benchmark: each figure is an end-to-end scenario against a real Dovecot.
//! - sessions/s: `EDGE_BENCH_SESSIONS` (default 200) sequential sessions, each connect,
//!   (TLS handshake,) greeting, QUIT and its reply. popsift connects to Dovecot for each, so
//!   the figure is a whole session set-up, with or without the TLS handshake on top.
//! - relay: log in and RETR `EDGE_BENCH_MESSAGES` (default 20) messages of 1 MiB, bytes/s.
//!
//! Each is measured `EDGE_BENCH_REPEAT` times (default 3) per side, interleaved; the median
//! is printed with the TLS/plain ratio. The client (rustls, same machine) shares the CPU.
//!
//! Run: `cargo bench --bench edge_tls`.
#[path = "plain_build.rs"]
mod plain_build;
#[path = "../support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

struct Pki {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn make_pki(dir: &std::path::Path) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "popsift bench CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let p = Pki { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
    std::fs::write(&p.ca, ca.pem()).unwrap();
    std::fs::write(&p.cert, cert.pem()).unwrap();
    std::fs::write(&p.key, leaf_key.serialize_pem()).unwrap();
    p
}

fn client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn open(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>) -> BufReader<Box<dyn Stream>> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let s: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            Box::new(rustls::StreamOwned::new(rustls::ClientConnection::new(cfg.clone(), name).unwrap(), tcp))
        }
    };
    BufReader::with_capacity(64 * 1024, s)
}

fn line(r: &mut BufReader<Box<dyn Stream>>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    assert!(s.starts_with("+OK"), "{s}");
    s
}

fn sessions_per_second(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>, n: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let mut c = open(addr, tls);
        line(&mut c);
        c.get_mut().write_all(b"QUIT\r\n").unwrap();
        line(&mut c);
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn relay_bytes_per_second(addr: &str, tls: Option<&Arc<rustls::ClientConfig>>, pass: &str, n: usize) -> f64 {
    let mut c = open(addr, tls);
    line(&mut c);
    c.get_mut().write_all(format!("USER alice\r\nPASS {pass}\r\n").as_bytes()).unwrap();
    line(&mut c);
    line(&mut c);
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 1..=n {
        c.get_mut().write_all(format!("RETR {i}\r\n").as_bytes()).unwrap();
        line(&mut c);
        let mut l = Vec::new();
        loop {
            l.clear();
            bytes += c.read_until(b'\n', &mut l).unwrap() as u64;
            if l == b".\r\n" {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    c.get_mut().write_all(b"QUIT\r\n").unwrap();
    line(&mut c);
    bytes as f64 / secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let sessions = env_or("EDGE_BENCH_SESSIONS", 200usize);
    let messages = env_or("EDGE_BENCH_MESSAGES", 20usize);
    let repeat = env_or("EDGE_BENCH_REPEAT", 3usize);
    let d = Dovecot::start(DovecotOptions::default());
    let line_of = "x".repeat(76);
    for i in 0..messages {
        let mut m = format!("From: a@example.com\r\nTo: alice@example.com\r\nSubject: bench {i}\r\n\r\n");
        while m.len() < 1 << 20 {
            m.push_str(&line_of);
            m.push_str("\r\n");
        }
        d.deliver("alice", &format!("{i:04}.bench"), m.as_bytes());
    }
    let pass = d.password("alice").to_string();
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let tls_listener =
        format!("    tls: {{ mode: implicit, cert: {}, key: {} }}\n", pki.cert.display(), pki.key.display());
    // `POPSIFT_BENCH_BIN=PATH`: that build instead of the plain release build.
    let bin = plain_build::popsift("POPSIFT_BENCH_BIN");
    let plain = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        log_level: "info",
        bin: Some(&bin),
        ..Default::default()
    });
    let tls = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        log_level: "info",
        listener: &tls_listener,
        bin: Some(&bin),
        ..Default::default()
    });
    let cfg = client_config(&pki.ca);
    // Warm-up: Dovecot's index, both popsifts' header caches.
    relay_bytes_per_second(&plain.addr, None, &pass, messages);
    relay_bytes_per_second(&tls.addr, Some(&cfg), &pass, messages);
    let (mut sp, mut st, mut rp, mut rt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        sp.push(sessions_per_second(&plain.addr, None, sessions));
        st.push(sessions_per_second(&tls.addr, Some(&cfg), sessions));
        rp.push(relay_bytes_per_second(&plain.addr, None, &pass, messages));
        rt.push(relay_bytes_per_second(&tls.addr, Some(&cfg), &pass, messages));
    }
    let (sp, st, rp, rt) = (median(sp), median(st), median(rp), median(rt));
    println!("edge_tls: {sessions} sessions x {repeat}, {messages} x 1 MiB RETR x {repeat}, medians, A/B interleaved");
    println!("sessions/s  plain {sp:8.1}   implicit TLS {st:8.1}   TLS/plain {:.2}", st / sp);
    println!(
        "relay MiB/s plain {:8.1}   implicit TLS {:8.1}   TLS/plain {:.2}",
        rp / 1048576.0,
        rt / 1048576.0,
        rt / rp
    );
}
