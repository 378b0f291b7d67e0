//! The `popsift` binary: parse the command line, start logging, run, map errors to exit codes
//! (0 ok, 1 rule/config problems found by `check`, 2 usage or startup errors).
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use popsift::cli::{Cli, Command, LogFormat, ServeArgs};
use popsift::config::{Config, ConfigFile};
use popsift::rules::{EngineOptions, RuleSet, RulesHandle};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.log_level.as_deref());
    if let Err(e) = popsift::rules::lists::allow_dirs(&cli.rules_allow_dir) {
        eprintln!("popsift: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Check(args) => ExitCode::from(popsift::scan::run_check(&args) as u8),
        Command::Scan(args) => ExitCode::from(popsift::scan::run_scan(&args) as u8),
        Command::Quarantine(args) => ExitCode::from(popsift::quarantine_cmd::run(&args) as u8),
        Command::ImportSa(args) => ExitCode::from(popsift::sa_import::run(&popsift::sa_import::RunArgs {
            paths: args.paths,
            output: args.output,
            verbose: args.verbose,
            no_threshold: args.no_threshold,
            no_backtrack: args.no_backtrack,
        }) as u8),
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("popsift: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn init_tracing(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    // Colours only for a terminal: log files and journald get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let file = match &args.config {
        Some(p) => ConfigFile::load(p)?,
        None if Path::new("popsift.yaml").exists() => ConfigFile::load(Path::new("popsift.yaml"))?,
        None => ConfigFile::default(),
    };
    let rules_given = args.rules.is_some() || file.rules.is_some();
    let config = Arc::new(Config::build(file, &args)?);
    let opts = EngineOptions { spam_action: config.spam_action };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        // Descriptors before anything opens: raise RLIMIT_NOFILE, log it against the budget.
        popsift::net::fd_budget::prepare(config.max_sessions, config.metrics.is_some());
        // Metrics first, so the initial rule load is counted.
        popsift::metrics::install(config.metrics)?;
        if let Some(addr) = config.metrics {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
        let rules = if !rules_given && !config.rules.exists() {
            tracing::warn!(path = %config.rules.display(), "no rules directory: every message is passed through unfiltered");
            RulesHandle::new(RuleSet::empty())
        } else {
            let handle = RulesHandle::load(&config.rules, opts).map_err(|e| anyhow::anyhow!("{e}"))?;
            popsift::metrics::rules_reload(true);
            handle.spawn_reloader();
            handle
        };
        let sockets = popsift::net::listener::bind(&config).await?;
        let shutdown = popsift::net::listener::shutdown_on_signals();
        popsift::net::listener::serve(config, sockets, rules, shutdown).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}
