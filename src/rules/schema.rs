//! The rule file schema (serde, `deny_unknown_fields`) and source positions for its errors.
//!
//! A file is first read as `{threshold, rules: [any]}` so that YAML syntax errors get their
//! position from the parser; then each rule is deserialized on its own, so one bad rule does
//! not hide the errors of the next. [`Locator`] finds where each rule and each of its fields
//! sits in the text (block-style YAML, as the shipped files use), for semantic errors.
use serde::Deserialize;

use super::Action;

/// A whole rule file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDef {
    /// Score at or above which a message is spam. The last file (in load order) that sets
    /// it wins; default 5.0.
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub rules: Vec<serde_norway::Value>,
}

/// A whole rule file with typed rules: the fast path when the file has no errors.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastFileDef {
    #[serde(default)]
    pub threshold: Option<f64>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

/// One rule as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    pub id: String,
    #[serde(default)]
    pub describe: Option<String>,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    #[serde(default)]
    pub keywords: Option<Vec<String>>,
    #[serde(default)]
    pub keywords_file: Option<String>,
    #[serde(default)]
    pub whole_word: Option<bool>,
    #[serde(default)]
    pub domain_in: Option<String>,
    #[serde(default)]
    pub address_in: Option<String>,
    #[serde(default)]
    pub exists: Option<bool>,
    #[serde(default)]
    pub size_over: Option<serde_norway::Value>,
    #[serde(default)]
    pub expr: Option<String>,
    /// A band of the classifier's spam probability, `'0.99..1.00'` (see [`parse_band`]).
    #[serde(default)]
    pub bayes: Option<String>,
    #[serde(default)]
    pub negate: bool,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub action: Option<Action>,
    /// Run `regex:` on the bounded backtracking engine (look-around, back-references).
    #[serde(default)]
    pub backtrack: Option<bool>,
}

/// Parses `10MB`, `512 KB`, `1.5GB`, `2000` (bytes). Units are binary (KB = 1024 bytes).
pub fn parse_size(v: &serde_norway::Value) -> Result<u64, String> {
    match v {
        serde_norway::Value::Number(n) => match n.as_u64() {
            Some(x) => Ok(x),
            None => Err(format!("bad size {n}: expected a whole number of bytes or e.g. 10MB")),
        },
        serde_norway::Value::String(s) => parse_size_str(s),
        _ => Err("bad size: expected a number of bytes or a string like 10MB".to_string()),
    }
}

