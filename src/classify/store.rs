//! Where the model lives: the [`ModelStore`] trait and its embedded implementation on redb.
//!
//! The trait is small on purpose — load a snapshot, list trained messages, apply one batch
//! of count changes atomically — so a shared backend implements it too
//! ([`crate::store::redis_model`], `store.backend: redis`) and nothing above it changes.
//!
//! # The redb file
//! `<state_dir>/bayes.redb` (redb for the same reasons as the header cache: pure Rust,
//! ACID, checksummed). Tables:
//! - `tokens`: token (UTF-8) → (spam count, ham count), both `u32`;
//! - `messages`: message digest (SHA-256 of the normalised header block, 32 bytes) →
//!   `[label u8: 1 spam, 0 ham][token-set version u32 LE][ids of the rules that fired,
//!   `\n`-separated]`. The digest makes training idempotent; the stored rule ids make
//!   `forget` exact even after the rules changed;
//! - `meta`: `nspam`, `nham`, `version`, `generation` (`u64`; +1 per batch, so a reader
//!   can tell whether the model changed).
//!
//! A batch is one write transaction: a crash leaves the old or the new model, never half.
//! redb locks the file for one process at a time, so readers (`scan`, `serve`) copy the
//! model into memory and close the file at once; a writer that finds the file busy retries
//! for a bounded time. A damaged file is never deleted (it holds the user's training): the
//! proxy and autolearn move it aside ([`move_aside`]: logged, counted) and start a new empty
//! model; `popsift scan`/`train` report it with its path. redb 2 panics
//! on some damage instead of returning an error, so every call is wrapped in
//! `catch_unwind`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use super::model::{Counts, Model};

const TOKENS: TableDefinition<&str, (u32, u32)> = TableDefinition::new("tokens");
const MESSAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How long a writer waits for another process to release the file.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// SHA-256 of a message's normalised header block.
pub type Digest = [u8; 32];

/// What the store remembers of a trained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainedMessage {
    pub spam: bool,
    /// Token-set version it was trained with.
    pub version: u32,
    /// Ids of the popsift rules that fired when it was trained (their `rule:` tokens).
    pub rules: Vec<String>,
}

/// One atomic change to the model.
#[derive(Debug, Default)]
pub struct Batch {
    /// Token → (spam delta, ham delta).
    pub tokens: HashMap<String, (i64, i64)>,
    pub nspam: i64,
    pub nham: i64,
    pub add: Vec<(Digest, TrainedMessage)>,
    pub remove: Vec<Digest>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model {path}: cannot create the state directory: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("model {path} is damaged ({detail}); move it aside and retrain (popsift train)")]
    Corrupt { path: PathBuf, detail: String },
    #[error("model {path} is in use by another popsift process")]
    Busy { path: PathBuf },
    #[error("model {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("the model was trained with token set version {found} (this popsift uses {want}): move the model file aside and retrain")]
    Version { found: u32, want: u32 },
}

/// The model's storage backend.
pub trait ModelStore {
    /// The whole model, as a read-only snapshot.
    fn load(&self) -> Result<Model, StoreError>;
    /// Every trained message by digest.
    fn trained(&self) -> Result<HashMap<Digest, TrainedMessage>, StoreError>;
    /// Applies a batch atomically.
    fn apply(&self, batch: &Batch) -> Result<(), StoreError>;
    /// The generation (+1 per applied batch), cheaply when the store can.
    fn generation(&self) -> Result<u64, StoreError> {
        Ok(self.load()?.generation())
    }
    /// Where the model lives, for messages (a path, or a Redis URL without credentials).
    fn location(&self) -> String;
}

/// The embedded store: one redb file.
pub struct RedbStore {
    path: PathBuf,
    db: Database,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("path", &self.path).finish()
    }
}

impl RedbStore {
    /// Opens (creating when missing) `<state_dir>/bayes.redb`, waiting up to 10 s while
    /// another process holds it.
    pub fn open(state_dir: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_inner(state_dir, BUSY_WAIT, true)
    }

    /// Opens the model for reading only if its file exists (readers never create one, and
    /// never write, so opening does not change the file), waiting up to `wait` while
    /// another process holds it.
    pub fn open_existing(state_dir: &Path, wait: Duration) -> Result<Option<RedbStore>, StoreError> {
        if !state_dir.join(super::FILE_NAME).exists() {
            return Ok(None);
        }
        RedbStore::open_inner(state_dir, wait, false).map(Some)
    }

