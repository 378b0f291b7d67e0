//! The review page (issue 13): server time of the decisions page for a mailbox with 10,000
//! recorded decisions (target ≤ 50 ms), and what recording one login's decisions costs.
//!
//! - `decisions_page/first_page`: the newest page (read from the history + HTML rendering),
//!   what a click on "Decisions" costs;
//! - `decisions_page/search_miss`: a From/Subject search that matches nothing, so all
//!   10,000 records are read and decoded (the worst case);
//! - `record_login/2000`: building the decisions of a 2,000-message login from its view
//!   entries and queueing them: the part that runs on the session's task;
//! - `record_login/write_2000_new`: the writer thread committing those 2,000 new decisions
//!   (off the session; the first login of a mailbox), and `write_2000_repeat`: the same login
//!   again (every decision already recorded: skipped).
//!
//! The end-to-end comparison with a cold login scan of 2,000 messages (history on vs off,
//! interleaved in one run) is `cargo bench --bench review -- --scan` (needs Dovecot).
#[path = "plain_build.rs"]
mod plain_build;
#[path = "../support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "proc_cpu.rs"]
mod proc_cpu;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use popsift::rules::{Action, Verdict};
use popsift::session::evaluated::{About, Evaluated};
use popsift::session::view::{Disposition, Entry};
use popsift::store::history::{self, Decision, History, HistorySettings, Query, RedbHistory};

const MAILBOX: &str = "alice\u{1f}pop.example.org:110";

fn decision(i: usize, now: u64) -> Decision {
    Decision {
        time: now,
        mailbox: MAILBOX.into(),
        uidl: format!("{i:08x}.uidl.example"),
        size: 4000 + i as u64,
        from: format!("Sender {i} <sender{i}@example{}.org>", i % 50),
        subject: format!("Subject line number {i}: quarterly results and more"),
        score: (i % 10) as f64,
        threshold: 5.0,
        rules: if i % 3 == 0 { vec!["SPAM_DOMAIN".into(), "LOTTERY".into()] } else { vec![] },
        bayes: Some(0.4),
        action: if i % 3 == 0 { "quarantine".into() } else { "none".into() },
        disposition: if i % 3 == 0 { "condemned".into() } else { "visible".into() },
        dry_run: false,
        spam: i % 3 == 0,
        matched: if i % 3 == 0 {
            ["SPAM_DOMAIN", "LOTTERY"]
                .iter()
                .map(|r| popsift::rules::explain::Matched {
                    rule: r.to_string(),
                    header: "subject".into(),
                    before: "Subject line number ".into(),
                    found: "quarterly results".into(),
                    after: " and more".into(),
                })
                .collect()
        } else {
            Vec::new()
        },
        clues: Vec::new(),
    }
}

fn entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            upstream: i as u32 + 1,
            upstream_size: 4000,
            size: 4000,
            uidl: Some(format!("{i:08x}.login.example").into()),
            disposition: if i % 10 == 0 { Disposition::Hidden } else { Disposition::Visible },
            rewrite: None,
            evaluated: Some(Arc::new(Evaluated {
                verdict: Verdict {
                    score: (i % 10) as f64,
                    threshold: 5.0,
                    spam: i % 10 == 0,
                    action: (i % 10 == 0).then_some(Action::Hide),
                    rules: if i % 10 == 0 { vec![Arc::from("SPAM_DOMAIN")] } else { vec![] },
                },
                rewrite: None,
                about: About {
                    from: format!("Sender {i} <s{i}@example.org>").into(),
                    subject: format!("Message {i} about something").into(),
                    bayes: None,
                    matched: Box::default(),
                    clues: Box::default(),
                },
            })),
            released: None,
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbHistory::open(dir.path(), HistorySettings::default()).unwrap();
    let now = history::now_secs();
    for chunk in (0..10_000).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Decision> = chunk.iter().map(|&i| decision(i, now)).collect();
        store.record(&batch, now).unwrap();
    }
    let mut g = c.benchmark_group("decisions_page");
    g.throughput(Throughput::Elements(1));
    g.bench_function("first_page", |b| {
        b.iter(|| {
            let q = Query { mailbox: Some(MAILBOX.into()), limit: popsift::ui::PAGE, ..Query::default() };
            let rows = store.decisions(&q).unwrap();
            assert_eq!(rows.len(), popsift::ui::PAGE);
            popsift::ui::pages::decisions(&rows, &q, "token", false, popsift::ui::PAGE).into_string()
        })
    });
    g.bench_function("search_miss", |b| {
        b.iter(|| {
            let q = Query {
                mailbox: Some(MAILBOX.into()),
                search: Some("no such text".into()),
                limit: popsift::ui::PAGE,
                ..Query::default()
            };
            let rows = store.decisions(&q).unwrap();
            assert!(rows.is_empty());
            popsift::ui::pages::decisions(&rows, &q, "token", false, popsift::ui::PAGE).into_string()
        })
    });
    g.finish();

    let login = entries(2000);
    let mut g = c.benchmark_group("record_login");
    g.throughput(Throughput::Elements(2000));
    g.bench_function("2000", |b| b.iter(|| history::login_decisions(MAILBOX, &login, false, now)));
    let batch = history::login_decisions(MAILBOX, &login, false, now);
    g.sample_size(10);
    g.bench_function("write_2000_new", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().unwrap();
                let s = RedbHistory::open(dir.path(), HistorySettings::default()).unwrap();
                let t = Instant::now();
                s.record(&batch, now).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    let s = RedbHistory::open(&dir.path().join("repeat"), HistorySettings::default()).unwrap();
    s.record(&batch, now).unwrap();
    g.bench_function("write_2000_repeat", |b| b.iter(|| assert_eq!(s.record(&batch, now).unwrap(), 0)));
    g.finish();
}

