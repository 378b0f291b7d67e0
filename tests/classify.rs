//! The header classifier end to end: `popsift train` (labels, --spam/--ham, forget, known,
//! unreadable, missing paths), `popsift scan` with the model (`"bayes"` in JSON, bands as
//! rules), the untrained case, quarantine restore training ham, a damaged model file, and
//! the model handle seeing training done while it is loaded, autolearn (its balance guard and
//! the session hook).
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use popsift::classify::store::{ModelStore, RedbStore};
use popsift::classify::{BayesSettings, Model, ModelHandle, Tokenizer, Trainer};
use popsift::rules::{EngineOptions, Headers, RuleSet, RulesHandle};

fn popsift(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_popsift")).args(args).current_dir(cwd).output().expect("run popsift")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn spam_msg(i: usize) -> String {
    format!(
        "From: \"Best Deals {i}\" <offer{i}@cheap-pills{}.example.biz>\r\nTo: undisclosed-recipients:;\r\nSubject: CHEAP pills, order now!!! {i}\r\nMessage-ID: <{i}.x@bulk.example.biz>\r\nX-Mailer: MassMailer 3.1\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\nbuy\r\n",
        i % 3
    )
}

fn ham_msg(i: usize) -> String {
    format!(
        "From: Alice Colleague <alice@work.example.org>\r\nTo: Bob <bob@work.example.org>\r\nSubject: Meeting notes for project {i}\r\nMessage-ID: <m{i}@mail.work.example.org>\r\nUser-Agent: Thunderbird 128\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    )
}

/// A corpus directory with `n` spam and `n` ham and a labels file.
fn corpus(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut labels = String::from("filename\tlabel\n");
    for i in 0..n {
        std::fs::write(dir.join(format!("s{i:03}.eml")), spam_msg(i)).unwrap();
        std::fs::write(dir.join(format!("h{i:03}.eml")), ham_msg(i)).unwrap();
        labels.push_str(&format!("s{i:03}.eml\tspam\nh{i:03}.eml\tham\n"));
    }
    std::fs::write(dir.join("labels.tsv"), labels).unwrap();
}

const BAND_RULES: &str = "threshold: 5\nrules:\n  - id: B_SPAM\n    bayes: '0.90..1.00'\n    score: 6\n  - id: B_HAM\n    bayes: '0.00..0.10'\n    score: -1\n  - id: B_NOT_HAM\n    bayes: '0.00..0.10'\n    negate: true\n  - id: SUBJ_PILLS\n    header: Subject\n    regex: '(?i)pills'\n    score: 1\n";

#[test]
fn train_then_scan_uses_the_model() {
    let t = tempfile::tempdir().unwrap();
    let (c, state, rules) = (t.path().join("c"), t.path().join("state"), t.path().join("rules.yaml"));
    corpus(&c, 25);
    std::fs::write(&rules, BAND_RULES).unwrap();
    // A binary file among the messages is skipped and counted.
    std::fs::write(c.join("junk.eml"), [0u8, 1, 2, 0xff, 0, 9]).unwrap();
    let mut labels = std::fs::read_to_string(c.join("labels.tsv")).unwrap();
    labels.push_str("junk.eml\tspam\n");
    std::fs::write(c.join("labels.tsv"), labels).unwrap();
    let (cs, ss, rs) = (c.to_str().unwrap(), state.to_str().unwrap(), rules.to_str().unwrap());
    let lt = c.join("labels.tsv");
    let lt = lt.to_str().unwrap();

    let o = popsift(&["train", "--state-dir", ss, "--rules", rs, "--labels", lt, cs], t.path());
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("1 unreadable"), "{out}");
    assert!(out.contains("model: ") && !out.contains("not enough training"), "{out}");
    assert!(state.join("bayes.redb").is_file());

    // Training again changes nothing: every trained message is known.
    let again = popsift(&["train", "--state-dir", ss, "--rules", rs, "--labels", lt, cs], t.path());
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("0 trained (0 relabelled)"), "{}", text(&again));

    // scan --json: a probability, and the bands fire as rules.
    let o =
        popsift(&["scan", "--json", "--state-dir", ss, "--rules", rs, c.join("s001.eml").to_str().unwrap()], t.path());
    let line = String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or_default().to_string();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert!(v["bayes"].as_f64().unwrap() > 0.9, "{v}");
    assert!(v["rules"].as_array().unwrap().iter().any(|r| r == "B_SPAM"), "{v}");
    assert_eq!(v["verdict"], "spam");
    let o =
        popsift(&["scan", "--json", "--state-dir", ss, "--rules", rs, c.join("h001.eml").to_str().unwrap()], t.path());
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert!(v["bayes"].as_f64().unwrap() < 0.1, "{v}");
    assert!(v["rules"].as_array().unwrap().iter().any(|r| r == "B_HAM"), "{v}");

    // scan --labels prints the operating points.
    let o = popsift(&["scan", "--state-dir", ss, "--rules", rs, "--labels", lt, cs], t.path());
    let out = text(&o);
    assert!(out.contains("at <= 0.5% ham flagged (probability >"), "{out}");

    // Another state dir has no model: `"bayes": null`, no band fires.
    let empty = t.path().join("empty");
    let o = popsift(
        &[
            "scan",
            "--json",
            "--state-dir",
            empty.to_str().unwrap(),
            "--rules",
            rs,
            c.join("s001.eml").to_str().unwrap(),
        ],
        t.path(),
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert!(v["bayes"].is_null(), "{v}");
    assert_eq!(v["rules"], serde_json::json!(["SUBJ_PILLS"]));
}

