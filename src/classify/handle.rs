//! [`ModelHandle`]: the proxy's current model snapshot, refreshed when training changed it.
//!
//! Sessions take [`ModelHandle::current`] once at login (an `Arc`, read-only, like the rule
//! set) and never touch the store. A background thread looks at the model file once per
//! [`POLL`]; when its size or modification time changed, or the change marker the trainer
//! writes next to it after each commit ([`super::store::read_marker`]), it opens the file (waiting at most
//! a moment if `popsift train` holds it), compares the stored generation and, if training
//! happened, reads the new counts on a blocking thread and swaps the snapshot in. So a
//! `popsift train` run while `serve` runs is seen within about a second, writes never block
//! a session, and a busy file leaves the last good snapshot in place. A damaged file is
//! moved aside and replaced by a new empty model (logged, counted: see
//! [`super::store::move_aside`]); until it is retrained no `bayes:` rule fires.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;

use super::model::Model;
use super::store::{ModelStore, RedbStore, StoreError};
use super::BayesSettings;

/// How often the background task looks at the model file.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a refresh waits for a training run to release the file before trying later.
const READ_WAIT: Duration = Duration::from_millis(200);

/// File identity used to notice changes without opening it.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// The current model of a state directory.
pub struct ModelHandle {
    state_dir: PathBuf,
    /// Where the model lives (`store:`); with Redis the file stamp is not used and the
    /// generation is asked at each poll (one `HGET`).
    store: crate::config::StoreSettings,
    settings: BayesSettings,
    current: ArcSwapOption<Model>,
    /// The model file's stamp after the last look, and the change marker read before it
    /// ([`super::store::read_marker`]): either moving means a look inside.
    seen: Mutex<(Stamp, Option<u64>)>,
    autolearner: Option<Arc<super::autolearn::Autolearner>>,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle").field("state_dir", &self.state_dir).finish()
    }
}

/// Reads the model of a state directory once: `Ok(None)` when none was trained yet.
pub fn load_model(state_dir: &Path, settings: &BayesSettings, wait: Duration) -> Result<Option<Model>, StoreError> {
    load_model_from(state_dir, &crate::config::StoreSettings::default(), settings, wait)
}

/// [`load_model`] from the store the configuration names (`store:`).
pub fn load_model_from(
    state_dir: &Path,
    store: &crate::config::StoreSettings,
    settings: &BayesSettings,
    wait: Duration,
) -> Result<Option<Model>, StoreError> {
    let Some(store) = crate::store::redis_model::open_for_reading(state_dir, store, wait)? else { return Ok(None) };
    Ok(Some(store.load()?.with_settings(settings)))
}

impl ModelHandle {
    /// A handle for `state_dir`, loaded now (blocking). A missing model is not an error; a
    /// damaged one is logged and the proxy runs without a classifier until it is replaced.
    pub fn open(state_dir: &Path, settings: BayesSettings) -> Arc<ModelHandle> {
        ModelHandle::open_with(state_dir, crate::config::StoreSettings::default(), settings, None)
    }

    /// [`ModelHandle::open`] on the store the configuration names (`store:`).
    pub fn open_from(
        state_dir: &Path,
        store: crate::config::StoreSettings,
        settings: BayesSettings,
    ) -> Arc<ModelHandle> {
        ModelHandle::open_with(state_dir, store, settings, None)
    }

    /// [`Self::open_from`], every snapshot carrying the autolearn queue (when autolearn is on).
    pub fn open_with(
        state_dir: &Path,
        store: crate::config::StoreSettings,
        settings: BayesSettings,
        autolearner: Option<Arc<super::autolearn::Autolearner>>,
    ) -> Arc<ModelHandle> {
        let h = Arc::new(ModelHandle {
            state_dir: state_dir.to_path_buf(),
            store,
            settings,
            current: ArcSwapOption::empty(),
            seen: Mutex::new((None, None)),
            autolearner,
        });
        h.refresh_blocking();
        h
    }

