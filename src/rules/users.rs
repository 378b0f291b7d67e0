//! Per-mailbox rules: a directory per mailbox, layered over the global rules.
//!
//! A provider runs one popsift for many mailboxes; each mailbox may want its own rules (a
//! sender its owner never wants to see, a newsletter the global rules wrongly catch). So
//! beside the global rules there is a directory per mailbox, `<dir>/<user>@<host>/`
//! (`<dir>` is `rules_per_user.dir`, by default `users/` inside the global rules directory;
//! `<host>` is the listener's upstream host, lower case), holding:
//!
//! - `*.yaml` / `*.yml` rule files, in the global rules' format. They are compiled *together
//!   with* the global files into one [`RuleSet`] (so `expr:` may name global ids, ids stay
//!   unique, the last `threshold:` wins). A mailbox file with the same name as a global file
//!   replaces that global file for this mailbox (an empty `90-local.yaml` switches the global
//!   one off);
//! - [`ALLOWLIST_FILE`]: one sender address (`bob@example.org`) or domain (`example.org`,
//!   subdomains included) per line, `#` comments. A message from a listed sender is allowed,
//!   whatever the other rules say (`allow` beats every action). [`allowlist_add`] appends to
//!   it keeping comments (for the review page's "always allow this sender").
//!
//! # When a mailbox's set is built
//! At login ([`MailboxRules::resolve`], called once per session through
//! [`super::RulesHandle::for_mailbox`]), not by a watcher: thousands of directories need no
//! inotify watches, and an edit applies at the mailbox's next login, exactly. The check costs
//! a `readdir` and a `stat` per file of that one mailbox; the set is recompiled only when a
//! file's (size, mtime, ctime, inode) or the global set changed, on a blocking thread, once per
//! mailbox even when several of its sessions log in at once (a per-mailbox lock). Sessions of
//! one mailbox share that `Arc`; mailboxes without a directory share the global set.
//!
//! # Failures stay in their mailbox
//! - A broken file (YAML, regex, duplicate id, unreadable list): every error is logged with
//!   file:line:col, and the mailbox keeps its previous set (or the global set if it never had
//!   one). The failed state is remembered, so it is not recompiled at every login.
//! - Over the limits (`max_files` rule files, `max_bytes` of rule and allowlist files): an
//!   error names the directory, and the *global* rules apply to that mailbox.
//! - A user name that cannot name a directory (`/`, a leading `.`, control characters,
//!   overlong) never reaches the file system: the global rules apply.
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::compile::{self, Layer};
use super::{lists, EngineOptions, RuleErrors, RuleSet};

/// A mailbox's allowlist file, inside its directory.
pub const ALLOWLIST_FILE: &str = "allowlist.txt";
/// Default for `rules_per_user.max_files`.
pub const DEFAULT_MAX_FILES: usize = 16;
/// Default for `rules_per_user.max_bytes`: 1 MiB of rule and allowlist files per mailbox.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Longest mailbox key (`user@host`) used as a directory name.
pub const MAX_KEY_LEN: usize = 255;
/// Ids of the rules an allowlist file becomes.
pub const ALLOWLIST_RULE_IDS: [&str; 2] = ["mailbox.allowlist.address", "mailbox.allowlist.domain"];

/// Checked `rules_per_user:` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerUserSettings {
    /// The directory holding one directory per mailbox.
    pub dir: PathBuf,
    /// Most rule files in one mailbox directory.
    pub max_files: usize,
    /// Most octets of rule files plus allowlist in one mailbox directory.
    pub max_bytes: u64,
}

