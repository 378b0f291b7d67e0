//! Header block → token set.
//!
//! Works on [`Headers`] (unfolded; RFC 2047-decoded where a value is read decoded), the same
//! parse the rules use, so the classifier and the rules see the same message. The token
//! families follow what SpamBayes (`tokenize_headers`), bogofilter (its header lexer) and
//! rspamd (header meta-tokens) found useful, written afresh for popsift:
//! - `subject:` words with case kept, long words as `subject:skip:` + first char + length
//!   bucket, punctuation runs, and the RFC 2047 charset of the raw value;
//! - `from:`/`sender:`/`reply-to:`/`return-path:` display-name words, local part, domain and
//!   its registrable-looking suffix; whether Reply-To differs from From;
//! - `to:`/`cc:` address counts (bucketed) and whether names are given;
//! - `received:` host suffixes, IP prefixes, "may be forged"/"unknown" notes, hop count;
//! - `message-id:` host (or `invalid`), whole `x-mailer:`/`user-agent:`/`x-mimeole:`/
//!   `organization:` values and their first word;
//! - top-level `content-type:` (media type, charset, boundary shape) and transfer encoding;
//! - `header:Name:count` for every field name that is not ignored;
//! - `rule:ID` for every popsift rule that fired, so the model learns what each rule means
//!   for this user.
//!
//! Each token appears once per message (a set), as in SpamBayes. Ignored header names —
//! collector-added fields such as `X-Barracuda-*`, other filters' `X-Spam-*`, popsift's own
//! `X-Popsift-*` — contribute nothing at all: a classifier that leaned on them would look
//! excellent on a collected corpus and fail on real mail.
use crate::rules::header::parse_addresses;
use crate::rules::Headers;

/// Header names ignored by default (case-insensitive; a trailing `*` matches a prefix): the
/// fields the dev corpus's collectors added, other filters' verdicts, popsift's own.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "X-Barracuda*",
    "X-ASG-*",
    "X-Keywords",
    "XStatus",
    "XLevel",
    "X-RC-*",
    "XChecker-Version",
    "X-AmavisStatus",
    "X-Policyd-Weight",
    "X-BitDefender*",
    "X-MailScanner*",
    "X-Spam-*",
    "X-Popsift*",
];

/// Long subject words are reduced to a `skip:` token above this many characters.
const MAX_WORD: usize = 12;
/// Words shorter than this are not tokens on their own.
const MIN_WORD: usize = 3;

/// The tokenizer with its ignore list.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Lowercased exact names.
    exact: Vec<String>,
    /// Lowercased prefixes (from `Name*`).
    prefixes: Vec<String>,
    /// The user's own delivery path, skipped at the top of the Received chain.
    own_hops: OwnHops,
    /// First bytes (lower-cased) of the ignored names: a name starting with any other byte
    /// is not ignored, without comparing it to every entry.
    first: [bool; 256],
    /// The whole-value fields ([`VALUE_FIELDS`]) that are not ignored.
    value_fields: Vec<&'static str>,
}

/// Fields tokenized by their whole (lower-cased) value and its first word.
const VALUE_FIELDS: [&str; 8] = [
    "x-mailer",
    "user-agent",
    "x-mimeole",
    "organization",
    "x-priority",
    "x-msmail-priority",
    "precedence",
    "importance",
];

/// Which Received hops at the top of the chain (the last ones added) are the user's own
/// provider or fetch path: they are the same on every message, spam or ham, so they carry
/// no evidence and only dilute the hops that do (the SpamBayes and rspamd advice). A hop is
/// skipped while it is among the first `skip` fields or its `by` host ends with one of
/// `hosts`; the first hop that is neither ends the skipping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnHops {
    pub skip: usize,
    /// Lower-case host names or domain suffixes (`mx.example.net`, `example.net`).
    pub hosts: Vec<String>,
}

impl OwnHops {
    fn is_own(&self, index: usize, lower_hop: &str) -> bool {
        if index < self.skip {
            return true;
        }
        if self.hosts.is_empty() {
            return false;
        }
        let Some(by) = by_host(lower_hop) else { return false };
        self.hosts.iter().any(|h| by == h || (by.ends_with(h.as_str()) && by[..by.len() - h.len()].ends_with('.')))
    }
}

