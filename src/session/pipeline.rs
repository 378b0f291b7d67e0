//! The TRANSACTION state's command queue (RFC 1939 §5, RFC 2449 §6.6 pipelining), as a
//! sans-IO state machine: fed the client's command lines, it says which commands go
//! upstream now and, in order, what each queued command is owed as its reply.
//!
//! Policy that lives here and nowhere else:
//! - Every command is planned against the [`MailboxView`] as soon as it is read, and
//!   answered strictly in the order it was read.
//! - Commands that need the upstream are sent ahead only when the upstream pipelines;
//!   otherwise one at a time (nothing is sent while an earlier one is in flight or unsent),
//!   so replies always pair with their commands. While [`REFILL_BELOW`] or more are in
//!   flight, the ones planned since wait and then go out together (see
//!   [`Pipeline::take_ahead`]); the oldest command is never among those held back.
//! - Memory is bounded: at most [`MAX_QUEUE`] commands and [`MAX_PREPARED`] octets of locally
//!   prepared replies are queued; beyond that the machine asks for no more input until the
//!   client has been answered (backpressure).
//! - After QUIT it accepts no more input. UPDATE's deletions exist only as the payload of
//!   [`Step::Quit`]: no command that reaches the upstream from here is ever a DELE.
//!
//! The driver performs the steps (socket writes, reads, timeouts); nothing here does I/O.
use std::collections::VecDeque;
use std::sync::Arc;

use crate::pop3::command::{self, Command};
use crate::session::plan::{self, err, TxPlan};
use crate::session::view::{HeaderRewrite, MailboxView};

/// Most planned-but-unanswered client commands; beyond this the machine wants no input.
pub const MAX_QUEUE: usize = 256;
/// Most octets of locally prepared replies (LIST, UIDL, STAT …) queued for pipelined
/// commands; beyond this the machine wants no input until they are sent.
pub const MAX_PREPARED: usize = 256 * 1024;
/// Commands in flight upstream below which the commands planned since go out (see
/// [`Pipeline::take_ahead`]): enough replies queued at the server that it never waits for
/// popsift's next batch.
pub const REFILL_BELOW: usize = MAX_QUEUE / 4;
/// Most buffers kept for reuse (see [`Pipeline::recycle`]).
const SPARE_MAX: usize = 4;
/// A buffer larger than this (a whole LIST) is not kept for reuse.
const SPARE_ROOM_MAX: usize = 4096;
/// Room a reused buffer gets: any status line or command line fits.
const SPARE_ROOM: usize = 128;

/// A header rewrite to apply while relaying RETR/TOP, with the sizes for the status line.
#[derive(Debug, Clone)]
pub struct Rewrite {
    pub header: Arc<HeaderRewrite>,
    pub upstream_size: u64,
    pub size: u64,
}

/// A queued client command waiting for its turn to be answered.
#[derive(Debug)]
enum Pending {
    Local(Vec<u8>),
    Relay { command: Command, sent: bool },
    Fetch { command: Command, sent: bool, rewrite: Option<Rewrite> },
    Capa { sent: bool },
    Quit { deletions: Vec<u32> },
}

impl Pending {
    /// Needs the upstream and has not been sent yet.
    fn unsent(&self) -> bool {
        matches!(
            self,
            Pending::Relay { sent: false, .. } | Pending::Fetch { sent: false, .. } | Pending::Capa { sent: false }
        )
    }
}

/// What the oldest queued command is owed now. `send` is the command to write upstream
/// first when it was not sent ahead (`None`: already in flight, just read its reply).
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send these bytes to the client.
    Reply(Vec<u8>),
    /// Relay one single-line reply (NOOP).
    Relay { send: Option<Vec<u8>> },
    /// Relay a RETR/TOP reply: its body on `+OK`, with the header block replaced when
    /// `rewrite` is set.
    Fetch { send: Option<Vec<u8>>, rewrite: Option<Rewrite> },
    /// Read the upstream's CAPA and answer the rewritten list.
    Capa { send: Option<Vec<u8>> },
    /// Enter UPDATE (RFC 1939 §6) with these upstream numbers to DELE.
    Quit { deletions: Vec<u32> },
}

impl PartialEq for Rewrite {
    fn eq(&self, o: &Rewrite) -> bool {
        self.header == o.header && self.upstream_size == o.upstream_size && self.size == o.size
    }
}

