//! Rule engine: YAML rule files compiled into an immutable [`RuleSet`], shared read-only.
//!
//! - [`schema`]: the file format (serde, unknown fields rejected) and error positions;
//! - [`compile`]: loading files and lists, grouping matchers per header, checking `expr`;
//! - [`multiregex`]: one header's regexes as one literal-prefiltered matcher;
//! - [`header`] and [`decode`]: header block parsing, RFC 2047 decoding, address parsing;
//! - [`expr`]: the boolean `expr:` language; [`lists`]: list files;
//! - [`eval`]: evaluating a header block into a [`Verdict`];
//! - [`explain`]: after the fact, what each fired rule matched (for the review page);
//! - [`reload`]: [`RulesHandle`], the atomically swapped current set with hot reload;
//! - [`users`]: per-mailbox rule directories and allowlists layered over the global set;
//! - [`error`]: [`RuleErrors`], every load error with file:line:column and rule id.
//!
//! The language itself is taught in `rules/README.md`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod backtrack;
pub mod compile;
pub mod decode;
pub mod envelope;
pub mod error;
pub mod eval;
pub mod explain;
pub mod expr;
pub mod header;
pub mod lists;
pub mod multiregex;
pub mod reload;
pub mod schema;
pub mod users;

pub use error::{ErrorKind, RuleError, RuleErrors};
pub use header::{Headers, Mailbox};
pub use reload::RulesHandle;

/// Threshold used when no rule file sets one.
pub const DEFAULT_THRESHOLD: f64 = 5.0;

/// What to do with a message. Precedence when several rules fire: `Allow` beats everything,
/// then the most severe: Delete > Quarantine > Hide > Tag. (The derived order is the
/// severity order, `Allow` lowest; allow's precedence is handled explicitly.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Tag,
    Hide,
    Quarantine,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Tag => "tag",
            Action::Hide => "hide",
            Action::Quarantine => "quarantine",
            Action::Delete => "delete",
        }
    }

    /// Parses `allow`, `tag`, `hide`, `quarantine`, `delete` (case-insensitive).
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "allow" => Action::Allow,
            "tag" => Action::Tag,
            "hide" => Action::Hide,
            "quarantine" => Action::Quarantine,
            "delete" => Action::Delete,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options the proxy config passes to the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Action for messages that are spam by score (config `spam_action`, default `tag`).
    /// `allow` here means "flag as spam but take no action" (verdict `spam`, action `None`).
    pub spam_action: Action,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { spam_action: Action::Tag }
    }
}

/// The engine's decision for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub score: f64,
    pub threshold: f64,
    /// Spam by score, or condemned by a direct action.
    pub spam: bool,
    /// `None`: ham, deliver unchanged. `Some(Allow)`: an allow rule matched.
    pub action: Option<Action>,
    /// Ids of matching rules that carry a score or an action, in load order.
    pub rules: Vec<Arc<str>>,
}

/// An immutable, compiled rule set. Build with [`RuleSet::load`]; share with `Arc`.
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) rules: Vec<compile::Rule>,
    pub(crate) targets: Vec<compile::TargetMatcher>,
    pub(crate) exists: Vec<(String, bool, u32)>,
    pub(crate) sizes: Vec<(u64, u32)>,
    /// `bayes:` rules: (low, high, rule index).
    pub(crate) bayes: Vec<(f64, f64, u32)>,
    pub(crate) negated: Vec<u32>,
    pub(crate) exprs: Vec<(u32, expr::Expr<u32>)>,
    /// `backtrack: true` regex rules, each run on its own.
    pub(crate) backtrack: Vec<(compile::Target, backtrack::Backtrack, u32)>,
    /// Per rule: computed only when an `expr` needs it (unreported backtracking and `expr`
    /// rules, such as SpamAssassin's `__` sub-rules); see [`eval`].
    pub(crate) deferred: Vec<Option<eval::Deferred>>,
    pub(crate) threshold: f64,
    pub(crate) spam_action: Action,
    pub(crate) files: usize,
    pub(crate) sources: Vec<PathBuf>,
    pub(crate) list_files: Vec<PathBuf>,
}

/// Public description of one loaded rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleInfo<'a> {
    pub id: &'a str,
    pub describe: Option<&'a str>,
    pub score: Option<f64>,
    pub action: Option<Action>,
}