/// The host after ` by ` in a (lower-cased) Received field (RFC 5321 §4.4 `By-domain`).
fn by_host(hop: &str) -> Option<&str> {
    let i = hop.find(" by ").map(|i| i + 4).or_else(|| hop.starts_with("by ").then_some(3))?;
    let rest = hop[i..].trim_start();
    let end = rest.find(|c: char| c.is_whitespace() || matches!(c, '(' | ';' | '[')).unwrap_or(rest.len());
    Some(rest[..end].trim_end_matches('.')).filter(|h| !h.is_empty())
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new(DEFAULT_IGNORED_HEADERS.iter().copied())
    }
}

impl Tokenizer {
    /// A tokenizer ignoring these header names (a trailing `*` matches a prefix).
    pub fn new<'a>(ignore: impl IntoIterator<Item = &'a str>) -> Tokenizer {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for p in ignore {
            let p = p.trim().to_ascii_lowercase();
            match p.strip_suffix('*') {
                Some(pre) => prefixes.push(pre.to_string()),
                None => exact.push(p),
            }
        }
        let mut first = [false; 256];
        for p in exact.iter().chain(&prefixes) {
            match p.bytes().next() {
                Some(b) => {
                    first[b as usize] = true;
                    first[b.to_ascii_uppercase() as usize] = true;
                }
                // `*` alone ignores every name.
                None => first = [true; 256],
            }
        }
        let mut t = Tokenizer { exact, prefixes, own_hops: OwnHops::default(), first, value_fields: Vec::new() };
        t.value_fields = VALUE_FIELDS.iter().copied().filter(|n| !t.ignores(n)).collect();
        t
    }

    /// The tokenizer the config asks for (`bayes.ignore_headers`, `bayes.own_received`).
    pub fn from_settings(s: &super::BayesSettings) -> Tokenizer {
        Tokenizer::new(s.ignore_headers.iter().map(String::as_str)).with_own_hops(s.own_received.clone())
    }

    /// Skips the user's own Received hops (see [`OwnHops`]).
    pub fn with_own_hops(mut self, own: OwnHops) -> Tokenizer {
        self.own_hops = OwnHops {
            skip: own.skip,
            hosts: own.hosts.iter().map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase()).collect(),
        };
        self
    }

    /// Whether the tokenizer ignores a header name.
    pub fn ignores(&self, name: &str) -> bool {
        let n = name.as_bytes();
        if n.first().is_some_and(|&b| !self.first[b as usize]) {
            return false;
        }
        self.exact.iter().any(|e| e.as_bytes().eq_ignore_ascii_case(n))
            || self.prefixes.iter().any(|p| n.len() >= p.len() && n[..p.len()].eq_ignore_ascii_case(p.as_bytes()))
    }

    /// The token set of a parsed header block plus the ids of the rules that fired; sorted,
    /// without duplicates.
    pub fn tokens(&self, h: &Headers, rules_fired: &[&str]) -> Vec<String> {
        self.token_set(h, rules_fired).iter().map(str::to_string).collect()
    }

    /// [`Self::tokens`] without one allocation per token: the classifier's hot path.
    pub fn token_set(&self, h: &Headers, rules_fired: &[&str]) -> TokenSet {
        let mut out = TokenSet::default();
        self.fill(h, rules_fired, &mut out);
        out.finish();
        out
    }

    /// The classifier's hot path: refills `out` (its buffers reused) and leaves the token
    /// hashes ([`super::model::token_hash`]) sorted and deduplicated in
    /// [`TokenSet::hashes`]; the token texts are not sorted.
    pub fn fill_token_hashes(&self, h: &Headers, rules_fired: &[&str], out: &mut TokenSet) {
        self.fill(h, rules_fired, out);
        out.finish_hashes();
    }

    /// Clears `out` and pushes every token of the message (in any order, repeats allowed).
    fn fill(&self, h: &Headers, rules_fired: &[&str], out: &mut TokenSet) {
        out.clear();
        self.header_counts(h, out);
        subject(h, out);
        // The first address of From and of Reply-To (`Some(None)`: the field has none).
        let mut firsts: [Option<Option<String>>; 3] = [None, None, None];
        for (i, name) in ["from", "sender", "reply-to"].into_iter().enumerate() {
            if let Some(raw) = h.get_raw(name) {
                firsts[i] = Some(mailbox_tokens(name, raw, out));
            }
        }
        if let (Some(fa), Some(ra)) = (&firsts[0], &firsts[2]) {
            let same = match (fa, ra) {
                (Some(f), Some(r)) => f.eq_ignore_ascii_case(r),
                (None, None) => true,
                _ => false,
            };
            out.push_parts(&[if same { "reply-to:same-as-from" } else { "reply-to:differs" }]);
        }
        if let Some(rp) = h.get_raw("return-path") {
            let addr = rp.trim().trim_start_matches('<').trim_end_matches('>');
            match addr.rsplit_once('@') {
                Some((_, d)) => domain_tokens(&["return-path:domain"], d, out),
                None => {
                    out.push_fmt(format_args!("return-path:{}", if addr.is_empty() { "empty" } else { "no-domain" }))
                }
            }
        }
        recipients(h, out);
        received(h, &self.own_hops, out);
        message_id(h, out);
        for &name in &self.value_fields {
            if let Some(v) = h.get(name) {
                let v: String = v.trim().chars().take(60).collect::<String>().to_lowercase();
                if let Some(first) = v.split(|c: char| c.is_whitespace() || c == '/').next().filter(|w| !w.is_empty()) {
                    out.push_fmt(format_args!("{name}:word:{first}"));
                }
                out.push_fmt(format_args!("{name}:{v}"));
            }
        }
        content_type(h, out);
        for r in rules_fired {
            out.push_parts(&["rule:", r]);
        }
    }

    fn header_counts(&self, h: &Headers, out: &mut TokenSet) {
        // Distinct names compared case-insensitively in place: no allocation per field.
        let mut names: Vec<(&str, u32)> = Vec::with_capacity(32);
        for f in h.fields() {
            let mut name = f.name();
            if self.ignores(name) {
                continue;
            }
            // The List-* fields (RFC 2369) come together: one token, not six that all say
            // "mailing list" and drown the rest of the evidence.
            if name.len() > 5 && name[..5].eq_ignore_ascii_case("list-") {
                name = "list-*";
            }
            match names.iter_mut().find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name)) {
                Some((_, c)) => *c += 1,
                None => names.push((name, 1)),
            }
        }
        out.push_fmt(format_args!("headers:count:{}", Bucket(names.iter().map(|n| n.1 as usize).sum())));
        for (n, c) in names {
            out.push_lower(&["header:"], n, DIGIT_SUFFIX[c.min(4) as usize]);
        }
    }
}

