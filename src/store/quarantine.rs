//! The quarantine: a Maildir per user under `<state_dir>/quarantine/`, holding messages the
//! rules condemned with `action: quarantine`.
//!
//! A message is written to `tmp/`, fsynced, renamed into `new/`, and the directory fsynced
//! (the Maildir delivery protocol plus the durability a crash needs); only after `store`
//! returns may the caller send `DELE` upstream. popsift's own fields (`X-Popsift-*`) are
//! prepended so `list` can show why a message is here; `original` strips exactly those
//! lines again, so a restored message is byte-identical to what the server held.
//!
//! # Whose folder
//! One Maildir per mailbox identity: the user name the login used as popsift relayed it
//! (USER/PASS, APOP, or the identity inside SASL PLAIN/LOGIN/CRAM-MD5), byte for byte — no
//! case folding, so `BOB` and `bob` are two folders, each with its own quota. The name is
//! escaped injectively into one path component ([`user_dir_name`]): bytes outside
//! `[A-Za-z0-9._@+-]`, a leading `.`, and `%` itself become `%XX`, so no two names share a
//! folder (`a/b` → `a%2Fb`, `a\b` → `a%5Cb`, `a_b` stays). Names with control bytes never
//! get here (refused at the command). Copies from several upstreams for one user name share
//! the folder and its quota; each copy records its upstream.
//!
//! # Which copy is which
//! Every copy carries `X-Popsift-Digest: sha256:<hex>` of the message as stored. A message
//! still on the server after an earlier copy (the client dropped before QUIT) counts as
//! already quarantined only if this folder holds a copy from the same upstream with the
//! same digest: popsift fetches it again ([`Copy`], streamed, bounded) and compares, so a
//! reused UIDL or a second user's message is never taken for a copy it is not.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a message is in quarantine, written into its `X-Popsift-*` fields.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub user: String,
    pub upstream: String,
    pub uidl: String,
    pub score: f64,
    pub rules: Vec<String>,
    /// The size the server reported in LIST, to tell a reused UIDL from the same message.
    pub size: u64,
}

/// One quarantined message as `list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The Maildir file name: the id `show` and `restore` take.
    pub id: String,
    pub user: String,
    /// The upstream server (`host:port`) of the mailbox it came from: with `user`, whose it is.
    pub upstream: String,
    /// Unix time the message was quarantined.
    pub quarantined_at: u64,
    pub from: String,
    pub subject: String,
    pub rules: String,
    pub score: String,
    pub uidl: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no quarantined message {0:?}")]
    NotFound(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QuarantineError + '_ {
    move |source| QuarantineError::Io { path: path.to_path_buf(), source }
}

/// A quarantine backend: the Maildir tree (default) or Redis
/// ([`super::redis_quarantine::RedisQuarantine`]). Every method blocks.
pub trait QuarantineStore: Send + Sync + std::fmt::Debug {
    /// Starts a copy (see [`Copy`]).
    fn begin(&self, meta: &Meta) -> Result<Copy, QuarantineError>;
    /// What `user`'s folder holds (see [`Quarantine::usage`]). A store that cannot tell
    /// answers with a full quota, so nothing more is quarantined (nor deleted).
    fn usage(&self, user: &str, upstream: &str) -> Usage;
    /// Every quarantined message, oldest first.
    fn list(&self) -> Result<Vec<Listed>, QuarantineError>;
    /// The quarantined messages of one mailbox (`user` at `upstream`), oldest first. The
    /// default filters [`Self::list`]; a store that keeps mailboxes apart reads only one.
    fn list_mailbox(&self, user: &str, upstream: &str) -> Result<Vec<Listed>, QuarantineError> {
        Ok(self.list()?.into_iter().filter(|m| m.user == user && m.upstream == upstream).collect())
    }
    /// The stored bytes (with popsift's fields) of a message by id or unique id prefix.
    fn show(&self, id: &str) -> Result<Vec<u8>, QuarantineError>;
    /// Removes a message by id or unique id prefix.
    fn remove(&self, id: &str) -> Result<(), QuarantineError>;
    /// The stored bytes of the message whose id is exactly `id` (no prefixes: the review
    /// page and the serving of released messages name one message, never "the one that
    /// starts like this", which could be another user's copy). Prefixes are for the CLI.
    fn show_exact(&self, id: &str) -> Result<Vec<u8>, QuarantineError>;
    /// Removes the message whose id is exactly `id` (see [`Self::show_exact`]).
    fn remove_exact(&self, id: &str) -> Result<(), QuarantineError>;
    /// Where it lives, for messages (a directory, or a Redis URL without credentials).
    fn location(&self) -> String;
}

