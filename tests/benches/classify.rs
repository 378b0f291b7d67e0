//! The header classifier: tokenize + classify one header block (from raw bytes, and on the
//! headers the rules already parsed, as in a session), training throughput from
//! `.eml` files (the `popsift train --all` path: read, rules, tokenize, one redb commit),
//! and the model's size on disk for 10,000 trained messages. When `bogofilter` is installed
//! the same run trains and classifies the same header blocks with it (`-b` batch mode, one
//! process per run, as PEERS.md describes), for a side-by-side figure.
//!
//! Messages: the dev corpus (`../shared/corpus/dev`, or `POPSIFT_DEV_CORPUS`) when present,
//! else the fixture messages. Run: `cargo bench --bench classify`.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use popsift::classify::store::{ModelStore, RedbStore};
use popsift::classify::train::{message_tokens, normalised_block};
use popsift::classify::{Model, Tokenizer, Trainer};
use popsift::rules::{EngineOptions, Headers, RuleSet};

/// (path, bytes, spam) of every labelled message.
fn corpus() -> Vec<(PathBuf, Vec<u8>, bool)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dev =
        std::env::var_os("POPSIFT_DEV_CORPUS").map(PathBuf::from).unwrap_or_else(|| root.join("../shared/corpus/dev"));
    if let Ok(labels) = popsift::mailfiles::read_labels(&dev.join("labels.tsv")) {
        let mut v: Vec<_> = labels.into_iter().collect();
        v.sort();
        eprintln!("classify bench: dev corpus, {} messages", v.len());
        return v
            .into_iter()
            .filter_map(|(n, s)| {
                let p = dev.join(n);
                Some((p.clone(), std::fs::read(&p).ok()?, s))
            })
            .collect();
    }
    let dir = root.join("tests/fixtures/mail/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    eprintln!("classify bench: dev corpus absent; {} fixture messages", files.len());
    files.into_iter().enumerate().map(|(i, p)| (p.clone(), std::fs::read(&p).unwrap(), i % 2 == 0)).collect()
}

fn shipped_rules() -> Arc<RuleSet> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    Arc::new(RuleSet::load(&dir, &EngineOptions::default()).expect("shipped rules"))
}

fn bench(c: &mut Criterion) {
    let msgs = corpus();
    let rules = shipped_rules();
    let tok = Tokenizer::default();
    let blocks: Vec<Vec<u8>> = msgs.iter().filter_map(|m| normalised_block(&m.1)).collect();

    // A model trained on every message, min counts satisfied.
    let mut model = Model::default();
    for (_, bytes, spam) in &msgs {
        if let Some(t) = message_tokens(&tok, Some(&rules), bytes) {
            model.learn(&t, *spam, 1);
        }
    }
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(blocks.len() as u64));
    g.bench_function("tokenize_classify_per_corpus", |b| {
        b.iter(|| {
            let mut spam = 0;
            for block in &blocks {
                let h = Headers::parse(block);
                if model.classify(&h, &[]).unwrap_or(0.5) > 0.5 {
                    spam += 1;
                }
            }
            spam
        })
    });
    // The parts: parsing alone, and tokenizing parsed headers.
    let parsed: Vec<Headers> = blocks.iter().map(|b| Headers::parse(b)).collect();
    g.bench_function("parse_only_per_corpus", |b| {
        b.iter(|| blocks.iter().map(|b| Headers::parse(b).fields().len()).sum::<usize>())
    });
    g.bench_function("tokenize_parsed_per_corpus", |b| {
        b.iter(|| parsed.iter().map(|h| tok.tokens(h, &[]).len()).sum::<usize>())
    });
    // What a session pays: the rules have parsed (and decoded) the block already, and the
    // classifier tokenizes and classifies those parsed headers.
    g.bench_function("classify_parsed_per_corpus", |b| {
        b.iter(|| parsed.iter().filter(|h| model.classify(h, &[]).unwrap_or(0.5) > 0.5).count())
    });
    g.sample_size(10);
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("train_all_from_eml_files", |b| {
        b.iter_with_setup(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let store = RedbStore::open(dir.path()).unwrap();
                let mut tr = Trainer::new(&store, Tokenizer::default(), Some(rules.clone())).unwrap();
                for (path, _, spam) in &msgs {
                    let bytes = std::fs::read(path).unwrap();
                    tr.train(&bytes, *spam);
                }
                tr.commit().unwrap();
            },
        )
    });
    g.finish();

    // `CLASSIFY_BENCH_SPEED_ONLY=1` skips the size and bogofilter runs (for profiling).
    if std::env::var_os("CLASSIFY_BENCH_SPEED_ONLY").is_none() {
        model_size(&msgs, &rules);
        bogofilter(c, &msgs);
    }
}

