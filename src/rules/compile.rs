//! Loading and compiling rule files into an immutable [`RuleSet`].
//!
//! Per distinct header target (`Subject`, `From:addr`, `ALL`, …) all regexes become one
//! [`MultiRegex`] (a literal prefilter over every pattern plus one multi-pattern automaton for
//! the patterns without literals), all keywords one case-insensitive Aho-Corasick automaton,
//! and all `domain_in`/`address_in` entries one hash map from entry to rules. Evaluation therefore costs one pass per target, not one per rule.
//! Every error of every file is collected before giving up.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::multiregex::{build_regex_set, MultiRegex};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use super::error::{ErrorKind, RuleError, RuleErrors};
use super::expr::{self, Expr, Name};
use super::lists::{self, ListCache};
use super::schema::{self, FastFileDef, FileDef, Locator, RuleDef};
use super::{Action, EngineOptions, RuleSet};

/// Which header(s) a rule reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// One header by lowercase name.
    Named(String),
    /// The whole header block, one `Name: value` per line.
    All,
    /// `To` and `Cc` together.
    ToCc,
    /// The envelope sender as SpamAssassin derives it from the header block
    /// ([`super::envelope`]).
    EnvelopeFrom,
}

/// How the value is presented to the matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// Unfolded and RFC 2047-decoded (the default).
    Decoded,
    /// Unfolded, not decoded.
    Raw,
    /// Only the addresses, one per line.
    Addr,
    /// Only the display names, one per line.
    Name,
    /// Only the display names, not RFC 2047-decoded (`:name:raw`).
    NameRaw,
}

/// A `header:` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub source: Source,
    pub form: Form,
}

/// Parses `Subject`, `From:addr`, `ToCc:name`, `From:name:raw`, `ALL`, `Received:raw`,
/// `EnvelopeFrom`.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let s = s.trim();
    let name_raw = s.len() > 9 && s.is_char_boundary(s.len() - 9) && s[s.len() - 9..].eq_ignore_ascii_case(":name:raw");
    let (name, form) = match s.rsplit_once(':') {
        _ if name_raw => (s[..s.len() - 9].trim(), Form::NameRaw),
        Some((n, m)) => {
            let form = match m.trim().to_ascii_lowercase().as_str() {
                "addr" => Form::Addr,
                "name" => Form::Name,
                "raw" => Form::Raw,
                other => return Err(format!("unknown modifier `:{other}` (expected :addr, :name or :raw)")),
            };
            (n.trim(), form)
        }
        None => (s, Form::Decoded),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(format!("bad header name {name:?}"));
    }
    let source = if name == "ALL" {
        if matches!(form, Form::Addr | Form::Name | Form::NameRaw) {
            return Err("ALL takes no :addr or :name modifier".into());
        }
        Source::All
    } else if name == "EnvelopeFrom" {
        if matches!(form, Form::Name | Form::NameRaw) {
            return Err("EnvelopeFrom is an address: no :name modifier".into());
        }
        Source::EnvelopeFrom
    } else if name.eq_ignore_ascii_case("ToCc") {
        Source::ToCc
    } else {
        Source::Named(name.to_ascii_lowercase())
    };
    Ok(Target { source, form })
}

/// What a rule tests, after compiling.
#[derive(Debug)]
pub(crate) enum Cond {
    /// Matched through its target's grouped matchers.
    Header,
    Exists,
    Size,
    Expr,
    /// A `bayes:` probability band.
    Bayes,
}

/// One rule's metadata.
#[derive(Debug)]
pub(crate) struct Rule {
    pub id: Arc<str>,
    pub describe: Option<String>,
    pub score: Option<f64>,
    pub action: Option<Action>,
    pub negate: bool,
    #[allow(dead_code)]
    pub cond: Cond,
}

impl Rule {
    /// Whether the rule shows up in verdicts (it has a score or an action).
    pub fn reported(&self) -> bool {
        self.score.is_some() || self.action.is_some()
    }
}

/// Keyword matcher for one target.
#[derive(Debug)]
pub(crate) struct Keywords {
    pub ac: AhoCorasick,
    /// Per pattern: the rules using it and whether each wants whole words.
    pub owners: Vec<Vec<(u32, bool)>>,
    /// Some keyword is non-ASCII: the haystack is lowercased (Unicode) before searching.
    pub lowercase: bool,
}

impl Keywords {
    /// The text the automaton searches: lowercased when some keyword needs it (one home for
    /// the evaluation and its explanation, so both search the same bytes).
    pub fn haystack<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        if self.lowercase {
            std::borrow::Cow::Owned(text.to_lowercase())
        } else {
            std::borrow::Cow::Borrowed(text)
        }
    }
}

