//! The popsift binary a bench measures (issue 16): by default a plain `cargo build --release`
//! of this checkout, the binary `cargo run --release` and the Debian package run.
//!
//! Not the one cargo builds for the bench itself (`CARGO_BIN_EXE_popsift`): that build has the
//! dev-dependencies' features switched on, tokio's `test-util` among them, whose clock takes a
//! mutex on every read (about 500 instructions more per one-at-a-time RETR by callgrind, on the
//! latency-bound path the relay bench times). An environment variable names another build
//! instead (an earlier one kept for a before/after comparison).

use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `$var` if set (and not empty: `VAR= cargo bench` means the default), else a private copy
/// of a plain release build, built (once per bench run) if it is not up to date. A copy:
/// cargo re-links `target/release/popsift` at every build (a bench build puts its test-util
/// binary there), and two processes running one file share its pages, which the idle
/// bench's PSS would count for neither.
pub fn popsift(var: &str) -> String {
    if let Some(path) = std::env::var(var).ok().filter(|p| !p.is_empty()) {
        return path;
    }
    static PLAIN: OnceLock<String> = OnceLock::new();
    PLAIN.get_or_init(build).clone()
}

fn build() -> String {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--bin", "popsift", "--message-format=json-render-diagnostics"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build --release");
    assert!(out.status.success(), "cargo build --release --bin popsift failed");
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "popsift")
        .find_map(|v| v["executable"].as_str().map(str::to_string))
        .expect("cargo reported no popsift executable");
    // One copy per bench, replaced at its next run; one per process only while another run
    // of the same bench still executes it ("text file busy").
    let dir = env!("CARGO_TARGET_TMPDIR");
    let mine = format!("{dir}/popsift-plain-{}", env!("CARGO_CRATE_NAME"));
    if std::fs::copy(&built, &mine).is_ok() {
        return mine;
    }
    let fallback = format!("{mine}-{}", std::process::id());
    std::fs::copy(&built, &fallback).expect("copy the plain build");
    fallback
}
