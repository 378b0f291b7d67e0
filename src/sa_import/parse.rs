//! SpamAssassin `.cf` lines into a small list of directives (no I/O).
//!
//! Follows `Mail::SpamAssassin::Conf`: one directive per line, `#` starts a comment (`\#` is a
//! literal `#`), `if EXPR` / `ifplugin NAME` / `else` / `endif` blocks nest. Blocks are taken
//! the way a default SpamAssassin 4.0.1 installation takes them ([`Env::default_sa`]): the
//! plugins the stock `*.pre` files load, version 4.000001, every `feature_*` and `has_*`
//! capability present, and `local_tests_only` true (popsift runs no network tests).
use std::collections::BTreeSet;

/// The test part of a `header` rule.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    /// `exists:Name`.
    Exists(String),
    /// `eval:function(...)`.
    Eval(String),
    /// `Name =~ /re/flags [if-unset: STRING]` (or `!~` when `negate`).
    Match { target: String, negate: bool, pattern: String, unset: Option<String> },
}

/// One directive the importer cares about.
#[derive(Debug, Clone, PartialEq)]
pub enum Directive {
    Header {
        name: String,
        test: HeaderTest,
    },
    Meta {
        name: String,
        expr: String,
    },
    /// A rule of a kind popsift cannot run (`body`, `uri`, `askdns`, …): `kind` is the keyword.
    Other {
        kind: String,
        name: String,
    },
    Score {
        name: String,
        scores: Vec<f64>,
    },
    Describe {
        name: String,
        text: String,
    },
    Tflags {
        name: String,
        flags: Vec<String>,
    },
    ReplaceRules(Vec<String>),
    /// `replace_tag` / `replace_pre` / `replace_inter` / `replace_post` (`kind` is the part
    /// after `replace_`), `replace_start` / `replace_end` (empty `name`).
    ReplaceTag {
        kind: String,
        name: String,
        value: String,
    },
    RequiredScore(f64),
    /// A line that could not be read (`what` says why).
    Bad {
        what: String,
    },
}

/// A directive with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub file: usize,
    pub line: usize,
    pub directive: Directive,
}

/// What `if`/`ifplugin` conditions are evaluated against.
#[derive(Debug, Clone)]
pub struct Env {
    pub plugins: BTreeSet<String>,
    pub version: f64,
    pub local_tests_only: bool,
    pub compat: BTreeSet<String>,
}

/// Plugins loaded by the `*.pre` files of a stock SpamAssassin 4.0.1 (Debian).
pub const DEFAULT_PLUGINS: &[&str] = &[
    "URIDNSBL",
    "SPF",
    "Pyzor",
    "Razor2",
    "SpamCop",
    "AutoLearnThreshold",
    "WelcomeListSubject",
    "MIMEHeader",
    "ReplaceTags",
    "DKIM",
    "Check",
    "HTTPSMismatch",
    "URIDetail",
    "Bayes",
    "BodyEval",
    "DNSEval",
    "HTMLEval",
    "HeaderEval",
    "MIMEEval",
    "RelayEval",
    "URIEval",
    "WLBLEval",
    "VBounce",
    "ImageInfo",
    "FreeMail",
    "AskDNS",
    "HashBL",
    "DMARC",
];

impl Env {
    /// A default SpamAssassin 4.0.1 run with local tests only.
    pub fn default_sa() -> Env {
        Env {
            plugins: DEFAULT_PLUGINS.iter().map(|p| format!("Mail::SpamAssassin::Plugin::{p}")).collect(),
            version: 4.000001,
            local_tests_only: true,
            compat: BTreeSet::new(),
        }
    }
}

/// Rule-defining keywords popsift cannot run, and a rule name follows them.
const OTHER_RULES: &[&str] = &[
    "body",
    "rawbody",
    "full",
    "uri",
    "mimeheader",
    "askdns",
    "urirhssub",
    "urirhsbl",
    "uridnsbl",
    "uridnssub",
    "header_dnsbl",
    "check_hashbl_emails",
    "hashbl_acl",
    "test",
];