/// A set of tokens in one buffer: pushed in any order, then sorted and deduplicated.
#[derive(Debug, Default, Clone)]
pub struct TokenSet {
    buf: String,
    spans: Vec<(u32, u32)>,
    hashes: Vec<u64>,
}

impl TokenSet {
    fn clear(&mut self) {
        self.buf.clear();
        self.spans.clear();
        self.hashes.clear();
    }

    /// Hashes every token, then sorts and deduplicates the hashes.
    fn finish_hashes(&mut self) {
        let hashes: Vec<u64> = std::mem::take(&mut self.hashes);
        let mut hashes = hashes;
        hashes.extend(self.spans.iter().map(|&sp| super::model::token_hash(self.get(sp))));
        hashes.sort_unstable();
        hashes.dedup();
        self.hashes = hashes;
    }

    /// The token hashes after [`Tokenizer::fill_token_hashes`], sorted, each once.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    fn push_parts(&mut self, parts: &[&str]) {
        let start = self.buf.len() as u32;
        for p in parts {
            self.buf.push_str(p);
        }
        self.spans.push((start, self.buf.len() as u32));
    }

    /// Pushes `parts`, then `lower` in ASCII lower case, then `suffix`, as one token.
    fn push_lower(&mut self, parts: &[&str], lower: &str, suffix: &str) {
        let start = self.buf.len();
        for p in parts {
            self.buf.push_str(p);
        }
        let at = self.buf.len();
        self.buf.push_str(lower);
        self.buf[at..].make_ascii_lowercase();
        self.buf.push_str(suffix);
        self.spans.push((start as u32, self.buf.len() as u32));
    }

    /// Pushes `parts`, then `text` in (Unicode) lower case, as one token.
    fn push_unicode_lower(&mut self, parts: &[&str], text: &str) {
        if text.is_ascii() {
            self.push_lower(parts, text, "");
        } else {
            let lower = text.to_lowercase();
            let start = self.buf.len() as u32;
            for p in parts {
                self.buf.push_str(p);
            }
            self.buf.push_str(&lower);
            self.spans.push((start, self.buf.len() as u32));
        }
    }

    fn push_fmt(&mut self, args: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        let start = self.buf.len() as u32;
        let _ = self.buf.write_fmt(args);
        self.spans.push((start, self.buf.len() as u32));
    }

    fn get(&self, (s, e): (u32, u32)) -> &str {
        &self.buf[s as usize..e as usize]
    }

    fn finish(&mut self) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.sort_unstable_by(|a, b| self.get(*a).cmp(self.get(*b)));
        spans.dedup_by(|a, b| self.get(*a) == self.get(*b));
        self.spans = spans;
    }

    /// The tokens, sorted, each once.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.spans.iter().map(|&sp| self.get(sp))
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// Small counts as token suffixes, for `header:Name:count`.
const DIGIT_SUFFIX: [&str; 5] = [":0", ":1", ":2", ":3", ":4"];