/// Quarantines [`Quarantine::for_store`] keeps built, at most.
const BUILT_KEPT: usize = 8;

/// The quarantine, whichever store holds it (cheap to clone).
#[derive(Debug, Clone)]
pub struct Quarantine {
    store: std::sync::Arc<dyn QuarantineStore>,
}

/// The Maildir quarantine root (`<state_dir>/quarantine`).
#[derive(Debug, Clone)]
pub struct MaildirQuarantine {
    root: PathBuf,
}

/// A user name as one path component, injectively: `[A-Za-z0-9._@+-]` stays (but not a
/// leading `.`), every other byte, `%` included, becomes `%XX`; the empty name is `%`
/// (which no other name produces).
pub fn user_dir_name(user: &str) -> String {
    if user.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(user.len());
    for (i, &b) in user.as_bytes().iter().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b"_@+-".contains(&b) || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a user's quarantine folder holds, for the quota and the "already quarantined" test.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub messages: u64,
    pub bytes: u64,
    /// Digests (`sha256:<hex>`) of the copies that came from the upstream asked about.
    pub digests: std::collections::HashSet<String>,
}

/// Length of the digest field's value: `sha256:` and 64 hex digits.
pub const DIGEST_LEN: usize = 7 + 64;
pub const DIGEST_FIELD: &str = "X-Popsift-Digest: ";

/// A quarantine copy being written: popsift's fields first, the message streamed in with
/// [`Copy::write`], then [`Copy::commit`] fills in the digest and makes it durable (Maildir:
/// `tmp/` file, fsync, rename to `new/`; Redis: one `MULTI`/`EXEC` on a server checked to
/// run with `appendfsync always`). Dropped without commit, nothing is kept.
pub struct Copy {
    sink: Box<dyn CopySink>,
    hash: ring::digest::Context,
    len: u64,
}

/// Where a [`Copy`]'s bytes go: one per quarantine backend.
pub trait CopySink: Send {
    /// Appends stored bytes (popsift's fields were given at creation).
    fn write(&mut self, chunk: &[u8]) -> Result<(), QuarantineError>;
    /// Writes `digest` (`sha256:<hex>`, [`DIGEST_LEN`] bytes) into the reserved field and
    /// makes the copy durable; returns where it is (a path, or `redis:<key>`).
    fn commit(self: Box<Self>, digest: &str, len: u64) -> Result<PathBuf, QuarantineError>;
}

impl Copy {
    pub fn new(sink: Box<dyn CopySink>) -> Copy {
        Copy { sink, hash: ring::digest::Context::new(&ring::digest::SHA256), len: 0 }
    }

    /// Appends message bytes.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), QuarantineError> {
        self.hash.update(chunk);
        self.len += chunk.len() as u64;
        self.sink.write(chunk)
    }

    /// Message bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `sha256:<hex>` of the message bytes written so far.
    pub fn digest(&self) -> String {
        let d = self.hash.clone().finish();
        let hex = crate::hex::lower(d.as_ref());
        format!("sha256:{hex}")
    }

    /// Makes the copy durable; only after this returns may the message be DELEd.
    pub fn commit(self) -> Result<PathBuf, QuarantineError> {
        let digest = self.digest();
        self.sink.commit(&digest, self.len)
    }
}

