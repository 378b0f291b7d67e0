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
    /// What the rules decided (`None`: not evaluated, e.g. the server had no TOP); on a
    /// verdict-memo hit, decoded afresh from the memo.
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

/// One message of the view as the TRANSACTION commands see it, borrowed from the view's
/// dense storage (see [`MailboxView`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Msg<'a> {
    /// The upstream message number (0 for a released message).
    pub upstream: u32,
    /// Size as the upstream reports it in LIST.
    pub upstream_size: u64,
    /// Size the client sees.
    pub size: u64,
    pub uidl: Option<&'a str>,
    pub disposition: Disposition,
    /// The header block to send instead of the original (tagging).
    pub rewrite: Option<&'a Arc<HeaderRewrite>>,
    /// The bytes of a message released from quarantine (see [`released_entry`]).
    pub released: Option<&'a Arc<[u8]>>,
}

/// `Dense::flags` bits: the disposition in the low two bits, then the rare parts.
const DISPOSITION_MASK: u8 = 0b11;
const DELETED: u8 = 1 << 2;
const HAS_REWRITE: u8 = 1 << 3;
const RELEASED: u8 = 1 << 4;
/// `Dense::uidl_len` of a message without UIDL.
const NO_UIDL: u32 = u32::MAX;

/// A view entry as kept for the whole TRANSACTION state: 32 bytes, its UIDL in the view's
/// arena, its rare parts (tag rewrite, released copy) in side tables (see [`MailboxView`]).
#[derive(Debug, Clone, Copy)]
struct Dense {
    upstream: u32,
    /// The UIDL's place in `MailboxView::uidls`.
    uidl_start: u32,
    uidl_len: u32,
    flags: u8,
    upstream_size: u64,
    size: u64,
}

impl Dense {
    fn disposition(&self) -> Disposition {
        match self.flags & DISPOSITION_MASK {
            0 => Disposition::Visible,
            1 => Disposition::Hidden,
            _ => Disposition::Condemned,
        }
    }
}

fn disposition_bits(d: Disposition) -> u8 {
    match d {
        Disposition::Visible => 0,
        Disposition::Hidden => 1,
        Disposition::Condemned => 2,
    }
}

/// The filtered mailbox, held by a session for the whole TRANSACTION state, mostly idle
/// (issue 16: a provider's instance holds thousands of such sessions). So it is dense:
/// 32 bytes per message plus 4 per visible message and the UIDL's octets in one arena per
/// view; the deletion mark is a flag bit; the rare parts (a tag rewrite, a message released
/// from quarantine) live in side tables sorted by position. What evaluating a message
/// produced (verdict, From, Subject) is not kept: the login reports it when the view opens
/// ([`MailboxView::new`] takes the entries by reference; the caller reports and drops them).
///
/// Its tables never change length once built, so they are boxed slices, not `Vec`s (issue
/// 16: 16 bytes each instead of 24 in the future every idle session keeps, and no spare
/// capacity on the heap).
#[derive(Debug, Clone, Default)]
pub struct MailboxView {
    entries: Box<[Dense]>,
    /// Every UIDL, one after another.
    uidls: Box<str>,
    /// Virtual number - 1 → position in `entries`.
    visible: Box<[u32]>,
    /// (position, rewrite) for the entries with [`HAS_REWRITE`], by position.
    rewrites: Box<[(u32, Arc<HeaderRewrite>)]>,
    /// (position, bytes) for the entries with [`RELEASED`], by position.
    released: Box<[(u32, Arc<[u8]>)]>,
}