/// A count bucketed: exact to 3, then powers of two (`2**k`); written without allocating.
struct Bucket(usize);

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        if n <= 3 {
            write!(f, "{n}")
        } else {
            write!(f, "2**{}", usize::BITS - n.leading_zeros() - 1)
        }
    }
}

fn subject(h: &Headers, out: &mut TokenSet) {
    let Some(s) = h.get("subject") else {
        out.push_parts(&["subject:none"]);
        return;
    };
    if s.trim().is_empty() {
        out.push_parts(&["subject:empty"]);
    }
    if let Some(raw) = h.get_raw("subject") {
        let mut rest = raw;
        while let Some(i) = rest.find("=?") {
            let after = &rest[i + 2..];
            let Some(q) = after.find('?') else { break };
            out.push_fmt(format_args!("subject:charset:{}", after[..q].to_ascii_lowercase()));
            rest = &after[q..];
        }
        if raw.bytes().any(|b| b >= 0x80) {
            out.push_parts(&["subject:8bit"]);
        }
    }
    let (mut letters, mut all_upper) = (0usize, true);
    for c in s.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        all_upper &= c.is_uppercase();
    }
    if letters >= 6 && all_upper {
        out.push_parts(&["subject:all-caps"]);
    }
    for word in s.split_whitespace() {
        // Punctuation runs (`!!!`, `$$`, `...`) carry signal of their own. ASCII only, so
        // byte offsets are character offsets.
        let mut run_start = None;
        for (i, c) in word.char_indices().chain(std::iter::once((word.len(), ' '))) {
            if c.is_ascii_punctuation() {
                run_start.get_or_insert(i);
            } else if let Some(st) = run_start.take() {
                let run = &word[st..i];
                if run.len() > 1 || matches!(run, "!" | "$" | "%" | "?" | "*") {
                    out.push_parts(&["subject:punct:", &run[..run.len().min(5)]]);
                }
            }
        }
        let w = word.trim_matches(|c: char| c.is_ascii_punctuation());
        let n = w.chars().count();
        if n > MAX_WORD {
            let first = w.chars().next().unwrap_or('?');
            out.push_fmt(format_args!("subject:skip:{first}{}", n / 10 * 10));
        } else if n >= MIN_WORD {
            out.push_parts(&["subject:", w]);
            if w.bytes().any(|b| b.is_ascii_digit()) && w.bytes().any(|b| b.is_ascii_alphabetic()) {
                out.push_parts(&["subject:mixed-digits"]);
            }
        }
    }
}