/// Commands to write upstream now, ahead of their turn.
#[derive(Debug, PartialEq, Eq)]
pub struct Ahead {
    pub bytes: Vec<u8>,
    /// Nothing was in flight before these: whatever the upstream sent meanwhile was
    /// unsolicited (RFC 1939 §3) and must be checked for first.
    pub upstream_was_idle: bool,
}

/// The TRANSACTION command queue over a filtered mailbox view.
#[derive(Debug)]
pub struct Pipeline {
    view: MailboxView,
    up_pipelining: bool,
    queue: VecDeque<Pending>,
    /// Commands sent upstream whose reply has not been taken yet.
    outstanding: usize,
    /// Commands in `ahead` (counted in `outstanding` already).
    ahead_count: usize,
    ahead: Vec<u8>,
    quit_planned: bool,
    /// The client has had two or more commands waiting at once: it pipelines.
    pipelining_client: bool,
    /// Octets of the `Pending::Local` replies in `queue`.
    prepared: usize,
    /// Buffers the performer gave back (commands written upstream, replies written to the
    /// client), reused for the next commands, replies and status lines: a command answered
    /// one at a time allocates no buffer of its own (issue 16). Small and few
    /// ([`SPARE_MAX`] of at most [`SPARE_ROOM_MAX`] octets; an empty slot has no capacity),
    /// and dropped when the session goes idle. Boxed: a pointer's room in the future every
    /// idle session keeps, not a `Vec`'s.
    spare: Option<Box<[Vec<u8>; SPARE_MAX]>>,
}

impl Pipeline {
    pub fn new(view: MailboxView, up_pipelining: bool) -> Pipeline {
        Pipeline {
            view,
            up_pipelining,
            queue: VecDeque::new(),
            outstanding: 0,
            ahead_count: 0,
            ahead: Vec::new(),
            quit_planned: false,
            pipelining_client: false,
            prepared: 0,
            spare: None,
        }
    }

    pub fn view(&self) -> &MailboxView {
        &self.view
    }

    /// Idle memory (issue 16): gives back the room the last commands left in the queue and
    /// the read-ahead bytes, when nothing is in them.
    pub fn release_idle(&mut self) {
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
        if self.ahead.is_empty() {
            self.ahead = Vec::new();
        }
        self.spare = None;
    }