#[test]
fn spam_ham_flags_forget_and_missing_paths() {
    let t = tempfile::tempdir().unwrap();
    let (c, state) = (t.path().join("c"), t.path().join("state"));
    corpus(&c, 3);
    let ss = state.to_str().unwrap();
    let s0 = c.join("s000.eml");
    let h0 = c.join("h000.eml");
    let o = popsift(
        &["train", "--all", "--state-dir", ss, "--spam", s0.to_str().unwrap(), "--ham", h0.to_str().unwrap()],
        t.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("model: 1 spam, 1 ham"), "{}", text(&o));
    assert!(text(&o).contains("not enough training yet"), "{}", text(&o));
    // Relabel: the spam as ham moves it.
    let o = popsift(&["train", "--all", "--state-dir", ss, "--ham", s0.to_str().unwrap()], t.path());
    assert!(text(&o).contains("1 trained (1 relabelled)") && text(&o).contains("model: 0 spam, 2 ham"), "{}", text(&o));
    // Forget untrains exactly: the store is empty again.
    let o = popsift(
        &["train", "--forget", "--state-dir", ss, "--ham", s0.to_str().unwrap(), h0.to_str().unwrap()],
        t.path(),
    );
    assert!(text(&o).contains("2 forgotten") && text(&o).contains("model: 0 spam, 0 ham, 0 tokens"), "{}", text(&o));
    // A missing path is an error that names it, exit 2.
    let o = popsift(&["train", "--state-dir", ss, "--spam", "/no/such/dir"], t.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/no/such/dir"), "{}", text(&o));
    // Stats on an empty model does not fail.
    let o = popsift(&["train", "--stats", "--state-dir", ss], t.path());
    assert!(o.status.success() && text(&o).contains("0 spam, 0 ham"), "{}", text(&o));
}

fn trained_store(dir: &Path, n: usize) -> RedbStore {
    let store = RedbStore::open(dir).unwrap();
    let mut tr = Trainer::new(&store, Tokenizer::default(), None).unwrap();
    for i in 0..n {
        tr.train(spam_msg(i).as_bytes(), true);
        tr.train(ham_msg(i).as_bytes(), false);
    }
    tr.commit().unwrap();
    store
}

#[test]
fn bayes_rules_fire_only_with_enough_training() {
    let set = RuleSet::from_yaml(Path::new("bands.yaml"), BAND_RULES, &EngineOptions::default()).unwrap();
    let t = tempfile::tempdir().unwrap();
    // 19 of each: below the minimum of 20 — no probability, no band fires (not even the
    // negated one).
    let store = trained_store(t.path(), 19);
    let model: Model = store.load().unwrap();
    assert!(!model.ready());
    let (v, p) = set.evaluate_with_model(spam_msg(40).as_bytes(), 100, Some(&model));
    assert_eq!(p, None);
    assert_eq!(v.rules.iter().map(|r| r.to_string()).collect::<Vec<_>>(), vec!["SUBJ_PILLS"]);
    drop(store);
    // One more of each: ready.
    let store = RedbStore::open(t.path()).unwrap();
    let mut tr = Trainer::new(&store, Tokenizer::default(), None).unwrap();
    tr.train(spam_msg(19).as_bytes(), true);
    tr.train(ham_msg(19).as_bytes(), false);
    tr.commit().unwrap();
    let model = store.load().unwrap();
    assert!(model.ready());
    let (v, p) = set.evaluate_with_model(spam_msg(40).as_bytes(), 100, Some(&model));
    assert!(p.unwrap() > 0.9 && v.spam, "{p:?} {v:?}");
    assert!(v.rules.iter().any(|r| &**r == "B_SPAM") && v.rules.iter().all(|r| &**r != "B_HAM"));
    let (v, p) = set.evaluate_with_model(ham_msg(40).as_bytes(), 100, Some(&model));
    assert!(p.unwrap() < 0.1 && !v.spam, "{p:?} {v:?}");
    assert!(v.rules.iter().any(|r| &**r == "B_HAM"));
    // Without a model nothing changes from plain rule evaluation.
    assert_eq!(set.evaluate_with_model(spam_msg(1).as_bytes(), 100, None).0, set.evaluate(spam_msg(1).as_bytes(), 100));
}

#[test]
fn rule_tokens_are_learned_and_forget_is_exact_after_rules_change() {
    let t = tempfile::tempdir().unwrap();
    let store = RedbStore::open(t.path()).unwrap();
    let rules = Arc::new(RuleSet::from_yaml(Path::new("r.yaml"), BAND_RULES, &EngineOptions::default()).unwrap());
    let mut tr = Trainer::new(&store, Tokenizer::default(), Some(rules)).unwrap();
    tr.train(spam_msg(1).as_bytes(), true);
    tr.commit().unwrap();
    assert_eq!(store.load().unwrap().counts("rule:SUBJ_PILLS").spam, 1);
    // The rules are gone now; forgetting still removes the rule token trained then.
    let mut tr = Trainer::new(&store, Tokenizer::default(), None).unwrap();
    assert_eq!(tr.forget(spam_msg(1).as_bytes()), popsift::classify::train::Outcome::Forgotten);
    tr.commit().unwrap();
    let m = store.load().unwrap();
    assert_eq!((m.nspam(), m.token_count()), (0, 0));
    let h = Headers::parse(spam_msg(1).as_bytes());
    assert_eq!(m.classify(&h, &[]), None);
}

#[test]
fn quarantine_restore_trains_ham() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let q = popsift::store::quarantine::Quarantine::new(&state.join("quarantine"));
    let meta = popsift::store::quarantine::Meta {
        user: "alice".into(),
        upstream: "pop.example:995".into(),
        uidl: "u1".into(),
        score: 6.0,
        rules: vec!["SUBJ_PILLS".into()],
        size: 100,
    };
    q.store(&meta, ham_msg(7).as_bytes()).unwrap();
    let id = q.list().unwrap()[0].id.clone();
    let dest = t.path().join("back.eml");
    let o = popsift(
        &["quarantine", "--state-dir", state.to_str().unwrap(), "restore", &id, "--to-eml", dest.to_str().unwrap()],
        t.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("classifier: trained as ham"), "{}", text(&o));
    let store = RedbStore::open(&state).unwrap();
    let m = store.load().unwrap();
    assert_eq!((m.nspam(), m.nham()), (0, 1));
    assert!(m.counts("subject:Meeting").ham == 1);
    drop(store);
    // --no-train leaves the model alone.
    q.store(&Meta2::meta("u2"), ham_msg(8).as_bytes()).unwrap();
    let id2 = q.list().unwrap().into_iter().find(|l| l.uidl == "u2").unwrap().id;
    let dest2 = t.path().join("back2.eml");
    let o = popsift(
        &[
            "quarantine",
            "--state-dir",
            state.to_str().unwrap(),
            "restore",
            &id2,
            "--to-eml",
            dest2.to_str().unwrap(),
            "--no-train",
        ],
        t.path(),
    );
    assert!(o.status.success() && !text(&o).contains("classifier"), "{}", text(&o));
    assert_eq!(RedbStore::open(&state).unwrap().load().unwrap().nham(), 1);
}

