//! `backtrack: true` regex rules: Perl features (look-around, back-references, atomic groups,
//! possessive quantifiers) on `fancy-regex`, with a bound on work per header value.
//!
//! popsift's own matcher is linear-time; a backtracking engine is not, and a hostile header
//! could make a pattern like `(a+)+\1` take exponential time. Each match is therefore capped
//! at [`BACKTRACK_LIMIT`] backtracking steps in all (shared by the runs of one match, see
//! [`try_match`]); a match that hits
//! the cap counts as *no match*, so a stalled pattern can never condemn a message. Patterns
//! are size-limited like ordinary ones. `popsift import-sa` uses this for SpamAssassin
//! patterns that Rust's `regex` cannot run.

/// Backtracking steps allowed per match attempt over one header value.
pub const BACKTRACK_LIMIT: usize = 100_000;
/// Steps for one anchored run at a candidate start: all [`MAX_CANDIDATES`] of them together
/// get half of [`BACKTRACK_LIMIT`].
const CANDIDATE_LIMIT: usize = BACKTRACK_LIMIT / (2 * MAX_CANDIDATES);
/// Steps for the final search after the candidates: what they cannot have used.
const REST_LIMIT: usize = BACKTRACK_LIMIT - MAX_CANDIDATES * CANDIDATE_LIMIT;

/// A compiled `backtrack: true` pattern with its linear-time prefilter.
#[derive(Debug)]
pub struct Backtrack {
    /// With a prefilter: the final search, limited to [`REST_LIMIT`] steps; without one:
    /// the only run, limited to [`BACKTRACK_LIMIT`].
    re: fancy_regex::Regex,
    /// The same pattern limited to [`CANDIDATE_LIMIT`] steps, for the anchored runs at the
    /// prefilter's candidate starts (only with a prefilter).
    candidate: Option<fancy_regex::Regex>,
    /// A linear-time regex for a superset of what `re` matches (look-around dropped,
    /// back-references widened): most headers fail it, and then the backtracking engine is
    /// never started.
    prefilter: Option<regex_automata::meta::Regex>,
    /// Where a match can start, when that is narrower than "anywhere" (see [`next_start`]).
    starts: Option<Starts>,
}

/// Positions a match can start at, found without running the prefilter over the text.
#[derive(Debug)]
enum Starts {
    /// At an occurrence of one of these literals (`\nFrom:` in any case): every match of
    /// the prefilter starts with one.
    Literals(regex::bytes::Regex),
    /// At the start of a line: the pattern begins with a multi-line `^` (`(?m)^Name:`).
    Lines,
}

/// Compiles a pattern for the backtracking engine; the error is a one-line message.
pub fn build(pattern: &str) -> Result<Backtrack, String> {
    let compile = |limit: usize| {
        fancy_regex::RegexBuilder::new(&possessive(pattern))
            .backtrack_limit(limit)
            .delegate_size_limit(super::multiregex::PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| e.to_string())
    };
    // `\G` (where the search started) would move with an anchored start: no candidates.
    // A prefilter over the size limit (`[^\n\w<]{0,80}`: a case-folded Unicode class 80
    // times) is tried again with its counted repeats widened, a smaller superset.
    let prefilter = relax(pattern)
        .filter(|_| !pattern.contains("\\G"))
        .and_then(|p| Some((prefilter(&p).or_else(|| prefilter(&widen_counts(&p)))?, p)));
    let Some((prefilter, relaxed)) = prefilter else {
        return Ok(Backtrack { re: compile(BACKTRACK_LIMIT)?, candidate: None, prefilter: None, starts: None });
    };
    Ok(Backtrack {
        re: compile(REST_LIMIT)?,
        candidate: Some(compile(CANDIDATE_LIMIT)?),
        prefilter: Some(prefilter),
        starts: starts(&relaxed),
    })
}

