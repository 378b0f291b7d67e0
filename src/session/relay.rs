//! What a fetched message becomes on its way through popsift, decided without I/O: the
//! RETR status line's size, the header block sent for a tagged message, and the quarantine
//! copy (unstuffed, bounded, written in large pieces). The bytes move through the one
//! body-relay step, `net::conn::Conn::relay_buffered`; the driver performs the writes.
use crate::pop3::{stuff_lines, unstuff, Unstuffer};
use crate::session::view::HeaderRewrite;

/// Rewrites `+OK <n> octets` (the usual RETR status, RFC 1939 §7 example) to the size the
/// client was told in LIST; any other text is left alone.
pub fn rewrite_octets(status: &[u8], upstream_size: u64, size: u64) -> Vec<u8> {
    let text = String::from_utf8_lossy(status);
    let mut words = text.splitn(3, ' ');
    if let (Some(ok), Some(n)) = (words.next(), words.next()) {
        if n.parse::<u64>().ok() == Some(upstream_size) {
            let rest = words.next().map(|r| format!(" {r}")).unwrap_or_default();
            return format!("{ok} {size}{rest}").into_bytes();
        }
    }
    status.to_vec()
}

/// Appends the header block to send for a tagged message: the replacement (stuffed) when
/// the server sent the same header block as at login, else the wire bytes untouched
/// (rather than guess; the announced size is then off by the difference). Returns whether
/// the replacement was used.
pub fn rewritten_header(wire: &[u8], rw: &HeaderRewrite, out: &mut Vec<u8>) -> bool {
    if unstuff(wire) == rw.original {
        stuff_lines(&rw.replacement, out);
        true
    } else {
        out.extend_from_slice(wire);
        false
    }
}

/// Unstuffed octets gathered before a write to the quarantine file.
pub const WRITE_AT: usize = 256 * 1024;
/// Octets held back until the end, so the terminator (which unstuffs to an empty line) can
/// be cut off.
const TAIL: usize = 8;

/// What the driver does after a piece of the quarantined message was fed.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyStep {
    /// Nothing to write yet.
    Continue,
    /// Append these octets to the quarantine file.
    Write(Vec<u8>),
    /// The upstream sent more than its limit: drop the copy (the message is not deleted);
    /// the rest of the reply is read and discarded.
    Discard(String),
}

/// The quarantine copy of one message, fed the wire bytes of its RETR body.
#[derive(Debug)]
pub struct QuarantineCopy {
    pending: Vec<u8>,
    received: u64,
    limit: u64,
    announced: u64,
    unstuffer: Unstuffer,
    discarding: bool,
}

impl QuarantineCopy {
    /// `limit`: most unstuffed octets accepted for a message LIST gave as `announced`.
    pub fn new(limit: u64, announced: u64) -> QuarantineCopy {
        QuarantineCopy {
            pending: Vec::with_capacity(WRITE_AT + 64 * 1024),
            received: 0,
            limit,
            announced,
            unstuffer: Unstuffer::default(),
            discarding: false,
        }
    }

    /// Feeds body bytes (wire form, terminator included when it arrives).
    pub fn body(&mut self, wire: &[u8]) {
        if self.discarding {
            return;
        }
        let before = self.pending.len();
        self.unstuffer.feed(wire, &mut self.pending);
        self.received += (self.pending.len() - before) as u64;
    }

    /// After each fed piece: `done` when it ended the body with a terminator line of
    /// `terminator_len` octets.
    pub fn step(&mut self, done: bool, terminator_len: usize) -> CopyStep {
        if self.discarding {
            self.pending.clear();
            return CopyStep::Continue;
        }
        if done {
            let t = terminator_len.saturating_sub(1);
            self.pending.truncate(self.pending.len().saturating_sub(t));
            self.received = self.received.saturating_sub(t as u64);
        }
        if self.received > self.limit {
            self.discard();
            return CopyStep::Discard(format!(
                "upstream sent more than {} octets for a message LIST gave as {} (quarantine.max_size or LIST size + slack); copy discarded",
                self.limit, self.announced
            ));
        }
        if self.pending.len() >= WRITE_AT || (done && !self.pending.is_empty()) {
            let keep = if done { 0 } else { TAIL };
            let upto = self.pending.len().saturating_sub(keep);
            return CopyStep::Write(self.pending.drain(..upto).collect());
        }
        CopyStep::Continue
    }