struct Meta2;
impl Meta2 {
    fn meta(uidl: &str) -> popsift::store::quarantine::Meta {
        popsift::store::quarantine::Meta {
            user: "alice".into(),
            upstream: "pop.example:995".into(),
            uidl: uidl.into(),
            score: 6.0,
            rules: vec![],
            size: 100,
        }
    }
}

#[test]
fn damaged_model_is_reported_never_a_panic() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let garbage = b"garbage, not a database, just some bytes that are long enough to look at".repeat(50);
    std::fs::write(state.join("bayes.redb"), &garbage).unwrap();
    let c = t.path().join("c");
    corpus(&c, 1);
    // train: a clear error naming the file, exit 2 (the user's command: nothing is moved).
    let o = popsift(
        &["train", "--state-dir", state.to_str().unwrap(), "--spam", c.join("s000.eml").to_str().unwrap()],
        t.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("bayes.redb") && text(&o).contains("damaged"), "{}", text(&o));
    // scan: the same error, no panic.
    let o = popsift(
        &["scan", "--state-dir", state.to_str().unwrap(), "--rules", "/nonexistent-rules", c.to_str().unwrap()],
        t.path(),
    );
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    // The proxy's handle: no panic, no model; the damaged file is moved aside intact and a
    // new empty model takes its place.
    let h = ModelHandle::open(&state, BayesSettings::default());
    assert!(h.current().is_none_or(|m| !m.ready()));
    let aside = moved_aside(&state);
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
    let store = RedbStore::open(&state).expect("a new, valid model");
    assert_eq!(store.stats().unwrap().0 + store.stats().unwrap().1, 0);
    drop(store);
    // Training works again.
    let o = popsift(
        &["train", "--state-dir", state.to_str().unwrap(), "--spam", c.join("s000.eml").to_str().unwrap()],
        t.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
}

