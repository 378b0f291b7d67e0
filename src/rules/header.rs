//! Header block parsing (RFC 5322 §2.2, §3.6) and RFC 2047 decoding, tolerant of real mail.
//!
//! [`Headers::parse`] takes the raw bytes of a header block as read from the wire: CRLF or LF
//! line ends, an optional mbox `From ` first line, folded lines, 8-bit junk, a block truncated
//! mid-line, or a whole message (parsing stops at the first empty line). It never panics and
//! never fails: lines that are not fields are skipped.
//!
//! Values are available three ways:
//! - [`Headers::get`]: unfolded, RFC 2047-decoded, trimmed; duplicate fields joined with `\n`;
//! - [`Headers::get_raw`]: unfolded but not decoded (8-bit bytes decoded as lossy UTF-8);
//!
//! Unfolding replaces each line break and the whitespace around it with one space, as
//! SpamAssassin does (RFC 5322 keeps the whitespace, but mailers indent continuation lines
//! differently and rules should not depend on it).
//! - [`Headers::fields`]: every field in order with its byte range in the block, so that the
//!   tagging code can find and remove `X-Spam-*` fields.
//!
//! Address parsing for the `:addr` and `:name` rule modifiers lives in [`parse_addresses`].
use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::Range;

use super::decode::decode_words;

/// Distinct field names up to which groups are found by a linear scan.
const LINEAR_GROUPS: usize = 32;

/// One header field as found in the block.
#[derive(Debug, Clone)]
pub struct Field {
    name: String,
    raw: String,
    range: Range<usize>,
}

impl Field {
    /// The field name as written (case preserved).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The unfolded, undecoded value (leading/trailing whitespace trimmed).
    pub fn raw_value(&self) -> &str {
        &self.raw
    }
    /// Byte range of the whole field (name through the line end of its last continuation line)
    /// in the block given to [`Headers::parse`].
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }
}

/// All fields that share one name (case-insensitively), with lazily decoded joined values.
#[derive(Debug)]
struct Group {
    lname: String,
    fields: Vec<usize>,
    decoded: OnceCell<String>,
    raw: OnceCell<String>,
}

/// A parsed header block. Cheap to build; values are decoded on first use.
#[derive(Debug, Default)]
pub struct Headers {
    fields: Vec<Field>,
    groups: Vec<Group>,
    /// Lower-case name → position in `groups`, built once there are more than
    /// [`LINEAR_GROUPS`] distinct names: below that a scan is cheapest, above it a block of
    /// thousands of distinct names would make grouping quadratic (issue 12).
    index: Option<HashMap<String, usize>>,
    /// Byte length of the header block proper (up to and including the empty line, if any).
    block_len: usize,
}

