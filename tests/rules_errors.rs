//! Every load error kind, reported all at once with exact file:line:column and rule id.
use std::path::Path;

use popsift::rules::{EngineOptions, ErrorKind, RuleSet};

#[test]
fn every_error_kind_with_positions() {
    let dir = Path::new("tests/fixtures/rules/errors");
    let errs = RuleSet::load(dir, &EngineOptions::default()).unwrap_err();
    let got: Vec<String> = errs.errors().iter().map(|e| e.to_string()).collect();
    let want = [
        "tests/fixtures/rules/errors/a.yaml:4:12: rule BAD_REGEX: regex: unclosed group",
        "tests/fixtures/rules/errors/a.yaml:8:5: rule TYPO: unknown field `regx`, expected one of `id`, `describe`, `header`, `regex`, `keywords`, `keywords_file`, `whole_word`, `domain_in`, `address_in`, `exists`, `size_over`, `expr`, `bayes`, `negate`, `score`, `action`, `backtrack`",
        "tests/fixtures/rules/errors/a.yaml:14:16: rule MISSING_LIST: domain_in: cannot read tests/fixtures/rules/errors/lists/nope.txt: No such file or directory (os error 2)",
        "tests/fixtures/rules/errors/a.yaml:16:16: rule BAD_SIZE: size_over: bad size \"10XB\": expected e.g. 2000, 500KB, 10MB or 1GB",
        "tests/fixtures/rules/errors/a.yaml:18:19: rule UNKNOWN_REF: expr: unknown rule id NOPE",
        "tests/fixtures/rules/errors/a.yaml:20:11: rule CYCLE_A: expr: cycle CYCLE_A -> CYCLE_B -> CYCLE_A",
        "tests/fixtures/rules/errors/a.yaml:24:18: rule BAD_EXPR: expr: unexpected end of expression",
        "tests/fixtures/rules/errors/a.yaml:26:13: rule BAD_MOD: header: unknown modifier `:bogus` (expected :addr, :name or :raw)",
        "tests/fixtures/rules/errors/a.yaml:31:15: rule TWO_CONDS: regex and keywords in one rule: split it into two rules (and join them with expr)",
        "tests/fixtures/rules/errors/a.yaml:32:9: rule NO_COND: no condition: give one of regex, keywords, keywords_file, domain_in, address_in, exists, size_over, expr, bayes",
        "tests/fixtures/rules/errors/b.yaml:2:9: rule DUP: duplicate id (first defined at tests/fixtures/rules/errors/a.yaml:9:9)",
        "tests/fixtures/rules/errors/syntax.yml:5:1: did not find expected ',' or ']', while parsing a flow sequence",
    ];
    assert_eq!(got, want);
    let kinds: Vec<ErrorKind> = errs.errors().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            ErrorKind::Regex,
            ErrorKind::UnknownField,
            ErrorKind::List,
            ErrorKind::Size,
            ErrorKind::UnknownId,
            ErrorKind::Cycle,
            ErrorKind::Expr,
            ErrorKind::Header,
            ErrorKind::Schema,
            ErrorKind::Schema,
            ErrorKind::DuplicateId,
            ErrorKind::Yaml,
        ]
    );
    // Display: one per line.
    assert_eq!(errs.to_string().lines().count(), want.len());
    assert_eq!(errs.errors()[0].rule.as_deref(), Some("BAD_REGEX"));
}

fn err_of(yaml: &str) -> String {
    RuleSet::from_yaml(Path::new("r.yaml"), yaml, &EngineOptions::default()).unwrap_err().to_string()
}

#[test]
fn more_error_cases() {
    assert_eq!(err_of("rulez: []\n"), "r.yaml:1:1: unknown field `rulez`, expected `threshold` or `rules`");
    assert_eq!(err_of("rules:\n  - header: Subject\n    regex: x\n"), "r.yaml:2:3: missing field `id`");
    assert_eq!(err_of("rules:\n  - id: A\n    regex: x\n"), "r.yaml:2:9: rule A: regex needs a header: field");
    assert_eq!(
        err_of("rules:\n  - id: A\n    size_over: 1MB\n    header: X\n"),
        "r.yaml:4:13: rule A: header: not used by size_over"
    );
    assert_eq!(
        err_of("rules:\n  - id: A\n    header: X\n    keywords: []\n"),
        "r.yaml:4:15: rule A: keywords: empty keyword list or empty keyword"
    );
    assert_eq!(
        err_of("rules:\n  - id: A\n    header: X\n    regex: x\n    whole_word: true\n"),
        "r.yaml:5:17: rule A: whole_word: only for keywords"
    );
    assert_eq!(
        err_of("rules:\n  - id: A\n    header: X\n    regex: x\n    action: explode\n"),
        "r.yaml:5:13: rule A: action: unknown variant `explode`, expected one of `allow`, `tag`, `hide`, `quarantine`, `delete`"
    );
    assert_eq!(
        err_of("rules:\n  - id: A\n    header: X\n    regex: x\n    score: lots\n"),
        "r.yaml:5:12: rule A: score: invalid type: string \"lots\", expected f64"
    );
    assert_eq!(
        err_of("rules:\n  - id: A\n    header: X\n    regex: x\n  - id: A\n    header: X\n    exists: true\n"),
        "r.yaml:5:9: rule A: duplicate id (first defined at r.yaml:2:9)"
    );
    // Several errors in one file, all reported.
    let e = err_of(
        "rules:\n  - id: A\n    expr: 'B &&'\n  - id: C\n    expr: 'D'\n  - id: E\n    header: S\n    regex: '['\n",
    );
    assert_eq!(e.lines().count(), 3, "{e}");
    assert_eq!(err_of("rules:\n  - id: A\n    expr: A\n"), "r.yaml:3:11: rule A: expr: cycle A -> A");
}

/// A regex that parses but is too big to compile is blamed on its rule.
#[test]
fn oversized_regex_is_blamed_on_its_rule() {
    let e = err_of("rules:\n  - id: OK\n    header: Subject\n    regex: fine\n  - id: HUGE\n    header: Subject\n    regex: 'abc(?:\\w{100}){200}x'\n");
    assert!(e.starts_with("r.yaml:7:12: rule HUGE: regex: error building NFA"), "{e}");
}
