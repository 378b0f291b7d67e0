//! Real POP3 clients run against an address (`127.0.0.1:PORT`: popsift or Dovecot directly).
//!
//! - [`poplib_fetch`]: Python's stdlib `poplib` via `tests/clients/poplib_fetch.py` (JSON in,
//!   JSON out). poplib handles connect/TLS/login/STAT/LIST/UIDL; RETR is read raw by the script
//!   so messages are byte-exact (poplib itself strips line ends and only un-stuffs `..`).
//! - [`fetchmail_fetch`]: fetchmail 6.4 with a generated rcfile (0600) in a temp `HOME`,
//!   delivering each message to an MDA script that writes one numbered file per message.
//!   Quirks handled: fetchmail warns when run as root (harmless, ignored); exit code 1 means
//!   "no mail" (returns an empty list); it upgrades to TLS by itself whenever STLS is advertised
//!   and then verifies the certificate, so [`Tls::None`] sets `sslproto ''` to stay plain;
//!   certificates are checked against the test CA with the name `localhost` (`poll localhost
//!   via 127.0.0.1`). It picks CRAM-MD5 when offered (Dovecot does; through popsift that is a
//!   relayed SASL exchange). `set invisible` stops it adding a `Received:` header and
//!   `no rewrite` stops address rewriting; `fetchall` because Dovecot has no `LAST`.
//!   The MDA gets the message with LF line ends (fetchmail strips CR for MDAs): compare with
//!   [`lf_form`] of [`expected_wire_form`].
//! - [`getmail_fetch`]: getmail6 with a generated getmailrc, delivering into a Maildir owned by
//!   the unprivileged mail user (`user = popsift-mail`: getmail refuses to deliver as root),
//!   read back in delivery order. getmail6 has **no STLS** for POP3: [`Tls::Stls`] panics.
//!   getmail adds its own `Return-Path:` and re-folds header lines longer than 78 characters;
//!   compare with [`getmail_comparable`] on both sides (or [`assert_getmail_equal`]).
//! - [`RawPop`]: a minimal plain-TCP line client for transcripts and for holding a session open.
//!
//! Every client runs with a timeout (default 120 s) and is killed if it exceeds it. Set
//! `POPSIFT_HARNESS_DEBUG=1` to print every client's command line and output (fetchmail runs
//! with `-v`, so its whole POP3 dialogue is shown; run with `-- --nocapture`).
use super::{mail_user, require_program, Tls};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// A hang guard, not a performance bound: generous, because a loaded 2-core CI machine can be slow.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// Output of a client process run by [`run_with_timeout`].
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command with stdout/stderr captured to files in `dir`; kill it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, dir: &Path, timeout: Duration) -> RunOutput {
    let out_path = dir.join("client.stdout");
    let err_path = dir.join("client.stderr");
    let out = fs::File::create(&out_path).expect("create stdout file");
    let err = fs::File::create(&err_path).expect("create stderr file");
    let mut child =
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait client") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not finish within {timeout:?}; stderr: {}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = RunOutput {
        status,
        stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned(),
    };
    if std::env::var_os("POPSIFT_HARNESS_DEBUG").is_some() {
        eprintln!(
            "== {cmd:?}: {}\n-- stdout:\n{}\n-- stderr:\n{}",
            out.status,
            &out.stdout[..out.stdout.len().min(20_000)],
            out.stderr
        );
    }
    out
}

fn split_addr(addr: &str) -> (&str, u16) {
    let (host, port) = addr.rsplit_once(':').expect("addr is HOST:PORT");
    // `[::1]:110` → `::1` (the clients take the bare address).
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host, port.parse().expect("port number"))
}