    fn open_inner(state_dir: &Path, wait: Duration, writer: bool) -> Result<RedbStore, StoreError> {
        let path = state_dir.join(super::FILE_NAME);
        if writer {
            std::fs::create_dir_all(state_dir).map_err(|source| StoreError::Dir { path: path.clone(), source })?;
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let opened =
                guarded(|| if writer { Database::create(&path) } else { Database::open(&path) }.map_err(Failure::Db));
            match opened {
                Ok(db) => {
                    let store = RedbStore { path, db };
                    if writer {
                        store.ensure_tables()?;
                    }
                    return Ok(store);
                }
                Err(Failure::Db(DatabaseError::DatabaseAlreadyOpen)) if started.elapsed() < wait => {
                    // Another process is reading or training: it holds the lock for a moment.
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(Failure::Db(DatabaseError::DatabaseAlreadyOpen)) => return Err(StoreError::Busy { path }),
                Err(Failure::Db(DatabaseError::Storage(redb::StorageError::Io(e))))
                    if e.kind() != std::io::ErrorKind::InvalidData =>
                {
                    return Err(StoreError::Io { path, detail: e.to_string() })
                }
                Err(f) => return Err(StoreError::Corrupt { path, detail: f.to_string() }),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, f: Failure) -> StoreError {
        StoreError::Corrupt { path: self.path.clone(), detail: f.to_string() }
    }

    fn ensure_tables(&self) -> Result<(), StoreError> {
        guarded(|| {
            let w = self.db.begin_write()?;
            w.open_table(TOKENS)?;
            w.open_table(MESSAGES)?;
            w.open_table(META)?;
            w.commit()?;
            Ok(())
        })
        .map_err(|f| self.corrupt(f))
    }

    /// The store generation (+1 per applied batch), read without loading the tokens.
    pub fn stats_generation(&self) -> Result<u64, StoreError> {
        guarded(|| {
            let r = self.db.begin_read()?;
            let meta = r.open_table(META)?;
            Ok(meta.get("generation")?.map(|v| v.value()).unwrap_or(0))
        })
        .map_err(|f| self.corrupt(f))
    }

    /// (nspam, nham, version, distinct tokens, trained messages) without reading every token.
    pub fn stats(&self) -> Result<(u64, u64, u32, u64, u64), StoreError> {
        guarded(|| {
            use redb::ReadableTableMetadata;
            let r = self.db.begin_read()?;
            let meta = r.open_table(META)?;
            let get = |k: &str| -> Result<u64, Failure> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
            let (ns, nh, v) = (get("nspam")?, get("nham")?, get("version")?);
            let tokens = r.open_table(TOKENS)?.len()?;
            let messages = r.open_table(MESSAGES)?.len()?;
            Ok((ns, nh, if v == 0 { super::TOKENS_VERSION } else { v as u32 }, tokens, messages))
        })
        .map_err(|f| self.corrupt(f))
    }
}

/// The change marker next to a model file: the generation of its latest training commit,
/// written by the trainer after the commit and never by a reader. Readers cannot tell a
/// commit by the file's stamp alone: redb writes the file when a reader opens and closes
/// it, so a stamp taken after a read can already include a commit made in the same
/// timestamp tick (see [`super::ModelHandle`]).
pub fn marker_path(model: &Path) -> PathBuf {
    let mut p = model.as_os_str().to_owned();
    p.push(".generation");
    PathBuf::from(p)
}

/// The generation in the change marker of `model`, if there is a readable one.
pub fn read_marker(model: &Path) -> Option<u64> {
    std::fs::read_to_string(marker_path(model)).ok()?.trim().parse().ok()
}

/// Writes the change marker (whole, by rename). A failure only costs readers the marker:
/// they still see the file's stamp move.
fn write_marker(model: &Path, generation: u64) {
    let marker = marker_path(model);
    // Per process: `serve`'s autolearn and a `popsift train` may both write one.
    let mut tmp = marker.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, format!("{generation}\n")).and_then(|()| std::fs::rename(&tmp, &marker));
    if let Err(e) = written {
        tracing::debug!(path = %marker.display(), error = %e, "cannot write the bayes model's change marker");
    }
}

/// Moves a damaged model file aside (`bayes.redb.corrupt-<unix seconds>`, never deleted: it
/// holds the user's training, and a redb expert may still recover it), logs it and counts it
/// (`popsift_bayes_model_rebuilds_total`). The next open creates a new, empty model — the way
/// the header cache rebuilds itself, except that nothing is deleted. Returns where it went.
pub fn move_aside(state_dir: &Path, why: &StoreError) -> Result<PathBuf, StoreError> {
    let path = state_dir.join(super::FILE_NAME);
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut aside = state_dir.join(format!("{}.corrupt-{secs}", super::FILE_NAME));
    let mut n = 1;
    while aside.exists() {
        aside = state_dir.join(format!("{}.corrupt-{secs}.{n}", super::FILE_NAME));
        n += 1;
    }
    std::fs::rename(&path, &aside).map_err(|e| StoreError::Io {
        path: path.clone(),
        detail: format!("cannot move the damaged model aside: {e}"),
    })?;
    tracing::error!(
        path = %path.display(), moved_to = %aside.display(), error = %why,
        "bayes model damaged: moved aside; a new empty model starts (retrain with popsift train)"
    );
    crate::metrics::bayes_model_rebuilt();
    Ok(aside)
}

/// Opens the model for writing; a damaged file is moved aside ([`move_aside`]) and a new
/// empty model created in its place.
pub fn open_or_rebuild(state_dir: &Path) -> Result<RedbStore, StoreError> {
    let damaged = match RedbStore::open(state_dir) {
        Ok(store) => match store.stats() {
            Ok(_) => return Ok(store),
            Err(e @ StoreError::Corrupt { .. }) => e,
            Err(e) => return Err(e),
        },
        Err(e @ StoreError::Corrupt { .. }) => e,
        Err(e) => return Err(e),
    };
    move_aside(state_dir, &damaged)?;
    RedbStore::open(state_dir)
}

impl ModelStore for RedbStore {
    fn generation(&self) -> Result<u64, StoreError> {
        self.stats_generation()
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Model, StoreError> {
        guarded(|| {
            let r = self.db.begin_read()?;
            let meta = r.open_table(META)?;
            let get = |k: &str| -> Result<u64, Failure> { Ok(meta.get(k)?.map(|v| v.value()).unwrap_or(0)) };
            let (nspam, nham, version) = (get("nspam")?, get("nham")?, get("version")?);
            let version = if version == 0 { super::TOKENS_VERSION } else { version as u32 };
            let table = r.open_table(TOKENS)?;
            let mut tokens = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                let (spam, ham) = v.value();
                tokens.push((Box::from(k.value()), Counts { spam, ham }));
            }
            Ok(Model::from_parts(tokens, nspam, nham, version).with_generation(get("generation")?))
        })
        .map_err(|f| self.corrupt(f))
    }

    fn trained(&self) -> Result<HashMap<Digest, TrainedMessage>, StoreError> {
        guarded(|| {
            let r = self.db.begin_read()?;
            let table = r.open_table(MESSAGES)?;
            let mut out = HashMap::new();
            for item in table.iter()? {
                let (k, v) = item?;
                let (Ok(d), Some(m)) = (<Digest>::try_from(k.value()), decode_message(v.value())) else {
                    return Err(Failure::Format("bad entry in the messages table".into()));
                };
                out.insert(d, m);
            }
            Ok(out)
        })
        .map_err(|f| self.corrupt(f))
    }

    fn apply(&self, batch: &Batch) -> Result<(), StoreError> {
        let generation = guarded(|| {
            let w = self.db.begin_write()?;
            let generation = {
                let mut tokens = w.open_table(TOKENS)?;
                for (t, &(ds, dh)) in &batch.tokens {
                    if ds == 0 && dh == 0 {
                        continue;
                    }
                    let (s, h) = tokens.get(t.as_str())?.map(|v| v.value()).unwrap_or((0, 0));
                    let s = (s as i64 + ds).clamp(0, u32::MAX as i64) as u32;
                    let h = (h as i64 + dh).clamp(0, u32::MAX as i64) as u32;
                    if s == 0 && h == 0 {
                        tokens.remove(t.as_str())?;
                    } else {
                        tokens.insert(t.as_str(), (s, h))?;
                    }
                }
                let mut meta = w.open_table(META)?;
                for (k, d) in [("nspam", batch.nspam), ("nham", batch.nham)] {
                    let cur = meta.get(k)?.map(|v| v.value()).unwrap_or(0);
                    meta.insert(k, (cur as i64 + d).max(0) as u64)?;
                }
                meta.insert("version", super::TOKENS_VERSION as u64)?;
                let generation = meta.get("generation")?.map(|v| v.value()).unwrap_or(0) + 1;
                meta.insert("generation", generation)?;
                let mut msgs = w.open_table(MESSAGES)?;
                for d in &batch.remove {
                    msgs.remove(d.as_slice())?;
                }
                for (d, m) in &batch.add {
                    msgs.insert(d.as_slice(), encode_message(m).as_slice())?;
                }
                generation
            };
            w.commit()?;
            Ok(generation)
        })
        .map_err(|f| match f {
            Failure::Db(DatabaseError::Storage(redb::StorageError::Io(e))) => {
                StoreError::Io { path: self.path.clone(), detail: e.to_string() }
            }
            f => self.corrupt(f),
        })?;
        write_marker(&self.path, generation);
        Ok(())
    }
}

pub(crate) fn encode_message(m: &TrainedMessage) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + m.rules.iter().map(|r| r.len() + 1).sum::<usize>());
    v.push(m.spam as u8);
    v.extend_from_slice(&m.version.to_le_bytes());
    v.extend_from_slice(m.rules.join("\n").as_bytes());
    v
}

