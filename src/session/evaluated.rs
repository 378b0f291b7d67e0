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
}

/// A header block replacement: `size` = upstream size - original + replacement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRewrite {
    /// The header block as seen at login (unstuffed, with its empty line).
    pub original: Vec<u8>,
    pub replacement: Vec<u8>,
}