/// The Maildir sink: a `tmp/` file.
struct FileSink {
    file: File,
    tmp: PathBuf,
    new: PathBuf,
    md: PathBuf,
    digest_at: u64,
    committed: bool,
}

impl CopySink for FileSink {
    fn write(&mut self, chunk: &[u8]) -> Result<(), QuarantineError> {
        self.file.write_all(chunk).map_err(io_err(&self.tmp))
    }

    fn commit(mut self: Box<Self>, digest: &str, _len: u64) -> Result<PathBuf, QuarantineError> {
        self.file.write_all_at(digest.as_bytes(), self.digest_at).map_err(io_err(&self.tmp))?;
        self.file.sync_all().map_err(io_err(&self.tmp))?;
        fs::rename(&self.tmp, &self.new).map_err(io_err(&self.new))?;
        self.committed = true;
        sync_dir(&self.md.join("new"))?;
        Ok(self.new.clone())
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_name() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "localhost".into());
    let host: String = host.trim().chars().map(|c| if c == '/' || c == ':' { '_' } else { c }).collect();
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        host
    )
}

fn sync_dir(dir: &Path) -> Result<(), QuarantineError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl Quarantine {
    /// The Maildir quarantine: `root` holds one Maildir per user (config `quarantine.dir`,
    /// default `<state_dir>/quarantine`).
    pub fn new(root: &Path) -> Quarantine {
        Quarantine { store: std::sync::Arc::new(MaildirQuarantine { root: root.to_path_buf() }) }
    }

    /// The quarantine the configuration names: Redis with `store.backend: redis`, else the
    /// Maildir tree at `quarantine.dir`.
    pub fn for_config(config: &crate::config::Config) -> Quarantine {
        Quarantine::for_store(&config.store, &config.quarantine.dir)
    }

    /// As [`Quarantine::for_config`], from the two settings that decide it. Built once per
    /// process for each (settings, folder) and shared after that: a session asks for it at
    /// every copy, and building one (the Redis URL checked, the location formatted) is not
    /// free. The registry keeps the last [`BUILT_KEPT`] settings seen (hot reloads add one).
    pub fn for_store(store: &crate::config::StoreSettings, dir: &Path) -> Quarantine {
        type Built = std::sync::Mutex<Vec<(crate::config::StoreSettings, PathBuf, Quarantine)>>;
        static BUILT: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
        let mut built = BUILT.get_or_init(Built::default).lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, q)) = built.iter().find(|(s, d, _)| s == store && d == dir) {
            return q.clone();
        }
        let q = match &store.redis {
            Some(r) => Quarantine::with_store(std::sync::Arc::new(super::redis_quarantine::RedisQuarantine::new(r))),
            None => Quarantine::new(dir),
        };
        if built.len() >= BUILT_KEPT {
            built.remove(0);
        }
        built.push((store.clone(), dir.to_path_buf(), q.clone()));
        q
    }

    pub fn with_store(store: std::sync::Arc<dyn QuarantineStore>) -> Quarantine {
        Quarantine { store }
    }

    /// Where the quarantine lives (for messages).
    pub fn location(&self) -> String {
        self.store.location()
    }

    /// Writes one message durably. `message` is the message as the server holds it.
    pub fn store(&self, meta: &Meta, message: &[u8]) -> Result<PathBuf, QuarantineError> {
        let mut c = self.begin(meta)?;
        c.write(message)?;
        c.commit()
    }

    /// Starts a copy (see [`Copy`]).
    pub fn begin(&self, meta: &Meta) -> Result<Copy, QuarantineError> {
        self.store.begin(meta)
    }

    /// See [`Quarantine::usage`].
    pub fn usage(&self, user: &str, upstream: &str) -> Usage {
        self.store.usage(user, upstream)
    }

    /// Every quarantined message, oldest first.
    pub fn list(&self) -> Result<Vec<Listed>, QuarantineError> {
        self.store.list()
    }

    /// The quarantined messages of one mailbox, oldest first (see
    /// [`QuarantineStore::list_mailbox`]).
    pub fn list_mailbox(&self, user: &str, upstream: &str) -> Result<Vec<Listed>, QuarantineError> {
        self.store.list_mailbox(user, upstream)
    }

    /// The stored message (with popsift's fields).
    pub fn show(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        self.store.show(id)
    }

    /// One message's description, as [`Self::list`] gives it, reading only that message
    /// (the review page's actions look messages up by id). Exact ids only: a prefix is
    /// `NotFound`, so `Listed.id` is always a full id (it is stored with a release and later
    /// served and deleted by it).
    pub fn listed(&self, id: &str) -> Result<Listed, QuarantineError> {
        Ok(describe(id, &self.store.show_exact(id)?))
    }

    /// [`Self::original`] of exactly `id` (no prefix; see [`QuarantineStore::show_exact`]).
    pub fn original_exact(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        Ok(strip_meta(&self.store.show_exact(id)?).to_vec())
    }

    /// [`Self::remove`] of exactly `id` (no prefix; see [`QuarantineStore::show_exact`]).
    pub fn remove_exact(&self, id: &str) -> Result<(), QuarantineError> {
        self.store.remove_exact(id)
    }

    /// The message exactly as the server held it.
    pub fn original(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        Ok(strip_meta(&self.show(id)?).to_vec())
    }

    /// Removes a message from the quarantine (after a restore the user confirmed).
    pub fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        self.store.remove(id)
    }
}

