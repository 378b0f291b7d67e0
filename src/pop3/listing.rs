//! Scan listings: the multi-line bodies of `LIST` (RFC 1939 §5: `msg octets`) and `UIDL`
//! (RFC 1939 §7: `msg unique-id`, the id being 1–70 printable characters 0x21–0x7E).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListingError {
    #[error("line {line}: expected \"number value\"")]
    Malformed { line: usize },
    #[error("line {line}: message number {number} out of order")]
    OutOfOrder { line: usize, number: u32 },
}

/// Parses a LIST body into (number, size) pairs. Numbers must ascend (deleted messages
/// leave gaps only in servers that keep numbers across DELE; none do before our first DELE).
pub fn parse_list(body: &[u8]) -> Result<Vec<(u32, u64)>, ListingError> {
    parse_pairs(body, |v| v.parse::<u64>().ok())
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
}
