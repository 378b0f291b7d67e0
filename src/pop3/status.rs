//! Single-line server replies: `+OK text`, `-ERR text` (RFC 1939 §3) and the SASL
//! continuation `+ base64` (RFC 5034 §4), with the optional response code of RFC 2449 §8
//! (`-ERR [IN-USE] …`, `-ERR [SYS/TEMP] …`).
//!
//! Status indicators are upper case on the wire; we accept any case, as clients do.

/// Longest status line accepted from a server, excluding CRLF. RFC 2449 §4 caps responses
/// at 512 octets; SASL challenges can be longer, so the cap leaves room.
pub const MAX_STATUS_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusKind {
    Ok,
    Err,
    /// `+ ` SASL continuation (RFC 5034 §4).
    Continue,
}

/// A parsed status line. `text` is everything after the indicator and one space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status<'a> {
    pub kind: StatusKind,
    pub text: &'a [u8],
}

impl<'a> Status<'a> {
    /// Parses one status line (without CRLF). `None` if it is not a POP3 status line.
    pub fn parse(line: &'a [u8]) -> Option<Status<'a>> {
        let prefixed = |p: &[u8]| line.get(..p.len()).is_some_and(|h| h.eq_ignore_ascii_case(p));
        let (kind, rest) = if prefixed(b"+OK") {
            (StatusKind::Ok, line.get(3..)?)
        } else if prefixed(b"-ERR") {
            (StatusKind::Err, line.get(4..)?)
        } else if let Some((b'+', rest)) = line.split_first() {
            (StatusKind::Continue, rest)
        } else {
            return None;
        };
        // The indicator must be followed by a space or the end of the line.
        let text = match rest.split_first() {
            None => rest,
            Some((b' ', text)) => text,
            Some(_) => return None,
        };
        Some(Status { kind, text })
    }

    /// The RFC 2449 §8 response code, e.g. `IN-USE` or `SYS/TEMP`, if the text starts with one.
    pub fn resp_code(&self) -> Option<&'a [u8]> {
        let t = self.text;
        if t.first() != Some(&b'[') {
            return None;
        }
        let end = t.iter().position(|&b| b == b']')?;
        t.get(1..end)
    }

    pub fn is_ok(&self) -> bool {
        self.kind == StatusKind::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_indicators() {
        let s = Status::parse(b"+OK 2 320").unwrap();
        assert_eq!((s.kind, s.text), (StatusKind::Ok, &b"2 320"[..]));
        let s = Status::parse(b"-ERR no such message").unwrap();
        assert_eq!((s.kind, s.text), (StatusKind::Err, &b"no such message"[..]));
        assert_eq!(Status::parse(b"+OK").unwrap().text, b"");
        assert_eq!(Status::parse(b"+ ").unwrap().kind, StatusKind::Continue);
        assert_eq!(Status::parse(b"+ VXNlcm5hbWU6").unwrap().text, b"VXNlcm5hbWU6");
        assert_eq!(Status::parse(b"+").unwrap().kind, StatusKind::Continue);
        assert_eq!(Status::parse(b"+ok lower").unwrap().kind, StatusKind::Ok);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Status::parse(b"").is_none());
        assert!(Status::parse(b"HELLO").is_none());
        assert!(Status::parse(b"+OKAY").is_none());
        assert!(Status::parse(b"-ERROR").is_none());
        assert!(Status::parse(b"+x").is_none());
    }

    #[test]
    fn resp_codes() {
        let s = Status::parse(b"-ERR [IN-USE] Mailbox is locked by another POP3 session.").unwrap();
        assert_eq!(s.resp_code(), Some(&b"IN-USE"[..]));
        let s = Status::parse(b"-ERR [SYS/TEMP] later").unwrap();
        assert_eq!(s.resp_code(), Some(&b"SYS/TEMP"[..]));
        assert_eq!(Status::parse(b"-ERR [broken").unwrap().resp_code(), None);
        assert_eq!(Status::parse(b"+OK fine").unwrap().resp_code(), None);
    }
}
