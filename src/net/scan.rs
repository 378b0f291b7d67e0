//! The login scan: LIST, UIDL and `TOP n 0` for every message, before the client sees `+OK`.
//!
//! When the upstream advertises PIPELINING (RFC 2449 §6.6) the TOP commands go out in
//! windows: at most `window` commands in flight, topped up when half have been answered, so
//! neither side's socket buffers can fill up and deadlock. Otherwise one at a time.
//! A `TOP n 0` reply is cut to its header block (capped); the rest, if a server sends the
//! whole message, is read and discarded.
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ScanSettings, Timeouts};
use crate::net::conn::Conn;
use crate::net::error::{Phase, SessionError};
use crate::net::stream::Stream;
use crate::pop3::listing::{parse_list, parse_uidl};
use crate::pop3::multiline::{HeaderBlock, HeaderCollector};
use crate::pop3::status::{Status, StatusKind, MAX_STATUS_LINE};
use crate::session::scan::ScanItem;

/// Cap on LIST and UIDL replies (a 100,000-message mailbox needs about 4 MiB of UIDL).
const MAX_LISTING: usize = 64 * 1024 * 1024;

#[derive(Debug)]
pub struct ScanOutcome {
    pub items: Vec<ScanItem>,
    /// False when the server refused TOP: the mailbox is shown unfiltered.
    pub top_supported: bool,
    pub uidl_supported: bool,
    /// Messages whose TOP failed although TOP works for others.
    pub top_failures: usize,
}

fn protocol(detail: String) -> SessionError {
    SessionError::UpstreamProtocol { phase: Phase::Scan, detail }
}

async fn status(conn: &mut Conn<Stream>, t: &Timeouts) -> Result<StatusKind, SessionError> {
    let line = conn.read_line(MAX_STATUS_LINE, t.upstream_reply, Phase::Scan).await?;
    match Status::parse(&line) {
        Some(s) if s.kind != StatusKind::Continue => Ok(s.kind),
        _ => Err(protocol(format!("unexpected reply {:?}", String::from_utf8_lossy(&line)))),
    }
}

pub async fn scan(
    conn: &mut Conn<Stream>,
    pipelining: bool,
    settings: &ScanSettings,
    t: &Timeouts,
) -> Result<ScanOutcome, SessionError> {
    if pipelining {
        conn.write_all(b"LIST\r\nUIDL\r\n", t.upstream_reply, Phase::Scan).await?;
    } else {
        conn.write_all(b"LIST\r\n", t.upstream_reply, Phase::Scan).await?;
    }
    if status(conn, t).await? != StatusKind::Ok {
        return Err(protocol("LIST refused".into()));
    }
    let list_body = conn.read_multiline(MAX_LISTING, t.upstream_reply, Phase::Scan).await?;
    let list = parse_list(&list_body).map_err(|e| protocol(format!("LIST: {e}")))?;
    if !pipelining {
        conn.write_all(b"UIDL\r\n", t.upstream_reply, Phase::Scan).await?;
    }
    let mut uidls: HashMap<u32, Arc<str>> = HashMap::new();
    let uidl_supported = match status(conn, t).await? {
        StatusKind::Ok => {
            let body = conn.read_multiline(MAX_LISTING, t.upstream_reply, Phase::Scan).await?;
            let pairs = parse_uidl(&body).map_err(|e| protocol(format!("UIDL: {e}")))?;
            uidls = pairs.into_iter().map(|(n, u)| (n, Arc::from(u))).collect();
            true
        }
        _ => false,
    };

    let window = if pipelining { settings.window.max(1) } else { 1 };
    let mut headers: Vec<Option<HeaderBlock>> = Vec::with_capacity(list.len());
    let mut sent = 0usize;
    let mut top_supported = true;
    let mut successes = 0usize;
    let mut top_failures = 0usize;
    let mut cmd = Vec::with_capacity(window * 16);
    while headers.len() < list.len() {
        let in_flight = sent - headers.len();
        if top_supported && sent < list.len() && in_flight <= window / 2 {
            cmd.clear();
            while sent < list.len() && sent - headers.len() < window {
                cmd.extend_from_slice(format!("TOP {} 0\r\n", list[sent].0).as_bytes());
                sent += 1;
            }
            conn.write_all(&cmd, t.upstream_reply, Phase::Scan).await?;
        }
        if headers.len() == sent {
            // TOP refused: stop asking; the remaining messages go unfiltered.
            headers.resize(list.len(), None);
            break;
        }
        match status(conn, t).await? {
            StatusKind::Ok => {
                headers.push(Some(read_headers(conn, settings.header_limit, t).await?));
                successes += 1;
            }
            _ => {
                if successes == 0 {
                    top_supported = false;
                } else {
                    top_failures += 1;
                }
                headers.push(None);
            }
        }
    }
    let items = list
        .into_iter()
        .zip(headers)
        .map(|((n, size), h)| ScanItem { upstream: n, size, uidl: uidls.get(&n).cloned(), headers: h })
        .collect();
    Ok(ScanOutcome { items, top_supported, uidl_supported, top_failures })
}

async fn read_headers(conn: &mut Conn<Stream>, cap: usize, t: &Timeouts) -> Result<HeaderBlock, SessionError> {
    let mut collector = HeaderCollector::new(cap);
    loop {
        let buf = conn.buffered();
        if !buf.is_empty() {
            let done = collector.feed(buf);
            let n = done.unwrap_or(buf.len());
            conn.consume(n);
            if done.is_some() {
                return Ok(collector.finish());
            }
        }
        conn.fill(t.upstream_reply, Phase::Scan).await?;
    }
}
