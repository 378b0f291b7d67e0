//! What the `headers` fuzz target checks on every input, shared with the regression replay in
//! `tests/codec_regressions.rs` (included there with `#[path]`), so a replayed input runs
//! exactly the code the fuzzer ran: header parsing, RFC 2047 decoding, address parsing and
//! evaluation with the shipped rules never panic on arbitrary bytes (real mail carries 8-bit
//! junk, broken encoded words, truncated blocks).
#![allow(dead_code)]

use std::path::Path;

/// The shipped rule set (`rules/` at the repository root).
pub fn shipped_rules(repo_root: &Path) -> popsift::rules::RuleSet {
    popsift::rules::RuleSet::load(&repo_root.join("rules"), &Default::default()).expect("shipped rules load")
}

pub fn check(rules: &popsift::rules::RuleSet, data: &[u8]) {
    let h = popsift::rules::header::Headers::parse(data);
    let _ = h.all_decoded();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = popsift::rules::decode::decode_words(s);
        let _ = popsift::rules::header::parse_addresses(s);
    }
    let _ = rules.evaluate(data, data.len() as u64);
}