    /// The copy failed (write error): the rest of the reply is read and discarded.
    pub fn discard(&mut self) {
        self.discarding = true;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::{dot_stuff, BodyScanner};

    /// Feeds `wire` in pieces of `piece` octets through the scanner, as the driver does;
    /// returns what was written and the discard reason, if any.
    fn copy(wire: &[u8], piece: usize, limit: u64) -> (Vec<u8>, Option<String>) {
        let mut scanner = BodyScanner::new();
        let mut c = QuarantineCopy::new(limit, 1);
        let (mut written, mut reason) = (Vec::new(), None);
        for chunk in wire.chunks(piece.max(1)) {
            let done = scanner.feed(chunk);
            c.body(&chunk[..done.unwrap_or(chunk.len())]);
            match c.step(done.is_some(), scanner.terminator_len()) {
                CopyStep::Write(w) => written.extend_from_slice(&w),
                CopyStep::Discard(r) => reason = Some(r),
                CopyStep::Continue => {}
            }
            if done.is_some() {
                break;
            }
        }
        (written, reason)
    }

    #[test]
    fn the_copy_is_the_unstuffed_message_whatever_the_chunking() {
        let content = b"Subject: x\r\n\r\n.dot line\r\nbody\r\n..\r\n".to_vec();
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        for piece in 1..=wire.len() {
            assert_eq!(copy(&wire, piece, 1 << 20), (content.clone(), None), "pieces of {piece}");
        }
    }

    #[test]
    fn large_messages_are_written_in_bounded_pieces() {
        let content = vec![b'a'; 3 * WRITE_AT + 10];
        let mut wire = Vec::new();
        dot_stuff(&content, &mut wire);
        let mut scanner = BodyScanner::new();
        let mut c = QuarantineCopy::new(u64::MAX, 0);
        let mut writes = Vec::new();
        for chunk in wire.chunks(64 * 1024) {
            let done = scanner.feed(chunk);
            c.body(&chunk[..done.unwrap_or(chunk.len())]);
            if let CopyStep::Write(w) = c.step(done.is_some(), scanner.terminator_len()) {
                writes.push(w.len());
            }
        }
        assert!(writes.iter().all(|&w| w <= WRITE_AT + 64 * 1024), "{writes:?}");
        assert_eq!(writes.iter().sum::<usize>(), content.len() + 2);
    }

    #[test]
    fn more_than_the_limit_discards_once_and_writes_nothing_more() {
        let mut wire = Vec::new();
        dot_stuff(&vec![b'x'; 1000], &mut wire);
        let (written, reason) = copy(&wire, 100, 500);
        assert!(written.is_empty());
        assert!(reason.is_some_and(|r| r.contains("more than 500 octets")));
        // Exactly at the limit is fine (the terminator is not counted).
        assert_eq!(copy(&wire, 100, 1002).1, None);
    }

    #[test]
    fn status_and_header_rewrites() {
        assert_eq!(rewrite_octets(b"+OK 120 octets", 120, 150), b"+OK 150 octets");
        assert_eq!(rewrite_octets(b"+OK message follows", 120, 150), b"+OK message follows");
        let rw = HeaderRewrite { original: b"A: b\r\n\r\n".to_vec(), replacement: b"A: b\r\n.X: y\r\n\r\n".to_vec() };
        let mut out = Vec::new();
        assert!(rewritten_header(b"A: b\r\n\r\n", &rw, &mut out));
        assert_eq!(out, b"A: b\r\n..X: y\r\n\r\n");
        out.clear();
        assert!(!rewritten_header(b"A: c\r\n\r\n", &rw, &mut out));
        assert_eq!(out, b"A: c\r\n\r\n");
    }
}
