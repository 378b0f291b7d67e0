//! Tagging: rewriting a spam message's header block the way SpamAssassin does, so the
//! client's own filters (which already understand SpamAssassin) do the rest.
//!
//! Works on the raw header block (RFC 5322 §2.2: fields, continuation lines starting with
//! WSP, ended by an empty line), byte for byte: fields popsift does not touch are kept
//! exactly, so a tagged message differs from the original only by the removed `X-Spam-*`
//! fields, the added ones, and the optional Subject prefix. Because the header block is known
//! from the login scan, the size change is known before the client asks (STAT and LIST
//! report exactly what RETR sends).
use crate::rules::Verdict;

/// The tagging settings are part of the config schema; named here too for the code that tags.
pub use crate::config::TagSettings;

/// Splits a header block into fields (each with its continuation lines and line end) and the
/// rest (the empty line, or nothing when the block has none).
fn fields(block: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while let Some(rest) = block.get(i..).filter(|r| !r.is_empty()) {
        let end = memchr::memchr(b'\n', rest).map_or(block.len(), |p| i + p + 1);
        let line = block.get(i..end).unwrap_or_default();
        if line == b"\r\n" || line == b"\n" {
            if let Some(field) = block.get(start..i).filter(|f| !f.is_empty()) {
                out.push(field);
            }
            return (out, rest);
        }
        let continuation = matches!(line.first(), Some(b' ') | Some(b'\t'));
        if !continuation {
            if let Some(field) = block.get(start..i).filter(|f| !f.is_empty()) {
                out.push(field);
            }
            start = i;
        }
        i = end;
    }
    if let Some(field) = block.get(start..).filter(|f| !f.is_empty()) {
        out.push(field);
    }
    (out, &[])
}

fn name_is(field: &[u8], name: &[u8]) -> bool {
    field.get(..name.len()).is_some_and(|n| n.eq_ignore_ascii_case(name)) && field.get(name.len()) == Some(&b':')
}

fn is_x_spam(field: &[u8]) -> bool {
    field.len() > 7 && field.get(..7).is_some_and(|p| p.eq_ignore_ascii_case(b"X-Spam-"))
}

