//! Where the shared dev corpus is, for the tests that use it. `POPSIFT_DEV_CORPUS` (which
//! `.ci/run` always sets, to `../shared/corpus/dev` beside the clone) makes it required: a
//! missing corpus there FAILS the test. Without the variable it is looked for beside the
//! checkout and under `/work/shared`; if it is nowhere, the test says it SKIPPED.
use std::path::{Path, PathBuf};

/// The corpus directory (holding `labels.tsv`), or `None` after printing that `test` skipped.
pub fn dev_corpus(test: &str) -> Option<PathBuf> {
    if let Some(required) = std::env::var_os("POPSIFT_DEV_CORPUS") {
        let p = PathBuf::from(required);
        assert!(p.join("labels.tsv").is_file(), "POPSIFT_DEV_CORPUS={} holds no labels.tsv", p.display());
        return Some(p);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/dev");
    let found = [beside, "/work/shared/corpus/dev".into()].into_iter().find(|p| p.join("labels.tsv").is_file());
    if found.is_none() {
        eprintln!("SKIPPED {test}: dev corpus not found (set POPSIFT_DEV_CORPUS; .ci/run does)");
    }
    found
}