/// popsift's leading fields for a new copy (the digest zeroed, to be filled in at commit),
/// and the offset of the digest's value in them. Shared by every backend, so a copy reads
/// the same from Maildir and Redis.
pub fn copy_head(meta: &Meta, now: u64) -> (String, usize) {
    let clean = |s: &str| s.replace(['\r', '\n'], " ");
    // The digest and the upstream come first: `usage` reads only the start of each file.
    let first = format!("X-Popsift-Quarantined: {now}\r\n");
    let digest_at = first.len() + DIGEST_FIELD.len();
    let head = format!(
        "{first}{DIGEST_FIELD}{}\r\nX-Popsift-Upstream: {}\r\nX-Popsift-User: {}\r\nX-Popsift-UIDL: {}\r\nX-Popsift-Size: {}\r\nX-Popsift-Score: {:.1}\r\nX-Popsift-Rules: {}\r\n",
        "0".repeat(DIGEST_LEN),
        clean(&meta.upstream),
        clean(&meta.user),
        clean(&meta.uidl),
        meta.size,
        meta.score,
        clean(&meta.rules.join(","))
    );
    (head, digest_at)
}

/// A new copy's id: unique across hosts and processes (time, pid, counter, host name), the
/// Maildir file name convention.
pub fn new_id() -> String {
    unique_name()
}

impl QuarantineStore for MaildirQuarantine {
    fn begin(&self, meta: &Meta) -> Result<Copy, QuarantineError> {
        MaildirQuarantine::begin(self, meta)
    }
    fn usage(&self, user: &str, upstream: &str) -> Usage {
        MaildirQuarantine::usage(self, user, upstream)
    }
    fn list(&self) -> Result<Vec<Listed>, QuarantineError> {
        MaildirQuarantine::list(self)
    }
    /// Reads only that user's folder (the review page of one mailbox owner).
    fn list_mailbox(&self, user: &str, upstream: &str) -> Result<Vec<Listed>, QuarantineError> {
        let md = self.maildir(user);
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let dir = md.join(sub);
            let files = match fs::read_dir(&dir) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(QuarantineError::Io { path: dir, source: e }),
            };
            for f in files.flatten() {
                let Ok(bytes) = fs::read(f.path()) else { continue };
                let m = describe(&f.file_name().to_string_lossy(), &bytes);
                if m.user == user && m.upstream == upstream {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| (a.quarantined_at, &a.id).cmp(&(b.quarantined_at, &b.id)));
        Ok(out)
    }
    fn show(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        let p = self.find(id)?;
        fs::read(&p).map_err(io_err(&p))
    }
    fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        let p = self.find(id)?;
        fs::remove_file(&p).map_err(io_err(&p))
    }
    fn show_exact(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        let p = self.find_exact(id)?;
        fs::read(&p).map_err(io_err(&p))
    }
    fn remove_exact(&self, id: &str) -> Result<(), QuarantineError> {
        let p = self.find_exact(id)?;
        fs::remove_file(&p).map_err(io_err(&p))
    }
    fn location(&self) -> String {
        self.root.display().to_string()
    }
}