/// Folds `name: value` at commas/spaces so no line exceeds 78 octets (RFC 5322 §2.1.1).
fn folded(name: &str, value: &str) -> Vec<u8> {
    let mut out = format!("{name}: ");
    let mut line_len = out.len();
    let mut first = true;
    for word in value.split(' ') {
        let mut pieces: Vec<String> = Vec::new();
        // Split long comma lists (tests=A,B,C) into comma-ended pieces.
        let mut cur = String::new();
        for ch in word.chars() {
            cur.push(ch);
            if ch == ',' {
                pieces.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            pieces.push(cur);
        }
        for (k, p) in pieces.iter().enumerate() {
            let sep = if first || k > 0 { "" } else { " " };
            if line_len + sep.len() + p.len() > 78 && !first {
                out.push_str("\r\n\t");
                line_len = 1;
            } else {
                out.push_str(sep);
                line_len += sep.len();
            }
            out.push_str(p);
            line_len += p.len();
            first = false;
        }
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The SpamAssassin-style fields for a verdict.
pub fn spam_fields(v: &Verdict, spam: bool) -> Vec<u8> {
    let tests: Vec<&str> = v.rules.iter().map(|r| &**r).collect();
    let tests = if tests.is_empty() { "none".to_string() } else { tests.join(",") };
    let mut out = Vec::new();
    if spam {
        out.extend_from_slice(b"X-Spam-Flag: YES\r\n");
    }
    let status =
        format!("{}, score={:.1} required={:.1} tests={tests}", if spam { "Yes" } else { "No" }, v.score, v.threshold);
    out.extend_from_slice(&folded("X-Spam-Status", &status));
    if spam {
        let stars = if v.score >= 1.0 { "*".repeat((v.score.floor() as usize).min(50)) } else { String::new() };
        out.extend_from_slice(format!("X-Spam-Level: {stars}\r\n").as_bytes());
    }
    out
}

/// Rewrites a header block for a message judged spam (`spam`) or ham. Returns `None` when
/// nothing changes (ham without `ham_status`).
pub fn rewrite(block: &[u8], v: &Verdict, spam: bool, s: &TagSettings) -> Option<Vec<u8>> {
    if !spam && !s.ham_status {
        return None;
    }
    let (fields, rest) = fields(block);
    let mut out = Vec::with_capacity(block.len() + 160);
    // Our fields go first, as a trace-like prepend: they never split a folded field and
    // filters match them anywhere in the header.
    out.extend_from_slice(&spam_fields(v, spam));
    for f in fields {
        if s.strip_existing && is_x_spam(f) {
            continue;
        }
        match (&s.subject_prefix, spam && name_is(f, b"Subject")) {
            (Some(prefix), true) => {
                // Subject: <prefix><original value, folding kept>
                let colon = f.iter().position(|&b| b == b':').unwrap_or(7);
                let (name, value) = f.split_at_checked(colon + 1).unwrap_or((f, &[]));
                let value = value.strip_prefix(b" ").unwrap_or(value);
                out.extend_from_slice(name);
                out.push(b' ');
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(value);
            }
            _ => out.extend_from_slice(f),
        }
    }
    if spam && s.subject_prefix.is_some() && !fields_has_subject(block) {
        out.extend_from_slice(
            format!("Subject: {}\r\n", s.subject_prefix.as_deref().unwrap_or("").trim_end()).as_bytes(),
        );
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn fields_has_subject(block: &[u8]) -> bool {
    fields(block).0.iter().any(|f| name_is(f, b"Subject"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn verdict(score: f64, rules: &[&str]) -> Verdict {
        Verdict {
            score,
            threshold: 5.0,
            spam: true,
            action: Some(crate::rules::Action::Tag),
            rules: rules.iter().map(|r| Arc::from(*r)).collect(),
        }
    }

    #[test]
    fn adds_fields_and_strips_forged_ones() {
        let block = b"From: a@b\r\nX-Spam-Flag: NO\r\nX-Spam-Status: No,\r\n\tforged\r\nSubject: hi\r\n\r\n";
        let out = rewrite(block, &verdict(7.5, &["RULE_A", "RULE_B"]), true, &TagSettings::default()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=7.5 required=5.0 tests=RULE_A,RULE_B\r\nX-Spam-Level: *******\r\nFrom: a@b\r\nSubject: hi\r\n\r\n"
        );
    }

    #[test]
    fn keep_existing_when_configured() {
        let block = b"X-Spam-Flag: NO\r\n\r\n";
        let s = TagSettings { strip_existing: false, ..TagSettings::default() };
        let out = rewrite(block, &verdict(5.0, &["A"]), true, &s).unwrap();
        assert!(String::from_utf8(out).unwrap().ends_with("X-Spam-Flag: NO\r\n\r\n"));
    }

    #[test]
    fn subject_prefix_keeps_folding() {
        let block = b"Subject: cheap\r\n pills\r\nTo: x\r\n\r\n";
        let s = TagSettings { subject_prefix: Some("[SPAM] ".into()), ..TagSettings::default() };
        let out = String::from_utf8(rewrite(block, &verdict(6.0, &["A"]), true, &s).unwrap()).unwrap();
        assert!(out.contains("Subject: [SPAM] cheap\r\n pills\r\nTo: x\r\n\r\n"), "{out}");
        let out = String::from_utf8(rewrite(b"To: x\r\n\r\n", &verdict(6.0, &["A"]), true, &s).unwrap()).unwrap();
        assert!(out.ends_with("To: x\r\nSubject: [SPAM]\r\n\r\n"), "{out}");
    }

    #[test]
    fn ham_untouched_unless_configured() {
        let mut v = verdict(1.0, &[]);
        v.spam = false;
        assert_eq!(rewrite(b"A: b\r\n\r\n", &v, false, &TagSettings::default()), None);
        let s = TagSettings { ham_status: true, ..TagSettings::default() };
        let out = String::from_utf8(rewrite(b"A: b\r\n\r\n", &v, false, &s).unwrap()).unwrap();
        assert_eq!(out, "X-Spam-Status: No, score=1.0 required=5.0 tests=none\r\nA: b\r\n\r\n");
    }

    #[test]
    fn long_test_lists_are_folded() {
        let ids: Vec<String> = (0..20).map(|i| format!("SOME_LONG_RULE_NAME_{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
        let out = spam_fields(&verdict(12.0, &refs), true);
        for line in out.split(|&b| b == b'\n') {
            assert!(line.len() <= 79, "{}", String::from_utf8_lossy(line));
        }
        let text = String::from_utf8(out).unwrap();
        let unfolded = text.replace("\r\n\t", "");
        assert!(unfolded.contains(&ids.join(",")));
    }

    #[test]
    fn block_without_blank_line_and_lf_only() {
        let out = rewrite(b"A: b\n", &verdict(5.0, &["X"]), true, &TagSettings::default()).unwrap();
        assert!(out.ends_with(b"A: b\n"));
    }
}
