//! Hostile rule and list files (issue 10, item 7): a FIFO, a device, an oversized list, a
//! regex whose automaton would take gigabytes, a rule file symlinked to a secret. Each must be
//! refused quickly with an error naming file:line:col, never quote the file's contents, and a
//! reload that meets one keeps the old rules.
//!
//! Every run of `popsift check` or of a load is guarded by a deadline (a hang guard: the bug
//! was a load that never returned), not a timing claim.
// Only the popsift launcher is used here, not the Dovecot and client re-exports.
#[allow(unused_imports)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use popsift::rules::{EngineOptions, RuleSet, RulesHandle};

/// The hang guard for one check or load.
const DEADLINE: Duration = Duration::from_secs(10);

const GOOD: &str = "rules:\n  - id: GOOD\n    header: Subject\n    regex: viagra\n    score: 9\n";

/// `popsift [pre…] check --rules RULES`, killed at [`DEADLINE`]: (exit code, stderr).
fn check(rules: &Path, pre: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_popsift"))
        .args(pre)
        .arg("check")
        .arg("--rules")
        .arg(rules)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn popsift check");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("popsift check --rules {} did not finish within {DEADLINE:?}", rules.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` on a thread and fails the test if it does not return within [`DEADLINE`].
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(DEADLINE).unwrap_or_else(|_| panic!("{what} did not return within {DEADLINE:?}"))
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo");
    assert!(st.success());
}

/// A rules directory with `r.yaml` using `keywords_file: lists/kw.txt` (line 4, column 20).
fn keywords_rules(dir: &Path) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(rules.join("lists")).unwrap();
    std::fs::write(
        rules.join("r.yaml"),
        "rules:\n  - id: KW\n    header: Subject\n    keywords_file: lists/kw.txt\n    score: 5\n",
    )
    .unwrap();
    rules
}

#[test]
fn fifo_keywords_file_fails_check_fast() {
    let dir = tempfile::tempdir().unwrap();
    let rules = keywords_rules(dir.path());
    mkfifo(&rules.join("lists/kw.txt"));
    let (code, err) = check(&rules, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("r.yaml:4:20: rule KW: keywords_file: refused"), "{err}");
    assert!(err.contains("a FIFO"), "{err}");
}

#[test]
fn fifo_rule_file_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("a.yaml"), GOOD).unwrap();
    mkfifo(&rules.join("b.yaml"));
    let (code, err) = check(&rules, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("b.yaml:1:1: refused") && err.contains("a FIFO"), "{err}");
}

#[test]
fn dev_zero_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rules = keywords_rules(dir.path());
    std::os::unix::fs::symlink("/dev/zero", rules.join("lists/kw.txt")).unwrap();
    let (code, err) = check(&rules, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("r.yaml:4:20: rule KW: keywords_file: refused"), "{err}");
    assert!(err.contains("a character device"), "{err}");
    // Allowing /dev does not make a device readable.
    let (code, err) = check(&rules, &["--rules-allow-dir", "/dev"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("a character device"), "{err}");
}

#[test]
fn oversized_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rules = keywords_rules(dir.path());
    // Sparse: 17 MiB long, nothing written.
    let f = std::fs::File::create(rules.join("lists/kw.txt")).unwrap();
    f.set_len(popsift::rules::lists::LIST_FILE_LIMIT + (1 << 20)).unwrap();
    let (code, err) = check(&rules, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("r.yaml:4:20: rule KW: keywords_file: refused"), "{err}");
    assert!(err.contains("over the 16 MiB limit"), "{err}");
}

#[test]
fn oversized_rule_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let f = std::fs::File::create(rules.join("big.yaml")).unwrap();
    f.set_len(popsift::rules::lists::RULE_FILE_LIMIT + 1).unwrap();
    let (code, err) = check(&rules, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("big.yaml:1:1: refused") && err.contains("over the 4 MiB limit"), "{err}");
}

