//! Per-message rule evaluation (header parse + RFC 2047 decode + rules) with the shipped
//! rules and with 1,000 and 10,000 generated rules (half regexes, half keyword lists, over
//! five headers), plus compile time for 10,000 rules.
//!
//! Run: `cargo bench --bench rules_eval`. Messages: the fixture messages plus a few
//! synthetic ones (encoded words, folded lines, many Received headers).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use popsift::rules::{EngineOptions, RuleSet};

const WORDS: &str = "free money offer viagra cheap loan mortgage rate credit cash prize winner urgent \
business deal save discount sale order now click here unsubscribe remove list email marketing \
income work home opportunity investment stock profit million dollar bank account transfer \
secret lottery casino pharmacy pills weight loss diet health insurance quote refinance debt \
approved guaranteed limited time act today special bonus gift card gold silver watch replica \
rolex software adobe microsoft windows office download video movie music dating singles adult \
meet local hot girls boys party club vacation travel hotel flight ticket airline cruise island \
report news update alert notice invoice payment receipt shipping delivery package tracking";

const HEADERS: [&str; 5] = ["Subject", "From", "To", "X-Mailer", "Received"];

/// The same shape as tests/benches/gen_rules.py: half regexes, half keyword pairs.
fn generated_rules(n: usize) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let w = words.len();
    let mut y = String::from("threshold: 5.0\nrules:\n");
    for i in 0..n {
        let (w1, w2, w3) = (words[i % w], words[(i / w + i * 7 + 3) % w], words[(i * 13 + 5) % w]);
        let h = HEADERS[i % HEADERS.len()];
        let _ = writeln!(y, "  - id: GEN_{i:05}\n    header: {h}");
        if i % 40 == 0 {
            let _ = writeln!(y, "    regex: '(?i)\\b{w1}\\b'");
        } else if i % 40 == 1 {
            let _ = writeln!(y, "    keywords: [\"{w1}\"]");
        } else if i % 2 == 0 {
            let _ = writeln!(y, "    regex: '(?i)\\b{w1}[ _-]?{w2}{}\\b'", i % 97);
        } else {
            let _ = writeln!(y, "    keywords: [\"{w1} {w2} {i}\", \"{w3}{w1}{i}\"]");
        }
        y.push_str("    score: 0.1\n");
    }
    y
}

fn messages() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules/msgs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut out: Vec<Vec<u8>> = files
        .iter()
        .map(|f| {
            let m = std::fs::read(f).unwrap();
            popsift::mailfiles::header_block(&m).to_vec()
        })
        .collect();
    out.push(
        b"Return-Path: <x@spam.biz>\r\nReceived: from mx.spam.biz (mx.spam.biz [10.1.2.3])\r\n\tby mail.example.org with ESMTP id 4711\r\n\tfor <you@example.org>; Mon, 1 Jan 2024 00:00:00 +0000\r\nReceived: from localhost by mx.spam.biz\r\nFrom: =?UTF-8?B?V2lubmVyIE5vdGljZQ==?= <winner8812@spam.biz>\r\nTo: undisclosed-recipients:;\r\nSubject: =?utf-8?Q?You_have_won_=E2=82?= =?utf-8?Q?=AC1,000,000!!!?=\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <123.456@spam.biz>\r\nX-Mailer: Advanced Mass Sender 3.1\r\nX-Priority: 1\r\nContent-Type: text/html; charset=\"gb2312\"\r\n\r\n"
            .to_vec(),
    );
    out.push(
        b"From alice@example.org Mon Jan  1 00:00:00 2024\nFrom: Alice <alice@example.org>\nTo: bob@example.org\nCc: team@example.org\nSubject: Re: lunch on Friday?\nIn-Reply-To: <a@b>\nReferences: <a@b>\nMessage-ID: <c@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nList-Id: <team.example.org>\nPrecedence: list\n\n"
            .to_vec(),
    );
    out
}

fn bench(c: &mut Criterion) {
    let opts = EngineOptions::default();
    let msgs = messages();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = RuleSet::load(&root.join("rules"), &opts).unwrap();
    let gen1k = RuleSet::from_yaml(Path::new("gen1k.yaml"), &generated_rules(1_000), &opts).unwrap();
    let gen10k_yaml = generated_rules(10_000);
    let gen10k = RuleSet::from_yaml(Path::new("gen10k.yaml"), &gen10k_yaml, &opts).unwrap();

    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    for (name, set) in [("shipped", &shipped), ("generated_1000", &gen1k), ("generated_10000", &gen10k)] {
        g.bench_with_input(BenchmarkId::new("per_message_batch", name), set, |b, set| {
            b.iter(|| {
                for m in &msgs {
                    std::hint::black_box(set.evaluate(std::hint::black_box(m), m.len() as u64));
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("header_parse");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("parse_and_decode_subject", |b| {
        b.iter(|| {
            for m in &msgs {
                let h = popsift::rules::Headers::parse(std::hint::black_box(m));
                std::hint::black_box(h.get("subject"));
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("generated_10000", |b| {
        b.iter(|| RuleSet::from_yaml(Path::new("gen10k.yaml"), std::hint::black_box(&gen10k_yaml), &opts).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
