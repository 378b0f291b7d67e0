//! SpamAssassin directives into popsift rules, a YAML rule file and a report (no I/O).
//!
//! Semantics kept from SpamAssassin 4.0.1 (`Mail::SpamAssassin::Conf`, `Plugin::Check`):
//! - a later definition of a rule name replaces the earlier one; `score`, `describe`, `tflags`
//!   may come before or after it;
//! - **score set 0** (the first of four values: no network tests, no Bayes), because popsift
//!   runs neither; a single value applies to all sets. Without a `score` line a rule scores
//!   1.0, a `T_` rule 0.01, a `tflags nice` rule -1.0; `__` rules never score;
//! - a rule scored 0 is not run by SpamAssassin (so not imported), nor is a `tflags net` rule;
//! - a missing header is tested as the empty string (`no warnings 'uninitialized'`), like
//!   popsift; `[if-unset: X]` tests `X` instead (expanded into helper rules when it matters);
//! - a meta that names an undefined or skipped rule is skipped (SpamAssassin disables metas
//!   with undefined dependencies).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::parse::{Directive, HeaderTest, Located};
use super::perlre;

/// Why a rule was not imported (the report groups by [`Skip::reason`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// `body`, `rawbody`, `full`, `uri`, `mimeheader`: popsift sees headers only.
    NotHeader(String),
    /// `askdns`, `urirhssub`, … or `tflags net`.
    Network,
    /// `header … eval:…`: Perl code.
    Eval,
    /// `X-Spam-Relays-*`, `ALL-TRUSTED`…: SpamAssassin builds these from its
    /// parse of the Received chain and its trust settings.
    PseudoHeader(String),
    /// `:first`, `:last`, `:host`, `:domain`, `:ip`, `:revip`.
    Modifier(String),
    /// Look-around, back-references, … (detail).
    Regex(String),
    /// Score 0 in set 0, or `meta NAME 0`.
    Disabled,
    /// A meta naming a rule that is not imported.
    MetaDependency(String),
    /// A meta naming a rule defined nowhere.
    MetaUndefined(String),
    /// A meta using operators popsift's `expr` lacks (`*`, functions) or a loop.
    MetaExpr(String),
    /// A counting meta over a `tflags multiple` rule (popsift counts a rule once).
    MetaMultiple(String),
    /// A line that could not be read.
    Bad(String),
}

impl Skip {
    /// The report line this skip is counted under.
    pub fn reason(&self) -> String {
        match self {
            Skip::NotHeader(k) => format!("{k} rule (popsift sees headers only)"),
            Skip::Network => "network test".into(),
            Skip::Eval => "eval: rule (Perl code)".into(),
            Skip::PseudoHeader(_) => "pseudo-header SpamAssassin derives from its Received parse".into(),
            Skip::Modifier(_) => "unsupported header modifier".into(),
            Skip::Regex(_) => "unsupported regex feature".into(),
            Skip::Disabled => "disabled (score 0 in set 0, or meta 0)".into(),
            Skip::MetaDependency(_) => "meta depends on a rule not imported".into(),
            Skip::MetaUndefined(_) => "meta names an undefined rule".into(),
            Skip::MetaExpr(_) => "meta expression popsift cannot evaluate".into(),
            Skip::MetaMultiple(_) => "meta counts repeated matches (tflags multiple)".into(),
            Skip::Bad(_) => "unreadable line".into(),
        }
    }
    /// The specific detail, for `--verbose`.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Skip::NotHeader(_) | Skip::Network | Skip::Eval | Skip::Disabled => None,
            Skip::PseudoHeader(d)
            | Skip::Modifier(d)
            | Skip::Regex(d)
            | Skip::MetaDependency(d)
            | Skip::MetaUndefined(d)
            | Skip::MetaExpr(d)
            | Skip::MetaMultiple(d)
            | Skip::Bad(d) => Some(d),
        }
    }
}

/// One skipped rule (or line) and where it was defined.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub file: usize,
    pub line: usize,
    pub name: String,
    pub skip: Skip,
}

/// What happened, for the report.
#[derive(Debug, Default)]
pub struct Report {
    /// SpamAssassin rules imported (helper rules popsift adds are not counted).
    pub imported: usize,
    /// Of those, rules whose pattern or structure had to be rewritten.
    pub translated: usize,
    /// Header rules (not `eval:`) a default SpamAssassin runs, and how many were imported.
    pub header_rules: usize,
    pub header_imported: usize,
    /// Of `header_rules`, those scored 0 in set 0 (SpamAssassin does not run them either).
    pub header_disabled: usize,
    /// `__` sub-rules imported but dropped because no imported rule or meta refers to them
    /// (they could never change a verdict); not in `imported`.
    pub unreferenced: usize,
    pub skipped: Vec<Skipped>,
    pub threshold: Option<f64>,
}

impl Report {
    /// Counts per skip reason, sorted by reason.
    pub fn by_reason(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for s in &self.skipped {
            *m.entry(s.skip.reason()).or_insert(0) += 1;
        }
        m
    }
}