    /// Takes back a buffer whose contents were written (see `spare`); kept if it is small
    /// and fewer than [`SPARE_MAX`] are kept.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > SPARE_ROOM_MAX {
            return;
        }
        let slots = self.spare.get_or_insert_with(Box::default);
        if let Some(slot) = slots.iter_mut().find(|s| s.capacity() == 0) {
            buf.clear();
            *slot = buf;
        }
    }

    /// An empty buffer with room for a status or command line: a recycled one if any.
    pub fn spare(&mut self) -> Vec<u8> {
        let kept = self.spare.as_mut().and_then(|slots| slots.iter_mut().find(|s| s.capacity() > 0));
        let mut buf = kept.map(std::mem::take).unwrap_or_default();
        buf.reserve(SPARE_ROOM);
        buf
    }

    /// The machine takes another command line now (bounded memory, nothing after QUIT).
    pub fn wants_input(&self) -> bool {
        !self.quit_planned && self.queue.len() < MAX_QUEUE && self.prepared < MAX_PREPARED
    }

    /// A pipelining client's queue runs low: worth reading what it has already sent
    /// (without waiting) so the upstream stays busy.
    pub fn read_ahead(&self) -> bool {
        self.pipelining_client && self.queue.len() <= MAX_QUEUE / 2
    }

    /// Nothing is queued or in flight: the reply being relayed now (already taken by
    /// [`Pipeline::next_step`]) is the last output before the client's next command, so the
    /// performer may write it at once instead of queueing it for the flush (issue 16).
    pub fn drained(&self) -> bool {
        self.queue.is_empty() && self.outstanding == 0
    }

    /// QUIT has been read: the client's EOF no longer ends the session early.
    pub fn quit_planned(&self) -> bool {
        self.quit_planned
    }

    /// Plans one client command line (without CRLF) and queues it.
    pub fn push_line(&mut self, line: &[u8]) {
        self.pipelining_client |= !self.queue.is_empty();
        let mut buf = self.spare();
        let planned = match command::parse(line) {
            Ok(cmd) => {
                tracing::debug!(command = cmd.keyword(), "client command");
                plan::transaction(&cmd, &mut self.view, &mut buf)
            }
            Err(e) => TxPlan::Reply(err(e)),
        };
        self.recycle(buf);
        // Without upstream pipelining a command goes out only when nothing is in flight and
        // no earlier command still waits to be sent: replies come back in order.
        let send_now = self.up_pipelining || (self.outstanding == 0 && !self.queue.iter().any(Pending::unsent));
        let pending = match planned {
            TxPlan::Reply(b) => {
                self.prepared += b.len();
                Pending::Local(b)
            }
            TxPlan::Relay(command) => {
                self.send_ahead(send_now, &command);
                Pending::Relay { command, sent: send_now }
            }
            TxPlan::Fetch { command, entry, .. } => {
                self.send_ahead(send_now, &command);
                let rewrite = self.view.at(entry).and_then(|e| {
                    e.rewrite.cloned().map(|header| Rewrite { header, upstream_size: e.upstream_size, size: e.size })
                });
                Pending::Fetch { command, sent: send_now, rewrite }
            }
            TxPlan::Capa => {
                self.send_ahead(send_now, &Command::Capa);
                Pending::Capa { sent: send_now }
            }
            TxPlan::Quit { deletions } => {
                self.quit_planned = true;
                Pending::Quit { deletions }
            }
        };
        self.queue.push_back(pending);
    }

    fn send_ahead(&mut self, now: bool, command: &Command) {
        if now {
            command.encode_into(&mut self.ahead);
            self.outstanding += 1;
            self.ahead_count += 1;
        }
    }

    /// The commands to write upstream now, if any: those planned since the last write, once
    /// fewer than [`REFILL_BELOW`] earlier ones are still in flight. A client that pipelines
    /// a whole mailbox keeps the queue full and frees one place per reply; sending each new
    /// command at once cost a write (and a TCP segment for the server to take in) per
    /// command, where a byte pump forwards the client's burst in a few (issue 16). Held back
    /// only behind commands in flight, which are older: the oldest queued command, whose
    /// reply is read next, has always been written.
    pub fn take_ahead(&mut self) -> Option<Ahead> {
        // `outstanding` counts the commands in `ahead` too; saturating, a miscount would
        // send at once (never hold a command back for good, never panic).
        let in_flight = self.outstanding.saturating_sub(self.ahead_count);
        if self.ahead.is_empty() || in_flight >= REFILL_BELOW {
            return None;
        }
        let upstream_was_idle = in_flight == 0;
        self.ahead_count = 0;
        let next = self.spare();
        Some(Ahead { bytes: std::mem::replace(&mut self.ahead, next), upstream_was_idle })
    }

    /// The oldest command's due, or `None` when the queue is empty (read more input).
    pub fn next_step(&mut self) -> Option<Step> {
        let pending = self.queue.pop_front()?;
        Some(match pending {
            Pending::Local(b) => {
                self.prepared = self.prepared.saturating_sub(b.len());
                Step::Reply(b)
            }
            Pending::Relay { command, sent } => Step::Relay { send: self.due(sent, command) },
            Pending::Fetch { command, sent, rewrite } => Step::Fetch { send: self.due(sent, command), rewrite },
            Pending::Capa { sent } => Step::Capa { send: self.due(sent, Command::Capa) },
            Pending::Quit { deletions } => Step::Quit { deletions },
        })
    }

    /// A command whose turn came: its reply is read now; it is written first if unsent.
    fn due(&mut self, sent: bool, command: Command) -> Option<Vec<u8>> {
        if sent {
            self.outstanding = self.outstanding.saturating_sub(1);
            None
        } else {
            let mut bytes = self.spare();
            command.encode_into(&mut bytes);
            Some(bytes)
        }
    }
}

/// UPDATE (RFC 1939 §6): the DELE commands for `deletions`, in batches of `window`
/// (1 without upstream pipelining), each with the upstream numbers it carries. Only the
/// [`Step::Quit`] payload feeds this: the client's QUIT is the one way to reach it.
pub fn dele_batches(deletions: &[u32], window: usize) -> impl Iterator<Item = (Vec<u8>, &[u32])> {
    deletions.chunks(window.max(1)).map(|chunk| {
        let mut cmds = Vec::with_capacity(chunk.len() * 12);
        for n in chunk {
            Command::Dele(*n).encode_into(&mut cmds);
        }
        (cmds, chunk)
    })
}

#[cfg(test)]
mod tests {
    //! `C:` lines fed in, `S:` what goes upstream and what each command is owed, no I/O.
    use super::*;
    use crate::session::view::{Disposition, Entry};