/// A domain's last two and three labels and its TLD (`prefix` is given in parts).
fn domain_tokens(prefix: &[&str], domain: &str, out: &mut TokenSet) {
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() {
        return;
    }
    let mut dots = d.rmatch_indices('.').map(|(i, _)| i);
    let (last, second, third) = (dots.next(), dots.next(), dots.next());
    // Up to two prefix parts, then the separator.
    let with = |sep: &'static str| -> [&str; 3] {
        let mut p = ["", "", sep];
        for (slot, part) in p.iter_mut().zip(prefix) {
            *slot = part;
        }
        p
    };
    let p = with(":");
    if let Some(l) = last {
        let from = second.map_or(0, |s| s + 1);
        out.push_lower(&p, &d[from..], "");
        if second.is_some() {
            out.push_lower(&p, &d[third.map_or(0, |t| t + 1)..], "");
        }
        out.push_lower(&with(":tld:"), &d[l + 1..], "");
    } else {
        out.push_lower(&with(":tld:"), d, "");
    }
}

/// A relay's host name: its last two and three labels and its TLD.
fn host_tokens(prefix: &str, host: &str, out: &mut TokenSet) {
    let mut dots = host.rmatch_indices('.').map(|(i, _)| i);
    let (Some(first), second) = (dots.next(), dots.next()) else { return };
    out.push_parts(&[prefix, ":tld:", &host[first + 1..]]);
    match second {
        Some(i) => {
            out.push_parts(&[prefix, ":", &host[i + 1..]]);
            let start = dots.next().map_or(0, |j| j + 1);
            out.push_parts(&[prefix, ":", &host[start..]]);
        }
        None => out.push_parts(&[prefix, ":", host]),
    }
}

/// Tokens of the first mailbox of an address field; returns its address.
fn mailbox_tokens(prefix: &str, raw: &str, out: &mut TokenSet) -> Option<String> {
    let Some(m) = parse_addresses(raw).into_iter().next() else {
        out.push_parts(&[prefix, ":none"]);
        return None;
    };
    if m.name.trim().is_empty() {
        out.push_parts(&[prefix, ":no-name"]);
    } else {
        for w in m.name.split(|c: char| c.is_whitespace() || c == ',' || c == '"') {
            let w = w.trim_matches(|c: char| c.is_ascii_punctuation());
            if w.chars().nth(1).is_some() {
                out.push_unicode_lower(&[prefix, ":name:"], w);
            }
        }
        if m.name.contains('@') {
            out.push_parts(&[prefix, ":name-has-at"]);
        }
    }
    // ASCII lower-casing keeps byte offsets: split first, lower-case while pushing.
    match m.addr.rsplit_once('@') {
        Some((local, domain)) => {
            out.push_lower(&[prefix, ":local:"], local, "");
            if local.bytes().filter(u8::is_ascii_digit).count() >= 3 {
                out.push_parts(&[prefix, ":local-digits"]);
            }
            domain_tokens(&[prefix, ":domain"], domain, out);
        }
        None => out.push_parts(&[prefix, ":no-domain"]),
    }
    Some(m.addr)
}

fn recipients(h: &Headers, out: &mut TokenSet) {
    for name in ["to", "cc"] {
        let Some(raw) = h.get_raw(name) else { continue };
        let boxes = parse_addresses(raw);
        let with_addr = boxes.iter().filter(|m| !m.addr.is_empty()).count();
        out.push_fmt(format_args!("{name}:count:{}", Bucket(with_addr)));
        if !boxes.is_empty() && boxes.iter().all(|m| m.name.trim().is_empty()) {
            out.push_parts(&[name, ":no-names"]);
        }
        if raw.as_bytes().windows(11).any(|w| w.eq_ignore_ascii_case(b"undisclosed")) {
            out.push_parts(&[name, ":undisclosed"]);
        }
    }
}