impl RuleSet {
    /// Loads a rule file, or a directory of `*.yaml`/`*.yml` files in file-name order.
    /// Returns every error found.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<RuleSet, RuleErrors> {
        compile::load(path, opts)
    }

    /// Compiles rules from YAML text; `path` names it in errors and anchors list paths.
    pub fn from_yaml(path: &Path, text: &str, opts: &EngineOptions) -> Result<RuleSet, RuleErrors> {
        compile::load_str(path, text, opts)
    }

    /// A set without rules: every message is ham.
    pub fn empty() -> RuleSet {
        RuleSet {
            rules: Vec::new(),
            targets: Vec::new(),
            exists: Vec::new(),
            sizes: Vec::new(),
            bayes: Vec::new(),
            negated: Vec::new(),
            exprs: Vec::new(),
            backtrack: Vec::new(),
            deferred: Vec::new(),
            threshold: DEFAULT_THRESHOLD,
            spam_action: Action::Tag,
            files: 0,
            sources: Vec::new(),
            list_files: Vec::new(),
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Score at or above which a message is spam.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Number of rule files loaded.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// Rule files loaded, in load order.
    pub fn rule_files(&self) -> &[PathBuf] {
        &self.sources
    }

    /// List files read (`domain_in`, `address_in`, `keywords_file`).
    pub fn list_files(&self) -> &[PathBuf] {
        &self.list_files
    }

    /// The rules in load order.
    pub fn rules(&self) -> impl Iterator<Item = RuleInfo<'_>> {
        self.rules.iter().map(|r| RuleInfo {
            id: &r.id,
            describe: r.describe.as_deref(),
            score: r.score,
            action: r.action,
        })
    }

    /// Evaluates a raw header block (CRLF or LF, optional mbox `From ` line, possibly
    /// truncated or a whole message); `size` is the message size from LIST. Never panics.
    pub fn evaluate(&self, header_block: &[u8], size: u64) -> Verdict {
        let h = Headers::parse(header_block);
        self.evaluate_headers(&h, size)
    }

    /// Evaluates already parsed headers.
    pub fn evaluate_headers(&self, headers: &Headers, size: u64) -> Verdict {
        eval::evaluate(self, headers, size)
    }

    /// Evaluates a raw header block with the classifier: the model's spam probability
    /// (`None` without a model or with too little training) feeds the `bayes:` rules and is
    /// returned with the verdict.
    pub fn evaluate_with_model(
        &self,
        header_block: &[u8],
        size: u64,
        model: Option<&crate::classify::Model>,
    ) -> (Verdict, Option<f64>) {
        let h = Headers::parse(header_block);
        self.evaluate_headers_with_model(&h, size, model)
    }

    /// [`Self::evaluate_with_model`] on already parsed headers.
    pub fn evaluate_headers_with_model(
        &self,
        h: &Headers,
        size: u64,
        model: Option<&crate::classify::Model>,
    ) -> (Verdict, Option<f64>) {
        match model.filter(|m| m.ready()) {
            None => {
                if model.is_some() {
                    crate::metrics::bayes_classified(None);
                }
                (eval::evaluate(self, h, size), None)
            }
            Some(m) => {
                let mut p = None;
                let v = eval::evaluate_with(
                    self,
                    h,
                    size,
                    Some(&mut |fired: &[&str]| {
                        p = m.classify(h, fired);
                        p
                    }),
                );
                crate::metrics::bayes_classified(p);
                (v, p)
            }
        }
    }

    /// Ids of the rules that fire before `bayes:` and `expr:` rules are looked at: the
    /// evidence the classifier weighs as `rule:` tokens.
    pub fn fired_before_bayes(&self, h: &Headers, size: u64) -> Vec<Arc<str>> {
        let mut ids = Vec::new();
        eval::evaluate_with(
            self,
            h,
            size,
            Some(&mut |fired: &[&str]| {
                ids = fired.iter().map(|s| Arc::from(*s)).collect();
                None
            }),
        );
        ids
    }

    /// Whether any rule is a `bayes:` band.
    pub fn uses_bayes(&self) -> bool {
        !self.bayes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn send_sync() {
        assert_send_sync::<RuleSet>();
        assert_send_sync::<RulesHandle>();
    }

    #[test]
    fn action_order_is_severity() {
        assert!(Action::Delete > Action::Quarantine);
        assert!(Action::Quarantine > Action::Hide);
        assert!(Action::Hide > Action::Tag);
        assert_eq!(Action::parse("Delete"), Some(Action::Delete));
        assert_eq!(Action::parse("nope"), None);
    }

    #[test]
    fn empty_set_is_ham() {
        let v = RuleSet::empty().evaluate(b"Subject: x\r\n", 10);
        assert_eq!(v, Verdict { score: 0.0, threshold: 5.0, spam: false, action: None, rules: vec![] });
    }
}
