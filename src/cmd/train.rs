//! `popsift train`: teach the classifier from messages on disk, forget them, or show it.
//!
//! Messages come from `--spam PATH…`, `--ham PATH…`, or `--labels FILE PATH…` (the
//! `scan --labels` TSV), as `.eml` files, Maildirs, mbox files or directories. By default
//! training is train-on-error: only messages the model gets wrong or is unsure about are
//! trained, in passes until none is left (see [`crate::classify::train::learn_on_error`]);
//! `--all` trains every one. The model is `<state dir>/bayes.redb`, the same one `scan` and
//! `serve` read. Exit codes: 0 done; 2 a path is missing or the model cannot be written.
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Exit;
use crate::classify::train::{Outcome, TrainSummary, Trainer};
use crate::classify::{BayesSettings, Model, Tokenizer};
use crate::cli::TrainArgs;
use crate::config::default_state_dir;
use crate::locate::SearchPath;
use crate::mailfiles::{label_key, read_labels, read_messages_lenient, MessageItem};
use crate::rules::{EngineOptions, RuleSet};
use crate::store::redis_model::{open_for_reading, open_for_writing};

/// Why `train` (or a quarantine restore's training) failed. All are usage, config or input
/// errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("nothing to train: give --spam PATH…, --ham PATH… or --labels FILE PATH…")]
    NothingToTrain,
    #[error("PATHs without --labels: say what they are with --spam/--ham, or give --labels FILE")]
    Unlabelled,
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("rules {path}:\n{source}")]
    Rules { path: PathBuf, source: crate::rules::RuleErrors },
    #[error(transparent)]
    Store(#[from] crate::classify::store::StoreError),
}

/// Where the model and its settings are: flags, then the config file, then defaults.
#[derive(Debug)]
pub struct Resolved {
    pub state_dir: PathBuf,
    /// `store:` from the config: the model is in Redis with `backend: redis`.
    pub store: crate::config::StoreSettings,
    pub rules: Option<PathBuf>,
    pub settings: BayesSettings,
}

impl Resolved {
    /// The rules given, else `rules/` on the search path (said on stderr), else none:
    /// training then adds no rule tokens.
    pub fn rules_on_disk(&self) -> Option<PathBuf> {
        self.rules.clone().or_else(|| {
            let found = SearchPath::from_env().rules_dir()?;
            eprintln!("popsift: rules from {}", found.display());
            Some(found)
        })
    }
}

/// Resolves `--state-dir`/`--rules`/`--config` the way `serve` does; `rules` is only what
/// the flag or config file says (see [`Resolved::rules_on_disk`], [`super::rules_path`]).
pub fn resolve(config: Option<&Path>, state_dir: Option<&Path>, rules: Option<&Path>) -> Result<Resolved, TrainError> {
    let f = super::config_file(config)?;
    let (fstate, frules, settings) = (f.state_dir.clone(), f.rules.clone(), f.bayes.settings());
    let state_dir = state_dir.map(Path::to_path_buf).or(fstate).unwrap_or_else(default_state_dir);
    let rules = rules.map(Path::to_path_buf).or(frules);
    let store = f.store.settings()?;
    Ok(Resolved { state_dir, store, rules, settings })
}

/// Runs the subcommand; returns the exit code.
pub fn run(args: &TrainArgs) -> Exit {
    match run_inner(args) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("popsift train: {e}");
            Exit::Usage
        }
    }
}

