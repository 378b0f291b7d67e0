//! The client's output queue: what popsift has to write to the client, in order.
//!
//! Most of it is popsift's own (status lines, short replies), copied in. A relayed body
//! that ended in the upstream's read buffer while more replies follow (a pipelined batch)
//! is not copied (issue 16: that copy was a tenth of popsift's CPU in the 10 KB pipelined
//! relay): it is split off the read buffer as a shared part (`bytes::Bytes`, no copy) and
//! written from there, with the rest, in one `writev`. Each part goes out after the copied
//! octets queued before it, so the order is the order of queuing.

use bytes::Bytes;

/// Parts at most in one queue; a later body is copied instead (a write holds at most
/// `2 × MAX_PARTS + 2` slices: copied runs, parts, and a tail).
pub const MAX_PARTS: usize = 15;
/// A body shorter than this is copied: a short copy costs less than a part.
pub const SHARE_FROM: usize = 2048;
/// Slices of one write: [`MAX_PARTS`] parts, the copied runs around them, and a tail.
pub const SLICES: usize = 2 * MAX_PARTS + 2;

#[derive(Debug, Default)]
pub struct Outbox {
    copied: Vec<u8>,
    /// Shared parts, each to go out after `copied[..at]`. Boxed and made at the first
    /// part (issue 16): an idle session keeps a pointer's room for them.
    parts: Option<Box<Parts>>,
}

#[derive(Debug, Default)]
struct Parts {
    list: Vec<(usize, Bytes)>,
    octets: usize,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Octets queued.
    pub fn len(&self) -> usize {
        self.copied.len() + self.parts.as_ref().map_or(0, |p| p.octets)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a copy of `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.copied.extend_from_slice(bytes);
    }

    /// Runs `append` on the copied octets, to append to them in place (a rewritten header
    /// block). What is appended goes out after everything queued so far; nothing queued may
    /// be taken away (the parts' places are offsets into it).
    pub fn append_with<T>(&mut self, append: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let before = self.copied.len();
        let r = append(&mut self.copied);
        debug_assert!(self.copied.len() >= before, "queued output was taken away");
        r
    }

    /// Whether a body part of `len` octets is better queued with [`Outbox::push_shared`]
    /// than copied.
    pub fn would_share(&self, len: usize) -> bool {
        len >= SHARE_FROM && self.parts.as_ref().map_or(true, |p| p.list.len() < MAX_PARTS)
    }

    /// Queues `part` without copying it.
    pub fn push_shared(&mut self, part: Bytes) {
        if part.is_empty() {
            return;
        }
        let at = self.copied.len();
        let parts = self.parts.get_or_insert_with(Box::default);
        // More would still be written whole, in more than one write (see `would_share`).
        debug_assert!(parts.list.len() < MAX_PARTS, "more parts than one write's slices");
        parts.octets += part.len();
        parts.list.push((at, part));
    }

    /// Empties the queue after a write; keeps the copy buffer's memory (and the parts'
    /// list) for the next replies.
    pub fn clear(&mut self) {
        self.copied.clear();
        if let Some(p) = self.parts.as_mut() {
            p.list.clear();
            p.octets = 0;
        }
    }

    /// Gives all memory back (an idle session).
    pub fn release(&mut self) {
        *self = Outbox::default();
    }

    /// The queue, then `tail`, as runs of octets in the order they go out (some may be
    /// empty): at most [`SLICES`].
    pub fn runs<'a>(&'a self, tail: &'a [u8]) -> Runs<'a> {
        let list = self.parts.as_deref().map(|p| p.list.as_slice()).unwrap_or_default();
        Runs { copied: &self.copied, list, tail, from: 0, next: 0 }
    }
}

/// See [`Outbox::runs`]: for each part the copied octets before it and the part, then the
/// copied octets after the last part, then the tail. A plain iterator, not an adapter
/// chain: it is made at every write of every reply (issue 16).
pub struct Runs<'a> {
    copied: &'a [u8],
    list: &'a [(usize, Bytes)],
    tail: &'a [u8],
    /// Where the next copied run starts.
    from: usize,
    /// The next run: `2k` the copied octets before part `k`, `2k + 1` part `k`.
    next: usize,
}

impl<'a> Iterator for Runs<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (k, part) = (self.next / 2, self.next % 2 == 1);
        self.next += 1;
        match self.list.get(k) {
            Some((_, p)) if part => Some(p),
            Some((at, _)) => {
                let run = self.copied.get(self.from..*at).unwrap_or_default();
                self.from = *at;
                Some(run)
            }
            None if k > self.list.len() => None,
            None if part => Some(self.tail),
            None => Some(self.copied.get(self.from..).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(o: &Outbox, tail: &[u8]) -> Vec<u8> {
        o.runs(tail).collect::<Vec<_>>().concat()
    }

    #[test]
    fn parts_go_out_between_the_copies_queued_around_them() {
        let mut o = Outbox::new();
        o.extend_from_slice(b"+OK 1\r\n");
        o.push_shared(Bytes::from_static(b"body one\r\n.\r\n"));
        o.extend_from_slice(b"+OK 2\r\n");
        o.push_shared(Bytes::from_static(b"body two\r\n.\r\n"));
        o.push_shared(Bytes::from_static(b"-- three --"));
        o.append_with(|v| v.extend_from_slice(b"+OK 4\r\n"));
        assert_eq!(o.len(), 7 + 13 + 7 + 13 + 11 + 7);
        assert_eq!(
            joined(&o, b"tail"),
            b"+OK 1\r\nbody one\r\n.\r\n+OK 2\r\nbody two\r\n.\r\n-- three --+OK 4\r\ntail"
        );
        o.clear();
        assert!(o.is_empty());
        assert_eq!(joined(&o, b"t"), b"t");
    }

    #[test]
    fn a_full_queue_shares_no_more_and_short_bodies_are_copied() {
        let mut o = Outbox::new();
        assert!(!o.would_share(SHARE_FROM - 1));
        for i in 0..MAX_PARTS {
            assert!(o.would_share(SHARE_FROM), "part {i}");
            o.extend_from_slice(b"+OK\r\n");
            o.push_shared(Bytes::from(vec![b'x'; SHARE_FROM]));
        }
        assert!(!o.would_share(SHARE_FROM));
        o.extend_from_slice(b"end");
        assert_eq!(o.runs(b"tail").count(), SLICES, "a full queue's runs fit one write");
        assert_eq!(joined(&o, b"tail").len(), MAX_PARTS * (5 + SHARE_FROM) + 3 + 4);
    }
}
