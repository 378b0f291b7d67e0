//! The login scan: LIST, UIDL and `TOP n 0` for every message, before the client sees `+OK`.
//!
//! When the upstream advertises PIPELINING (RFC 2449 §6.6) the TOP commands go out in
//! windows: at most `window` commands in flight, topped up when half have been answered, so
//! neither side's socket buffers can fill up and deadlock. Otherwise one at a time.
//! A `TOP n 0` reply is cut to its header block (capped); the rest, if a server sends the
//! whole message, is read and discarded.
//!
//! With the header cache ([`crate::store::header_cache`]) and a server that has UIDL, the
//! cache is asked first for every (UIDL, LIST size) and `TOP` goes out only for the misses,
//! in the same windows. The new header blocks are stored, and the mailbox's entries whose
//! UIDL the server no longer lists are evicted, in the background after the scan (the
//! client's `+OK` does not wait for the disk). Each lookup is counted in
//! `popsift_header_cache_lookups_total{result="hit"|"miss"}`; a message answered by the
//! in-memory verdict memo (no cache read at all) counts as `result="memo"`.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::{ScanSettings, Timeouts};
use crate::net::conn::Conn;
use crate::net::error::{Phase, SessionError};
use crate::net::stream::Stream;
use crate::pop3::listing::{parse_list, parse_uidl};
use crate::pop3::multiline::{HeaderBlock, HeaderCollector};
use crate::pop3::status::{Status, StatusKind, MAX_STATUS_LINE};
use crate::session::scan::{Evaluated, ScanItem};
use crate::store::header_cache::{Fresh, HeaderCache, Scope, Wanted};
use crate::store::verdict_memo::MailboxMemo;

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
    /// Header blocks taken from the cache, and `TOP` commands sent.
    pub cache_hits: usize,
    pub tops_sent: usize,
}

/// The header cache and whose mailbox this is.
pub struct CacheUse<'a> {
    pub cache: &'a Arc<HeaderCache>,
    pub scope: Scope,
    /// What this mailbox's messages evaluated to at an earlier login under the rule set this
    /// session uses (empty after a reload).
    pub memo: Arc<MailboxMemo>,
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
    cache: Option<CacheUse<'_>>,
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

    let mut headers: Vec<Option<HeaderBlock>> = vec![None; list.len()];
    let mut memos: Vec<Option<Arc<Evaluated>>> = vec![None; list.len()];
    // Only with UIDL: without it there is no key that survives between sessions.
    let cache = cache.filter(|_| uidl_supported);
    let mut cache_hits = 0usize;
    if let Some(c) = &cache {
        // Messages evaluated at an earlier login under the same rules need nothing at all.
        for (i, (n, size)) in list.iter().enumerate() {
            if let Some(u) = uidls.get(n) {
                memos[i] = c.memo.get(&(u.clone(), *size)).cloned();
            }
        }
        let keyed: Vec<usize> =
            (0..list.len()).filter(|&i| memos[i].is_none() && uidls.contains_key(&list[i].0)).collect();
        let wanted = keyed.iter().map(|&i| Wanted { uidl: uidls[&list[i].0].clone(), size: list[i].1 }).collect();
        let started = std::time::Instant::now();
        let found = c.cache.lookup(c.scope.clone(), wanted, settings.header_limit).await;
        tracing::debug!(lookup_ms = started.elapsed().as_millis() as u64, "header cache lookup");
        for (&i, h) in keyed.iter().zip(found) {
            if h.is_some() {
                cache_hits += 1;
            }
            headers[i] = h;
        }
        // Memo hits are counted apart from header cache hits: a memo hit never reads the
        // cache file, so counting it as a cache hit would hide a cache that always misses.
        for (h, m) in headers.iter().zip(&memos) {
            if m.is_some() {
                crate::metrics::verdict_memo_hit();
                cache_hits += 1;
            } else {
                crate::metrics::header_cache_lookup(h.is_some());
            }
        }
    }
    // The messages to ask the server about, in server order.
    let todo: Vec<usize> = (0..list.len()).filter(|&i| headers[i].is_none() && memos[i].is_none()).collect();

    let window = if pipelining { settings.window.max(1) } else { 1 };
    let mut sent = 0usize;
    let mut got = 0usize;
    let mut top_supported = true;
    let mut successes = 0usize;
    let mut top_failures = 0usize;
    let mut cmd = Vec::with_capacity(window * 16);
    while got < todo.len() {
        let in_flight = sent - got;
        if top_supported && sent < todo.len() && in_flight <= window / 2 {
            cmd.clear();
            while sent < todo.len() && sent - got < window {
                cmd.extend_from_slice(format!("TOP {} 0\r\n", list[todo[sent]].0).as_bytes());
                sent += 1;
            }
            conn.write_all(&cmd, t.upstream_reply, Phase::Scan).await?;
        }
        if got == sent {
            // TOP refused: stop asking; the remaining messages go unfiltered.
            break;
        }
        let i = todo[got];
        got += 1;
        match status(conn, t).await? {
            StatusKind::Ok => {
                headers[i] = Some(read_headers(conn, settings.header_limit, t).await?);
                successes += 1;
            }
            _ => {
                // Cached headers came from TOP: then TOP works and this one message failed.
                if successes == 0 && cache_hits == 0 {
                    top_supported = false;
                } else {
                    top_failures += 1;
                }
            }
        }
    }
    if let Some(c) = cache {
        let fresh: Vec<Fresh> = todo
            .iter()
            .filter_map(|&i| {
                let h = headers[i].clone()?;
                Some(Fresh { uidl: uidls.get(&list[i].0)?.clone(), size: list[i].1, headers: h })
            })
            .collect();
        let present: HashSet<Arc<str>> = uidls.values().cloned().collect();
        c.cache.update_in_background(c.scope, fresh, present).await;
    }
    let items = list
        .into_iter()
        .zip(headers)
        .zip(memos)
        .map(|(((n, size), h), memo)| ScanItem { upstream: n, size, uidl: uidls.get(&n).cloned(), headers: h, memo })
        .collect();
    Ok(ScanOutcome { items, top_supported, uidl_supported, top_failures, cache_hits, tops_sent: sent })
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
