//! `popsift import-sa`: SpamAssassin `.cf` rules into one popsift rule file (the work is in
//! [`crate::sa_import`]; this file only maps its outcome to an exit code).
use crate::cli::ImportSaArgs;
use crate::cmd::Exit;
use crate::sa_import::{self, RunArgs};

pub fn run(args: &ImportSaArgs) -> Exit {
    let code = sa_import::run(&RunArgs {
        paths: args.paths.clone(),
        output: args.output.clone(),
        verbose: args.verbose,
        no_threshold: args.no_threshold,
        no_backtrack: args.no_backtrack,
    });
    match code {
        0 => Exit::Ok,
        1 => Exit::Data,
        _ => Exit::Usage,
    }
}
