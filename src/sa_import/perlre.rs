//! Perl regular expressions (`/re/flags`, `m{re}flags`) into Rust `regex` syntax.
//!
//! Most of SpamAssassin's header patterns are plain Perl regexes that the `regex` crate runs
//! unchanged. This rewrites the Perl-only spellings that have an exact equivalent (`\Z`, `\e`,
//! `\h`, `\v`, `\N`, octal escapes, `\Q…\E`, `(?#…)` comments, `[`, `&`, `~` inside classes)
//! and refuses what has none: look-around, back-references, atomic groups, possessive
//! quantifiers, `\K`, `\G`, recursion, and code blocks. Refusals become the skip reason
//! "unsupported regex feature"; popsift keeps its guarantee of linear-time matching.
//! A pattern too big for one automaton (counted repetitions of Unicode classes) runs on the
//! bounded backtracking engine instead ([`in_vm`]).

/// Why a pattern cannot be translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported(pub String);

/// A translated pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub pattern: String,
    /// Needs the bounded backtracking engine (popsift's `backtrack: true`).
    pub backtrack: bool,
}

/// Translates `/re/flags` into a pattern for popsift's linear-time `regex`, or failing that
/// (look-around, back-references, …) for its bounded backtracking engine.
pub fn translate(pattern: &str) -> Result<Translated, Unsupported> {
    match translate_with(pattern, false) {
        Ok(p) => Ok(Translated { pattern: p, backtrack: false }),
        Err(first) => match translate_with(pattern, true) {
            Ok(p) => Ok(Translated { pattern: p, backtrack: true }),
            Err(_) => Err(first),
        },
    }
}

/// Translates for one engine: `fancy` keeps Perl-only constructs for `fancy-regex`.
pub fn translate_with(pattern: &str, fancy: bool) -> Result<String, Unsupported> {
    let (body, flags) = split(pattern).ok_or_else(|| Unsupported(format!("not a /pattern/: {pattern}")))?;
    let mut inline = String::new();
    for f in flags.chars() {
        match f {
            'i' | 'm' | 's' | 'x' => {
                if !inline.contains(f) {
                    inline.push(f)
                }
            }
            // `o` (compile once) and `g` change nothing for a match test.
            'o' | 'g' => {}
            other => return Err(Unsupported(format!("flag /{other}"))),
        }
    }
    let body = rewrite(body, flags.contains('x'), fancy)?;
    let out = if inline.is_empty() { body } else { format!("(?{inline}){body}") };
    // The final word: the pattern must build with popsift's own engine and size limit.
    if fancy {
        if let Err(e) = crate::rules::backtrack::build(&out) {
            // Over the size limit as one automaton: run the groups on the backtracking VM
            // (same matches; a syntax error fails both ways).
            // Groups first; counted classes too only when that is not enough.
            for classes in [false, true] {
                let vm = in_vm(&out, classes);
                if vm != out && crate::rules::backtrack::build(&vm).is_ok() {
                    return Ok(vm);
                }
            }
            return Err(Unsupported(first_line(&e)));
        }
    } else {
        regex::RegexBuilder::new(&out)
            .size_limit(crate::rules::multiregex::PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| Unsupported(first_line(&e.to_string())))?;
    }
    Ok(out)
}

/// Makes every non-capturing group `(?:…)` start with an empty atomic group `(?>)`, which
/// matches the same text but makes `fancy-regex` run the group (and any repetition of it) on
/// its own backtracking VM instead of handing the whole pattern to `regex` as one automaton.
/// `(?:,[^,]{1,90}){30}` (SpamAssassin's `__TO_TOO_MANY`) is tiny there but a Unicode class
/// repeated 2700 times is over [`crate::rules::multiregex::PATTERN_SIZE_LIMIT`] as an NFA.
/// A class under a counted repetition, `[^\n\w<]{0,80}` (`__PDS_TO_EQ_FROM_NAME_2`: the
/// complement of a case-folded Unicode `\w`, 80 times), becomes `(?:(?>)[^\n\w<]){0,80}`
/// for the same reason: the VM repeats one small class automaton (with `classes` only, since
/// it makes the VM step through each character).
pub fn in_vm(re: &str, classes: bool) -> String {
    let cs: Vec<char> = re.chars().collect();
    let mut out = String::with_capacity(re.len() + 16);
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c == '\\' {
            out.extend(&cs[i..(i + 2).min(cs.len())]);
            i += 2;
            continue;
        }
        if c == '[' {
            let end = class_end(&cs, i);
            let counted = classes && cs.get(end) == Some(&'{') && cs.get(end + 1).is_some_and(|d| d.is_ascii_digit());
            if counted {
                out.push_str("(?:(?>)");
            }
            out.extend(&cs[i..end]);
            if counted {
                out.push(')');
            }
            i = end;
            continue;
        }
        out.push(c);
        if c == '(' && cs.get(i + 1) == Some(&'?') && cs.get(i + 2) == Some(&':') {
            out.push_str("?:(?>)");
            i += 3;
            continue;
        }
        i += 1;
    }
    out
}

