//! popsift binary: parse the command line, start tracing, dispatch.
//! (Minimal dispatcher from the rules branch: `check` and `scan`; `serve` belongs to main.)
use clap::Parser;
use popsift::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let filter = cli
        .log_level
        .clone()
        .unwrap_or_else(|| std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let code = match &cli.command {
        Command::Check(a) => popsift::scan::run_check(a),
        Command::Scan(a) => popsift::scan::run_scan(a),
        Command::Serve(_) => {
            eprintln!("serve: not in this build");
            1
        }
    };
    std::process::exit(code);
}