impl MaildirQuarantine {
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maildir(&self, user: &str) -> PathBuf {
        self.root.join(user_dir_name(user))
    }

    /// Starts a copy (see [`Copy`]).
    pub fn begin(&self, meta: &Meta) -> Result<Copy, QuarantineError> {
        let md = self.maildir(&meta.user);
        for sub in ["tmp", "new", "cur"] {
            let d = md.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let name = unique_name();
        let tmp = md.join("tmp").join(&name);
        let new = md.join("new").join(&name);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let (head, digest_at) = copy_head(meta, now);
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
        let mut sink = FileSink { file, tmp, new, md, digest_at: digest_at as u64, committed: false };
        // Dropped on error: the temporary file goes with it.
        sink.write(head.as_bytes())?;
        Ok(Copy::new(Box::new(sink)))
    }

    /// See [`Quarantine::usage`].
    pub fn usage(&self, user: &str, upstream: &str) -> Usage {
        let mut out = Usage::default();
        let md = self.maildir(user);
        for sub in ["new", "cur"] {
            let Ok(files) = fs::read_dir(md.join(sub)) else { continue };
            for f in files.flatten() {
                let Ok(mut file) = File::open(f.path()) else { continue };
                out.messages += 1;
                out.bytes += file.metadata().map_or(0, |m| m.len());
                let mut head = vec![0u8; 4096];
                let n = io::Read::read(&mut file, &mut head).unwrap_or(0);
                head.truncate(n);
                let meta = &head[..head.len() - strip_meta(&head).len()];
                let digest = header_value(meta, "X-Popsift-Digest");
                if digest.len() == DIGEST_LEN && header_value(meta, "X-Popsift-Upstream") == upstream {
                    out.digests.insert(digest);
                }
            }
        }
        out
    }

    /// Every quarantined message, oldest first.
    pub fn list(&self) -> Result<Vec<Listed>, QuarantineError> {
        let mut out = Vec::new();
        let users = match fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(QuarantineError::Io { path: self.root.clone(), source: e }),
        };
        for u in users.flatten() {
            for sub in ["new", "cur"] {
                let dir = u.path().join(sub);
                let Ok(files) = fs::read_dir(&dir) else { continue };
                for f in files.flatten() {
                    let Ok(bytes) = fs::read(f.path()) else { continue };
                    out.push(describe(&f.file_name().to_string_lossy(), &bytes));
                }
            }
        }
        out.sort_by(|a, b| (a.quarantined_at, &a.id).cmp(&(b.quarantined_at, &b.id)));
        Ok(out)
    }

    /// Finds the message whose id (file name) is exactly `id`. An id that is not a single
    /// plain file name component is `NotFound` (it could not name a copy, and must not walk
    /// the tree).
    pub fn find_exact(&self, id: &str) -> Result<PathBuf, QuarantineError> {
        let plain = !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0']);
        if plain {
            if let Ok(users) = fs::read_dir(&self.root) {
                for u in users.flatten() {
                    for sub in ["new", "cur"] {
                        let p = u.path().join(sub).join(id);
                        if p.is_file() {
                            return Ok(p);
                        }
                    }
                }
            }
        }
        Err(QuarantineError::NotFound(id.to_string()))
    }

