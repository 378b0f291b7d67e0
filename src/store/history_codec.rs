//! The stored form of a [`Decision`] in the embedded history: a compact binary record, because
//! recording a cold login of 2,000 messages must cost next to nothing (issue 13: "≤ 5 % of a
//! cold login scan"). JSON, the first format, spent most of the writer's time in formatting
//! floats and escaping strings; this format is a version byte and the fields in a fixed order,
//! integers as LEB128 varints, floats as 8 little-endian bytes, strings and lists
//! length-prefixed.
//!
//! Records written before (JSON objects) start with `{` and still read: [`decode`] looks at
//! the first byte. A record that is neither (truncated, a future version) is
//! [`HistoryError::Corrupt`], never a panic.
use super::history::{Decision, HistoryError};
use super::wire::{put_f64, put_str as string, put_uint as uint, Reader};
use crate::classify::explain::Clue;
use crate::rules::explain::Matched;

/// The first byte of a binary record (JSON records start with `{`, 0x7b).
const V1: u8 = 1;

/// Appends the binary form of `d` to `out` (cleared by the caller, so one buffer serves a
/// whole batch).
pub fn encode_into(d: &Decision, out: &mut Vec<u8>) {
    out.push(V1);
    uint(out, d.time);
    string(out, &d.mailbox);
    string(out, &d.uidl);
    uint(out, d.size);
    string(out, &d.from);
    string(out, &d.subject);
    put_f64(out, d.score);
    put_f64(out, d.threshold);
    uint(out, d.rules.len() as u64);
    for r in &d.rules {
        string(out, r);
    }
    match d.bayes {
        Some(p) => {
            out.push(1);
            put_f64(out, p);
        }
        None => out.push(0),
    }
    string(out, &d.action);
    string(out, &d.disposition);
    out.push(u8::from(d.dry_run) | (u8::from(d.spam) << 1));
    uint(out, d.matched.len() as u64);
    for m in &d.matched {
        for s in [&m.rule, &m.header, &m.before, &m.found, &m.after] {
            string(out, s);
        }
    }
    uint(out, d.clues.len() as u64);
    for c in &d.clues {
        string(out, &c.token);
        put_f64(out, c.probability);
        uint(out, u64::from(c.spam));
        uint(out, u64::from(c.ham));
    }
}

/// The binary form of `d`.
pub fn encode(d: &Decision) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_into(d, &mut out);
    out
}

/// A stored record, binary or (written before it) JSON.
pub fn decode(bytes: &[u8]) -> Result<Decision, HistoryError> {
    match bytes.first() {
        Some(&V1) => {
            let mut r = Reader::new(&bytes[1..]);
            let d = r.decision().ok_or_else(|| HistoryError::Corrupt("truncated or malformed record".into()))?;
            if !r.rest.is_empty() {
                return Err(HistoryError::Corrupt("trailing bytes after a record".into()));
            }
            Ok(d)
        }
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| HistoryError::Corrupt(e.to_string())),
        Some(v) => Err(HistoryError::Corrupt(format!("unknown record version {v}"))),
        None => Err(HistoryError::Corrupt("empty record".into())),
    }
}

/// Only the UIDL of a binary record (pruning needs nothing else); JSON records are decoded.
pub fn uidl_of(bytes: &[u8]) -> Option<String> {
    if bytes.first() == Some(&V1) {
        let mut r = Reader::new(&bytes[1..]);
        r.uint()?;
        r.str()?;
        return r.str().map(str::to_string);
    }
    decode(bytes).ok().map(|d| d.uidl)
}