fn received(h: &Headers, own: &OwnHops, out: &mut TokenSet) {
    let mut hops = 0usize;
    // One buffer for every hop, and the hashes of the words already looked at.
    let mut lower = String::new();
    let mut seen: Vec<u64> = Vec::with_capacity(64);
    let mut skipping = own.skip > 0 || !own.hosts.is_empty();
    for (index, raw) in h.get_all_raw("received").enumerate() {
        lower.clear();
        lower.push_str(raw);
        lower.make_ascii_lowercase();
        if skipping && own.is_own(index, &lower) {
            continue;
        }
        skipping = false;
        hops += 1;
        if lower.contains("may be forged") {
            out.push_parts(&["received:may-be-forged"]);
        }
        if lower.contains("unknown") {
            out.push_parts(&["received:unknown"]);
        }
        if lower.contains("with esmtpsa") || lower.contains("with esmtps") {
            out.push_parts(&["received:tls"]);
        }
        for_each_hop_word(&lower, |word| {
            let w = word.trim_matches(|c: char| c == '.' || c == ',');
            // Hosts and addresses have dots; one seen in an earlier hop adds nothing (tokens
            // are a set).
            if w.is_empty() || !w.contains('.') {
                return;
            }
            let k = super::model::token_hash(w);
            if seen.contains(&k) {
                return;
            }
            seen.push(k);
            if is_ipv4(w) {
                let mut dots = w.match_indices('.').map(|(i, _)| i);
                if let (Some(_), Some(second), Some(third)) = (dots.next(), dots.next(), dots.next()) {
                    out.push_parts(&["received:ip:", &w[..second]]);
                    out.push_parts(&["received:ip:", &w[..third]]);
                }
            } else if w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && w.rsplit('.').next().is_some_and(|t| t.len() >= 2 && t.bytes().all(|b| b.is_ascii_alphabetic()))
            {
                host_tokens("received:host", w, out);
            }
        });
    }
    out.push_fmt(format_args!("received:hops:{}", Bucket(hops)));
}

/// Whether a character separates the words of a Received field.
fn is_hop_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | ';' | '<' | '>')
}

/// Calls `f` with every non-empty word of a Received field, split at [`is_hop_separator`]:
/// byte by byte when the field is ASCII (nearly always), by characters otherwise.
fn for_each_hop_word<'a>(s: &'a str, mut f: impl FnMut(&'a str)) {
    if !s.is_ascii() {
        s.split(is_hop_separator).filter(|w| !w.is_empty()).for_each(f);
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ' | b'(' | b')' | b'[' | b']' | b';' | b'<' | b'>') {
            if i > start {
                f(&s[start..i]);
            }
            start = i + 1;
        }
    }
    if start < s.len() {
        f(&s[start..]);
    }
}

fn is_ipv4(s: &str) -> bool {
    s.split('.').count() == 4
        && s.split('.').all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn message_id(h: &Headers, out: &mut TokenSet) {
    let Some(raw) = h.get_raw("message-id") else {
        out.push_parts(&["message-id:none"]);
        return;
    };
    let id = raw.trim();
    let inner = id.strip_prefix('<').and_then(|s| s.strip_suffix('>'));
    match inner.and_then(|s| s.rsplit_once('@')) {
        Some((local, host)) if !host.is_empty() && !local.is_empty() => {
            domain_tokens(&["message-id:host"], host, out);
            if !host.contains('.') {
                out.push_parts(&["message-id:host-no-dot"]);
            }
            if local.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'-' || b == b'$') {
                out.push_parts(&["message-id:local-hex"]);
            }
        }
        _ => out.push_parts(&["message-id:invalid"]),
    }
}