/// Trains 10,000 messages (the corpus repeated, each copy made distinct: its own Subject
/// word and Message-ID) and prints the model file's size.
fn model_size(msgs: &[(PathBuf, Vec<u8>, bool)], rules: &Arc<RuleSet>) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let mut tr = Trainer::new(&store, Tokenizer::default(), Some(rules.clone())).unwrap();
    let mut n = 0usize;
    'outer: for copy in 0.. {
        for (_, bytes, spam) in msgs {
            if n == 10_000 {
                break 'outer;
            }
            let mut m =
                format!("Subject: copy{copy}x{n} variant\r\nMessage-ID: <{n}.{copy}@host{n}.example>\r\n").into_bytes();
            m.extend_from_slice(bytes);
            tr.train(&m, *spam);
            n += 1;
        }
    }
    tr.commit().unwrap();
    let model = store.load().unwrap();
    let size = std::fs::metadata(store.path()).unwrap().len();
    eprintln!(
        "classify bench: model for {n} trained messages: {:.1} MB on disk ({} tokens)",
        size as f64 / 1e6,
        model.token_count()
    );
}

/// bogofilter on the same header blocks, when installed.
fn bogofilter(c: &mut Criterion, msgs: &[(PathBuf, Vec<u8>, bool)]) {
    if Command::new("bogofilter").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        eprintln!("classify bench: bogofilter not installed; no comparison (apt-get install bogofilter)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut spam_list = String::new();
    let mut ham_list = String::new();
    let mut all = String::new();
    for (i, (_, bytes, spam)) in msgs.iter().enumerate() {
        let Some(block) = normalised_block(bytes) else { continue };
        let p = tmp.path().join(format!("{i}.eml"));
        std::fs::write(&p, block).unwrap();
        let line = format!("{}\n", p.display());
        if *spam {
            spam_list.push_str(&line);
        } else {
            ham_list.push_str(&line);
        }
        all.push_str(&line);
    }
    let run = |db: &Path, args: &[&str], input: &str| {
        let mut child = Command::new("bogofilter")
            .arg("-d")
            .arg(db)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bogofilter");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait().unwrap();
    };
    let mut g = c.benchmark_group("bogofilter");
    g.sample_size(10);
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("train_all_header_blocks", |b| {
        b.iter_with_setup(
            || tempfile::tempdir().unwrap(),
            |db| {
                run(db.path(), &["-s", "-b"], &spam_list);
                run(db.path(), &["-n", "-b"], &ham_list);
            },
        )
    });
    let db = tempfile::tempdir().unwrap();
    run(db.path(), &["-s", "-b"], &spam_list);
    run(db.path(), &["-n", "-b"], &ham_list);
    let size: u64 =
        std::fs::read_dir(db.path()).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    eprintln!("classify bench: bogofilter database for {} messages: {:.1} MB", msgs.len(), size as f64 / 1e6);
    g.bench_function("classify_all_header_blocks", |b| b.iter(|| run(db.path(), &["-b", "-t"], &all)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