impl MailboxView {
    /// `entries` in upstream order. Nothing here assumes entry i has upstream number i + 1:
    /// positions and upstream numbers are kept apart (the login scan also refuses a LIST
    /// that is not numbered 1..N, see [`crate::pop3::listing`]). Positions are `u32` (a
    /// mailbox of more than 4 billion messages is cut there; LIST numbers are `u32` anyway).
    pub fn new(entries: &[Entry]) -> MailboxView {
        let n = entries.len().min(u32::MAX as usize);
        let uidl_bytes = entries.iter().take(n).filter_map(|e| e.uidl.as_deref()).map(str::len).sum();
        let mut dense = Vec::with_capacity(n);
        let mut uidls = String::with_capacity(uidl_bytes);
        let (mut visible, mut rewrites, mut released) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, e) in (0u32..).zip(entries.iter().take(n)) {
            let mut flags = disposition_bits(e.disposition);
            let (uidl_start, uidl_len) = match e.uidl.as_deref() {
                Some(u) if uidls.len() + u.len() <= u32::MAX as usize => {
                    let start = uidls.len() as u32;
                    uidls.push_str(u);
                    (start, u.len() as u32)
                }
                _ => (0, NO_UIDL),
            };
            if let Some(rw) = &e.rewrite {
                flags |= HAS_REWRITE;
                rewrites.push((pos, rw.clone()));
            }
            if let Some(bytes) = &e.released {
                flags |= RELEASED;
                released.push((pos, bytes.clone()));
            }
            if e.disposition == Disposition::Visible {
                visible.push(pos);
            }
            dense.push(Dense {
                upstream: e.upstream,
                uidl_start,
                uidl_len,
                flags,
                upstream_size: e.upstream_size,
                size: e.size,
            });
        }
        // `into_boxed_*` drops any spare capacity (the first two have none).
        MailboxView {
            entries: dense.into_boxed_slice(),
            uidls: uidls.into_boxed_str(),
            visible: visible.into_boxed_slice(),
            rewrites: rewrites.into_boxed_slice(),
            released: released.into_boxed_slice(),
        }
    }

    /// Number of messages (visible or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The message at `pos` in upstream order (see [`locate`](Self::locate)).
    pub fn at(&self, pos: usize) -> Option<Msg<'_>> {
        let d = self.entries.get(pos)?;
        Some(self.msg(pos as u32, d))
    }

    /// Every message in upstream order, visible or not.
    pub fn messages(&self) -> impl Iterator<Item = Msg<'_>> {
        (0u32..).zip(&self.entries).map(|(pos, d)| self.msg(pos, d))
    }

    fn msg(&self, pos: u32, d: &Dense) -> Msg<'_> {
        let side = |on: bool| on.then_some(pos);
        Msg {
            upstream: d.upstream,
            upstream_size: d.upstream_size,
            size: d.size,
            uidl: if d.uidl_len == NO_UIDL {
                None
            } else {
                self.uidls.get(d.uidl_start as usize..(d.uidl_start as usize).saturating_add(d.uidl_len as usize))
            },
            disposition: d.disposition(),
            rewrite: side(d.flags & HAS_REWRITE != 0).and_then(|p| lookup(&self.rewrites, p)),
            released: side(d.flags & RELEASED != 0).and_then(|p| lookup(&self.released, p)),
        }
    }

    /// Every message has a UIDL (the server answered UIDL at login).
    pub fn all_have_uidl(&self) -> bool {
        self.entries.iter().all(|d| d.uidl_len != NO_UIDL)
    }

    pub fn visible_count(&self) -> usize {
        self.visible.len()
    }

    /// STAT: count and total size of visible messages not marked deleted (RFC 1939 §5).
    pub fn stat(&self) -> (usize, u64) {
        self.live().fold((0, 0), |(n, s), (_, e)| (n + 1, s + e.size))
    }

    /// Visible, not deleted messages with their virtual numbers.
    pub fn live(&self) -> impl Iterator<Item = (u32, Msg<'_>)> {
        (1u32..).zip(&self.visible).filter_map(|(v, &pos)| {
            let d = self.entries.get(pos as usize)?;
            (d.flags & DELETED == 0).then(|| (v, self.msg(pos, d)))
        })
    }

    /// The message behind virtual number `n`, unless out of range or deleted.
    pub fn get(&self, n: u32) -> Result<Msg<'_>, ViewError> {
        self.locate(n).map(|(_, e)| e)
    }

    /// Like [`get`](Self::get), with the message's position (see [`at`](Self::at)).
    /// Positions come from the view itself, never from upstream message numbers, so they
    /// are always in bounds whatever numbers the server used.
    pub fn locate(&self, n: u32) -> Result<(usize, Msg<'_>), ViewError> {
        let pos = self.position(n)?;
        let d = self.entries.get(pos).ok_or(ViewError::NoSuchMessage { visible: self.visible.len() })?;
        if d.flags & DELETED != 0 {
            return Err(ViewError::AlreadyDeleted(n));
        }
        Ok((pos, self.msg(pos as u32, d)))
    }

    /// Virtual number `n` (1-based) → position in `entries`.
    fn position(&self, n: u32) -> Result<usize, ViewError> {
        let visible = self.visible.len();
        let idx = (n as usize).checked_sub(1).filter(|&i| i < visible);
        let pos = idx.and_then(|i| self.visible.get(i));
        pos.map(|&p| p as usize).ok_or(ViewError::NoSuchMessage { visible })
    }

    /// Marked deleted by the client.
    fn deleted(&self) -> impl Iterator<Item = (u32, &Dense)> {
        self.visible
            .iter()
            .filter_map(|&p| self.entries.get(p as usize).map(|d| (p, d)))
            .filter(|(_, d)| d.flags & DELETED != 0)
    }

    /// DELE n: marks the message; nothing happens upstream until QUIT.
    pub fn delete(&mut self, n: u32) -> Result<(), ViewError> {
        let pos = self.position(n)?;
        match self.entries.get_mut(pos) {
            Some(d) if d.flags & DELETED == 0 => {
                d.flags |= DELETED;
                Ok(())
            }
            _ => Err(ViewError::AlreadyDeleted(n)),
        }
    }

    /// RSET: unmarks every message the client deleted (condemned ones stay condemned).
    pub fn reset(&mut self) {
        self.entries.iter_mut().for_each(|d| d.flags &= !DELETED);
    }

    /// Upstream numbers to DELE in the UPDATE state: the client's deletions and the messages
    /// the rules condemned, in ascending order.
    pub fn update_deletions(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .deleted()
            .filter(|(_, d)| d.flags & RELEASED == 0)
            .map(|(_, d)| d.upstream)
            .chain(self.entries.iter().filter(|d| d.disposition() == Disposition::Condemned).map(|d| d.upstream))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// UIDLs of the released messages (see [`released_entry`]) the client marked deleted:
    /// after a successful UPDATE they leave popsift's store.
    pub fn released_deleted(&self) -> Vec<Arc<str>> {
        self.deleted()
            .filter(|(_, d)| d.flags & RELEASED != 0)
            .filter_map(|(p, d)| self.msg(p, d).uidl.map(Arc::from))
            .collect()
    }

    /// Counts of (visible, hidden, condemned) messages.
    pub fn counts(&self) -> (usize, usize, usize) {
        counts(self.entries.iter().map(Dense::disposition))
    }
}