/// Reads the lines of each file (in load order) into directives of the taken blocks.
pub fn parse_files(files: &[&str], env: &mut Env) -> Vec<Located> {
    let mut out = Vec::new();
    for (fi, text) in files.iter().enumerate() {
        // Each file starts outside any block, as SpamAssassin reads them.
        let mut stack: Vec<(bool, bool)> = Vec::new(); // (this branch taken, parent active)
        for (li, raw) in text.lines().enumerate() {
            let line = strip_comment(raw);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (kw, rest) = split_word(line);
            let active = stack.iter().all(|s| s.0);
            match kw {
                "if" => {
                    stack.push((eval_if(rest, env).unwrap_or(false), active));
                    continue;
                }
                "ifplugin" => {
                    let name = rest.split_whitespace().next().unwrap_or("");
                    stack.push((env.plugins.contains(name), active));
                    continue;
                }
                "else" => {
                    if let Some(top) = stack.last_mut() {
                        top.0 = !top.0;
                    }
                    continue;
                }
                "endif" => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            if !active {
                continue;
            }
            if kw == "loadplugin" {
                if let Some(p) = rest.split_whitespace().next() {
                    env.plugins.insert(p.to_string());
                }
                continue;
            }
            if kw == "enable_compat" {
                env.compat.insert(rest.trim().to_string());
                continue;
            }
            if let Some(d) = parse_directive(kw, rest) {
                out.push(Located { file: fi, line: li + 1, directive: d });
            }
        }
    }
    out
}

/// Removes a `#` comment (`\#` stays as `#`).
fn strip_comment(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'#') {
            out.push('#');
            chars.next();
        } else if c == '#' {
            break;
        } else {
            out.push(c);
        }
    }
    out
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// One directive line (keyword and the rest), or `None` for directives the importer ignores.
pub fn parse_directive(kw: &str, rest: &str) -> Option<Directive> {
    let (name, args) = split_word(rest);
    let name = name.to_string();
    let bad = |what: &str| Some(Directive::Bad { what: format!("{kw}: {what}") });
    match kw {
        "header" => {
            if name.is_empty() || args.is_empty() {
                return bad("expected a name and a test");
            }
            match parse_header_test(args) {
                Ok(test) => Some(Directive::Header { name, test }),
                Err(e) => bad(&e),
            }
        }
        "meta" => {
            if name.is_empty() || args.is_empty() {
                return bad("expected a name and an expression");
            }
            Some(Directive::Meta { name, expr: args.trim().to_string() })
        }
        "score" => {
            let mut scores = Vec::new();
            for w in args.split_whitespace() {
                match w.trim_matches(|c| c == '(' || c == ')').parse::<f64>() {
                    Ok(v) if v.is_finite() => scores.push(v),
                    _ => return bad(&format!("bad score {w:?}")),
                }
            }
            if name.is_empty() || scores.is_empty() {
                return bad("expected a name and a score");
            }
            Some(Directive::Score { name, scores })
        }
        "describe" => Some(Directive::Describe { name, text: args.trim().to_string() }),
        "tflags" => Some(Directive::Tflags { name, flags: args.split_whitespace().map(str::to_string).collect() }),
        "replace_tag" | "replace_pre" | "replace_inter" | "replace_post" => Some(Directive::ReplaceTag {
            kind: kw["replace_".len()..].to_string(),
            name,
            value: args.trim().to_string(),
        }),
        "replace_start" | "replace_end" => Some(Directive::ReplaceTag {
            kind: kw["replace_".len()..].to_string(),
            name: String::new(),
            value: rest.trim().to_string(),
        }),
        "replace_rules" => Some(Directive::ReplaceRules(rest.split_whitespace().map(str::to_string).collect())),
        "required_score" | "required_hits" => match name.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(Directive::RequiredScore(v)),
            _ => bad(&format!("bad score {name:?}")),
        },
        k if OTHER_RULES.contains(&k) => Some(Directive::Other { kind: k.to_string(), name }),
        _ => None,
    }
}