pub(crate) fn decode_message(v: &[u8]) -> Option<TrainedMessage> {
    let spam = match *v.first()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let version = u32::from_le_bytes(v.get(1..5)?.try_into().ok()?);
    let rules = std::str::from_utf8(&v[5..]).ok()?;
    let rules = if rules.is_empty() { Vec::new() } else { rules.split('\n').map(str::to_string).collect() };
    Some(TrainedMessage { spam, version, rules })
}

/// Any redb failure, flattened to text where the kind does not matter.
#[derive(Debug)]
enum Failure {
    Db(DatabaseError),
    Other(String),
    Format(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Db(e) => write!(f, "{e}"),
            Failure::Other(s) | Failure::Format(s) => f.write_str(s),
        }
    }
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Failure {
                Failure::Other(e.to_string())
            }
        }
    )*};
}
failure_from!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// Runs a redb call, turning a panic inside redb into an error.
fn guarded<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Failure::Other(format!("redb panicked: {}", crate::panics::message(&*p)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_record_round_trip() {
        let m = TrainedMessage { spam: true, version: 3, rules: vec!["A".into(), "B_2".into()] };
        assert_eq!(decode_message(&encode_message(&m)), Some(m));
        let none = TrainedMessage { spam: false, version: 1, rules: vec![] };
        assert_eq!(decode_message(&encode_message(&none)), Some(none));
        assert_eq!(decode_message(&[7]), None);
    }

    #[test]
    fn apply_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let mut b = Batch { nspam: 1, ..Batch::default() };
        b.tokens.insert("a".into(), (1, 0));
        b.add.push(([1; 32], TrainedMessage { spam: true, version: 1, rules: vec![] }));
        s.apply(&b).unwrap();
        drop(s);
        let s = RedbStore::open(dir.path()).unwrap();
        let m = s.load().unwrap();
        assert_eq!((m.nspam(), m.counts("a").spam), (1, 1));
        assert_eq!(s.trained().unwrap().len(), 1);
        let mut undo = Batch { nspam: -1, ..Batch::default() };
        undo.tokens.insert("a".into(), (-1, 0));
        undo.remove.push([1; 32]);
        s.apply(&undo).unwrap();
        let m = s.load().unwrap();
        assert_eq!((m.nspam(), m.token_count()), (0, 0));
        assert!(s.trained().unwrap().is_empty());
    }

    #[test]
    fn damaged_file_is_reported_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(crate::classify::FILE_NAME), b"this is not a redb file at all").unwrap();
        let e = RedbStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("bayes.redb"), "{e}");
    }
}
