//! Properties every decoder must keep, checked on arbitrary input by the fuzz targets
//! (`tests/fuzz/`) and by the regression replay in `tests/codec_regressions.rs`. Each
//! function panics when a property is violated.
//!
//! A test oracle, not protocol code: it asserts (and so indexes and unwraps) on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use super::command::{parse, Command};
use super::line::{split_line, Line};
use super::multiline::{dot_stuff, unstuff, BodyScanner, HeaderCollector};

/// Splitting and parsing command lines never panics; whatever parses re-encodes to a line
/// that parses to the same command.
pub fn command_line(data: &[u8]) {
    let mut rest = data;
    while let Line::Complete { content, consumed } = split_line(rest, 512) {
        let line = &rest[..content];
        if let Ok(cmd) = parse(line) {
            let enc = cmd.encode();
            assert!(enc.ends_with(b"\r\n"));
            let again = parse(&enc[..enc.len() - 2]).expect("encoded command parses");
            match (&cmd, &again) {
                // USER trims trailing spaces; PASS keeps them: both compare after encoding.
                (Command::User(_), _) | (Command::Pass(_), _) => assert_eq!(again.encode(), enc),
                _ => assert_eq!(again, cmd),
            }
        }
        rest = &rest[consumed..];
    }
}

/// The body scanner finds the same terminator whatever the chunking, the header collector
/// agrees with it, and stuffing then scanning then unstuffing gives the content back.
pub fn multiline(data: &[u8]) {
    let split = data.first().map_or(0, |&b| b as usize) % (data.len() + 1);
    let mut whole = BodyScanner::new();
    let expect = whole.feed(data);
    let mut parts = BodyScanner::new();
    let got = match parts.feed(&data[..split]) {
        Some(n) => Some(n),
        None => parts.feed(&data[split..]).map(|n| split + n),
    };
    assert_eq!(got, expect);
    let mut hc = HeaderCollector::new(64);
    let hc_done = match hc.feed(&data[..split]) {
        Some(n) => Some(n),
        None => hc.feed(&data[split..]).map(|n| split + n),
    };
    assert_eq!(hc_done, expect);
    let block = hc.finish();
    assert!(block.bytes.len() <= 64 + 3);

    let mut wire = Vec::new();
    dot_stuff(data, &mut wire);
    let mut s = BodyScanner::new();
    assert_eq!(s.feed(&wire), Some(wire.len()), "stuffed content ends exactly at its terminator");
    let back = unstuff(&wire[..wire.len() - 3]);
    // dot_stuff normalises bare LF to CRLF and adds a final CRLF; compare in that form.
    let mut norm = Vec::new();
    let mut prev = 0u8;
    for &b in data {
        if b == b'\n' && prev != b'\r' {
            norm.push(b'\r');
        }
        norm.push(b);
        prev = b;
    }
    if !norm.is_empty() && !norm.ends_with(b"\n") {
        norm.extend_from_slice(b"\r\n");
    }
    assert_eq!(back, norm);
}
