//! The trainable header classifier: popsift's answer to the spam its rules miss.
//!
//! popsift decides from the header block alone (`TOP n 0`, RFC 1939 §7), so the classifier
//! learns from headers only, the way SpamBayes' `tokenize_headers` and bogofilter's header
//! lexer do:
//! - [`tokenize`]: a decoded, unfolded header block (parsed by [`crate::rules::Headers`])
//!   → a set of tokens (subject words, sender parts, relay hops, mailer, MIME shape, one
//!   `rule:ID` pseudo-token per popsift rule that fired). Collector-added header fields are
//!   ignored by a configurable list ([`DEFAULT_IGNORED_HEADERS`]);
//! - [`model`]: a read-only [`Model`] snapshot (token → spam/ham counts) and the
//!   Robinson f(w) + Fisher chi-squared combining of SpamBayes and bogofilter;
//! - [`store`]: the [`ModelStore`] trait and its embedded redb implementation
//!   (`<state_dir>/bayes.redb`), so a shared backend can follow;
//! - [`train`]: [`Trainer`], which turns labelled messages into exact count changes (each
//!   message is trained once, by digest; `forget` untrains exactly);
//! - [`handle`]: [`ModelHandle`], the proxy's current snapshot, refreshed when the file
//!   changes, never blocking a session;
//! - [`explain`]: the tokens that weighed most in one message's probability (review page);
//! - [`eval`]: k-fold cross-validation over labelled messages (the figures in the README).
//!
//! A model with fewer than `min_spam` spam or `min_ham` ham messages gives no probability,
//! and then no `bayes:` rule fires.
pub mod autolearn;
pub mod eval;
pub mod explain;
pub mod handle;
pub mod model;
pub mod store;
pub mod tokenize;
pub mod train;

pub use handle::ModelHandle;
pub use model::Model;
pub use store::{ModelStore, RedbStore, StoreError};
pub use tokenize::{OwnHops, Tokenizer, DEFAULT_IGNORED_HEADERS};
pub use train::{TrainSummary, Trainer};

/// The model file under the state directory.
pub const FILE_NAME: &str = "bayes.redb";

/// Version of the token set. A model trained with another version is not used (its tokens
/// would not match); `popsift train` says to retrain.
pub const TOKENS_VERSION: u32 = 1;

/// Checked classifier settings (config `bayes:`).
#[derive(Debug, Clone, PartialEq)]
pub struct BayesSettings {
    /// Fewer spam messages trained than this: no probability.
    pub min_spam: u64,
    /// Fewer ham messages trained than this: no probability.
    pub min_ham: u64,
    /// Header names the tokenizer ignores (case-insensitive; a trailing `*` matches a prefix).
    pub ignore_headers: Vec<String>,
    /// Train messages restored from the quarantine as ham.
    pub train_restored: bool,
    /// The user's own Received hops, skipped by the tokenizer (none by default).
    pub own_received: tokenize::OwnHops,
    /// Learning from the proxy's own confident verdicts (off by default).
    pub autolearn: autolearn::AutolearnSettings,
}

impl Default for BayesSettings {
    fn default() -> Self {
        BayesSettings {
            min_spam: 20,
            min_ham: 20,
            ignore_headers: DEFAULT_IGNORED_HEADERS.iter().map(|s| s.to_string()).collect(),
            train_restored: true,
            own_received: tokenize::OwnHops::default(),
            autolearn: autolearn::AutolearnSettings::default(),
        }
    }
}
