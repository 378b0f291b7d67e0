//! A binary installed anywhere works: run from an empty directory with a fresh home, popsift
//! finds config and rules on its search path (`./`, `$XDG_CONFIG_HOME/popsift/`, the system
//! directory) and otherwise falls back to the shipped rules compiled into it. `popsift init`
//! writes a starter config and rules that the next run uses. `/etc/popsift` is replaced by
//! `$POPSIFT_SYSTEM_CONFIG_DIR` so nothing here writes outside temporary directories.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A fresh "user": empty working directory, home, config, state and system directories.
struct Env {
    _t: tempfile::TempDir,
    cwd: PathBuf,
    home: PathBuf,
    xdg_config: PathBuf,
    xdg_state: PathBuf,
    system: PathBuf,
}

impl Env {
    fn new() -> Env {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| {
            let d = t.path().join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        Env { cwd: p("work"), home: p("home"), xdg_config: p("config"), xdg_state: p("state"), system: p("etc"), _t: t }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_popsift"));
        c.args(args)
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", &self.xdg_config)
            .env("XDG_STATE_HOME", &self.xdg_state)
            .env("POPSIFT_SYSTEM_CONFIG_DIR", &self.system);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// `popsift scan --json FILE`: the verdict and the rules that fired.
    fn scan(&self, msg: &Path) -> (String, Vec<String>, String) {
        let o = self.run(&["scan", "--json", msg.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{err}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let rules = v["rules"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
        (v["verdict"].as_str().unwrap().to_string(), rules, err)
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules/msgs").join(name)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A rule file that flags any message whose Subject contains `word`.
fn marker_rule(id: &str, word: &str) -> String {
    format!("rules:\n  - id: {id}\n    header: Subject\n    keywords: [\"{word}\"]\n    score: 50\n")
}

#[test]
fn with_nothing_on_disk_the_builtin_rules_filter() {
    let e = Env::new();
    let o = e.run(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("rules: ") && out.contains(" rules in 5 files OK"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("built-in rules"), "{}", text(&o));
    // The shipped rules catch this spam (SUBJ_MONEY_PHRASES, see tests/rules_cli.rs).
    let (verdict, rules, err) = e.scan(&fixture("00016.eml"));
    assert_eq!(verdict, "spam", "{err}");
    assert!(rules.iter().any(|r| r == "SUBJ_MONEY_PHRASES"), "{rules:?}");
    assert!(err.contains("built-in rules"), "{err}");
    // Nothing was written outside the state directory.
    assert_eq!(std::fs::read_dir(&e.cwd).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&e.xdg_config).unwrap().count(), 0);
}

#[test]
fn serve_says_it_uses_the_builtin_rules() {
    let e = Env::new();
    let mut child = e
        .cmd(&["serve", "--upstream", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--metrics", "off"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut found = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                found = line.contains("using the built-in rules");
                seen.push(line);
                if found {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "{}", seen.join("\n"));
    assert!(!seen.iter().any(|l| l.contains("passed through unfiltered")), "{}", seen.join("\n"));
    assert!(e.xdg_state.join("popsift/builtin-rules/20-subject.yaml").is_file());
}

#[test]
fn init_writes_files_that_the_next_run_uses() {
    let e = Env::new();
    let o = e.run(&["init"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let dir = e.xdg_config.join("popsift");
    assert!(dir.join("popsift.yaml").is_file() && dir.join("rules/20-subject.yaml").is_file());
    // Refuses to overwrite.
    let o = e.run(&["init"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("already exists"), "{}", text(&o));

    // The user's rules are used: an edit shows in check and scan.
    let ham = fixture("00006.eml");
    let (verdict, _, err) = e.scan(&ham);
    assert_eq!(verdict, "ham", "{err}");
    assert!(!err.contains("built-in"), "{err}");
    let subject = subject_word(&ham);
    std::fs::write(dir.join("rules/95-mine.yaml"), marker_rule("MY_MARKER", &subject)).unwrap();
    let o = e.run(&["check"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(" rules in 6 files OK"), "{}", text(&o));
    let (verdict, rules, err) = e.scan(&ham);
    assert_eq!((verdict.as_str(), rules.iter().any(|r| r == "MY_MARKER")), ("spam", true), "{err}");
}

#[test]
fn user_directory_wins_over_the_system_directory() {
    let e = Env::new();
    let ham = fixture("00006.eml");
    let subject = subject_word(&ham);
    std::fs::create_dir_all(e.system.join("rules")).unwrap();
    std::fs::write(e.system.join("rules/mine.yaml"), marker_rule("SYSTEM_MARKER", &subject)).unwrap();
    let (_, rules, err) = e.scan(&ham);
    assert_eq!(rules, ["SYSTEM_MARKER"], "{err}");
    assert!(err.contains(&e.system.join("rules").display().to_string()), "{err}");

    let user = e.xdg_config.join("popsift/rules");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(user.join("mine.yaml"), marker_rule("USER_MARKER", &subject)).unwrap();
    let (_, rules, err) = e.scan(&ham);
    assert_eq!(rules, ["USER_MARKER"], "{err}");

    // A config file found on the search path is read too: its `rules:` wins over rules/.
    let other = e.home.join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x.yaml"), marker_rule("CONFIG_MARKER", &subject)).unwrap();
    std::fs::write(e.system.join("popsift.yaml"), format!("rules: {}\n", other.display())).unwrap();
    let (_, rules, err) = e.scan(&ham);
    assert_eq!(rules, ["CONFIG_MARKER"], "{err}");
    // --rules beats everything.
    let o = e.run(&["check", "--rules", user.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 rules in 1 file OK"), "{}", text(&o));
}

/// A word from the message's Subject (for a rule that matches exactly that message).
fn subject_word(msg: &Path) -> String {
    let bytes = std::fs::read(msg).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    let subject =
        text.lines().find_map(|l| l.strip_prefix("Subject:")).expect("fixture has a Subject").trim().to_string();
    subject.split_whitespace().max_by_key(|w| w.len()).unwrap().to_string()
}

/// The exit codes `--help` documents: 0 ok, 1 rule/data errors, 2 usage/config/input errors.
#[test]
fn exit_codes_match_the_help() {
    let e = Env::new();
    let code = |args: &[&str]| {
        let o = e.run(args);
        (o.status.code(), text(&o))
    };
    let (c, help) = code(&["--help"]);
    assert_eq!(c, Some(0));
    assert!(help.contains("Exit codes:") && help.contains("1  rule or data errors"), "{help}");
    let bad_rules = e.cwd.join("bad.yaml");
    std::fs::write(&bad_rules, "rules:\n  - id: X\n    header: Subject\n    regex: '(unclosed'\n    score: 1\n")
        .unwrap();
    let bad = bad_rules.to_str().unwrap();
    let msg = fixture("00006.eml");
    let msg = msg.to_str().unwrap();
    let qdir = e.home.join("q");
    let q = qdir.to_str().unwrap();
    for (args, want) in [
        (vec!["check", "--rules", bad], 1),
        (vec!["scan", "--rules", bad, msg], 1),
        (vec!["quarantine", "--dir", q, "show", "nosuchid"], 1),
        (vec!["scan", "--spam-action", "bogus", msg], 2),
        (vec!["scan", "/no/such/file.eml"], 2),
        (vec!["train", "--state-dir", q], 2),
        (vec!["quarantine", "--dir", q, "restore", "nosuchid", "--to-eml", "/no/such/dir/x.eml"], 1),
        (vec!["serve", "--metrics", "off"], 2),
        (vec!["--no-such-flag"], 2),
    ] {
        let (c, out) = code(&args);
        assert_eq!(c, Some(want), "{args:?}: {out}");
    }
}
