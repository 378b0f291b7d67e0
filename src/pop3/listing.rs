//! Scan listings: the multi-line bodies of `LIST` (RFC 1939 §5: `msg octets`) and `UIDL`
//! (RFC 1939 §7: `msg unique-id`, the id being 1–70 printable characters 0x21–0x7E).
//!
//! This is the boundary where upstream replies are checked before they enter the mailbox
//! view: a LIST taken at login (before any DELE) must number its messages exactly 1..N in
//! order with numeric sizes (RFC 1939 §5 LIST; message numbers are 1..N and deleted
//! messages are the only gaps), and a STAT, when read, must agree with it in count and total
//! size. A reply that breaks these is refused here with what was wrong; nothing later
//! indexes by upstream numbers on trust.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    #[error("line {line}: expected \"number value\"")]
    Malformed { line: usize },
    #[error("line {line}: message number {number} out of order")]
    OutOfOrder { line: usize, number: u32 },
    #[error("line {line}: message number {number} where {expected} was due (LIST must number 1..N without gaps)")]
    Gap { line: usize, expected: u32, number: u32 },
}

/// A STAT reply that contradicts the LIST of the same session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("STAT says {stat_count} messages ({stat_size} octets) but LIST lists {list_count} ({list_size} octets)")]
pub struct StatMismatch {
    pub stat_count: u64,
    pub stat_size: u64,
    pub list_count: u64,
    pub list_size: u64,
}

/// Parses a LIST body into (number, size) pairs, numbered exactly 1..N in order. Deleted
/// messages are the only gaps RFC 1939 §5 allows, and none are deleted before popsift's
/// first DELE (which it sends only in UPDATE), so a gap means the server is broken.
pub fn parse_list(body: &[u8]) -> Result<Vec<(u32, u64)>, ListingError> {
    let list = parse_pairs(body, |v| if v.bytes().all(|b| b.is_ascii_digit()) { v.parse::<u64>().ok() } else { None })?;
    // parse_pairs ensured the numbers ascend; a gap shows as the first number that is not
    // its position. Line numbers in errors count non-empty lines here.
    for (i, (number, _)) in list.iter().enumerate() {
        let expected = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if *number != expected {
            return Err(ListingError::Gap { line: i + 1, expected, number: *number });
        }
    }
    Ok(list)
}

/// Checks a STAT reply's `count size` (RFC 1939 §5: "+OK nn mm") against the LIST of the
/// same mailbox state.
pub fn check_stat(stat_count: u64, stat_size: u64, list: &[(u32, u64)]) -> Result<(), StatMismatch> {
    let list_count = list.len() as u64;
    let list_size = list.iter().fold(0u64, |a, (_, s)| a.saturating_add(*s));
    if stat_count == list_count && stat_size == list_size {
        Ok(())
    } else {
        Err(StatMismatch { stat_count, stat_size, list_count, list_size })
    }
}

/// Parses a UIDL body into (number, unique-id) pairs.
pub fn parse_uidl(body: &[u8]) -> Result<Vec<(u32, String)>, ListingError> {
    parse_pairs(body, |v| {
        if !v.is_empty() && v.len() <= 512 && v.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            Some(v.to_string())
        } else {
            None
        }
    })
}

fn parse_pairs<T>(body: &[u8], value: impl Fn(&str) -> Option<T>) -> Result<Vec<(u32, T)>, ListingError> {
    let mut out: Vec<(u32, T)> = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.is_empty() {
            continue;
        }
        let line = i + 1;
        let text = std::str::from_utf8(raw).map_err(|_| ListingError::Malformed { line })?;
        let mut parts = text.split_ascii_whitespace();
        let (Some(n), Some(v)) = (parts.next(), parts.next()) else {
            return Err(ListingError::Malformed { line });
        };
        let number: u32 = n.parse().map_err(|_| ListingError::Malformed { line })?;
        let v = value(v).ok_or(ListingError::Malformed { line })?;
        if number == 0 || out.last().is_some_and(|(prev, _)| *prev >= number) {
            return Err(ListingError::OutOfOrder { line, number });
        }
        out.push((number, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_and_uidl() {
        assert_eq!(parse_list(b"1 120\r\n2 200\r\n").unwrap(), vec![(1, 120), (2, 200)]);
        assert_eq!(parse_list(b"").unwrap(), vec![]);
        assert_eq!(
            parse_uidl(b"1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n").unwrap(),
            vec![(1, "whqtswO00WBw418f9t5JxYwZ".into()), (2, "QhdPYR:00WBw1Ph7x7".into())]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse_list(b"1\r\n"), Err(ListingError::Malformed { line: 1 }));
        assert_eq!(parse_list(b"1 x\r\n"), Err(ListingError::Malformed { line: 1 }));
        assert_eq!(parse_list(b"2 1\r\n1 1\r\n"), Err(ListingError::OutOfOrder { line: 2, number: 1 }));
        assert_eq!(parse_uidl(b"1 \x01bad\r\n"), Err(ListingError::Malformed { line: 1 }));
    }

    /// Issue 12: an upstream whose LIST has gaps made `RETR 2` panic the session.
    #[test]
    fn list_with_gaps_is_refused() {
        assert_eq!(parse_list(b"1 37\r\n5 37\r\n"), Err(ListingError::Gap { line: 2, expected: 2, number: 5 }));
        assert_eq!(parse_list(b"2 37\r\n"), Err(ListingError::Gap { line: 1, expected: 1, number: 2 }));
        assert_eq!(parse_list(b"0 37\r\n"), Err(ListingError::OutOfOrder { line: 1, number: 0 }));
        assert_eq!(parse_list(b"1 1\r\n1 1\r\n"), Err(ListingError::OutOfOrder { line: 2, number: 1 }));
    }

    #[test]
    fn sizes_must_be_plain_numbers() {
        for bad in [&b"1 -3\r\n"[..], b"1 +3\r\n", b"1 3e4\r\n", b"1 99999999999999999999999\r\n", b"x 3\r\n"] {
            assert!(
                matches!(parse_list(bad), Err(ListingError::Malformed { line: 1 })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // RFC 1939 §5 allows further text after the size ("information"): ignored.
        assert_eq!(parse_list(b"1 120 extra\r\n").unwrap(), vec![(1, 120)]);
    }

    #[test]
    fn stat_must_agree_with_list() {
        let list = parse_list(b"1 10\r\n2 20\r\n").unwrap();
        assert_eq!(check_stat(2, 30, &list), Ok(()));
        assert_eq!(
            check_stat(3, 30, &list),
            Err(StatMismatch { stat_count: 3, stat_size: 30, list_count: 2, list_size: 30 })
        );
        assert!(check_stat(2, 31, &list).is_err());
        assert_eq!(check_stat(0, 0, &[]), Ok(()));
    }
}