impl Reader<'_> {
    fn decision(&mut self) -> Option<Decision> {
        let time = self.uint()?;
        let mailbox = self.string()?;
        let uidl = self.string()?;
        let size = self.uint()?;
        let from = self.string()?;
        let subject = self.string()?;
        let score = self.f64()?;
        let threshold = self.f64()?;
        let n = self.list_len()?;
        let rules = (0..n).map(|_| self.string()).collect::<Option<Vec<_>>>()?;
        let bayes = match self.byte()? {
            0 => None,
            1 => Some(self.f64()?),
            _ => return None,
        };
        let action = self.string()?;
        let disposition = self.string()?;
        let flags = self.byte()?;
        let n = self.list_len()?;
        let matched = (0..n)
            .map(|_| {
                Some(Matched {
                    rule: self.string()?,
                    header: self.string()?,
                    before: self.string()?,
                    found: self.string()?,
                    after: self.string()?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let n = self.list_len()?;
        let clues = (0..n)
            .map(|_| {
                Some(Clue { token: self.string()?, probability: self.f64()?, spam: self.u32()?, ham: self.u32()? })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Decision {
            time,
            mailbox,
            uidl,
            size,
            from,
            subject,
            score,
            threshold,
            rules,
            bayes,
            action,
            disposition,
            dry_run: flags & 1 != 0,
            spam: flags & 2 != 0,
            matched,
            clues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Decision {
        Decision {
            time: 1_790_000_000,
            mailbox: "alice\u{1f}pop.example.org:110".into(),
            uidl: "000001a2.uidl".into(),
            size: 300_000,
            from: "Zoë <z@example.org>".into(),
            subject: "<script>alert(1)</script> \"quoted\"".into(),
            score: 7.25,
            threshold: 5.0,
            rules: vec!["SPAM_DOMAIN".into(), "LOTTERY".into()],
            bayes: Some(0.987_654_321),
            action: "quarantine".into(),
            disposition: "condemned".into(),
            dry_run: true,
            spam: true,
            matched: vec![Matched {
                rule: "LOTTERY".into(),
                header: "subject".into(),
                before: "You ".into(),
                found: "won".into(),
                after: " big".into(),
            }],
            clues: vec![Clue { token: "viagra".into(), probability: 0.99, spam: u32::MAX, ham: 0 }],
        }
    }

    #[test]
    fn round_trips_every_field() {
        for d in [full(), Decision::default(), Decision { bayes: None, dry_run: false, ..full() }] {
            let bytes = encode(&d);
            assert_eq!(bytes[0], V1);
            assert_eq!(decode(&bytes).unwrap(), d);
            assert_eq!(uidl_of(&bytes).as_deref(), Some(d.uidl.as_str()));
        }
    }

    #[test]
    fn smaller_than_json() {
        let d = full();
        assert!(encode(&d).len() < serde_json::to_vec(&d).unwrap().len());
    }

    #[test]
    fn json_records_written_before_still_read() {
        let d = full();
        let json = serde_json::to_vec(&d).unwrap();
        assert_eq!(decode(&json).unwrap(), d);
        assert_eq!(uidl_of(&json).as_deref(), Some(d.uidl.as_str()));
        // A JSON record from before `matched`/`clues` were kept.
        let old = br#"{"time":1,"mailbox":"m","uidl":"u","size":2,"from":"f","subject":"s","score":1.0,
            "threshold":5.0,"rules":[],"bayes":null,"action":"none","disposition":"visible",
            "dry_run":false,"spam":false}"#;
        let d = decode(old).unwrap();
        assert_eq!((d.uidl.as_str(), d.size, d.matched.len()), ("u", 2, 0));
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        let bytes = encode(&full());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        assert!(decode(&[9, 1, 2]).is_err());
        // A huge list length is refused before anything is allocated.
        let mut huge = vec![V1];
        uint(&mut huge, 1);
        for _ in 0..2 {
            uint(&mut huge, 0);
        }
        uint(&mut huge, 1);
        for _ in 0..2 {
            uint(&mut huge, 0);
        }
        huge.extend_from_slice(&[0; 16]);
        uint(&mut huge, u64::MAX);
        assert!(decode(&huge).is_err());
        // Invalid UTF-8 in a string.
        let mut bad = vec![V1];
        uint(&mut bad, 1);
        bad.extend_from_slice(&[1, 0xff]);
        assert!(decode(&bad).is_err());
    }
}