fn run_inner(args: &TrainArgs) -> Result<(), TrainError> {
    let r = resolve(args.config.as_deref(), args.state_dir.as_deref(), args.rules.as_deref())?;
    if args.stats {
        return stats(&r);
    }
    if args.spam.is_empty() && args.ham.is_empty() && args.paths.is_empty() {
        return Err(TrainError::NothingToTrain);
    }
    if !args.paths.is_empty() && args.labels.is_none() {
        return Err(TrainError::Unlabelled);
    }
    let labels = match &args.labels {
        Some(p) => Some(read_labels(p).map_err(|source| TrainError::Read { path: p.clone(), source })?),
        None => None,
    };
    let mut unreadable = 0usize;
    let mut unlabelled = 0usize;
    let mut items: Vec<(MessageItem, bool)> = Vec::new();
    let mut read = |p: &Path, label: Option<bool>| -> Result<(), TrainError> {
        let (found, failed) =
            read_messages_lenient(p).map_err(|source| TrainError::Read { path: p.to_path_buf(), source })?;
        for (f, e) in failed {
            eprintln!("popsift train: skipping {}: {e}", f.display());
            unreadable += 1;
        }
        for m in found {
            let l = label.or_else(|| labels.as_ref().and_then(|l| l.get(&label_key(&m.label)).copied()));
            match l {
                Some(spam) => items.push((m, spam)),
                None => unlabelled += 1,
            }
        }
        Ok(())
    };
    for p in &args.spam {
        read(p, Some(true))?;
    }
    for p in &args.ham {
        read(p, Some(false))?;
    }
    for p in &args.paths {
        read(p, None)?;
    }
    let rules = match &r.rules_on_disk() {
        Some(p) => Some(Arc::new(
            RuleSet::load(p, &EngineOptions::default())
                .map_err(|source| TrainError::Rules { path: p.clone(), source })?,
        )),
        None => None,
    };
    let store = open_for_writing(&r.state_dir, &r.store)?;
    let tokenizer = Tokenizer::from_settings(&r.settings);
    let mut trainer = Trainer::new(&*store, tokenizer, rules)?.with_minimums(r.settings.min_spam, r.settings.min_ham);
    let progress = std::io::stderr().is_terminal() && items.len() >= 200;
    if args.forget {
        for (i, (m, _)) in items.iter().enumerate() {
            trainer.forget(&m.bytes);
            show_progress(progress, i + 1, items.len());
        }
    } else if args.all {
        for (i, (m, spam)) in items.iter().enumerate() {
            trainer.train(&m.bytes, *spam);
            show_progress(progress, i + 1, items.len());
        }
    } else {
        let batch: Vec<(&[u8], bool)> = items.iter().map(|(m, s)| (m.bytes.as_slice(), *s)).collect();
        let outcomes = trainer.train_on_error(&batch);
        show_progress(progress, outcomes.len(), items.len());
    }
    if progress {
        eprintln!();
    }
    let mut summary = trainer.commit()?;
    summary.unreadable += unreadable;
    let model = store.load()?.with_settings(&r.settings);
    println!("{}", summary_line(&summary, args.forget, unlabelled, &model, Path::new(&store.location())));
    Ok(())
}

fn show_progress(on: bool, done: usize, total: usize) {
    if on && (done % 100 == 0 || done == total) {
        eprint!("\rtraining: {done}/{total}");
        let _ = std::io::stderr().flush();
    }
}

/// The summary printed after a run.
pub fn summary_line(s: &TrainSummary, forget: bool, unlabelled: usize, model: &Model, path: &Path) -> String {
    let mut line = if forget {
        format!("train: {} forgotten, {} not known", s.forgotten, s.not_known)
    } else {
        format!(
            "train: {} trained ({} relabelled), {} skipped as already known, {} skipped as already classified right",
            s.trained + s.relabelled,
            s.relabelled,
            s.known,
            s.correct
        )
    };
    line.push_str(&format!(", {} unreadable", s.unreadable));
    if unlabelled > 0 {
        line.push_str(&format!(", {unlabelled} without a label"));
    }
    line.push_str(&format!(
        "\nmodel: {} spam, {} ham, {} tokens in {}{}",
        model.nspam(),
        model.nham(),
        model.token_count(),
        path.display(),
        if model.ready() { "" } else { " (not enough training yet: no probabilities)" }
    ));
    line
}

fn stats(r: &Resolved) -> Result<(), TrainError> {
    let store = match open_for_reading(&r.state_dir, &r.store, std::time::Duration::from_secs(10)) {
        Ok(Some(s)) => s,
        Ok(None) => {
            let place = if r.store.redis.is_some() { "redis".to_string() } else { r.state_dir.display().to_string() };
            println!("no model yet in {place} (train one with popsift train)");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let model = store.load()?.with_settings(&r.settings);
    let trained = store.trained()?.len();
    println!(
        "model {}: {} spam, {} ham, {} messages known, {} tokens, token set version {}{}",
        store.location(),
        model.nspam(),
        model.nham(),
        trained,
        model.token_count(),
        model.version(),
        if model.ready() {
            String::new()
        } else {
            format!(" — not ready: needs {} spam and {} ham", r.settings.min_spam, r.settings.min_ham)
        }
    );
    let mut scored: Vec<(&str, f64, u32)> = model
        .iter()
        .filter(|(_, c)| c.spam + c.ham >= 3)
        .map(|(t, c)| (t, model.token_probability(c), c.spam + c.ham))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    println!("most telling spam tokens:");
    for (t, p, n) in scored.iter().take(15) {
        println!("  {p:.3}  {n:>5}  {t}");
    }
    println!("most telling ham tokens:");
    for (t, p, n) in scored.iter().rev().take(15) {
        println!("  {p:.3}  {n:>5}  {t}");
    }
    Ok(())
}

/// Trains one message as ham in `state_dir` (a quarantine restore: a false positive).
pub fn train_ham(r: &Resolved, msg: &[u8]) -> Result<Outcome, TrainError> {
    let rules = match &r.rules_on_disk() {
        Some(p) => RuleSet::load(p, &EngineOptions::default()).ok().map(Arc::new),
        None => None,
    };
    let store = open_for_writing(&r.state_dir, &r.store)?;
    let tokenizer = Tokenizer::from_settings(&r.settings);
    let mut trainer = Trainer::new(&*store, tokenizer, rules)?;
    let o = trainer.train(msg, false);
    trainer.commit()?;
    Ok(o)
}