impl Headers {
    /// Parses a header block (or a whole message: parsing stops at the first empty line).
    pub fn parse(block: &[u8]) -> Headers {
        let mut h =
            Headers { fields: Vec::with_capacity(32), groups: Vec::with_capacity(32), index: None, block_len: 0 };
        let mut pos = 0usize;
        let mut first = true;
        // Field under construction: name range, first-line value range, start offset, and
        // the unfolded value when continuation lines follow.
        let mut cur: Option<Pending> = None;
        let mut end_of_block = block.len();
        while pos < block.len() {
            let (line, next) = next_line(block, pos);
            let content = strip_eol(line);
            if first {
                first = false;
                if content.starts_with(b"From ") {
                    pos = next;
                    continue;
                }
            }
            if content.is_empty() {
                end_of_block = next;
                break;
            }
            if content[0] == b' ' || content[0] == b'\t' {
                if let Some(p) = cur.as_mut() {
                    // Unfold (RFC 5322 §2.2.3), and like SpamAssassin collapse the folding
                    // whitespace to one space, so that rules don't depend on how a mailer
                    // indented its continuation lines.
                    let folded = p.folded.get_or_insert_with(|| block[p.value.clone()].to_vec());
                    while folded.last().is_some_and(|&b| b == b' ' || b == b'\t') {
                        folded.pop();
                    }
                    folded.push(b' ');
                    let start = content.iter().position(|&b| b != b' ' && b != b'\t');
                    folded.extend_from_slice(start.map_or(&[][..], |i| &content[i..]));
                }
                pos = next;
                continue;
            }
            if let Some(p) = cur.take() {
                h.push(block, p, pos);
            }
            if let Some(colon) = memchr::memchr(b':', content) {
                let name = &content[..colon];
                // RFC 5322 §2.2: printable ASCII, no spaces; obsolete syntax (§4.5) allows
                // whitespace before the colon. A `>From ` or stray mbox line is not a field.
                let trimmed_len = name.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |i| i + 1);
                let valid = trimmed_len > 0 && name[..trimmed_len].iter().all(|&b| b.is_ascii_graphic());
                if valid {
                    let name_end = pos + trimmed_len;
                    cur = Some(Pending {
                        name: pos..name_end,
                        value: pos + colon + 1..pos + content.len(),
                        start: pos,
                        folded: None,
                    });
                }
            }
            // Not a field (no colon, or junk before it): skipped.
            pos = next;
        }
        if let Some(p) = cur.take() {
            let end = if end_of_block < block.len() { end_of_block_start(block, end_of_block) } else { block.len() };
            let end = end.max(p.start);
            h.push(block, p, end);
        }
        h.block_len = end_of_block;
        h
    }

    fn push(&mut self, block: &[u8], p: Pending, end: usize) {
        let value: &[u8] = match &p.folded {
            Some(v) => v,
            None => &block[p.value.clone()],
        };
        let raw = match std::str::from_utf8(value) {
            Ok(s) => s.trim().to_string(),
            Err(_) => String::from_utf8_lossy(value).trim().to_string(),
        };
        // Names are checked printable ASCII, so this is lossless.
        let name = String::from_utf8_lossy(&block[p.name.clone()]).into_owned();
        let idx = self.fields.len();
        match self.find_group(&name).and_then(|i| self.groups.get_mut(i)) {
            Some(g) => g.fields.push(idx),
            None => {
                let lname = name.to_ascii_lowercase();
                if let Some(index) = &mut self.index {
                    index.insert(lname.clone(), self.groups.len());
                }
                self.groups.push(Group { lname, fields: vec![idx], decoded: OnceCell::new(), raw: OnceCell::new() });
                if self.index.is_none() && self.groups.len() > LINEAR_GROUPS {
                    self.index = Some(self.groups.iter().enumerate().map(|(i, g)| (g.lname.clone(), i)).collect());
                }
            }
        }
        self.fields.push(Field { name, raw, range: p.start..end });
    }

    fn find_group(&self, name: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&name.to_ascii_lowercase()).copied(),
            None => self.groups.iter().position(|g| g.lname.eq_ignore_ascii_case(name)),
        }
    }

    fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(self.find_group(name)?)
    }

    /// Every field, in block order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Byte length of the header block including the terminating empty line when present.
    pub fn block_len(&self) -> usize {
        self.block_len
    }

    /// Whether a field with this name (case-insensitive) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.group(name).is_some()
    }

    /// The decoded value (unfolded, RFC 2047 decoded, trimmed); several fields of this name are
    /// joined with `\n`. `None` when absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        let g = self.group(name)?;
        Some(g.decoded.get_or_init(|| {
            let mut out = String::new();
            for (i, &f) in g.fields.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&decode_words(&self.fields[f].raw));
            }
            out
        }))
    }

    /// The unfolded, undecoded value; duplicates joined with `\n`. `None` when absent.
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        let g = self.group(name)?;
        Some(g.raw.get_or_init(|| {
            let mut out = String::new();
            for (i, &f) in g.fields.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                out.push_str(&self.fields[f].raw);
            }
            out
        }))
    }

    /// The raw values of every field with this name, in order.
    pub fn get_all_raw<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields.iter().filter(move |f| f.name.eq_ignore_ascii_case(name)).map(|f| f.raw.as_str())
    }

    /// Every field as `Name: decoded value`, one per line (the `ALL` pseudo-header).
    pub fn all_decoded(&self) -> String {
        let mut out = String::new();
        for f in &self.fields {
            out.push_str(&f.name);
            out.push_str(": ");
            out.push_str(&decode_words(&f.raw));
            out.push('\n');
        }
        out
    }

    /// Every field as `Name: raw value`, one per line (`ALL:raw`).
    pub fn all_raw(&self) -> String {
        let mut out = String::new();
        for f in &self.fields {
            out.push_str(&f.name);
            out.push_str(": ");
            out.push_str(&f.raw);
            out.push('\n');
        }
        out
    }
}