fn moved_aside(state: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("bayes.redb.corrupt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn model_damaged_while_serving_is_moved_aside_and_rebuilt() {
    let t = tempfile::tempdir().unwrap();
    drop(trained_store(t.path(), 20));
    let h = ModelHandle::open(t.path(), BayesSettings::default());
    assert!(h.current().expect("model").ready());
    // The file is overwritten by something that is not a model (a disk error, a bad copy).
    std::fs::write(t.path().join("bayes.redb"), b"not a redb file, and longer than a header".repeat(100)).unwrap();
    h.refresh_blocking();
    assert!(h.current().is_none(), "the damaged model is not used");
    assert_eq!(moved_aside(t.path()).len(), 1);
    // The new empty model is a valid store; training it is seen at the next refresh.
    drop(trained_store(t.path(), 20));
    h.refresh_blocking();
    assert!(h.current().expect("retrained model").ready());
}

/// Waits (bounded) until the autolearn thread has finished everything it was given.
fn autolearn_idle(a: &popsift::classify::autolearn::Autolearner) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while a.pending() > 0 {
        assert!(std::time::Instant::now() < deadline, "autolearn did not finish within 30 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn verdict(score: f64) -> popsift::rules::Verdict {
    popsift::rules::Verdict { score, threshold: 5.0, spam: score >= 5.0, action: None, rules: vec![] }
}

#[test]
fn autolearn_learns_confident_verdicts_and_keeps_the_balance() {
    use popsift::classify::autolearn::{AutolearnResult as R, AutolearnSettings, Autolearner};
    let t = tempfile::tempdir().unwrap();
    let settings = BayesSettings {
        autolearn: AutolearnSettings { enabled: true, spam_above: 8.0, ham_below: 0.0, balance: 2.0 },
        ..BayesSettings::default()
    };
    assert!(Autolearner::start(t.path(), &BayesSettings::default(), RulesHandle::new(RuleSet::empty())).is_none());
    let a = Autolearner::start(t.path(), &settings, RulesHandle::new(RuleSet::empty())).expect("autolearn on");
    // Not confident: neither learned nor queued.
    a.offer(spam_msg(50).as_bytes(), false, &verdict(7.9));
    a.offer(ham_msg(50).as_bytes(), false, &verdict(0.5));
    // A capped header block is never learned.
    a.offer(spam_msg(51).as_bytes(), true, &verdict(20.0));
    // Five confident spam and no ham: the guard stops spam at (n + 1) / (0 + 1) > 2.
    for i in 0..5 {
        a.offer(spam_msg(i).as_bytes(), false, &verdict(10.0));
    }
    // The same message again is dropped before the queue.
    a.offer(spam_msg(0).as_bytes(), false, &verdict(10.0));
    autolearn_idle(&a);
    let stats =
        RedbStore::open_existing(t.path(), std::time::Duration::from_secs(5)).unwrap().unwrap().stats().unwrap();
    assert_eq!((stats.0, stats.1), (2, 0), "spam learned up to the balance");
    assert_eq!((a.counts().get(R::Spam), a.counts().get(R::Balance)), (2, 3));
    // Ham arrives: learned, and spam may follow again.
    for i in 0..3 {
        a.offer(ham_msg(i).as_bytes(), false, &verdict(-1.0));
    }
    autolearn_idle(&a);
    a.offer(spam_msg(10).as_bytes(), false, &verdict(10.0));
    autolearn_idle(&a);
    let stats =
        RedbStore::open_existing(t.path(), std::time::Duration::from_secs(5)).unwrap().unwrap().stats().unwrap();
    assert_eq!((stats.0, stats.1), (3, 3));
    assert_eq!((a.counts().get(R::Spam), a.counts().get(R::Ham)), (3, 3));
    drop(a);
    // A message the user trained is never relabelled by autolearn.
    let a = Autolearner::start(t.path(), &settings, RulesHandle::new(RuleSet::empty())).unwrap();
    a.offer(ham_msg(0).as_bytes(), false, &verdict(30.0));
    autolearn_idle(&a);
    assert_eq!(a.counts().get(R::Known), 1);
    let store = RedbStore::open_existing(t.path(), std::time::Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((store.stats().unwrap().0, store.stats().unwrap().1), (3, 3));
}

#[test]
fn autolearn_on_a_damaged_model_moves_it_aside_and_learns_into_a_new_one() {
    use popsift::classify::autolearn::{AutolearnResult as R, AutolearnSettings, Autolearner};
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("bayes.redb"), b"this is not a model file; some bytes".repeat(40)).unwrap();
    let settings = BayesSettings {
        autolearn: AutolearnSettings { enabled: true, spam_above: 8.0, ham_below: 0.0, balance: 3.0 },
        ..BayesSettings::default()
    };
    let a = Autolearner::start(t.path(), &settings, RulesHandle::new(RuleSet::empty())).unwrap();
    a.offer(spam_msg(1).as_bytes(), false, &verdict(10.0));
    autolearn_idle(&a);
    assert_eq!((a.counts().get(R::Spam), a.counts().get(R::Failed)), (1, 0));
    assert_eq!(moved_aside(t.path()).len(), 1);
    let store = RedbStore::open_existing(t.path(), std::time::Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(store.stats().unwrap().0, 1);
}

#[test]
fn autolearn_hook_runs_in_the_session_evaluation() {
    use popsift::classify::autolearn::{AutolearnResult as R, AutolearnSettings, Autolearner};
    let t = tempfile::tempdir().unwrap();
    drop(trained_store(t.path(), 20));
    let settings = BayesSettings {
        autolearn: AutolearnSettings { enabled: true, spam_above: 6.0, ham_below: 0.0, balance: 3.0 },
        ..BayesSettings::default()
    };
    let rules =
        RulesHandle::new(RuleSet::from_yaml(Path::new("r.yaml"), BAND_RULES, &EngineOptions::default()).unwrap());
    let learner = Autolearner::start(t.path(), &settings, rules.clone()).unwrap();
    let h =
        ModelHandle::open_with(t.path(), popsift::config::StoreSettings::default(), settings, Some(learner.clone()));
    let model = h.current().expect("model");
    // A new spam message: B_SPAM (6) + SUBJ_PILLS (1) = 7 >= 6, learned as spam; a new ham
    // message: B_HAM (-1), learned as ham.
    for (msg, spam) in [(spam_msg(77), true), (ham_msg(77), false)] {
        let block = popsift::pop3::multiline::HeaderBlock { bytes: msg.into_bytes(), truncated: false };
        let e = popsift::session::verdicts::evaluate(
            &block,
            100,
            &rules.current(),
            Some(&model),
            &popsift::session::tag::TagSettings::default(),
        );
        assert_eq!(e.verdict.spam, spam, "{:?}", e.verdict);
    }
    autolearn_idle(&learner);
    assert_eq!((learner.counts().get(R::Spam), learner.counts().get(R::Ham)), (1, 1));
    drop(h);
    let store = RedbStore::open_existing(t.path(), std::time::Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!((store.stats().unwrap().0, store.stats().unwrap().1), (21, 21));
}

#[test]
fn handle_sees_training_done_after_it_loaded() {
    let t = tempfile::tempdir().unwrap();
    let h = ModelHandle::open(t.path(), BayesSettings::default());
    assert!(h.current().is_none(), "no model yet");
    drop(trained_store(t.path(), 20));
    h.refresh_blocking();
    let first = h.current().expect("model after training");
    assert!(first.ready());
    // More training: the next refresh swaps in a new snapshot with the new counts.
    let store = RedbStore::open(t.path()).unwrap();
    let mut tr = Trainer::new(&store, Tokenizer::default(), None).unwrap();
    tr.train(spam_msg(99).as_bytes(), true);
    tr.commit().unwrap();
    drop(store);
    h.refresh_blocking();
    let second = h.current().unwrap();
    assert_eq!((first.nspam(), second.nspam()), (20, 21));
    assert!(second.generation() > first.generation());
}

/// Issue 16: the serving process polls the model every second, and asks the blocking pool
/// to re-read it only when its file moved (a task there every second kept idle blocking
/// threads from ever exiting).
#[test]
fn an_unchanged_model_file_needs_no_reread() {
    let t = tempfile::tempdir().unwrap();
    let h = ModelHandle::open(t.path(), BayesSettings::default());
    assert!(!h.may_have_changed(), "no model, and none appeared");
    drop(trained_store(t.path(), 20));
    assert!(h.may_have_changed(), "a model appeared");
    h.refresh_blocking();
    assert!(h.current().expect("model").ready());
    assert!(!h.may_have_changed(), "read, and unchanged since");
}

/// A training commit that leaves the model file's length and modification time as they were
/// (a commit in the same coarse timestamp tick as the reader's last look, which itself
/// writes the file) is still loaded: the trainer's change marker moved.
#[test]
fn training_within_one_timestamp_tick_is_seen() {
    let t = tempfile::tempdir().unwrap();
    drop(trained_store(t.path(), 20));
    let h = ModelHandle::open(t.path(), BayesSettings::default());
    let path = h.path();
    let before = std::fs::metadata(&path).unwrap();
    assert_eq!(h.current().expect("model").nspam(), 20);
    let store = RedbStore::open(t.path()).unwrap();
    let mut tr = Trainer::new(&store, Tokenizer::default(), None).unwrap();
    tr.train(spam_msg(99).as_bytes(), true);
    tr.commit().unwrap();
    drop(store);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(before.modified().unwrap()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before.len(), "same length, same time: the same stamp");
    assert!(h.may_have_changed());
    h.refresh_blocking();
    assert_eq!(h.current().unwrap().nspam(), 21, "the second commit was loaded");
    assert!(!h.may_have_changed(), "and nothing more to do");
}