/// The linear-time prefilter for a relaxed pattern, configured as `regex::Regex` is (same
/// syntax, leftmost-first, popsift's size limit); `None` if it does not build.
fn prefilter(p: &str) -> Option<regex_automata::meta::Regex> {
    use regex_automata::meta;
    let config = meta::Config::new()
        .nfa_size_limit(Some(super::multiregex::PATTERN_SIZE_LIMIT))
        .hybrid_cache_capacity(2 * (1 << 20))
        .match_kind(regex_automata::MatchKind::LeftmostFirst)
        .utf8_empty(true);
    meta::Builder::new().configure(config).syntax(regex_automata::util::syntax::Config::new()).build(p).ok()
}

/// Literal prefixes shorter than this find too many candidates to beat one leftmost search.
const MIN_START_LITERAL: usize = 3;
/// More literals than this (case folding multiplies them) go to the leftmost search.
const MAX_START_LITERALS: usize = 256;

/// Where matches of the relaxed pattern `p` can start: at the literal prefixes that
/// `regex-syntax` extracts (look-around assertions such as `^` and `\b` are transparent to
/// it, so the set covers every match start), or failing that at line starts when every
/// match begins with a multi-line `^`. `None` (anywhere) when the literal set is infinite,
/// has an empty or short literal or is large, and the pattern is not line-anchored.
fn starts(p: &str) -> Option<Starts> {
    let hir = regex_syntax::ParserBuilder::new().build().parse(p).ok()?;
    let seq = regex_syntax::hir::literal::Extractor::new().extract(&hir);
    let usable = |lits: &[regex_syntax::hir::literal::Literal]| {
        !lits.is_empty()
            && lits.len() <= MAX_START_LITERALS
            && lits.iter().all(|l| l.as_bytes().len() >= MIN_START_LITERAL)
    };
    if let Some(lits) = seq.literals().filter(|l| usable(l)) {
        let alts: Vec<String> =
            lits.iter().map(|l| l.as_bytes().iter().map(|b| format!("\\x{b:02x}")).collect::<String>()).collect();
        return regex::bytes::Regex::new(&format!("(?-u:{})", alts.join("|"))).ok().map(Starts::Literals);
    }
    line_anchored(&hir).then_some(Starts::Lines)
}

/// Whether every match of `hir` begins with a multi-line `^` (only at a line start).
fn line_anchored(hir: &regex_syntax::hir::Hir) -> bool {
    use regex_syntax::hir::{HirKind, Look};
    match hir.kind() {
        HirKind::Look(Look::StartLF) => true,
        HirKind::Concat(items) => items.first().is_some_and(line_anchored),
        HirKind::Capture(c) => line_anchored(&c.sub),
        HirKind::Alternation(alts) => alts.iter().all(line_anchored),
        _ => false,
    }
}

/// Copies the `[` at `cs[i]` and what a class may start with (an optional `^`, then a `]`
/// that is literal right at the start); returns the index after them.
fn class_start(cs: &[char], mut i: usize, out: &mut String) -> usize {
    out.push('[');
    i += 1;
    if cs.get(i) == Some(&'^') {
        out.push('^');
        i += 1;
    }
    if cs.get(i) == Some(&']') {
        out.push(']');
        i += 1;
    }
    i
}