fn parse_size_str(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("bad size {s:?}: expected e.g. 2000, 500KB, 10MB or 1GB");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Parses a `bayes:` band `LOW..HIGH` with `0 ≤ LOW < HIGH ≤ 1`. A probability `p` is in
/// the band when `LOW ≤ p < HIGH`, or `p = 1` for a band ending at 1, so adjacent bands
/// (`0.95..0.99`, `0.99..1.00`) never both match.
pub fn parse_band(s: &str) -> Result<(f64, f64), String> {
    let bad = || format!("bad band {s:?}: expected LOW..HIGH between 0 and 1, e.g. '0.99..1.00'");
    let (lo, hi) = s.trim().split_once("..").ok_or_else(bad)?;
    let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
    if !(0.0..=1.0).contains(&lo) || !(0.0..=1.0).contains(&hi) || lo >= hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Whether a probability falls in a band made by [`parse_band`].
pub fn in_band(p: f64, lo: f64, hi: f64) -> bool {
    (lo <= p && p < hi) || (hi >= 1.0 && p >= 1.0)
}

/// Positions of rules and their fields in one file's text (1-based line and column).
#[derive(Debug)]
pub struct Locator {
    lines: Vec<String>,
    /// For each rule item: (first line index, end line index exclusive), 0-based.
    items: Vec<(usize, usize)>,
}

impl Locator {
    pub fn new(text: &str) -> Locator {
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        let items = find_items(&lines);
        Locator { lines, items }
    }

    /// Where rule number `i` starts (its `- ` item line), or 1:1.
    pub fn rule_start(&self, i: usize) -> (usize, usize) {
        match self.items.get(i) {
            Some(&(s, _)) => {
                let l = &self.lines[s];
                let col = l.len() - l.trim_start().len();
                (s + 1, col + 1)
            }
            None => (1, 1),
        }
    }

    /// Where the value of `field` of rule number `i` starts; falls back to the rule start.
    pub fn field_value(&self, i: usize, field: &str) -> (usize, usize) {
        self.find_key(i, field).map(|(l, _, v)| (l, v)).unwrap_or_else(|| self.rule_start(i))
    }

    /// Where the key `field` of rule number `i` is written; falls back to the rule start.
    pub fn field_key(&self, i: usize, field: &str) -> (usize, usize) {
        self.find_key(i, field).map(|(l, k, _)| (l, k)).unwrap_or_else(|| self.rule_start(i))
    }

    /// Returns (line, key column, value column), all 1-based.
    fn find_key(&self, i: usize, field: &str) -> Option<(usize, usize, usize)> {
        let &(s, e) = self.items.get(i)?;
        for li in s..e {
            let line = &self.lines[li];
            let mut off = line.len() - line.trim_start().len();
            let mut rest = line.trim_start();
            if let Some(r) = rest.strip_prefix("- ") {
                let r2 = r.trim_start();
                off += 2 + (r.len() - r2.len());
                rest = r2;
            }
            let key_col = off + 1;
            let quoted_d = format!("\"{field}\":");
            let quoted_s = format!("'{field}':");
            let plain = format!("{field}:");
            let klen = if rest.starts_with(&plain) {
                plain.len()
            } else if rest.starts_with(&quoted_d) || rest.starts_with(&quoted_s) {
                quoted_d.len()
            } else {
                continue;
            };
            let after = &rest[klen..];
            let ws = after.len() - after.trim_start().len();
            return Some((li + 1, key_col, key_col + klen + ws));
        }
        None
    }

    /// The character at a 1-based position.
    pub fn char_at(&self, line: usize, col: usize) -> Option<char> {
        let l = self.lines.get(line.checked_sub(1)?)?;
        l.get(col.checked_sub(1)?..)?.chars().next()
    }

    /// The id written in rule number `i`'s `id:` line, unquoted.
    pub fn id_of(&self, i: usize) -> Option<String> {
        let (l, _, v) = self.find_key(i, "id")?;
        let line = &self.lines[l - 1];
        let val = line.get(v - 1..)?.split(" #").next()?.trim();
        let val = val.trim_matches(|c| c == '"' || c == '\'');
        (!val.is_empty()).then(|| val.to_string())
    }

    /// The rule number whose block contains 1-based `line`.
    pub fn rule_at_line(&self, line: usize) -> Option<usize> {
        let l = line.checked_sub(1)?;
        self.items.iter().position(|&(s, e)| l >= s && l < e)
    }
}

/// Finds the block-sequence items under the top-level `rules:` key.
fn find_items(lines: &[String]) -> Vec<(usize, usize)> {
    let mut items = Vec::new();
    let Some(start) = lines.iter().position(|l| {
        let t = l.trim_end();
        t == "rules:" || (t.starts_with("rules:") && t[6..].trim_start().starts_with('#'))
    }) else {
        return items;
    };
    let mut indent: Option<usize> = None;
    let mut cur: Option<usize> = None;
    let mut last_content = start;
    for (li, line) in lines.iter().enumerate().skip(start + 1) {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let ind = line.len() - t.len();
        let is_item = t == "-" || t.starts_with("- ");
        match indent {
            None if is_item => {
                indent = Some(ind);
                cur = Some(li);
            }
            None => break,
            Some(i) if ind == i && is_item => {
                if let Some(s) = cur {
                    items.push((s, last_content + 1));
                }
                cur = Some(li);
            }
            Some(i) if ind > i => {}
            Some(_) => break,
        }
        last_content = li;
    }
    if let Some(s) = cur {
        items.push((s, last_content + 1));
    }
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let s = |x: &str| parse_size(&serde_norway::Value::String(x.into()));
        assert_eq!(s("10MB"), Ok(10 << 20));
        assert_eq!(s("1.5 KB"), Ok(1536));
        assert_eq!(s("2000"), Ok(2000));
        assert_eq!(s("1gb"), Ok(1 << 30));
        assert!(s("10XB").is_err());
        assert!(s("MB").is_err());
        assert!(s("-1MB").is_err());
        assert_eq!(parse_size(&serde_norway::from_str("4096").unwrap()), Ok(4096));
    }

    #[test]
    fn bands() {
        assert_eq!(parse_band("0.99..1.00"), Ok((0.99, 1.0)));
        assert_eq!(parse_band(" 0 .. 0.01 "), Ok((0.0, 0.01)));
        for bad in ["", "0.5", "0.9..0.5", "1..2", "-0.1..0.2", "a..b", "0.5..0.5"] {
            assert!(parse_band(bad).is_err(), "{bad}");
        }
        assert!(in_band(0.99, 0.99, 1.0) && !in_band(0.99, 0.95, 0.99));
        assert!(in_band(1.0, 0.99, 1.0) && in_band(0.0, 0.0, 0.01));
    }

    #[test]
    fn locates_rules_and_fields() {
        let text =
            "threshold: 5\nrules:\n  # c\n  - id: A\n    regex: 'x'\n\n  - id: B\n    header: Subject\nother: 1\n";
        let l = Locator::new(text);
        assert_eq!(l.rule_start(0), (4, 3));
        assert_eq!(l.field_value(0, "id"), (4, 9));
        assert_eq!(l.field_value(0, "regex"), (5, 12));
        assert_eq!(l.field_key(1, "header"), (8, 5));
        assert_eq!(l.rule_at_line(8), Some(1));
        assert_eq!(l.rule_at_line(9), None);
    }
}
