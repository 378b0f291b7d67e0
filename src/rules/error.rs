//! Rule loading errors: every problem found in a load, each with file, line, column and rule id.
//!
//! A load never stops at the first error: [`RuleErrors`] carries all of them, and its `Display`
//! prints one per line as `rules/spam.yaml:14:12: rule SUBJ_DRUGS: regex: unclosed group`.
use std::fmt;
use std::path::PathBuf;

/// What went wrong; the message says the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A rule file or directory could not be read, or was refused: not a regular file,
    /// outside the rules tree, or over the size limit (see [`super::lists::read_guarded`]).
    Io,
    /// YAML syntax error, or a value of the wrong type.
    Yaml,
    /// A field the schema does not know (typo).
    UnknownField,
    /// Fields that don't fit together, or a required field missing.
    Schema,
    /// The `header:` value is malformed (unknown modifier, bad name).
    Header,
    /// A regex that does not compile, or whose automaton exceeds the size limit
    /// ([`super::multiregex::PATTERN_SIZE_LIMIT`]).
    Regex,
    /// Empty keyword list or keyword.
    Keywords,
    /// A list file (`domain_in`, `address_in`, `keywords_file`) missing, unreadable or
    /// refused (same checks as rule files).
    List,
    /// A `size_over` value that is not a size.
    Size,
    /// An `expr` that does not parse.
    Expr,
    /// An `expr` naming a rule id that does not exist.
    UnknownId,
    /// `expr` rules that depend on each other in a loop.
    Cycle,
    /// The same id defined twice (in one file or across files).
    DuplicateId,
}

/// One error in a rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    /// The file, as given (relative paths stay relative).
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The rule's id when known.
    pub rule: Option<String>,
    pub kind: ErrorKind,
    /// Human text, prefixed by the field it concerns (`regex: unclosed group`).
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(r) = &self.rule {
            write!(f, "rule {r}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found while loading a rule set, in file then line order.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl RuleErrors {
    /// The errors, in file then line order.
    pub fn errors(&self) -> &[RuleError] {
        &self.0
    }
    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// True when there are none (never the case for a returned error).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