/// A field whose end is not known yet.
struct Pending {
    name: Range<usize>,
    value: Range<usize>,
    start: usize,
    folded: Option<Vec<u8>>,
}

/// Returns the line starting at `pos` (including its `\n`, if any) and the next position.
fn next_line(block: &[u8], pos: usize) -> (&[u8], usize) {
    match memchr::memchr(b'\n', &block[pos..]) {
        Some(i) => (&block[pos..pos + i + 1], pos + i + 1),
        None => (&block[pos..], block.len()),
    }
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Start offset of the empty line that ends at `end` (exclusive).
fn end_of_block_start(block: &[u8], end: usize) -> usize {
    let mut s = end;
    if s > 0 && block[s - 1] == b'\n' {
        s -= 1;
    }
    if s > 0 && block[s - 1] == b'\r' {
        s -= 1;
    }
    s
}

/// One mailbox from an address header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// Display name, RFC 2047-decoded, quotes removed (may be empty).
    pub name: String,
    /// The address (`local@domain`) as written, without angle brackets (may be empty).
    pub addr: String,
}

/// Parses an address-list value (RFC 5322 §3.4) leniently: mailboxes separated by commas
/// outside quotes, comments and angle brackets; `name <addr>`, `addr (name)`, bare `addr`,
/// and groups (`team: a@x, b@y;`). Works on the raw (undecoded) value so encoded commas
/// inside display names don't split mailboxes.
pub fn parse_addresses(raw: &str) -> Vec<Mailbox> {
    addresses(raw, true)
}

/// [`parse_addresses`] with the display names left RFC 2047-encoded (the `:name:raw` rule
/// modifier: SpamAssassin's phrase before MIME decoding).
pub fn parse_addresses_undecoded(raw: &str) -> Vec<Mailbox> {
    addresses(raw, false)
}

fn addresses(raw: &str, decode: bool) -> Vec<Mailbox> {
    let mut out = Vec::new();
    for part in split_top_level(raw) {
        let part = strip_group_prefix(part.trim()).trim().trim_end_matches(';').trim();
        if part.is_empty() {
            continue;
        }
        out.push(parse_mailbox(part, decode));
    }
    out
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut depth_paren, mut depth_angle, mut escaped) = (false, 0u32, 0u32, false);
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth_paren > 0 => escaped = true,
            '"' if depth_paren == 0 => quoted = !quoted,
            '(' if !quoted => depth_paren += 1,
            ')' if !quoted && depth_paren > 0 => depth_paren -= 1,
            '<' if !quoted && depth_paren == 0 => depth_angle += 1,
            '>' if !quoted && depth_paren == 0 && depth_angle > 0 => depth_angle -= 1,
            ',' | '\n' if !quoted && depth_paren == 0 && depth_angle == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `team: a@x` → `a@x` when the colon comes before any quote, angle bracket or `@`.
fn strip_group_prefix(s: &str) -> &str {
    for (i, c) in s.char_indices() {
        match c {
            ':' => return &s[i + 1..],
            '"' | '<' | '@' | '(' => return s,
            _ => {}
        }
    }
    s
}

fn parse_mailbox(part: &str, decode: bool) -> Mailbox {
    if let Some(lt) = find_unquoted(part, '<') {
        let rest = &part[lt + 1..];
        let addr = match rest.find('>') {
            Some(gt) => &rest[..gt],
            None => rest,
        };
        let name = clean_name(&part[..lt], decode);
        return Mailbox { name, addr: clean_addr(addr) };
    }
    // `addr (comment name)` or a bare address.
    let mut addr = String::new();
    let mut comment = String::new();
    let mut depth = 0u32;
    for c in part.chars() {
        match c {
            '(' => {
                if depth > 0 {
                    comment.push(c);
                }
                depth += 1;
            }
            ')' if depth > 0 => {
                depth -= 1;
                if depth > 0 {
                    comment.push(c);
                }
            }
            _ if depth > 0 => comment.push(c),
            _ => addr.push(c),
        }
    }
    let addr = clean_addr(&addr);
    if addr.contains('@') || comment.is_empty() {
        Mailbox { name: clean_name(&comment, decode), addr }
    } else {
        // No address at all: a display name alone (`undisclosed recipients`).
        Mailbox { name: clean_name(&format!("{addr} {comment}"), decode), addr: String::new() }
    }
}

fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn clean_addr(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s.trim_matches(|c| c == '"' || c == '\'');
    // Source routes: `@a,@b:user@host`.
    match s.rfind(':') {
        Some(i) if s.starts_with('@') => s[i + 1..].to_string(),
        _ => s.to_string(),
    }
}

fn clean_name(s: &str, decode: bool) -> String {
    let decoded = if decode { decode_words(s.trim()) } else { std::borrow::Cow::Borrowed(s.trim()) };
    let t = decoded.trim();
    let t = t.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(t);
    let mut out = String::with_capacity(t.len());
    let mut escaped = false;
    for c in t.chars() {
        if c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_crlf_lf_mbox_and_folding() {
        let block = b"From someone@x Mon Jan  1 00:00:00 2024\r\nSubject: hello\r\n  world\r\nX-A: 1\nx-a: 2\r\n\r\nbody: no\r\n";
        let h = Headers::parse(block);
        assert_eq!(h.get("subject"), Some("hello world"));
        assert_eq!(h.get("X-A"), Some("1\n2"));
        assert!(!h.contains("body"));
        assert_eq!(h.fields().len(), 3);
        let r = h.fields()[0].range();
        assert_eq!(&block[r], b"Subject: hello\r\n  world\r\n");
    }

    #[test]
    fn truncated_and_junk() {
        let h = Headers::parse(b"Subject: a\xff\xfeb\nBroken line\n: empty name\nTo: x@y");
        assert_eq!(h.get("Subject"), Some("a\u{fffd}\u{fffd}b"));
        assert_eq!(h.get("To"), Some("x@y"));
        assert_eq!(h.fields().len(), 2);
        let h = Headers::parse(b"");
        assert!(h.fields().is_empty());
        let h = Headers::parse(b"\r");
        assert!(h.fields().is_empty());
        let h = Headers::parse(b" continuation first\nA: b\n");
        assert_eq!(h.get("a"), Some("b"));
    }

    /// Issue 12 item 6: grouping fields by name is linear. 20,000 distinct names (and a
    /// repeat of each) used to take 200 million name comparisons; this completes at once.
    #[test]
    fn thousands_of_distinct_field_names() {
        let mut block = String::new();
        for i in 0..20_000 {
            block.push_str(&format!("X-Field-{i}: v{i}\r\n"));
        }
        for i in (0..20_000).step_by(1000) {
            block.push_str(&format!("x-field-{i}: again\r\n"));
        }
        block.push_str("Subject: last\r\n\r\n");
        let h = Headers::parse(block.as_bytes());
        assert_eq!(h.fields().len(), 20_021);
        assert_eq!(h.get("subject"), Some("last"));
        assert_eq!(h.get("X-FIELD-19999"), Some("v19999"));
        assert_eq!(h.get("X-Field-5000"), Some("v5000\nagain"));
        assert!(!h.contains("X-Field-20000"));
        // Below the index threshold the same answers come from the scan.
        let small = Headers::parse(b"A: 1\r\nb: 2\r\na: 3\r\n\r\n");
        assert_eq!(small.get("a"), Some("1\n3"));
        assert!(small.index.is_none() && h.index.is_some());
    }

    #[test]
    fn addresses() {
        let m = parse_addresses("\"Doe, John\" <John@Example.com>, jane@x.org (Jane X), undisclosed-recipients:;");
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], Mailbox { name: "Doe, John".into(), addr: "John@Example.com".into() });
        assert_eq!(m[1], Mailbox { name: "Jane X".into(), addr: "jane@x.org".into() });
        let m = parse_addresses("=?utf-8?Q?J=C3=BCrgen?= <j@x.de>");
        assert_eq!(m[0].name, "Jürgen");
        let m = parse_addresses_undecoded("=?utf-8?Q?J=C3=BCrgen?= <j@x.de>");
        assert_eq!(m[0].name, "=?utf-8?Q?J=C3=BCrgen?=");
        let m = parse_addresses("<broken@x");
        assert_eq!(m[0].addr, "broken@x");
    }
}