fn client_dir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new().prefix(prefix).tempdir().expect("create temp dir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    d
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------------
// poplib

/// Options for [`poplib_fetch`]. `Default`: plain, RETR every message, no DELE, QUIT.
#[derive(Debug, Clone)]
pub struct PoplibOpts {
    pub tls: Tls,
    /// Extra trusted root (PEM) for TLS; without it the system roots are used.
    pub ca: Option<PathBuf>,
    /// `DELE` every message after retrieving it.
    pub delete: bool,
    /// `false`: close the socket without QUIT (RFC 1939 §6: nothing is deleted).
    pub quit: bool,
    /// Log in with APOP (timestamp from the greeting) instead of USER/PASS.
    pub apop: bool,
    /// `Some(k)`: fetch with `TOP n k` instead of `RETR n` (e.g. fetchmail's `TOP n 99999999`).
    pub top_lines: Option<u64>,
}

impl Default for PoplibOpts {
    fn default() -> Self {
        PoplibOpts { tls: Tls::None, ca: None, delete: false, quit: true, apop: false, top_lines: None }
    }
}

/// What a poplib session saw.
#[derive(Debug, Clone, Default)]
pub struct PopFetch {
    pub greeting: String,
    /// CAPA capability names (upper case, sorted), `None` when CAPA failed.
    pub capa: Option<Vec<String>>,
    pub stat: (usize, u64),
    pub list: Vec<(usize, u64)>,
    /// Empty when UIDL is not supported.
    pub uidl: Vec<(usize, String)>,
    /// RETR (or TOP) content per message in LIST order: dot-unstuffed, line ends exactly as
    /// received (CRLF), without the terminating `.CRLF`.
    pub messages: Vec<Vec<u8>>,
    /// QUIT's status line, `None` when `quit: false`.
    pub quit_reply: Option<String>,
    /// Lines that started with `.` but were neither `..` nor the terminator (server forgot to
    /// dot-stuff). Must be 0.
    pub stuffing_violations: usize,
}

/// Fetch `addr` with Python's `poplib`. Panics with the client's error (e.g. `-ERR [IN-USE] …`)
/// when the session fails; use [`try_poplib_fetch`] to inspect failures.
pub fn poplib_fetch(addr: &str, user: &str, pass: &str, opts: &PoplibOpts) -> PopFetch {
    try_poplib_fetch(addr, user, pass, opts).unwrap_or_else(|e| panic!("poplib_fetch {addr} as {user}: {e}"))
}

/// Like [`poplib_fetch`] but returns the client's error text (`"error_proto: b'-ERR …'"`).
pub fn try_poplib_fetch(addr: &str, user: &str, pass: &str, opts: &PoplibOpts) -> Result<PopFetch, String> {
    use serde_json::{json, Value};
    let python = require_program("python3", "python3");
    let (host, port) = split_addr(addr);
    let args = json!({
        "host": host,
        "port": port,
        "user": user,
        "pass": pass,
        "tls": match opts.tls { Tls::None => "none", Tls::Stls => "stls", Tls::Implicit => "implicit" },
        "ca": opts.ca.as_ref().map(|p| p.display().to_string()),
        "delete": opts.delete,
        "quit": opts.quit,
        "apop": opts.apop,
        "top_lines": opts.top_lines,
    });
    let dir = client_dir("popsift-poplib-");
    let mut cmd = Command::new(python);
    cmd.arg(repo_path("tests/clients/poplib_fetch.py")).arg(args.to_string());
    let out = run_with_timeout(cmd, dir.path(), CLIENT_TIMEOUT);
    let v: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| format!("poplib_fetch.py printed no JSON ({e}); status {}; stderr: {}", out.status, out.stderr))?;
    if let Some(err) = v.get("error") {
        return Err(err.as_str().unwrap_or_default().to_string());
    }
    let pairs = |key: &str| -> Vec<(usize, Value)> {
        v[key]
            .as_array()
            .map(|a| a.iter().map(|p| (p[0].as_u64().unwrap_or(0) as usize, p[1].clone())).collect())
            .unwrap_or_default()
    };
    let b64 = |s: &str| base64_decode(s);
    Ok(PopFetch {
        greeting: v["greeting"].as_str().unwrap_or_default().to_string(),
        capa: v["capa"].as_array().map(|a| a.iter().map(|c| c.as_str().unwrap_or_default().to_string()).collect()),
        stat: (v["stat"][0].as_u64().unwrap_or(0) as usize, v["stat"][1].as_u64().unwrap_or(0)),
        list: pairs("list").into_iter().map(|(n, s)| (n, s.as_u64().unwrap_or(0))).collect(),
        uidl: pairs("uidl").into_iter().map(|(n, s)| (n, s.as_str().unwrap_or_default().to_string())).collect(),
        messages: v["messages"]
            .as_array()
            .map(|a| a.iter().map(|m| b64(m.as_str().unwrap_or_default())).collect())
            .unwrap_or_default(),
        quit_reply: v["quit_reply"].as_str().map(str::to_string),
        stuffing_violations: v["stuffing_violations"].as_u64().unwrap_or(0) as usize,
    })
}

fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a' + 26) as u32),
            b'0'..=b'9' => Some((c - b'0' + 52) as u32),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// fetchmail

/// Fetch `addr` with fetchmail 6.4; returns each message as its MDA received it (LF line
/// ends, see [`lf_form`]), in retrieval order. `keep: false` deletes on the server.
/// Exit code 1 ("no mail") gives an empty list; any other failure panics with fetchmail's
/// output. Shorthand for [`fetchmail_fetch_with`] with default auth.
pub fn fetchmail_fetch(addr: &str, user: &str, pass: &str, keep: bool, tls: Tls, ca: Option<&Path>) -> Vec<Vec<u8>> {
    fetchmail_fetch_with(addr, user, pass, &FetchmailOpts { keep, tls, ca: ca.map(Path::to_path_buf), auth: None })
}

/// Options for [`fetchmail_fetch_with`].
#[derive(Debug, Clone)]
pub struct FetchmailOpts {
    /// `keep` (leave mail on the server) or `no keep` (DELE + QUIT).
    pub keep: bool,
    pub tls: Tls,
    /// Test CA for certificate verification (`sslcertfile`); the name checked is `localhost`.
    pub ca: Option<PathBuf>,
    /// fetchmail's `auth` keyword (`password` = USER/PASS, `cram-md5`, `apop`, …);
    /// `None` = fetchmail's default `any`, which picks CRAM-MD5 when the server offers it.
    pub auth: Option<String>,
}