/// A popsift rule to write.
#[derive(Debug, Clone, PartialEq)]
pub struct PRule {
    pub id: String,
    pub describe: Option<String>,
    pub header: Option<String>,
    pub test: PTest,
    pub negate: bool,
    pub score: Option<f64>,
    /// Where the SpamAssassin rule came from (`file:line`).
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PTest {
    Regex(String),
    /// A regex for the bounded backtracking engine (`backtrack: true`).
    Backtrack(String),
    Exists(bool),
    Expr(String),
}

#[derive(Debug, Clone)]
enum Kind {
    Header(HeaderTest),
    Meta(String),
    Other(String),
}

#[derive(Debug, Clone)]
struct Def {
    file: usize,
    line: usize,
    kind: Kind,
}

/// Options of one import.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Leave `threshold:` out of the output even if `required_score` was set.
    pub no_threshold: bool,
    /// The paths given on the command line, for the file's heading.
    pub sources: Vec<String>,
    /// Skip patterns that need the backtracking engine (faster evaluation, fewer rules).
    pub no_backtrack: bool,
    /// Keep `__` sub-rules nothing refers to (dropped by default: they cannot change a
    /// verdict). For measuring what dropping them saves.
    pub keep_unreferenced: bool,
}

/// The headers SpamAssassin's `MESSAGEID` joins (PerMsgStatus::_get).
const MESSAGEID: [&str; 4] = ["X-Message-Id", "Resent-Message-Id", "X-Original-Message-ID", "Message-Id"];

/// The result of an import: the rules (grouped by source file) and the report.
#[derive(Debug)]
pub struct Imported {
    pub rules: Vec<(usize, Vec<PRule>)>,
    pub report: Report,
}

