//! `backtrack: true` regex rules: Perl features (look-around, back-references, atomic groups,
//! possessive quantifiers) on `fancy-regex`, with a bound on work per header value.
//!
//! popsift's own matcher is linear-time; a backtracking engine is not, and a hostile header
//! could make a pattern like `(a+)+\1` take exponential time. Each match is therefore capped
//! at [`BACKTRACK_LIMIT`] backtracking steps; a match that hits
//! the cap counts as *no match*, so a stalled pattern can never condemn a message. Patterns
//! are size-limited like ordinary ones. `popsift import-sa` uses this for SpamAssassin
//! patterns that Rust's `regex` cannot run.

/// Backtracking steps allowed per match attempt over one header value.
pub const BACKTRACK_LIMIT: usize = 100_000;

/// A compiled `backtrack: true` pattern with its linear-time prefilter.
#[derive(Debug)]
pub struct Backtrack {
    re: fancy_regex::Regex,
    /// A linear-time regex for a superset of what `re` matches (look-around dropped,
    /// back-references widened): most headers fail it, and then the backtracking engine is
    /// never started.
    prefilter: Option<regex::Regex>,
}

/// Compiles a pattern for the backtracking engine; the error is a one-line message.
pub fn build(pattern: &str) -> Result<Backtrack, String> {
    let re = fancy_regex::RegexBuilder::new(pattern)
        .backtrack_limit(BACKTRACK_LIMIT)
        .delegate_size_limit(super::multiregex::PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())?;
    let prefilter = relax(pattern)
        .and_then(|p| regex::RegexBuilder::new(&p).size_limit(super::multiregex::PATTERN_SIZE_LIMIT).build().ok());
    Ok(Backtrack { re, prefilter })
}

/// Whether `re` matches `text`; `None` when it ran out of steps (the caller makes the rule
/// not fire, negated or not).
pub fn try_match(re: &Backtrack, text: &str) -> Option<bool> {
    if re.prefilter.as_ref().is_some_and(|p| !p.is_match(text)) {
        return Some(false);
    }
    re.re.is_match(text).ok()
}

/// Where `re` first matches in `text` (byte range), for explaining a verdict (not used by
/// evaluation); `None` for no match or out of steps.
pub fn find(re: &Backtrack, text: &str) -> Option<std::ops::Range<usize>> {
    re.re.find(text).ok().flatten().map(|m| m.range())
}

/// Whether `re` matches `text`; running out of steps is no match.
pub fn is_match(re: &Backtrack, text: &str) -> bool {
    try_match(re, text).unwrap_or(false)
}

