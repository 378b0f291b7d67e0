//! SpamAssassin's stock rules imported by `popsift import-sa` (issue 17): compiling the
//! generated rule file (target ≤ 1 s) and evaluating one header block (target ≤ 100 µs), with
//! the default import, with the unreferenced `__` sub-rules kept (as the import wrote them
//! before it dropped them), and with `--no-backtrack` (patterns needing look-around or
//! back-references skipped). `IMPORT_SA_LIMITS=1` times each backtracking rule alone;
//! `IMPORT_SA_PROFILE=1` each regex rule compiled alone; `IMPORT_SA_DUMP=FILE` writes the rule file.
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

/// `IMPORT_SA_PROFILE=1`: each imported regex rule compiled on its own and timed over the
/// messages (less the cost of an empty set); prints the 20 costliest and the total.
fn profile(yaml: &str, msgs: &[Vec<u8>]) {
    use std::time::Instant;
    let doc: serde_norway::Value = serde_norway::from_str(yaml).unwrap();
    let opts = EngineOptions::default();
    let path = Path::new("/tmp/profile.yaml");
    let time = |set: &popsift::rules::RuleSet| {
        let rounds = 20;
        let t = Instant::now();
        for _ in 0..rounds {
            for m in msgs {
                std::hint::black_box(set.evaluate(m, m.len() as u64));
            }
        }
        t.elapsed().as_secs_f64() * 1e6 / (rounds * msgs.len()) as f64
    };
    let empty = popsift::rules::compile::load_str(path, "rules: []\n", &opts).unwrap();
    let base = time(&empty);
    let mut costs: Vec<(f64, String)> = Vec::new();
    for r in doc["rules"].as_sequence().unwrap() {
        let Some(re) = r.get("regex").and_then(|v| v.as_str()) else { continue };
        let one = serde_norway::to_string(&serde_norway::Mapping::from_iter([
            ("id".into(), r["id"].clone()),
            ("header".into(), r["header"].clone()),
            ("regex".into(), re.into()),
            ("backtrack".into(), r.get("backtrack").cloned().unwrap_or(false.into())),
            ("score".into(), 1.into()),
        ]))
        .unwrap();
        let text = format!("rules:\n- {}", one.replace('\n', "\n  "));
        let set = popsift::rules::compile::load_str(path, &text, &opts).unwrap();
        let bt = if r.get("backtrack").is_some() { " [bt]" } else { "" };
        costs.push((
            time(&set) - base,
            format!("{}{bt} {} =~ {re}", r["id"].as_str().unwrap(), r["header"].as_str().unwrap()),
        ));
    }
    costs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = costs.iter().map(|c| c.0).sum();
    println!("per-rule profile: {} regex rules, sum {total:.1} µs/message over base {base:.1} µs", costs.len());
    for (c, what) in costs.iter().take(20) {
        println!("{c:8.2} µs  {what}");
    }
}

/// `IMPORT_SA_LIMITS=1`: each backtracking rule as the engine runs it (prefilter, atomic
/// rewrite, step limit): the fastest of several timings over the messages (the minimum
/// filters out a loaded machine's preemptions), hits, and messages out of steps.
fn limits(yaml: &str, msgs: &[Vec<u8>]) {
    use std::time::Instant;
    let doc: serde_norway::Value = serde_norway::from_str(yaml).unwrap();
    let heads: Vec<popsift::rules::Headers> = msgs.iter().map(|m| popsift::rules::Headers::parse(m)).collect();
    let mut rows = Vec::new();
    for r in doc["rules"].as_sequence().unwrap() {
        if r.get("backtrack").is_none() {
            continue;
        }
        let re = popsift::rules::backtrack::build(r["regex"].as_str().unwrap()).unwrap();
        let t = popsift::rules::compile::parse_target(r["header"].as_str().unwrap()).unwrap();
        let vals: Vec<String> = heads
            .iter()
            .map(|h| popsift::rules::eval::target_value(h, &t).map(|v| v.into_owned()).unwrap_or_default())
            .collect();
        let mut best = f64::MAX;
        let mut res = Vec::new();
        for _ in 0..9 {
            let t0 = Instant::now();
            res = vals.iter().map(|v| popsift::rules::backtrack::try_match(&re, v)).collect::<Vec<_>>();
            best = best.min(t0.elapsed().as_secs_f64() * 1e6 / vals.len() as f64);
        }
        let out = res.iter().filter(|x| x.is_none()).count();
        let hits = res.iter().filter(|x| **x == Some(true)).count();
        rows.push((best, format!("{:28} hits {hits:2} out of steps {out:2}", r["id"].as_str().unwrap())));
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total: f64 = rows.iter().map(|r| r.0).sum();
    println!("{} backtracking rules, {total:.1} µs per message if all ran", rows.len());
    for (us, what) in rows.iter().take(15) {
        println!("{us:8.1} µs  {what}");
    }
}

fn bench(c: &mut Criterion) {
    let yaml = imported_yaml(false, false);
    if let Some(out) = std::env::var_os("IMPORT_SA_DUMP") {
        std::fs::write(out, &yaml).unwrap();
        return;
    }
    if std::env::var_os("IMPORT_SA_LIMITS").is_some() {
        limits(&yaml, &messages());
        return;
    }
    if std::env::var_os("IMPORT_SA_PROFILE").is_some() {
        profile(&yaml, &messages());
        return;
    }
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
