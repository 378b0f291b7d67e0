//! Client-side TLS (issue 14): implicit TLS and STLS (RFC 2595) between real clients
//! (poplib, fetchmail, getmail6) and popsift in front of a real Dovecot, with a test CA made
//! at test time; the plain-text login policy; the certificate re-read on SIGHUP without
//! dropping sessions (a broken one keeps the old); a missing or broken certificate at start
//! (exit 2); a handshake that never completes (cut at `client_tls_handshake`, other
//! sessions unaffected).
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// A CA and a leaf for `localhost`, 127.0.0.1 and ::1, as PEM files in `dir`.
struct TestPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("popsift test CA {name}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    leaf.subject_alt_names.push(SanType::IpAddress("::1".parse().unwrap()));
    let cert = leaf.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let pki = TestPki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, cert.pem()).unwrap();
    std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    pki
}

fn tls_listener(mode: &str, cert: &Path, key: &Path, more: &str) -> String {
    format!("    tls: {{ mode: {mode}, cert: {}, key: {} }}\n{more}", cert.display(), key.display())
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
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

type TlsLines = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// TLS over `tcp`, verified against `ca` for `localhost`; the handshake runs on first use.
fn tls_over(tcp: TcpStream, ca: &Path) -> TlsLines {
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(ca), name).unwrap();
    BufReader::new(rustls::StreamOwned::new(conn, tcp))
}

fn line(r: &mut impl BufRead) -> std::io::Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
    }
    Ok(s.trim_end().to_string())
}

/// Sends CAPA and returns the capability lines.
fn capa<S: Read + Write>(r: &mut BufReader<S>) -> Vec<String> {
    r.get_mut().write_all(b"CAPA\r\n").unwrap();
    let status = line(r).unwrap();
    assert!(status.starts_with("+OK"), "CAPA: {status}");
    let mut out = Vec::new();
    loop {
        let l = line(r).unwrap();
        if l == "." {
            return out;
        }
        out.push(l);
    }
}

#[test]
fn implicit_tls_with_poplib_fetchmail_and_getmail() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), "a");
    let listener = tls_listener("implicit", &pki.cert, &pki.key, "    allow_plaintext: false\n");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), listener: &listener, ..Default::default() });
    let want = wire(&all);
    let opts = PoplibOpts { tls: Tls::Implicit, ca: Some(pki.ca.clone()), ..Default::default() };
    let got = poplib_fetch(&p.addr, "alice", &pass, &opts);
    assert_eq!(got.messages, want, "poplib over implicit TLS");
    let caps = got.capa.expect("CAPA answered");
    assert!(caps.contains(&"USER".to_string()), "USER offered over TLS: {caps:?}");
    assert!(!caps.contains(&"STLS".to_string()), "no STLS on an implicit-TLS listener: {caps:?}");
    let fm = fetchmail_fetch(&p.addr, "alice", &pass, true, Tls::Implicit, Some(&pki.ca));
    let want_lf: Vec<Vec<u8>> = want.iter().map(|m| lf_form(m)).collect();
    assert_eq!(fm, want_lf, "fetchmail over implicit TLS");
    let gm = getmail_fetch(&p.addr, "alice", &pass, false, Tls::Implicit, Some(&pki.ca));
    assert_getmail_equal(&gm, &want);
    // A client that does not trust the CA gets no session (and popsift keeps serving).
    let err = try_poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts { tls: Tls::Implicit, ..Default::default() });
    assert!(err.is_err(), "an untrusted certificate must fail the client");
    assert_eq!(poplib_fetch(&p.addr, "alice", &pass, &opts).messages.len(), all.len());
    assert_eq!(d.mailbox("alice").len(), all.len(), "nothing deleted");
}

