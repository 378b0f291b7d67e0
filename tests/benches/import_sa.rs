//! SpamAssassin's stock rules imported by `popsift import-sa` (issue 17): compiling the
//! generated rule file (target ≤ 1 s) and evaluating one header block (target ≤ 100 µs), with
//! the default import, with the unreferenced `__` sub-rules kept (as the import wrote them
//! before it dropped them), and with `--no-backtrack` (patterns needing look-around or
//! back-references skipped).
//!
//! Run: `cargo bench --bench import_sa`. Needs SpamAssassin's rules in /usr/share/spamassassin
//! (and /etc/spamassassin, which loads its plugins): `apt-get install spamassassin`.
//! Messages: the fixture corpus and the crafted header messages under tests/fixtures/mail.
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use popsift::rules::EngineOptions;
use popsift::sa_import::{cf_files, import_texts, Options};

fn imported_yaml(no_backtrack: bool, keep_unreferenced: bool) -> String {
    let dirs = [PathBuf::from("/usr/share/spamassassin"), PathBuf::from("/etc/spamassassin")];
    let files = cf_files(&dirs).expect("SpamAssassin rules: apt-get install spamassassin");
    let texts: Vec<String> =
        files.iter().map(|f| String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned()).collect();
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    import_texts(&names, &refs, &Options { no_backtrack, keep_unreferenced, ..Options::default() }).0
}

fn messages() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mail");
    let mut files: Vec<PathBuf> = ["corpus", "sa"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files.iter().map(|f| popsift::mailfiles::header_block(&std::fs::read(f).unwrap()).to_vec()).collect()
}

fn bench(c: &mut Criterion) {
    let yaml = imported_yaml(false, false);
    let path = Path::new("/tmp/60-spamassassin.yaml");
    let opts = EngineOptions::default();
    let mut g = c.benchmark_group("import_sa");
    g.sample_size(10);
    g.bench_function("compile imported stock set", |b| {
        b.iter(|| popsift::rules::compile::load_str(path, &yaml, &opts).expect("imported rules load"))
    });
    g.finish();
    let msgs = messages();
    for (name, no_backtrack, keep) in [
        ("evaluate imported stock set", false, false),
        // What the import wrote before unreferenced `__` sub-rules were dropped.
        ("evaluate imported stock set, unreferenced sub-rules kept", false, true),
        ("evaluate imported stock set, --no-backtrack", true, false),
    ] {
        let set = popsift::rules::compile::load_str(path, &imported_yaml(no_backtrack, keep), &opts).unwrap();
        let mut g = c.benchmark_group("import_sa");
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for m in &msgs {
                    n += set.evaluate(m, m.len() as u64).rules.len();
                }
                n
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
