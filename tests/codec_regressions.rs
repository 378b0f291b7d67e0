//! Replays every input under tests/fuzz/regressions/<target>/ through the same invariant
//! checks the fuzz targets run, so a fixed crash stays fixed in an ordinary `cargo test`.
//!
//! File names say where an input came from: `seed-*` are hand-written (edge cases picked by
//! a person). `headers/fuzz-*` come from a 60 s `cargo fuzz run` of the `headers` target
//! (83 k inputs, no crash found): its corpus was minimised with libFuzzer's set-cover merge
//! (629 inputs), and from those the four smallest of each kind (encoded words B/Q, charsets,
//! 8-bit bytes, folding, addresses, Received, lines without a colon) were kept here. None of
//! them is a crash reproducer; they pin the coverage the fuzzer reached.
//! `headers/fuzz-tmin-q-escape-cut-at-word-end` is one: with the RFC 2047 Q decoder broken on
//! purpose (an `=X` escape cut by the end of the word read past it), the fuzzer found a crash
//! within two minutes and `-minimize_crash` cut it to 10 bytes; the hand-written
//! `seed-q-escape-cut-at-word-end` pins the same case.
//! `machine/seed-*` are hand-written sessions for the whole session machine (SASL responses
//! that read like DELE, early answers between quarantine copies, a server without TOP
//! refused, sessions left without QUIT, an upstream line that is not a status line). An
//! 11-minute run of the `machine` target from them (1.8 M inputs, 1,941 coverage points,
//! machine loaded by other builds) found no crash.
use std::path::Path;

#[path = "fuzz/fuzz_targets/headers_check.rs"]
mod headers_check;

fn replay(target: &str, check: impl Fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data))).is_err() {
            panic!("regression input {} fails the {target} checks", path.display());
        }
        n += 1;
    }
    n
}

#[test]
fn command_regressions() {
    assert!(replay("command", popsift::pop3::invariants::command_line) > 0);
}

#[test]
fn multiline_regressions() {
    assert!(replay("multiline", popsift::pop3::invariants::multiline) > 0);
}

/// Session planning on upstream listings and client streams (issue 12), including the LIST
/// with gaps that made `RETR 2` panic the session.
#[test]
fn session_regressions() {
    assert!(replay("session", popsift::session::invariants::planning) >= 3);
}

/// The whole session machine (issue 12): SASL responses that read like DELE, early answers
/// during quarantine copies, a server without TOP refused, sessions left without QUIT.
#[test]
fn machine_regressions() {
    assert!(replay("machine", popsift::session::invariants::machine) >= 5);
}

#[test]
fn headers_regressions() {
    let rules = headers_check::shipped_rules(Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(replay("headers", |data| headers_check::check(&rules, data)) > 0);
}

#[test]
fn multiline_invariants_hold_on_generated_inputs() {
    // A cheap deterministic sweep over short inputs built from the interesting bytes.
    let alphabet = [b'.', b'\r', b'\n', b'a'];
    for len in 0..=7u32 {
        for code in 0..4u32.pow(len) {
            let mut c = code;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    let b = alphabet[(c % 4) as usize];
                    c /= 4;
                    b
                })
                .collect();
            popsift::pop3::invariants::multiline(&data);
            popsift::pop3::invariants::command_line(&data);
        }
    }
}
