#![no_main]
// Header parsing, RFC 2047 decoding and evaluation with the shipped rules never panic on
// arbitrary bytes (real mail carries 8-bit junk, broken encoded words, truncated blocks).
use std::sync::OnceLock;

static RULES: OnceLock<popsift::rules::RuleSet> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let rules = RULES.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
        popsift::rules::RuleSet::load(&dir, &Default::default()).expect("shipped rules load")
    });
    let h = popsift::rules::header::Headers::parse(data);
    let _ = h.all_decoded();
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = popsift::rules::decode::decode_words(s);
        let _ = popsift::rules::header::parse_addresses(s);
    }
    let _ = rules.evaluate(data, data.len() as u64);
});