/// Everything that reads one target.
#[derive(Debug)]
pub(crate) struct TargetMatcher {
    pub target: Target,
    pub regex: Option<(MultiRegex, Vec<Vec<u32>>)>,
    pub keywords: Option<Keywords>,
    pub domains: HashMap<String, Vec<u32>>,
    pub addresses: HashMap<String, Vec<u32>>,
}

/// Builder state for one target.
#[derive(Default)]
struct TargetBuild {
    regex: Vec<(String, Vec<u32>)>,
    regex_idx: HashMap<String, usize>,
    keywords: Vec<(String, Vec<(u32, bool)>)>,
    keyword_idx: HashMap<String, usize>,
    domains: HashMap<String, Vec<u32>>,
    addresses: HashMap<String, Vec<u32>>,
}

/// Where a rule was defined: (file index, rule index in file, line, column of its id).
#[derive(Debug, Clone)]
struct Origin {
    file: usize,
    item: usize,
}

struct Loader<'a> {
    opts: &'a EngineOptions,
    errors: Vec<RuleError>,
    files: Vec<(PathBuf, Locator)>,
    lists: ListCache,
    rules: Vec<Rule>,
    origins: Vec<Origin>,
    ids: HashMap<Arc<str>, u32>,
    targets: Vec<(Target, TargetBuild)>,
    exists: Vec<(String, bool, u32)>,
    sizes: Vec<(u64, u32)>,
    bayes: Vec<(f64, f64, u32)>,
    exprs: Vec<(u32, Expr<Name>)>,
    backtrack: Vec<(Target, super::backtrack::Backtrack, u32)>,
    threshold: Option<f64>,
}

/// Lists the rule files for `path`: the file itself, or a directory's `*.yaml`/`*.yml`
/// in file-name order. Entries that are not directories are listed even when they are not
/// regular files (a FIFO, a dangling symlink), so reading them reports why they are refused
/// instead of skipping them silently.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let io_err = |e: std::io::Error| RuleError {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        rule: None,
        kind: ErrorKind::Io,
        message: format!("cannot read: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if (name.ends_with(".yaml") || name.ends_with(".yml")) && !p.is_dir() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

impl<'a> Loader<'a> {
    /// A loader for the rules tree `tree` (list files must lie inside it, see
    /// [`lists::read_guarded`]).
    fn new(opts: &'a EngineOptions, tree: PathBuf) -> Loader<'a> {
        Loader {
            opts,
            errors: Vec::new(),
            files: Vec::new(),
            lists: ListCache::new(tree),
            rules: Vec::new(),
            origins: Vec::new(),
            ids: HashMap::new(),
            targets: Vec::new(),
            exists: Vec::new(),
            sizes: Vec::new(),
            bayes: Vec::new(),
            exprs: Vec::new(),
            backtrack: Vec::new(),
            threshold: None,
        }
    }
}

/// Loads and compiles a rule file or directory.
pub fn load(path: &Path, opts: &EngineOptions) -> Result<RuleSet, RuleErrors> {
    let started = std::time::Instant::now();
    let files = rule_files(path).map_err(|e| RuleErrors(vec![e]))?;
    // The tree is where the given path really is: a rule file named on the command line may
    // be a symlink; files and lists it uses must lie beside its target.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let tree = lists::tree_of(&real);
    let mut set = load_layers(&[Layer { tree, files: files.clone() }], None, opts)?;
    tracing::debug!(total_ms = started.elapsed().as_secs_f64() * 1e3, rules = set.len(), "rules compiled");
    let mut sources = files;
    set.files = sources.len();
    sources.sort();
    set.sources = sources;
    Ok(set)
}

/// One layer of a layered load: rule files that all belong to one rules tree (list files and
/// symlink targets must lie inside `tree`, see [`lists::read_guarded`]).
#[derive(Debug, Clone)]
pub struct Layer {
    pub tree: PathBuf,
    pub files: Vec<PathBuf>,
}

/// Loads several layers as one set, in order (the global rules, then a mailbox's own files,
/// see [`super::users`]): ids are unique across all of them and the last `threshold` wins.
/// `extra` is YAML text compiled last, as if read from the given path in the last layer's tree
/// (the rules a mailbox's allowlist file turns into).
pub fn load_layers(
    layers: &[Layer],
    extra: Option<(&Path, &str)>,
    opts: &EngineOptions,
) -> Result<RuleSet, RuleErrors> {
    let first_tree = layers.first().map(|l| l.tree.clone()).unwrap_or_else(|| PathBuf::from("."));
    let mut l = Loader::new(opts, first_tree);
    for layer in layers {
        l.lists.set_tree(layer.tree.clone());
        for f in &layer.files {
            match lists::read_guarded(f, &layer.tree, lists::RULE_FILE_LIMIT) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    l.load_text(f, &text);
                }
                Err(message) => l.errors.push(RuleError {
                    path: f.clone(),
                    line: 1,
                    column: 1,
                    rule: None,
                    kind: ErrorKind::Io,
                    message,
                }),
            }
        }
    }
    if let Some((path, text)) = extra {
        l.load_text(path, text);
    }
    let set = l.finish()?;
    Ok(set)
}

