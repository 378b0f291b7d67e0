//! `evaluate` never panics, whatever the bytes.
use std::path::Path;

use popsift::rules::{EngineOptions, Headers, RuleSet};
use proptest::prelude::*;

fn shipped() -> &'static RuleSet {
    static SET: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        RuleSet::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"),
            &EngineOptions::default(),
        )
        .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn evaluate_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600), size in any::<u64>()) {
        let s = shipped();
        let _ = s.evaluate(&bytes, size);
    }

    #[test]
    fn evaluate_never_panics_on_header_like_text(
        lines in proptest::collection::vec(
            prop_oneof![
                "[A-Za-z-]{1,12}: [ -~]{0,40}",
                "[ \t][ -~]{0,30}",
                "(Subject|From|To): =\\?[a-z0-9-]{0,10}\\?[BbQqX]\\?[A-Za-z0-9+/=_?]{0,20}\\?=",
                "From [ -~]{0,20}",
                "[\\x00-\\xff]{0,10}",
            ],
            0..12,
        ),
        crlf in any::<bool>(),
    ) {
        let s = shipped();
        let eol = if crlf { "\r\n" } else { "\n" };
        let block = lines.join(eol);
        let v = s.evaluate(block.as_bytes(), 1);
        prop_assert!(v.score.is_finite());
        let h = Headers::parse(block.as_bytes());
        for f in h.fields() {
            prop_assert!(f.range().end <= block.len());
            let _ = h.get(f.name());
        }
    }
}