#[cfg(test)]
thread_local! {
    /// Backtracking runs on this thread and the step limits they were given, for tests.
    static RUNS: std::cell::Cell<(usize, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Counts one run with `limit` steps (tests only).
#[inline]
fn charge(_limit: usize) {
    #[cfg(test)]
    RUNS.with(|c| {
        let (n, steps) = c.get();
        c.set((n + 1, steps + _limit));
    });
}

/// Backtracking runs on this thread so far and the sum of their step limits (tests only).
#[cfg(test)]
pub(crate) fn runs() -> (usize, usize) {
    RUNS.with(|c| c.get())
}

/// Start positions tried one by one (each anchored) before the rest of the text goes to one
/// ordinary search.
pub const MAX_CANDIDATES: usize = 16;

/// Whether `re` matches `text`; `None` when it ran out of steps (the caller makes the rule
/// not fire, negated or not).
///
/// The backtracking engine pays for every start position it tries, and a pattern like
/// `(?m)^(?!List-)…` over the whole header block would be started at each of its thousands
/// of bytes. A match of `re` starting at some position is also a match of the linear-time
/// prefilter starting there, so the prefilter finds the candidate starts (leftmost first,
/// then again one character further on; see [`next_start`]) and `re` runs anchored at each. After
/// [`MAX_CANDIDATES`] of them, or at the first candidate that runs out of its share of
/// steps, the rest of the text (from that candidate on) gets one unanchored search.
///
/// The runs share one budget: each candidate gets [`CANDIDATE_LIMIT`] steps and the final
/// search [`REST_LIMIT`], so a hostile header costs at most [`BACKTRACK_LIMIT`] steps per
/// rule in all, as a single unanchored run would.
pub fn try_match(re: &Backtrack, text: &str) -> Option<bool> {
    let (Some(pre), Some(candidate)) = (&re.prefilter, &re.candidate) else {
        charge(BACKTRACK_LIMIT);
        return re.re.is_match(text).ok();
    };
    let mut at = 0;
    let mut rejects = MAX_LITERAL_REJECTS;
    for _ in 0..MAX_CANDIDATES {
        let Some(start) = (at <= text.len()).then(|| next_start(re, pre, text, at, &mut rejects)).flatten() else {
            return Some(false);
        };
        let input = fancy_regex::RegexInput::new(text).from_pos(start).anchored(true);
        charge(CANDIDATE_LIMIT);
        match candidate.find_input(input) {
            Ok(Some(_)) => return Some(true),
            Ok(None) => at = start + text[start..].chars().next().map_or(1, char::len_utf8),
            // Out of this candidate's share: the final search starts here, with the rest.
            Err(_) => {
                at = start;
                break;
            }
        }
    }
    if at > text.len() {
        return Some(false);
    }
    charge(REST_LIMIT);
    re.re.find_from_pos(text, at).ok().map(|m| m.is_some())
}

/// Literal or line-start candidates the anchored prefilter may reject in one match (shared
/// by all its candidates) before the leftmost search takes over: a rejection can scan to the
/// end of the text, so this bounds a hostile header's cost at 64 scans of it plus the
/// [`MAX_CANDIDATES`] leftmost searches the plain candidate loop may do.
const MAX_LITERAL_REJECTS: usize = 4 * MAX_CANDIDATES;

/// The first position at or after `at` where the prefilter matches (a match of `re` can
/// only start at such a position); `None` if there is none.
///
/// A leftmost search (`find`) runs to the end of the prefilter's match and back to find its
/// start, and a prefilter such as `\nFrom: …\n+(?:[^\n]{1,100}\n+)*Subject: …` matches to
/// near the end of the block: most of a header block is scanned twice for each candidate.
/// With literal prefixes (`\nFrom: `) the candidates are the literal's occurrences, for a
/// line-anchored pattern the line starts, each checked by an anchored prefilter run that
/// stops at its first match end (`earliest`); after [`MAX_LITERAL_REJECTS`] rejected ones in
/// the whole match (`rejects` counts them down) the leftmost search takes over.
fn next_start(
    re: &Backtrack,
    pre: &regex_automata::meta::Regex,
    text: &str,
    at: usize,
    rejects: &mut usize,
) -> Option<usize> {
    use regex_automata::{Anchored, Input};
    let leftmost = |from: usize| pre.find(Input::new(text).span(from..text.len())).map(|m| m.start());
    let bytes = text.as_bytes();
    let mut from = at;
    while *rejects > 0 {
        let s = match re.starts.as_ref() {
            None => return leftmost(at),
            Some(Starts::Literals(lits)) => lits.find_at(bytes, from)?.start(),
            Some(Starts::Lines) if from == 0 || bytes.get(from - 1) == Some(&b'\n') => from,
            Some(Starts::Lines) => from + memchr::memchr(b'\n', bytes.get(from..)?)? + 1,
        };
        let anchored = Input::new(text).span(s..text.len()).anchored(Anchored::Yes).earliest(true);
        if text.is_char_boundary(s) && pre.is_match(anchored) {
            return Some(s);
        }
        from = s + 1;
        *rejects -= 1;
    }
    leftmost(from)
}

/// Where `re` first matches in `text` (byte range), for explaining a verdict (not used by
/// evaluation); `None` for no match or out of steps.
pub fn find(re: &Backtrack, text: &str) -> Option<std::ops::Range<usize>> {
    charge(if re.candidate.is_some() { REST_LIMIT } else { BACKTRACK_LIMIT });
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
                let end = posix_class_end(&cs, i)?;
                out.extend(&cs[i..end]);
                i = end;
                continue;
            }
            out.push(c);
            i += 1;
            continue;
        }
        match c {
            '[' => {
                in_class = true;
                i = class_start(&cs, i, &mut out);
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

/// Where the POSIX class (`[:alpha:]`) opening at `cs[i] == '['` ends (just past its `:]`);
/// `None` when it is not closed. Shared by [`relax`] and [`widen_counts`], so that the `]` of
/// `:]` is never taken for the end of the enclosing bracket class.
fn posix_class_end(cs: &[char], i: usize) -> Option<usize> {
    (i + 2..cs.len().saturating_sub(1)).find(|&k| cs[k] == ':' && cs[k + 1] == ']').map(|k| k + 2)
}

/// `X{m,n}`, `X{m,}`, `X{m}` become `X*` (m = 0) or `X+`: each matches a superset, and the
/// automaton no longer holds up to n copies of X. Classes (with their POSIX classes) and
/// escapes are copied unchanged, including the braced argument of `\x{…}`, `\p{…}`, `\N{…}`,
/// `\o{…}`, `\g{…}` and `\k{…}` (not a count).
pub fn widen_counts(p: &str) -> String {
    let cs: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    let mut in_class = false;
    while i < cs.len() {
        let c = cs[i];
        if c == '\\' {
            let mut end = (i + 2).min(cs.len());
            if matches!(cs.get(i + 1), Some('x' | 'o' | 'p' | 'P' | 'N' | 'g' | 'k')) && cs.get(i + 2) == Some(&'{') {
                if let Some(k) = cs[i + 2..].iter().position(|&x| x == '}') {
                    end = i + 2 + k + 1;
                }
            }
            out.extend(&cs[i..end]);
            i = end;
            continue;
        }
        if in_class {
            if c == '[' && cs.get(i + 1) == Some(&':') {
                if let Some(end) = posix_class_end(&cs, i) {
                    out.extend(&cs[i..end]);
                    i = end;
                    continue;
                }
            }
            in_class = c != ']';
            out.push(c);
            i += 1;
            continue;
        }
        if c == '[' {
            in_class = true;
            i = class_start(&cs, i, &mut out);
            continue;
        }
        if c == '{' {
            let close = cs[i..].iter().position(|&x| x == '}').map(|k| i + k);
            let body: Option<String> = close.map(|e| cs[i + 1..e].iter().collect());
            let valid = body.as_deref().is_some_and(|b| {
                let (lo, hi) = b.split_once(',').unwrap_or((b, "0"));
                !lo.is_empty() && lo.chars().all(|d| d.is_ascii_digit()) && hi.chars().all(|d| d.is_ascii_digit())
            });
            if let (true, Some(e), Some(b)) = (valid, close, body) {
                let lo: u64 = b.split(',').next().and_then(|l| l.parse().ok()).unwrap_or(1);
                out.push(if lo == 0 { '*' } else { '+' });
                i = e + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Makes greedy repeats of a negated class atomic where giving characters back can never
/// lead to a match: `[^\n]{1,100}\n` becomes `(?>[^\n]{1,100})\n`, `[^\n<]{0,80}<` becomes
/// `(?>[^\n<]{0,80})<` (PCRE calls this auto-possessification; fancy-regex does not do it).
///
/// A greedy repeat stops early only before a character its class excludes, or at its upper
/// bound; if what follows must start with a character the class excludes, every shorter
/// repeat leaves a class character in front of it and fails, so only the longest one can
/// match and trying the others is wasted work. SpamAssassin's patterns over the whole header
/// block (`(?:[^\n]{1,100}\n+)*To:`) spend most of their time in exactly that. The rewrite
/// only fires when the next item is a single required non-letter character (`\n`, `<`, `@`,
/// `\.`, …) listed in the class, and is skipped entirely for `(?x)` patterns (where a space
/// or `#` is not what it looks like).
pub fn possessive(p: &str) -> String {
    let cs: Vec<char> = p.chars().collect();
    let xmode = cs.windows(2).enumerate().any(|(i, w)| {
        w == ['(', '?'] && cs[i + 2..].iter().take_while(|c| c.is_ascii_alphabetic() || **c == '-').any(|&c| c == 'x')
    });
    if xmode {
        return p.to_string();
    }
    let mut out = String::with_capacity(p.len() + 16);
    let mut i = 0;
    let mut in_class = false;
    while i < cs.len() {
        let c = cs[i];
        if c == '\\' {
            out.push(c);
            if let Some(&n) = cs.get(i + 1) {
                out.push(n);
            }
            i += 2;
            continue;
        }
        if in_class {
            in_class = c != ']';
            out.push(c);
            i += 1;
            continue;
        }
        if c == '[' {
            if let Some((excluded, end)) = negated_class(&cs, i) {
                if let Some(q_end) = greedy_quantifier(&cs, end) {
                    if next_required_char(&cs, q_end).is_some_and(|n| excluded.contains(&n)) {
                        out.push_str("(?>");
                        out.extend(&cs[i..q_end]);
                        out.push(')');
                        i = q_end;
                        continue;
                    }
                }
            }
            in_class = true;
            i = class_start(&cs, i, &mut out);
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A simple negated class `[^…]` at `i`: the characters it certainly excludes and the index
/// after its `]`. `None` for anything not simple (nested classes, set operations, `]` first).
fn negated_class(cs: &[char], i: usize) -> Option<(Vec<char>, usize)> {
    if cs.get(i + 1) != Some(&'^') || cs.get(i + 2) == Some(&']') {
        return None;
    }
    let mut excluded = Vec::new();
    let mut k = i + 2;
    loop {
        match *cs.get(k)? {
            ']' => return Some((excluded, k + 1)),
            '[' | '&' | '~' => return None,
            '\\' => {
                match *cs.get(k + 1)? {
                    'n' => excluded.push('\n'),
                    'r' => excluded.push('\r'),
                    't' => excluded.push('\t'),
                    's' => excluded.extend(['\n', '\r', '\t', ' ', '\x0b', '\x0c']),
                    // Other escapes (`\d`, `\w`, `\x41`, …) are skipped: excluding fewer
                    // characters than the class does is always safe.
                    n if n.is_ascii_punctuation() => excluded.push(n),
                    _ => {}
                }
                k += 2;
            }
            // `-` may be a range operator (the range's ends are excluded either way).
            '-' => k += 1,
            c => {
                if !c.is_alphanumeric() {
                    excluded.push(c);
                }
                k += 1;
            }
        }
    }
}

/// A greedy quantifier (`*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`) at `i`, not lazy or
/// possessive already: the index after it.
fn greedy_quantifier(cs: &[char], i: usize) -> Option<usize> {
    let end = match *cs.get(i)? {
        '*' | '+' | '?' => i + 1,
        '{' => {
            let close = i + 1 + cs[i + 1..].iter().position(|&c| c == '}')?;
            if close == i + 1 || !cs[i + 1..close].iter().all(|c| c.is_ascii_digit() || *c == ',') {
                return None;
            }
            close + 1
        }
        _ => return None,
    };
    (!matches!(cs.get(end), Some('?' | '+'))).then_some(end)
}

/// The character an item at `i` must start with when it is a single required non-letter
/// character (`\n`, `<`, `\.`, `@`, possibly repeated at least once).
fn next_required_char(cs: &[char], i: usize) -> Option<char> {
    let (c, end) = match *cs.get(i)? {
        '\\' => match *cs.get(i + 1)? {
            'n' => ('\n', i + 2),
            'r' => ('\r', i + 2),
            't' => ('\t', i + 2),
            n if n.is_ascii_punctuation() => (n, i + 2),
            _ => return None,
        },
        c if c.is_alphanumeric() || "()|.*+?{}[]^$#".contains(c) || c.is_whitespace() => return None,
        c => (c, i + 1),
    };
    // Optional (`?`, `*`, `{0,…}`) is not required.
    match cs.get(end) {
        Some('?' | '*') => None,
        Some('{') if cs.get(end + 1) == Some(&'0') => None,
        _ => Some(c),
    }
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
    fn widened_counts_are_a_smaller_superset() {
        assert_eq!(widen_counts(r"a{0,80}b{1,100}c{3}d{2,}[x{2}]\{4}e{,2}"), r"a*b+c+d+[x{2}]\{4}e{,2}");
        // A POSIX class's `:]` does not end the bracket class: its `{2}` stays literal.
        assert_eq!(widen_counts(r"[[:alpha:]x{2}]y{3}"), r"[[:alpha:]x{2}]y+");
        // A braced escape argument is not a count; a count after it still widens.
        assert_eq!(widen_counts(r"\x{2013}\p{L}{2}\d{3}"), r"\x{2013}\p{L}+\d+");
        assert!(regex::Regex::new(&widen_counts(r"a\x{2013}{2,5}")).is_ok());
        // `__PDS_TO_EQ_FROM_NAME_2`: its relaxed form is too big for the linear-time engine
        // as written, not widened, so it still gets a prefilter.
        let p = r#"(?ism)\nFrom:\W+"([\w+.-]+@[\w.-]+\.\w\w+)(?:(?>)(?:(?>)[^\n\w<]){0,80}<)?((?!\1)[^\n">]++)>?\n"#;
        let relaxed = relax(p).unwrap();
        assert!(regex::RegexBuilder::new(&relaxed)
            .size_limit(super::super::multiregex::PATTERN_SIZE_LIMIT)
            .build()
            .is_err());
        let re = build(p).unwrap();
        assert!(re.prefilter.is_some());
        assert_eq!(try_match(&re, "X: y\nFrom: \"a@b.example\" <c@d.example>\n"), Some(true));
        assert_eq!(try_match(&re, "X: y\nFrom: \"a@b.example\" <a@b.example>\n"), Some(false));
    }

    #[test]
    fn possessive_rewrite_only_where_safe_and_same_answers() {
        assert_eq!(possessive(r"(?:[^\n]{1,100}\n+)*To:"), r"(?:(?>[^\n]{1,100})\n+)*To:");
        assert_eq!(possessive(r"(?:[^\n<]{0,80}<)?x"), r"(?:(?>[^\n<]{0,80})<)?x");
        assert_eq!(possessive(r"[^\s>]+>"), r"(?>[^\s>]+)>");
        assert_eq!(possessive(r"[^!-/]*/"), r"(?>[^!-/]*)/");
        // Not excluded, optional, lazy, already possessive, a letter, `(?x)`, a `-`: unchanged.
        for p in [
            r"[^\n]+<",
            r"[^\n]+\n?",
            r"[^\n]+?\n",
            r"[^\n]++\n",
            r"[^a]+a",
            r"(?x)[^\#]+\#",
            r"[^a-z]+-",
            r"[^\n]+\n{0,2}x",
            r"[^]\n]+\n",
            r"[\n]+\n",
            r"[^\d]+\.",
        ] {
            assert_eq!(possessive(p), p, "{p}");
        }
        let cases = [
            (
                r"(?ism)\nFrom: (?:[^\n<]{0,80}<)?([^\n\s>]+)>?\n+(?:[^\n]{1,100}\n+)*To: (?:[^\n]{0,80}<)?\1[>,\s\n]",
                &[
                    "\nFrom: a@b\nX: y\nTo: <a@b>\n",
                    "\nFrom: Al <a@b>\nX: y\nZ: w\nTo: Al <a@b>\n",
                    "\nFrom: Al <a@b>\nX: y\nTo: Al <c@b>\n",
                    "\nFrom: a@b\nTo: \n",
                ][..],
            ),
            (
                r"(?ism)^To:\s+<?[^@]+@([^\.]+)\.(?:[^\n]+\n+)*^Subject: \x22?\1\b",
                &["To: <u@brand.com>\nX: 1\nSubject: brand news\n", "To: u@brand.com\nSubject: other\n"][..],
            ),
            (r"a[^<]*<b", &["a<b", "ax<b", "a<<b", "a"][..]),
        ];
        for (p, texts) in cases {
            let plain = fancy_regex::Regex::new(p).unwrap();
            let fast = fancy_regex::Regex::new(&possessive(p)).unwrap();
            assert_ne!(possessive(p), p);
            for t in texts {
                assert_eq!(fast.is_match(t).unwrap(), plain.is_match(t).unwrap(), "{p} on {t:?}");
            }
        }
    }

    /// Anchored runs at the prefilter's candidate starts give the plain engine's answers,
    /// including look-behind and `^` context before the start, and past MAX_CANDIDATES.
    #[test]
    fn candidate_starts_agree_with_plain_search() {
        let many = format!("{}\nList-Id: 12345678\nX-Foo-Bar: 1234567\n", "To: a\n".repeat(40));
        let cases: &[(&str, &[&str])] = &[
            (
                r"(?ism)^(?!List-|Content-)(?:[a-z]{4,}-[a-z]{3,}|[a-z]{3,}-[a-z]{4,}):\s+\d(?=\S{6,}\s*$)[\da-f]*\s*$",
                &["List-Id: 12345678\n", "Content-Length: 1234567\nX-Mailer-Id: 1abcdef0\n", "Abcd-Efg: 12\n", &many],
            ),
            (r"(?<=x)ab(?!c)", &["ab", "xab", "xabc xab", "xabc"]),
            (r"(?m)^(\w+) \1$", &["a b\nbuy buy", "buy now\nno no\n", "éé éé"]),
            (r"(?i)\bc(?!ialis)[\sc]{0,2}i", &["cialis ci", "cialis", "écialis c i"]),
            (r"\Gab(?!c)", &["ab", "xab", "abc"]),
            (
                r"(?ism)^To:\s+<?[^@]+@([^\.]+)\.(?:[^\n]+\n+)*^Subject: \x22?\1\b",
                &["To: a\nTo: <u@brand.com>\nX: 1\nSubject: brand news\n", &many],
            ),
        ];
        for (p, texts) in cases {
            let b = build(p).unwrap();
            assert_eq!(b.prefilter.is_some(), !p.contains(r"\G"), "{p}");
            let plain = fancy_regex::Regex::new(p).unwrap();
            for t in *texts {
                assert_eq!(try_match(&b, t), Some(plain.is_match(t).unwrap()), "{p} on {t:?}");
            }
        }
        // A match after more than MAX_CANDIDATES candidate starts is still found.
        let b = build(r"(?m)^To: (\w)\1").unwrap();
        let text = format!("{}To: bb\n", "To: ab\n".repeat(MAX_CANDIDATES * 2));
        assert_eq!(try_match(&b, &text), Some(true));
        assert_eq!(try_match(&b, &text.replace("bb", "bc")), Some(false));
    }

    /// Literal-prefix and line-start candidates: where they apply, where they must not, and
    /// the same answers as the plain engine, also past [`MAX_LITERAL_REJECTS`] rejected starts.
    #[test]
    fn literal_and_line_starts_agree_with_plain_search() {
        let kind = |p: &str| match build(p).unwrap().starts {
            Some(Starts::Literals(_)) => "literals",
            Some(Starts::Lines) => "lines",
            None => "anywhere",
        };
        assert_eq!(kind(r"(?i)\nFrom: (\w+) \1"), "literals");
        assert_eq!(kind(r"(?m)^(?:To|Cc): (\w)\1"), "literals");
        assert_eq!(kind(r"(?<=x)abc(?!d)"), "literals");
        assert_eq!(kind(r"(?m)^[a-z]+: (\w)\1"), "lines");
        assert_eq!(kind(r"(?m)^(?!List-)(?:[a-z]{4,}-[a-z]{3,}):\s+\d(?=\S{6,}\s*$)"), "lines");
        // No literal, a short one, `^` only at the text start or in one branch: anywhere.
        assert_eq!(kind(r"(\w)\1"), "anywhere");
        assert_eq!(kind(r"a(\w)\1"), "anywhere");
        assert_eq!(kind(r"^[a-z]+(\w)\1"), "anywhere");
        assert_eq!(kind(r"(?m)(?:^[a-z]|\d)(\w)\1"), "anywhere");
        // A look-behind before the literal still sees the text in front of the candidate.
        let many_from = format!("{}\nFROM: 11\n", "\nFrom: x\n".repeat(3 * MAX_LITERAL_REJECTS));
        let many_lines = format!("{}11\n", "x\n".repeat(3 * MAX_LITERAL_REJECTS));
        let cases: &[(&str, &[&str])] = &[
            (r"(?i)\nFrom: (\d)\1", &[&many_from, &many_from.replace("11", "12"), "From: 11", "\nfrom: 77"]),
            (r"(?<=x)abc(?!d)", &["abc", "xabc", "xabcd xabc", "xabcd"]),
            (r"(?m)^(\d)\1", &[&many_lines, &many_lines.replace("11", "12"), "a11\n", "\n\n22"]),
            (r"(?m)^[a-z]+: (\w)\1$", &["x\nab: cc\n", "ab: cd\nef: gg", "é: aa", "1ab: cc"]),
        ];
        for (p, texts) in cases {
            let b = build(p).unwrap();
            let plain = fancy_regex::Regex::new(p).unwrap();
            for t in *texts {
                assert_eq!(try_match(&b, t), Some(plain.is_match(t).unwrap()), "{p} on {t:?}");
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
        // Many candidate starts (one per line), each catastrophic: the runs of one match share
        // one budget, at most BACKTRACK_LIMIT steps in all.
        let re = build(r"(?m)^(a|aa)+\1$").unwrap();
        let many = format!("{hostile}\n").repeat(40);
        let (n0, steps0) = runs();
        assert_eq!(try_match(&re, &many), None);
        let (n1, steps1) = runs();
        assert!(steps1 - steps0 <= BACKTRACK_LIMIT, "{} steps allowed in {} runs", steps1 - steps0, n1 - n0);
        // Candidates that all fail within their share: 16 of them, then the rest, same bound.
        let re = build(r"(?m)^(a|aa)+\1c$").unwrap();
        let many = format!("{}c", "aab\n".repeat(40));
        assert_eq!(try_match(&re, &many), Some(false));
        let (n2, steps2) = runs();
        assert_eq!(n2 - n1, MAX_CANDIDATES + 1);
        assert!(steps2 - steps1 <= BACKTRACK_LIMIT);
        // Generous bound for a loaded machine: unbounded, this takes far longer than the
        // age of the universe.
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
