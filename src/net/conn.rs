//! A buffered connection: lines and raw chunks out of a socket, each line bounded by a size
//! cap, each unit by a deadline named after its phase. Both sides of a session use it;
//! `Side` decides whether an EOF is the client's or the upstream's fault.
//!
//! # Deadlines per unit, not per read
//! A timeout per read lets a peer that sends one octet just before it expires hold a
//! session (and its `max_sessions` slot) forever. So:
//! - a status line or greeting ([`Conn::read_line`]) must arrive whole within its timeout;
//! - a client command waits `client_idle` for its first octet, then gets `client_line` for
//!   the rest of the line ([`Conn::fill_client`]; the clock starts when popsift begins
//!   waiting on a partial line, so lines read ahead while popsift was busy are not charged);
//! - a multi-line reply, whose size popsift cannot bound (a 500 MB RETR on a slow link is
//!   legitimate), gets a [`BodyClock`]: no silence longer than `upstream_reply`, and on
//!   average at least `upstream_min_rate` octets a second beyond an `upstream_reply`
//!   allowance.
//!
//! # Memory of an idle session
//! A provider's instance spends most of its life holding sessions of clients that poll and
//! then wait (issue 16). A connection holds no read buffer until it reads: the first read
//! into a new or released buffer gets [`SMALL_READ`] octets, enough for any one command or
//! status line, and only a peer that fills that (a body, pipelined commands) gets
//! [`READ_CHUNK`], kept until the buffer is released.
//! A client silent for [`IDLE_GRACE`] after its last reply makes the session give its
//! buffers back ([`Conn::fill_client_or_idle`], [`Conn::release_if_empty`]): a client
//! that sends its next command at once (one at a time on a LAN) keeps them, so the relay
//! loop allocates nothing per command.
//!
//! # CPU per command (issue 16)
//! A one-command-at-a-time client costs popsift two waits per command (its next command,
//! the server's reply). A fresh `tokio::time::timeout` per wait registers a timer entry in
//! the runtime's wheel under its lock, removes it again under the lock when the read
//! completes, and, when its deadline is the earliest one (the client's [`IDLE_GRACE`]),
//! wakes the I/O driver through its eventfd: one extra `write` syscall and one extra
//! `epoll_wait` event per command. So each connection keeps one timer ([`Conn::timer`]) from
//! wait to wait (dropped with the buffers when the connection goes idle, see
//! [`Conn::release_if_empty`]). Its deadline is not moved per read either (a `Sleep::reset`
//! and a clock read each time): a wait whose deadline is later than the armed one leaves it,
//! and when it fires early the wait moves it to its own deadline and goes on (`until`,
//! `by_deadline`), so every timeout still fires exactly when documented. Every read and write is also tried once
//! before any timer is touched: data already buffered in the socket (a pipelining client,
//! a reply that arrived while popsift wrote) needs no deadline at all.
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::net::error::{Phase, SessionError};
use crate::net::outbox::{Outbox, SLICES};
use crate::pop3::line::{split_line, Line};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// Read buffer granularity.
const READ_CHUNK: usize = 64 * 1024;
/// The first read into an empty, released buffer (see the module doc): larger than a
/// one-at-a-time command or a status line, small enough to cost nothing while idle.
pub const SMALL_READ: usize = 512;
/// The first read of a client that was idle goes into this many octets inside the wait,
/// not into a buffer made before it (see [`Conn::fill_released_by`]).
const FIRST_READ: usize = 64;
/// How long a client may be silent after its last reply before the session gives its
/// buffers back (see the module doc).
pub const IDLE_GRACE: Duration = Duration::from_millis(250);

/// The read buffer's size class (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// No memory of its own (new, or released while idle).
    Released,
    /// About [`SMALL_READ`] octets: commands and status lines.
    Small,
    /// [`READ_CHUNK`] octets: bodies and bursts.
    Large,
}

