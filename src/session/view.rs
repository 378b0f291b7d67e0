//! The filtered mailbox view (RFC 1939 §5, TRANSACTION state).
//!
//! Visible messages are renumbered 1..V in upstream order. Deletion marks are kept here and
//! sent upstream only at QUIT (RFC 1939 §6: messages are removed in the UPDATE state), so a
//! client that drops the connection deletes nothing, and RSET simply clears the marks.
use std::sync::Arc;

use crate::rules::Verdict;
pub use crate::session::evaluated::{Evaluated, HeaderRewrite};

/// What popsift does with a message, decided at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Shown to the client.
    Visible,
    /// Not shown; left untouched on the server.
    Hidden,
    /// Not shown; `DELE` upstream when the client ends with QUIT.
    Condemned,
}

/// One upstream message.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The upstream message number (1-based).
    pub upstream: u32,
    /// Size as the upstream reports it in LIST.
    pub upstream_size: u64,
    /// Size the client sees (differs from `upstream_size` when popsift rewrites the message).
    pub size: u64,
    pub uidl: Option<Arc<str>>,
    pub disposition: Disposition,
    /// The header block to send instead of the original (tagging), decided at login.
    pub rewrite: Option<Arc<HeaderRewrite>>,
    /// What the rules decided (`None`: not evaluated, e.g. the server had no TOP), shared
    /// with the verdict memo.
    pub evaluated: Option<Arc<Evaluated>>,
    /// A message released from quarantine by its owner (review page): not on the server;
    /// RETR/TOP are answered from these bytes (the message exactly as the server held it),
    /// `upstream` is 0 and never sent upstream. See [`released_entry`].
    pub released: Option<Arc<[u8]>>,
}

/// A view entry for a message released from quarantine: visible, its own UIDL, its size
/// the exact octet count of `bytes` (RFC 1939 §5 LIST/STAT sizes).
pub fn released_entry(uidl: &str, bytes: Arc<[u8]>) -> Entry {
    Entry {
        upstream: 0,
        upstream_size: bytes.len() as u64,
        size: bytes.len() as u64,
        uidl: Some(uidl.into()),
        disposition: Disposition::Visible,
        rewrite: None,
        evaluated: None,
        released: Some(bytes),
    }
}