fn content_type(h: &Headers, out: &mut TokenSet) {
    match h.get_raw("content-type") {
        None => out.push_parts(&["content-type:none"]),
        Some(raw) => {
            let mut parts = raw.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            out.push_fmt(format_args!("content-type:{media}"));
            for p in parts {
                let Some((k, v)) = p.split_once('=') else { continue };
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().trim_matches('"').to_ascii_lowercase();
                match k.as_str() {
                    "charset" => out.push_fmt(format_args!("content-type:charset:{v}")),
                    "boundary" => {
                        // The shape of the boundary identifies the mailer.
                        let shape: String = v
                            .chars()
                            .map(|c| match c {
                                '0'..='9' => 'd',
                                'a'..='z' => 'a',
                                other => other,
                            })
                            .collect::<String>();
                        let mut squeezed = String::new();
                        for c in shape.chars() {
                            if !squeezed.ends_with(c) {
                                squeezed.push(c);
                            }
                        }
                        out.push_fmt(format_args!(
                            "content-type:boundary:{}",
                            squeezed.chars().take(20).collect::<String>()
                        ));
                    }
                    _ => {}
                }
            }
        }
    }
    if let Some(cte) = h.get_raw("content-transfer-encoding") {
        out.push_fmt(format_args!("cte:{}", cte.trim().to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(block: &str) -> Vec<String> {
        Tokenizer::default().tokens(&Headers::parse(block.as_bytes()), &["R1"])
    }

    #[test]
    fn subject_sender_and_rules() {
        let t = toks(
            "From: \"Cheap Meds\" <deals123@mail.pharma.example.com>\r\nSubject: =?utf-8?q?Buy_NOW!!!_verylongwordindeedhere?=\r\nTo: a@b.c, d@e.f\r\nMessage-ID: <abc@host.example.org>\r\n\r\n",
        );
        for want in [
            "subject:Buy",
            "subject:NOW",
            "subject:punct:!!!",
            "subject:skip:v20",
            "subject:charset:utf-8",
            "from:name:cheap",
            "from:local:deals123",
            "from:local-digits",
            "from:domain:example.com",
            "from:domain:pharma.example.com",
            "to:count:2",
            "message-id:host:example.org",
            "header:from:1",
            "rule:R1",
        ] {
            assert!(t.iter().any(|x| x == want), "missing {want} in {t:?}");
        }
    }

    #[test]
    fn ignored_headers_leave_no_trace() {
        let t = toks("X-Barracuda-Spam-Score: 9\r\nX-Spam-Status: Yes\r\nXStatus: x\r\nSubject: hi there\r\n\r\n");
        assert!(t.iter().all(|x| !x.to_ascii_lowercase().contains("barracuda") && !x.contains("spam-status")));
        assert!(t.iter().all(|x| !x.contains("xstatus")), "{t:?}");
        let custom = Tokenizer::new(["Subject"]);
        assert!(custom.ignores("subject"));
        assert!(!custom.ignores("X-Barracuda-Foo"));
    }

    #[test]
    fn received_hops() {
        let t =
            toks("Received: from mx.evil.example.net (unknown [203.0.113.9]) by mail.isp.example with SMTP\r\n\r\n");
        for want in [
            "received:ip:203.0",
            "received:ip:203.0.113",
            "received:host:example.net",
            "received:unknown",
            "received:hops:1",
        ] {
            assert!(t.iter().any(|x| x == want), "missing {want} in {t:?}");
        }
    }

    #[test]
    fn own_received_hops_are_skipped() {
        let block = "Received: from fetch.local by me.home.example with POP3\r\n\
                     Received: from relay.isp.example by mx1.provider.example.net (Postfix)\r\n\
                     Received: from sender.spam.example.org ([198.51.100.7]) by relay.isp.example\r\n\r\n";
        let h = Headers::parse(block.as_bytes());
        let all = Tokenizer::default().tokens(&h, &[]);
        assert!(all.iter().any(|t| t == "received:hops:3") && all.iter().any(|t| t == "received:host:home.example"));
        for own in [
            OwnHops { skip: 2, hosts: vec![] },
            OwnHops { skip: 1, hosts: vec!["provider.example.net".into()] },
            OwnHops { skip: 0, hosts: vec!["me.home.example".into(), "Provider.Example.Net.".into()] },
        ] {
            let t = Tokenizer::default().with_own_hops(own.clone()).tokens(&h, &[]);
            assert!(t.iter().any(|x| x == "received:hops:1"), "{own:?}: {t:?}");
            assert!(!t.iter().any(|x| x.contains("home.example") || x.contains("provider.example")), "{own:?}: {t:?}");
            assert!(t.iter().any(|x| x == "received:ip:198.51.100"), "{own:?}: {t:?}");
        }
        // A suffix matches whole labels only; the first foreign hop ends the skipping.
        let t = Tokenizer::default().with_own_hops(OwnHops { skip: 0, hosts: vec!["ovider.example.net".into()] });
        assert!(t.tokens(&h, &[]).iter().any(|x| x == "received:hops:3"));
        let t = Tokenizer::default().with_own_hops(OwnHops { skip: 0, hosts: vec!["provider.example.net".into()] });
        assert!(t.tokens(&h, &[]).iter().any(|x| x == "received:hops:3"), "the top hop is not the provider's");
    }

    #[test]
    fn garbage_does_not_panic() {
        let _ = toks("Subject: =?x?\r\nFrom: <@>\r\nMessage-ID: <>\r\nContent-Type: ;;==\r\nReceived: [1.2.3]\r\n");
        let _ = Tokenizer::default().tokens(&Headers::parse(&[0xff, 0xfe, b'\n', b':', b'\n']), &[]);
    }
}