pub struct Conn<S> {
    io: S,
    buf: BytesMut,
    /// How much memory the read buffer holds (see the module doc).
    room: Room,
    /// Free space offered to the last read, and whether that read filled it (more is
    /// probably waiting: a body, a burst of pipelined commands).
    offered: usize,
    filled: bool,
    side: Side,
    /// When popsift began waiting for the rest of a partial client line (see the module doc).
    line_started: Option<Instant>,
    /// The peer's EOF was seen by [`Conn::gone`] while commands were still buffered.
    eof_seen: bool,
    /// The deadline of the wait in progress, kept between waits (see the module doc);
    /// boxed so an idle session's future stays small, and dropped with the buffers.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Octets read from / written to the socket, for metrics and the session summary.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S, side: Side) -> Conn<S> {
        Conn {
            io,
            buf: BytesMut::new(),
            room: Room::Released,
            offered: 0,
            filled: false,
            side,
            line_started: None,
            eof_seen: false,
            timer: None,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Room for the next read: [`SMALL_READ`] octets into a released buffer, else
    /// [`READ_CHUNK`] whenever less than a quarter of that is free (see the module doc).
    /// A small buffer grows to [`READ_CHUNK`] only when a read filled it or a partial line
    /// outgrew it; once large it stays so until released. (`reserve` on an emptied buffer
    /// reuses its allocation: no allocation per read.)
    fn make_room(&mut self) {
        let spare = self.buf.capacity() - self.buf.len();
        match self.room {
            Room::Released => {
                self.buf.reserve(SMALL_READ);
                self.room = Room::Small;
            }
            Room::Small if self.filled || (spare < SMALL_READ / 4 && !self.buf.is_empty()) => {
                self.buf.reserve(READ_CHUNK);
                self.room = Room::Large;
            }
            Room::Small if spare < SMALL_READ / 4 => self.buf.reserve(SMALL_READ),
            Room::Small => {}
            Room::Large if self.short_of_large_room() => self.buf.reserve(self.large_room()),
            Room::Large => {}
        }
        self.offered = self.buf.capacity() - self.buf.len();
    }

    /// What a large buffer short of room asks for: enough to hold [`READ_CHUNK`] again, not
    /// [`READ_CHUNK`] more. That fits the allocation it has, which `reserve` then reuses by
    /// moving the few unread octets to its front; asking for more made it reallocate (and
    /// grow) or allocate anew at every refill (issue 16: a tenth of popsift's instructions in
    /// the pipelined 10 KB relay).
    fn large_room(&self) -> usize {
        READ_CHUNK.saturating_sub(self.buf.len()).max(READ_CHUNK / 4)
    }

    /// Whether a large buffer has less than a quarter of [`READ_CHUNK`] free: the one place
    /// that says when it needs room ([`Conn::make_room`], [`Conn::read_needs_allocation`]).
    fn short_of_large_room(&self) -> bool {
        self.buf.capacity() - self.buf.len() < READ_CHUNK / 4
    }

    /// Whether the next read needs a new allocation: the buffer is large and short of room,
    /// and its consumed front cannot be reused because parts split off it (queued output,
    /// see [`crate::net::outbox`]) still live. Writing those first lets the read reuse the
    /// buffer (issue 16). Reclaims the room when it can.
    pub fn read_needs_allocation(&mut self) -> bool {
        self.room == Room::Large && self.short_of_large_room() && !self.buf.try_reclaim(self.large_room())
    }

    /// Counts `n` octets just read into the buffer.
    fn note_read(&mut self, n: usize) {
        self.bytes_in += n as u64;
        self.filled = n >= self.offered;
    }

    /// Gives the read buffer's memory back when nothing is buffered (the connection is idle),
    /// and the timer of the last wait (its deadline is stale; the next wait makes a new one).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.room != Room::Released {
            self.buf = BytesMut::new();
            self.room = Room::Released;
            self.filled = false;
            self.timer = None;
        }
    }

    /// Whether the buffer holds no whole line yet and less than `max` octets of one, i.e.
    /// [`Conn::take_line`] would need more input (the same test it makes).
    pub fn line_incomplete(&self, max: usize) -> bool {
        matches!(split_line(&self.buf, max), Line::Incomplete)
    }

    /// Takes one complete line (without its line end) from what is already buffered.
    pub fn take_line(&mut self, max: usize) -> Result<Option<BytesMut>, SessionError> {
        match split_line(&self.buf, max) {
            Line::Complete { content, consumed } => {
                let mut line = self.buf.split_to(consumed);
                line.truncate(content);
                self.line_started = None;
                Ok(Some(line))
            }
            Line::Incomplete => Ok(None),
            Line::TooLong => Err(self.too_long(max)),
        }
    }

    /// The peer closed its side: which error depends on the side.
    fn closed(&self, phase: Phase) -> SessionError {
        match self.side {
            Side::Client => SessionError::ClientClosed,
            Side::Upstream => SessionError::UpstreamClosed { phase },
        }
    }

    /// A socket error, attributed to the side it happened on.
    fn io_error(&self, phase: Phase, e: std::io::Error) -> SessionError {
        match self.side {
            Side::Client => SessionError::ClientIo(e),
            Side::Upstream => SessionError::UpstreamIo { phase, source: e },
        }
    }

    fn too_long(&self, max: usize) -> SessionError {
        match self.side {
            Side::Client => SessionError::ClientLineTooLong { limit: max },
            Side::Upstream => {
                SessionError::UpstreamProtocol { phase: Phase::Relay, detail: format!("line longer than {max} octets") }
            }
        }
    }

    /// Reads until a whole line is buffered, then takes it. The whole line must arrive
    /// within `limit` (a hard deadline, however the peer spaces its octets).
    pub async fn read_line(&mut self, max: usize, limit: Duration, phase: Phase) -> Result<BytesMut, SessionError> {
        // The clock is read only if the line is not buffered yet (issue 16: a pipelined
        // reply's status line usually is), and then once: the line's deadline.
        let mut deadline = None;
        loop {
            if let Some(line) = self.take_line(max)? {
                return Ok(line);
            }
            let by = *deadline.get_or_insert_with(|| Instant::now() + limit);
            self.fill_by(by, limit, phase).await?;
        }
    }

    /// Reads a client command line: `idle` for its first octet, then `whole_line` for the
    /// rest (see the module doc).
    pub async fn read_command(
        &mut self,
        max: usize,
        idle: Duration,
        whole_line: Duration,
    ) -> Result<BytesMut, SessionError> {
        loop {
            if let Some(line) = self.take_line(max)? {
                return Ok(line);
            }
            self.fill_client(idle, whole_line).await?;
        }
    }

    /// Waits for more client input: up to `idle` ([`Phase::ClientIdle`]) when nothing of the
    /// next line has arrived, else until `whole_line` after popsift began waiting for the
    /// rest of this line ([`Phase::ClientLine`]).
    pub async fn fill_client(&mut self, idle: Duration, whole_line: Duration) -> Result<(), SessionError> {
        self.fill_client_or_idle(idle, whole_line, || {}).await
    }

    /// [`Conn::fill_client`], and when nothing of the next line arrives within
    /// [`IDLE_GRACE`] the session is idle: `on_idle` runs once (the caller gives back its
    /// other buffers) and this connection's read buffer is released before the rest of the
    /// `idle` wait. The idle deadline itself is unchanged.
    pub async fn fill_client_or_idle(
        &mut self,
        idle: Duration,
        whole_line: Duration,
        on_idle: impl FnOnce(),
    ) -> Result<(), SessionError> {
        if !self.buf.is_empty() {
            let started = *self.line_started.get_or_insert_with(Instant::now);
            return self.fill_by(started + whole_line, whole_line, Phase::ClientLine).await;
        }
        self.line_started = None;
        let started = Instant::now();
        if IDLE_GRACE < idle {
            // A read cancelled by its deadline loses nothing: it either completed or read nothing.
            match self.fill_by(started + IDLE_GRACE, IDLE_GRACE, Phase::ClientIdle).await {
                Err(SessionError::Timeout { .. }) => {}
                other => return other,
            }
            on_idle();
            self.release_if_empty();
            if self.room == Room::Released {
                return self.fill_released_by(started + idle, idle, Phase::ClientIdle).await;
            }
        }
        self.fill_by(started + idle, idle, Phase::ClientIdle).await
    }

    /// Idle memory (issue 16): waits for the first octets into a released buffer without
    /// making the buffer first. They are read into [`FIRST_READ`] octets inside the wait
    /// itself, and the buffer ([`SMALL_READ`]) is made only once they arrived; a
    /// [`Conn::fill_by`] would reserve it before waiting, so every idle session would hold
    /// one for the whole of its idle wait. A one-at-a-time command fits in one such read:
    /// no extra syscall.
    async fn fill_released_by(&mut self, deadline: Instant, after: Duration, phase: Phase) -> Result<(), SessionError> {
        let mut first = [0u8; FIRST_READ];
        let mut first = ReadBuf::new(&mut first);
        let read = {
            let Conn { io, timer, .. } = &mut *self;
            let read = std::pin::pin!(std::future::poll_fn(|cx| Pin::new(&mut *io).poll_read(cx, &mut first)));
            by_deadline(read, timer, deadline).await
        };
        match read {
            None => Err(SessionError::Timeout { phase, after }),
            Some(Ok(())) if first.filled().is_empty() => Err(self.closed(phase)),
            Some(Ok(())) => {
                self.make_room();
                self.buf.extend_from_slice(first.filled());
                self.note_read(first.filled().len());
                Ok(())
            }
            Some(Err(e)) => Err(self.io_error(phase, e)),
        }
    }

    /// Reads at least one more byte into the buffer, waiting at most `limit`.
    pub async fn fill(&mut self, limit: Duration, phase: Phase) -> Result<(), SessionError> {
        self.fill_by(Instant::now() + limit, limit, phase).await
    }

    /// Reads the next part of a multi-line reply under `clock` (see [`BodyClock`]).
    pub async fn fill_body(&mut self, clock: &mut BodyClock, phase: Phase) -> Result<(), SessionError> {
        let before = self.bytes_in;
        let now = Instant::now();
        let started = *clock.started.get_or_insert(now);
        let silence = now + clock.base;
        let deadline = clock.deadline(started);
        match self.fill_by(silence.min(deadline), clock.base, phase).await {
            // Nothing at all since the clock started is a plain timeout, not a slow reply.
            Err(SessionError::Timeout { .. }) if deadline <= silence && clock.received > 0 => {
                Err(SessionError::TooSlow { phase, octets: clock.received, after: started.elapsed() })
            }
            other => {
                clock.received += self.bytes_in - before;
                other
            }
        }
    }

    /// [`Conn::fill_if_ready`] for the next part of a multi-line reply: what it reads counts
    /// on `clock` as [`Conn::fill_body`]'s reads do.
    pub fn fill_body_if_ready(&mut self, clock: &mut BodyClock, phase: Phase) -> Result<bool, SessionError> {
        let before = self.bytes_in;
        let ready = self.fill_if_ready(phase)?;
        clock.received += self.bytes_in - before;
        Ok(ready)
    }

    /// Reads what the socket already holds, without waiting: one poll of the read (plain or
    /// TLS alike). `Ok(false)` when nothing was ready. A zero-length `tokio::time::timeout`
    /// is no substitute: it only fires at the timer's next tick (about a millisecond), which
    /// cost every one-command-at-a-time client that much per command.
    pub fn fill_if_ready(&mut self, phase: Phase) -> Result<bool, SessionError> {
        use std::future::Future;
        use std::task::{Context, Poll, Wake, Waker};
        struct NoWake;
        impl Wake for NoWake {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        // A waker that does nothing, made once, not allocated per call (this runs before
        // every command sent to an idle upstream, issue 16; `Waker::noop` is newer than
        // the MSRV).
        static NO_WAKE: std::sync::LazyLock<Waker> =
            std::sync::LazyLock::new(|| Waker::from(std::sync::Arc::new(NoWake)));
        self.make_room();
        let mut cx = Context::from_waker(&NO_WAKE);
        let read = std::pin::pin!(self.io.read_buf(&mut self.buf));
        match read.poll(&mut cx) {
            Poll::Pending => Ok(false),
            Poll::Ready(Ok(0)) => Err(self.closed(phase)),
            Poll::Ready(Ok(n)) => {
                self.note_read(n);
                Ok(true)
            }
            Poll::Ready(Err(e)) => Err(self.io_error(phase, e)),
        }
    }

    /// Reads at least one more byte into the buffer by `deadline`; a timeout reports
    /// `after` (the configured limit) and `phase`.
    async fn fill_by(&mut self, deadline: Instant, after: Duration, phase: Phase) -> Result<(), SessionError> {
        self.make_room();
        let Conn { io, buf, timer, .. } = self;
        let read = std::pin::pin!(io.read_buf(buf));
        match by_deadline(read, timer, deadline).await {
            None => Err(SessionError::Timeout { phase, after }),
            Some(Ok(0)) => Err(self.closed(phase)),
            Some(Ok(n)) => {
                self.note_read(n);
                Ok(())
            }
            Some(Err(e)) => Err(self.io_error(phase, e)),
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Puts bytes back at the front of the buffer (they were read ahead of their turn).
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut b = BytesMut::with_capacity(bytes.len() + self.buf.len() + READ_CHUNK);
        b.extend_from_slice(bytes);
        b.extend_from_slice(&self.buf);
        self.buf = b;
        self.room = Room::Large;
    }

    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Takes the first `n` buffered octets out as a shared part, without copying them
    /// (see [`crate::net::outbox`]). The read buffer keeps the rest; while the part lives,
    /// its next growth makes a new allocation instead of reusing this one.
    pub fn split_front(&mut self, n: usize) -> bytes::Bytes {
        self.buf.split_to(n.min(self.buf.len())).freeze()
    }

    /// The one body-relay step every reader of a multi-line body uses (verbatim relay,
    /// quarantine copy, header collection, small replies read whole): offers the buffered
    /// bytes to `feed`, hands the part that belongs to the body (terminator included) to
    /// `sink`, and consumes it; bytes after the terminator stay buffered for the next reply.
    /// `None`: nothing buffered (call [`Conn::fill_body`]); `Some(true)`: the body ended.
    pub fn relay_buffered(&mut self, feed: &mut impl crate::pop3::BodyFeed, sink: impl FnOnce(&[u8])) -> Option<bool> {
        let (n, done) = self.body_part(0, feed)?;
        sink(self.buf.get(..n).unwrap_or_default());
        self.buf.advance(n);
        Some(done)
    }

    /// [`Conn::relay_buffered`] without the sink and without consuming: offers the buffered
    /// bytes after the first `held` (already fed) to `feed` and says how many octets from the
    /// front belong to the body (`held` included, terminator included) and whether it ended
    /// there. `None`: nothing new is buffered. The octets stay buffered until the caller
    /// [`Conn::consume`]s them, so the body relay can gather a large write in the read buffer
    /// and send it from there without copying it (issue 16).
    pub fn body_part(&mut self, held: usize, feed: &mut impl crate::pop3::BodyFeed) -> Option<(usize, bool)> {
        let new = self.buf.get(held..).filter(|b| !b.is_empty())?;
        let done = feed.feed(new);
        Some((held + done.unwrap_or(new.len()), done.is_some()))
    }

    /// Writes everything; a peer that stops reading for `limit` is an error.
    pub async fn write_all(&mut self, data: &[u8], limit: Duration, phase: Phase) -> Result<(), SessionError> {
        self.write_runs(|| std::iter::once(data), limit, phase).await
    }

    /// Writes the client's queued output `out`, then `tail` (a body part still in the
    /// upstream's read buffer), in one vectored write (see [`Conn::write_runs`]).
    pub async fn write_outbox(
        &mut self,
        out: &Outbox,
        tail: &[u8],
        limit: Duration,
        phase: Phase,
    ) -> Result<(), SessionError> {
        self.write_runs(|| out.runs(tail), limit, phase).await
    }

    /// Writes every run `runs()` yields (at most [`SLICES`] at a time), in order: pending
    /// replies and body parts still in the upstream's read buffer go out together in one
    /// `writev` where the stream supports it (plain TCP), without first being copied into
    /// one buffer (issue 16). A single run is one plain write (no `writev`). The slices are
    /// made afresh at each poll from what is left, so no array of them is kept in the
    /// future every idle session holds. A peer that stops reading for `limit` is an error.
    async fn write_runs<'a, R: Iterator<Item = &'a [u8]>>(
        &mut self,
        runs: impl Fn() -> R,
        limit: Duration,
        phase: Phase,
    ) -> Result<(), SessionError> {
        let len: usize = runs().map(<[u8]>::len).sum();
        if len == 0 {
            return Ok(());
        }
        let io = &mut self.io;
        let mut write = std::pin::pin!(async move {
            let mut written = 0;
            while written < len {
                let n = std::future::poll_fn(|cx| {
                    // Two slices cover a reply behind its status line; more only for a
                    // queue with shared parts.
                    let mut two = [std::io::IoSlice::new(&[]); 2];
                    let iov;
                    let some = match fill_slices(runs(), written, &mut two) {
                        Some(k) => two.get(..k).unwrap_or_default(),
                        None => {
                            let mut all = [std::io::IoSlice::new(&[]); SLICES];
                            let k = fill_slices(runs(), written, &mut all).unwrap_or(SLICES);
                            iov = all;
                            iov.get(..k).unwrap_or_default()
                        }
                    };
                    match some {
                        [one] => Pin::new(&mut *io).poll_write(cx, one),
                        some => Pin::new(&mut *io).poll_write_vectored(cx, some),
                    }
                })
                .await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                written += n;
            }
            io.flush().await
        });
        // Tried once first: a socket with room takes it all at once, and then no timer is
        // created (module doc). Only a peer that stops reading gets a deadline.
        let written = match poll_once(write.as_mut()).await {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => tokio::time::timeout(limit, write).await,
        };
        match written {
            Err(_) => Err(SessionError::Timeout { phase, after: limit }),
            Ok(Ok(())) => {
                self.bytes_out += len as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(self.io_error(phase, e)),
        }
    }

    /// Best-effort shutdown of the write side.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }

    /// The socket itself (STLS upgrades it in place; see `crate::edge::tls::ClientStream`).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Gives back the socket; fails if unread bytes are buffered (they would be lost).
    pub fn into_inner(self) -> Result<S, S> {
        if self.buf.is_empty() {
            Ok(self.io)
        } else {
            Err(self.io)
        }
    }
}

/// Awaits `f` until `deadline` on the connection's `timer`; `None` when the deadline came
/// first. Each poll polls `f` first and the timer only when `f` is not ready, so what the
/// socket already holds needs no deadline (module doc), and a read that must wait is polled
/// once per wake-up, not twice (issue 16: a `poll_once` followed by a `select!` polled the
/// socket again at once, two readiness checks more per one-at-a-time RETR).
async fn by_deadline<F: Future>(
    mut f: Pin<&mut F>,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Instant,
) -> Option<F::Output> {
    loop {
        let ready = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            until(timer, deadline).poll(cx).map(|()| None)
        })
        .await;
        match ready {
            Some(r) => return Some(r),
            None if Instant::now() >= deadline => return None,
            // The timer was left at an earlier deadline (see `until`): that is not the end
            // of this wait, only the time to move it (done by the next poll's `until`).
            None => {}
        }
    }
}

