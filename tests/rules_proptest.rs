//! `evaluate` never panics, whatever the bytes.
use std::path::Path;

use popsift::rules::{EngineOptions, Headers, RuleSet};
use proptest::prelude::*;

fn shipped() -> &'static RuleSet {
    static SET: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        RuleSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules"), &EngineOptions::default()).unwrap()
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

const PIECES: &[&str] = &[
    "free",
    "(?i)free",
    r"\bcash",
    "win(ner)?s?",
    "[a-c]x",
    r"\d{2}",
    "^re:",
    "ünï",
    r"\s+",
    r"money\b",
    "(foo|bar)baz",
    "(?i)Kelvin",
    "$",
    r"\W",
    "é+",
    "x*",
];
const WORDS: &[&str] = &[
    "free",
    "FREE",
    "cash",
    "winners",
    "ax",
    "12",
    "re:",
    "Re:",
    "ÜNÏ",
    "ünï",
    " ",
    "money",
    "moneys",
    "foobaz",
    "kelvin",
    "\u{212A}elvin",
    "é",
    "!",
    "x",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The prefiltered multi-regex matcher agrees with the plain `regex` crate, rule by rule.
    #[test]
    fn regex_rules_agree_with_regex_crate(
        pats in proptest::collection::vec(proptest::collection::vec(0..PIECES.len(), 1..4), 1..12),
        texts in proptest::collection::vec(proptest::collection::vec(0..WORDS.len(), 0..8), 1..6),
    ) {
        let pats: Vec<String> = pats.iter().map(|p| p.iter().map(|&i| PIECES[i]).collect()).collect();
        let mut yaml = String::from("rules:\n");
        for (i, p) in pats.iter().enumerate() {
            yaml.push_str(&format!("  - id: R{i}\n    header: Subject\n    regex: '{p}'\n    score: 1\n"));
        }
        let set = RuleSet::from_yaml(Path::new("p.yaml"), &yaml, &EngineOptions::default()).unwrap();
        for t in texts {
            let subject: String = t.iter().map(|&i| WORDS[i]).collect::<String>().trim().to_string();
            let v = set.evaluate(format!("Subject: {subject}\r\n").as_bytes(), 1);
            let got: Vec<String> = v.rules.iter().map(|r| r.to_string()).collect();
            let want: Vec<String> = pats
                .iter()
                .enumerate()
                .filter(|(_, p)| regex::Regex::new(p).unwrap().is_match(&subject))
                .map(|(i, _)| format!("R{i}"))
                .collect();
            prop_assert_eq!(got, want, "subject {:?}", subject);
        }
    }
}