criterion_group!(group, benches);

fn main() {
    if std::env::args().any(|a| a == "--scan") {
        scan::run();
        return;
    }
    group();
    criterion::Criterion::default().configure_from_args().final_summary();
}

/// Cold login scans of 2,000 messages through the popsift binary in front of Dovecot, with
/// the history on and off, interleaved (A B A B …) so machine load hits both alike.
mod scan {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use crate::support::*;

    const RULES: &str =
        "rules:\n  - id: SPAM_DOMAIN\n    header: From:addr\n    regex: '(?i)@spam\\.example$'\n    action: hide\n";

    use crate::proc_cpu::settled_cpu;

    /// Login to `+OK` of PASS, through a fresh popsift (cold: new state dir): (wall time of
    /// PASS to `+OK`, CPU time of popsift for the whole login including the history write).
    fn cold_login(d: &Dovecot, history: bool) -> (Duration, Duration) {
        let extra = format!("history: {{ enabled: {history} }}\nscan: {{ early_answer_after: 'off' }}\n");
        // `POPSIFT_BENCH_BIN=PATH`: that build instead of the plain release build.
        let bin = crate::plain_build::popsift("POPSIFT_BENCH_BIN");
        let p = Popsift::start(&ProxyOpts {
            upstream: &d.pop3_addr(),
            rules: RULES,
            extra: &extra,
            log_level: "info",
            bin: Some(&bin),
            ..Default::default()
        });
        let cpu_before = settled_cpu(p.pid());
        let s = TcpStream::connect(&p.addr).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        w.write_all(b"USER alice\r\n").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let t = Instant::now();
        w.write_all(format!("PASS {}\r\n", d.password("alice")).as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let took = t.elapsed();
        assert!(line.starts_with("+OK"), "{line}");
        w.write_all(b"QUIT\r\n").unwrap();
        line.clear();
        let _ = r.read_line(&mut line);
        (took, settled_cpu(p.pid()).saturating_sub(cpu_before))
    }

    pub fn run() {
        let n: usize = std::env::var("REVIEW_BENCH_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
        let rounds: usize = std::env::var("REVIEW_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
        let d = Dovecot::start(DovecotOptions::default());
        for i in 0..n {
            let spam = i % 10 == 0;
            let from = if spam { format!("x{i}@spam.example") } else { format!("friend{i}@example.org") };
            let body = format!("From: {from}\r\nTo: alice@example.org\r\nSubject: message {i} with a subject line\r\nMessage-ID: <{i}@example.org>\r\n\r\nbody {i}\r\n");
            d.deliver("alice", &format!("{}.bench{i}", 100_000 + i), body.as_bytes());
        }
        // Dovecot indexes the mailbox once, outside the measurement.
        poplib_fetch(
            &d.pop3_addr(),
            "alice",
            d.password("alice"),
            &PoplibOpts { quit: true, top_lines: Some(0), ..Default::default() },
        );
        let (mut on, mut off, mut cpu_on, mut cpu_off) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (w, c) = cold_login(&d, false);
            off.push(w);
            cpu_off.push(c);
            let (w, c) = cold_login(&d, true);
            on.push(w);
            cpu_on.push(c);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let pairs: Vec<(String, String)> =
            cpu_off.iter().zip(&cpu_on).map(|(a, b)| (format!("{:.1}", ms(*a)), format!("{:.1}", ms(*b)))).collect();
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (m_on, m_off) = (median(&mut on), median(&mut off));
        let (c_on, c_off) = (median(&mut cpu_on), median(&mut cpu_off));
        println!("cold login scan of {n} messages, median of {rounds} (interleaved):");
        println!("  history off: {:.1} ms wall, {:.1} ms CPU (popsift, all threads)", ms(m_off), ms(c_off));
        println!("  history on : {:.1} ms wall, {:.1} ms CPU", ms(m_on), ms(c_on));
        println!(
            "  on/off     : {:.3} wall, {:.3} CPU (target ≤ 1.05)",
            ms(m_on) / ms(m_off),
            ms(c_on) / ms(c_off).max(1e-9)
        );
        println!("  CPU ms per round, in order (off, on): {pairs:?}");
    }
}
