//! The subcommands of the `popsift` binary, one file each. Each `run` takes its parsed
//! arguments ([`crate::cli`]) and returns an [`Exit`]; `main.rs` only parses, starts logging
//! and maps the result to the process exit code.
pub mod check;
pub mod hash_password;
pub mod import_sa;
pub mod init;
pub mod quarantine;
pub mod scan;
pub mod serve;
pub mod train;

/// The process exit codes, the same for every subcommand (also in `--help` and the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// 0: done.
    Ok = 0,
    /// 1: the rules or the data are wrong: `check`/`scan` found rule errors, `quarantine`
    /// has no such message.
    Data = 1,
    /// 2: usage, config or input errors: bad flags or config file, a path that cannot be
    /// read, a store that cannot be opened, `serve` could not start.
    Usage = 2,
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// The config file a subcommand reads: `--config`, else the first `popsift.yaml` on the
/// search path ([`crate::locate`]), else none (defaults).
pub fn config_file(given: Option<&std::path::Path>) -> Result<crate::config::ConfigFile, crate::config::ConfigError> {
    match given.map(std::path::Path::to_path_buf).or_else(|| crate::locate::SearchPath::from_env().config_file()) {
        Some(p) => crate::config::ConfigFile::load(&p),
        None => Ok(crate::config::ConfigFile::default()),
    }
}

/// The rules a subcommand uses: `given` (flag or config), else `rules/` on the search path,
/// else the built-in set written under `state_dir`. Says on stderr which when not given.
pub fn rules_path(
    given: Option<std::path::PathBuf>,
    state_dir: &std::path::Path,
) -> Result<std::path::PathBuf, crate::locate::BuiltinRulesError> {
    use crate::locate::{self, RulesOrigin};
    let loc = locate::rules(given, &locate::SearchPath::from_env(), state_dir)?;
    match loc.origin {
        RulesOrigin::Given => {}
        RulesOrigin::Found => eprintln!("popsift: rules from {}", loc.path.display()),
        RulesOrigin::Builtin => eprintln!(
            "popsift: no rules directory found (., {}): using the built-in rules (copy in {}; `popsift init` writes one to edit)",
            search_dirs_text(),
            loc.path.display()
        ),
    }
    Ok(loc.path)
}

/// The searched directories after `.`, for messages.
pub fn search_dirs_text() -> String {
    let s = crate::locate::SearchPath::from_env();
    s.dirs.iter().skip(1).map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}