/// The reply to RETR (`lines: None`) or `TOP n lines` for a released message: `+OK`, the
/// header block and the first `lines` body lines (RFC 1939 §7 TOP), then `.`. The copy holds
/// the message exactly as the server held it, so only the `.` prefixes of RFC 1939 §3 are
/// added: line ends (bare LF included) stay as they were and the octet count matches LIST.
pub fn released_reply(bytes: &[u8], lines: Option<u64>) -> Vec<u8> {
    use crate::pop3::multiline::{find_header_end, stuff_lines, HeaderEnd};
    let content = match lines {
        None => bytes,
        Some(n) => {
            // The first empty line (CRLF or bare LF, also at offset 0) ends the header block;
            // without one the message is all header.
            let head_end = match find_header_end(bytes) {
                Some(HeaderEnd::Blank { end }) => end,
                _ => bytes.len(),
            };
            let mut end = head_end;
            for _ in 0..n {
                match memchr::memchr(b'\n', bytes.get(end..).unwrap_or_default()) {
                    Some(i) => end += i + 1,
                    None => {
                        end = bytes.len();
                        break;
                    }
                }
            }
            bytes.get(..end).unwrap_or(bytes)
        }
    };
    let mut out = format!("+OK {} octets\r\n", bytes.len()).into_bytes();
    out.reserve(content.len() + content.len() / 32 + 5);
    stuff_lines(content, &mut out);
    if !content.is_empty() && !content.ends_with(b"\n") {
        // The terminator must start a line (RFC 1939 §3).
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl Entry {
    pub fn verdict(&self) -> Option<&Verdict> {
        self.evaluated.as_deref().map(|e| &e.verdict)
    }
}

/// Why a message number was refused; the texts follow RFC 1939's examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    #[error("no such message, only {visible} messages in maildrop")]
    NoSuchMessage { visible: usize },
    #[error("message {0} already deleted")]
    AlreadyDeleted(u32),
}

#[derive(Debug, Clone, Default)]
pub struct MailboxView {
    entries: Vec<Entry>,
    /// Virtual number - 1 → index into `entries`.
    visible: Vec<usize>,
    /// Per visible message: marked deleted by the client.
    deleted: Vec<bool>,
}

impl MailboxView {
    /// `entries` in upstream order. Nothing here assumes entry i has upstream number i + 1:
    /// positions and upstream numbers are kept apart (the login scan also refuses a LIST
    /// that is not numbered 1..N, see [`crate::pop3::listing`]).
    pub fn new(entries: Vec<Entry>) -> MailboxView {
        let visible: Vec<usize> =
            entries.iter().enumerate().filter(|(_, e)| e.disposition == Disposition::Visible).map(|(i, _)| i).collect();
        let deleted = vec![false; visible.len()];
        MailboxView { entries, visible, deleted }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn visible_count(&self) -> usize {
        self.visible.len()
    }

    /// STAT: count and total size of visible messages not marked deleted (RFC 1939 §5).
    pub fn stat(&self) -> (usize, u64) {
        self.live().fold((0, 0), |(n, s), (_, e)| (n + 1, s + e.size))
    }

    /// Visible, not deleted messages with their virtual numbers.
    pub fn live(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.visible
            .iter()
            .zip(&self.deleted)
            .enumerate()
            .filter(|(_, (_, &d))| !d)
            .filter_map(|(v, (&i, _))| Some((u32::try_from(v + 1).ok()?, self.entries.get(i)?)))
    }

    /// The message behind virtual number `n`, unless out of range or deleted.
    pub fn get(&self, n: u32) -> Result<&Entry, ViewError> {
        self.locate(n).map(|(_, e)| e)
    }

    /// Like [`get`](Self::get), with the entry's position in [`entries`](Self::entries).
    /// Positions come from the view itself, never from upstream message numbers, so they
    /// are always in bounds whatever numbers the server used.
    pub fn locate(&self, n: u32) -> Result<(usize, &Entry), ViewError> {
        let idx = self.index(n)?;
        if self.deleted.get(idx).copied().unwrap_or(true) {
            return Err(ViewError::AlreadyDeleted(n));
        }
        let pos = *self.visible.get(idx).ok_or(ViewError::NoSuchMessage { visible: self.visible.len() })?;
        let entry = self.entries.get(pos).ok_or(ViewError::NoSuchMessage { visible: self.visible.len() })?;
        Ok((pos, entry))
    }

    /// Virtual number `n` (1-based) → position in `visible` / `deleted`.
    fn index(&self, n: u32) -> Result<usize, ViewError> {
        let visible = self.visible.len();
        let idx = (n as usize).checked_sub(1).filter(|&i| i < visible);
        idx.ok_or(ViewError::NoSuchMessage { visible })
    }

    /// DELE n: marks the message; nothing happens upstream until QUIT.
    pub fn delete(&mut self, n: u32) -> Result<(), ViewError> {
        let idx = self.index(n)?;
        match self.deleted.get_mut(idx) {
            Some(d) if !*d => {
                *d = true;
                Ok(())
            }
            _ => Err(ViewError::AlreadyDeleted(n)),
        }
    }

    /// RSET: unmarks every message the client deleted (condemned ones stay condemned).
    pub fn reset(&mut self) {
        self.deleted.iter_mut().for_each(|d| *d = false);
    }

    /// Upstream numbers to DELE in the UPDATE state: the client's deletions and the messages
    /// the rules condemned, in ascending order.
    pub fn update_deletions(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .visible
            .iter()
            .zip(&self.deleted)
            .filter(|(_, &d)| d)
            .filter_map(|(&i, _)| self.entries.get(i).filter(|e| e.released.is_none()).map(|e| e.upstream))
            .chain(self.entries.iter().filter(|e| e.disposition == Disposition::Condemned).map(|e| e.upstream))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// UIDLs of the released messages (see [`released_entry`]) the client marked deleted:
    /// after a successful UPDATE they leave popsift's store.
    pub fn released_deleted(&self) -> Vec<Arc<str>> {
        self.visible
            .iter()
            .zip(&self.deleted)
            .filter(|(_, &d)| d)
            .filter_map(|(&i, _)| self.entries.get(i).filter(|e| e.released.is_some()).and_then(|e| e.uidl.clone()))
            .collect()
    }

    /// Counts of (visible, hidden, condemned) messages.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in &self.entries {
            match e.disposition {
                Disposition::Visible => c.0 += 1,
                Disposition::Hidden => c.1 += 1,
                Disposition::Condemned => c.2 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32, size: u64, d: Disposition) -> Entry {
        Entry {
            upstream: n,
            upstream_size: size,
            size,
            uidl: Some(format!("u{n}").into()),
            disposition: d,
            rewrite: None,
            evaluated: None,
            released: None,
        }
    }

    fn view() -> MailboxView {
        use Disposition::*;
        MailboxView::new(vec![
            entry(1, 100, Visible),
            entry(2, 200, Hidden),
            entry(3, 300, Condemned),
            entry(4, 400, Visible),
            entry(5, 500, Visible),
        ])
    }

    #[test]
    fn renumbers_visible_messages() {
        let v = view();
        assert_eq!(v.stat(), (3, 1000));
        assert_eq!(v.get(1).unwrap().upstream, 1);
        assert_eq!(v.get(2).unwrap().upstream, 4);
        assert_eq!(v.get(3).unwrap().upstream, 5);
        assert_eq!(v.get(4).unwrap_err(), ViewError::NoSuchMessage { visible: 3 });
        assert_eq!(v.get(0).unwrap_err(), ViewError::NoSuchMessage { visible: 3 });
        assert_eq!(v.counts(), (3, 1, 1));
    }

    #[test]
    fn released_messages_are_served_from_their_bytes_and_never_deleted_upstream() {
        let msg: Arc<[u8]> = Arc::from(&b"Subject: hi\r\n\r\nline 1\r\n.dot\r\nline 3\r\n"[..]);
        let mut entries = view().entries().to_vec();
        entries.push(released_entry("popsift-r-1", msg.clone()));
        let mut v = MailboxView::new(entries);
        assert_eq!(v.stat(), (4, 1000 + msg.len() as u64));
        let e = v.get(4).unwrap();
        assert_eq!((e.size, e.uidl.as_deref()), (msg.len() as u64, Some("popsift-r-1")));
        let full = released_reply(&msg, None);
        assert_eq!(full, [&b"+OK 37 octets\r\nSubject: hi\r\n\r\nline 1\r\n..dot\r\nline 3\r\n.\r\n"[..]].concat());
        assert_eq!(released_reply(&msg, Some(0)), b"+OK 37 octets\r\nSubject: hi\r\n\r\n.\r\n".to_vec());
        assert_eq!(
            released_reply(&msg, Some(2)),
            b"+OK 37 octets\r\nSubject: hi\r\n\r\nline 1\r\n..dot\r\n.\r\n".to_vec()
        );
        assert_eq!(released_reply(&msg, Some(99)), full);
        // Bytes as the server held them: bare LFs stay, no line end is added to the content;
        // a blank first line (no header) or a bare-LF blank line ends the header block.
        let lf = b"Subject: lf\n\nbody\n.x\nlast";
        assert_eq!(released_reply(lf, None), b"+OK 25 octets\r\nSubject: lf\n\nbody\n..x\nlast\r\n.\r\n".to_vec());
        assert_eq!(released_reply(lf, Some(0)), b"+OK 25 octets\r\nSubject: lf\n\n.\r\n".to_vec());
        assert_eq!(released_reply(b"\r\nbody\r\n", Some(0)), b"+OK 8 octets\r\n\r\n.\r\n".to_vec());
        v.delete(4).unwrap();
        v.delete(1).unwrap();
        assert_eq!(v.update_deletions(), vec![1, 3], "a released message is not on the server");
        assert_eq!(v.released_deleted(), vec![Arc::<str>::from("popsift-r-1")]);
        v.reset();
        assert!(v.released_deleted().is_empty());
    }

    #[test]
    fn dele_rset_and_update() {
        let mut v = view();
        assert_eq!(v.update_deletions(), vec![3]);
        v.delete(2).unwrap();
        assert_eq!(v.delete(2), Err(ViewError::AlreadyDeleted(2)));
        assert_eq!(v.get(2).unwrap_err(), ViewError::AlreadyDeleted(2));
        assert_eq!(v.stat(), (2, 600));
        assert_eq!(v.live().map(|(n, _)| n).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(v.update_deletions(), vec![3, 4]);
        v.reset();
        assert_eq!(v.stat(), (3, 1000));
        assert_eq!(v.update_deletions(), vec![3]);
    }
}