/// Translates directives (already in load order) into popsift rules.
pub fn translate(items: &[Located], files: &[String], opts: &Options) -> Imported {
    let mut defs: HashMap<String, Def> = HashMap::new();
    let mut scores: HashMap<String, f64> = HashMap::new();
    let mut describes: HashMap<String, String> = HashMap::new();
    let mut tflags: HashMap<String, Vec<String>> = HashMap::new();
    let mut replaced: HashSet<String> = HashSet::new();
    let mut tags = super::replace::Tags::default();
    let mut report = Report::default();
    for it in items {
        let def = |kind| Def { file: it.file, line: it.line, kind };
        match &it.directive {
            Directive::Header { name, test } => {
                defs.insert(name.clone(), def(Kind::Header(test.clone())));
            }
            Directive::Meta { name, expr } => {
                defs.insert(name.clone(), def(Kind::Meta(expr.clone())));
            }
            Directive::Other { kind, name } => {
                defs.insert(name.clone(), def(Kind::Other(kind.clone())));
            }
            Directive::Score { name, scores: s } => {
                scores.insert(name.clone(), s[0]);
            }
            Directive::Describe { name, text } => {
                describes.insert(name.clone(), text.clone());
            }
            Directive::Tflags { name, flags } => {
                tflags.insert(name.clone(), flags.clone());
            }
            Directive::ReplaceRules(names) => replaced.extend(names.iter().cloned()),
            Directive::ReplaceTag { kind, name, value } => {
                tags.set(kind, name, value);
            }
            Directive::RequiredScore(v) => report.threshold = Some(*v),
            Directive::Bad { what } => report.skipped.push(Skipped {
                file: it.file,
                line: it.line,
                name: String::new(),
                skip: Skip::Bad(what.clone()),
            }),
        }
    }
    let mut order: Vec<(&String, &Def)> = defs.iter().collect();
    order.sort_by_key(|(n, d)| (d.file, d.line, n.to_string()));
    let has_flag = |n: &str, f: &str| tflags.get(n).is_some_and(|v| v.iter().any(|x| x == f));
    // The score a rule gets, `None` for a helper; `Err` when disabled.
    let score_of = |n: &str| -> Result<Option<f64>, Skip> {
        if n.starts_with("__") {
            return Ok(None);
        }
        match scores.get(n) {
            Some(&0.0) => Err(Skip::Disabled),
            Some(&s) => Ok(Some(s)),
            None if n.starts_with("T_") => Ok(Some(0.01)),
            None if has_flag(n, "nice") => Ok(Some(-1.0)),
            None => Ok(Some(1.0)),
        }
    };
    // Decided rules: name -> imported?
    let mut status: HashMap<String, bool> = HashMap::new();
    let mut out: BTreeMap<(usize, usize, String), Vec<PRule>> = BTreeMap::new();
    let mut translated: HashSet<String> = HashSet::new();
    let skip = |status: &mut HashMap<String, bool>, report: &mut Report, n: &str, d: &Def, s: Skip| {
        status.insert(n.to_string(), false);
        report.skipped.push(Skipped { file: d.file, line: d.line, name: n.to_string(), skip: s });
    };
    // Pass 1: everything but metas.
    for &(n, d) in &order {
        let test = match &d.kind {
            Kind::Meta(_) => continue,
            Kind::Other(k) => {
                let s = match k.as_str() {
                    "body" | "rawbody" | "full" | "uri" | "mimeheader" => Skip::NotHeader(k.clone()),
                    "test" => continue,
                    _ => Skip::Network,
                };
                skip(&mut status, &mut report, n, d, s);
                continue;
            }
            Kind::Header(t) => t,
        };
        let counts = !matches!(test, HeaderTest::Eval(_));
        if counts {
            report.header_rules += 1;
        }
        let origin = format!("{}:{}", files[d.file], d.line);
        let result = (|| -> Result<(Vec<PRule>, bool), Skip> {
            if matches!(test, HeaderTest::Eval(_)) {
                return Err(Skip::Eval);
            }
            if has_flag(n, "net") {
                return Err(Skip::Network);
            }
            let score = score_of(n)?;
            let replaced_test;
            let test = if replaced.contains(n) {
                replaced_test = match test {
                    HeaderTest::Match { target, negate, pattern, unset } => HeaderTest::Match {
                        target: target.clone(),
                        negate: *negate,
                        pattern: tags.apply(pattern),
                        unset: unset.clone(),
                    },
                    // SpamAssassin substitutes only in patterns (`test_qrs`).
                    other => other.clone(),
                };
                &replaced_test
            } else {
                test
            };
            let base = PRule {
                id: n.to_string(),
                describe: describes.get(n).cloned(),
                header: None,
                test: PTest::Exists(true),
                negate: false,
                score,
                origin: origin.clone(),
            };
            header_rule(base, test, &defs, opts.no_backtrack)
        })();
        match result {
            Ok((rules, changed)) => {
                status.insert(n.to_string(), true);
                if changed {
                    translated.insert(n.to_string());
                }
                if counts {
                    report.header_imported += 1;
                }
                out.insert((d.file, d.line, n.to_string()), rules);
            }
            Err(s) => {
                if counts && s == Skip::Disabled {
                    report.header_disabled += 1;
                }
                skip(&mut status, &mut report, n, d, s)
            }
        }
    }
    // Pass 2: metas, in dependency order (a meta is decided once all it names are).
    let metas: Vec<(&String, &Def, &String)> = order
        .iter()
        .filter_map(|&(n, d)| match &d.kind {
            Kind::Meta(e) => Some((n, d, e)),
            _ => None,
        })
        .collect();
    let mut pending: Vec<usize> = (0..metas.len()).collect();
    loop {
        let before = pending.len();
        pending.retain(|&i| {
            let (n, d, e) = metas[i];
            let toks = match meta_tokens(e) {
                Ok(t) => t,
                Err(m) => {
                    skip(&mut status, &mut report, n, d, Skip::MetaExpr(m));
                    return false;
                }
            };
            let ids: Vec<&str> = toks.iter().filter(|t| is_ident(t)).map(String::as_str).collect();
            if ids.is_empty() {
                skip(&mut status, &mut report, n, d, Skip::Disabled);
                return false;
            }
            for id in &ids {
                if !defs.contains_key(*id) {
                    skip(&mut status, &mut report, n, d, Skip::MetaUndefined(id.to_string()));
                    return false;
                }
            }
            for id in &ids {
                match status.get(*id) {
                    None => return true, // not decided yet
                    Some(false) => {
                        skip(&mut status, &mut report, n, d, Skip::MetaDependency(id.to_string()));
                        return false;
                    }
                    Some(true) => {}
                }
            }
            let counting = toks.iter().any(|t| matches!(t.as_str(), "+" | "-" | ">" | ">=" | "<" | "<=" | "==" | "!="));
            if counting {
                if let Some(m) = ids.iter().find(|id| has_flag(id, "multiple")) {
                    skip(&mut status, &mut report, n, d, Skip::MetaMultiple(m.to_string()));
                    return false;
                }
            }
            let expr = join_tokens(&toks);
            if let Err(e) = crate::rules::expr::parse(&expr) {
                skip(&mut status, &mut report, n, d, Skip::MetaExpr(e.message));
                return false;
            }
            let score = match score_of(n) {
                Ok(s) => s,
                Err(s) => {
                    skip(&mut status, &mut report, n, d, s);
                    return false;
                }
            };
            status.insert(n.to_string(), true);
            out.insert(
                (d.file, d.line, n.to_string()),
                vec![PRule {
                    id: n.to_string(),
                    describe: describes.get(n.as_str()).cloned(),
                    header: None,
                    test: PTest::Expr(expr),
                    negate: false,
                    score,
                    origin: format!("{}:{}", files[d.file], d.line),
                }],
            );
            false
        });
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    for &i in &pending {
        let (n, d, _) = metas[i];
        skip(&mut status, &mut report, n, d, Skip::MetaExpr("loop between metas".into()));
    }
    // `__` sub-rules that no imported rule or meta names (directly or through other
    // sub-rules) can never change a verdict; evaluating them only costs time. They are
    // dropped, and counted.
    let live = live_rules(&out);
    out.retain(|(_, _, n), rules| {
        let keep = opts.keep_unreferenced || !n.starts_with("__") || live.contains(n.as_str());
        if !keep {
            report.unreferenced += 1;
            rules.clear();
        }
        keep
    });
    report.imported = out.len();
    translated.retain(|n| out.keys().any(|(_, _, k)| k == n));
    report.translated = translated.len();
    report.skipped.sort_by(|a, b| (a.file, a.line, &a.name).cmp(&(b.file, b.line, &b.name)));
    let mut rules: Vec<(usize, Vec<PRule>)> = Vec::new();
    for ((file, _, _), rs) in out {
        match rules.last_mut() {
            Some((f, v)) if *f == file => v.extend(rs),
            _ => rules.push((file, rs)),
        }
    }
    Imported { rules, report }
}

/// Ids reachable from the rules that can score or act (every id not starting with `__`)
/// through `expr:` references.
fn live_rules(out: &BTreeMap<(usize, usize, String), Vec<PRule>>) -> HashSet<String> {
    let by_id: HashMap<&str, &PRule> = out.values().flatten().map(|r| (r.id.as_str(), r)).collect();
    let mut live: HashSet<String> = HashSet::new();
    let mut stack: Vec<&str> = by_id.keys().copied().filter(|id| !id.starts_with("__")).collect();
    while let Some(id) = stack.pop() {
        if !live.insert(id.to_string()) {
            continue;
        }
        if let Some(PRule { test: PTest::Expr(e), .. }) = by_id.get(id) {
            for t in meta_tokens(e).unwrap_or_default() {
                if is_ident(&t) && !live.contains(&t) {
                    if let Some((k, _)) = by_id.get_key_value(t.as_str()) {
                        stack.push(k);
                    }
                }
            }
        }
    }
    live
}

/// One header rule; returns the rules to write and whether it needed rewriting.
fn header_rule(
    base: PRule,
    test: &HeaderTest,
    defs: &HashMap<String, Def>,
    no_backtrack: bool,
) -> Result<(Vec<PRule>, bool), Skip> {
    let (target, negate, pattern, unset) = match test {
        HeaderTest::Exists(h) => {
            let header = target_of(h)?;
            if header == "MESSAGEID" || header.contains(':') || header == "ALL" || header == "EnvelopeFrom" {
                return Err(Skip::PseudoHeader(h.clone()));
            }
            if header.eq_ignore_ascii_case("ToCc") {
                // popsift's `exists:` takes one header: To or Cc.
                let (to, cc) = (helper_id(&base.id, "TO", defs), helper_id(&base.id, "CC", defs));
                let expr = format!("{to} || {cc}");
                let origin = base.origin.clone();
                let ex = |id: String, h: &str| PRule {
                    id,
                    describe: None,
                    header: Some(h.into()),
                    test: PTest::Exists(true),
                    negate: false,
                    score: None,
                    origin: origin.clone(),
                };
                let rules = vec![ex(to, "To"), ex(cc, "Cc"), PRule { test: PTest::Expr(expr), ..base }];
                return Ok((rules, true));
            }
            return Ok((vec![PRule { header: Some(header), test: PTest::Exists(true), ..base }], false));
        }
        HeaderTest::Eval(_) => return Err(Skip::Eval),
        HeaderTest::Match { target, negate, pattern, unset } => (target, *negate, pattern, unset),
    };
    let header = target_of(target)?;
    let tr = if no_backtrack {
        perlre::translate_with(pattern, false).map(|p| perlre::Translated { pattern: p, backtrack: false })
    } else {
        perlre::translate(pattern)
    }
    .map_err(|e| Skip::Regex(e.0))?;
    let (re, backtrack) = (tr.pattern, tr.backtrack);
    let compiled = crate::rules::backtrack::build(&re).map_err(Skip::Regex)?;
    let compiled = |s: &str| crate::rules::backtrack::is_match(&compiled, s);
    let test = |re: &String| if backtrack { PTest::Backtrack(re.clone()) } else { PTest::Regex(re.clone()) };
    let mut changed = backtrack || strip_flags(pattern) != strip_inline(&re);
    let helper = |suffix: &str| helper_id(&base.id, suffix, defs);
    let sub = |id: String, header: String, test: PTest, negate: bool| PRule {
        id,
        describe: None,
        header: Some(header),
        test,
        negate,
        score: None,
        origin: base.origin.clone(),
    };
    if header == "MESSAGEID" {
        // SpamAssassin tests the four Message-Id headers joined; popsift tests each and ORs.
        // Equivalent unless the pattern matches an empty value (then skipped).
        if compiled("") {
            return Err(Skip::PseudoHeader("MESSAGEID with a pattern that matches an empty value".into()));
        }
        let mut rules = Vec::new();
        let mut names = Vec::new();
        for (k, h) in MESSAGEID.iter().enumerate() {
            let id = helper(&format!("MID{}", k + 1));
            names.push(id.clone());
            rules.push(sub(id, h.to_string(), test(&re), false));
        }
        let or = names.join(" || ");
        let expr = if negate { format!("!({or})") } else { or };
        rules.push(PRule { test: PTest::Expr(expr), ..base });
        return Ok((rules, true));
    }
    // `[if-unset: X]`: only matters when testing X gives another result than testing "".
    if let Some(u) = unset {
        if compiled(u) != compiled("") {
            if header == "EnvelopeFrom" {
                // popsift's `exists:` takes a real header, and SpamAssassin's value may be unset.
                return Err(Skip::PseudoHeader("EnvelopeFrom with [if-unset: …]".into()));
            }
            let set = helper("SET");
            let m = helper("RE");
            let missing_hits = compiled(u) != negate;
            let expr = if missing_hits { format!("!{set} || {m}") } else { format!("{set} && {m}") };
            let rules = vec![
                sub(set, header.clone(), PTest::Exists(true), false),
                sub(m, header, test(&re), negate),
                PRule { test: PTest::Expr(expr), ..base },
            ];
            return Ok((rules, true));
        }
        changed = true;
    }
    Ok((vec![PRule { header: Some(header), test: test(&re), negate, ..base }], changed))
}

/// `NAME__SUFFIX`, made unique against SpamAssassin's own names.
fn helper_id(name: &str, suffix: &str, defs: &HashMap<String, Def>) -> String {
    let mut id = format!("{name}__{suffix}");
    while defs.contains_key(&id) {
        id.push('_');
    }
    id
}

fn strip_flags(p: &str) -> &str {
    let p = p.strip_prefix('m').filter(|r| !r.starts_with(char::is_alphanumeric)).unwrap_or(p);
    let p = &p[p.chars().next().map_or(0, char::len_utf8)..];
    let end = p.rfind(|c: char| !c.is_ascii_alphabetic()).unwrap_or(0);
    &p[..end]
}

fn strip_inline(r: &str) -> &str {
    if let Some(rest) = r.strip_prefix("(?") {
        if let Some(i) = rest.find(')') {
            if rest[..i].chars().all(|c| "imsx".contains(c)) {
                return &rest[i + 1..];
            }
        }
    }
    r
}

/// A SpamAssassin header name (with modifiers) as a popsift `header:`; `MESSAGEID` is kept for
/// the caller to expand.
fn target_of(t: &str) -> Result<String, Skip> {
    let mut parts = t.split(':');
    let name = parts.next().unwrap_or("");
    let mut form = None;
    for m in parts {
        match (form, m) {
            (None, "raw" | "addr" | "name") => form = Some(m),
            // SpamAssassin reads the modifiers in any order: the name before MIME decoding.
            (Some("name"), "raw") | (Some("raw"), "name") => form = Some("name:raw"),
            _ => return Err(Skip::Modifier(format!("{t}: `:{m}`"))),
        }
    }
    let upper = name.to_ascii_uppercase();
    if name == "EnvelopeFrom" {
        // popsift derives it as SpamAssassin does (`rules::envelope`); it is an address.
        return match form {
            None | Some("raw") | Some("addr") => Ok("EnvelopeFrom".into()),
            Some(m) => Err(Skip::Modifier(format!("{t}: EnvelopeFrom:{m}"))),
        };
    }
    if upper.starts_with("X-SPAM-RELAYS-") || upper.starts_with("ALL-") {
        return Err(Skip::PseudoHeader(name.to_string()));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Skip::Bad(format!("bad header name {name:?}")));
    }
    if name == "ALL" && matches!(form, Some("addr") | Some("name") | Some("name:raw")) {
        return Err(Skip::Modifier(format!("{t}: ALL takes only :raw")));
    }
    if name == "MESSAGEID" {
        return match form {
            None => Ok("MESSAGEID".into()),
            Some(m) => Err(Skip::Modifier(format!("{t}: MESSAGEID:{m}"))),
        };
    }
    Ok(match form {
        Some(m) => format!("{name}:{m}"),
        None => name.to_string(),
    })
}