#[test]
fn huge_regexes_are_refused_with_their_position() {
    for (pat, col) in [(r"x\w{1000}{30}", 12), (r"(?i)\pL{5000}", 12), (r"(?i)viagra\w{1000}", 12)] {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        std::fs::write(
            rules.join("r.yaml"),
            format!("{GOOD}  - id: BIG\n    header: Subject\n    regex: {pat}\n    score: 1\n"),
        )
        .unwrap();
        let (code, err) = check(&rules, &[]);
        assert_eq!(code, 1, "{pat}: {err}");
        assert!(
            err.contains(&format!("r.yaml:8:{col}: rule BIG: regex: error building NFA: pattern too large")),
            "{pat}: {err}"
        );
        assert!(err.contains("1 MiB limit"), "{pat}: {err}");
    }
}

/// Secrets as found in real files, each with the start of the error it must produce: a
/// shadow line (YAML reads it as a mapping key) and an environment file (a plain string).
const SECRETS: &[(&str, &str)] = &[
    ("root:$6$S3CRET-TOKEN-4711$hash:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n", "unknown field (not shown"),
    ("API_TOKEN=S3CRET-TOKEN-4711\nDB_PASSWORD=daemon\n", "invalid type: string, expected"),
];

/// A secret file outside the rules tree, and a rules directory whose `evil.yaml` links to it.
fn secret_setup(dir: &Path, secret: &str) -> (PathBuf, PathBuf) {
    let secrets = dir.join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("shadow"), secret).unwrap();
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("a.yaml"), GOOD).unwrap();
    std::os::unix::fs::symlink(secrets.join("shadow"), rules.join("evil.yaml")).unwrap();
    (rules, secrets)
}

#[test]
fn rule_file_symlinked_to_a_secret_is_not_echoed() {
    for (secret, parse_error) in SECRETS {
        let dir = tempfile::tempdir().unwrap();
        let (rules, secrets) = secret_setup(dir.path(), secret);
        let (code, err) = check(&rules, &[]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("evil.yaml:1:1: refused"), "{err}");
        assert!(err.contains("outside the rules directory"), "{err}");
        assert!(!err.contains("S3CRET") && !err.contains("daemon"), "{err}");
        // Allowed explicitly, it is read — and its parse error still quotes nothing of it.
        let (code, err) = check(&rules, &["--rules-allow-dir", secrets.to_str().unwrap()]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("evil.yaml:1:1: {parse_error}")), "{err}");
        assert!(!err.contains("S3CRET") && !err.contains("daemon") && !err.contains("TOKEN"), "{err}");
    }
}

#[test]
fn list_symlinked_outside_the_tree_needs_allowing() {
    let dir = tempfile::tempdir().unwrap();
    let rules = keywords_rules(dir.path());
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("kw.txt"), "lottery\n").unwrap();
    std::os::unix::fs::symlink(shared.join("kw.txt"), rules.join("lists/kw.txt")).unwrap();
    let (code, err) = check(&rules, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("r.yaml:4:20: rule KW: keywords_file: refused") && err.contains("--rules-allow-dir"), "{err}");
    let (code, err) = check(&rules, &["--rules-allow-dir", shared.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn reload_keeps_old_rules_on_hostile_files() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("lists")).unwrap();
    std::fs::write(rules.join("lists/kw.txt"), "lottery\n").unwrap();
    let with_list = "rules:\n  - id: KW\n    header: Subject\n    keywords_file: lists/kw.txt\n    score: 9\n";
    std::fs::write(rules.join("r.yaml"), with_list).unwrap();
    let h = RulesHandle::load(&rules, EngineOptions::default()).unwrap();
    let old = h.current();
    assert!(old.evaluate(b"Subject: lottery\n", 1).spam);

    type Setup = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Setup, &str)> = vec![
        ("FIFO list", Box::new(|r: &Path| mkfifo(&r.join("lists/kw.txt"))), "a FIFO"),
        (
            "/dev/zero list",
            Box::new(|r: &Path| std::os::unix::fs::symlink("/dev/zero", r.join("lists/kw.txt")).unwrap()),
            "a character device",
        ),
        (
            "huge regex",
            Box::new(|r: &Path| {
                std::fs::write(
                    r.join("r.yaml"),
                    "rules:\n  - id: KW\n    header: Subject\n    regex: x\\w{1000}{30}\n    score: 9\n",
                )
                .unwrap()
            }),
            "r.yaml:4:12: rule KW: regex: error building NFA: pattern too large",
        ),
    ];
    let h2 = h.clone();
    for (what, setup, want) in cases {
        // Fresh, good files, then the hostile one.
        let _ = std::fs::remove_file(rules.join("lists/kw.txt"));
        std::fs::write(rules.join("lists/kw.txt"), "lottery\n").unwrap();
        std::fs::write(rules.join("r.yaml"), with_list).unwrap();
        let _ = std::fs::remove_file(rules.join("lists/kw.txt"));
        setup(&rules);
        let h = h2.clone();
        let e = guarded(what, move || h.reload()).unwrap_err().to_string();
        assert!(e.contains(want), "{what}: {e}");
        assert!(std::sync::Arc::ptr_eq(&old, &h2.current()), "{what}: the old rules were replaced");
    }
    // A good file again: the reload goes through.
    let _ = std::fs::remove_file(rules.join("lists/kw.txt"));
    std::fs::write(rules.join("lists/kw.txt"), "lottery\nprize\n").unwrap();
    std::fs::write(rules.join("r.yaml"), with_list).unwrap();
    assert_eq!(guarded("good reload", move || h2.reload()).unwrap(), 1);
}

