//! The `popsift` binary: parse the command line, start logging, run the subcommand
//! ([`popsift::cmd`]), map its outcome to an exit code ([`popsift::cmd::Exit`]: 0 ok, 1 rule
//! or data errors, 2 usage, config or input errors).
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use popsift::cli::{Cli, Command, LogFormat};
use popsift::cmd::{self, Exit};
use popsift::logging;

/// jemalloc instead of glibc malloc (issue 16): less memory per idle session, and what
/// ended sessions freed goes back to the system (figures in README, "Performance").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // jemalloc's background thread returns freed pages after its decay time (10 s) even when
    // the process is otherwise idle; without it they are returned only on later allocations.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    init_tracing(cli.log_format, cli.log_level.as_deref());
    if let Err(e) = popsift::rules::lists::allow_dirs(&cli.rules_allow_dir) {
        eprintln!("popsift: {e}");
        return Exit::Usage.into();
    }
    let exit = match cli.command {
        Command::Check(args) => cmd::check::run(&args),
        Command::Scan(args) => cmd::scan::run(&args),
        Command::Quarantine(args) => cmd::quarantine::run(&args),
        Command::Train(args) => cmd::train::run(&args),
        Command::Init(args) => cmd::init::run(&args),
        Command::ImportSa(args) => cmd::import_sa::run(&args),
        Command::HashPassword => cmd::hash_password::run(),
        Command::Serve(args) => match cmd::serve::run(&args) {
            Ok(()) => Exit::Ok,
            Err(e) => {
                eprintln!("popsift: {e}");
                e.exit()
            }
        },
    };
    exit.into()
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
    // The formats are tracing-subscriber's own, with the running session's label where its
    // span used to be (`popsift::logging`: no span per session).
    match format {
        LogFormat::Human => builder.event_format(logging::Human::default()).init(),
        LogFormat::Json => builder.json().event_format(logging::Json::default()).init(),
    }
}