fn is_ident(t: &str) -> bool {
    t.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
}

/// Splits a meta expression into ids, numbers and the operators popsift's `expr` has.
fn meta_tokens(e: &str) -> Result<Vec<String>, String> {
    let b = e.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_alphanumeric() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let w = &e[st..i];
            if is_ident(w) && e[i..].trim_start().starts_with('(') {
                return Err(format!("function {w}()"));
            }
            out.push(w.to_string());
            continue;
        }
        let two = e.get(i..i + 2).unwrap_or("");
        if ["&&", "||", ">=", "<=", "==", "!="].contains(&two) {
            out.push(two.to_string());
            i += 2;
            continue;
        }
        if b"!()+-<>".contains(&c) {
            out.push((c as char).to_string());
            i += 1;
            continue;
        }
        return Err(format!("operator {:?}", e[i..].chars().next().unwrap_or('?')));
    }
    Ok(out)
}

fn join_tokens(toks: &[String]) -> String {
    let mut s = String::new();
    for t in toks {
        let glue = s.is_empty() || s.ends_with('!') || s.ends_with('(') || t == ")";
        if !glue {
            s.push(' ');
        }
        s.push_str(t);
    }
    s
}

/// YAML scalar: single-quoted when printable, else double-quoted with escapes.
pub fn yaml_str(s: &str) -> String {
    if s.chars().all(|c| c == '\t' || !c.is_control()) {
        format!("'{}'", s.replace('\'', "''"))
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

fn fmt_score(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Writes the rule file.
pub fn to_yaml(imp: &Imported, files: &[String], opts: &Options) -> String {
    let r = &imp.report;
    let mut y = String::new();
    let plural = if files.len() == 1 { "" } else { "s" };
    let _ = writeln!(y, "# SpamAssassin rules imported by `popsift import-sa` from {} file{plural} in:", files.len());
    for f in &opts.sources {
        let _ = writeln!(y, "#   {f}");
    }
    let _ = writeln!(
        y,
        "# {} rules imported ({} rewritten), {} skipped. Scores: SpamAssassin score set 0 (no network\n\
         # tests, no Bayes). Rules whose id starts with `__` (and the `NAME__…` helpers popsift adds)\n\
         # carry no score: they only feed `expr:` rules. Re-run the import rather than editing.",
        r.imported,
        r.translated,
        r.skipped.len()
    );
    match r.threshold {
        Some(t) if !opts.no_threshold => {
            let _ = writeln!(y, "# required_score {t} (overrides the threshold of earlier rule files)");
            let _ = writeln!(y, "threshold: {}", fmt_score(t));
        }
        _ => {}
    }
    let _ = writeln!(y, "rules:");
    for (file, rules) in &imp.rules {
        let _ = writeln!(y, "\n  # ---- {} ----", files[*file]);
        for (i, rule) in rules.iter().enumerate() {
            if i > 0 {
                y.push('\n');
            }
            let _ = writeln!(y, "  - id: {}", rule.id);
            if let Some(d) = &rule.describe {
                let _ = writeln!(y, "    describe: {}", yaml_str(d));
            }
            if let Some(h) = &rule.header {
                let _ = writeln!(y, "    header: {}", yaml_str(h));
            }
            match &rule.test {
                PTest::Regex(re) => {
                    let _ = writeln!(y, "    regex: {}", yaml_str(re));
                }
                PTest::Backtrack(re) => {
                    let _ = writeln!(y, "    regex: {}", yaml_str(re));
                    let _ = writeln!(y, "    backtrack: true");
                }
                PTest::Exists(b) => {
                    let _ = writeln!(y, "    exists: {b}");
                }
                PTest::Expr(e) => {
                    let _ = writeln!(y, "    expr: {}", yaml_str(e));
                }
            }
            if rule.negate {
                let _ = writeln!(y, "    negate: true");
            }
            if let Some(s) = rule.score {
                let _ = writeln!(y, "    score: {}", fmt_score(s));
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_files, Env};
    use super::*;

    fn run(text: &str) -> Imported {
        let mut env = Env::default_sa();
        let items = parse_files(&[text], &mut env);
        translate(&items, &["t.cf".to_string()], &Options::default())
    }
    fn rules(imp: &Imported) -> Vec<PRule> {
        imp.rules.iter().flat_map(|(_, v)| v.clone()).collect()
    }
    fn rule(imp: &Imported, id: &str) -> PRule {
        rules(imp).into_iter().find(|r| r.id == id).unwrap_or_else(|| panic!("no {id}: {imp:?}"))
    }
    fn skipped(text: &str) -> Skip {
        let imp = run(text);
        assert_eq!(imp.report.skipped.len(), 1, "{:?}", imp.report.skipped);
        imp.report.skipped[0].skip.clone()
    }

    #[test]
    fn replace_rules_substitute_tags_before_translation() {
        let imp = run("replace_tag A [aA@]\nreplace_post P {1,2}\nheader B X =~ /<post P>(?!ab)<A>b/\nreplace_rules B\nheader C X =~ /<A>/\n");
        assert_eq!(rule(&imp, "B").test, PTest::Backtrack("(?!ab)[aA@]{1,2}b".into()));
        // Only the rules replace_rules names.
        assert_eq!(rule(&imp, "C").test, PTest::Regex("<A>".into()));
    }

    #[test]
    fn header_rule_with_score_describe_and_flags() {
        let imp = run("header A Subject =~ /free/i\nscore A 1.5 2 3 4\ndescribe A Says free\n");
        let a = rule(&imp, "A");
        assert_eq!(a.header.as_deref(), Some("Subject"));
        assert_eq!(a.test, PTest::Regex("(?i)free".into()));
        assert_eq!(a.score, Some(1.5), "score set 0");
        assert_eq!(a.describe.as_deref(), Some("Says free"));
        assert_eq!(a.origin, "t.cf:1");
        assert_eq!(imp.report.imported, 1);
        assert_eq!(imp.report.translated, 0);
        assert_eq!((imp.report.header_rules, imp.report.header_imported), (1, 1));
    }

    #[test]
    fn negation_modifiers_and_pseudo_headers() {
        let imp =
            run("header A From:addr !~ /@/\nheader B ToCc =~ /x/\nheader C ALL:raw =~ /y/\nheader D exists:X-Foo\n");
        assert!(rule(&imp, "A").negate);
        assert_eq!(rule(&imp, "A").header.as_deref(), Some("From:addr"));
        assert_eq!(rule(&imp, "B").header.as_deref(), Some("ToCc"));
        assert_eq!(rule(&imp, "C").header.as_deref(), Some("ALL:raw"));
        assert_eq!(rule(&imp, "D").test, PTest::Exists(true));
        // EnvelopeFrom is derived by popsift (rules::envelope); `:name:raw` in either order.
        let imp = run(
            "header F EnvelopeFrom =~ /\\@x\\.com$/\nheader G From:name:raw =~ /y/\nheader H From:raw:name =~ /z/\n",
        );
        assert_eq!(rule(&imp, "F").header.as_deref(), Some("EnvelopeFrom"));
        assert_eq!(rule(&imp, "G").header.as_deref(), Some("From:name:raw"));
        assert_eq!(rule(&imp, "H").header.as_deref(), Some("From:name:raw"));
        let imp = run("header E exists:ToCc\n");
        assert_eq!(rule(&imp, "E").test, PTest::Expr("E__TO || E__CC".into()));
        assert_eq!(rule(&imp, "E__CC").header.as_deref(), Some("Cc"));
    }

    #[test]
    fn default_scores() {
        let imp = run("header A X =~ /a/\nheader T_B X =~ /b/\nheader C X =~ /c/\ntflags C nice\nheader __D X =~ /d/\nscore __D 3\nmeta E __D\n");
        assert_eq!(rule(&imp, "A").score, Some(1.0));
        assert_eq!(rule(&imp, "T_B").score, Some(0.01));
        assert_eq!(rule(&imp, "C").score, Some(-1.0));
        assert_eq!(rule(&imp, "__D").score, None);
    }

    #[test]
    fn unreferenced_sub_rules_are_dropped() {
        let imp = run("header __A X =~ /a/\nheader __B X =~ /b/\nheader __C X =~ /c/\nheader __D X !~ /d/\n\
                       meta __M __B && __D\nmeta N __M\nheader __U Y =~ /u/\n");
        let ids: Vec<String> = rules(&imp).into_iter().map(|r| r.id).collect();
        assert!(
            ids.contains(&"__B".to_string()) && ids.contains(&"__D".to_string()) && ids.contains(&"__M".to_string())
        );
        assert!(!ids.iter().any(|i| i == "__A" || i == "__C" || i.starts_with("__U")), "{ids:?}");
        assert_eq!(imp.report.unreferenced, 3);
        assert_eq!(imp.report.imported, 4);
    }

    #[test]
    fn redefinition_wins() {
        let imp = run("header A X =~ /a/\nheader A Y =~ /b/\n");
        assert_eq!(rules(&imp).len(), 1);
        assert_eq!(rule(&imp, "A").header.as_deref(), Some("Y"));
    }

    #[test]
    fn if_unset() {
        // Testing "" and "none" agree: one plain rule.
        let imp = run("header A X =~ /^a/ [if-unset: none]\n");
        assert_eq!(rules(&imp).len(), 1);
        // They differ: helpers and an expr.
        let imp = run("header A X =~ /^none$/ [if-unset: none]\n");
        assert_eq!(rule(&imp, "A").test, PTest::Expr("!A__SET || A__RE".into()));
        assert_eq!(rule(&imp, "A__SET").score, None);
        let imp = run("header A X !~ /^none$/ [if-unset: none]\n");
        assert_eq!(rule(&imp, "A").test, PTest::Expr("A__SET && A__RE".into()));
        assert!(rule(&imp, "A__RE").negate);
        assert_eq!(imp.report.translated, 1);
    }

    #[test]
    fn messageid() {
        let imp = run("header A MESSAGEID =~ /@foo/\n");
        assert_eq!(rule(&imp, "A").test, PTest::Expr("A__MID1 || A__MID2 || A__MID3 || A__MID4".into()));
        assert_eq!(rule(&imp, "A__MID4").header.as_deref(), Some("Message-Id"));
        let imp = run("header A MESSAGEID !~ /@/\n");
        assert!(matches!(rule(&imp, "A").test, PTest::Expr(e) if e.starts_with("!(")));
        assert!(matches!(skipped("header A MESSAGEID =~ /^$/\n"), Skip::PseudoHeader(_)));
    }

    #[test]
    fn metas() {
        let imp = run("header __A X =~ /a/\nheader __B X =~ /b/\nheader C X =~ /c/\n\
                       meta M1 __A && !(__B || C)\nmeta M2 (__A + __B + C) > 1\nmeta __M3 M1 || M2\nmeta M4 __M3\n");
        assert_eq!(rule(&imp, "M1").test, PTest::Expr("__A && !(__B || C)".into()));
        assert_eq!(rule(&imp, "M2").test, PTest::Expr("(__A + __B + C) > 1".into()));
        assert_eq!(rule(&imp, "__M3").score, None);
        assert_eq!(rule(&imp, "M4").score, Some(1.0));
    }

    #[test]
    fn every_skip_reason() {
        assert_eq!(skipped("body B /x/\n"), Skip::NotHeader("body".into()));
        assert_eq!(skipped("uri B /x/\n"), Skip::NotHeader("uri".into()));
        assert_eq!(skipped("askdns B _SENDERDOMAIN_ A 1.2.3.4\n"), Skip::Network);
        assert_eq!(skipped("header B X =~ /x/\ntflags B net\n"), Skip::Network);
        assert_eq!(skipped("header B eval:check_for_x()\n"), Skip::Eval);
        assert!(matches!(skipped("header B X-Spam-Relays-External =~ /x/\n"), Skip::PseudoHeader(_)));
        assert!(matches!(skipped("header B exists:EnvelopeFrom\n"), Skip::PseudoHeader(_)));
        assert!(matches!(skipped("header B EnvelopeFrom =~ /x/ [if-unset: x]\n"), Skip::PseudoHeader(_)));
        assert!(matches!(skipped("header B EnvelopeFrom:name =~ /x/\n"), Skip::Modifier(_)));
        assert!(matches!(skipped("header B From:name:addr =~ /x/\n"), Skip::Modifier(_)));
        assert!(matches!(skipped("header B From:first:addr =~ /x/\n"), Skip::Modifier(_)));
        assert!(matches!(skipped("header B ALL:addr =~ /x/\n"), Skip::Modifier(_)));
        assert!(matches!(skipped("header B X =~ /a(?{ 1 })/\n"), Skip::Regex(_)));
        let imp = run("header B X =~ /a(?!b)/\n");
        assert_eq!(rule(&imp, "B").test, PTest::Backtrack("a(?!b)".into()));
        assert_eq!(imp.report.translated, 1);
        let mut env = Env::default_sa();
        let items = parse_files(&["header B X =~ /a(?!b)/\n"], &mut env);
        let imp = translate(&items, &["t.cf".into()], &Options { no_backtrack: true, ..Options::default() });
        assert_eq!(imp.report.skipped[0].skip, Skip::Regex("look-ahead".into()));
        assert_eq!(skipped("header B X =~ /a/\nscore B 0\n"), Skip::Disabled);
        assert_eq!(skipped("meta B 0\n"), Skip::Disabled);
        let imp = run("body __A /x/\nmeta B __A && 1\n");
        assert_eq!(imp.report.skipped[1].skip, Skip::MetaDependency("__A".into()));
        assert_eq!(skipped("meta B __NOPE\n"), Skip::MetaUndefined("__NOPE".into()));
        let imp = run("header __A X =~ /a/\nmeta B __A * 2\n");
        assert!(matches!(&imp.report.skipped[0].skip, Skip::MetaExpr(m) if m.contains('*')));
        let imp = run("header __A X =~ /a/\nmeta B rules_matching(__A)\n");
        assert!(matches!(&imp.report.skipped[0].skip, Skip::MetaExpr(m) if m.contains("function")));
        let imp = run("meta A B\nmeta B A\n");
        assert_eq!(imp.report.skipped.len(), 2);
        assert!(imp.report.skipped.iter().all(|s| matches!(&s.skip, Skip::MetaExpr(m) if m.contains("loop"))));
        let imp = run("header __A X =~ /a/\ntflags __A multiple\nmeta B __A > 1\n");
        assert_eq!(imp.report.skipped[0].skip, Skip::MetaMultiple("__A".into()));
        assert!(matches!(skipped("score X lots\n"), Skip::Bad(_)));
        assert_eq!(skipped("header B X =~ /a/\nscore B 0\n").reason(), "disabled (score 0 in set 0, or meta 0)");
    }

    #[test]
    fn yaml_is_deterministic_and_loads() {
        let text = "required_score 5\nheader A Subject =~ /it's/i\ndescribe A Quote ' here\nscore A 2\n\
                    header __B From =~ /x\\ty/\nmeta C A && __B\nheader D X =~ /^none$/ [if-unset: none]\n";
        let imp = run(text);
        let files = vec!["t.cf".to_string()];
        let y = to_yaml(&imp, &files, &Options::default());
        assert_eq!(y, to_yaml(&run(text), &files, &Options::default()));
        assert!(y.contains("threshold: 5.0"), "{y}");
        assert!(y.contains("describe: 'Quote '' here'"), "{y}");
        let set = crate::rules::compile::load_str(
            std::path::Path::new("/tmp/x/60-sa.yaml"),
            &y,
            &crate::rules::EngineOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{y}"));
        assert_eq!(set.len(), 6);
        let v = set.evaluate(b"Subject: IT'S here\nFrom: x\ty\n\n", 10);
        let hit: Vec<&str> = v.rules.iter().map(|r| r.as_ref()).collect();
        assert_eq!(hit, ["A", "C", "D"]);
        let no = to_yaml(&imp, &files, &Options { no_threshold: true, ..Options::default() });
        assert!(!no.contains("threshold:"));
    }
}