    fn view(n: u32) -> MailboxView {
        MailboxView::new(
            &(1..=n)
                .map(|i| Entry {
                    upstream: i,
                    upstream_size: 100,
                    size: 100,
                    uidl: Some(format!("u{i}").into()),
                    disposition: if i == 2 { Disposition::Condemned } else { Disposition::Visible },
                    rewrite: None,
                    evaluated: None,
                    released: None,
                })
                .collect::<Vec<_>>(),
        )
    }

    fn feed(p: &mut Pipeline, lines: &[&str]) -> Vec<u8> {
        for l in lines {
            assert!(p.wants_input());
            p.push_line(l.as_bytes());
        }
        p.take_ahead().map(|a| a.bytes).unwrap_or_default()
    }

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn pipelining_upstream_gets_every_upstream_command_at_once_in_order() {
        let mut p = Pipeline::new(view(3), true);
        // C: RETR 1 / STAT / RETR 2 / NOOP   (client numbers 1, 2 = upstream 1, 3)
        let ahead = feed(&mut p, &["RETR 1", "STAT", "RETR 2", "NOOP"]);
        assert_eq!(s(&ahead), "RETR 1\r\nRETR 3\r\nNOOP\r\n");
        assert_eq!(p.next_step(), Some(Step::Fetch { send: None, rewrite: None }));
        assert_eq!(p.next_step(), Some(Step::Reply(b"+OK 2 200\r\n".to_vec())));
        assert_eq!(p.next_step(), Some(Step::Fetch { send: None, rewrite: None }));
        assert_eq!(p.next_step(), Some(Step::Relay { send: None }));
        assert_eq!(p.next_step(), None);
        assert_eq!(p.outstanding, 0);
    }

    /// `drained` (issue 16: the driver writes a body at once only then): true only when the
    /// reply just taken is the last one owed, with upstream pipelining or without.
    #[test]
    fn drained_only_when_the_reply_taken_is_the_last_owed() {
        for up_pipelining in [true, false] {
            let mut p = Pipeline::new(view(3), up_pipelining);
            assert!(p.drained());
            feed(&mut p, &["RETR 1"]);
            assert!(!p.drained(), "queued");
            assert!(matches!(p.next_step(), Some(Step::Fetch { .. })));
            assert!(p.drained(), "one at a time: the RETR taken is the last");
            feed(&mut p, &["RETR 1", "RETR 2"]);
            assert!(matches!(p.next_step(), Some(Step::Fetch { .. })));
            assert!(!p.drained(), "a second RETR is queued behind the first");
            assert!(matches!(p.next_step(), Some(Step::Fetch { .. })));
            assert!(p.drained());
        }
    }

    #[test]
    fn without_upstream_pipelining_one_command_is_in_flight_at_a_time() {
        let mut p = Pipeline::new(view(3), false);
        let ahead = feed(&mut p, &["RETR 1", "RETR 2", "CAPA", "NOOP"]);
        assert_eq!(s(&ahead), "RETR 1\r\n");
        assert_eq!(p.next_step(), Some(Step::Fetch { send: None, rewrite: None }));
        assert_eq!(p.next_step(), Some(Step::Fetch { send: Some(b"RETR 3\r\n".to_vec()), rewrite: None }));
        assert_eq!(p.next_step(), Some(Step::Capa { send: Some(b"CAPA\r\n".to_vec()) }));
        assert_eq!(p.next_step(), Some(Step::Relay { send: Some(b"NOOP\r\n".to_vec()) }));
        // Idle again: the next command goes ahead, and the upstream was idle before it.
        p.push_line(b"NOOP");
        assert_eq!(p.take_ahead(), Some(Ahead { bytes: b"NOOP\r\n".to_vec(), upstream_was_idle: true }));
    }

    #[test]
    fn ahead_after_commands_in_flight_is_not_from_an_idle_upstream() {
        let mut p = Pipeline::new(view(3), true);
        assert!(p.take_ahead().is_none());
        feed(&mut p, &["NOOP"]);
        p.push_line(b"NOOP");
        assert_eq!(p.take_ahead(), Some(Ahead { bytes: b"NOOP\r\n".to_vec(), upstream_was_idle: false }));
    }

    #[test]
    fn quit_carries_the_deletions_and_ends_input() {
        let mut p = Pipeline::new(view(3), true);
        let ahead = feed(&mut p, &["DELE 1", "QUIT"]);
        assert!(ahead.is_empty(), "nothing goes upstream before UPDATE: {}", s(&ahead));
        assert!(!p.wants_input() && p.quit_planned());
        assert_eq!(p.next_step(), Some(Step::Reply(b"+OK message 1 deleted\r\n".to_vec())));
        // Upstream 1 (the client's DELE) and 2 (condemned at login).
        assert_eq!(p.next_step(), Some(Step::Quit { deletions: vec![1, 2] }));
    }