/// A pattern matching a superset of `p`'s matches in `regex` syntax: look-around groups and
/// `\K`/`\G` removed (each only ever rejects matches), back-references widened to `(?s:.*?)`,
/// atomic groups made plain, possessive quantifiers greedy. `None` if `p` is not understood.
pub fn relax(p: &str) -> Option<String> {
    let cs: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    let mut in_class = false;
    while i < cs.len() {
        let c = cs[i];
        if c == '\\' {
            let n = *cs.get(i + 1)?;
            if !in_class && (n.is_ascii_digit() && n != '0' || n == 'k' || n == 'g') {
                // Back-reference: \1, \k<name>, \g{1}, \g1.
                i += 2;
                if matches!(cs.get(i), Some('<' | '{' | '\'')) {
                    let close = match cs[i] {
                        '<' => '>',
                        '{' => '}',
                        _ => '\'',
                    };
                    i += 1 + cs[i + 1..].iter().position(|&x| x == close)? + 1;
                } else {
                    while cs.get(i).is_some_and(|d| d.is_ascii_digit()) {
                        i += 1;
                    }
                }
                out.push_str("(?s:.*?)");
                continue;
            }
            if !in_class && (n == 'K' || n == 'G') {
                i += 2;
                continue;
            }
            out.push(c);
            out.push(n);
            i += 2;
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            } else if c == '[' && cs.get(i + 1) == Some(&':') {
                // POSIX class: copy through its closing `:]`.
                let end = (i + 2..cs.len().saturating_sub(1)).find(|&k| cs[k] == ':' && cs[k + 1] == ']')?;
                out.extend(&cs[i..end + 2]);
                i = end + 2;
                continue;
            }
            out.push(c);
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                out.push(c);
                i += 1;
                // `]` (after an optional `^`) right at the start is literal.
                if cs.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if cs.get(i) == Some(&']') {
                    out.push(']');
                    i += 1;
                }
                continue;
            }
            '(' if cs.get(i + 1) == Some(&'?') => {
                let rest: String = cs[i + 2..cs.len().min(i + 5)].iter().collect();
                if ["=", "!", "<=", "<!"].iter().any(|x| rest.starts_with(x)) {
                    i = skip_group(&cs, i)?;
                    // A quantifier on a look-around would now apply to what precedes it.
                    while matches!(cs.get(i), Some('?' | '*' | '+')) {
                        i += 1;
                    }
                    continue;
                }
                if rest.starts_with('>') {
                    out.push_str("(?:");
                    i += 3;
                    continue;
                }
                out.push(c);
            }
            '+' if i > 0 && matches!(cs[i - 1], '+' | '*' | '?' | '}') && !(i > 1 && cs[i - 2] == '\\') => {
                // Possessive quantifier: drop the `+`.
            }
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// The index after the group opening at `i` (balanced parentheses, escapes and classes skipped).
fn skip_group(cs: &[char], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_class = false;
    while i < cs.len() {
        match cs[i] {
            '\\' => i += 1,
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
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
    fn rule_files_use_it() {
        let load = |y: &str| {
            crate::rules::compile::load_str(
                std::path::Path::new("/tmp/bt/r.yaml"),
                y,
                &crate::rules::EngineOptions::default(),
            )
        };
        let set = load(
            "rules:\n  - id: A\n    header: Subject\n    regex: '(\\w+) \\1'\n    backtrack: true\n    score: 1\n\
             \x20 - id: B\n    header: From\n    regex: 'x(?!y)'\n    backtrack: true\n    negate: true\n    score: 1\n",
        )
        .unwrap();
        let hits = |h: &[u8]| set.evaluate(h, 1).rules.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(hits(b"Subject: buy buy\nFrom: xy\n\n"), ["A", "B"]);
        assert_eq!(hits(b"Subject: buy now\nFrom: xz\n\n"), Vec::<String>::new());
        // Out of steps: the rule does not fire, even negated.
        let set = load("rules:\n  - id: N\n    header: Subject\n    regex: '^(a|aa)+\\1$'\n    backtrack: true\n    negate: true\n    score: 1\n").unwrap();
        let hostile = format!("Subject: {}b\n\n", "a".repeat(40));
        assert!(set.evaluate(hostile.as_bytes(), 1).rules.is_empty());
        assert_eq!(set.evaluate(b"Subject: b\n\n", 1).rules.len(), 1);
        let err =
            load("rules:\n  - id: A\n    header: Subject\n    regex: 'a(?=b'\n    backtrack: true\n").unwrap_err();
        assert!(err.to_string().contains("r.yaml:4:12: rule A: regex:"), "{err}");
        let err = load("rules:\n  - id: A\n    header: Subject\n    keywords: [a]\n    backtrack: true\n").unwrap_err();
        assert!(err.to_string().contains("backtrack: only for regex"), "{err}");
    }

    #[test]
    fn prefilter_is_a_superset() {
        assert_eq!(relax(r"foo(?!bar)").as_deref(), Some("foo"));
        assert_eq!(relax(r"^(?!(?:a|b)\)x)[^@]*@").as_deref(), Some("^[^@]*@"));
        assert_eq!(relax(r"(?<=[(]x)y").as_deref(), Some("y"));
        assert_eq!(relax(r"(a)\1\k<n>").as_deref(), Some("(a)(?s:.*?)(?s:.*?)"));
        assert_eq!(relax(r"(?>a+)b\d++[+]+").as_deref(), Some("(?:a+)b\\d+[+]+"));
        assert_eq!(relax(r"a\+\+").as_deref(), Some("a\\+\\+"));
        assert_eq!(relax(r"a(?=b").as_deref(), None);
        // Same answers with and without the prefilter, on hits and misses.
        for (p, texts) in [
            (r"(?i)\bc(?!ialis)[\sc]{0,2}i[\si]{0,2}a", &["c i a", "cialis", "none"][..]),
            (r"^(\w+) \1$", &["buy buy", "buy now"][..]),
            (r"(?m)^(?!(?:mail|bounce)[_.-])[^@]*[bcdfg]{4}", &["mail-bcdf@x", "xbcdf@x", "ab@x"][..]),
        ] {
            let b = build(p).unwrap();
            assert!(b.prefilter.is_some(), "{p}");
            let plain = fancy_regex::Regex::new(p).unwrap();
            for t in texts {
                assert_eq!(is_match(&b, t), plain.is_match(t).unwrap(), "{p} on {t}");
            }
        }
    }

    #[test]
    fn catastrophic_pattern_is_bounded_and_no_match() {
        let re = build(r"^(a|aa)+\1$").unwrap();
        // Passes the prefilter (`^(a|aa)+(?s:.*?)$`), then backtracks exponentially.
        let hostile = format!("{}b", "a".repeat(40));
        let t = std::time::Instant::now();
        assert_eq!(try_match(&re, &hostile), None, "ran out of steps");
        assert!(!is_match(&re, &hostile));
        // Generous bound for a loaded machine: unbounded, this takes far longer than the
        // age of the universe.
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
