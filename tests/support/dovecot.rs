//! A standalone Dovecot 2.3 POP3 server for one test.
//!
//! [`Dovecot::start`] writes a complete config (`dovecot.conf`) into a fresh temp dir and runs
//! `dovecot -F -c dovecot.conf` as a child; `/etc/dovecot` is never read and the system service
//! is never needed. The config (see [`Dovecot::config_text`]) follows the facts in
//! `shared/PEERS.md`:
//! - `base_dir`, `state_dir`, `log_path` under the temp dir; `protocols = pop3`,
//!   `listen = 127.0.0.1`; `service pop3-login` with a plain listener (STLS offered) and an
//!   `ssl = yes` listener (POP3S), both on [`free_port`]s.
//! - `passdb passwd-file` with `scheme=PLAIN` (APOP and CRAM-MD5 need plaintext passwords),
//!   `auth_mechanisms = plain login apop cram-md5`, `disable_plaintext_auth = no`.
//! - `userdb static` mapping every user to the unprivileged [`mail_user`] (Dovecot will not
//!   touch mail as root); `mail_location = maildir:TMP/mail/%u`.
//! - `pop3_lock_session` from [`DovecotOptions::lock_session`] (Dovecot's default is `no`: two
//!   logins to one mailbox both succeed; with `yes` the second gets
//!   `-ERR [IN-USE] Mailbox is locked by another POP3 session.`).
//! - The server certificate is signed by a test CA generated once per test process (rcgen);
//!   its SANs are `localhost` and `127.0.0.1`, CN `localhost`.
//!
//! The temp dir is made world-traversable (0755) because Dovecot's login processes run as
//! `dovenull` and mail access runs as the mail user. If binding fails (the tiny race between
//! [`free_port`] and Dovecot's bind), start retries with new ports.
use super::{free_port, mail_user, require_program};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Options for [`Dovecot::start`].
#[derive(Debug, Clone)]
pub struct DovecotOptions {
    /// `pop3_lock_session = yes`: a second concurrent login to a mailbox gets `-ERR [IN-USE]`.
    pub lock_session: bool,
    /// `(user, password)` pairs; each gets an empty Maildir. Passwords are stored in plain text.
    pub users: Vec<(String, String)>,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        DovecotOptions { lock_session: false, users: vec![("alice".to_string(), "alice-secret-pw".to_string())] }
    }
}

/// A running Dovecot; stopped (`dovecot -c CONF stop`, then killed if it lingers) on drop.
pub struct Dovecot {
    dir: tempfile::TempDir,
    conf: PathBuf,
    ca: PathBuf,
    pop3_port: u16,
    pop3s_port: u16,
    child: Option<Child>,
    users: Vec<(String, String)>,
}

struct TestCa {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// One CA and server certificate per test process (key generation is cheap, but there is no
/// reason to do it per server).
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "popsift test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");

        let key = KeyPair::generate().expect("generate server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("server params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca_cert, &ca_key).expect("sign server cert");
        TestCa { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    })
}

