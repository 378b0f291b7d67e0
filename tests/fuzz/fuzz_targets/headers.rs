#![no_main]
// Header parsing, RFC 2047 decoding and evaluation with the shipped rules never panic on
// arbitrary bytes; the checks live in headers_check.rs, which the regression replay
// (tests/codec_regressions.rs) runs too.
use std::sync::OnceLock;

#[path = "headers_check.rs"]
mod headers_check;

static RULES: OnceLock<popsift::rules::RuleSet> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rules = RULES.get_or_init(|| headers_check::shipped_rules(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")));
    headers_check::check(rules, data);
});
