//! `popsift serve`, and [`serve`]: the startup wiring as a library function, so tests and
//! embedders start exactly what the binary starts.
//!
//! Order matters: descriptors are budgeted before anything opens, metrics are installed
//! before the first rule load (so it is counted), rules are loaded (and watched for edits)
//! before a listener binds, and every listener binds before any accepts.
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::Exit;
use crate::cli::ServeArgs;
use crate::config::{Config, ConfigError, Overrides};
use crate::locate::{self, RulesOrigin, SearchPath};
use crate::rules::{EngineOptions, RuleErrors, RulesHandle};

/// Why [`serve`] (or the command) could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    BuiltinRules(#[from] locate::BuiltinRulesError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{0}")]
    Rules(#[from] RuleErrors),
    #[error(transparent)]
    Listen(#[from] crate::net::listener::ServeError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the proxy stopped abnormally: {0}")]
    Stopped(String),
}

impl ServeError {
    /// Every failure to start is a usage/config/input error.
    pub fn exit(&self) -> Exit {
        Exit::Usage
    }
}

/// A started proxy: listeners bound, rules loaded, accept loops running.
pub struct Running {
    /// The bound address of each listener, in config order (useful with port 0).
    pub addrs: Vec<SocketAddr>,
    /// The live rule set (reloaded on file changes and SIGHUP).
    pub rules: Arc<RulesHandle>,
    /// The review page's bound address, when it runs (see [`crate::ui`]).
    pub ui: Option<SocketAddr>,
    task: tokio::task::JoinHandle<Result<(), crate::net::listener::ServeError>>,
}

impl Running {
    /// Waits until the proxy has stopped (after `shutdown` and the drain).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(ServeError::Stopped(e.to_string())),
        }
    }
}

/// Starts the proxy for `config`: raises the descriptor limit, installs metrics, loads
/// `config.rules` and watches it, binds every listener and spawns the accept loops, which
/// run until `shutdown` turns true (or SIGTERM/SIGINT arrive) and then drain. Must be called
/// inside a multi-threaded tokio runtime.
///
/// Metrics: with `config.metrics` set, the endpoint must start (a busy port is an error).
/// With metrics off, a recorder already installed in this process (a test starting several
/// proxies) is used as it is.
pub async fn start(config: Arc<Config>, shutdown: watch::Receiver<bool>) -> Result<Running, ServeError> {
    crate::net::fd_budget::prepare(config.max_sessions, config.metrics.is_some());
    match crate::metrics::install(config.metrics) {
        Ok(()) => {
            if let Some(addr) = config.metrics {
                tracing::info!(%addr, "metrics on http://{addr}/metrics");
            }
        }
        Err(e) if config.metrics.is_some() => return Err(e.into()),
        Err(e) => tracing::debug!("metrics recorder not installed again: {e}"),
    }
    let opts = EngineOptions { spam_action: config.spam_action };
    let rules = RulesHandle::load_with_mailboxes(&config.rules, opts, config.rules_per_user.clone())?;
    crate::metrics::rules_reload(true);
    rules.spawn_reloader();
    let sockets = crate::net::listener::bind(&config).await?;
    let addrs = sockets.iter().map(|s| s.local_addr()).collect::<Result<Vec<_>, _>>().map_err(ServeError::Runtime)?;
    // The review page: a failure to start is logged, never fatal to the proxy.
    let ui = match crate::ui::start(config.clone(), Arc::clone(&rules)).await {
        Ok(addr) => addr,
        Err(e) => {
            tracing::error!(error = %e, "the review page is not running; the proxy serves on");
            None
        }
    };
    let task = tokio::spawn(crate::net::listener::serve(config, sockets, Arc::clone(&rules), shutdown));
    Ok(Running { addrs, rules, ui, task })
}

/// [`start`], then wait until the proxy has stopped.
pub async fn serve(config: Arc<Config>, shutdown: watch::Receiver<bool>) -> Result<(), ServeError> {
    start(config, shutdown).await?.wait().await
}

/// Threads of the blocking pool (rule evaluation, header cache writes, quarantine files).
/// tokio's default is 512: a burst of logins, each handing its evaluation and its header
/// cache update to the pool while the cache's writer lock serialises the updates, started
/// 510 threads, each with its stack and allocator caches: 5,000 idle sessions cost 27 KiB
/// each instead of ~5, and the memory stayed (issue 16). The work is CPU-bound or waits on
/// one lock, so a few threads per core serve it as fast; beyond them tasks queue.
fn blocking_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).max(8)
}

/// `popsift serve`: find the config and rules (see [`crate::locate`]), build the config
/// with the flags as [`Overrides`], and run [`serve`] on a multi-threaded runtime.
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let config = build_config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let shutdown = crate::net::listener::shutdown_on_signals();
        serve(Arc::new(config), shutdown).await
    })
}

/// The checked config `popsift serve` runs with: `--config` or the first `popsift.yaml` on
/// the search path, then the flags, then the rules location (built-in rules written under
/// the state directory when none are on disk; logged).
pub fn build_config(args: &ServeArgs) -> Result<Config, ServeError> {
    let search = SearchPath::from_env();
    let config_path = args.config.clone().or_else(|| search.config_file());
    let file = match &config_path {
        Some(p) => {
            tracing::info!(path = %p.display(), "config file");
            crate::config::ConfigFile::load(p)?
        }
        None => crate::config::ConfigFile::default(),
    };
    let mut overrides = Overrides::from(args);
    let given = overrides.rules.clone().or_else(|| file.rules.clone());
    // The state directory decides where built-in rules are written; resolve it the way
    // `Config::build` will.
    let state_dir =
        overrides.state_dir.clone().or_else(|| file.state_dir.clone()).unwrap_or_else(crate::config::default_state_dir);
    let loc = locate::rules(given, &search, &state_dir)?;
    match loc.origin {
        RulesOrigin::Given => {}
        RulesOrigin::Found => tracing::info!(path = %loc.path.display(), "rules found on the search path"),
        RulesOrigin::Builtin => tracing::warn!(
            path = %loc.path.display(),
            searched = %format!(".; {}", super::search_dirs_text()),
            "no rules directory found: using the built-in rules (run `popsift init` for a copy to edit)"
        ),
    }
    overrides.rules = Some(loc.path);
    Ok(Config::build(file, overrides)?)
}