/// Fills `iov` with the runs after the first `skip` octets (empty runs left out);
/// `Some(count)` when all fitted, `None` when `iov` is full and more remain.
fn fill_slices<'a>(
    runs: impl Iterator<Item = &'a [u8]>,
    mut skip: usize,
    iov: &mut [std::io::IoSlice<'a>],
) -> Option<usize> {
    let mut k = 0;
    for run in runs {
        if skip >= run.len() {
            skip -= run.len();
            continue;
        }
        let slot = iov.get_mut(k)?;
        *slot = std::io::IoSlice::new(run.get(skip..).unwrap_or_default());
        skip = 0;
        k += 1;
    }
    Some(k)
}

/// Polls `f` once (with the task's waker): `Pending` leaves it to be awaited further.
fn poll_once<F: Future>(mut f: Pin<&mut F>) -> impl Future<Output = Poll<F::Output>> + '_ {
    std::future::poll_fn(move |cx| Poll::Ready(f.as_mut().poll(cx)))
}

/// The connection's timer, to expire no later than `deadline` (see the module doc): created
/// on the first wait, then moved only when it must be. A timer still armed for an earlier
/// deadline (the last wait's: one command after another moves the deadline later each
/// time) is left as it is, and [`by_deadline`] moves it when it fires before `deadline`:
/// one `Sleep::reset` and clock read per timeout period instead of per wait (issue 16:
/// ~1.5 % of a one-at-a-time RETR's instructions). An earlier deadline, or a timer that
/// fired, is reset at once (through the timer wheel's lock).
fn until(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, deadline: Instant) -> Pin<&mut tokio::time::Sleep> {
    match timer {
        Some(t) => {
            if t.deadline() > deadline || t.is_elapsed() {
                t.as_mut().reset(deadline);
            }
            t.as_mut()
        }
        None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))).as_mut(),
    }
}