/// The index after the bracket class that opens at `cs[start]`: a leading `^` and `]` are
/// part of it, escapes and POSIX classes `[:alpha:]` are skipped whole (unclosed: the end).
fn class_end(cs: &[char], start: usize) -> usize {
    let mut i = start + 1;
    if cs.get(i) == Some(&'^') {
        i += 1;
    }
    if cs.get(i) == Some(&']') {
        i += 1;
    }
    while i < cs.len() {
        match cs[i] {
            '\\' => i += 2,
            ']' => return i + 1,
            '[' if cs.get(i + 1) == Some(&':') => {
                i = (i + 2..cs.len().saturating_sub(1))
                    .find(|&k| cs[k] == ':' && cs[k + 1] == ']')
                    .map_or(i + 1, |k| k + 2)
            }
            _ => i += 1,
        }
    }
    cs.len()
}

fn first_line(s: &str) -> String {
    s.lines().rev().find(|l| l.starts_with("error:")).unwrap_or(s.lines().next().unwrap_or("")).to_string()
}

/// Splits off the delimiters; returns the body and the flags.
fn split(p: &str) -> Option<(&str, &str)> {
    let (rest, open) = match p.strip_prefix('m') {
        Some(r) => (r, r.chars().next()?),
        None => (p, p.chars().next()?),
    };
    let close = match open {
        '{' => '}',
        '(' => ')',
        '[' => ']',
        '<' => '>',
        c => c,
    };
    let inner = &rest[open.len_utf8()..];
    let end = inner.rfind(close)?;
    let flags = &inner[end + close.len_utf8()..];
    flags.chars().all(|c| c.is_ascii_alphabetic()).then_some((&inner[..end], flags))
}

fn push_escaped(out: &mut String, c: char) {
    if regex_syntax::is_meta_character(c) || c == ' ' || c == '#' {
        out.push('\\');
    }
    out.push(c);
}