impl Dovecot {
    /// Start Dovecot and wait until the plain POP3 port answers with a `+OK` greeting.
    ///
    /// Panics (never skips) when `dovecot` is not installed, and with Dovecot's log when it
    /// does not come up within 15 s.
    pub fn start(opts: DovecotOptions) -> Dovecot {
        let binary = require_program("dovecot", "dovecot-pop3d");
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&binary, &opts) {
                Ok(d) => return d,
                Err(e) if e.contains("Address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("dovecot could not bind its ports after 3 attempts: {last_error}");
    }

    fn try_start(binary: &Path, opts: &DovecotOptions) -> Result<Dovecot, String> {
        let user = mail_user();
        let dir = tempfile::Builder::new().prefix("popsift-dovecot-").tempdir().expect("create temp dir");
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        let ca = test_ca();
        fs::write(root.join("ca.pem"), &ca.ca_pem).expect("write ca.pem");
        fs::write(root.join("server.pem"), &ca.cert_pem).expect("write server.pem");
        fs::write(root.join("server.key"), &ca.key_pem).expect("write server.key");
        fs::set_permissions(root.join("server.key"), fs::Permissions::from_mode(0o600)).expect("chmod server.key");
        let passwd: String = opts.users.iter().map(|(u, p)| format!("{u}:{p}::::::\n")).collect();
        fs::write(root.join("passwd"), passwd).expect("write passwd");
        // Readable by the dovecot group (the auth process); test passwords are no secret.
        fs::set_permissions(root.join("passwd"), fs::Permissions::from_mode(0o644)).expect("chmod passwd");
        let mail = root.join("mail");
        fs::create_dir(&mail).expect("mkdir mail");
        std::os::unix::fs::chown(&mail, Some(user.uid), Some(user.gid)).expect("chown mail");
        for (u, _) in &opts.users {
            for sub in ["", "/tmp", "/new", "/cur"] {
                let d = mail.join(format!("{u}{sub}"));
                fs::create_dir(&d).expect("mkdir maildir");
                std::os::unix::fs::chown(&d, Some(user.uid), Some(user.gid)).expect("chown maildir");
                fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).expect("chmod");
            }
        }
        let pop3_port = free_port();
        let pop3s_port = free_port();
        let conf = root.join("dovecot.conf");
        let text = Self::config_text(root, pop3_port, pop3s_port, opts.lock_session);
        fs::write(&conf, text).expect("write dovecot.conf");
        let log = root.join("dovecot.log");
        let stderr = fs::File::create(root.join("dovecot.stderr")).expect("create stderr file");
        let child = Command::new(binary)
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut d = Dovecot {
            ca: root.join("ca.pem"),
            dir,
            conf,
            pop3_port,
            pop3s_port,
            child: Some(child),
            users: opts.users.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                d.child = None;
                return Err(format!(
                    "dovecot exited at start ({status}); stderr: {}\nlog: {}",
                    fs::read_to_string(d.dir.path().join("dovecot.stderr")).unwrap_or_default(),
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if greeting_ok(pop3_port) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                let msg = format!(
                    "dovecot did not answer on 127.0.0.1:{pop3_port} within 15 s; log: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
                drop(d);
                return Err(msg);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The generated configuration (for documentation and debugging).
    pub fn config_text(root: &Path, pop3_port: u16, pop3s_port: u16, lock: bool) -> String {
        let user = mail_user();
        let r = root.display();
        let lock = if lock { "yes" } else { "no" };
        format!(
            r#"# Generated by tests/support/dovecot.rs: a standalone POP3 server for one test.
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
debug_log_path = {r}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{r}/server.pem
ssl_key = <{r}/server.key
disable_plaintext_auth = no
auth_mechanisms = plain login apop cram-md5
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:{r}/mail/%u
pop3_lock_session = {lock}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {r}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={r}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {pop3s_port}
    ssl = yes
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"#,
            uid = user.uid,
            gid = user.gid,
        )
    }

    /// Plain POP3 listener, `127.0.0.1:PORT`; STLS is offered.
    pub fn pop3_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pop3_port)
    }

    /// Implicit-TLS POP3S listener, `127.0.0.1:PORT`.
    pub fn pop3s_addr(&self) -> String {
        format!("127.0.0.1:{}", self.pop3s_port)
    }

    /// PEM of the test CA that signed the server certificate (SANs `localhost`, `127.0.0.1`).
    pub fn ca_pem(&self) -> &Path {
        &self.ca
    }

    /// The temp dir holding config, log, certificates and mail.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Dovecot's log so far (useful in assertion messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The user's Maildir (`…/mail/USER`).
    pub fn maildir(&self, user: &str) -> PathBuf {
        assert!(self.users.iter().any(|(u, _)| u == user), "unknown test user {user}");
        self.dir.path().join("mail").join(user)
    }

    /// The password configured for `user`.
    pub fn password(&self, user: &str) -> &str {
        &self.users.iter().find(|(u, _)| u == user).unwrap_or_else(|| panic!("unknown test user {user}")).1
    }

    /// Deliver like an MDA: write `Maildir/tmp/NAME`, then rename to `Maildir/new/NAME`, owned
    /// by the mail user. `name` must be a valid Maildir base name (no `/`, `:` or `,`); it is
    /// the key under which [`Dovecot::mailbox`] reports the message.
    ///
    /// Dovecot numbers messages in the order it first sees them; messages delivered before the
    /// first login are ordered by file name (see `support::mailbox` for the naming scheme that
    /// keeps POP3 order equal to [`super::test_mailbox`] order).
    pub fn deliver(&self, user: &str, name: &str, bytes: &[u8]) {
        assert!(!name.contains(['/', ':', ',']) && !name.is_empty(), "bad maildir name {name:?}");
        let md = self.maildir(user);
        let tmp = md.join("tmp").join(name);
        fs::write(&tmp, bytes).expect("write into Maildir/tmp");
        let u = mail_user();
        std::os::unix::fs::chown(&tmp, Some(u.uid), Some(u.gid)).expect("chown message");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).expect("chmod message");
        fs::rename(&tmp, md.join("new").join(name)).expect("rename tmp -> new");
    }

    /// Start with default options ([`DovecotOptions::default`]: user `alice`, no session lock)
    /// and deliver the standard [`super::test_mailbox`] to `alice`.
    pub fn start_with_test_mailbox() -> (Dovecot, Vec<super::TestMessage>) {
        let d = Dovecot::start(DovecotOptions::default());
        let mbox = super::test_mailbox();
        d.deliver_all("alice", &mbox);
        (d, mbox)
    }

    /// `UIDL` as Dovecot itself answers it (a direct plain USER/PASS session that QUITs without
    /// deleting): `(message number, unique id)`. Opens a session, so with
    /// `lock_session: true` it fails while another session holds the mailbox.
    pub fn uidls(&self, user: &str) -> Vec<(usize, String)> {
        let mut p = super::RawPop::connect(&self.pop3_addr());
        p.login(user, self.password(user));
        let r = p.command("UIDL");
        assert!(r.starts_with("+OK"), "UIDL: {r}");
        let body = p.read_multiline();
        let _ = p.command("QUIT");
        String::from_utf8_lossy(&body)
            .lines()
            .filter_map(|l| {
                let (n, uid) = l.split_once(' ')?;
                Some((n.parse().ok()?, uid.trim().to_string()))
            })
            .collect()
    }

    /// Deliver every message of a list (e.g. [`super::test_mailbox`]) in order.
    pub fn deliver_all(&self, user: &str, messages: &[super::TestMessage]) {
        for m in messages {
            self.deliver(user, &m.name, &m.bytes);
        }
    }

    /// Every message now in `new/` and `cur/`, keyed by the delivered name: Dovecot's
    /// `:2,FLAGS` info and any `,S=…`/`,W=…` size fields are stripped so keys stay stable.
    /// Bytes are the stored file, unchanged.
    pub fn mailbox(&self, user: &str) -> BTreeMap<String, Vec<u8>> {
        let md = self.maildir(user);
        let mut out = BTreeMap::new();
        for sub in ["new", "cur"] {
            for entry in fs::read_dir(md.join(sub)).expect("read maildir") {
                let entry = entry.expect("dir entry");
                let file = entry.file_name().to_string_lossy().into_owned();
                let key = file.split([':', ',']).next().unwrap_or("").to_string();
                let bytes = fs::read(entry.path()).expect("read message");
                out.insert(key, bytes);
            }
        }
        out
    }
}

fn greeting_ok(port: u16) -> bool {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+OK")
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(binary) = super::find_program("dovecot") {
            let _ = Command::new(binary)
                .arg("-c")
                .arg(&self.conf)
                .arg("stop")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}