/// The deadline of one multi-line reply: never silent for more than `base`, and on average
/// at least `min_rate` octets a second beyond a `base` allowance (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct BodyClock {
    /// Set at the first wait for the body: a body already buffered (the usual pipelined
    /// reply) costs no clock read (issue 16). Until then popsift was busy relaying what it
    /// had, so the limits run from the same moment to within that work.
    started: Option<Instant>,
    base: Duration,
    min_rate: u64,
    received: u64,
}

impl BodyClock {
    /// The clock for a reply, from `timeouts.upstream_reply` and `timeouts.upstream_min_rate`;
    /// it starts at the first wait (see [`BodyClock::started`]).
    pub fn start(t: &crate::config::Timeouts) -> BodyClock {
        BodyClock { started: None, base: t.upstream_reply, min_rate: t.upstream_min_rate.max(1), received: 0 }
    }

    /// When the reply must be complete, given the octets received so far, for a clock that
    /// started at `started`.
    fn deadline(&self, started: Instant) -> Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        started + self.base + earned.min(Duration::from_secs(365 * 86400))
    }
}

// Generic over the client stream (plain TCP, or TLS from the edge): both methods read
// through `AsyncRead` only.
impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Resolves when the client has gone (EOF, reset) while popsift waits on the upstream,
    /// so a session whose client left is torn down at once instead of waiting for a slow
    /// server. Meanwhile whatever the client sends is read into the buffer, up to `cap`
    /// octets (beyond that popsift stops reading: backpressure). An EOF behind buffered
    /// commands, or when `keep_on_eof` (the client already sent QUIT, RFC 1939 §6), is not
    /// "gone": those commands are still answered, and the EOF is met again when read.
    /// Cancel-safe: `read_buf` either fills the buffer or takes nothing.
    pub async fn gone(&mut self, cap: usize, keep_on_eof: bool) -> SessionError {
        loop {
            if self.eof_seen || self.buf.len() >= cap {
                std::future::pending::<()>().await;
            }
            self.make_room();
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if self.buf.is_empty() && !keep_on_eof => return SessionError::ClientClosed,
                Ok(0) => self.eof_seen = true,
                Ok(n) => self.note_read(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return SessionError::ClientIo(e),
            }
        }
    }

    /// Reads what the socket already holds, without waiting. Returns whether bytes arrived
    /// (an EOF is `false`: it is met again by the next waiting read).
    pub fn try_fill(&mut self) -> Result<bool, SessionError> {
        match self.fill_if_ready(Phase::ClientIdle) {
            Ok(more) => Ok(more),
            Err(SessionError::ClientClosed) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads a whole multi-line body (after its `+OK` line) into memory, unstuffed and without
    /// the terminator. For small replies only (CAPA, LIST, UIDL): `cap` bounds it.
    pub async fn read_multiline(
        &mut self,
        cap: usize,
        t: &crate::config::Timeouts,
        phase: Phase,
    ) -> Result<Vec<u8>, SessionError> {
        let mut clock = BodyClock::start(t);
        let mut scanner = crate::pop3::BodyScanner::new();
        let mut raw = Vec::new();
        loop {
            match self.relay_buffered(&mut scanner, |body| raw.extend_from_slice(body)) {
                Some(true) => {
                    raw.truncate(raw.len().saturating_sub(scanner.terminator_len()));
                    return Ok(crate::pop3::unstuff(&raw));
                }
                Some(false) if raw.len() > cap => {
                    return Err(SessionError::UpstreamProtocol {
                        phase,
                        detail: format!("multi-line reply larger than {cap} octets"),
                    });
                }
                _ => {}
            }
            self.fill_body(&mut clock, phase).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Deadlines under paused time: tokio advances the clock whenever every task waits, so
    //! these run in microseconds while checking minutes of protocol time.
    use super::*;
    use crate::config::Timeouts;
    use tokio::io::DuplexStream;
    use tokio::time::sleep;

    /// A peer that takes 1 to 7 octets per write, with or without vectored writes, and
    /// never sends anything.
    struct Trickle {
        got: Vec<u8>,
        writes: usize,
        vectored: bool,
    }

    impl Trickle {
        fn accept(&mut self, bufs: &[std::io::IoSlice<'_>]) -> usize {
            self.writes += 1;
            let room = 1 + self.writes * 5 % 7;
            let before = self.got.len();
            for b in bufs {
                let n = (room - (self.got.len() - before)).min(b.len());
                self.got.extend_from_slice(&b[..n]);
            }
            self.got.len() - before
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(self.accept(&[std::io::IoSlice::new(buf)])))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            match self.vectored {
                true => Poll::Ready(Ok(self.accept(bufs))),
                false => {
                    let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
                    self.poll_write(cx, first)
                }
            }
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A full output queue (copied runs around every part the queue takes, then a tail)
    /// reaches a peer that takes a few octets per write whole and in order, vectored or not.
    #[tokio::test]
    async fn an_outbox_is_written_whole_and_in_order_through_short_writes() {
        use crate::net::outbox::{MAX_PARTS, SHARE_FROM};
        for vectored in [false, true] {
            let mut c = Conn::new(Trickle { got: Vec::new(), writes: 0, vectored }, Side::Client);
            let mut out = Outbox::new();
            let mut expected = Vec::new();
            for i in 0..MAX_PARTS {
                let status = format!("+OK {i}\r\n");
                out.extend_from_slice(status.as_bytes());
                expected.extend_from_slice(status.as_bytes());
                let part: Vec<u8> = (0..SHARE_FROM + i).map(|k| (k * 7 + i) as u8).collect();
                assert!(out.would_share(part.len()));
                out.push_shared(bytes::Bytes::from(part.clone()));
                expected.extend_from_slice(&part);
            }
            out.extend_from_slice(b"+OK last\r\n");
            expected.extend_from_slice(b"+OK last\r\n");
            let tail = b"the last body, from the read buffer\r\n.\r\n";
            expected.extend_from_slice(tail);
            c.write_outbox(&out, tail, Duration::from_secs(5), Phase::ClientWrite).await.unwrap();
            assert_eq!(c.get_ref().got.len(), expected.len(), "vectored: {vectored}");
            assert!(c.get_ref().got == expected, "octets out of order (vectored: {vectored})");
            assert!(c.get_ref().writes > expected.len() / 7, "the peer took short writes");
        }
    }

    fn pair(side: Side) -> (Conn<DuplexStream>, DuplexStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (Conn::new(a, side), b)
    }

    /// Writes `data` in pieces of `chunk` octets, `every` apart (the first after `first`).
    fn dribble(mut peer: DuplexStream, data: Vec<u8>, chunk: usize, first: Duration, every: Duration) {
        tokio::spawn(async move {
            sleep(first).await;
            for piece in data.chunks(chunk) {
                if peer.write_all(piece).await.is_err() {
                    return;
                }
                sleep(every).await;
            }
            // Keep the stream open: an EOF would end the read differently.
            sleep(Duration::from_secs(1 << 30)).await;
            drop(peer);
        });
    }

    #[tokio::test(start_paused = true)]
    async fn status_line_dribbled_one_octet_a_second_is_cut_at_its_deadline() {
        let (mut conn, peer) = pair(Side::Upstream);
        dribble(
            peer,
            b"+OK a greeting that takes forty seconds to arrive\r\n".to_vec(),
            1,
            Duration::ZERO,
            Duration::from_secs(1),
        );
        let started = Instant::now();
        let e = conn.read_line(512, Duration::from_secs(10), Phase::Greeting).await.unwrap_err();
        assert!(matches!(e, SessionError::Timeout { phase: Phase::Greeting, .. }), "{e}");
        assert_eq!(started.elapsed().as_secs(), 10);
        assert!(e.to_string().contains("greeting timed out"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn status_line_within_its_deadline_is_read() {
        let (mut conn, peer) = pair(Side::Upstream);
        dribble(peer, b"+OK ready\r\n".to_vec(), 1, Duration::ZERO, Duration::from_millis(500));
        let line = conn.read_line(512, Duration::from_secs(10), Phase::Greeting).await.unwrap();
        assert_eq!(&line[..], b"+OK ready");
    }

    #[tokio::test(start_paused = true)]
    async fn client_waits_idle_for_the_first_octet_then_the_line_deadline() {
        let (mut conn, peer) = pair(Side::Client);
        // Silent for 9 minutes (under client_idle), then one octet a second for 30 octets.
        dribble(
            peer,
            b"USER someone-rather-slow-xxx\r\n".to_vec(),
            1,
            Duration::from_secs(540),
            Duration::from_secs(1),
        );
        let started = Instant::now();
        let e = conn.read_command(255, Duration::from_secs(600), Duration::from_secs(3)).await.unwrap_err();
        assert!(matches!(e, SessionError::Timeout { phase: Phase::ClientLine, .. }), "{e}");
        let waited = started.elapsed().as_secs();
        assert!((543..=545).contains(&waited), "cut after {waited}s");
    }

    #[tokio::test(start_paused = true)]
    async fn client_silent_past_idle_is_an_idle_timeout() {
        let (mut conn, _peer) = pair(Side::Client);
        let e = conn.read_command(255, Duration::from_secs(600), Duration::from_secs(3)).await.unwrap_err();
        assert!(matches!(e, SessionError::Timeout { phase: Phase::ClientIdle, .. }), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn client_line_in_one_write_after_a_long_idle_is_read() {
        let (mut conn, peer) = pair(Side::Client);
        dribble(peer, b"STAT\r\nLIST\r\n".to_vec(), 6, Duration::from_secs(599), Duration::from_secs(100));
        assert_eq!(
            &conn.read_command(255, Duration::from_secs(600), Duration::from_secs(3)).await.unwrap()[..],
            b"STAT"
        );
        // The second line arrives 100 s later, whole: the idle timeout applies, not the line one.
        assert_eq!(
            &conn.read_command(255, Duration::from_secs(600), Duration::from_secs(3)).await.unwrap()[..],
            b"LIST"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_client_releases_buffers_after_the_grace_and_still_reads_its_command() {
        let (mut conn, peer) = pair(Side::Client);
        dribble(peer, b"NOOP\r\n".to_vec(), 64, Duration::from_secs(30), Duration::from_secs(1));
        let mut idle_calls = 0;
        conn.fill_client_or_idle(Duration::from_secs(600), Duration::from_secs(3), || idle_calls += 1).await.unwrap();
        assert_eq!(idle_calls, 1);
        assert_eq!(&conn.take_line(255).unwrap().unwrap()[..], b"NOOP");
        // Released during the wait, then a small buffer for the command: never a large one.
        assert_eq!(conn.room, Room::Small);
        assert!(conn.buf.capacity() <= SMALL_READ, "capacity {}", conn.buf.capacity());
        conn.release_if_empty();
        assert_eq!((conn.room, conn.buf.capacity()), (Room::Released, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn command_longer_than_the_first_read_after_idle_is_read_whole() {
        let (mut conn, peer) = pair(Side::Client);
        let user = format!("USER {}", "x".repeat(3 * FIRST_READ));
        let sent = format!("{user}\r\nSTAT\r\n").into_bytes();
        dribble(peer, sent.clone(), sent.len(), Duration::from_secs(30), Duration::from_secs(1));
        conn.fill_client_or_idle(Duration::from_secs(600), Duration::from_secs(3), || {}).await.unwrap();
        // The first read took what fits on the stack; the rest follows without waiting.
        assert_eq!(conn.buffered().len(), FIRST_READ);
        let line = conn.read_command(255, Duration::from_secs(600), Duration::from_secs(3)).await.unwrap();
        assert_eq!(&line[..], user.as_bytes());
        assert_eq!(
            &conn.read_command(255, Duration::from_secs(600), Duration::from_secs(3)).await.unwrap()[..],
            b"STAT"
        );
        assert_eq!(conn.bytes_in, sent.len() as u64);
    }

    #[tokio::test(start_paused = true)]
    async fn client_answering_within_the_grace_keeps_its_buffers() {
        let (mut conn, peer) = pair(Side::Client);
        dribble(peer, b"STAT\r\n".to_vec(), 64, Duration::from_millis(10), Duration::from_secs(1));
        let mut idle_calls = 0;
        conn.fill_client_or_idle(Duration::from_secs(600), Duration::from_secs(3), || idle_calls += 1).await.unwrap();
        assert_eq!(idle_calls, 0);
        assert_eq!(&conn.take_line(255).unwrap().unwrap()[..], b"STAT");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_is_unchanged_by_the_grace() {
        let (mut conn, _peer) = pair(Side::Client);
        let started = Instant::now();
        let e = conn.fill_client_or_idle(Duration::from_secs(600), Duration::from_secs(3), || {}).await.unwrap_err();
        assert!(
            matches!(e, SessionError::Timeout { phase: Phase::ClientIdle, after } if after.as_secs() == 600),
            "{e}"
        );
        assert_eq!(started.elapsed().as_secs(), 600);
    }

    #[tokio::test]
    async fn commands_one_at_a_time_stay_in_a_small_buffer_and_a_body_gets_a_large_one() {
        let (mut conn, mut peer) = pair(Side::Upstream);
        for i in 0..50 {
            peer.write_all(format!("+OK {i}\r\n").as_bytes()).await.unwrap();
            let line = conn.read_line(512, Duration::from_secs(10), Phase::Relay).await.unwrap();
            assert_eq!(line, format!("+OK {i}").as_bytes());
            assert_eq!(conn.room, Room::Small, "after line {i}");
        }
        let body = vec![b'x'; 200_000];
        peer.write_all(&body).await.unwrap();
        let mut got = 0;
        while got < body.len() {
            conn.fill(Duration::from_secs(10), Phase::Relay).await.unwrap();
            got += conn.buffered().len();
            conn.consume(conn.buffered().len());
        }
        assert_eq!(conn.room, Room::Large);
    }

    /// Issue 16: a pipelined stream refills a large buffer over and over. Each refill reuses
    /// the one allocation (the unread tail moved to its front) once the parts split off it
    /// (queued output) are gone, and says so beforehand while they live.
    #[tokio::test]
    async fn a_large_buffer_is_refilled_in_its_own_allocation() {
        let (mut conn, mut peer) = pair(Side::Upstream);
        let stream: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&stream).await.unwrap();
        while conn.room != Room::Large {
            conn.fill(Duration::from_secs(10), Phase::Relay).await.unwrap();
        }
        let mut got = conn.buffered().to_vec();
        conn.consume(got.len());
        conn.make_room();
        let (base, capacity) = (conn.buf.as_ptr(), conn.buf.capacity());
        let mut parts = Vec::new();
        let mut reclaimed = 0;
        while (conn.bytes_in as usize) < stream.len() {
            if conn.read_needs_allocation() {
                // What the driver does: write the queued parts first.
                got.extend(parts.drain(..).flat_map(|p: bytes::Bytes| p.to_vec()));
                assert!(!conn.read_needs_allocation(), "with no part alive the buffer is reused");
                assert_eq!(conn.buf.as_ptr(), base, "the unread tail moved to the front");
                assert_eq!(conn.buf.capacity(), capacity);
                reclaimed += 1;
            }
            conn.fill(Duration::from_secs(10), Phase::Relay).await.unwrap();
            // Keep a tail unread, as the part of a reply the read cut would be.
            let n = conn.buffered().len().saturating_sub(5_000);
            parts.push(conn.split_front(n));
        }
        got.extend(parts.drain(..).flat_map(|p| p.to_vec()));
        got.extend_from_slice(conn.buffered());
        assert!(reclaimed > 5, "refilled {reclaimed} times");
        assert_eq!(got.len(), stream.len());
        assert!(got == stream, "the stream arrived in order");
    }

    /// Issue 16's relay step: a body gathered in the read buffer (`body_part` with the octets
    /// already held) and written behind queued output by `write_outbox` arrives whole and in
    /// order, through a pipe far smaller than either part (every write is partial).
    #[tokio::test]
    async fn body_held_in_the_read_buffer_is_written_whole_behind_queued_output() {
        let (mut up, mut server) = pair(Side::Upstream);
        let (a, mut client_end) = tokio::io::duplex(1000);
        let mut client = Conn::new(a, Side::Client);
        let mut body: Vec<u8> = (0..30_000u32).flat_map(|i| format!("line {i}\r\n").into_bytes()).collect();
        body.extend_from_slice(b".\r\n+OK next\r\n");
        let sent = body.clone();
        tokio::spawn(async move {
            for piece in sent.chunks(70_001) {
                server.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            sleep(Duration::from_secs(3600)).await;
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client_end.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut scanner = crate::pop3::BodyScanner::new();
        let mut held = 0;
        let mut queued = Outbox::new();
        queued.extend_from_slice(b"+OK 300000 octets\r\n");
        let end = loop {
            match up.body_part(held, &mut scanner) {
                Some((n, true)) => break n,
                Some((n, false)) => held = n,
                None => {}
            }
            if queued.len() + held >= 64 * 1024 {
                let part = up.buffered()[..held].to_vec();
                client.write_outbox(&queued, &part, Duration::from_secs(10), Phase::ClientWrite).await.unwrap();
                up.consume(held);
                held = 0;
                queued.clear();
            }
            up.fill(Duration::from_secs(10), Phase::Relay).await.unwrap();
        };
        queued.extend_from_slice(&up.buffered()[..end]);
        up.consume(end);
        client.write_outbox(&queued, &[], Duration::from_secs(10), Phase::ClientWrite).await.unwrap();
        assert_eq!(up.buffered(), b"+OK next\r\n", "the next reply stays buffered");
        drop(client);
        let got = reader.await.unwrap();
        let mut want = b"+OK 300000 octets\r\n".to_vec();
        want.extend_from_slice(&body[..body.len() - b"+OK next\r\n".len()]);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "relayed body differs");
    }

    fn timeouts(base: u64, rate: u64) -> Timeouts {
        Timeouts { upstream_reply: Duration::from_secs(base), upstream_min_rate: rate, ..Timeouts::default() }
    }

    #[tokio::test(start_paused = true)]
    async fn multiline_reply_dribbled_is_cut_after_its_allowance() {
        let (mut conn, peer) = pair(Side::Upstream);
        // One octet every 5 s: each read is far within the 120 s silence limit.
        dribble(peer, vec![b'x'; 100_000], 1, Duration::ZERO, Duration::from_secs(5));
        let started = Instant::now();
        let e = conn.read_multiline(1 << 20, &timeouts(120, 1024), Phase::Relay).await.unwrap_err();
        assert!(matches!(e, SessionError::TooSlow { phase: Phase::Relay, .. }), "{e}");
        let waited = started.elapsed().as_secs();
        assert!((120..=130).contains(&waited), "cut after {waited}s");
        assert_eq!(e.upstream_kind(), Some("timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn large_reply_on_a_slow_link_is_delivered() {
        let (mut conn, peer) = pair(Side::Upstream);
        // 4 MiB at 2 KiB/s (64 KiB every 32 s): about 35 minutes, far beyond any fixed cap.
        let mut body = b"line\r\n".repeat(4 * 1024 * 1024 / 6);
        body.extend_from_slice(b".\r\n");
        let n = body.len();
        dribble(peer, body, 64 * 1024, Duration::ZERO, Duration::from_secs(32));
        let started = Instant::now();
        let got = conn.read_multiline(8 << 20, &timeouts(120, 1024), Phase::Relay).await.unwrap();
        assert_eq!(got.len(), n - 3);
        assert!(started.elapsed() > Duration::from_secs(1800));
    }

    #[tokio::test(start_paused = true)]
    async fn multiline_reply_silent_longer_than_the_reply_timeout_is_cut() {
        let (mut conn, peer) = pair(Side::Upstream);
        // A fast first megabyte earns a long allowance, but silence is still capped.
        let data = vec![b'y'; 1 << 20];
        dribble(peer, data, 1 << 20, Duration::ZERO, Duration::from_secs(1 << 20));
        let e = conn.read_multiline(8 << 20, &timeouts(120, 1024), Phase::Relay).await.unwrap_err();
        assert!(matches!(e, SessionError::Timeout { phase: Phase::Relay, .. }), "{e}");
    }
}
