//! The quarantine: a Maildir per user under `<state_dir>/quarantine/`, holding messages the
//! rules condemned with `action: quarantine`.
//!
//! A message is written to `tmp/`, fsynced, renamed into `new/`, and the directory fsynced
//! (the Maildir delivery protocol plus the durability a crash needs); only after `store`
//! returns may the caller send `DELE` upstream. popsift's own fields (`X-Popsift-*`) are
//! prepended so `list` can show why a message is here; `original` strips exactly those
//! lines again, so a restored message is byte-identical to what the server held.
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
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

/// The quarantine root (`<state_dir>/quarantine`).
#[derive(Debug, Clone)]
pub struct Quarantine {
    root: PathBuf,
}

/// A user name made safe as a single path component.
fn user_dir_name(user: &str) -> String {
    let s: String =
        user.chars().map(|c| if c.is_ascii_alphanumeric() || "@.-_+".contains(c) { c } else { '_' }).collect();
    if s.is_empty() || s.starts_with('.') {
        format!("_{s}")
    } else {
        s
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
    /// `root` holds one Maildir per user (config `quarantine.dir`, default
    /// `<state_dir>/quarantine`).
    pub fn new(root: &Path) -> Quarantine {
        Quarantine { root: root.to_path_buf() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maildir(&self, user: &str) -> PathBuf {
        self.root.join(user_dir_name(user))
    }

    /// Writes one message durably. `message` is the message as the server holds it.
    pub fn store(&self, meta: &Meta, message: &[u8]) -> Result<PathBuf, QuarantineError> {
        let md = self.maildir(&meta.user);
        for sub in ["tmp", "new", "cur"] {
            let d = md.join(sub);
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let name = unique_name();
        let tmp = md.join("tmp").join(&name);
        let new = md.join("new").join(&name);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let clean = |s: &str| s.replace(['\r', '\n'], " ");
        let head = format!(
            "X-Popsift-Quarantined: {now}\r\nX-Popsift-User: {}\r\nX-Popsift-Upstream: {}\r\nX-Popsift-UIDL: {}\r\nX-Popsift-Size: {}\r\nX-Popsift-Score: {:.1}\r\nX-Popsift-Rules: {}\r\n",
            clean(&meta.user),
            clean(&meta.upstream),
            clean(&meta.uidl),
            meta.size,
            meta.score,
            clean(&meta.rules.join(","))
        );
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(head.as_bytes())?;
            f.write_all(message)?;
            f.sync_all()
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(QuarantineError::Io { path: tmp, source });
        }
        fs::rename(&tmp, &new).map_err(io_err(&new))?;
        sync_dir(&md.join("new"))?;
        Ok(new)
    }

    /// (UIDL, size) of the messages already quarantined for `user` from `upstream`, so a
    /// message that is still on the server (the client dropped before QUIT, or DELE failed)
    /// is not copied again on the next login.
    pub fn stored_uidls(&self, user: &str, upstream: &str) -> std::collections::HashSet<(String, u64)> {
        let mut out = std::collections::HashSet::new();
        let md = self.maildir(user);
        for sub in ["new", "cur"] {
            let Ok(files) = fs::read_dir(md.join(sub)) else { continue };
            for f in files.flatten() {
                let Ok(mut file) = File::open(f.path()) else { continue };
                let mut head = vec![0u8; 2048];
                let n = io::Read::read(&mut file, &mut head).unwrap_or(0);
                head.truncate(n);
                let meta = &head[..head.len() - strip_meta(&head).len()];
                let uidl = header_value(meta, "X-Popsift-UIDL");
                let size = header_value(meta, "X-Popsift-Size").parse::<u64>();
                if !uidl.is_empty() && header_value(meta, "X-Popsift-Upstream") == upstream {
                    if let Ok(size) = size {
                        out.insert((uidl, size));
                    }
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

    /// The stored file (with popsift's fields).
    pub fn show(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        let p = self.find(id)?;
        fs::read(&p).map_err(io_err(&p))
    }

    /// The message exactly as the server held it.
    pub fn original(&self, id: &str) -> Result<Vec<u8>, QuarantineError> {
        Ok(strip_meta(&self.show(id)?).to_vec())
    }

    /// Removes a message from the quarantine (after a restore the user confirmed).
    pub fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        let p = self.find(id)?;
        fs::remove_file(&p).map_err(io_err(&p))
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

fn header_value(block: &[u8], name: &str) -> String {
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

fn describe(id: &str, stored: &[u8]) -> Listed {
    Listed {
        id: id.to_string(),
        user: header_value(stored, "X-Popsift-User"),
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
        let known = q.stored_uidls("alice", "pop:995");
        assert!(known.contains(&("u1".to_string(), 60)));
        assert!(q.stored_uidls("alice", "other:995").is_empty());
        assert!(q.stored_uidls("bob", "pop:995").is_empty());
        assert_eq!(q.original(&l[0].id).unwrap(), msg);
        assert!(q.show(&l[0].id).unwrap().starts_with(b"X-Popsift-Quarantined: "));
        let md = dir.path().join("restored");
        let p = deliver_maildir(&md, &q.original(&l[0].id).unwrap()).unwrap();
        assert_eq!(fs::read(p).unwrap(), msg);
        q.remove(&l[0].id).unwrap();
        assert!(q.list().unwrap().is_empty());
    }

    #[test]
    fn hostile_user_names_stay_inside() {
        assert_eq!(user_dir_name("../../etc"), "_.._.._etc");
        assert_eq!(user_dir_name(""), "_");
        assert_eq!(user_dir_name("bob@example.org"), "bob@example.org");
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
