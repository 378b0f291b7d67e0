//! A buffered connection: lines and raw chunks out of a socket, each read bounded by a named
//! timeout, each line by a size cap. Both sides of a session use it; `Side` decides whether
//! an EOF is the client's or the upstream's fault.
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::net::error::{Phase, SessionError};
use crate::pop3::line::{split_line, Line};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

/// Read buffer granularity.
const READ_CHUNK: usize = 64 * 1024;

pub struct Conn<S> {
    io: S,
    buf: BytesMut,
    side: Side,
    /// Octets read from / written to the socket, for metrics and the session summary.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S, side: Side) -> Conn<S> {
        Conn { io, buf: BytesMut::with_capacity(READ_CHUNK), side, bytes_in: 0, bytes_out: 0 }
    }

    /// Takes one complete line (without its line end) from what is already buffered.
    pub fn take_line(&mut self, max: usize) -> Result<Option<BytesMut>, SessionError> {
        match split_line(&self.buf, max) {
            Line::Complete { content, consumed } => {
                let mut line = self.buf.split_to(consumed);
                line.truncate(content);
                Ok(Some(line))
            }
            Line::Incomplete => Ok(None),
            Line::TooLong => Err(self.too_long(max)),
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

    /// Reads until a whole line is buffered, then takes it.
    pub async fn read_line(&mut self, max: usize, limit: Duration, phase: Phase) -> Result<BytesMut, SessionError> {
        loop {
            if let Some(line) = self.take_line(max)? {
                return Ok(line);
            }
            self.fill(limit, phase).await?;
        }
    }

    /// Reads at least one more byte into the buffer.
    pub async fn fill(&mut self, limit: Duration, phase: Phase) -> Result<(), SessionError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let read = tokio::time::timeout(limit, self.io.read_buf(&mut self.buf)).await;
        match read {
            Err(_) => Err(SessionError::Timeout { phase, after: limit }),
            Ok(Ok(0)) => Err(match self.side {
                Side::Client => SessionError::ClientClosed,
                Side::Upstream => SessionError::UpstreamClosed { phase },
            }),
            Ok(Ok(n)) => {
                self.bytes_in += n as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(match self.side {
                Side::Client => SessionError::ClientIo(e),
                Side::Upstream => SessionError::UpstreamIo { phase, source: e },
            }),
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
    }

    pub fn consume(&mut self, n: usize) {
        self.buf.advance(n);
    }

    /// Writes everything; a peer that stops reading for `limit` is an error.
    pub async fn write_all(&mut self, data: &[u8], limit: Duration, phase: Phase) -> Result<(), SessionError> {
        if data.is_empty() {
            return Ok(());
        }
        let write = async {
            self.io.write_all(data).await?;
            self.io.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Err(_) => Err(SessionError::Timeout { phase, after: limit }),
            Ok(Ok(())) => {
                self.bytes_out += data.len() as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(match self.side {
                Side::Client => SessionError::ClientIo(e),
                Side::Upstream => SessionError::UpstreamIo { phase, source: e },
            }),
        }
    }

    /// Best-effort shutdown of the write side.
    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
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

impl Conn<tokio::net::TcpStream> {
    /// Reads what the socket already holds, without waiting. Returns whether bytes arrived.
    pub fn try_fill(&mut self) -> Result<bool, SessionError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.io.try_read_buf(&mut self.buf) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.bytes_in += n as u64;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(SessionError::ClientIo(e)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Reads a whole multi-line body (after its `+OK` line) into memory, unstuffed and without
    /// the terminator. For small replies only (CAPA, LIST, UIDL): `cap` bounds it.
    pub async fn read_multiline(&mut self, cap: usize, limit: Duration, phase: Phase) -> Result<Vec<u8>, SessionError> {
        let mut scanner = crate::pop3::BodyScanner::new();
        let mut raw = Vec::new();
        loop {
            if !self.buf.is_empty() {
                let done = scanner.feed(&self.buf);
                let n = done.unwrap_or(self.buf.len());
                raw.extend_from_slice(self.buf.get(..n).unwrap_or_default());
                self.buf.advance(n);
                if done.is_some() {
                    raw.truncate(raw.len() - scanner.terminator_len());
                    return Ok(crate::pop3::unstuff(&raw));
                }
                if raw.len() > cap {
                    return Err(SessionError::UpstreamProtocol {
                        phase,
                        detail: format!("multi-line reply larger than {cap} octets"),
                    });
                }
            }
            self.fill(limit, phase).await?;
        }
    }
}