impl PerUserSettings {
    /// The defaults for a global rule path: `users/` inside the rules directory (or beside a
    /// single rule file).
    pub fn defaults_for(rules: &Path) -> PerUserSettings {
        PerUserSettings {
            dir: lists::tree_of(rules).join("users"),
            max_files: DEFAULT_MAX_FILES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Why a mailbox's own rules were not used.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// A file failed to compile; every error with file:line:col.
    #[error("{0}")]
    Rules(RuleErrors),
    /// More files or octets than the limits allow.
    #[error("{dir}: {what}")]
    OverLimit { dir: PathBuf, what: String },
    /// The directory could not be listed.
    #[error("{dir}: cannot read: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// The directory name of a mailbox: `user@host` (host lower case), or `None` when the user
/// name cannot safely name a directory (empty, `/`, NUL or control characters, a leading
/// `.`, longer than [`MAX_KEY_LEN`]).
pub fn mailbox_key(user: &str, host: &str) -> Option<String> {
    let key = format!("{user}@{}", host.to_ascii_lowercase());
    let safe = !user.is_empty()
        && !host.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with('.')
        && !key.chars().any(|c| c == '/' || c == '\\' || c.is_control());
    safe.then_some(key)
}

/// What a mailbox directory holds right now, and the identity of each file, to tell whether
/// anything changed since the last compile.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Snapshot {
    rule_files: Vec<PathBuf>,
    allowlist: Option<PathBuf>,
    /// (path, size, mtime, ctime, inode) of every file above and of every list file the last
    /// compiled set read from this mailbox.
    stamps: Vec<(PathBuf, u64, Option<SystemTime>, i64, u64)>,
    bytes: u64,
}

fn stamp(path: &Path) -> (PathBuf, u64, Option<SystemTime>, i64, u64) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => (path.to_path_buf(), m.len(), m.modified().ok(), m.ctime() * 1_000_000_000 + m.ctime_nsec(), m.ino()),
        Err(_) => (path.to_path_buf(), u64::MAX, None, 0, 0),
    }
}

/// Lists `dir`: `Ok(None)` when it does not exist.
fn snapshot(dir: &Path, extra_lists: &[PathBuf]) -> Result<Option<Snapshot>, std::io::Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut snap = Snapshot::default();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            snap.rule_files.push(path);
        } else if name == ALLOWLIST_FILE {
            snap.allowlist = Some(path);
        }
    }
    snap.rule_files.sort();
    for p in snap.rule_files.iter().chain(snap.allowlist.iter()).chain(extra_lists.iter()) {
        let s = stamp(p);
        if s.1 != u64::MAX && (snap.rule_files.contains(p) || snap.allowlist.as_ref() == Some(p)) {
            snap.bytes = snap.bytes.saturating_add(s.1);
        }
        snap.stamps.push(s);
    }
    Ok(Some(snap))
}

/// The YAML an allowlist file turns into: one `address_in` and one `domain_in` rule on the
/// sender's address, both `action: allow`, reading the same file.
fn allowlist_rules(file_name: &str) -> String {
    let [addr, dom] = ALLOWLIST_RULE_IDS;
    format!(
        "rules:\n  - id: {addr}\n    describe: the mailbox's allowlist (addresses)\n    header: From:addr\n    address_in: {file_name}\n    action: allow\n  - id: {dom}\n    describe: the mailbox's allowlist (domains)\n    header: From:addr\n    domain_in: {file_name}\n    action: allow\n"
    )
}

