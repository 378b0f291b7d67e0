//! `popsift init [DIR]`: writes a commented starter `popsift.yaml` and a copy of the shipped
//! rules (`rules/`) to edit, into DIR (default: the user config directory, where `serve`
//! looks; see [`crate::locate`]). Never overwrites: if any file it would write exists,
//! nothing is written and the exit code is 2.
use std::path::{Path, PathBuf};

use super::Exit;
use crate::cli::InitArgs;
use crate::locate::{self, BUILTIN_RULES, CONFIG_FILE, RULES_DIR};

/// Why `init` wrote nothing (or stopped part-way, for an I/O error).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("no DIR given and neither $XDG_CONFIG_HOME nor $HOME is set")]
    NoDir,
    #[error("{0} already exists; nothing written (move it away or choose another DIR)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The starter config. `rules:` is filled in with the absolute rules path by [`starter_config`].
const STARTER: &str = "\
# popsift configuration (see README: Configuration). Every key is optional;
# the values shown commented out are the defaults.

listeners:
  - listen: 127.0.0.1:1110          # where your mail client connects (plain POP3, local only)
    upstream: pop.example.com:995   # your provider's POP3 server: CHANGE THIS
    # upstream_tls: implicit        # implicit | starttls | none (default: implicit on 995)

# The rules: a directory of *.yaml files, reloaded when they change.
rules: @RULES@

# What happens to spam: allow | tag | hide | delete | quarantine
# spam_action: tag
# dry_run: false                    # decide and log, change nothing
# metrics: 127.0.0.1:9110           # Prometheus endpoint, or \"off\"
# state_dir: ~/.local/state/popsift # quarantine, header cache, classifier
# tag: { strip_existing: true, subject_prefix: \"[SPAM] \", ham_status: false }
# quarantine: { on_failure: hide, max_size: 64MiB, quota_size: 1GiB, quota_messages: 10000 }
";

/// The starter `popsift.yaml` text, naming `rules` as its rules directory.
pub fn starter_config(rules: &Path) -> String {
    STARTER.replace("@RULES@", &rules.display().to_string())
}

/// Writes the starter files into `dir`; returns the paths written.
pub fn init(dir: &Path) -> Result<Vec<PathBuf>, InitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let config = dir.join(CONFIG_FILE);
    let rules = dir.join(RULES_DIR);
    let mut targets: Vec<(PathBuf, String)> = vec![(config, starter_config(&rules))];
    targets.extend(BUILTIN_RULES.iter().map(|(name, text)| (rules.join(name), text.to_string())));
    if let Some((p, _)) = targets.iter().find(|(p, _)| p.symlink_metadata().is_ok()) {
        return Err(InitError::Exists(p.clone()));
    }
    let mut written = Vec::new();
    for (path, text) in targets {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        // create_new: a file that appeared since the check above is still not overwritten.
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map_err(io(&path))?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

/// `popsift init`.
pub fn run(args: &InitArgs) -> Exit {
    let result = match args.dir.clone().or_else(locate::user_config_dir) {
        Some(dir) => init(&dir),
        None => Err(InitError::NoDir),
    };
    match result {
        Ok(written) => {
            if let Some(config) = written.first() {
                println!("wrote {} and {} rule and list files", config.display(), written.len() - 1);
                println!("next: set `upstream:` in {}, then `popsift check` and `popsift serve`", config.display());
            }
            Exit::Ok
        }
        Err(e) => {
            eprintln!("popsift init: {e}");
            Exit::Usage
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_config_and_rules_then_refuses_to_overwrite() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("cfg");
        let written = init(&dir).unwrap();
        assert_eq!(written.len(), 1 + BUILTIN_RULES.len());
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        let file = crate::config::ConfigFile::parse(&text, &dir.join(CONFIG_FILE)).unwrap();
        let rules = file.rules.clone().unwrap();
        assert!(rules.is_absolute() && rules.ends_with("cfg/rules"), "{rules:?}");
        crate::rules::RuleSet::load(&rules, &Default::default()).unwrap();
        // An edit survives a second init, which writes nothing.
        std::fs::write(dir.join("rules/90-local.yaml"), "rules: []\n").unwrap();
        assert!(matches!(init(&dir), Err(InitError::Exists(_))));
        assert_eq!(std::fs::read_to_string(dir.join("rules/90-local.yaml")).unwrap(), "rules: []\n");
    }

    #[test]
    fn refuses_when_only_one_rule_file_exists() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("rules")).unwrap();
        std::fs::write(t.path().join("rules/20-subject.yaml"), "mine").unwrap();
        assert!(matches!(init(t.path()), Err(InitError::Exists(p)) if p.ends_with("20-subject.yaml")));
        assert!(!t.path().join(CONFIG_FILE).exists());
    }
}