    /// Finds a message by id (or a unique prefix of it).
    pub fn find(&self, id: &str) -> Result<PathBuf, QuarantineError> {
        let mut found = Vec::new();
        if let Ok(users) = fs::read_dir(&self.root) {
            for u in users.flatten() {
                for sub in ["new", "cur"] {
                    let Ok(files) = fs::read_dir(u.path().join(sub)) else { continue };
                    for f in files.flatten() {
                        if f.file_name().to_string_lossy().starts_with(id) && !id.is_empty() {
                            found.push(f.path());
                        }
                    }
                }
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            _ => Err(QuarantineError::NotFound(id.to_string())),
        }
    }
}

/// The stored bytes without popsift's leading `X-Popsift-*` fields.
pub fn strip_meta(stored: &[u8]) -> &[u8] {
    let mut i = 0;
    while stored[i..].len() > 10 && stored[i..i + 10].eq_ignore_ascii_case(b"X-Popsift-") {
        match memchr::memchr(b'\n', &stored[i..]) {
            Some(p) => i += p + 1,
            None => break,
        }
    }
    &stored[i..]
}

pub(crate) fn header_value(block: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(block);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case(name) {
                value = Some(v.trim().to_string());
            }
        }
    }
    value.unwrap_or_default()
}

pub(crate) fn describe(id: &str, stored: &[u8]) -> Listed {
    Listed {
        id: id.to_string(),
        user: header_value(stored, "X-Popsift-User"),
        upstream: header_value(stored, "X-Popsift-Upstream"),
        quarantined_at: header_value(stored, "X-Popsift-Quarantined").parse().unwrap_or(0),
        from: header_value(strip_meta(stored), "From"),
        subject: header_value(strip_meta(stored), "Subject"),
        rules: header_value(stored, "X-Popsift-Rules"),
        score: header_value(stored, "X-Popsift-Score"),
        uidl: header_value(stored, "X-Popsift-UIDL"),
    }
}