/// Counts of (visible, hidden, condemned) among `dispositions`.
pub fn counts(dispositions: impl Iterator<Item = Disposition>) -> (usize, usize, usize) {
    let mut c = (0, 0, 0);
    for d in dispositions {
        match d {
            Disposition::Visible => c.0 += 1,
            Disposition::Hidden => c.1 += 1,
            Disposition::Condemned => c.2 += 1,
        }
    }
    c
}

/// The side-table value of position `pos` (tables are sorted by position).
fn lookup<T>(table: &[(u32, T)], pos: u32) -> Option<&T> {
    table.binary_search_by_key(&pos, |(p, _)| *p).ok().and_then(|i| table.get(i)).map(|(_, t)| t)
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

    fn wide() -> Vec<Entry> {
        use Disposition::*;
        vec![
            entry(1, 100, Visible),
            entry(2, 200, Hidden),
            entry(3, 300, Condemned),
            entry(4, 400, Visible),
            entry(5, 500, Visible),
        ]
    }

    fn view() -> MailboxView {
        MailboxView::new(&wide())
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
        let mut entries = wide();
        entries.push(released_entry("popsift-r-1", msg.clone()));
        let mut v = MailboxView::new(&entries);
        assert_eq!(v.stat(), (4, 1000 + msg.len() as u64));
        let e = v.get(4).unwrap();
        assert_eq!((e.size, e.uidl), (msg.len() as u64, Some("popsift-r-1")));
        assert_eq!(e.released.map(|b| &b[..]), Some(&msg[..]));
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

#[cfg(test)]
mod dense_tests {
    use super::*;

    #[test]
    fn a_view_entry_stays_within_its_budget() {
        // Issue 16: ≤ 64 B per message of the view, UIDL included.
        assert_eq!(std::mem::size_of::<Dense>(), 32);
    }

    #[test]
    fn rare_parts_and_missing_uidls_come_back_per_message() {
        let rw = Arc::new(HeaderRewrite {
            original: b"S: a\r\n\r\n".to_vec(),
            replacement: b"S: [SPAM] a\r\n\r\n".to_vec(),
        });
        let plain = |n: u32, uidl: Option<&str>| Entry {
            upstream: n,
            upstream_size: 10 * u64::from(n),
            size: 10 * u64::from(n),
            uidl: uidl.map(Arc::from),
            disposition: Disposition::Visible,
            rewrite: None,
            evaluated: None,
            released: None,
        };
        let mut tagged = plain(2, Some("b"));
        tagged.rewrite = Some(rw.clone());
        tagged.size = 28;
        let entries = vec![plain(1, Some("a")), tagged, plain(3, None), plain(4, Some("dddd"))];
        let v = MailboxView::new(&entries);
        assert!(!v.all_have_uidl());
        let got: Vec<_> = v.live().map(|(n, m)| (n, m.upstream, m.size, m.uidl, m.rewrite.is_some())).collect();
        assert_eq!(
            got,
            vec![
                (1, 1, 10, Some("a"), false),
                (2, 2, 28, Some("b"), true),
                (3, 3, 30, None, false),
                (4, 4, 40, Some("dddd"), false)
            ]
        );
        assert!(Arc::ptr_eq(v.get(2).unwrap().rewrite.unwrap(), &rw));
        assert_eq!(v.at(1).map(|m| m.upstream_size), Some(20));
        assert_eq!(v.messages().count(), 4);
    }
}