/// [`fetchmail_fetch`] with every option.
pub fn fetchmail_fetch_with(addr: &str, user: &str, pass: &str, opts: &FetchmailOpts) -> Vec<Vec<u8>> {
    let (keep, tls, ca) = (opts.keep, opts.tls, opts.ca.as_deref());
    let fetchmail = require_program("fetchmail", "fetchmail");
    let (host, port) = split_addr(addr);
    let dir = client_dir("popsift-fetchmail-");
    let home = dir.path().join("home");
    let out_dir = dir.path().join("out");
    fs::create_dir(&home).expect("mkdir home");
    fs::create_dir(&out_dir).expect("mkdir out");
    let mda = dir.path().join("mda.sh");
    fs::write(
        &mda,
        format!(
            "#!/bin/sh\n# One file per message, numbered in delivery order.\nn=$(ls '{d}' | wc -l)\nexec cat > '{d}/'$(printf %06d \"$n\")\n",
            d = out_dir.display()
        ),
    )
    .expect("write mda.sh");
    fs::set_permissions(&mda, fs::Permissions::from_mode(0o755)).expect("chmod mda.sh");
    let tls_opts = match (tls, ca) {
        (Tls::None, _) => "sslproto ''".to_string(),
        (Tls::Stls, Some(ca)) => {
            format!("sslproto 'tls1.2+' sslcertck sslcommonname localhost sslcertfile '{}'", ca.display())
        }
        (Tls::Implicit, Some(ca)) => {
            format!("ssl sslcertck sslcommonname localhost sslcertfile '{}'", ca.display())
        }
        (Tls::Stls, None) => "sslproto 'tls1.2+' sslcertck sslcommonname localhost".to_string(),
        (Tls::Implicit, None) => "ssl sslcertck sslcommonname localhost".to_string(),
    };
    let rc = format!(
        "set no bouncemail\nset no spambounce\nset no syslog\nset invisible\n\
         poll localhost via {host} port {port} proto pop3{auth}\n\
         \tuser \"{user}\" there with password \"{pass}\" is root here\n\
         \t{keep} fetchall no rewrite {tls_opts}\n\
         \tmda \"{mda}\"\n",
        keep = if keep { "keep" } else { "no keep" },
        auth = opts.auth.as_ref().map(|a| format!(" auth {a}")).unwrap_or_default(),
        mda = mda.display(),
    );
    let rcfile = home.join(".fetchmailrc");
    fs::write(&rcfile, rc).expect("write .fetchmailrc");
    fs::set_permissions(&rcfile, fs::Permissions::from_mode(0o600)).expect("chmod rcfile");
    let mut cmd = Command::new(fetchmail);
    cmd.env("HOME", &home)
        .env("FETCHMAILHOME", &home)
        .env("LC_ALL", "C")
        .args(["--nodetach", "--nosyslog", "-v", "-f"])
        .arg(&rcfile)
        .arg("--pidfile")
        .arg(home.join("fetchmail.pid"));
    let out = run_with_timeout(cmd, dir.path(), CLIENT_TIMEOUT);
    match out.status.code() {
        Some(0) => {}
        Some(1) => return Vec::new(),
        _ => panic!("fetchmail from {addr} failed ({}):\nstdout: {}\nstderr: {}", out.status, out.stdout, out.stderr),
    }
    read_numbered(&out_dir)
}

fn read_numbered(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> =
        fs::read_dir(dir).expect("read output dir").map(|e| e.expect("dir entry").path()).collect();
    names.sort();
    names.iter().map(|p| fs::read(p).expect("read message")).collect()
}

