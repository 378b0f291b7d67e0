//! [`RulesHandle`]: the current [`RuleSet`], swapped atomically on reload.
//!
//! Sessions call [`RulesHandle::current`] once at login and keep that `Arc` for the whole
//! session. [`RulesHandle::spawn_reloader`] watches the rule path and the list files it uses
//! (inotify through `notify`, debounced) and listens for SIGHUP; each trigger rebuilds the set
//! on a blocking thread, away from the hot path. A failed rebuild keeps the old set and logs
//! every error.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{EngineOptions, RuleErrors, RuleSet};

/// How long file events must go quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// The current rule set plus what is needed to rebuild it.
#[derive(Debug)]
pub struct RulesHandle {
    current: ArcSwap<RuleSet>,
    path: Option<PathBuf>,
    opts: EngineOptions,
    /// Per-mailbox sets layered over this one (`rules_per_user:`), if enabled.
    mailboxes: Option<Arc<super::users::MailboxRules>>,
}

impl RulesHandle {
    /// Wraps a set that has no file behind it (`reload` then fails).
    pub fn new(set: RuleSet) -> Arc<RulesHandle> {
        Arc::new(RulesHandle {
            current: ArcSwap::from_pointee(set),
            path: None,
            opts: EngineOptions::default(),
            mailboxes: None,
        })
    }

    /// Loads `path` and remembers it for reloads.
    pub fn load(path: &Path, opts: EngineOptions) -> Result<Arc<RulesHandle>, RuleErrors> {
        Self::load_with_mailboxes(path, opts, None)
    }

    /// [`Self::load`], with per-mailbox rules layered over the set (see [`super::users`]).
    pub fn load_with_mailboxes(
        path: &Path,
        opts: EngineOptions,
        per_user: Option<super::users::PerUserSettings>,
    ) -> Result<Arc<RulesHandle>, RuleErrors> {
        let set = RuleSet::load(path, &opts)?;
        crate::metrics::rules_loaded(set.len());
        let mailboxes =
            per_user.map(|s| Arc::new(super::users::MailboxRules::new(s, path.to_path_buf(), opts.clone())));
        Ok(Arc::new(RulesHandle {
            current: ArcSwap::from_pointee(set),
            path: Some(path.to_path_buf()),
            opts,
            mailboxes,
        }))
    }

    /// The set for a session of mailbox `user` at upstream `host` (the login's user, once
    /// known): the mailbox's own set when it has a rules directory, else [`Self::current`].
    /// Keep it for the whole session. Files are looked at (and compiled when changed) on a
    /// blocking thread.
    pub async fn for_mailbox(&self, user: Option<&str>, host: &str) -> Arc<RuleSet> {
        let global = self.current();
        let (Some(mailboxes), Some(user)) = (&self.mailboxes, user) else { return global };
        let (m, user, host, g) = (Arc::clone(mailboxes), user.to_string(), host.to_string(), Arc::clone(&global));
        tokio::task::spawn_blocking(move || m.resolve(&g, &user, &host)).await.unwrap_or(global)
    }

    /// The per-mailbox rules, when enabled.
    pub fn mailboxes(&self) -> Option<&super::users::MailboxRules> {
        self.mailboxes.as_deref()
    }

    /// The set to use now; keep it for the whole session.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// The rule path reloads read, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Rebuilds from the rule path and swaps it in; returns the new rule count. On error the
    /// old set stays and the errors are logged (and returned).
    pub fn reload(&self) -> Result<usize, RuleErrors> {
        let Some(path) = &self.path else {
            let e = super::RuleError {
                path: PathBuf::new(),
                line: 1,
                column: 1,
                rule: None,
                kind: super::ErrorKind::Io,
                message: "no rule path to reload from".into(),
            };
            crate::metrics::rules_reload(false);
            return Err(RuleErrors(vec![e]));
        };
        match RuleSet::load(path, &self.opts) {
            Ok(set) => {
                let n = set.len();
                self.current.store(Arc::new(set));
                crate::metrics::rules_reload(true);
                crate::metrics::rules_loaded(n);
                tracing::info!(rules = n, path = %path.display(), "rules reloaded");
                Ok(n)
            }
            Err(e) => {
                crate::metrics::rules_reload(false);
                tracing::error!(path = %path.display(), errors = e.len(), "rule reload failed, keeping the old rules:\n{e}");
                Err(e)
            }
        }
    }

    /// Directories to watch: the rule directory (or the rule file's directory) and the
    /// directories of every list file. Directories, not files, because editors replace files
    /// by renaming.
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(p) = &self.path {
            if p.is_dir() {
                dirs.push(p.clone());
            } else if let Some(d) = p.parent() {
                dirs.push(if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() });
            }
        }
        for l in self.current().list_files() {
            if let Some(d) = l.parent() {
                let d = if d.as_os_str().is_empty() { PathBuf::from(".") } else { d.to_path_buf() };
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
        }
        dirs
    }

    /// Starts the reloader task: file changes (debounced by [`DEBOUNCE`]) and SIGHUP trigger
    /// [`reload`](Self::reload) on a blocking thread. Must be called inside a tokio runtime.
    /// The task runs until the runtime shuts down.
    pub fn spawn_reloader(self: &Arc<Self>) {
        let handle = Arc::clone(self);
        tokio::spawn(async move { handle.reloader().await });
    }

    async fn reloader(self: Arc<Self>) {
        use notify::{EventKind, RecursiveMode, Watcher};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res {
                let relevant = !matches!(
                    ev.kind,
                    EventKind::Access(notify::event::AccessKind::Open(_))
                        | EventKind::Access(notify::event::AccessKind::Read)
                        | EventKind::Access(notify::event::AccessKind::Close(notify::event::AccessMode::Read))
                        | EventKind::Access(notify::event::AccessKind::Any)
                );
                if relevant {
                    let _ = watcher_tx.send(());
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!("rule file watcher unavailable ({e}); reload with SIGHUP");
                None
            }
        };
        let mut watched: Vec<PathBuf> = Vec::new();
        let sync_watches = |watcher: &mut Option<notify::RecommendedWatcher>, watched: &mut Vec<PathBuf>| {
            let Some(w) = watcher.as_mut() else { return };
            let want = self.watch_dirs();
            for d in watched.iter() {
                if !want.contains(d) {
                    let _ = w.unwatch(d);
                }
            }
            for d in &want {
                if !watched.contains(d) {
                    if let Err(e) = w.watch(d, RecursiveMode::NonRecursive) {
                        tracing::warn!(dir = %d.display(), "cannot watch rule directory: {e}");
                    }
                }
            }
            *watched = want;
        };
        sync_watches(&mut watcher, &mut watched);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        loop {
            let from_signal = tokio::select! {
                ev = rx.recv() => {
                    if ev.is_none() {
                        return;
                    }
                    false
                }
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
            };
            if !from_signal {
                // Debounce: wait until events stop for DEBOUNCE.
                loop {
                    match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
            } else {
                tracing::info!("SIGHUP: reloading rules");
            }
            let me = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            sync_watches(&mut watcher, &mut watched);
            // Events queued during the reload are kept: an edit landing after the reload read
            // its file must trigger the next one. Our own reading raises only access events,
            // which the watcher above never sends.
        }
    }
}
