//! Replays every input under tests/fuzz/regressions/<target>/ through the same invariant
//! checks the fuzz targets run, so a fixed crash stays fixed in an ordinary `cargo test`.
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/regressions").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        check(&data);
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
