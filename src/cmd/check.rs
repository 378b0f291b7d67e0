//! `popsift check`: load a rule path and print a one-line summary (exit 0) or every error,
//! each with file:line:col (exit 1).
use super::Exit;
use crate::cli::CheckArgs;
use crate::rules::{EngineOptions, RuleSet};

/// `popsift check`.
pub fn run(args: &CheckArgs) -> Exit {
    let rules = match super::rules_path(args.rules.clone(), &crate::config::default_state_dir()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("popsift check: {e}");
            return Exit::Usage;
        }
    };
    match RuleSet::load(&rules, &EngineOptions::default()) {
        Ok(set) => {
            let files = set.file_count();
            println!("rules: {} rules in {} file{} OK", set.len(), files, if files == 1 { "" } else { "s" },);
            Exit::Ok
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("rules: {} error{} in {}", e.len(), if e.len() == 1 { "" } else { "s" }, rules.display());
            Exit::Data
        }
    }
}
