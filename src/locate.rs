//! Where popsift finds its config file and rules when the command line does not say, so a
//! binary installed anywhere (`cargo install`, a package) filters mail from the first run.
//!
//! Search order, first hit wins, for the config file `popsift.yaml` and the rules directory
//! `rules/`:
//! 1. `--config` / `--rules` (and for rules, `rules:` in the config file);
//! 2. the current directory (`./popsift.yaml`, `./rules/`), as in a source checkout;
//! 3. the user's config directory: `$XDG_CONFIG_HOME/popsift/`, else `~/.config/popsift/`;
//! 4. the system config directory: `/etc/popsift/` (`$POPSIFT_SYSTEM_CONFIG_DIR` replaces it
//!    when set, for packagers with another prefix and for tests);
//! 5. for rules only: the shipped rule set compiled into the binary ([`BUILTIN_RULES`]),
//!    written to `<state dir>/builtin-rules/` so list files resolve as on disk. The log says
//!    so; `popsift init` writes an editable copy.
use std::path::{Path, PathBuf};

/// The config file's name in each searched directory.
pub const CONFIG_FILE: &str = "popsift.yaml";
/// The rules directory's name in each searched directory.
pub const RULES_DIR: &str = "rules";
/// Overrides `/etc/popsift` as the system config directory when set and non-empty.
pub const SYSTEM_DIR_ENV: &str = "POPSIFT_SYSTEM_CONFIG_DIR";

/// The shipped rules (`rules/` in the source tree), as (relative path, contents).
pub const BUILTIN_RULES: &[(&str, &str)] = &[
    ("README.md", include_str!("../rules/README.md")),
    ("10-upstream.yaml", include_str!("../rules/10-upstream.yaml")),
    ("20-subject.yaml", include_str!("../rules/20-subject.yaml")),
    ("30-structure.yaml", include_str!("../rules/30-structure.yaml")),
    ("50-bayes.yaml", include_str!("../rules/50-bayes.yaml")),
    ("90-local.yaml", include_str!("../rules/90-local.yaml")),
    ("lists/blocked-domains.txt", include_str!("../rules/lists/blocked-domains.txt")),
    ("lists/freemail.txt", include_str!("../rules/lists/freemail.txt")),
    ("lists/friends.txt", include_str!("../rules/lists/friends.txt")),
    ("lists/subject-phrases.txt", include_str!("../rules/lists/subject-phrases.txt")),
];

/// The directories searched after the command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// Current directory, user config directory, system config directory (from the
    /// environment; see the module doc).
    pub fn from_env() -> SearchPath {
        let mut dirs = vec![PathBuf::from(".")];
        if let Some(d) = user_config_dir() {
            dirs.push(d);
        }
        dirs.push(system_config_dir());
        SearchPath { dirs }
    }

    /// The first `popsift.yaml` found.
    pub fn config_file(&self) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(CONFIG_FILE)).find(|p| p.is_file())
    }

    /// The first `rules/` directory found.
    pub fn rules_dir(&self) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(RULES_DIR)).find(|p| p.is_dir())
    }
}

/// `$XDG_CONFIG_HOME/popsift`, else `~/.config/popsift`; `None` without either variable.
pub fn user_config_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("popsift"));
    }
    std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config").join("popsift"))
}

/// `$POPSIFT_SYSTEM_CONFIG_DIR` when set, else `/etc/popsift`.
pub fn system_config_dir() -> PathBuf {
    std::env::var_os(SYSTEM_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| "/etc/popsift".into())
}

/// Where the rules came from, for the log line that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesOrigin {
    /// `--rules` or the config file's `rules:`.
    Given,
    /// Found on the search path.
    Found,
    /// The shipped set compiled into the binary, written out to this directory.
    Builtin,
}

/// A rules path and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesLocation {
    pub path: PathBuf,
    pub origin: RulesOrigin,
}

/// The built-in rules could not be written out (a read-only or full state directory).
#[derive(Debug, thiserror::Error)]
#[error("cannot write the built-in rules to {path}: {source}")]
pub struct BuiltinRulesError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Resolves the rules: `given` (flag or config), else the search path, else the built-in
/// set written under `state_dir`.
pub fn rules(
    given: Option<PathBuf>,
    search: &SearchPath,
    state_dir: &Path,
) -> Result<RulesLocation, BuiltinRulesError> {
    if let Some(path) = given {
        return Ok(RulesLocation { path, origin: RulesOrigin::Given });
    }
    if let Some(path) = search.rules_dir() {
        return Ok(RulesLocation { path, origin: RulesOrigin::Found });
    }
    let path = state_dir.join("builtin-rules");
    if let Err(source) = write_builtin_rules(&path) {
        return Err(BuiltinRulesError { path, source });
    }
    Ok(RulesLocation { path, origin: RulesOrigin::Builtin })
}

/// Writes [`BUILTIN_RULES`] into `dir` (created if missing), replacing what is there with
/// the same names: this copy is popsift's, rewritten at every start, not for editing.
pub fn write_builtin_rules(dir: &Path) -> std::io::Result<()> {
    for (name, text) in BUILTIN_RULES {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Unchanged files are left alone so the reload watcher does not fire for nothing.
        if std::fs::read(&p).ok().as_deref() != Some(text.as_bytes()) {
            std::fs::write(&p, text)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_order_is_first_hit() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(b.join("rules")).unwrap();
        std::fs::write(b.join(CONFIG_FILE), "").unwrap();
        let s = SearchPath { dirs: vec![a.clone(), b.clone()] };
        assert_eq!(s.rules_dir(), Some(b.join("rules")));
        assert_eq!(s.config_file(), Some(b.join(CONFIG_FILE)));
        std::fs::create_dir_all(a.join("rules")).unwrap();
        assert_eq!(s.rules_dir(), Some(a.join("rules")));
        let none = SearchPath { dirs: vec![t.path().join("nothing")] };
        assert_eq!(none.config_file(), None);
        let state = t.path().join("state");
        let given = rules(Some("x".into()), &none, &state).unwrap();
        assert_eq!(given, RulesLocation { path: "x".into(), origin: RulesOrigin::Given });
        assert!(!state.exists(), "nothing written when rules are given");
    }

    #[test]
    fn builtin_rules_load_and_catch_spam() {
        let t = tempfile::tempdir().unwrap();
        let none = SearchPath { dirs: vec![] };
        let loc = rules(None, &none, t.path()).unwrap();
        assert_eq!(loc.origin, RulesOrigin::Builtin);
        let set = crate::rules::RuleSet::load(&loc.path, &Default::default()).unwrap();
        let on_disk =
            crate::rules::RuleSet::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules")), &Default::default())
                .unwrap();
        assert_eq!((set.len(), set.file_count()), (on_disk.len(), on_disk.file_count()));
        // Every file of the shipped tree is compiled in (a new list file must be added here).
        let mut shipped = Vec::new();
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"));
        for d in [root.to_path_buf(), root.join("lists")] {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    shipped.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        shipped.sort();
        let mut built: Vec<_> = BUILTIN_RULES.iter().map(|(n, _)| n.to_string()).collect();
        built.sort();
        assert_eq!(built, shipped);
        // Writing again over an existing copy works.
        write_builtin_rules(&loc.path).unwrap();
    }
}
