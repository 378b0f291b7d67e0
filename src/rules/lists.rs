//! List files referenced by rules (`domain_in`, `address_in`, `keywords_file`), the guarded
//! reader every rule and list file goes through, and lookups.
//!
//! Format: one entry per line; `#` starts a comment; blank lines are ignored. Domains and
//! addresses are compared lowercase; a domain entry also matches its subdomains (a leading
//! `*.` or `.` is accepted and ignored). Paths are relative to the rule file's directory.
//!
//! # Which files are read ([`read_guarded`])
//! A rule set is reloaded unattended (inotify, SIGHUP), so a file that never ends or never
//! answers would stop every later reload, and a file that is not a rule file must not leak into
//! an error message. So a rule or list file is read only when, after resolving symlinks, it
//! - is a regular file — not a FIFO (which blocks `open`/`read` forever), a device
//!   (`/dev/zero` never ends), a socket or a directory;
//! - lies inside the rules tree (the rule directory, or the directory of a single rule file),
//!   or inside a directory allowed with `--rules-allow-dir DIR` ([`allow_dirs`]);
//! - is at most [`LIST_FILE_LIMIT`] (lists) or [`RULE_FILE_LIMIT`] (rule files) long.
//!
//! The checks run in this order: `stat` the resolved path, then `open` it with `O_NONBLOCK`
//! (so a file swapped for a FIFO after the `stat` cannot block the open), then `fstat` the
//! opened file again, then read at most limit + 1 bytes.
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Largest list file read (`domain_in`, `address_in`, `keywords_file`): 16 MiB, about a
/// million domains.
pub const LIST_FILE_LIMIT: u64 = 16 << 20;
/// Largest rule file read: 4 MiB, tens of thousands of rules.
pub const RULE_FILE_LIMIT: u64 = 4 << 20;

/// Directories outside the rules tree that rule and list files may come from, set once at
/// start from `--rules-allow-dir`; canonical paths.
static ALLOWED_DIRS: RwLock<Vec<PathBuf>> = RwLock::new(Vec::new());

/// Allows rule and list files (or symlink targets) under `dirs` in addition to the rules
/// tree. Called at start from the command line (`--rules-allow-dir`); a directory that does
/// not exist is an error.
pub fn allow_dirs(dirs: &[PathBuf]) -> Result<(), String> {
    let mut canon = Vec::new();
    for d in dirs {
        let c = std::fs::canonicalize(d).map_err(|e| format!("--rules-allow-dir {}: {e}", d.display()))?;
        if !c.is_dir() {
            return Err(format!("--rules-allow-dir {}: not a directory", d.display()));
        }
        canon.push(c);
    }
    *ALLOWED_DIRS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = canon;
    Ok(())
}

/// The rules tree of a rule path: the directory itself, or a single file's directory.
pub fn tree_of(rule_path: &Path) -> PathBuf {
    if rule_path.is_dir() {
        return rule_path.to_path_buf();
    }
    match rule_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What kind of file a non-regular file is, for the error message.
fn file_kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Human size for limits (`16 MiB`).
fn mib(n: u64) -> String {
    format!("{} MiB", n >> 20)
}

/// Reads `path` if it is a regular file inside `tree` (or an allowed directory) of at most
/// `limit` bytes; see the module doc for the order of checks. Errors start with
/// `cannot read PATH:` or `refused PATH:` and never quote the file's contents.
pub fn read_guarded(path: &Path, tree: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("refused {shown}: {} (only regular files are read)", file_kind(&meta.file_type())));
    }
    let inside = std::fs::canonicalize(tree).map(|t| real.starts_with(t)).unwrap_or(false)
        || ALLOWED_DIRS.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().any(|d| real.starts_with(d));
    if !inside {
        return Err(format!(
            "refused {shown}: resolves to {} outside the rules directory {} (allow it with --rules-allow-dir)",
            real.display(),
            tree.display()
        ));
    }
    if meta.len() > limit {
        return Err(format!("refused {shown}: {} bytes, over the {} limit", meta.len(), mib(limit)));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&real)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    // The path may have been replaced between the stat and the open.
    let opened = file.metadata().map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !opened.file_type().is_file() {
        return Err(format!("refused {shown}: {} (only regular files are read)", file_kind(&opened.file_type())));
    }
    let mut bytes = Vec::with_capacity(opened.len().min(limit) as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("refused {shown}: over the {} limit", mib(limit)));
    }
    Ok(bytes)
}

