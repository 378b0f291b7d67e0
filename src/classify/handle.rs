//! [`ModelHandle`]: the proxy's current model snapshot, refreshed when training changed it.
//!
//! Sessions take [`ModelHandle::current`] once at login (an `Arc`, read-only, like the rule
//! set) and never touch the store. A background task looks at the model file once per
//! [`POLL`]; when its size or modification time changed it opens the file (waiting at most
//! a moment if `popsift train` holds it), compares the stored generation and, if training
//! happened, reads the new counts on a blocking thread and swaps the snapshot in. So a
//! `popsift train` run while `serve` runs is seen within about a second, writes never block
//! a session, and a damaged or busy file leaves the last good snapshot in place (logged).
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
    seen: Mutex<Stamp>,
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
        ModelHandle::open_from(state_dir, crate::config::StoreSettings::default(), settings)
    }

    /// [`ModelHandle::open`] on the store the configuration names (`store:`).
    pub fn open_from(
        state_dir: &Path,
        store: crate::config::StoreSettings,
        settings: BayesSettings,
    ) -> Arc<ModelHandle> {
        let h = Arc::new(ModelHandle {
            state_dir: state_dir.to_path_buf(),
            store,
            settings,
            current: ArcSwapOption::empty(),
            seen: Mutex::new(None),
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
        let path = self.path();
        let now = stamp(&path);
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return;
            }
        }
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
                            let m = m.with_settings(&self.settings);
                            tracing::info!(
                                path = %path.display(), spam = m.nspam(), ham = m.nham(), tokens = m.token_count(),
                                ready = m.ready(), "bayes model loaded"
                            );
                            self.current.store(Some(Arc::new(m)));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the bayes model; keeping the last one");
                        }
                    },
                    Err(e) => tracing::error!(error = %e, "cannot read the bayes model; keeping the last one"),
                }
                drop(store);
            }
            // Being trained right now: look again at the next poll.
            Err(StoreError::Busy { .. }) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the bayes model; keeping the last one");
            }
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&path);
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
                    let m = m.with_settings(&self.settings);
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

    /// Starts the polling task. Must be called inside a tokio runtime; runs until it ends.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let h = me.clone();
                let _ = tokio::task::spawn_blocking(move || h.refresh_blocking()).await;
            }
        });
    }
}