/// Compiles rules from YAML text, as if read from `path` (list paths resolve against it).
pub fn load_str(path: &Path, text: &str, opts: &EngineOptions) -> Result<RuleSet, RuleErrors> {
    let mut l = Loader::new(opts, lists::tree_of(path));
    l.load_text(path, text);
    let mut set = l.finish()?;
    set.files = 1;
    Ok(set)
}

/// Strips serde_norway's ` at line X column Y` suffix (we print the position first).
fn strip_position(msg: &str) -> String {
    static POSITION: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    match POSITION.get_or_init(|| regex::Regex::new(r" at line \d+ column \d+").ok()) {
        Some(re) => re.replace_all(msg, "").into_owned(),
        None => msg.to_string(),
    }
}

/// For an error about a whole file (it is not a mapping of `threshold`/`rules`): removes
/// anything of the file's contents beyond a field name. When a file is not YAML rules at all
/// (a symlink to some other file) serde quotes its first lines, as the value of
/// `invalid type: string "…"` or as the key of `unknown field `…``, and an error must not
/// echo a file. Quoted strings are dropped; a quoted field or variant name stays only when it
/// looks like one (a short identifier: a typo worth showing). Errors inside a rule keep their
/// quoted value: it is the offending token (`score: invalid type: string "lots"`).
fn redact_contents(msg: &str) -> String {
    type Res = (regex::Regex, regex::Regex);
    static RES: std::sync::OnceLock<Option<Res>> = std::sync::OnceLock::new();
    let res = RES.get_or_init(|| {
        let quoted =
            regex::Regex::new(r#"(invalid (?:type|value|length): (?:string|byte array)) "(?:[^"\\]|\\.)*""#).ok()?;
        let token = regex::Regex::new(r"unknown (field|variant) `([^`]*)`").ok()?;
        Some((quoted, token))
    });
    let Some((quoted, token)) = res else { return "not a rule file".to_string() };
    let m = quoted.replace_all(msg, "$1");
    token
        .replace_all(&m, |c: &regex::Captures| {
            let t = &c[2];
            let name_like = !t.is_empty()
                && t.len() <= 40
                && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if name_like {
                c[0].to_string()
            } else {
                format!("unknown {} (not shown: not a {} name)", &c[1], &c[1])
            }
        })
        .into_owned()
}

/// The last line of a regex-syntax error (`error: unclosed group` → `unclosed group`).
fn syntax_message(e: &regex_syntax::Error) -> String {
    let s = e.to_string();
    let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&s).trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

impl Loader<'_> {
    fn err(&mut self, file: usize, pos: (usize, usize), rule: Option<&str>, kind: ErrorKind, msg: String) {
        self.errors.push(RuleError {
            path: self.files[file].0.clone(),
            line: pos.0,
            column: pos.1,
            rule: rule.map(str::to_string),
            kind,
            message: msg,
        });
    }

    fn load_text(&mut self, path: &Path, text: &str) {
        let file = self.files.len();
        self.files.push((path.to_path_buf(), Locator::new(text)));
        // Fast path: the whole file at once. Only when that fails is it read rule by rule
        // (slower, but then every rule's errors are found).
        if let Ok(fast) = serde_norway::from_str::<FastFileDef>(text) {
            if let Some(t) = fast.threshold {
                if !t.is_finite() {
                    self.err(file, (1, 1), None, ErrorKind::Schema, "threshold: must be a number".into());
                }
                self.threshold = Some(t);
            }
            for (item, rd) in fast.rules.into_iter().enumerate() {
                self.add_rule(file, item, rd);
            }
            return;
        }
        let def: FileDef = if text.trim().is_empty() {
            FileDef { threshold: None, rules: Vec::new() }
        } else {
            match serde_norway::from_str(text) {
                Ok(d) => d,
                Err(e) => {
                    let pos = e.location().map(|l| (l.line(), l.column())).unwrap_or((1, 1));
                    let msg = e.to_string();
                    let kind = if msg.contains("unknown field") { ErrorKind::UnknownField } else { ErrorKind::Yaml };
                    let loc = &self.files[file].1;
                    let rule = loc.rule_at_line(pos.0).and_then(|i| loc.id_of(i));
                    self.err(file, pos, rule.as_deref(), kind, redact_contents(&strip_position(&msg)));
                    return;
                }
            }
        };
        if let Some(t) = def.threshold {
            if !t.is_finite() {
                self.err(file, (1, 1), None, ErrorKind::Schema, "threshold: must be a number".into());
            }
            self.threshold = Some(t);
        }
        for (item, value) in def.rules.into_iter().enumerate() {
            let id_hint = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
            let culprit = find_culprit(&value);
            match serde_norway::from_value::<RuleDef>(value) {
                Ok(rd) => self.add_rule(file, item, rd),
                Err(e) => {
                    let msg = strip_position(&e.to_string());
                    let loc = &self.files[file].1;
                    let (kind, pos) =
                        if let Some(field) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
                            (ErrorKind::UnknownField, loc.field_key(item, field))
                        } else if msg.starts_with("missing field") {
                            (ErrorKind::Schema, loc.rule_start(item))
                        } else if let Some(field) = &culprit {
                            // Type errors don't name the field: found by trying fields one by one.
                            let m = format!("{field}: {msg}");
                            self.err(file, loc.field_value(item, field), id_hint.as_deref(), ErrorKind::Yaml, m);
                            continue;
                        } else {
                            (ErrorKind::Yaml, loc.rule_start(item))
                        };
                    self.err(file, pos, id_hint.as_deref(), kind, msg);
                }
            }
        }
    }

    fn add_rule(&mut self, file: usize, item: usize, rd: RuleDef) {
        let errors_before = self.errors.len();
        let id: Arc<str> = Arc::from(rd.id.as_str());
        let rule_id = rd.id.clone();
        let e = |this: &mut Self, field: &str, kind: ErrorKind, msg: String| {
            let pos = this.files[file].1.field_value(item, field);
            this.err(file, pos, Some(&rule_id), kind, msg);
        };
        if rd.id.is_empty() || !rd.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        {
            e(self, "id", ErrorKind::Schema, "id: use letters, digits, `_`, `.` and `-` only".into());
        }
        if let Some(&prev) = self.ids.get(&id) {
            let o = self.origins[prev as usize].clone();
            let (pl, pc) = self.files[o.file].1.field_value(o.item, "id");
            let ppath = self.files[o.file].0.display().to_string();
            self.err(
                file,
                self.files[file].1.field_value(item, "id"),
                Some(&rule_id),
                ErrorKind::DuplicateId,
                format!("duplicate id (first defined at {ppath}:{pl}:{pc})"),
            );
            return;
        }
        // Exactly one condition.
        let conds: Vec<&str> = [
            ("regex", rd.regex.is_some()),
            ("keywords", rd.keywords.is_some() || rd.keywords_file.is_some()),
            ("domain_in", rd.domain_in.is_some()),
            ("address_in", rd.address_in.is_some()),
            ("exists", rd.exists.is_some()),
            ("size_over", rd.size_over.is_some()),
            ("expr", rd.expr.is_some()),
            ("bayes", rd.bayes.is_some()),
        ]
        .iter()
        .filter(|c| c.1)
        .map(|c| c.0)
        .collect();
        if conds.is_empty() {
            e(
                self,
                "id",
                ErrorKind::Schema,
                "no condition: give one of regex, keywords, keywords_file, domain_in, address_in, exists, size_over, expr, bayes".into(),
            );
            return;
        }
        if conds.len() > 1 {
            e(
                self,
                conds[1],
                ErrorKind::Schema,
                format!("{} and {} in one rule: split it into two rules (and join them with expr)", conds[0], conds[1]),
            );
            return;
        }
        let cond = conds[0];
        if rd.backtrack.is_some() && cond != "regex" {
            e(self, "backtrack", ErrorKind::Schema, "backtrack: only for regex".into());
        }
        if rd.whole_word.is_some() && cond != "keywords" {
            e(self, "whole_word", ErrorKind::Schema, "whole_word: only for keywords".into());
        }
        let needs_header = matches!(cond, "regex" | "keywords" | "domain_in" | "address_in" | "exists");
        let target = match (&rd.header, needs_header) {
            (None, true) => {
                e(self, "id", ErrorKind::Schema, format!("{cond} needs a header: field"));
                None
            }
            (Some(_), false) => {
                e(self, "header", ErrorKind::Schema, format!("header: not used by {cond}"));
                None
            }
            (Some(h), true) => match parse_target(h) {
                Ok(t) => Some(t),
                Err(m) => {
                    e(self, "header", ErrorKind::Header, format!("header: {m}"));
                    None
                }
            },
            (None, false) => None,
        };
        if let Some(s) = rd.score {
            if !s.is_finite() {
                e(self, "score", ErrorKind::Schema, "score: must be a finite number".into());
            }
        }
        if self.errors.len() > errors_before {
            return;
        }
        let idx = self.rules.len() as u32;
        let path = self.files[file].0.clone();
        let compiled_cond = match cond {
            "regex" if rd.backtrack == Some(true) => {
                let pat = rd.regex.clone().unwrap_or_default();
                match super::backtrack::build(&pat) {
                    Ok(re) => {
                        let Some(t) = target else { return };
                        self.backtrack.push((t, re, idx));
                    }
                    Err(m) => {
                        e(self, "regex", ErrorKind::Regex, format!("regex: {m}"));
                        return;
                    }
                }
                Cond::Header
            }
            "regex" => {
                let pat = rd.regex.clone().unwrap_or_default();
                // Validate alone for a precise message (the set would only say "some pattern").
                // Parsing (not compiling) is enough to catch syntax errors and is cheap; the
                // set build below catches the rest (size limits).
                if let Err(err) = regex_syntax::ParserBuilder::new().build().parse(&pat) {
                    e(self, "regex", ErrorKind::Regex, format!("regex: {}", syntax_message(&err)));
                    return;
                }
                let Some(t) = target else { return };
                let tb = self.target(t);
                match tb.regex_idx.get(&pat) {
                    Some(&i) => tb.regex[i].1.push(idx),
                    None => {
                        tb.regex_idx.insert(pat.clone(), tb.regex.len());
                        tb.regex.push((pat, vec![idx]));
                    }
                }
                Cond::Header
            }
            "keywords" => {
                let mut words: Vec<String> = rd.keywords.clone().unwrap_or_default();
                if let Some(kf) = &rd.keywords_file {
                    let p = lists::resolve(&path, kf);
                    match self.lists.get(&p) {
                        Ok(v) => words.extend(v.iter().cloned()),
                        Err(m) => {
                            e(self, "keywords_file", ErrorKind::List, format!("keywords_file: {m}"));
                            return;
                        }
                    }
                }
                if words.is_empty() || words.iter().any(|w| w.is_empty()) {
                    let f = if rd.keywords.is_some() { "keywords" } else { "keywords_file" };
                    e(self, f, ErrorKind::Keywords, format!("{f}: empty keyword list or empty keyword"));
                    return;
                }
                let ww = rd.whole_word.unwrap_or(false);
                let Some(t) = target else { return };
                let tb = self.target(t);
                for w in words {
                    let key = w.to_lowercase();
                    match tb.keyword_idx.get(&key) {
                        Some(&i) => {
                            if !tb.keywords[i].1.contains(&(idx, ww)) {
                                tb.keywords[i].1.push((idx, ww))
                            }
                        }
                        None => {
                            tb.keyword_idx.insert(key.clone(), tb.keywords.len());
                            tb.keywords.push((key, vec![(idx, ww)]));
                        }
                    }
                }
                Cond::Header
            }
            "domain_in" | "address_in" => {
                let field = cond;
                let list = if cond == "domain_in" { rd.domain_in.clone() } else { rd.address_in.clone() };
                let p = lists::resolve(&path, &list.unwrap_or_default());
                let entries: Vec<String> = match self.lists.get(&p) {
                    Ok(v) => v.to_vec(),
                    Err(m) => {
                        e(self, field, ErrorKind::List, format!("{field}: {m}"));
                        return;
                    }
                };
                let Some(t) = target else { return };
                if matches!(t.form, Form::Name | Form::NameRaw) || t.source == Source::All {
                    e(
                        self,
                        "header",
                        ErrorKind::Header,
                        format!("header: {field} needs addresses (use a header without :name, not ALL)"),
                    );
                    return;
                }
                let tb = self.target(t);
                let map = if cond == "domain_in" { &mut tb.domains } else { &mut tb.addresses };
                for en in entries {
                    let key = if cond == "domain_in" { lists::normalize_domain(&en) } else { en.to_ascii_lowercase() };
                    if key.is_empty() {
                        continue;
                    }
                    let v = map.entry(key).or_default();
                    if !v.contains(&idx) {
                        v.push(idx);
                    }
                }
                Cond::Header
            }
            "exists" => {
                let Some(t) = target else { return };
                let name = match t.source {
                    Source::Named(n) => n,
                    _ => {
                        e(self, "header", ErrorKind::Header, "header: exists needs one header name".into());
                        return;
                    }
                };
                self.exists.push((name, rd.exists.unwrap_or(true), idx));
                Cond::Exists
            }
            "size_over" => {
                let v = rd.size_over.clone().unwrap_or(serde_norway::Value::Null);
                match schema::parse_size(&v) {
                    Ok(n) => self.sizes.push((n, idx)),
                    Err(m) => {
                        e(self, "size_over", ErrorKind::Size, format!("size_over: {m}"));
                        return;
                    }
                }
                Cond::Size
            }
            "bayes" => {
                match schema::parse_band(rd.bayes.as_deref().unwrap_or_default()) {
                    Ok((lo, hi)) => self.bayes.push((lo, hi, idx)),
                    Err(m) => {
                        e(self, "bayes", ErrorKind::Schema, format!("bayes: {m}"));
                        return;
                    }
                }
                Cond::Bayes
            }
            _ => {
                let src = rd.expr.clone().unwrap_or_default();
                match expr::parse(&src) {
                    Ok(x) => self.exprs.push((idx, x)),
                    Err(xe) => {
                        let (l, c) = self.files[file].1.field_value(item, "expr");
                        let c = c + quote_offset(&self.files[file].1, l, c) + xe.offset;
                        self.err(file, (l, c), Some(&rule_id), ErrorKind::Expr, format!("expr: {}", xe.message));
                        return;
                    }
                }
                Cond::Expr
            }
        };
        self.ids.insert(id.clone(), idx);
        self.origins.push(Origin { file, item });
        self.rules.push(Rule {
            id,
            describe: rd.describe,
            score: rd.score,
            action: rd.action,
            negate: rd.negate,
            cond: compiled_cond,
        });
    }

    fn target(&mut self, t: Target) -> &mut TargetBuild {
        let i = match self.targets.iter().position(|(x, _)| *x == t) {
            Some(i) => i,
            None => {
                self.targets.push((t, TargetBuild::default()));
                self.targets.len() - 1
            }
        };
        &mut self.targets[i].1
    }

    fn finish(mut self) -> Result<RuleSet, RuleErrors> {
        // Resolve expressions.
        let mut resolved: Vec<(u32, Expr<u32>)> = Vec::new();
        let exprs = std::mem::take(&mut self.exprs);
        for (idx, x) in &exprs {
            let o = self.origins[*idx as usize].clone();
            let id = self.rules[*idx as usize].id.to_string();
            let mut ok = true;
            for (name, off) in x.names() {
                if !self.ids.contains_key(name.as_str()) {
                    ok = false;
                    let (l, c) = self.files[o.file].1.field_value(o.item, "expr");
                    let c = c + quote_offset(&self.files[o.file].1, l, c) + off;
                    self.err(o.file, (l, c), Some(&id), ErrorKind::UnknownId, format!("expr: unknown rule id {name}"));
                }
            }
            if ok {
                let ids = &self.ids;
                if let Some(r) = x.resolve(&|n| ids.get(n).copied()) {
                    resolved.push((*idx, r));
                }
            }
        }
        let order = self.topo_order(&resolved);
        if !self.errors.is_empty() {
            // Sort by file order, then position.
            let file_order: HashMap<PathBuf, usize> =
                self.files.iter().enumerate().map(|(i, f)| (f.0.clone(), i)).collect();
            self.errors.sort_by_key(|e| (file_order.get(&e.path).copied().unwrap_or(0), e.line, e.column));
            return Err(RuleErrors(self.errors));
        }
        let n_rules = self.rules.len();
        let mut targets = Vec::new();
        let mut errors = Vec::new();
        // Targets compile independently: build them on all cores (compiling 10k regexes is
        // the slow part of a load).
        let built: Vec<Result<TargetMatcher, BuildError>> = {
            let work = std::mem::take(&mut self.targets);
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(work.len().max(1));
            let mut chunks: Vec<Vec<(usize, Target, TargetBuild)>> = (0..threads).map(|_| Vec::new()).collect();
            for (i, (t, tb)) in work.into_iter().enumerate() {
                chunks[i % threads].push((i, t, tb));
            }
            let mut results: Vec<(usize, Result<TargetMatcher, BuildError>)> = std::thread::scope(|sc| {
                let hs: Vec<_> = chunks
                    .into_iter()
                    .map(|c| {
                        sc.spawn(move || {
                            c.into_iter().map(|(i, t, tb)| (i, build_target(t, tb, n_rules))).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                hs.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
            });
            results.sort_by_key(|r| r.0);
            results.into_iter().map(|r| r.1).collect()
        };
        for b in built {
            match b {
                Ok(m) => targets.push(m),
                Err((rule, m)) => {
                    let kind = if m.starts_with("keywords") { ErrorKind::Keywords } else { ErrorKind::Regex };
                    let field = if kind == ErrorKind::Keywords { "keywords" } else { "regex" };
                    let (path, pos, id) = match rule.and_then(|r| self.origins.get(r as usize).map(|o| (r, o))) {
                        Some((r, o)) => (
                            self.files[o.file].0.clone(),
                            self.files[o.file].1.field_value(o.item, field),
                            Some(self.rules[r as usize].id.to_string()),
                        ),
                        None => (self.files.first().map(|f| f.0.clone()).unwrap_or_default(), (1, 1), None),
                    };
                    errors.push(RuleError { path, line: pos.0, column: pos.1, rule: id, kind, message: m });
                }
            }
        }
        if !errors.is_empty() {
            return Err(RuleErrors(errors));
        }
        // Backtracking rules get their final value (negation included) when they run.
        let backtracking: std::collections::HashSet<u32> = self.backtrack.iter().map(|b| b.2).collect();
        let negated: Vec<u32> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                r.negate && !matches!(r.cond, Cond::Expr | Cond::Bayes) && !backtracking.contains(&(*i as u32))
            })
            .map(|(i, _)| i as u32)
            .collect();
        // Rules that only feed `expr:` rules run when one of those needs their value.
        let mut deferred = vec![None; self.rules.len()];
        for (i, b) in self.backtrack.iter().enumerate() {
            if self.rules.get(b.2 as usize).is_some_and(|r| !r.reported()) {
                deferred[b.2 as usize] = Some(super::eval::Deferred::Backtrack(i as u32));
            }
        }
        for (i, (r, _)) in order.iter().enumerate() {
            if self.rules.get(*r as usize).is_some_and(|r| !r.reported()) {
                deferred[*r as usize] = Some(super::eval::Deferred::Expr(i as u32));
            }
        }
        let mut list_paths: Vec<PathBuf> = self.lists.paths().cloned().collect();
        list_paths.sort();
        Ok(RuleSet {
            rules: self.rules,
            targets,
            exists: self.exists,
            sizes: self.sizes,
            bayes: self.bayes,
            negated,
            exprs: order,
            backtrack: self.backtrack,
            deferred,
            threshold: self.threshold.unwrap_or(super::DEFAULT_THRESHOLD),
            spam_action: self.opts.spam_action,
            files: self.files.len(),
            sources: self.files.iter().map(|f| f.0.clone()).collect(),
            list_files: list_paths,
        })
    }

    /// Orders expr rules so each comes after the expr rules it uses; reports cycles.
    fn topo_order(&mut self, exprs: &[(u32, Expr<u32>)]) -> Vec<(u32, Expr<u32>)> {
        let pos: HashMap<u32, usize> = exprs.iter().enumerate().map(|(i, (r, _))| (*r, i)).collect();
        // 0 = unvisited, 1 = on stack, 2 = done.
        let mut state = vec![0u8; exprs.len()];
        let mut order: Vec<usize> = Vec::new();
        let mut reported = std::collections::HashSet::new();
        for start in 0..exprs.len() {
            if state[start] != 0 {
                continue;
            }
            // Iterative DFS: stack of (node, deps, next dep index).
            let mut stack: Vec<(usize, Vec<usize>, usize)> = Vec::new();
            let deps_of = |i: usize| {
                let mut d = Vec::new();
                exprs[i].1.deps(&mut d);
                d.into_iter().filter_map(|r| pos.get(&r).copied()).collect::<Vec<_>>()
            };
            state[start] = 1;
            stack.push((start, deps_of(start), 0));
            while let Some(top) = stack.last_mut() {
                if top.2 < top.1.len() {
                    let next = top.1[top.2];
                    top.2 += 1;
                    match state[next] {
                        0 => {
                            state[next] = 1;
                            let d = deps_of(next);
                            stack.push((next, d, 0));
                        }
                        1 => {
                            // Cycle: from `next` up the stack.
                            let from = stack.iter().position(|s| s.0 == next).unwrap_or(0);
                            let cyc: Vec<usize> = stack[from..].iter().map(|s| s.0).collect();
                            let key = *cyc.iter().min().unwrap_or(&next);
                            if reported.insert(key) {
                                let mut names: Vec<String> =
                                    cyc.iter().map(|&i| self.rules[exprs[i].0 as usize].id.to_string()).collect();
                                names.push(names[0].clone());
                                let first = exprs[cyc[0]].0 as usize;
                                let o = self.origins[first].clone();
                                let pos = self.files[o.file].1.field_value(o.item, "expr");
                                let id = self.rules[first].id.to_string();
                                self.err(
                                    o.file,
                                    pos,
                                    Some(&id),
                                    ErrorKind::Cycle,
                                    format!("expr: cycle {}", names.join(" -> ")),
                                );
                            }
                        }
                        _ => {}
                    }
                } else {
                    state[top.0] = 2;
                    order.push(top.0);
                    stack.pop();
                }
            }
        }
        order.into_iter().map(|i| exprs[i].clone()).collect()
    }
}

/// For a rule that fails to deserialize, the first field that fails on its own.
fn find_culprit(value: &serde_norway::Value) -> Option<String> {
    let map = value.as_mapping()?;
    for (k, v) in map {
        let key = k.as_str()?;
        if key == "id" {
            continue;
        }
        let mut m = serde_norway::Mapping::new();
        m.insert("id".into(), "X".into());
        m.insert(k.clone(), v.clone());
        if let Err(e) = serde_norway::from_value::<RuleDef>(serde_norway::Value::Mapping(m)) {
            if !e.to_string().starts_with("unknown field") {
                return Some(key.to_string());
            }
        }
    }
    None
}

/// Column offset of an expr's text inside its YAML scalar: 1 when the value is quoted.
fn quote_offset(loc: &Locator, line: usize, col: usize) -> usize {
    match loc.char_at(line, col) {
        Some('"') | Some('\'') => 1,
        _ => 0,
    }
}

/// A target that failed to build: the rule to blame (when known) and the message.
type BuildError = (Option<u32>, String);

fn build_target(target: Target, tb: TargetBuild, n_rules: usize) -> Result<TargetMatcher, BuildError> {
    let regex = if tb.regex.is_empty() {
        None
    } else {
        let pats: Vec<&str> = tb.regex.iter().map(|p| p.0.as_str()).collect();
        // The lazy DFA cache grows with the number of patterns so thousands of them don't
        // thrash it (a thrashing lazy DFA falls back to the much slower PikeVM).
        let cache = (4usize << 20).saturating_add(pats.len().saturating_mul(8 << 10)).min(256 << 20);
        let set = build_regex_set(&pats, cache).map_err(|(pat, e)| {
            let rule = pat.and_then(|p| tb.regex.get(p)).and_then(|p| p.1.first().copied());
            let rule = rule.or_else(|| tb.regex.first().and_then(|p| p.1.first().copied()));
            (rule, format!("regex: {e}"))
        })?;
        Some((set, tb.regex.into_iter().map(|p| p.1).collect()))
    };
    let keywords = if tb.keywords.is_empty() {
        None
    } else {
        let lowercase = tb.keywords.iter().any(|k| !k.0.is_ascii());
        let ac = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(tb.keywords.iter().map(|k| k.0.as_bytes()))
            .map_err(|e| {
                let rule = tb.keywords.first().and_then(|k| k.1.first()).map(|r| r.0);
                (rule, format!("keywords: {e}"))
            })?;
        Some(Keywords { ac, owners: tb.keywords.into_iter().map(|k| k.1).collect(), lowercase })
    };
    let _ = n_rules;
    Ok(TargetMatcher { target, regex, keywords, domains: tb.domains, addresses: tb.addresses })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("Subject").unwrap(),
            Target { source: Source::Named("subject".into()), form: Form::Decoded }
        );
        assert_eq!(parse_target("From:addr").unwrap().form, Form::Addr);
        assert_eq!(parse_target("ToCc:name").unwrap(), Target { source: Source::ToCc, form: Form::Name });
        assert_eq!(parse_target("ALL:raw").unwrap().source, Source::All);
        assert!(parse_target("ALL:addr").is_err());
        assert!(parse_target("From:bogus").unwrap_err().contains("unknown modifier"));
        assert!(parse_target("Bad Name").is_err());
        assert!(parse_target("").is_err());
    }

    #[test]
    fn whole_file_errors_do_not_quote_the_file() {
        assert_eq!(
            redact_contents(r#"invalid type: string "root:x:0:0 daemon:x", expected struct FileDef"#),
            "invalid type: string, expected struct FileDef"
        );
        assert_eq!(
            redact_contents("unknown field `root:$6$abc:19000`, expected `threshold` or `rules`"),
            "unknown field (not shown: not a field name), expected `threshold` or `rules`"
        );
        // A typo is worth showing.
        assert_eq!(
            redact_contents("unknown field `rulez`, expected `threshold` or `rules`"),
            "unknown field `rulez`, expected `threshold` or `rules`"
        );
        assert_eq!(strip_position("invalid type: string \"x\" at line 3 column 4"), "invalid type: string \"x\"");
    }
}
