//! Rule engine: YAML rule files compiled into an immutable [`RuleSet`].
//!
//! PLACEHOLDER INTERFACE — the rules helper replaces the body of this module but keeps
//! these public names and signatures (the proxy builds against them).
use std::path::Path;
use std::sync::Arc;

/// What to do with a message. Precedence when several rules fire: `Allow` beats everything,
/// then the most severe: Delete > Quarantine > Hide > Tag.
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
}

/// Options the proxy config passes to the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Action for messages that are spam by score (config `spam_action`, default `tag`).
    pub spam_action: Action,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            spam_action: Action::Tag,
        }
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

#[derive(Debug, Default)]
pub struct RuleSet {}

#[derive(Debug, thiserror::Error)]
#[error("rule errors")]
pub struct RuleErrors(pub Vec<String>);

impl RuleSet {
    pub fn load(_path: &Path, _opts: &EngineOptions) -> Result<RuleSet, RuleErrors> {
        Ok(RuleSet {})
    }
    pub fn empty() -> RuleSet {
        RuleSet {}
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        true
    }
    /// `header_block`: the raw header block as read from the wire (CRLF or LF, may start
    /// with an mbox `From ` line, may be truncated); `size`: the message size from LIST.
    pub fn evaluate(&self, _header_block: &[u8], _size: u64) -> Verdict {
        Verdict {
            score: 0.0,
            threshold: 5.0,
            spam: false,
            action: None,
            rules: vec![],
        }
    }
}

/// The current rule set, swapped atomically on reload. Sessions take `current()` once at
/// login and keep that set.
#[derive(Debug)]
pub struct RulesHandle {
    current: arc_swap::ArcSwap<RuleSet>,
}

impl RulesHandle {
    pub fn new(set: RuleSet) -> Arc<RulesHandle> {
        Arc::new(RulesHandle {
            current: arc_swap::ArcSwap::from_pointee(set),
        })
    }
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }
    pub fn load(path: &Path, opts: EngineOptions) -> Result<Arc<RulesHandle>, RuleErrors> {
        Ok(RulesHandle::new(RuleSet::load(path, &opts)?))
    }
    pub fn spawn_reloader(self: &Arc<Self>) {}
}