/// Appends a message to an mbox file (mboxrd quoting of `From ` lines).
pub fn append_mbox(path: &Path, message: &[u8]) -> Result<(), QuarantineError> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    out.extend_from_slice(format!("From popsift-restore {now}\n").as_bytes());
    for line in message.split_inclusive(|&b| b == b'\n') {
        let unquoted = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[unquoted..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.push(b'\n');
    let mut f = OpenOptions::new().create(true).append(true).open(path).map_err(io_err(path))?;
    f.write_all(&out).and_then(|_| f.sync_all()).map_err(io_err(path))
}

/// Delivers a message into a Maildir (creating it), the MDA way: tmp/ then new/.
pub fn deliver_maildir(dir: &Path, message: &[u8]) -> Result<PathBuf, QuarantineError> {
    for sub in ["tmp", "new", "cur"] {
        let d = dir.join(sub);
        fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let name = unique_name();
    let tmp = dir.join("tmp").join(&name);
    let new = dir.join("new").join(&name);
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(message).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, &new).map_err(io_err(&new))?;
    sync_dir(&dir.join("new"))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mailbox_and_one_message_are_read_alone() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(&dir.path().join("quarantine"));
        for (user, upstream, uidl) in [("alice", "a:110", "1"), ("alice", "b:110", "2"), ("bob", "a:110", "3")] {
            let meta = Meta { user: user.into(), upstream: upstream.into(), uidl: uidl.into(), ..Meta::default() };
            q.store(&meta, format!("Subject: {uidl}\r\n\r\nx\r\n").as_bytes()).unwrap();
        }
        let mine = q.list_mailbox("alice", "a:110").unwrap();
        assert_eq!(
            mine.iter().map(|m| m.uidl.as_str()).collect::<Vec<_>>(),
            ["1"],
            "the same user at another server is someone else"
        );
        // The same answer as filtering the whole list (the trait's default).
        let all: Vec<Listed> =
            q.list().unwrap().into_iter().filter(|m| m.user == "alice" && m.upstream == "a:110").collect();
        assert_eq!(mine, all);
        assert!(q.list_mailbox("carol", "a:110").unwrap().is_empty());
        let one = q.listed(&mine[0].id).unwrap();
        assert_eq!(one, mine[0]);
        assert!(matches!(q.listed("no-such-id"), Err(QuarantineError::NotFound(_))));
    }

    #[test]
    fn store_list_show_original() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(&dir.path().join("quarantine"));
        let msg = b"From: x@spam.example\r\nSubject: =?utf-8?q?win?=\r\n\r\nbody\r\n";
        let meta = Meta {
            user: "alice".into(),
            upstream: "pop:995".into(),
            uidl: "u1".into(),
            score: 9.0,
            rules: vec!["A".into(), "B".into()],
            size: 60,
        };
        let path = q.store(&meta, msg).unwrap();
        assert!(path.starts_with(dir.path().join("quarantine/alice/new")));
        let l = q.list().unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].from, "x@spam.example");
        assert_eq!(l[0].rules, "A,B");
        assert_eq!(l[0].uidl, "u1");
        let digest = format!("sha256:{}", hex(ring::digest::digest(&ring::digest::SHA256, msg).as_ref()));
        let known = q.usage("alice", "pop:995");
        assert_eq!(known.messages, 1);
        assert!(known.digests.contains(&digest), "{:?}", known.digests);
        assert!(q.usage("alice", "other:995").digests.is_empty());
        assert_eq!(q.usage("bob", "pop:995").messages, 0);
        assert_eq!(q.original(&l[0].id).unwrap(), msg);
        assert!(q.show(&l[0].id).unwrap().starts_with(b"X-Popsift-Quarantined: "));
        let md = dir.path().join("restored");
        let p = deliver_maildir(&md, &q.original(&l[0].id).unwrap()).unwrap();
        assert_eq!(fs::read(p).unwrap(), msg);
        q.remove(&l[0].id).unwrap();
        assert!(q.list().unwrap().is_empty());
    }

    fn hex(b: &[u8]) -> String {
        crate::hex::lower(b)
    }

    #[test]
    fn hostile_user_names_stay_inside() {
        assert_eq!(user_dir_name("../../etc"), "%2E.%2F..%2Fetc");
        assert_eq!(user_dir_name(".."), "%2E.");
        assert_eq!(user_dir_name(""), "%");
        assert_eq!(user_dir_name("bob@example.org"), "bob@example.org");
        assert_eq!(user_dir_name("a/b"), "a%2Fb");
        assert_eq!(user_dir_name("a\\b"), "a%5Cb");
        assert_eq!(user_dir_name("a_b"), "a_b");
        assert_eq!(user_dir_name("a%2Fb"), "a%252Fb");
        assert_eq!(user_dir_name("BOB"), "BOB");
    }

    proptest::proptest! {
        #[test]
        fn dir_names_are_injective_and_one_component(a in "\\PC{0,12}", b in "\\PC{0,12}") {
            let (da, db) = (user_dir_name(&a), user_dir_name(&b));
            proptest::prop_assert_eq!(a == b, da == db);
            proptest::prop_assert!(!da.contains('/') && da != "." && da != ".." && !da.is_empty());
        }
    }

    #[test]
    fn abandoned_copy_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path());
        let meta = Meta { user: "u".into(), ..Meta::default() };
        let mut c = q.begin(&meta).unwrap();
        c.write(b"Subject: x\r\n\r\npartial").unwrap();
        drop(c);
        assert_eq!(fs::read_dir(dir.path().join("u/tmp")).unwrap().count(), 0);
        assert_eq!(q.usage("u", "").messages, 0);
    }

    #[test]
    fn mbox_quotes_from_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("box");
        append_mbox(&p, b"Subject: a\n\nFrom here\n>From there\n").unwrap();
        let text = String::from_utf8(fs::read(&p).unwrap()).unwrap();
        assert!(text.starts_with("From popsift-restore "));
        assert!(text.contains("\n>From here\n>>From there\n"));
    }

    #[test]
    fn unwritable_root_is_an_error_not_a_panic() {
        let q = Quarantine::new(Path::new("/proc/popsift-nonexistent"));
        assert!(q.store(&Meta::default(), b"x").is_err());
    }
}
