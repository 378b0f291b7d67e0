//! The PROXY protocol behind a real HAProxy (Debian `haproxy`, started from
//! `deploy/haproxy/popsift.cfg` with its ports replaced), per-address limits on the carried
//! address, the failed-login throttle, fail2ban's `fail2ban-regex` over popsift's real log
//! (`deploy/fail2ban/filter.d/popsift.conf`), and bad input at the edge: a source that is
//! not trusted, a malformed header, a header that never comes.
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A running HAProxy; killed on drop.
struct Haproxy {
    addr: String,
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped sample config, made to listen on a free loopback port and to forward to
/// `popsift`, with a stats socket to read the health check's outcome.
fn haproxy_config(popsift: &str, port: u16, stats: &Path) -> String {
    let sample = std::fs::read_to_string(repo_path("deploy/haproxy/popsift.cfg")).unwrap();
    for needle in ["bind :110", "127.0.0.1:1110", "log /dev/log local0", "inter 30s"] {
        assert!(sample.contains(needle), "deploy/haproxy/popsift.cfg no longer contains {needle:?}");
    }
    sample
        .replace("bind :110", &format!("bind 127.0.0.1:{port}"))
        .replace("127.0.0.1:1110", popsift)
        .replace(
            "log /dev/log local0",
            &format!("log stdout format raw local0\n    stats socket {} mode 600 level admin", stats.display()),
        )
        .replace("inter 30s", "inter 300ms")
}

fn start_haproxy(popsift: &str) -> Haproxy {
    let bin = require_program("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_config(popsift, port, &dir.path().join("stats.sock"))).unwrap();
    let check = Command::new(&bin).arg("-c").arg("-f").arg(&cfg).output().unwrap();
    assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
    let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
    let child = Command::new(&bin)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_until(Duration::from_secs(20), "haproxy listening", || TcpStream::connect(&addr).is_ok());
    Haproxy { addr, dir, child }
}

impl Haproxy {
    /// The health check status of the popsift server (`L7OK` when the POP3 check passed).
    fn check_status(&self) -> String {
        let mut s = match std::os::unix::net::UnixStream::connect(self.dir.path().join("stats.sock")) {
            Ok(s) => s,
            Err(_) => return String::new(),
        };
        s.write_all(b"show stat\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").trim_start_matches("# ").split(',').collect();
        let col = header.iter().position(|h| *h == "check_status");
        lines
            .filter(|l| l.starts_with("popsift_pop3,popsift1,"))
            .filter_map(|l| col.and_then(|c| l.split(',').nth(c)).map(str::to_string))
            .next()
            .unwrap_or_default()
    }
}

/// A TCP connection from `source` (any 127.0.0.x: all of 127/8 is loopback) to `to`.
fn connect_from(source: &str, to: &str) -> BufReader<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into()).unwrap();
    let dst: SocketAddr = to.parse().unwrap();
    sock.connect(&dst.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

fn line(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut s = String::new();
    match r.read_line(&mut s) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(s.trim_end().to_string()),
    }
}

fn say(r: &mut BufReader<TcpStream>, cmd: &str) -> String {
    r.get_mut().write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
    line(r).unwrap_or_else(|| panic!("connection closed after {cmd}"))
}

fn fail2ban_regex(log: &Path) -> String {
    let bin = require_program("fail2ban-regex", "fail2ban");
    let out =
        Command::new(bin).arg("-v").arg(log).arg(repo_path("deploy/fail2ban/filter.d/popsift.conf")).output().unwrap();
    assert!(out.status.success(), "fail2ban-regex: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn matched(report: &str) -> usize {
    let l = report.lines().find(|l| l.starts_with("Lines:")).unwrap_or_else(|| panic!("no Lines: in {report}"));
    let before = l.split(" matched").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

const EDGE: &str = "    proxy_protocol: { trusted: [127.0.0.1/32], header_timeout: 1s }\n    max_sessions_per_ip: 1\n    login_failures: { max: 2, window: 10m, delay: 10ms }\n";

#[test]
fn haproxy_send_proxy_v2_carries_the_client_address_into_logs_limits_and_fail2ban() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), listener: EDGE, ..Default::default() });
    let h = start_haproxy(&p.addr);
    // The POP3 health check (PROXY v2 LOCAL, +OK, QUIT) passes.
    wait_until(Duration::from_secs(30), "HAProxy's health check L7OK", || h.check_status() == "L7OK");

    // One session per address: a second one from 127.0.0.7 is refused, 127.0.0.9 is not.
    let mut first = connect_from("127.0.0.7", &h.addr);
    assert!(line(&mut first).unwrap().starts_with("+OK"));
    let mut second = connect_from("127.0.0.7", &h.addr);
    let r = line(&mut second).unwrap_or_default();
    assert!(r.starts_with("-ERR [SYS/TEMP]") && r.contains("your address"), "{r}");
    assert!(line(&mut second).is_none(), "closed after the refusal");
    let mut other = connect_from("127.0.0.9", &h.addr);
    assert!(line(&mut other).unwrap().starts_with("+OK"));
    assert!(say(&mut other, "USER alice").starts_with("+OK"));
    assert!(say(&mut other, &format!("PASS {pass}")).starts_with("+OK"));
    assert_eq!(say(&mut other, "STAT").split(' ').nth(1), Some(all.len().to_string().as_str()));
    assert!(say(&mut other, "QUIT").starts_with("+OK"));
    assert!(say(&mut first, "QUIT").starts_with("+OK"));

    // Two wrong passwords from 127.0.0.8, then even the right one is refused by popsift
    // itself (Dovecot would have said +OK: the upstream was not asked).
    let mut guesser = connect_from("127.0.0.8", &h.addr);
    assert!(line(&mut guesser).unwrap().starts_with("+OK"));
    for _ in 0..2 {
        assert!(say(&mut guesser, "USER alice").starts_with("+OK"));
        let r = say(&mut guesser, "PASS wrong-password");
        assert!(r.starts_with("-ERR"), "{r}");
    }
    assert!(say(&mut guesser, "USER alice").starts_with("+OK"));
    let r = say(&mut guesser, &format!("PASS {pass}"));
    assert!(r.starts_with("-ERR [AUTH]") && r.contains("Too many failed logins"), "{r}");
    assert!(say(&mut guesser, "QUIT").starts_with("+OK"));
    // Other addresses are not throttled.
    let mut next = connect_from("127.0.0.10", &h.addr);
    assert!(line(&mut next).unwrap().starts_with("+OK"));
    assert!(say(&mut next, "USER alice").starts_with("+OK"));
    assert!(say(&mut next, &format!("PASS {pass}")).starts_with("+OK"));
    assert!(say(&mut next, "QUIT").starts_with("+OK"));

    p.wait_log("reason=throttled");
    let log = p.log();
    assert_eq!(log.matches("login failed: client=127.0.0.8 user=\"alice\"").count(), 3, "{log}");
    assert!(log.contains(&format!("upstream={} reason=upstream-refused", d.pop3_addr())), "{log}");
    assert!(log.contains("peer=127.0.0.7:"), "sessions are logged with the carried address");
    assert!(log.contains("client=127.0.0.7 limit=1") && log.contains("max_sessions_per_ip"), "{log}");
    assert!(!log.contains("wrong-password") && !log.contains(&pass), "passwords are never logged");
    let m = p.scrape();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("max_sessions_per_ip reached")).collect();
    assert!(m.contains("popsift_edge_refusals_total{reason=\"per_ip_limit\"} 1"), "{refusals:#?}");
    assert!(m.contains("popsift_login_failures_total{reason=\"upstream-refused\"} 2"), "{m}");
    assert!(m.contains("popsift_login_failures_total{reason=\"throttled\"} 1"), "{m}");

    // fail2ban's own tool over popsift's real log: every failed-login line, with the
    // client's address (never HAProxy's).
    let report = fail2ban_regex(&p.dir.path().join("popsift.log"));
    assert_eq!(matched(&report), 3, "{report}");
    assert!(report.contains("127.0.0.8"), "{report}");
    assert!(!report.lines().any(|l| l.trim_start().starts_with("127.0.0.1 ")), "HAProxy's address banned: {report}");
}