#[test]
fn stls_with_poplib_and_fetchmail_and_plaintext_refused_before_it() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), "a");
    // On loopback plain text would be allowed by default; the test turns the policy on as a
    // non-loopback listener has it.
    let listener = tls_listener("starttls", &pki.cert, &pki.key, "    allow_plaintext: false\n");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), listener: &listener, ..Default::default() });

    // Before STLS: STLS offered, USER and plain-text SASL hidden, and refused if tried
    // anyway, without the upstream hearing of it.
    let mut raw = RawPop::connect(&p.addr);
    let caps = {
        raw.send_raw(b"CAPA\r\n");
        assert!(raw.read_line().starts_with("+OK"));
        String::from_utf8(raw.read_multiline()).unwrap()
    };
    assert!(caps.lines().any(|l| l == "STLS"), "{caps}");
    assert!(!caps.lines().any(|l| l == "USER"), "{caps}");
    assert!(!caps.lines().any(|l| l.starts_with("SASL") && (l.contains("PLAIN") || l.contains(" LOGIN"))), "{caps}");
    let r = raw.command("USER alice");
    assert!(r.starts_with("-ERR [AUTH]") && r.contains("Plaintext"), "{r}");
    let r = raw.command(&format!("PASS {pass}"));
    assert!(r.starts_with("-ERR [AUTH]"), "PASS refused too, the password goes nowhere: {r}");
    let r = raw.command("AUTH PLAIN AGFsaWNlAHg=");
    assert!(r.starts_with("-ERR [AUTH]"), "{r}");
    assert!(raw.command("QUIT").starts_with("+OK"));
    p.wait_log("reason=plaintext-disallowed");
    assert!(!p.log().contains(&pass), "the password is never logged");

    // STLS by hand: after it CAPA lists no STLS and USER works; a second STLS is refused.
    let mut tcp = BufReader::new(TcpStream::connect(&p.addr).unwrap());
    tcp.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(line(&mut tcp).unwrap().starts_with("+OK"));
    tcp.get_mut().write_all(b"STLS\r\n").unwrap();
    let r = line(&mut tcp).unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    let mut tls = tls_over(tcp.into_inner(), &pki.ca);
    let caps = capa(&mut tls);
    assert!(!caps.iter().any(|c| c == "STLS"), "RFC 2595 §4: no STLS once TLS is active: {caps:?}");
    assert!(caps.iter().any(|c| c == "USER"), "{caps:?}");
    tls.get_mut().write_all(b"STLS\r\n").unwrap();
    assert!(line(&mut tls).unwrap().starts_with("-ERR"));
    tls.get_mut().write_all(b"USER alice\r\n").unwrap();
    assert!(line(&mut tls).unwrap().starts_with("+OK"));
    tls.get_mut().write_all(format!("PASS {pass}\r\nSTAT\r\nQUIT\r\n").as_bytes()).unwrap();
    assert!(line(&mut tls).unwrap().starts_with("+OK"));
    assert_eq!(
        line(&mut tls).unwrap(),
        format!("+OK {} {}", all.len(), all.iter().map(|m| expected_list_size(&m.bytes)).sum::<u64>())
    );
    assert!(line(&mut tls).unwrap().starts_with("+OK"));

    // Real clients.
    let opts = PoplibOpts { tls: Tls::Stls, ca: Some(pki.ca.clone()), ..Default::default() };
    let got = poplib_fetch(&p.addr, "alice", &pass, &opts);
    assert_eq!(got.messages, wire(&all), "poplib over STLS");
    assert!(got.capa.unwrap().contains(&"STLS".to_string()));
    let fm = fetchmail_fetch(&p.addr, "alice", &pass, true, Tls::Stls, Some(&pki.ca));
    assert_eq!(fm.len(), all.len(), "fetchmail over STLS");
    // poplib without STLS cannot log in on this listener.
    let err = try_poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts::default()).unwrap_err();
    assert!(err.contains("[AUTH]"), "{err}");
}

#[test]
fn plaintext_after_stls_in_the_same_packet_is_discarded() {
    // CVE-2011-0411: commands sent in the clear right behind STLS must not run over TLS.
    let (d, _all) = Dovecot::start_with_test_mailbox();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), "a");
    let listener = tls_listener("starttls", &pki.cert, &pki.key, "");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), listener: &listener, ..Default::default() });
    let mut tcp = BufReader::new(TcpStream::connect(&p.addr).unwrap());
    tcp.get_ref().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert!(line(&mut tcp).unwrap().starts_with("+OK"));
    tcp.get_mut().write_all(b"STLS\r\nUSER injected\r\n").unwrap();
    assert!(line(&mut tcp).unwrap().starts_with("+OK"));
    let mut tls = tls_over(tcp.into_inner(), &pki.ca);
    tls.get_mut().write_all(b"NOOP\r\n").unwrap();
    let r = line(&mut tls).unwrap();
    assert!(r.starts_with("-ERR"), "the first reply over TLS answers NOOP (not logged in), not the injected USER: {r}");
    p.wait_log("discarding plain-text input sent after STLS");
}