/// A message with every CRLF turned into LF: what fetchmail hands its MDA.
pub fn lf_form(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// getmail6

/// Fetch `addr` with getmail6 into a Maildir (owned by the mail user) and read the messages
/// back in delivery order (getmail's Maildir names start with the delivery time; ties are
/// broken by its per-process counter). `delete: true` deletes on the server. Compare with
/// [`getmail_comparable`]. [`Tls::Stls`] panics: getmail6 has no STLS for POP3.
pub fn getmail_fetch(addr: &str, user: &str, pass: &str, delete: bool, tls: Tls, ca: Option<&Path>) -> Vec<Vec<u8>> {
    let getmail = require_program("getmail", "getmail6");
    let (host, port) = split_addr(addr);
    let mu = mail_user();
    let dir = client_dir("popsift-getmail-");
    let state = dir.path().join("state");
    fs::create_dir(&state).expect("mkdir state");
    let maildir = dir.path().join("Maildir");
    for sub in ["", "/tmp", "/new", "/cur"] {
        let d = PathBuf::from(format!("{}{sub}", maildir.display()));
        fs::create_dir(&d).expect("mkdir Maildir");
        std::os::unix::fs::chown(&d, Some(mu.uid), Some(mu.gid)).expect("chown Maildir");
    }
    let retriever = match tls {
        Tls::None => "type = SimplePOP3Retriever\n".to_string(),
        Tls::Implicit => format!(
            "type = SimplePOP3SSLRetriever\n{}ssl_cert_hostname = localhost\n",
            ca.map(|c| format!("ca_certs = {}\n", c.display())).unwrap_or_default()
        ),
        Tls::Stls => {
            panic!("getmail6 has no STLS support for POP3; use Tls::None or Tls::Implicit")
        }
    };
    let rc = format!(
        "[retriever]\n{retriever}server = {host}\nport = {port}\nusername = {user}\npassword = {pass}\n\n\
         [destination]\ntype = Maildir\npath = {md}/\nuser = {mu}\n\n\
         [options]\nverbose = 0\nread_all = true\ndelete = {delete}\nreceived = false\n\
         delivered_to = false\nmessage_log_syslog = false\n",
        md = maildir.display(),
        mu = mu.name,
    );
    let rcfile = state.join("getmailrc");
    fs::write(&rcfile, rc).expect("write getmailrc");
    fs::set_permissions(&rcfile, fs::Permissions::from_mode(0o600)).expect("chmod getmailrc");
    // getmail6 forks a child per Maildir delivery and installs its SIGCHLD handler only after
    // the fork (`ForkingBase.forkchild`): a child that exits first is never noticed and the
    // parent gives up after 60 s with "waiting child pid N timed out". That race is
    // getmail's, not the server's or popsift's; on that error getmail aborts with RSET and
    // QUIT (nothing deleted on the server), so the fetch is retried from an empty Maildir.
    let mut attempt = 1;
    loop {
        let mut cmd = Command::new(&getmail);
        cmd.env("HOME", dir.path()).arg("--getmaildir").arg(&state).arg("--rcfile").arg(&rcfile);
        let out = run_with_timeout(cmd, dir.path(), CLIENT_TIMEOUT);
        if out.status.success() {
            break;
        }
        let fork_race = out.stderr.contains("waiting child pid") && out.stderr.contains("timed out");
        if !fork_race || attempt == 3 {
            panic!("getmail from {addr} failed ({}):\nstdout: {}\nstderr: {}", out.status, out.stdout, out.stderr);
        }
        eprintln!("getmail hit its own delivery-child race (attempt {attempt}); retrying from an empty Maildir");
        for sub in ["tmp", "new", "cur"] {
            for e in fs::read_dir(maildir.join(sub)).expect("read Maildir") {
                fs::remove_file(e.expect("dir entry").path()).expect("clear Maildir");
            }
        }
        attempt += 1;
    }
    let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = Vec::new();
    for sub in ["new", "cur"] {
        for e in fs::read_dir(maildir.join(sub)).expect("read Maildir") {
            let e = e.expect("dir entry");
            let mtime = e.metadata().and_then(|m| m.modified()).expect("mtime");
            files.push((mtime, e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    files.sort_by(|a, b| getmail_name_key(&a.1).cmp(&getmail_name_key(&b.1)).then(a.0.cmp(&b.0)));
    files.iter().map(|(_, _, p)| fs::read(p).expect("read message")).collect()
}

/// getmail's Maildir names are `SECONDS.M<micros>P<pid>Q<count>R<random>.host`: order by
/// seconds, then the per-run delivery counter Q.
fn getmail_name_key(name: &str) -> (u64, u64, u64) {
    let secs = name.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let rest = name.split('.').nth(1).unwrap_or("");
    let num_after = |tag: char| -> u64 {
        rest.split_once(tag)
            .map(|(_, r)| r.chars().take_while(char::is_ascii_digit).collect::<String>())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    (secs, num_after('Q'), num_after('M'))
}

/// Normal form for comparing a getmail-delivered message with what was stored/served:
/// line ends become LF; in the header block every `Return-Path:` field is dropped (getmail
/// writes its own), folded lines are unfolded and runs of spaces/tabs collapse to one space
/// (getmail re-folds long header lines); the body is left byte for byte.
pub fn getmail_comparable(bytes: &[u8]) -> Vec<u8> {
    let lf = lf_form(bytes);
    let split = find_subslice(&lf, b"\n\n").map(|i| i + 1);
    let (head, body) = match split {
        Some(i) => lf.split_at(i),
        None => (&lf[..], &[][..]),
    };
    // Unfold: join continuation lines to their field.
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        if (line[0] == b' ' || line[0] == b'\t') && !fields.is_empty() {
            let f = fields.last_mut().expect("field");
            f.push(b' ');
            f.extend_from_slice(line);
        } else {
            fields.push(line.to_vec());
        }
    }
    let mut out = Vec::with_capacity(lf.len());
    for f in fields {
        if f.len() >= 12 && f[..12].eq_ignore_ascii_case(b"return-path:") {
            continue;
        }
        let mut prev_space = false;
        for &b in &f {
            let space = b == b' ' || b == b'\t';
            if !(space && prev_space) {
                out.push(if space { b' ' } else { b });
            }
            prev_space = space;
        }
        while out.last() == Some(&b' ') {
            out.pop();
        }
        out.push(b'\n');
    }
    if split.is_some() {
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// Assert that getmail's messages are the expected wire messages, modulo
/// [`getmail_comparable`], in order.
pub fn assert_getmail_equal(got: &[Vec<u8>], expected_wire: &[Vec<u8>]) {
    assert_eq!(
        got.len(),
        expected_wire.len(),
        "getmail delivered {} messages, expected {}",
        got.len(),
        expected_wire.len()
    );
    for (i, (g, e)) in got.iter().zip(expected_wire).enumerate() {
        let (g, e) = (getmail_comparable(g), getmail_comparable(e));
        assert!(
            g == e,
            "getmail message {} differs (modulo Return-Path/refolding):\n--- got (first 600 bytes)\n{}\n--- expected\n{}",
            i + 1,
            String::from_utf8_lossy(&g[..g.len().min(600)]),
            String::from_utf8_lossy(&e[..e.len().min(600)])
        );
    }
}

fn find_subslice(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// RawPop

/// A minimal plain-TCP POP3 client for transcripts: send a line, read status lines and
/// multi-line bodies byte-exact. Every read times out after 30 s.
pub struct RawPop {
    reader: BufReader<TcpStream>,
    /// The greeting line, without CRLF.
    pub greeting: String,
}

impl RawPop {
    /// Connect and read the greeting.
    pub fn connect(addr: &str) -> RawPop {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("set_read_timeout");
        s.set_nodelay(true).expect("nodelay");
        let mut p = RawPop { reader: BufReader::new(s), greeting: String::new() };
        p.greeting = p.read_line();
        p
    }

    /// Every later read times out after `d` instead of 30 s.
    pub fn set_read_timeout(&mut self, d: Duration) {
        self.reader.get_ref().set_read_timeout(Some(d)).expect("set_read_timeout");
    }

    /// Send raw bytes (for pipelining several commands in one write).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).expect("write to server");
    }

    /// Send `line` + CRLF and return the status line (without CRLF).
    pub fn command(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_line()
    }

    /// Log in with USER/PASS; panics unless both answer `+OK`.
    pub fn login(&mut self, user: &str, pass: &str) {
        let r = self.command(&format!("USER {user}"));
        assert!(r.starts_with("+OK"), "USER: {r}");
        let r = self.command(&format!("PASS {pass}"));
        assert!(r.starts_with("+OK"), "PASS: {r}");
    }

    /// One line, CRLF stripped. Panics on EOF.
    pub fn read_line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf).expect("read line");
        assert!(n > 0, "connection closed by server");
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The body of a multi-line response (after its `+OK` line): dot-unstuffed, line ends as
    /// received, terminator removed.
    pub fn read_multiline(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).expect("read line");
            assert!(n > 0, "connection closed inside a multi-line response");
            if line == b".\r\n" {
                return out;
            }
            let start = usize::from(line.first() == Some(&b'.'));
            out.extend_from_slice(&line[start..]);
        }
    }

    /// Everything the server sends until it closes (or resets) the connection; what arrived
    /// before an error is kept.
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = self.reader.read_to_end(&mut out);
        out
    }

    /// True when the server has closed the connection (reads EOF).
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}