/// `Name =~ /re/flags [if-unset: X]`, `Name !~ m{re}`, `exists:Name`, `eval:f(...)`.
fn parse_header_test(s: &str) -> Result<HeaderTest, String> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("exists:") {
        return Ok(HeaderTest::Exists(h.trim().to_string()));
    }
    if s.starts_with("eval:") {
        return Ok(HeaderTest::Eval(s.to_string()));
    }
    let (target, rest) = split_word(s);
    let (negate, rest) = if let Some(r) = rest.strip_prefix("=~") {
        (false, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (true, r)
    } else {
        return Err(format!("expected `=~` or `!~` after {target}"));
    };
    let rest = rest.trim();
    let (pattern, tail) = split_pattern(rest).ok_or_else(|| format!("cannot read the pattern {rest:?}"))?;
    let tail = tail.trim();
    let unset = if tail.is_empty() {
        None
    } else if let Some(u) = tail.strip_prefix("[if-unset:").and_then(|u| u.strip_suffix(']')) {
        Some(u.trim().to_string())
    } else {
        return Err(format!("unexpected {tail:?} after the pattern"));
    };
    Ok(HeaderTest::Match { target: target.to_string(), negate, pattern: pattern.to_string(), unset })
}

/// Splits `/re/flags rest` or `m{re}flags rest` into the pattern with its flags and the rest.
fn split_pattern(s: &str) -> Option<(&str, &str)> {
    let (open, start) = if let Some(r) = s.strip_prefix('m') { (r.chars().next()?, 1) } else { (s.chars().next()?, 0) };
    if open.is_alphanumeric() || open.is_whitespace() {
        return None;
    }
    let close = match open {
        '{' => '}',
        '(' => ')',
        '[' => ']',
        '<' => '>',
        c => c,
    };
    let body = start + open.len_utf8();
    let bytes: Vec<(usize, char)> = s[body..].char_indices().collect();
    let mut i = 0;
    let mut depth = 0usize;
    while i < bytes.len() {
        let c = bytes[i].1;
        if c == '\\' {
            i += 2;
            continue;
        }
        if c == open && open != close {
            depth += 1;
        } else if c == close {
            if depth == 0 {
                let end = body + bytes[i].0 + c.len_utf8();
                let flags_len = s[end..].find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(s.len() - end);
                return Some((&s[..end + flags_len], &s[end + flags_len..]));
            }
            depth -= 1;
        }
        i += 1;
    }
    None
}

/// Evaluates the Perl expression of an `if` line: `version`, numbers, `can(…)`, `plugin(…)`,
/// `local_tests_only`, `!`, `&&`, `||`, comparisons, parentheses. `None` when unreadable
/// (the block is then not taken).
pub fn eval_if(s: &str, env: &Env) -> Option<bool> {
    let toks = if_lex(s)?;
    let mut p = IfParser { toks, pos: 0, env };
    let v = p.or()?;
    (p.pos == p.toks.len()).then_some(v != 0.0)
}

#[derive(Debug, Clone, PartialEq)]
enum IfTok {
    Num(f64),
    Word(String),
    Call(String, String),
    Op(&'static str),
}

fn if_lex(s: &str) -> Option<Vec<IfTok>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let two = s.get(i..i + 2).unwrap_or("");
        if let Some(op) = ["&&", "||", ">=", "<=", "==", "!="].into_iter().find(|o| *o == two) {
            out.push(IfTok::Op(op));
            i += 2;
            continue;
        }
        if let Some(op) = ["!", "(", ")", ">", "<"].into_iter().find(|o| o.as_bytes()[0] == c) {
            out.push(IfTok::Op(op));
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == b'.' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            out.push(IfTok::Num(s[st..i].replace('_', "").parse().ok()?));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let w = s[st..i].to_string();
            let j = i + s[i..].len() - s[i..].trim_start().len();
            if s[j..].starts_with('(') && (w == "can" || w == "plugin" || w == "has") {
                let close = s[j..].find(')')? + j;
                out.push(IfTok::Call(w, s[j + 1..close].trim().to_string()));
                i = close + 1;
            } else {
                out.push(IfTok::Word(w));
            }
            continue;
        }
        return None;
    }
    Some(out)
}

struct IfParser<'a> {
    toks: Vec<IfTok>,
    pos: usize,
    env: &'a Env,
}