#[test]
fn fail2ban_filter_matches_the_json_log_too() {
    let (d, _all) = Dovecot::start_with_test_mailbox();
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        args: &["--log-format", "json"],
        log_level: "info",
        ..Default::default()
    });
    let mut c = connect_from("127.0.0.5", &p.addr);
    assert!(line(&mut c).unwrap().starts_with("+OK"));
    assert!(say(&mut c, "USER alice").starts_with("+OK"));
    assert!(say(&mut c, "PASS nope").starts_with("-ERR"));
    assert!(say(&mut c, "QUIT").starts_with("+OK"));
    p.wait_log("login failed: client=127.0.0.5");
    let report = fail2ban_regex(&p.dir.path().join("popsift.log"));
    assert_eq!(matched(&report), 1, "{report}");
    assert!(report.contains("127.0.0.5"), "{report}");
}

#[test]
fn untrusted_sources_and_bad_headers_are_refused_and_others_served() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), listener: EDGE, ..Default::default() });
    // Straight from an address that is not a trusted balancer: closed, nothing said.
    let mut direct = connect_from("127.0.0.9", &p.addr);
    assert_eq!(line(&mut direct), None);
    p.wait_log("not in proxy_protocol.trusted");
    // From the trusted address: a malformed header, then a header that never comes.
    let mut bad = connect_from("127.0.0.1", &p.addr);
    bad.get_mut().write_all(b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n").unwrap();
    assert_eq!(line(&mut bad), None);
    p.wait_log("malformed PROXY v1 header");
    let mut silent = connect_from("127.0.0.1", &p.addr);
    // Meanwhile a well-formed v1 header from the trusted source is served normally.
    let mut good = connect_from("127.0.0.1", &p.addr);
    good.get_mut().write_all(b"PROXY TCP4 198.51.100.20 127.0.0.1 40000 110\r\n").unwrap();
    assert!(line(&mut good).unwrap().starts_with("+OK"));
    assert!(say(&mut good, "USER alice").starts_with("+OK"));
    assert!(say(&mut good, &format!("PASS {pass}")).starts_with("+OK"));
    assert_eq!(say(&mut good, "STAT").split(' ').nth(1), Some(all.len().to_string().as_str()));
    assert!(say(&mut good, "QUIT").starts_with("+OK"));
    assert_eq!(line(&mut silent), None, "cut at the header deadline");
    p.wait_log("proxy_header deadline");
    assert!(p.log().contains("peer=198.51.100.20:40000"), "v1 address carried");
    let m = p.scrape();
    assert!(m.contains("popsift_edge_refusals_total{reason=\"proxy_untrusted\"} 1"), "{m}");
    assert!(m.contains("popsift_edge_refusals_total{reason=\"proxy_header\"} 2"), "{m}");
}

/// At the session cap the connection is refused before its PROXY header is read: the log
/// names the socket's peer as the balancer, never as the client.
#[test]
fn session_limit_on_a_proxy_listener_names_the_balancer_not_a_client() {
    let (d, _all) = Dovecot::start_with_test_mailbox();
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        listener: EDGE,
        extra: "max_sessions: 1\n",
        log_level: "info",
        ..Default::default()
    });
    let mut first = connect_from("127.0.0.1", &p.addr);
    first.get_mut().write_all(b"PROXY TCP4 198.51.100.30 127.0.0.1 40000 110\r\n").unwrap();
    assert!(line(&mut first).unwrap().starts_with("+OK"));
    let mut second = connect_from("127.0.0.1", &p.addr);
    assert!(line(&mut second).unwrap().starts_with("-ERR [SYS/TEMP]"));
    p.wait_log("session limit reached");
    let log = p.log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("session limit reached")).collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(refused[0].contains("balancer=127.0.0.1:"), "{}", refused[0]);
    assert!(!refused[0].contains("peer=") && !refused[0].contains("client="), "{}", refused[0]);
    assert!(say(&mut first, "QUIT").starts_with("+OK"));
}