#[test]
fn certificate_reloads_on_sighup_without_dropping_sessions() {
    let (d, _all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let pki_dir = tempfile::tempdir().unwrap();
    let a = make_pki(pki_dir.path(), "a");
    let b = make_pki(pki_dir.path(), "b");
    let cert = pki_dir.path().join("live-cert.pem");
    let key = pki_dir.path().join("live-key.pem");
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let listener = tls_listener("implicit", &cert, &key, "");
    let p = Popsift::start(&ProxyOpts { upstream: &d.pop3_addr(), listener: &listener, ..Default::default() });
    let connect = |ca: &Path| -> std::io::Result<(TlsLines, String)> {
        let mut t = tls_over(TcpStream::connect(&p.addr)?, ca);
        let greeting = line(&mut t)?;
        Ok((t, greeting))
    };
    let (mut old, greeting) = connect(&a.ca).unwrap();
    assert!(greeting.starts_with("+OK"));
    assert!(connect(&b.ca).is_err(), "certificate B is not served yet");

    std::fs::copy(&b.cert, &cert).unwrap();
    std::fs::copy(&b.key, &key).unwrap();
    p.signal("HUP");
    p.wait_log("TLS certificate reloaded");
    let (mut new, _) = connect(&b.ca).expect("certificate B after SIGHUP");
    assert!(connect(&a.ca).is_err(), "certificate A is gone");
    // The session opened before the reload goes on undisturbed.
    old.get_mut().write_all(format!("USER alice\r\nPASS {pass}\r\nSTAT\r\n").as_bytes()).unwrap();
    for _ in 0..3 {
        let r = line(&mut old).unwrap();
        assert!(r.starts_with("+OK"), "{r}");
    }
    new.get_mut().write_all(b"QUIT\r\n").unwrap();
    assert!(line(&mut new).unwrap().starts_with("+OK"));

    // A broken certificate at reload: logged, the previous one stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n").unwrap();
    p.signal("HUP");
    p.wait_log("TLS certificate not reloaded; keeping the previous one");
    let (_still, g) = connect(&b.ca).expect("certificate B still served after a broken reload");
    assert!(g.starts_with("+OK"));
    old.get_mut().write_all(b"QUIT\r\n").unwrap();
    assert!(line(&mut old).unwrap().starts_with("+OK"));
}

/// Runs `popsift serve` on a config whose listener has `tls` and returns (exit code, stderr).
fn serve_exit(dir: &Path, tls: &str) -> (Option<i32>, String) {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("r.yaml"), "rules: []\n").unwrap();
    let cfg = dir.join("popsift.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  - listen: 127.0.0.1:{}\n    upstream: 127.0.0.1:9\n    upstream_tls: none\n{tls}rules: {}\nstate_dir: {}\nmetrics: 'off'\n",
            free_port(),
            rules.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_popsift"));
    cmd.args(["serve", "--config"]).arg(&cfg);
    let out = run_with_timeout(cmd, dir, Duration::from_secs(30));
    (out.status.code(), out.stderr)
}

#[test]
fn missing_or_broken_certificate_at_start_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "a");
    let missing = dir.path().join("missing.pem");
    let (code, err) = serve_exit(dir.path(), &tls_listener("implicit", &missing, &pki.key, ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.pem") && err.contains("TLS certificate"), "{err}");
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, "hello\n").unwrap();
    let (code, err) = serve_exit(dir.path(), &tls_listener("starttls", &pki.cert, &broken, ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("broken.pem") && err.contains("TLS key"), "{err}");
    // A key that does not belong to the certificate.
    let other = make_pki(dir.path(), "b");
    let (code, err) = serve_exit(dir.path(), &tls_listener("implicit", &pki.cert, &other.key, ""));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("a-cert.pem"), "{err}");
}

#[test]
fn a_tls_handshake_that_never_completes_is_cut_and_others_are_served() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), "a");
    let listener = tls_listener("implicit", &pki.cert, &pki.key, "");
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        listener: &listener,
        extra: "timeouts:\n  client_tls_handshake: 1s\n",
        ..Default::default()
    });
    // Half a ClientHello, then silence.
    let mut stalled = TcpStream::connect(&p.addr).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    // Meanwhile a normal client is served.
    let opts = PoplibOpts { tls: Tls::Implicit, ca: Some(pki.ca.clone()), ..Default::default() };
    assert_eq!(poplib_fetch(&p.addr, "alice", &pass, &opts).messages.len(), all.len());
    let mut rest = Vec::new();
    let started = std::time::Instant::now();
    let r = stalled.read_to_end(&mut rest);
    assert!(r.is_ok() || started.elapsed() < Duration::from_secs(19), "the stalled handshake was never cut: {r:?}");
    assert!(rest.is_empty(), "no POP3 data on a connection without TLS: {rest:?}");
    p.wait_log("client_tls_handshake");
    let m = p.scrape();
    assert!(m.contains("popsift_edge_refusals_total{reason=\"tls_handshake\"} 1"), "{m}");
}

#[test]
fn ipv6_listener_on_loopback() {
    let (d, all) = Dovecot::start_with_test_mailbox();
    let pass = d.password("alice").to_string();
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), "a");
    let listener = tls_listener("starttls", &pki.cert, &pki.key, "");
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        listener: &listener,
        listen_host: "[::1]",
        ..Default::default()
    });
    // Loopback: plain text allowed by default, and STLS offered.
    let got = poplib_fetch(&p.addr, "alice", &pass, &PoplibOpts::default());
    assert_eq!(got.messages, wire(&all));
    let got = poplib_fetch(
        &p.addr,
        "alice",
        &pass,
        &PoplibOpts { tls: Tls::Stls, ca: Some(pki.ca.clone()), ..Default::default() },
    );
    assert_eq!(got.messages.len(), all.len());
    p.wait_log("peer=[::1]:");
}