/// The served proxy: a list replaced by a FIFO, then SIGHUP — the reload fails promptly (the
/// log says why) and a later good reload still works, so the reloader is not stuck.
#[test]
fn sighup_with_fifo_list_does_not_hang_the_reloader() {
    let p = support::Popsift::start(&support::ProxyOpts { upstream: "127.0.0.1:9", rules: GOOD, ..Default::default() });
    let rules = p.dir.path().join("rules");
    std::fs::create_dir_all(rules.join("lists")).unwrap();
    std::fs::write(rules.join("lists/kw.txt"), "lottery\n").unwrap();
    std::fs::write(
        rules.join("test.yaml"),
        "rules:\n  - id: KW\n    header: Subject\n    keywords_file: lists/kw.txt\n    score: 9\n",
    )
    .unwrap();
    let reloaded = |n: usize| p.log().matches("rules reloaded").count() >= n;
    let failed = |n: usize| p.log().matches("rule reload failed").count() >= n;
    p.signal("HUP");
    wait_for(&p, "a good reload", || reloaded(1));
    let fails_before = p.log().matches("rule reload failed").count();
    std::fs::remove_file(rules.join("lists/kw.txt")).unwrap();
    mkfifo(&rules.join("lists/kw.txt"));
    p.signal("HUP");
    // The file watcher may also reload (and fail on the missing file) between the two
    // steps, so wait for the FIFO refusal itself, not for a count of failures.
    wait_for(&p, "the failed reload", || failed(fails_before + 1) && p.log().contains("a FIFO"));
    std::fs::remove_file(rules.join("lists/kw.txt")).unwrap();
    std::fs::write(rules.join("lists/kw.txt"), "lottery\nprize\n").unwrap();
    let ok_before = p.log().matches("rules reloaded").count();
    p.signal("HUP");
    wait_for(&p, "a good reload after the FIFO", || reloaded(ok_before + 1));
}

fn wait_for(p: &support::Popsift, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}; log:\n{}", p.log());
}

#[test]
fn rule_set_loads_stay_in_the_tree_for_a_single_file() {
    // A single rule file named on the command line: lists beside it are fine, lists elsewhere
    // are not.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kw.txt"), "lottery\n").unwrap();
    let f = dir.path().join("r.yaml");
    std::fs::write(&f, "rules:\n  - id: KW\n    header: Subject\n    keywords_file: kw.txt\n    score: 9\n").unwrap();
    assert!(RuleSet::load(&f, &EngineOptions::default()).is_ok());
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("kw.txt"), "lottery\n").unwrap();
    std::fs::write(
        &f,
        format!(
            "rules:\n  - id: KW\n    header: Subject\n    keywords_file: {}\n    score: 9\n",
            other.path().join("kw.txt").display()
        ),
    )
    .unwrap();
    let e = RuleSet::load(&f, &EngineOptions::default()).unwrap_err().to_string();
    assert!(e.contains("outside the rules directory"), "{e}");
}
