//! `backtrack: true` regex rules: Perl features (look-around, back-references, atomic groups,
//! possessive quantifiers) on `fancy-regex`, with a bound on work per header value.
//!
//! popsift's own matcher is linear-time; a backtracking engine is not, and a hostile header
//! could make a pattern like `(a+)+\1` take exponential time. Each match is therefore capped
//! at [`BACKTRACK_LIMIT`] backtracking steps (about a millisecond of work); a match that hits
//! the cap counts as *no match*, so a stalled pattern can never condemn a message. Patterns
//! are size-limited like ordinary ones. `popsift import-sa` uses this for SpamAssassin
//! patterns that Rust's `regex` cannot run.

/// Backtracking steps allowed per match attempt over one header value.
pub const BACKTRACK_LIMIT: usize = 100_000;

/// Compiles a pattern for the backtracking engine; the error is a one-line message.
pub fn build(pattern: &str) -> Result<fancy_regex::Regex, String> {
    fancy_regex::RegexBuilder::new(pattern)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(super::multiregex::PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// Whether `re` matches `text`; running out of steps is no match.
pub fn is_match(re: &fancy_regex::Regex, text: &str) -> bool {
    re.is_match(text).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perl_features_run() {
        let re = build(r"^(\w+) \1$").unwrap();
        assert!(is_match(&re, "buy buy"));
        assert!(!is_match(&re, "buy now"));
        let re = build(r"foo(?!bar)").unwrap();
        assert!(is_match(&re, "foobaz"));
        assert!(!is_match(&re, "foobar"));
        assert!(build(r"(?<=a").is_err());
    }

    #[test]
    fn catastrophic_pattern_is_bounded_and_no_match() {
        let re = build(r"^(a+)+\1b$").unwrap();
        let hostile = "a".repeat(40);
        let t = std::time::Instant::now();
        assert!(!is_match(&re, &hostile));
        // Generous bound for a loaded machine: unbounded, this takes far longer than the
        // age of the universe.
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
