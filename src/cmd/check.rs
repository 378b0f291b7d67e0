//! `popsift check`: load a rule path and print a one-line summary (exit 0) or every error,
//! each with file:line:col (exit 1). Every per-mailbox rules directory (`rules_per_user`,
//! see [`crate::rules::users`]) is compiled over the global rules too, and reported per
//! mailbox. With `--config`, the config file is checked first (exit 2 on an error, as
//! `serve` would refuse to start).
use super::Exit;
use crate::cli::CheckArgs;
use crate::rules::users::{self, PerUserSettings};
use crate::rules::{EngineOptions, RuleSet};

/// `popsift check`.
pub fn run(args: &CheckArgs) -> Exit {
    let (rules, per_user, opts) = match &args.config {
        Some(path) => match checked_config(path, args) {
            Ok(c) => {
                let n = c.listeners.len();
                println!("config: {} OK ({n} listener{})", path.display(), if n == 1 { "" } else { "s" });
                (c.rules.clone(), Some(c.rules_per_user.clone()), EngineOptions { spam_action: c.spam_action })
            }
            Err(e) => {
                eprintln!("popsift check: {e}");
                return Exit::Usage;
            }
        },
        None => match super::rules_path(args.rules.clone(), &crate::config::default_state_dir()) {
            Ok(p) => (p, None, EngineOptions::default()),
            Err(e) => {
                eprintln!("popsift check: {e}");
                return Exit::Usage;
            }
        },
    };
    match RuleSet::load(&rules, &opts) {
        Ok(set) => {
            let files = set.file_count();
            println!("rules: {} rules in {} file{} OK", set.len(), files, if files == 1 { "" } else { "s" },);
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("rules: {} error{} in {}", e.len(), if e.len() == 1 { "" } else { "s" }, rules.display());
            return Exit::Data;
        }
    }
    let per_user = per_user.unwrap_or_else(|| Some(PerUserSettings::defaults_for(&rules)));
    match per_user {
        Some(settings) => check_mailboxes(&rules, &settings, &opts),
        None => Exit::Ok,
    }
}

/// The config `serve --config path` would run with: the rules found the same way (`--rules`,
/// else `rules:`, else the search path).
fn checked_config(path: &std::path::Path, args: &CheckArgs) -> Result<crate::config::Config, String> {
    let file = crate::config::ConfigFile::load(path).map_err(|e| e.to_string())?;
    let state_dir = file.state_dir.clone().unwrap_or_else(crate::config::default_state_dir);
    let rules =
        super::rules_path(args.rules.clone().or_else(|| file.rules.clone()), &state_dir).map_err(|e| e.to_string())?;
    let overrides = crate::config::Overrides { rules: Some(rules), ..Default::default() };
    crate::config::Config::build(file, overrides).map_err(|e| e.to_string())
}

/// Compiles every mailbox directory; prints one line per broken mailbox (after its errors)
/// and a summary when there are any.
fn check_mailboxes(rules: &std::path::Path, settings: &PerUserSettings, opts: &EngineOptions) -> Exit {
    let checks = match users::check_all(rules, settings, opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("per-mailbox rules: {e}");
            return Exit::Data;
        }
    };
    if checks.is_empty() {
        return Exit::Ok;
    }
    let mut bad = 0;
    for c in &checks {
        if let Err(e) = &c.result {
            bad += 1;
            eprintln!("{e}");
            eprintln!("per-mailbox rules: {} is broken (that mailbox keeps its previous rules)", c.dir.display());
        }
    }
    if bad == 0 {
        println!(
            "per-mailbox rules: {} mailbox{} in {} OK",
            checks.len(),
            if checks.len() == 1 { "" } else { "es" },
            settings.dir.display()
        );
        Exit::Ok
    } else {
        eprintln!(
            "per-mailbox rules: {bad} of {} mailbox{} broken in {}",
            checks.len(),
            if checks.len() == 1 { "" } else { "es" },
            settings.dir.display()
        );
        Exit::Data
    }
}
