//! The line splitter: finds one line at the front of a buffer and enforces a length cap
//! before anything parses it.
//!
//! RFC 1939 §3 ends every line with CRLF. Clients and servers in the wild sometimes send a
//! bare LF; we accept it as a line end (the line's content then simply has no CR) because
//! refusing it would break real clients and buys nothing.

/// Outcome of looking for one line at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A whole line: `content` bytes (without CRLF/LF) followed by the line end; `consumed`
    /// counts the line end too.
    Complete { content: usize, consumed: usize },
    /// No line end yet and the buffer is within the cap: read more.
    Incomplete,
    /// More than `max` bytes without a line end: the peer is misbehaving.
    TooLong,
}

/// Looks for the first line in `buf`. `max` caps the content length (excluding the line end).
pub fn split_line(buf: &[u8], max: usize) -> Line {
    // Only look as far as a line of the maximum length could reach (content + CRLF).
    let window = buf.get(..max.saturating_add(2)).unwrap_or(buf);
    match memchr::memchr(b'\n', window) {
        Some(lf) => {
            let content = if lf > 0 && buf.get(lf - 1) == Some(&b'\r') { lf - 1 } else { lf };
            if content > max {
                Line::TooLong
            } else {
                Line::Complete { content, consumed: lf + 1 }
            }
        }
        None if buf.len() > max + 1 => Line::TooLong,
        None => Line::Incomplete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_lf() {
        assert_eq!(split_line(b"STAT\r\nX", 10), Line::Complete { content: 4, consumed: 6 });
        assert_eq!(split_line(b"STAT\nX", 10), Line::Complete { content: 4, consumed: 5 });
        assert_eq!(split_line(b"\r\n", 10), Line::Complete { content: 0, consumed: 2 });
    }

    #[test]
    fn incomplete_until_line_end() {
        assert_eq!(split_line(b"STAT\r", 10), Line::Incomplete);
        assert_eq!(split_line(b"", 10), Line::Incomplete);
    }

    #[test]
    fn cap_is_enforced_without_a_line_end() {
        assert_eq!(split_line(b"0123456789\r", 10), Line::Incomplete);
        assert_eq!(split_line(b"0123456789\r\n", 10), Line::Complete { content: 10, consumed: 12 });
        assert_eq!(split_line(b"0123456789ab", 10), Line::TooLong);
        assert_eq!(split_line(b"0123456789a\n", 10), Line::TooLong);
    }
}
