//! `popsift quarantine list|show|restore`: the user's window into the quarantine and the way
//! back for a false positive.
use std::io::Write;
use std::path::PathBuf;

use super::Exit;
use crate::cli::{QuarantineAction, QuarantineArgs};
use crate::config::default_state_dir;
use crate::config::ConfigError;
use crate::store::quarantine::{append_mbox, deliver_maildir, Quarantine, QuarantineError};

/// Why a `quarantine` command failed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineCmdError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] QuarantineError),
    #[error("{path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("say where to restore to: --to-eml FILE, --to-maildir DIR or --to-mbox FILE")]
    NoDestination,
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
}

impl QuarantineCmdError {
    /// No such message is a data error (1); everything else is usage, config or I/O (2).
    pub fn exit(&self) -> Exit {
        match self {
            QuarantineCmdError::Store(QuarantineError::NotFound(_)) => Exit::Data,
            _ => Exit::Usage,
        }
    }
}

/// `--dir` names a Maildir tree; otherwise the config decides: Redis with
/// `store.backend: redis`, else `quarantine.dir` (default `<state dir>/quarantine`).
fn resolve(args: &QuarantineArgs) -> Result<Quarantine, ConfigError> {
    if let Some(d) = &args.dir {
        return Ok(Quarantine::new(d));
    }
    let f = super::config_file(args.config.as_deref())?;
    let store = f.store.settings()?;
    let (qdir, state) = (f.quarantine.dir, f.state_dir);
    let state = args.state_dir.clone().or(state);
    let dir = qdir.unwrap_or_else(|| state.unwrap_or_else(default_state_dir).join("quarantine"));
    Ok(Quarantine::for_store(&store, &dir))
}

/// Runs the subcommand; returns the exit code.
pub fn run(args: &QuarantineArgs) -> Exit {
    match run_inner(args) {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("popsift quarantine: {e}");
            e.exit()
        }
    }
}

fn run_inner(args: &QuarantineArgs) -> Result<(), QuarantineCmdError> {
    let q = resolve(args)?;
    let mut stdout = std::io::stdout().lock();
    match &args.action {
        QuarantineAction::List { json } => {
            let items = q.list()?;
            for m in &items {
                if *json {
                    let v = serde_json::json!({
                        "id": m.id, "user": m.user, "quarantined_at": m.quarantined_at, "from": m.from,
                        "subject": m.subject, "score": m.score, "rules": m.rules, "uidl": m.uidl,
                    });
                    writeln!(stdout, "{v}").map_err(QuarantineCmdError::Output)?;
                } else {
                    writeln!(
                        stdout,
                        "{}  {}  {}  from={}  subject={}  score={}  rules={}",
                        m.id,
                        format_time(m.quarantined_at),
                        m.user,
                        m.from,
                        m.subject,
                        m.score,
                        m.rules
                    )
                    .map_err(QuarantineCmdError::Output)?;
                }
            }
            if !*json {
                writeln!(stdout, "{} message(s) in {}", items.len(), q.location())
                    .map_err(QuarantineCmdError::Output)?;
            }
        }
        QuarantineAction::Show { id, with_meta } => {
            let bytes = if *with_meta { q.show(id) } else { q.original(id) }?;
            stdout.write_all(&bytes).map_err(QuarantineCmdError::Output)?;
        }
        QuarantineAction::Restore { id, to_eml, to_maildir, to_mbox, remove, no_train } => {
            let msg = q.original(id)?;
            let dest = if let Some(p) = to_eml {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(p)
                    .map_err(|source| QuarantineCmdError::Write { path: p.clone(), source })?;
                f.write_all(&msg)
                    .and_then(|_| f.sync_all())
                    .map_err(|source| QuarantineCmdError::Write { path: p.clone(), source })?;
                p.display().to_string()
            } else if let Some(d) = to_maildir {
                deliver_maildir(d, &msg)?.display().to_string()
            } else if let Some(m) = to_mbox {
                append_mbox(m, &msg)?;
                m.display().to_string()
            } else {
                return Err(QuarantineCmdError::NoDestination);
            };
            if *remove {
                q.remove(id)?;
            }
            writeln!(
                stdout,
                "restored {id} to {dest}{}",
                if *remove { " and removed it from the quarantine" } else { "" }
            )
            .map_err(QuarantineCmdError::Output)?;
            if !*no_train {
                train_restored(args, &msg, &mut stdout);
            }
        }
    }
    Ok(())
}

/// A restored message was a false positive: train it as ham, so the classifier learns from
/// the mistake. A failure here does not undo the restore; it is reported.
fn train_restored(args: &QuarantineArgs, msg: &[u8], out: &mut impl Write) {
    let r = match crate::cmd::train::resolve(args.config.as_deref(), args.state_dir.as_deref(), None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("popsift quarantine: restored, but not trained as ham: {e}");
            return;
        }
    };
    if !r.settings.train_restored {
        return;
    }
    match crate::cmd::train::train_ham(&r, msg) {
        Ok(o) => {
            let what = match o {
                crate::classify::train::Outcome::Known => "already known as ham",
                crate::classify::train::Outcome::Unreadable => "not a mail message: not trained",
                crate::classify::train::Outcome::Relabelled => "trained as ham (it was trained as spam before)",
                _ => "trained as ham",
            };
            let place = match r.store.redis {
                Some(_) => "redis".to_string(),
                None => r.state_dir.join(crate::classify::FILE_NAME).display().to_string(),
            };
            let _ = writeln!(out, "classifier: {what} ({place})");
        }
        Err(e) => eprintln!("popsift quarantine: restored, but not trained as ham: {e}"),
    }
}

/// RFC 3339 UTC from Unix seconds, without a date crate.
pub fn format_time(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_format() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_time(1_795_000_000), "2026-11-18T11:06:40Z");
    }
}
