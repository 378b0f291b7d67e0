//! List files referenced by rules (`domain_in`, `address_in`, `keywords_file`) and lookups.
//!
//! Format: one entry per line; `#` starts a comment; blank lines are ignored. Domains and
//! addresses are compared lowercase; a domain entry also matches its subdomains (a leading
//! `*.` or `.` is accepted and ignored). Paths are relative to the rule file's directory.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Reads the entries of a list file (comments and blanks removed, whitespace trimmed).
pub fn read_entries(path: &Path) -> Result<Vec<String>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Normalizes a domain list entry: lowercase, no leading `*.`/`.`, no trailing dot.
pub fn normalize_domain(d: &str) -> String {
    let d = d
        .trim()
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.');
    d.to_ascii_lowercase()
}

/// Resolves a list path given in a rule file relative to that file's directory.
pub fn resolve(rule_file: &Path, list: &str) -> PathBuf {
    let p = Path::new(list);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    rule_file
        .parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

/// Caches list files read during one load (several rules may share a list).
#[derive(Default)]
pub struct ListCache {
    files: HashMap<PathBuf, Result<Vec<String>, String>>,
}

impl ListCache {
    pub fn get(&mut self, path: &Path) -> Result<&[String], String> {
        let e = self
            .files
            .entry(path.to_path_buf())
            .or_insert_with(|| read_entries(path));
        match e {
            Ok(v) => Ok(v.as_slice()),
            Err(m) => Err(m.clone()),
        }
    }
    /// Every list file read (for the reload watcher).
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.files.keys()
    }
}

/// The domain of an address (`user@Example.COM.` → `example.com`); a value without `@` is
/// taken as a domain itself.
pub fn domain_of(addr: &str) -> String {
    let d = match addr.rfind('@') {
        Some(i) => &addr[i + 1..],
        None => addr,
    };
    normalize_domain(d.trim_end_matches('>'))
}

/// Calls `f` with the domain and each parent domain: `a.b.c` → `a.b.c`, `b.c`, `c`.
pub fn for_each_suffix(domain: &str, mut f: impl FnMut(&str)) {
    let mut d = domain;
    loop {
        if !d.is_empty() {
            f(d);
        }
        match d.find('.') {
            Some(i) => d = &d[i + 1..],
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_domains() {
        let mut v = Vec::new();
        for_each_suffix("a.b.example.com", |d| v.push(d.to_string()));
        assert_eq!(
            v,
            ["a.b.example.com", "b.example.com", "example.com", "com"]
        );
        assert_eq!(domain_of("Joe@Mail.Example.COM."), "mail.example.com");
        assert_eq!(domain_of("example.org"), "example.org");
        assert_eq!(normalize_domain("*.Spam.biz"), "spam.biz");
    }

    #[test]
    fn reads_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.txt");
        std::fs::write(&p, "# c\n a.com  # trailing\n\nB.org\n").unwrap();
        assert_eq!(read_entries(&p).unwrap(), ["a.com", "B.org"]);
        assert!(read_entries(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
    }
}