    /// The file the handle follows.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join(super::FILE_NAME)
    }

    /// The snapshot to use now; keep it for the whole session. `None` until a model exists.
    pub fn current(&self) -> Option<Arc<Model>> {
        self.current.load_full()
    }

    /// Re-reads the model if its file changed since the last look. Blocking.
    pub fn refresh_blocking(&self) {
        if self.store.redis.is_some() {
            return self.refresh_shared();
        }
        // The marker is read before the file is: a commit after this point changes it
        // again and is seen at the next poll, even when the file's stamp (taken after the
        // read, which itself writes the file) cannot show it.
        let marker = self.marker();
        if !self.changed(marker) {
            return;
        }
        let path = self.path();
        let old_generation = self.current.load().as_ref().map(|m| m.generation());
        match RedbStore::open_existing(&self.state_dir, READ_WAIT) {
            Ok(None) => {
                self.current.store(None);
            }
            Ok(Some(store)) => {
                match store.stats_generation() {
                    Ok(g) if Some(g) == old_generation => {}
                    Ok(_) => match store.load() {
                        Ok(m) => {
                            let m = m.with_settings(&self.settings).with_autolearner(self.autolearner.clone());
                            tracing::info!(
                                path = %path.display(), spam = m.nspam(), ham = m.nham(), tokens = m.token_count(),
                                ready = m.ready(), "bayes model loaded"
                            );
                            crate::metrics::bayes_model(m.nspam(), m.nham(), m.generation());
                            self.current.store(Some(Arc::new(m)));
                        }
                        Err(e @ StoreError::Corrupt { .. }) => {
                            drop(store);
                            return self.rebuild(&e);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the bayes model; keeping the last one");
                        }
                    },
                    Err(e @ StoreError::Corrupt { .. }) => {
                        drop(store);
                        return self.rebuild(&e);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot read the bayes model; keeping the last one"),
                }
                drop(store);
            }
            // Being trained right now: look again at the next poll.
            Err(StoreError::Busy { .. }) => return,
            Err(e @ StoreError::Corrupt { .. }) => return self.rebuild(&e),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the bayes model; keeping the last one");
            }
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = (stamp(&path), marker);
    }

    /// A damaged model: moved aside, a new empty one created; no classifier until it is
    /// trained (an empty model gives no probability).
    fn rebuild(&self, why: &StoreError) {
        self.current.store(None);
        match super::store::move_aside(&self.state_dir, why) {
            Ok(_) => {
                if let Err(e) = RedbStore::open(&self.state_dir) {
                    tracing::error!(error = %e, "cannot create a new bayes model");
                }
            }
            Err(e) => tracing::error!(error = %e, "bayes model damaged and cannot be moved aside"),
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = (stamp(&self.path()), self.marker());
    }

    /// The shared store: compare the generation (one round trip), load when it moved. A
    /// failure keeps the last snapshot (Redis down: logged once per outage by the store).
    fn refresh_shared(&self) {
        let store = match crate::store::redis_model::open_for_reading(&self.state_dir, &self.store, READ_WAIT) {
            Ok(Some(s)) => s,
            Ok(None) => return self.current.store(None),
            Err(e) => return tracing::debug!(error = %e, "bayes model on redis unavailable; keeping the last one"),
        };
        let old_generation = self.current.load().as_ref().map(|m| m.generation());
        match store.generation() {
            Ok(g) if Some(g) == old_generation => {}
            Ok(_) => match store.load() {
                Ok(m) => {
                    let m = m.with_settings(&self.settings).with_autolearner(self.autolearner.clone());
                    tracing::info!(
                        store = %store.location(), spam = m.nspam(), ham = m.nham(), tokens = m.token_count(),
                        ready = m.ready(), "bayes model loaded"
                    );
                    self.current.store(Some(Arc::new(m)));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the bayes model; keeping the last one"),
            },
            Err(e) => tracing::debug!(error = %e, "bayes model on redis unavailable; keeping the last one"),
        }
    }

    /// Whether [`Self::refresh_blocking`] has anything to do: the model file's stamp moved
    /// since the last look (one `stat`), or the model is shared (asked at every poll).
    pub fn may_have_changed(&self) -> bool {
        self.store.redis.is_some() || self.changed(self.marker())
    }

    /// The model file's stamp or its change marker (read as `marker`) moved since the last look.
    fn changed(&self, marker: Option<u64>) -> bool {
        let now = (stamp(&self.path()), marker);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    fn marker(&self) -> Option<u64> {
        super::store::read_marker(&self.path())
    }

    /// Starts the poller: one plain thread that looks every [`POLL`] and ends once the
    /// handle is gone. Must be called inside a tokio runtime (the shared store's calls run
    /// on it).
    ///
    /// Not a task that sends the look to the blocking pool (issue 16): a task sent there every
    /// second wakes its idle threads in turn, so none ever stayed idle for tokio's keep-alive
    /// and the threads a burst of logins started (each with its stack and its allocator
    /// cache) never exited. The `stat` of the model file (or the shared store's generation
    /// check) now runs on this thread, never on a runtime worker.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let runtime = tokio::runtime::Handle::current();
        let poller = std::thread::Builder::new().name("popsift-model".into()).spawn(move || {
            let _runtime = runtime.enter();
            let mut flushes = 0;
            loop {
                std::thread::sleep(POLL);
                let Some(h) = me.upgrade() else { return };
                h.refresh_blocking();
                // Once popsift went idle, this thread's allocator cache goes back too.
                crate::allocator::flush_if_requested(&mut flushes);
            }
        });
        if let Err(e) = poller {
            tracing::error!(error = %e, "cannot start the bayes model poller; the model is not reloaded");
        }
    }
}
