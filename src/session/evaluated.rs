//! What evaluating one message's header block produced: the verdict and, for tagged spam,
//! the header rewrite. Its own module so that the view ([`crate::session::view`]), the
//! verdicts ([`crate::session::verdicts`]) and the verdict memo can all name it without a
//! circle between them.
use std::sync::Arc;

use crate::rules::Verdict;

/// What evaluating one message's header block produced. The tag rewrite is computed for
/// every spam message whose block is complete, whatever its disposition, so the result can
/// be reused by a later login.
#[derive(Debug, Clone)]
pub struct Evaluated {
    pub verdict: Verdict,
    pub rewrite: Option<Arc<HeaderRewrite>>,
    /// What the decision history records of the message besides the verdict.
    pub about: About,
}

/// A message's From and Subject (decoded, cut to [`ABOUT_CHARS`] characters) and the
/// classifier's probability, kept with the verdict for the decision history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct About {
    pub from: Box<str>,
    pub subject: Box<str>,
    pub bayes: Option<f64>,
    /// What each fired rule matched (see [`crate::rules::explain`]); empty when no rule
    /// fired or the history is off.
    pub matched: Box<[crate::rules::explain::Matched]>,
    /// The tokens that weighed most in `bayes` (see [`crate::classify::explain`]); empty
    /// when the model was not consulted or the history is off.
    pub clues: Box<[crate::classify::explain::Clue]>,
}

/// Longest From or Subject kept in an [`About`], in characters.
pub const ABOUT_CHARS: usize = 200;

/// `s` cut to [`ABOUT_CHARS`] characters.
pub fn cut(s: Option<&str>) -> Box<str> {
    let s = s.unwrap_or("");
    match s.char_indices().nth(ABOUT_CHARS) {
        Some((i, _)) => s.get(..i).unwrap_or(s).into(),
        None => s.into(),
    }
}

/// A header block replacement: `size` = upstream size - original + replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRewrite {
    /// The header block as seen at login (unstuffed, with its empty line).
    pub original: Vec<u8>,
    pub replacement: Vec<u8>,
}
