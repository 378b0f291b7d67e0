//! 5-fold cross-validation of the shipped rules + the header classifier on the dev corpus
//! (`../shared/corpus/dev`, 1000 spam + 1000 ham), header-only, with and without the
//! collectors' header fields stripped from the test folds. Skipped (and says so) when the
//! corpus is absent. The floors are the targets; the figures are in the README.
#[path = "support/corpus.rs"]
mod corpus;

use std::path::Path;

use popsift::classify::eval::{cross_validate, Labelled};
use popsift::classify::{OwnHops, Tokenizer, DEFAULT_IGNORED_HEADERS};
use popsift::rules::{EngineOptions, RuleSet};

fn load(dir: &Path) -> Vec<Labelled> {
    let labels = popsift::mailfiles::read_labels(&dir.join("labels.tsv")).expect("labels.tsv");
    let mut names: Vec<_> = labels.into_iter().collect();
    names.sort();
    names
        .into_iter()
        .map(|(name, spam)| Labelled { bytes: std::fs::read(dir.join(&name)).expect("corpus file"), spam })
        .collect()
}

#[test]
fn dev_corpus_cross_validation_meets_the_floor() {
    let Some(dir) = corpus::dev_corpus("dev_corpus_cross_validation_meets_the_floor") else { return };
    let messages = load(&dir);
    let rules_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = RuleSet::load(&rules_dir, &EngineOptions::default()).expect("shipped rules load");
    let tokenizer = Tokenizer::default();
    let collectors = Tokenizer::new(DEFAULT_IGNORED_HEADERS.iter().copied().filter(|h| !h.starts_with("X-Popsift")));
    let (full, _) = cross_validate(&messages, &rules, &tokenizer, 5, None, true);
    let (stripped, _) = cross_validate(&messages, &rules, &tokenizer, 5, Some(&collectors), true);
    let (all, _) = cross_validate(&messages, &rules, &tokenizer, 5, None, false);
    eprintln!("dev 5-fold, header-only, trained on every message (train --all):\n{all}");
    eprintln!("dev 5-fold, header-only, collector fields present:\n{full}");
    eprintln!("dev 5-fold, header-only, collector fields stripped from test folds:\n{stripped}");
    // The user's own delivery hops skipped (`bayes.own_received: {skip: 2}`): on dev the top
    // two Received fields are mostly the collectors' own fetch and MX hops.
    let own = Tokenizer::default().with_own_hops(OwnHops { skip: 2, hosts: vec![] });
    let (own_full, _) = cross_validate(&messages, &rules, &own, 5, None, true);
    let (own_stripped, _) = cross_validate(&messages, &rules, &own, 5, Some(&collectors), true);
    eprintln!("dev 5-fold, own_received skip 2, collector fields present:\n{own_full}");
    eprintln!("dev 5-fold, own_received skip 2, collector fields stripped from test folds:\n{own_stripped}");
    // For comparison (measured, not shipped): logistic regression over the same tokens.
    for (budget, caught, t) in popsift::classify::eval::logistic_cross_validate(&messages, &rules, &tokenizer, 5, 10) {
        eprintln!(
            "logistic regression alone: {:.1}% spam caught at <= {:.1}% ham flagged (p > {t:.4})",
            caught * 100.0,
            budget * 100.0
        );
    }
    assert!(full.caught >= 0.95 && full.flagged <= 0.005, "{full}");
    assert!(stripped.caught >= 0.90 && stripped.flagged <= 0.005, "{stripped}");
}