/// Compiles the global rules at `global` layered with a mailbox directory's files, checking
/// the limits first.
fn compile_mailbox(
    global: &Path,
    dir: &Path,
    snap: &Snapshot,
    settings: &PerUserSettings,
    opts: &EngineOptions,
) -> Result<RuleSet, MailboxError> {
    if snap.rule_files.len() > settings.max_files {
        return Err(MailboxError::OverLimit {
            dir: dir.to_path_buf(),
            what: format!(
                "{} rule files, over the limit of {} (rules_per_user.max_files)",
                snap.rule_files.len(),
                settings.max_files
            ),
        });
    }
    if snap.bytes > settings.max_bytes {
        return Err(MailboxError::OverLimit {
            dir: dir.to_path_buf(),
            what: format!(
                "{} octets of rules, over the limit of {} (rules_per_user.max_bytes)",
                snap.bytes, settings.max_bytes
            ),
        });
    }
    let real = std::fs::canonicalize(global).unwrap_or_else(|_| global.to_path_buf());
    let global_tree = lists::tree_of(&real);
    let global_files = compile::rule_files(global).map_err(|e| MailboxError::Rules(RuleErrors(vec![e])))?;
    let names: Vec<_> = snap.rule_files.iter().filter_map(|p| p.file_name()).collect();
    // A mailbox file replaces the global file of the same name.
    let global_files: Vec<PathBuf> =
        global_files.into_iter().filter(|g| !g.file_name().is_some_and(|n| names.contains(&n))).collect();
    let layers = [
        Layer { tree: global_tree, files: global_files },
        Layer { tree: dir.to_path_buf(), files: snap.rule_files.clone() },
    ];
    let allow_text = snap.allowlist.as_ref().map(|_| allowlist_rules(ALLOWLIST_FILE));
    let allow_path = dir.join(ALLOWLIST_FILE);
    let extra = allow_text.as_deref().map(|t| (allow_path.as_path(), t));
    compile::load_layers(&layers, extra, opts).map_err(MailboxError::Rules)
}

/// One mailbox's compiled state.
#[derive(Debug, Default)]
struct Slot {
    /// The global set this was built on (a global reload rebuilds every mailbox).
    global: Option<Arc<RuleSet>>,
    /// What the directory held when last compiled (successfully or not).
    snapshot: Option<Snapshot>,
    /// The set to use; `None`: the global set.
    set: Option<Arc<RuleSet>>,
}

/// Per-mailbox rule sets, built at login and kept per mailbox.
#[derive(Debug)]
pub struct MailboxRules {
    settings: PerUserSettings,
    global_path: PathBuf,
    opts: EngineOptions,
    slots: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
}

impl MailboxRules {
    pub fn new(settings: PerUserSettings, global_path: PathBuf, opts: EngineOptions) -> MailboxRules {
        MailboxRules { settings, global_path, opts, slots: Mutex::new(HashMap::new()) }
    }

    pub fn settings(&self) -> &PerUserSettings {
        &self.settings
    }

    /// The set for `user` at upstream `host`, given the current global set: the global set
    /// when the mailbox has no directory (or a name that cannot be one), else its own set,
    /// recompiled when its files or the global set changed. Blocking (file system, compile):
    /// call from a blocking thread.
    pub fn resolve(&self, global: &Arc<RuleSet>, user: &str, host: &str) -> Arc<RuleSet> {
        let Some(key) = mailbox_key(user, host) else {
            return Arc::clone(global);
        };
        let dir = self.settings.dir.join(&key);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            if !slots.contains_key(&key) && !dir.is_dir() {
                return Arc::clone(global);
            }
            Arc::clone(slots.entry(key.clone()).or_default())
        };
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        let global_lists = global.list_files();
        let own_lists: Vec<PathBuf> = slot
            .set
            .as_ref()
            .map(|s| s.list_files().iter().filter(|p| !global_lists.contains(p)).cloned().collect())
            .unwrap_or_default();
        let snap = match snapshot(&dir, &own_lists) {
            Ok(Some(s)) => s,
            Ok(None) => {
                // The directory went away: back to the global rules.
                drop(slot);
                self.slots.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
                tracing::info!(mailbox = %key, "per-mailbox rules removed: the global rules apply");
                return Arc::clone(global);
            }
            Err(e) => {
                let err = MailboxError::Io { dir: dir.clone(), source: e };
                tracing::error!(mailbox = %key, "per-mailbox rules unusable, keeping the previous set: {err}");
                return slot.set.clone().unwrap_or_else(|| Arc::clone(global));
            }
        };
        let same_global = slot.global.as_ref().is_some_and(|g| Arc::ptr_eq(g, global));
        if same_global && slot.snapshot.as_ref() == Some(&snap) {
            return slot.set.clone().unwrap_or_else(|| Arc::clone(global));
        }
        if snap.rule_files.is_empty() && snap.allowlist.is_none() {
            // Nothing of its own (yet): the same set as everyone, not a copy of it.
            slot.global = Some(Arc::clone(global));
            slot.snapshot = Some(snap);
            slot.set = None;
            return Arc::clone(global);
        }
        let started = std::time::Instant::now();
        let result = compile_mailbox(&self.global_path, &dir, &snap, &self.settings, &self.opts);
        slot.global = Some(Arc::clone(global));
        match result {
            Ok(set) => {
                let set = Arc::new(set);
                // Stamp the list files the new set reads from the mailbox too.
                let own_lists: Vec<PathBuf> =
                    set.list_files().iter().filter(|p| !global_lists.contains(p)).cloned().collect();
                let snap = snapshot(&dir, &own_lists).ok().flatten().unwrap_or(snap);
                tracing::info!(
                    mailbox = %key,
                    rules = set.len(),
                    files = set.file_count(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "per-mailbox rules loaded"
                );
                slot.snapshot = Some(snap);
                slot.set = Some(Arc::clone(&set));
                set
            }
            Err(e @ MailboxError::OverLimit { .. }) => {
                tracing::error!(mailbox = %key, "per-mailbox rules refused, the global rules apply: {e}");
                slot.snapshot = Some(snap);
                slot.set = None;
                Arc::clone(global)
            }
            Err(e) => {
                let kept =
                    if slot.set.is_some() { "keeping this mailbox's previous rules" } else { "the global rules apply" };
                tracing::error!(mailbox = %key, "per-mailbox rule load failed, {kept}:\n{e}");
                slot.snapshot = Some(snap);
                slot.set.clone().unwrap_or_else(|| Arc::clone(global))
            }
        }
    }
}