    #[test]
    fn no_dele_goes_upstream_whatever_the_client_sends() {
        for pipelining in [false, true] {
            let mut p = Pipeline::new(view(3), pipelining);
            let lines =
                ["DELE 1", "RSET", "DELE 2", "dele 1", "RSET", "RETR 1", "TOP 2 0", "NOOP", "CAPA", "XYZ", "\u{1}"];
            let mut upstream = feed(&mut p, &lines);
            while let Some(step) = p.next_step() {
                match step {
                    Step::Relay { send: Some(c) }
                    | Step::Fetch { send: Some(c), .. }
                    | Step::Capa { send: Some(c) } => upstream.extend_from_slice(&c),
                    Step::Quit { .. } => panic!("no QUIT was sent"),
                    _ => {}
                }
            }
            let text = s(&upstream).to_ascii_uppercase();
            assert!(!text.contains("DELE"), "{text}");
            assert_eq!(text, "RETR 1\r\nTOP 3 0\r\nNOOP\r\nCAPA\r\n");
        }
    }

    #[test]
    fn prepared_replies_are_bounded_in_octets() {
        let mut p = Pipeline::new(view(3), true);
        let mut n = 0;
        while p.wants_input() {
            p.push_line(b"UIDL");
            n += 1;
        }
        // Each UIDL listing is ~45 octets: the octet bound stops reading long before the
        // command bound would for large replies, and here the command bound stops it.
        assert!(n <= MAX_QUEUE, "{n}");
        assert!(p.prepared < MAX_PREPARED + 64);
        while p.next_step().is_some() {}
        assert_eq!(p.prepared, 0);
        assert!(p.wants_input());
    }

    #[test]
    fn big_local_replies_stop_input_by_octets() {
        let many = 20_000;
        let mut p = Pipeline::new(view(many), true);
        let mut n = 0;
        while p.wants_input() {
            p.push_line(b"LIST");
            n += 1;
        }
        assert!(n < 5, "each LIST is over 100 KiB: {n}");
        assert!(p.next_step().is_some());
        assert!(p.wants_input());
    }

    #[test]
    fn a_second_waiting_command_marks_a_pipelining_client() {
        let mut p = Pipeline::new(view(3), true);
        p.push_line(b"STAT");
        assert!(!p.read_ahead());
        p.push_line(b"STAT");
        assert!(p.read_ahead());
    }

    /// One `C:` line in, the `S:` reply it is owed (local replies; upstream ones as `>CMD`).
    fn converse(p: &mut Pipeline, table: &[(&str, &str)]) {
        for (c, expected) in table {
            p.push_line(c.as_bytes());
            let ahead = p.take_ahead().map(|a| a.bytes).unwrap_or_default();
            let got = match p.next_step() {
                Some(Step::Reply(b)) => s(&b).to_string(),
                Some(Step::Relay { send } | Step::Fetch { send, .. } | Step::Capa { send }) => {
                    format!(">{}", s(&send.unwrap_or(ahead)).trim_end())
                }
                Some(Step::Quit { deletions }) => format!("UPDATE {deletions:?}"),
                None => panic!("C: {c} owed nothing"),
            };
            assert!(got.starts_with(expected), "C: {c}\nS: {got}\nexpected: {expected}");
        }
    }

    /// Was `tests/transcript.rs::bad_commands_get_rfc_errors` (after login).
    #[test]
    fn bad_commands_get_rfc_errors() {
        let mut p = Pipeline::new(view(3), false);
        converse(
            &mut p,
            &[
                ("RETR x", "-ERR RETR: invalid message number"),
                ("RETR 0", "-ERR no such message"),
                ("XYZZY", "-ERR unknown command"),
                ("LIST 99", "-ERR no such message"),
                ("RSET", "+OK maildrop has 2 messages"),
                ("USER bob", "-ERR already logged in"),
            ],
        );
    }

    /// Was `tests/transcript.rs::drop_without_quit_deletes_nothing`, minus the socket: DELE
    /// is a mark; only QUIT turns marks into UPDATE, and a client that leaves never sends it.
    #[test]
    fn deletion_marks_reach_the_upstream_only_through_quit() {
        let mut p = Pipeline::new(view(3), true);
        converse(
            &mut p,
            &[
                ("DELE 1", "+OK message 1 deleted"),
                ("RETR 2", ">RETR 3"),
                ("NOOP", ">NOOP"),
                ("RSET", "+OK maildrop has 2 messages"),
                ("DELE 2", "+OK message 2 deleted"),
                ("QUIT", "UPDATE [2, 3]"),
            ],
        );
        assert!(!p.wants_input());
    }

