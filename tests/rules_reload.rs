//! Hot reload: a good reload swaps the set, a broken file keeps the old one; the file
//! watcher picks up edits.
use std::time::Duration;

use popsift::rules::{EngineOptions, RulesHandle};

const GOOD: &str = "rules:\n  - id: X\n    header: Subject\n    regex: x\n    score: 9\n";

#[test]
fn reload_keeps_old_set_on_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.yaml");
    std::fs::write(&f, GOOD).unwrap();
    let h = RulesHandle::load(dir.path(), EngineOptions::default()).unwrap();
    let old = h.current();
    assert_eq!(old.len(), 1);
    std::fs::write(&f, "rules:\n  - id: X\n    header: Subject\n    regex: '('\n").unwrap();
    let e = h.reload().unwrap_err();
    assert!(e.to_string().contains("r.yaml:4:12: rule X: regex: unclosed group"), "{e}");
    assert!(std::sync::Arc::ptr_eq(&old, &h.current()));
    std::fs::write(&f, format!("{GOOD}  - id: Y\n    header: To\n    exists: false\n    score: 1\n")).unwrap();
    assert_eq!(h.reload().unwrap(), 2);
    assert_eq!(h.current().len(), 2);
    // A session that took the old set keeps it.
    assert_eq!(old.len(), 1);
}

#[test]
fn handle_without_path_cannot_reload() {
    let h = RulesHandle::new(popsift::rules::RuleSet::empty());
    assert!(h.reload().is_err());
    assert!(h.current().is_empty());
}

#[test]
fn watcher_reloads_on_file_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    std::fs::write(dir.path().join("lists/d.txt"), "a.test\n").unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "rules:\n  - id: D\n    header: From:addr\n    domain_in: lists/d.txt\n    score: 9\n",
    )
    .unwrap();
    let h = RulesHandle::load(dir.path(), EngineOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        h.spawn_reloader();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!h.current().evaluate(b"From: x@b.test\n", 1).spam);
        // Changing a list file triggers a reload.
        std::fs::write(dir.path().join("lists/d.txt"), "a.test\nb.test\n").unwrap();
        let mut ok = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if h.current().evaluate(b"From: x@b.test\n", 1).spam {
                ok = true;
                break;
            }
        }
        assert!(ok, "list change was not picked up");
        // A broken rule file keeps the current set.
        std::fs::write(dir.path().join("r.yaml"), "rules: [").unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(h.current().evaluate(b"From: x@b.test\n", 1).spam);
    });
}

/// SIGHUP reloads even when no file event was seen (the change happened before the watcher).
#[test]
fn sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.yaml");
    std::fs::write(&f, GOOD).unwrap();
    let h = RulesHandle::load(&f, EngineOptions::default()).unwrap();
    std::fs::write(&f, format!("{GOOD}  - id: Y\n    header: To\n    exists: false\n    score: 1\n")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        h.spawn_reloader();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.current().len(), 1);
        let status =
            std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
        assert!(status.success());
        let mut n = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            n = h.current().len();
            if n == 2 {
                break;
            }
        }
        assert_eq!(n, 2, "SIGHUP did not reload");
    });
}