impl IfParser<'_> {
    fn eat(&mut self, op: &str) -> bool {
        if self.toks.get(self.pos)
            == Some(&IfTok::Op(match op {
                "&&" => "&&",
                "||" => "||",
                "!" => "!",
                "(" => "(",
                ")" => ")",
                _ => return false,
            }))
        {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Option<f64> {
        let mut v = self.and()?;
        while self.eat("||") {
            let r = self.and()?;
            v = if v != 0.0 || r != 0.0 { 1.0 } else { 0.0 };
        }
        Some(v)
    }
    fn and(&mut self) -> Option<f64> {
        let mut v = self.cmp()?;
        while self.eat("&&") {
            let r = self.cmp()?;
            v = if v != 0.0 && r != 0.0 { 1.0 } else { 0.0 };
        }
        Some(v)
    }
    fn cmp(&mut self) -> Option<f64> {
        let a = self.not()?;
        let op = match self.toks.get(self.pos) {
            Some(IfTok::Op(o)) if [">=", "<=", "==", "!=", ">", "<"].contains(o) => *o,
            _ => return Some(a),
        };
        self.pos += 1;
        let b = self.not()?;
        let r = match op {
            ">=" => a >= b,
            "<=" => a <= b,
            "==" => a == b,
            "!=" => a != b,
            ">" => a > b,
            _ => a < b,
        };
        Some(r as u8 as f64)
    }
    fn not(&mut self) -> Option<f64> {
        if self.eat("!") {
            return Some((self.not()? == 0.0) as u8 as f64);
        }
        if self.eat("(") {
            let v = self.or()?;
            return self.eat(")").then_some(v);
        }
        let t = self.toks.get(self.pos)?.clone();
        self.pos += 1;
        match t {
            IfTok::Num(n) => Some(n),
            IfTok::Word(w) => match w.as_str() {
                "version" => Some(self.env.version),
                "local_tests_only" => Some(self.env.local_tests_only as u8 as f64),
                "perl_version" => Some(5.036),
                _ => None,
            },
            IfTok::Call(f, arg) => Some(self.call(&f, &arg) as u8 as f64),
            IfTok::Op(_) => None,
        }
    }
    fn call(&self, f: &str, arg: &str) -> bool {
        match f {
            "plugin" => self.env.plugins.contains(arg),
            // `can(Package::sub)`: the sub exists in SpamAssassin 4.0.1.
            _ => {
                let (pkg, sub) = arg.rsplit_once("::").unwrap_or(("", arg));
                if let Some(c) = sub.strip_prefix("compat_") {
                    return self.env.compat.contains(c);
                }
                let plugin_ok = !pkg.starts_with("Mail::SpamAssassin::Plugin::") || self.env.plugins.contains(pkg);
                plugin_ok
                    && (sub.starts_with("feature_") || sub.starts_with("has_") || sub.starts_with("perl_min_version"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Directive {
        let mut env = Env::default_sa();
        let v = parse_files(&[line], &mut env);
        assert_eq!(v.len(), 1, "{line}: {v:?}");
        v[0].directive.clone()
    }

    #[test]
    fn header_rules() {
        assert_eq!(
            one("header FOO Subject =~ /buy\\#now/i # comment"),
            Directive::Header {
                name: "FOO".into(),
                test: HeaderTest::Match {
                    target: "Subject".into(),
                    negate: false,
                    pattern: "/buy#now/i".into(),
                    unset: None
                }
            }
        );
        assert_eq!(
            one("header  FOO  From:addr !~ m{^a/b}  [if-unset: none]"),
            Directive::Header {
                name: "FOO".into(),
                test: HeaderTest::Match {
                    target: "From:addr".into(),
                    negate: true,
                    pattern: "m{^a/b}".into(),
                    unset: Some("none".into())
                }
            }
        );
        assert_eq!(
            one("header X exists:X-Mailer"),
            Directive::Header { name: "X".into(), test: HeaderTest::Exists("X-Mailer".into()) }
        );
        assert!(matches!(
            one("header X eval:check_for_faraway()"),
            Directive::Header { test: HeaderTest::Eval(_), .. }
        ));
        assert!(matches!(one("header X Subject ~ /a/"), Directive::Bad { .. }));
        assert!(matches!(one("header X Subject =~ /a"), Directive::Bad { .. }));
        assert!(matches!(one("header X Subject =~ /a/ junk"), Directive::Bad { .. }));
    }

    #[test]
    fn other_directives() {
        assert_eq!(one("meta M (A && !B)"), Directive::Meta { name: "M".into(), expr: "(A && !B)".into() });
        assert_eq!(one("score M 1.0 2 (3) 4"), Directive::Score { name: "M".into(), scores: vec![1.0, 2.0, 3.0, 4.0] });
        assert_eq!(one("describe M Some text"), Directive::Describe { name: "M".into(), text: "Some text".into() });
        assert_eq!(
            one("tflags M nice net"),
            Directive::Tflags { name: "M".into(), flags: vec!["nice".into(), "net".into()] }
        );
        assert_eq!(one("required_score 6.5"), Directive::RequiredScore(6.5));
        assert_eq!(one("body B /x/"), Directive::Other { kind: "body".into(), name: "B".into() });
        assert_eq!(one("replace_rules A B"), Directive::ReplaceRules(vec!["A".into(), "B".into()]));
        assert!(matches!(one("score M lots"), Directive::Bad { .. }));
        let mut env = Env::default_sa();
        assert!(parse_files(&["lang de describe M x\nbayes_ignore_header X\n"], &mut env).is_empty());
    }

    #[test]
    fn conditional_blocks() {
        let text = "ifplugin Mail::SpamAssassin::Plugin::Shortcircuit\nscore A 1\nendif\n\
                    ifplugin Mail::SpamAssassin::Plugin::FreeMail\nscore B 1\nelse\nscore C 1\nendif\n\
                    if (version >= 3.004000)\nif !plugin(Mail::SpamAssassin::Plugin::DKIM)\nscore D 1\nendif\nscore E 1\nendif\n\
                    if can(Mail::SpamAssassin::Conf::feature_bug6558_free)\nscore F 1\nendif\n\
                    if !can(Mail::SpamAssassin::Conf::compat_welcomelist_blocklist)\nscore G 1\nendif\n\
                    if (local_tests_only)\nscore H 1\nendif\nif weird stuff\nscore I 1\nendif\n\
                    loadplugin Mail::SpamAssassin::Plugin::Shortcircuit\nifplugin Mail::SpamAssassin::Plugin::Shortcircuit\nscore J 1\nendif\n";
        let mut env = Env::default_sa();
        let names: Vec<String> = parse_files(&[text], &mut env)
            .into_iter()
            .map(|l| match l.directive {
                Directive::Score { name, .. } => name,
                d => panic!("{d:?}"),
            })
            .collect();
        assert_eq!(names, ["B", "E", "F", "G", "H", "J"]);
    }

    #[test]
    fn if_expressions() {
        let env = Env::default_sa();
        assert_eq!(eval_if("(version >= 4.000000)", &env), Some(true));
        assert_eq!(eval_if("!((version >= 3.004000))", &env), Some(false));
        assert_eq!(eval_if("version < 3.3", &env), Some(false));
        assert_eq!(eval_if("can(Mail::SpamAssassin::Plugin::BodyEval::has_check_body_length)", &env), Some(true));
        assert_eq!(eval_if("can(Mail::SpamAssassin::Plugin::Nope::has_x)", &env), Some(false));
        assert_eq!(eval_if("plugin(Mail::SpamAssassin::Plugin::DKIM) && !local_tests_only", &env), Some(false));
        assert_eq!(eval_if("foo(1)", &env), None);
    }

    #[test]
    fn patterns() {
        assert_eq!(split_pattern("/a\\/b/i rest"), Some(("/a\\/b/i", " rest")));
        assert_eq!(split_pattern("m{a{2}}x"), Some(("m{a{2}}x", "")));
        assert_eq!(split_pattern("m!a!"), Some(("m!a!", "")));
        assert_eq!(split_pattern("abc"), None);
    }
}