/// Rewrites the body of a Perl pattern.
fn rewrite(p: &str, xmode: bool, fancy: bool) -> Result<String, Unsupported> {
    let cs: Vec<char> = p.chars().collect();
    let mut out = String::with_capacity(p.len() + 8);
    let mut i = 0;
    let mut in_class = false;
    let mut class_start = 0usize;
    let unsupported = |what: &str| Err(Unsupported(what.to_string()));
    while i < cs.len() {
        let c = cs[i];
        match c {
            '\\' => {
                let Some(&n) = cs.get(i + 1) else {
                    return unsupported("trailing backslash");
                };
                i += 2;
                match n {
                    'x' if !in_class && utf8_run(&cs, i - 2).is_some() => {
                        // SpamAssassin matches UTF-8 bytes: `\xc3\xa9` is "é" in the text
                        // popsift matches (decoded characters).
                        let (text, end) = utf8_run(&cs, i - 2).unwrap_or_default();
                        for ch in text.chars() {
                            out.push_str(&format!(r"\x{{{:X}}}", ch as u32));
                        }
                        i = end;
                    }
                    'x' if in_class && is_ff(cs.get(i..i + 2)) && range_from_ascii_edge(&out) => {
                        // `[\x80-\xff]`: SpamAssassin matches bytes, so this is every byte of
                        // every non-ASCII character; popsift matches characters: all of them.
                        out.push_str(r"\x{10FFFF}");
                        i += 2;
                    }
                    'Q' => {
                        // Literal text up to \E.
                        while i < cs.len() && !(cs[i] == '\\' && cs.get(i + 1) == Some(&'E')) {
                            push_escaped(&mut out, cs[i]);
                            i += 1;
                        }
                        i = (i + 2).min(cs.len().max(i));
                    }
                    'E' => {}
                    'Z' => out.push_str(if in_class { "Z" } else { r"\z" }),
                    'e' => out.push_str(r"\x1B"),
                    'h' => out.push_str(if in_class { r"\t\p{Zs}" } else { r"[\t\p{Zs}]" }),
                    'H' if !in_class => out.push_str(r"[^\t\p{Zs}]"),
                    'v' => out.push_str(if in_class {
                        r"\n\x0B\x0C\r\x{85}\x{2028}\x{2029}"
                    } else {
                        r"[\n\x0B\x0C\r\x{85}\x{2028}\x{2029}]"
                    }),
                    'V' if !in_class => out.push_str(r"[^\n\x0B\x0C\r\x{85}\x{2028}\x{2029}]"),
                    'N' if !in_class && cs.get(i) != Some(&'{') => out.push_str(r"[^\n]"),
                    '0'..='7' if n == '0' || in_class => {
                        // Octal escape: up to three digits.
                        let mut v = n.to_digit(8).unwrap_or(0);
                        let mut k = 0;
                        while k < 2 && i < cs.len() && cs[i].is_digit(8) {
                            v = v * 8 + cs[i].to_digit(8).unwrap_or(0);
                            i += 1;
                            k += 1;
                        }
                        out.push_str(&format!(r"\x{{{v:X}}}"));
                    }
                    '1'..='9' | 'g' | 'k' | 'K' | 'G' if fancy => {
                        out.push('\\');
                        out.push(n);
                    }
                    '1'..='9' => return unsupported("back-reference"),
                    'g' | 'k' => return unsupported("back-reference"),
                    'K' => return unsupported("\\K"),
                    'G' => return unsupported("\\G"),
                    'R' | 'X' | 'C' | 'c' | 'l' | 'u' | 'L' | 'U' | 'H' | 'V' | 'N' => {
                        return unsupported(&format!("\\{n}"))
                    }
                    'a' => out.push_str(r"\x07"),
                    c if c.is_ascii_alphanumeric() => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => push_escaped(&mut out, c),
                }
                continue;
            }
            '[' if in_class => {
                // POSIX class `[:alpha:]` stays; a lone `[` is literal in Perl.
                if cs.get(i + 1) == Some(&':') {
                    if let Some(end) = (i + 2..cs.len().saturating_sub(1)).find(|&k| cs[k] == ':' && cs[k + 1] == ']') {
                        out.extend(&cs[i..end + 2]);
                        i = end + 2;
                        continue;
                    }
                }
                out.push_str(r"\[");
            }
            '[' => {
                in_class = true;
                out.push('[');
                i += 1;
                class_start = i;
                if cs.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                    class_start = i;
                }
                // `]` first in a class is literal.
                if cs.get(i) == Some(&']') {
                    out.push_str(r"\]");
                    i += 1;
                }
                continue;
            }
            ']' if in_class => {
                let _ = class_start;
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            '-' if in_class && (cs.get(i + 1) == Some(&'-') || (i > 0 && cs[i - 1] == '-')) => out.push_str(r"\-"),
            ' ' | '#' if in_class && xmode => {
                out.push('\\');
                out.push(c);
            }
            '(' if cs.get(i + 1) == Some(&'?') => {
                let rest: String = cs[i + 2..cs.len().min(i + 5)].iter().collect();
                if rest.starts_with('#') {
                    // A comment group: dropped.
                    match (i..cs.len()).find(|&k| cs[k] == ')') {
                        Some(end) => i = end + 1,
                        None => return unsupported("unclosed (?#"),
                    }
                    continue;
                }
                for (pre, what) in [
                    ("=", "look-ahead"),
                    ("!", "look-ahead"),
                    ("<=", "look-behind"),
                    ("<!", "look-behind"),
                    (">", "atomic group"),
                    ("|", "branch reset"),
                    ("R", "recursion"),
                    ("&", "recursion"),
                    ("P>", "recursion"),
                    ("{", "code block"),
                    ("?{", "code block"),
                    ("^", "(?^ flags"),
                    ("(", "conditional"),
                ] {
                    if rest.starts_with(pre) {
                        if fancy && !what.starts_with("code") {
                            break;
                        }
                        return unsupported(what);
                    }
                }
                if rest.chars().next().is_some_and(|d| d.is_ascii_digit() || d == '+' || d == '-') && {
                    let d = rest.chars().nth(1);
                    rest.starts_with(|d: char| d.is_ascii_digit()) || d.is_some_and(|d| d.is_ascii_digit())
                } {
                    return unsupported("recursion");
                }
                out.push('(');
            }
            '*' | '+' | '?' | '}' if !in_class && cs.get(i + 1) == Some(&'+') => {
                // `a++`, `a*+`, `a?+`, `a{2}+`: possessive (a `+` after a quantifier).
                let quantifier = c != '+' || i == 0 || !matches!(cs[i - 1], '\\');
                if quantifier && !fancy {
                    return unsupported("possessive quantifier");
                }
                out.push(c);
            }
            c => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

/// `ff` (the hex digits of `\xff`).
fn is_ff(hex: Option<&[char]>) -> bool {
    hex.is_some_and(|h| h.iter().all(|&d| d == 'f' || d == 'F'))
}

/// Whether the class written so far ends with `START-`, START a single character at most
/// 0x80 (literal `!`, escaped `\-`, `\t`, `\xHH`, `\x{HH}`, octal): a range that, ending at
/// `\xff`, holds every byte a non-ASCII character is made of.
fn range_from_ascii_edge(out: &str) -> bool {
    out.strip_suffix('-').and_then(range_start).is_some_and(|v| v <= 0x80)
}

/// The character the translated class text `o` ends with, when that is one character (not a
/// class escape like `\d`, nor the class's own `[`, `[^` or a POSIX class's `:]`).
fn range_start(o: &str) -> Option<u32> {
    // Whether the character at byte `k` follows an odd run of backslashes.
    let escaped = |k: usize| o[..k].bytes().rev().take_while(|&b| b == b'\\').count() % 2 == 1;
    if let Some(body) = o.strip_suffix('}') {
        if let Some(open) = body.rfind("\\x{").filter(|&k| !escaped(k)) {
            return u32::from_str_radix(&body[open + 3..], 16).ok();
        }
    }
    if let Some(k) = o.len().checked_sub(4).filter(|&k| o.is_char_boundary(k) && !escaped(k)) {
        if let Some(v) = o[k..].strip_prefix("\\x").and_then(|h| u8::from_str_radix(h, 16).ok()) {
            return Some(v.into());
        }
    }
    let (k, c) = o.char_indices().next_back()?;
    if escaped(k) {
        return match c {
            't' => Some(9),
            'n' => Some(10),
            'r' => Some(13),
            'f' => Some(12),
            'e' => Some(27),
            c if c.is_ascii_alphanumeric() => None,
            c => Some(c.into()),
        };
    }
    let opener = c == '[' || (c == '^' && o[..k].ends_with('[') && !escaped(k - 1));
    (!opener && c != ']').then_some(c.into())
}

/// A run of `\xHH` escapes from `start` (at a backslash) that spells at least one multi-byte
/// UTF-8 character and is not followed by a quantifier (which in Perl would repeat only the
/// last byte): the decoded text and the index after the run.
fn utf8_run(cs: &[char], start: usize) -> Option<(String, usize)> {
    let mut bytes = Vec::new();
    let mut j = start;
    while cs.get(j) == Some(&'\\') && cs.get(j + 1) == Some(&'x') {
        let hex: String = cs.get(j + 2..j + 4)?.iter().collect();
        let Ok(v) = u8::from_str_radix(&hex, 16) else { break };
        bytes.push(v);
        j += 4;
    }
    if bytes.len() < 2 || bytes[0] < 0x80 || matches!(cs.get(j), Some('?' | '*' | '+' | '{')) {
        return None;
    }
    let text = String::from_utf8(bytes).ok()?;
    Some((text, j))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> String {
        let r = translate(p).unwrap_or_else(|e| panic!("{p}: {e:?}"));
        assert!(!r.backtrack, "{p}");
        r.pattern
    }
    fn bt(p: &str) -> String {
        let r = translate(p).unwrap_or_else(|e| panic!("{p}: {e:?}"));
        assert!(r.backtrack, "{p}");
        r.pattern
    }
    #[test]
    fn over_size_limit_runs_on_the_vm() {
        // SpamAssassin's __TO_TOO_MANY: too big as one automaton, small on the VM.
        let p = bt("/(?:,[^,]{1,90}){30}/");
        assert_eq!(p, "(?:(?>),[^,]{1,90}){30}");
        let re = crate::rules::backtrack::build(&p).unwrap();
        let hit = ",a".repeat(30);
        assert_eq!(crate::rules::backtrack::try_match(&re, &hit), Some(true));
        assert_eq!(crate::rules::backtrack::try_match(&re, &",a".repeat(29)), Some(false));
        assert_eq!(in_vm(r"[(?:]\(?:(?:x)", false), r"[(?:]\(?:(?:(?>)x)");
        assert_eq!(in_vm(r"\(?:", true), r"\(?:");
        assert_eq!(
            in_vm(r"[^]a]{2}[[:alpha:]]{1,3}b{2}[x]+", true),
            r"(?:(?>)[^]a]){2}(?:(?>)[[:alpha:]]){1,3}b{2}[x]+"
        );
        assert_eq!(in_vm(r"\[a]{2}", true), r"\[a]{2}");
    }

    /// A class range up to `\xff` from `\x80` or below covers every non-ASCII character (in
    /// SpamAssassin's bytes, every byte of one); other ranges stay.
    #[test]
    fn byte_range_to_xff_is_every_non_ascii_character() {
        assert_eq!(t(r"/[\x00-\x08\x7f-\xff]/"), r"[\x00-\x08\x7f-\x{10FFFF}]");
        assert_eq!(t(r"/[^<>\x80-\xFF]+/"), r"[^<>\x80-\x{10FFFF}]+");
        assert_eq!(t(r"/[\xc0-\xff]/"), r"[\xc0-\xff]");
        assert_eq!(t(r"/[\xff]/"), r"[\xff]");
        // Any single range start up to 0x80, literal or escaped, reaches every character.
        assert_eq!(t(r"/[!-\xff]/"), r"[!-\x{10FFFF}]");
        assert_eq!(t(r"/[ -\xff]/"), r"[ -\x{10FFFF}]");
        assert_eq!(t(r"/[\t-\xFF]/"), r"[\t-\x{10FFFF}]");
        assert_eq!(t(r"/[\.-\xff]/"), r"[\.-\x{10FFFF}]");
        assert_eq!(t(r"/[\040-\xff]/"), r"[\x{20}-\x{10FFFF}]");
        // Not a range start: a class escape, the class opener, a start above 0x80.
        assert_eq!(t(r"/[^-\xff]/"), r"[^-\xff]");
        assert_eq!(t(r"/[\xc0-\xff]/"), r"[\xc0-\xff]");
        assert!(regex::Regex::new(&t(r"/^[!-\xff]+$/")).unwrap().is_match("caf\u{e9}\u{4e2d}!"));
        let re = regex::Regex::new(&t(r"/[\x00-\x08\x7f-\xff]/")).unwrap();
        assert!(re.is_match("中") && re.is_match("é") && !re.is_match("plain"));
    }

    /// `__PDS_TO_EQ_FROM_NAME_2`: a look-ahead holding a back-reference, a possessive
    /// quantifier, and `[^\n\w<]{0,80}` that is over the size limit as one automaton.
    #[test]
    fn look_ahead_with_back_reference_and_big_counted_class() {
        let p = bt(
            r#"/\nFrom:\W+"([\w+.-]+\@[\w.-]+\.\w\w+)(?:[^\n\w<]{0,80}<)?((?!\1)[^\n">]++)>?\n+(?:[^\n]{1,100}\n+)*To: (?:[^\n<]{0,80}<)?(\1)>?/ism"#,
        );
        let re = crate::rules::backtrack::build(&p).unwrap();
        let m = |s: &str| crate::rules::backtrack::try_match(&re, s);
        // From's display name is an address, the real address differs, To is that address.
        assert_eq!(m("X: y\nFrom: \"bob@bank.com\" <evil@spam.ru>\nSubject: hi\nTo: bob@bank.com\n"), Some(true));
        // Same address in the name and the brackets: the look-ahead refuses.
        assert_eq!(m("X: y\nFrom: \"bob@bank.com\" <bob@bank.com>\nTo: bob@bank.com\n"), Some(false));
        // To is someone else.
        assert_eq!(m("X: y\nFrom: \"bob@bank.com\" <evil@spam.ru>\nTo: eve@x.org\n"), Some(false));
    }

    fn no(p: &str) -> String {
        translate_with(p, false).unwrap_err().0
    }

    #[test]
    fn plain_and_flags() {
        assert_eq!(t("/^foo\\s+bar$/"), "^foo\\s+bar$");
        assert_eq!(t("/foo/i"), "(?i)foo");
        assert_eq!(t("/a.b/msx"), "(?msx)a.b");
        assert_eq!(t("m{a/b}i"), "(?i)a/b");
        assert_eq!(t("m!x!"), "x");
        assert_eq!(t("/x/o"), "x");
        assert!(no("/x/e").contains("flag"));
    }

    #[test]
    fn rewrites() {
        assert_eq!(t(r"/a\Z/"), r"a\z");
        assert_eq!(t(r"/\e\h\N/"), r"\x1B[\t\p{Zs}][^\n]");
        assert_eq!(t(r"/\012/"), r"\x{A}");
        assert_eq!(t(r"/\Qa.b\E+/"), r"a\.b+");
        assert_eq!(t(r"/a(?# note)b/"), "ab");
        assert_eq!(t(r"/[[a]/"), r"[\[a]");
        assert_eq!(t(r"/[]a]/"), r"[\]a]");
        assert_eq!(t(r"/[a&&b~~c--d]/"), r"[a\&\&b\~\~c\-\-d]");
        assert_eq!(t(r"/[[:alpha:]]/"), r"[[:alpha:]]");
        assert_eq!(t(r"/\/\@\%/"), r"/@%");
        assert_eq!(t(r"/(?<n>x)(?:y)(?i:z)/"), r"(?<n>x)(?:y)(?i:z)");
        assert_eq!(t(r"/a\+\+/"), r"a\+\+");
    }

    #[test]
    fn utf8_byte_escapes() {
        assert_eq!(t(r"/caf\xc3\xa9\b/"), r"caf\x{E9}\b");
        // Not a whole character, inside a class, or quantified: left as written.
        assert_eq!(t(r"/\xe9/"), r"\xe9");
        assert_eq!(t(r"/[\xc3\xa9]/"), r"[\xc3\xa9]");
        assert_eq!(t(r"/\xc3\xa9+/"), r"\xc3\xa9+");
        assert_eq!(t(r"/\x41\x42/"), r"\x41\x42");
    }

    #[test]
    fn backtracking_fallback() {
        assert_eq!(bt(r"/a(?=b)/i"), "(?i)a(?=b)");
        assert_eq!(bt(r"/(?<!x)b(?!c)/"), "(?<!x)b(?!c)");
        assert_eq!(bt(r"/(a)\1/"), r"(a)\1");
        assert_eq!(bt(r"/(?>a+)b/"), "(?>a+)b");
        assert_eq!(bt(r"/\d++x/"), r"\d++x");
        // Rewrites still apply in the fallback.
        assert_eq!(bt(r"/(?=a)\Z/"), r"(?=a)\z");
        // Code blocks run on neither engine.
        assert!(translate(r"/(?{ 1 })/").is_err());
    }

    #[test]
    fn refusals() {
        assert_eq!(no(r"/a(?=b)/"), "look-ahead");
        assert_eq!(no(r"/a(?!b)/"), "look-ahead");
        assert_eq!(no(r"/(?<=a)b/"), "look-behind");
        assert_eq!(no(r"/(?<!a)b/"), "look-behind");
        assert_eq!(no(r"/(a)\1/"), "back-reference");
        assert_eq!(no(r"/(?>a)/"), "atomic group");
        assert_eq!(no(r"/a++/"), "possessive quantifier");
        assert_eq!(no(r"/a{2}+/"), "possessive quantifier");
        assert_eq!(no(r"/a\Kb/"), "\\K");
        assert!(!no(r"/a(/").is_empty());
        assert!(!no(r"/\w{5000}/").is_empty(), "size limit");
    }
}