/// What [`check_all`] found for one mailbox directory.
#[derive(Debug)]
pub struct MailboxCheck {
    pub dir: PathBuf,
    pub result: Result<(usize, usize), MailboxError>,
}

/// Compiles every mailbox directory under `settings.dir` over the global rules (for
/// `popsift check`): `(rules, files)` or the error per directory, in name order. A missing
/// `settings.dir` gives an empty list.
pub fn check_all(
    global: &Path,
    settings: &PerUserSettings,
    opts: &EngineOptions,
) -> Result<Vec<MailboxCheck>, MailboxError> {
    let entries = match std::fs::read_dir(&settings.dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(MailboxError::Io { dir: settings.dir.clone(), source: e }),
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    dirs.sort();
    Ok(dirs
        .into_iter()
        .map(|dir| {
            let result = match snapshot(&dir, &[]) {
                Ok(Some(snap)) => {
                    compile_mailbox(global, &dir, &snap, settings, opts).map(|s| (s.len(), s.file_count()))
                }
                Ok(None) => Ok((0, 0)),
                Err(e) => Err(MailboxError::Io { dir: dir.clone(), source: e }),
            };
            MailboxCheck { dir, result }
        })
        .collect())
}

/// Why [`allowlist_add`] refused.
#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("{0:?} is not an address or domain an allowlist can hold")]
    BadEntry(String),
    #[error("the user name cannot name a mailbox directory")]
    BadMailbox,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Adds `entry` (a sender address `bob@example.org` or a domain `example.org`) to the
/// allowlist of mailbox `user` at `host`, creating the directory and file when needed. The
/// file is rewritten whole (temp file + rename, so a reader never sees half a file) with every
/// existing line, comments included, kept as it was. Returns `false` when the entry (compared
/// case-insensitively) is already there. The change applies at the mailbox's next login.
pub fn allowlist_add(settings: &PerUserSettings, user: &str, host: &str, entry: &str) -> Result<bool, AllowlistError> {
    let entry = entry.trim();
    let valid = !entry.is_empty()
        && entry.len() <= 254
        && !entry.starts_with('@')
        && entry.matches('@').count() <= 1
        && entry.chars().all(|c| c.is_ascii_graphic() || !c.is_ascii()) // no spaces, controls
        && !entry.contains('#')
        && entry.rsplit('@').next().is_some_and(|d| d.contains('.') || d.eq_ignore_ascii_case("localhost"));
    if !valid {
        return Err(AllowlistError::BadEntry(entry.to_string()));
    }
    let key = mailbox_key(user, host).ok_or(AllowlistError::BadMailbox)?;
    let dir = settings.dir.join(key);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AllowlistError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(ALLOWLIST_FILE);
    let old = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "# Senders (address or domain) this mailbox always accepts, one per line.\n".to_string()
        }
        Err(e) => return Err(io(&path)(e)),
    };
    let present = old.lines().any(|l| l.split('#').next().unwrap_or("").trim().eq_ignore_ascii_case(entry));
    if present {
        return Ok(false);
    }
    let mut new = old;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(entry);
    new.push('\n');
    let tmp = dir.join(format!(".{ALLOWLIST_FILE}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(new.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(&path)(e)
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GLOBAL: &str = "rules:\n  - id: G_SUBJ\n    header: Subject\n    keywords: [viagra]\n    action: hide\n";
    const SPAM: &[u8] = b"From: bob@example.org\r\nSubject: cheap viagra\r\n\r\n";
    const MINE: &[u8] = b"From: news@shop.example\r\nSubject: weekly deals\r\n\r\n";

    struct Fixture {
        _tmp: tempfile::TempDir,
        rules: PathBuf,
        settings: PerUserSettings,
        m: MailboxRules,
        global: Arc<RuleSet>,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let rules = tmp.path().join("rules");
        std::fs::create_dir_all(rules.join("users")).unwrap();
        std::fs::write(rules.join("10-global.yaml"), GLOBAL).unwrap();
        let settings = PerUserSettings::defaults_for(&rules);
        let opts = EngineOptions::default();
        let global = Arc::new(RuleSet::load(&rules, &opts).unwrap());
        let m = MailboxRules::new(settings.clone(), rules.clone(), opts);
        Fixture { _tmp: tmp, rules, settings, m, global }
    }

    fn user_dir(f: &Fixture, user: &str) -> PathBuf {
        let d = f.settings.dir.join(mailbox_key(user, "pop.example").unwrap());
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn action(set: &RuleSet, msg: &[u8]) -> Option<crate::rules::Action> {
        set.evaluate(msg, 100).action
    }

    /// Writes a file with a new inode and a later mtime, as an editor saving would.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp-edit");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn keys_refuse_names_that_are_not_one_directory() {
        assert_eq!(mailbox_key("alice", "POP.Example"), Some("alice@pop.example".into()));
        assert_eq!(mailbox_key("a@b.c", "h"), Some("a@b.c@h".into()));
        for bad in ["", "../etc", "a/b", ".hidden", "a\nb", "a\0b", "a\\b"] {
            assert_eq!(mailbox_key(bad, "h"), None, "{bad:?}");
        }
        assert_eq!(mailbox_key(&"x".repeat(300), "h"), None);
    }

    #[test]
    fn a_mailbox_without_directory_shares_the_global_set() {
        let f = fixture();
        let s = f.m.resolve(&f.global, "nobody", "pop.example");
        assert!(Arc::ptr_eq(&s, &f.global));
        let s = f.m.resolve(&f.global, "../escape", "pop.example");
        assert!(Arc::ptr_eq(&s, &f.global));
        // An empty directory (or one with other files only) is no set of its own either.
        let d = user_dir(&f, "empty");
        std::fs::write(d.join("notes.txt"), "nothing here").unwrap();
        let s = f.m.resolve(&f.global, "empty", "pop.example");
        assert!(Arc::ptr_eq(&s, &f.global));
    }

    #[test]
    fn own_rules_apply_to_their_mailbox_only_and_are_shared_between_its_sessions() {
        let f = fixture();
        let d = user_dir(&f, "alice");
        std::fs::write(
            d.join("mine.yaml"),
            "rules:\n  - id: A_NEWS\n    header: From:addr\n    domain_in: shops.txt\n    action: hide\n",
        )
        .unwrap();
        std::fs::write(d.join("shops.txt"), "shop.example\n").unwrap();
        let a1 = f.m.resolve(&f.global, "alice", "pop.example");
        let a2 = f.m.resolve(&f.global, "alice", "POP.EXAMPLE");
        assert!(Arc::ptr_eq(&a1, &a2), "one compile per mailbox, shared");
        assert_eq!(action(&a1, MINE), Some(crate::rules::Action::Hide));
        assert_eq!(action(&a1, SPAM), Some(crate::rules::Action::Hide), "global rules still apply");
        let b = f.m.resolve(&f.global, "bob", "pop.example");
        assert_eq!(action(&b, MINE), None);
        // Editing a list file the mailbox's rules read recompiles at the next login.
        replace(&d.join("shops.txt"), "other.example\n");
        let a3 = f.m.resolve(&f.global, "alice", "pop.example");
        assert!(!Arc::ptr_eq(&a1, &a3));
        assert_eq!(action(&a3, MINE), None);
    }

    #[test]
    fn a_mailbox_file_replaces_the_global_file_of_the_same_name() {
        let f = fixture();
        let d = user_dir(&f, "carol");
        std::fs::write(d.join("10-global.yaml"), "rules: []\n").unwrap();
        let c = f.m.resolve(&f.global, "carol", "pop.example");
        assert_eq!(action(&c, SPAM), None);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn allowlist_beats_global_rules_and_allowlist_add_keeps_comments() {
        let f = fixture();
        let d = user_dir(&f, "dave");
        std::fs::write(d.join(ALLOWLIST_FILE), "# my friends\nfriend@x.example # since 2020").unwrap();
        assert!(allowlist_add(&f.settings, "dave", "pop.example", "Example.org").unwrap());
        assert!(!allowlist_add(&f.settings, "dave", "pop.example", "example.org").unwrap(), "already there");
        let text = std::fs::read_to_string(d.join(ALLOWLIST_FILE)).unwrap();
        assert_eq!(text, "# my friends\nfriend@x.example # since 2020\nExample.org\n");
        let s = f.m.resolve(&f.global, "dave", "pop.example");
        let v = s.evaluate(SPAM, 100);
        assert_eq!(v.action, Some(crate::rules::Action::Allow));
        assert!(v.rules.iter().any(|r| &**r == "mailbox.allowlist.domain"), "{:?}", v.rules);
        // An address entry, in a new mailbox directory made on the way.
        assert!(allowlist_add(&f.settings, "erin", "pop.example", "bob@example.org").unwrap());
        let e = f.m.resolve(&f.global, "erin", "pop.example");
        assert_eq!(action(&e, SPAM), Some(crate::rules::Action::Allow));
        for bad in ["", "two words", "a#b", "@x.org", "a@b@c.org", "nodot", "x\n@y.org"] {
            assert!(
                matches!(allowlist_add(&f.settings, "dave", "pop.example", bad), Err(AllowlistError::BadEntry(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            allowlist_add(&f.settings, "../x", "pop.example", "a@b.org"),
            Err(AllowlistError::BadMailbox)
        ));
    }

    #[test]
    fn a_broken_file_keeps_the_previous_set_and_other_mailboxes_are_untouched() {
        let f = fixture();
        let d = user_dir(&f, "frank");
        std::fs::write(
            d.join("a.yaml"),
            "rules:\n  - id: F1\n    header: Subject\n    keywords: [deals]\n    action: hide\n",
        )
        .unwrap();
        let g = user_dir(&f, "gina");
        std::fs::write(
            g.join("a.yaml"),
            "rules:\n  - id: G1\n    header: Subject\n    keywords: [deals]\n    action: delete\n",
        )
        .unwrap();
        let before = f.m.resolve(&f.global, "frank", "pop.example");
        assert_eq!(action(&before, MINE), Some(crate::rules::Action::Hide));
        replace(
            &d.join("a.yaml"),
            "rules:\n  - id: F1\n    header: Subject\n    regex: '(unclosed'\n    action: hide\n",
        );
        let after = f.m.resolve(&f.global, "frank", "pop.example");
        assert!(Arc::ptr_eq(&before, &after), "the old set stays");
        let gina = f.m.resolve(&f.global, "gina", "pop.example");
        assert_eq!(action(&gina, MINE), Some(crate::rules::Action::Delete));
        // The error names file:line:col.
        let errs = check_all(&f.rules, &f.settings, &EngineOptions::default()).unwrap();
        let frank = errs.iter().find(|c| c.dir.ends_with("frank@pop.example")).unwrap();
        let msg = frank.result.as_ref().unwrap_err().to_string();
        assert!(msg.contains("a.yaml:4:12: rule F1: regex"), "{msg}");
        assert!(errs.iter().find(|c| c.dir.ends_with("gina@pop.example")).unwrap().result.is_ok());
        // Fixed: the next login uses the new file.
        replace(&d.join("a.yaml"), "rules: []\n");
        let fixed = f.m.resolve(&f.global, "frank", "pop.example");
        assert_eq!(action(&fixed, MINE), None);
    }

    #[test]
    fn over_the_limits_the_global_rules_apply() {
        let mut f = fixture();
        f.settings.max_files = 2;
        f.settings.max_bytes = 200;
        f.m = MailboxRules::new(f.settings.clone(), f.rules.clone(), EngineOptions::default());
        let d = user_dir(&f, "hal");
        for i in 0..3 {
            std::fs::write(d.join(format!("{i}.yaml")), "rules: []\n").unwrap();
        }
        let s = f.m.resolve(&f.global, "hal", "pop.example");
        assert!(Arc::ptr_eq(&s, &f.global));
        let checks = check_all(&f.rules, &f.settings, &EngineOptions::default()).unwrap();
        let msg = checks[0].result.as_ref().unwrap_err().to_string();
        assert!(msg.contains("hal@pop.example") && msg.contains("max_files"), "{msg}");
        std::fs::remove_file(d.join("2.yaml")).unwrap();
        std::fs::write(d.join(ALLOWLIST_FILE), "x".repeat(300)).unwrap();
        let s = f.m.resolve(&f.global, "hal", "pop.example");
        assert!(Arc::ptr_eq(&s, &f.global));
        let checks = check_all(&f.rules, &f.settings, &EngineOptions::default()).unwrap();
        assert!(checks[0].result.as_ref().unwrap_err().to_string().contains("max_bytes"));
    }

    #[test]
    fn sessions_logging_in_at_once_compile_their_mailbox_once() {
        let f = fixture();
        let d = user_dir(&f, "kim");
        std::fs::write(
            d.join("a.yaml"),
            "rules:\n  - id: K1\n    header: Subject\n    keywords: [deals]\n    action: hide\n",
        )
        .unwrap();
        let sets: Vec<Arc<RuleSet>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| f.m.resolve(&f.global, "kim", "pop.example"))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(sets.iter().all(|s| Arc::ptr_eq(s, &sets[0])), "one compiled set shared by all sessions");
        assert_eq!(action(&sets[0], MINE), Some(crate::rules::Action::Hide));
    }

    #[test]
    fn a_global_reload_reaches_every_mailbox() {
        let f = fixture();
        let d = user_dir(&f, "ivy");
        std::fs::write(d.join("a.yaml"), "rules: []\n").unwrap();
        let s1 = f.m.resolve(&f.global, "ivy", "pop.example");
        assert_eq!(action(&s1, SPAM), Some(crate::rules::Action::Hide));
        std::fs::write(f.rules.join("10-global.yaml"), GLOBAL.replace("action: hide", "action: delete")).unwrap();
        let global2 = Arc::new(RuleSet::load(&f.rules, &EngineOptions::default()).unwrap());
        let s2 = f.m.resolve(&global2, "ivy", "pop.example");
        assert_eq!(action(&s2, SPAM), Some(crate::rules::Action::Delete));
    }
}