    /// Issue 16: a command answered one at a time reuses the buffers the performer gave
    /// back (its upstream command, the reply, the status line), and the pool stays small.
    #[test]
    fn buffers_given_back_are_reused_and_bounded() {
        let mut p = Pipeline::new(view(3), false);
        // A buffer of a capacity nothing else asks for comes back as it was given. The
        // blocker takes the block it would free if it were dropped, so a reused address
        // cannot pass for reuse.
        let marked = Vec::with_capacity(300);
        let at = marked.as_ptr();
        p.recycle(marked);
        let blocker = Vec::<u8>::with_capacity(300);
        let back = p.spare();
        assert_eq!((back.as_ptr(), back.capacity()), (at, 300), "the recycled buffer itself");
        drop(blocker);
        p.recycle(back);
        let mut seen = std::collections::HashSet::new();
        for round in 0..20 {
            p.push_line(b"RETR 1");
            let ahead = p.take_ahead().expect("sent at once");
            assert_eq!(s(&ahead.bytes), "RETR 1\r\n");
            let status = p.spare();
            assert!(status.capacity() >= SPARE_ROOM);
            assert_eq!(p.next_step(), Some(Step::Fetch { send: None, rewrite: None }));
            p.push_line(b"STAT");
            let Some(Step::Reply(reply)) = p.next_step() else { panic!("STAT is answered locally") };
            assert_eq!(s(&reply), "+OK 2 200\r\n");
            let ptrs = [ahead.bytes.as_ptr(), status.as_ptr(), reply.as_ptr()];
            if round > 2 {
                assert!(ptrs.iter().all(|p| seen.contains(p)), "round {round}: a new buffer");
            }
            seen.extend(ptrs);
            for b in [ahead.bytes, status, reply] {
                p.recycle(b);
            }
        }
        for _ in 0..10 {
            p.recycle(Vec::with_capacity(64));
        }
        let kept = |p: &Pipeline| p.spare.as_ref().map_or(0, |s| s.iter().filter(|b| b.capacity() > 0).count());
        assert_eq!(kept(&p), SPARE_MAX);
        let mut q = Pipeline::new(view(3), false);
        q.recycle(Vec::with_capacity(SPARE_ROOM_MAX + 1));
        q.recycle(Vec::new());
        assert_eq!(kept(&q), 0, "large and empty buffers are not kept");
        p.release_idle();
        assert!(p.spare.is_none());
    }

    /// Issue 16: a client that pipelines a whole mailbox gets its commands to the upstream
    /// in a few large writes, not one per command, and the command whose reply is read
    /// next has always been written.
    #[test]
    fn a_mailbox_pipelined_whole_goes_upstream_in_batches() {
        let n = 2_000;
        let mut p = Pipeline::new(view(n), true);
        // Message 2 is condemned (`view`): the client sees n - 1.
        let mut lines = (1..n).map(|i| format!("RETR {i}"));
        let (mut written, mut writes, mut answered) = (0usize, 0usize, 0usize);
        loop {
            while p.wants_input() {
                let Some(l) = lines.next() else { break };
                p.push_line(l.as_bytes());
            }
            if let Some(a) = p.take_ahead() {
                writes += 1;
                written += s(&a.bytes).matches("\r\n").count();
            }
            match p.next_step() {
                Some(Step::Fetch { send: None, .. }) => {
                    answered += 1;
                    assert!(written >= answered, "reply {answered} read before its command was written");
                }
                None => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((answered, written), (n as usize - 1, n as usize - 1));
        assert!(writes <= 12, "{writes} writes upstream for {answered} commands");
    }

    #[test]
    fn dele_batches_follow_the_window() {
        let b: Vec<_> = dele_batches(&[1, 2, 3], 2).map(|(c, n)| (String::from_utf8(c).unwrap(), n.to_vec())).collect();
        assert_eq!(b, vec![("DELE 1\r\nDELE 2\r\n".to_string(), vec![1, 2]), ("DELE 3\r\n".to_string(), vec![3])]);
        assert_eq!(dele_batches(&[1, 2], 0).count(), 2);
        assert_eq!(dele_batches(&[], 4).count(), 0);
    }
}