/// Reads the entries of a list file (comments and blanks removed, whitespace trimmed),
/// through [`read_guarded`] with [`LIST_FILE_LIMIT`].
pub fn read_entries(path: &Path, tree: &Path) -> Result<Vec<String>, String> {
    let bytes = read_guarded(path, tree, LIST_FILE_LIMIT)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Normalizes a domain list entry: lowercase, no leading `*.`/`.`, no trailing dot.
pub fn normalize_domain(d: &str) -> String {
    let d = d.trim().trim_start_matches("*.").trim_start_matches('.').trim_end_matches('.');
    d.to_ascii_lowercase()
}

/// Resolves a list path given in a rule file relative to that file's directory.
pub fn resolve(rule_file: &Path, list: &str) -> PathBuf {
    let p = Path::new(list);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    rule_file.parent().map(|d| d.join(p)).unwrap_or_else(|| p.to_path_buf())
}

/// Caches list files read during one load (several rules may share a list).
pub struct ListCache {
    /// The rules tree list files must lie in (see [`read_guarded`]).
    tree: PathBuf,
    files: HashMap<PathBuf, Result<Vec<String>, String>>,
}

impl ListCache {
    /// An empty cache for a load of the rules tree `tree`.
    pub fn new(tree: PathBuf) -> ListCache {
        ListCache { tree, files: HashMap::new() }
    }

    /// Switches the tree later reads must lie in (a layered load: global rules, then a
    /// mailbox's own directory). Lists already read stay cached.
    pub fn set_tree(&mut self, tree: PathBuf) {
        self.tree = tree;
    }

    pub fn get(&mut self, path: &Path) -> Result<&[String], String> {
        let tree = &self.tree;
        let e = self.files.entry(path.to_path_buf()).or_insert_with(|| read_entries(path, tree));
        match e {
            Ok(v) => Ok(v.as_slice()),
            Err(m) => Err(m.clone()),
        }
    }
    /// Every list file read (for the reload watcher).
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.keys()
    }
}

/// The domain of an address (`user@Example.COM.` → `example.com`); a value without `@` is
/// taken as a domain itself.
pub fn domain_of(addr: &str) -> String {
    let d = match addr.rfind('@') {
        Some(i) => &addr[i + 1..],
        None => addr,
    };
    normalize_domain(d.trim_end_matches('>'))
}

/// Calls `f` with the domain and each parent domain: `a.b.c` → `a.b.c`, `b.c`, `c`.
pub fn for_each_suffix(domain: &str, mut f: impl FnMut(&str)) {
    let mut d = domain;
    loop {
        if !d.is_empty() {
            f(d);
        }
        match d.find('.') {
            Some(i) => d = &d[i + 1..],
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_domains() {
        let mut v = Vec::new();
        for_each_suffix("a.b.example.com", |d| v.push(d.to_string()));
        assert_eq!(v, ["a.b.example.com", "b.example.com", "example.com", "com"]);
        assert_eq!(domain_of("Joe@Mail.Example.COM."), "mail.example.com");
        assert_eq!(domain_of("example.org"), "example.org");
        assert_eq!(normalize_domain("*.Spam.biz"), "spam.biz");
    }

    #[test]
    fn reads_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        std::fs::write(&p, "# c\n a.com  # trailing\n\nB.org\n").unwrap();
        assert_eq!(read_entries(&p, dir.path()).unwrap(), ["a.com", "B.org"]);
        assert!(read_entries(&dir.path().join("missing"), dir.path()).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn guarded_reader_refuses_what_is_not_a_small_regular_file_in_the_tree() {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let t = tree.path();
        // A device through a symlink: refused before it is opened.
        std::os::unix::fs::symlink("/dev/zero", t.join("zero")).unwrap();
        let e = read_guarded(&t.join("zero"), t, LIST_FILE_LIMIT).unwrap_err();
        assert!(e.starts_with("refused") && e.contains("a character device"), "{e}");
        // A FIFO: refused without blocking.
        assert!(std::process::Command::new("mkfifo").arg(t.join("fifo")).status().unwrap().success());
        let e = read_guarded(&t.join("fifo"), t, LIST_FILE_LIMIT).unwrap_err();
        assert!(e.contains("a FIFO"), "{e}");
        // A directory.
        std::fs::create_dir(t.join("d")).unwrap();
        assert!(read_guarded(&t.join("d"), t, LIST_FILE_LIMIT).unwrap_err().contains("a directory"));
        // Over the limit, by the stat and (for a file that grows) by the bounded read.
        std::fs::write(t.join("big"), vec![b'a'; 101]).unwrap();
        let e = read_guarded(&t.join("big"), t, 100).unwrap_err();
        assert!(e.contains("101 bytes"), "{e}");
        assert_eq!(read_guarded(&t.join("big"), t, 101).unwrap().len(), 101);
        // Outside the tree, directly or through a symlink; inside through a symlink is fine.
        std::fs::write(
            outside.path().join("secret"),
            "hunter2
",
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), t.join("link")).unwrap();
        let e = read_guarded(&t.join("link"), t, 100).unwrap_err();
        assert!(e.contains("outside the rules directory") && !e.contains("hunter2"), "{e}");
        let e = read_guarded(&outside.path().join("secret"), t, 100).unwrap_err();
        assert!(e.contains("outside the rules directory"), "{e}");
        std::os::unix::fs::symlink(t.join("big"), t.join("biglink")).unwrap();
        assert!(read_guarded(&t.join("biglink"), t, 200).is_ok());
        // `..` does not escape.
        let sub = t.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let e = read_guarded(&sub.join("../../").join(outside.path().file_name().unwrap()).join("secret"), &sub, 100);
        assert!(e.unwrap_err().contains("refused"));
    }

    #[test]
    fn tree_of_a_file_is_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(tree_of(dir.path()), dir.path());
        assert_eq!(tree_of(&dir.path().join("r.yaml")), dir.path());
        assert_eq!(tree_of(Path::new("r.yaml")), Path::new("."));
    }
}
