//! The login scan: LIST, UIDL and `TOP n 0` for every message, before the client sees `+OK`.
//!
//! When the upstream advertises PIPELINING (RFC 2449 §6.6) the TOP commands go out in
//! windows: at most `window` commands in flight, topped up when half have been answered, so
//! neither side's socket buffers can fill up and deadlock. Otherwise one at a time. Those
//! decisions are [`crate::session::top_window`]'s (sans-IO); this module performs them.
//! A `TOP n 0` reply is cut to its header block (capped); the rest, if a server sends the
//! whole message, is read and discarded.
//!
//! # Memory: bounded in bytes, not in commands
//! A window of 1,024 commands says nothing about bytes: 2,000 header blocks of 200 KB held
//! until the end of the scan were 400 MB, twice over with the copies for the cache. So
//! - the window is also bounded by `scan.window_bytes` of header octets expected in flight
//!   (each `TOP` counted as its LIST size, capped at `header_limit` and at twice the largest
//!   block seen so far in this scan, so small-header mailboxes keep a full window);
//! - blocks read (from `TOP` or the cache) are evaluated in batches of about
//!   `window_bytes` on the blocking pool while the next replies arrive, the fresh ones are
//!   then handed to the header cache, and the blocks are dropped: what is kept per message
//!   is its [`Evaluated`] (verdict and, for tagged spam, the header rewrite).
//!
//! At most two batches are held at once (one being evaluated, one being read) plus the
//! cache's pending write, so a scan holds a few times `window_bytes` whatever the mailbox.
//! Except with a store where each call is a network round trip (Redis,
//! [`crate::store::header_cache::HeaderStore::one_call_per_login`]): there the mailbox is
//! looked up in one call and its fresh blocks written in one call, so round trips per login
//! stay constant, and the scan holds at most `cache.max_size` of fresh blocks for that write
//! ([`crate::store::header_cache::PendingWrite`]: older blocks are dropped, as the store
//! would skip them anyway; still evaluated `window_bytes` at a time).
//!
//! With the header cache ([`crate::store::header_cache`]) and a server that has UIDL, the
//! cache is asked first for every (UIDL, LIST size) and `TOP` goes out only for the misses,
//! in the same windows. The new header blocks are stored, and the mailbox's entries whose
//! UIDL the server no longer lists are evicted, in the background after the scan (the
//! client's `+OK` does not wait for the disk). Each lookup is counted in
//! `popsift_header_cache_lookups_total{result="hit"|"miss"}`; a message answered by the
//! in-memory verdict memo (no cache read at all) counts as `result="memo"`.
//!
//! A UIDL listing with duplicate, missing or malformed UIDLs (RFC 1939 §7; see
//! [`crate::session::verdicts::uidl_trust`]) switches the cache and the memo off for the session
//! (logged, counted in `popsift_uidl_untrusted_sessions_total`): (UIDL, size) is then not a
//! message's identity. Results taken from the cache or the memo are marked `unverified`;
//! before any of them condemns a message, [`refetch_headers`] reads its headers again.
//!
//! Indexes here are positions in the validated LIST (`0..list.len()`), never upstream
//! message numbers; the `net/` ban on indexing is waived for this file.
#![allow(clippy::indexing_slicing)]
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::config::{ScanSettings, Timeouts};
use crate::net::conn::{BodyClock, Conn};
use crate::net::driver::SessionContext;
use crate::net::error::{Phase, SessionError};
use crate::net::stream::Stream;
use crate::pop3::listing::{check_stat, parse_list, parse_uidl};
use crate::pop3::multiline::{HeaderBlock, HeaderCollector};
use crate::pop3::status::{Status, StatusKind, MAX_STATUS_LINE};
use crate::rules::RuleSet;
use crate::session::tag::TagSettings;
use crate::session::top_window::TopWindow;
pub use crate::session::verdicts::ScanOutcome;
use crate::session::verdicts::{build_entries, evaluate, recheck, to_recheck, uidl_trust, Evaluated, ScanItem};
use crate::session::view::Entry;
use crate::store::header_cache::{Fresh, HeaderCache, PendingWrite, Scope, Wanted};
use crate::store::verdict_memo::MailboxMemo;

/// Cap on LIST and UIDL replies (a 100,000-message mailbox needs about 4 MiB of UIDL).
const MAX_LISTING: usize = 64 * 1024 * 1024;
/// Cap on the CAPA reply read and dropped after a pipelined login.
const MAX_CAPA_REPLY: usize = 64 * 1024;

/// What the scan evaluates each header block with, batch by batch (see the module doc).
#[derive(Clone)]
pub struct Evaluator {
    pub rules: Arc<RuleSet>,
    /// The classifier model this session uses, if any (see [`crate::classify`]).
    pub model: Option<Arc<crate::classify::Model>>,
    pub tag: TagSettings,
}

/// Blocks of one batch with their results (message index, evaluation, the block itself for
/// the cache), and the seconds the evaluation took.
type Settled = (Vec<(usize, Arc<Evaluated>, HeaderBlock)>, f64);

/// Evaluates a batch of (message index, LIST size, header block) on the blocking pool.
fn evaluate_batch(batch: Vec<(usize, u64, HeaderBlock)>, eval: &Evaluator) -> JoinHandle<Settled> {
    let eval = eval.clone();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let out = batch
            .into_iter()
            .map(|(i, size, h)| (i, Arc::new(evaluate(&h, size, &eval.rules, eval.model.as_deref(), &eval.tag)), h))
            .collect();
        (out, started.elapsed().as_secs_f64())
    })
}

async fn settled(task: JoinHandle<Settled>) -> Settled {
    // A panic in the rules engine is a bug; surface it like one.
    task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
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

/// Reads the reply to STAT: `Some((count, size))` for `+OK nn mm` (RFC 1939 §5), `None`
/// when the server refused it (the check is then skipped); any other `+OK` text is an
/// invalid reply.
async fn stat_reply(conn: &mut Conn<Stream>, t: &Timeouts) -> Result<Option<(u64, u64)>, SessionError> {
    let line = conn.read_line(MAX_STATUS_LINE, t.upstream_reply, Phase::Scan).await?;
    let Some(s) = Status::parse(&line) else {
        return Err(protocol(format!("unexpected reply {:?}", String::from_utf8_lossy(&line))));
    };
    if s.kind != StatusKind::Ok {
        tracing::debug!(reply = %String::from_utf8_lossy(&line), "server refused STAT; not checked against LIST");
        return Ok(None);
    }
    let text = String::from_utf8_lossy(s.text);
    let mut words = text.split_ascii_whitespace();
    match (words.next().map(str::parse::<u64>), words.next().map(str::parse::<u64>)) {
        (Some(Ok(count)), Some(Ok(size))) => Ok(Some((count, size))),
        _ => Err(SessionError::invalid_reply(Phase::Scan, "stat", format!("{text:?} is not `count size`"))),
    }
}

/// How the scan's first requests go out.
#[derive(Debug, Clone, Copy)]
pub struct Requests {
    /// The upstream pipelines (and `scan.pipelining` allows it).
    pub pipelining: bool,
    /// STAT, LIST, CAPA and UIDL already went out behind PASS
    /// ([`crate::session::login_pipeline`]): only their replies are read.
    pub requested: bool,
}

pub async fn scan(
    conn: &mut Conn<Stream>,
    requests: Requests,
    settings: &ScanSettings,
    t: &Timeouts,
    cache: Option<CacheUse<'_>>,
    eval: &Evaluator,
) -> Result<ScanOutcome, SessionError> {
    let Requests { pipelining, requested } = requests;
    // STAT first: its count and size must agree with LIST (RFC 1939 §5), else the listing
    // is not the mailbox the server will act on, and nothing may be deleted by it.
    // Sent behind PASS already, or all three at once, or one at a time.
    let ahead = pipelining || requested;
    if !requested {
        let first: &[u8] = if pipelining { b"STAT\r\nLIST\r\nUIDL\r\n" } else { b"STAT\r\n" };
        conn.write_all(first, t.upstream_reply, Phase::Scan).await?;
    }
    let stat = stat_reply(conn, t).await?;
    if !ahead {
        conn.write_all(b"LIST\r\n", t.upstream_reply, Phase::Scan).await?;
    }
    if status(conn, t).await? != StatusKind::Ok {
        return Err(protocol("LIST refused".into()));
    }
    let list_body = conn.read_multiline(MAX_LISTING, t, Phase::Scan).await?;
    let list = parse_list(&list_body).map_err(|e| SessionError::invalid_reply(Phase::Scan, "list", e))?;
    if let Some((count, size)) = stat {
        check_stat(count, size, &list).map_err(|e| SessionError::invalid_reply(Phase::Scan, "stat", e))?;
    }
    if requested {
        // The CAPA sent behind PASS (only to keep invalid commands apart, see
        // `session::login_pipeline`): its reply is dropped.
        if status(conn, t).await? == StatusKind::Ok {
            conn.read_multiline(MAX_CAPA_REPLY, t, Phase::Scan).await?;
        }
    } else if !pipelining {
        conn.write_all(b"UIDL\r\n", t.upstream_reply, Phase::Scan).await?;
    }
    let mut uidls: HashMap<u32, Arc<str>> = HashMap::new();
    let mut uidl_trusted = false;
    let uidl_supported = match status(conn, t).await? {
        StatusKind::Ok => {
            let body = conn.read_multiline(MAX_LISTING, t, Phase::Scan).await?;
            let pairs = parse_uidl(&body).map_err(|e| protocol(format!("UIDL: {e}")))?;
            match uidl_trust(&list, &pairs) {
                Ok(()) => uidl_trusted = true,
                Err(problem) => {
                    crate::metrics::uidl_untrusted_session();
                    tracing::warn!(%problem, "the server's UIDLs are not unique and well-formed (RFC 1939 §7): header cache, verdict memo and quarantine shortcuts are off for this session");
                }
            }
            uidls = pairs.into_iter().map(|(n, u)| (n, Arc::from(u))).collect();
            true
        }
        _ => false,
    };

    // Header block read (cache or TOP), and what it evaluated to; the block itself is dropped.
    let mut have = vec![false; list.len()];
    let mut evaluated: Vec<Option<Arc<Evaluated>>> = vec![None; list.len()];
    let (mut evaluated_n, mut eval_seconds) = (0usize, 0f64);
    let budget = settings.window_bytes.max(1);
    let mut memos: Vec<Option<Arc<Evaluated>>> = vec![None; list.len()];
    // Only with trustworthy UIDLs: without them there is no key that survives between
    // sessions, and with duplicates (UIDL, size) may name two different messages.
    let cache = cache.filter(|_| uidl_trusted);
    let mut cache_hits = 0usize;
    if let Some(c) = &cache {
        // Messages evaluated at an earlier login under the same rules need nothing at all.
        for (i, (n, size)) in list.iter().enumerate() {
            if let Some(u) = uidls.get(n) {
                memos[i] = c.memo.get(u, *size);
            }
        }
        let keyed: Vec<usize> =
            (0..list.len()).filter(|&i| memos[i].is_none() && uidls.contains_key(&list[i].0)).collect();
        let started = std::time::Instant::now();
        // Looked up and evaluated in chunks of about `window_bytes` (by LIST size), so a
        // warm scan holds no more than a cold one. A store where each call is a round trip
        // (Redis) is asked once for the whole mailbox; its blocks are still evaluated in
        // chunks of `window_bytes` (see `HeaderStore::one_call_per_login`).
        let one_call = c.cache.one_call_per_login();
        let lookup_budget = if one_call { usize::MAX } else { budget };
        let chunks = |rest: &[usize], budget: usize| {
            let mut bytes = 0usize;
            let n = rest
                .iter()
                .take_while(|&&i| {
                    let fits = bytes == 0 || bytes < budget;
                    bytes += (list[i].1 as usize).min(settings.header_limit);
                    fits
                })
                .count();
            n.max(1)
        };
        let mut rest = &keyed[..];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunks(rest, lookup_budget));
            rest = tail;
            let wanted = chunk.iter().map(|&i| Wanted { uidl: uidls[&list[i].0].clone(), size: list[i].1 }).collect();
            let found = c.cache.lookup(c.scope.clone(), wanted, settings.header_limit).await;
            let mut found: Vec<_> = chunk.iter().zip(found).filter_map(|(&i, h)| Some((i, list[i].1, h?))).collect();
            cache_hits += found.len();
            // Evaluated `window_bytes` at a time, the blocks dropped batch by batch.
            found.reverse();
            while !found.is_empty() {
                let take = if one_call {
                    let mut bytes = 0usize;
                    found
                        .iter()
                        .rev()
                        .take_while(|(_, _, h)| {
                            let fits = bytes == 0 || bytes < budget;
                            bytes += h.bytes.len();
                            fits
                        })
                        .count()
                        .max(1)
                } else {
                    found.len()
                };
                let batch: Vec<_> = found.drain(found.len() - take..).rev().collect();
                let (done, secs) = settled(evaluate_batch(batch, eval)).await;
                eval_seconds += secs;
                evaluated_n += done.len();
                for (i, e, _) in done {
                    have[i] = true;
                    evaluated[i] = Some(e);
                }
            }
        }
        tracing::debug!(lookup_ms = started.elapsed().as_millis() as u64, "header cache lookup");
        // Memo hits are counted apart from header cache hits: a memo hit never reads the
        // cache file, so counting it as a cache hit would hide a cache that always misses.
        for (h, m) in have.iter().zip(&memos) {
            if m.is_some() {
                crate::metrics::verdict_memo_hit();
                cache_hits += 1;
            } else {
                crate::metrics::header_cache_lookup(*h);
            }
        }
    }
    // What the cache and the memo answered, before TOP fills in the rest.
    let unverified: Vec<bool> = have.iter().zip(&memos).map(|(h, m)| *h || m.is_some()).collect();
    // The messages to ask the server about, in server order.
    let todo: Vec<usize> = (0..list.len()).filter(|&i| !have[i] && memos[i].is_none()).collect();
    let present: HashSet<Arc<str>> = if cache.is_some() { uidls.values().cloned().collect() } else { HashSet::new() };

    // The windows and what the replies say about TOP are decided by `TopWindow` (sans-IO).
    let mut tops = TopWindow::new(
        todo.iter().map(|&i| list[i]).collect(),
        pipelining,
        settings.window,
        budget,
        settings.header_limit,
        cache_hits,
    );
    // Blocks read and not yet evaluated; the batch being evaluated; cache batches written.
    let (mut held, mut held_bytes) = (Vec::new(), 0usize);
    let mut evaluating: Option<JoinHandle<Settled>> = None;
    let mut cache_batches = 0usize;
    // Fresh blocks for a store written once per login (Redis: one write, not one per batch).
    // Bounded by the cache's size: older blocks are dropped (and evicted) as newer ones come.
    let mut one_write: Option<PendingWrite> =
        cache.as_ref().filter(|c| c.cache.one_call_per_login()).map(|c| PendingWrite::new(c.cache.max_write_bytes()));
    loop {
        if let Some(cmd) = tops.commands() {
            conn.write_all(&cmd, t.upstream_reply, Phase::Scan).await?;
        }
        // `None`: every message answered, or TOP refused (the rest goes unfiltered).
        let Some(k) = tops.next_due() else { break };
        let i = todo[k];
        match status(conn, t).await? {
            StatusKind::Ok => {
                let h = read_headers(conn, settings.header_limit, list[i].1, t).await?;
                tops.answered(h.bytes.len());
                have[i] = true;
                held_bytes += h.bytes.len();
                held.push((i, list[i].1, h));
                if held_bytes >= budget {
                    // Evaluate this batch while the next one is read; finish the previous.
                    let next = evaluate_batch(std::mem::take(&mut held), eval);
                    held_bytes = 0;
                    if let Some(prev) = evaluating.replace(next) {
                        let (done, secs) = settled(prev).await;
                        eval_seconds += secs;
                        cache_batches += keep(
                            done,
                            &mut evaluated,
                            &mut evaluated_n,
                            &cache,
                            &uidls,
                            &list,
                            &present,
                            &mut one_write,
                        )
                        .await;
                    }
                }
            }
            _ => tops.refused(),
        }
    }
    for task in [evaluating.take(), (!held.is_empty()).then(|| evaluate_batch(held, eval))].into_iter().flatten() {
        let (done, secs) = settled(task).await;
        eval_seconds += secs;
        cache_batches +=
            keep(done, &mut evaluated, &mut evaluated_n, &cache, &uidls, &list, &present, &mut one_write).await;
    }
    if let (Some(c), Some(pending)) = (&cache, one_write.take()) {
        // The login's one write (also evicts the mailbox's vanished messages).
        let (fresh, present) = pending.finish(present);
        c.cache.update_in_background(c.scope.clone(), fresh, present).await;
    } else if let (Some(c), 0) = (&cache, cache_batches) {
        // Nothing new to store, but the mailbox's vanished messages are still evicted.
        c.cache.update_in_background(c.scope.clone(), Vec::new(), present).await;
    }
    let items = list
        .into_iter()
        .zip(evaluated)
        .zip(memos)
        .map(|(((n, size), evaluated), memo)| ScanItem {
            upstream: n,
            size,
            uidl: uidls.get(&n).cloned(),
            memo,
            evaluated,
        })
        .collect();
    Ok(ScanOutcome {
        items,
        top_supported: tops.top_supported(),
        uidl_supported,
        uidl_trusted,
        unverified,
        top_failures: tops.failures(),
        cache_hits,
        tops_sent: tops.sent(),
        evaluated: evaluated_n,
        eval_seconds,
    })
}

/// Fetches `TOP n 0` again for messages whose cached or memoised verdict condemns them, one
/// at a time (they are few). `None` for a message whose TOP failed.
pub async fn refetch_headers(
    conn: &mut Conn<Stream>,
    msgs: &[(u32, u64)],
    settings: &ScanSettings,
    t: &Timeouts,
) -> Result<Vec<Option<HeaderBlock>>, SessionError> {
    let mut out = Vec::with_capacity(msgs.len());
    for &(n, size) in msgs {
        conn.write_all(format!("TOP {n} 0\r\n").as_bytes(), t.upstream_reply, Phase::Scan).await?;
        out.push(match status(conn, t).await? {
            StatusKind::Ok => Some(read_headers(conn, settings.header_limit, size, t).await?),
            _ => None,
        });
    }
    Ok(out)
}

/// Keeps the evaluations of a settled batch of fresh (`TOP`) blocks and hands the blocks to
/// the header cache, which writes them in the background; returns the number of cache
/// batches started (0 or 1). The blocks are dropped once written. With `one_write` (a
/// store written once per login) the blocks are kept there for that write instead.
#[allow(clippy::too_many_arguments)]
async fn keep(
    done: Vec<(usize, Arc<Evaluated>, HeaderBlock)>,
    evaluated: &mut [Option<Arc<Evaluated>>],
    count: &mut usize,
    cache: &Option<CacheUse<'_>>,
    uidls: &HashMap<u32, Arc<str>>,
    list: &[(u32, u64)],
    present: &HashSet<Arc<str>>,
    one_write: &mut Option<PendingWrite>,
) -> usize {
    *count += done.len();
    let mut fresh = Vec::with_capacity(if cache.is_some() { done.len() } else { 0 });
    for (i, e, h) in done {
        evaluated[i] = Some(e);
        if let (Some(_), Some(uidl)) = (cache, uidls.get(&list[i].0)) {
            fresh.push(Fresh { uidl: uidl.clone(), size: list[i].1, headers: h });
        }
    }
    match (cache, one_write) {
        (Some(_), Some(all)) => {
            all.append(fresh);
            0
        }
        (Some(c), None) => {
            c.cache.update_in_background(c.scope.clone(), fresh, present.clone()).await;
            1
        }
        (None, _) => 0,
    }
}

/// Reads one `TOP n 0` body. `announced` is the size LIST gave: a reply more than twice
/// that (dot-stuffing can add a third) plus 64 KiB is an error, so a server that never
/// ends the reply is not read for ever.
async fn read_headers(
    conn: &mut Conn<Stream>,
    cap: usize,
    announced: u64,
    t: &Timeouts,
) -> Result<HeaderBlock, SessionError> {
    let mut collector = HeaderCollector::new(cap);
    let mut clock = BodyClock::start(t);
    let limit = announced.saturating_mul(2).saturating_add(64 * 1024);
    let mut read = 0u64;
    loop {
        let mut n = 0;
        match conn.relay_buffered(&mut collector, |body| n = body.len()) {
            Some(true) => return Ok(collector.finish()),
            Some(false) => {
                read = read.saturating_add(n as u64);
                if read > limit {
                    let what = format!("TOP reply longer than {limit} octets for a message LIST sized {announced}");
                    return Err(SessionError::invalid_reply(Phase::Scan, "top", what));
                }
            }
            None => {}
        }
        conn.fill_body(&mut clock, Phase::Scan).await?;
    }
}

/// One login scan's context, held by the driver between the machine's `Need::Scan` and
/// `Need::Evaluate`: the rule set and model snapshot the session uses (a reload during the
/// session does not change its view, and the verdict memo is valid only for this very
/// set), whose mailbox it is, and the timings for the metrics.
pub struct LoginScan {
    rules: Arc<RuleSet>,
    model: Option<Arc<crate::classify::Model>>,
    model_generation: Option<u64>,
    scope: Option<Scope>,
    /// The session's upstream as `HOST:PORT` (for the log).
    upstream: String,
    started: std::time::Instant,
    /// Messages the rules looked at in this session, and the mean CPU seconds each took.
    evaluated_now: usize,
    eval_per_message: f64,
}

impl LoginScan {
    /// `upstream`: the server the session is connected to (the listener's, or the one a
    /// per-user login named); with the user it keys the rules and the cache.
    pub async fn start(
        ctx: &SessionContext,
        upstream: Option<&crate::config::Upstream>,
        login_user: Option<&str>,
    ) -> LoginScan {
        let (host, shown) = match upstream {
            Some(u) => (u.host.clone(), u.display()),
            None => (String::new(), ctx.listener.upstream_display()),
        };
        // The mailbox's own rule set when it has one (per-mailbox rules), else the global set.
        let rules = ctx.rules.for_mailbox(login_user, &host).await;
        let model = ctx.model.current();
        let model_generation = model.as_ref().map(|m| m.generation());
        let scope = match (&ctx.cache, login_user) {
            (Some(_), Some(user)) => Some(Scope::new(shown.clone(), user.to_string())),
            _ => None,
        };
        LoginScan {
            rules,
            model,
            model_generation,
            scope,
            upstream: shown,
            started: std::time::Instant::now(),
            evaluated_now: 0,
            eval_per_message: 0.0,
        }
    }

    /// LIST, UIDL and `TOP n 0` (or the header cache) for every message: [`scan`].
    pub async fn list(
        &self,
        up: &mut Conn<Stream>,
        ctx: &SessionContext,
        pipelining: bool,
        requested: bool,
    ) -> Result<ScanOutcome, SessionError> {
        let cfg = &ctx.config;
        let cache = match (&ctx.cache, &self.scope) {
            (Some(cache), Some(scope)) => {
                let memo = ctx.memo.known_with_model(scope, &self.rules, self.model_generation);
                Some(CacheUse { cache, scope: scope.clone(), memo })
            }
            _ => None,
        };
        let eval = Evaluator { rules: self.rules.clone(), model: self.model.clone(), tag: cfg.tag.clone() };
        let outcome = scan(up, Requests { pipelining, requested }, &cfg.scan, &cfg.timeouts, cache, &eval).await?;
        tracing::debug!(
            messages = outcome.items.len(),
            cache_hits = outcome.cache_hits,
            tops_sent = outcome.tops_sent,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "mailbox listed and headers read"
        );
        Ok(outcome)
    }

    /// The scanned messages as view entries: the rules run on the blocking pool, a cached or
    /// memoised verdict that condemns is re-checked against fresh headers, and the verdicts
    /// are remembered for the next login.
    pub async fn evaluate(
        &mut self,
        up: &mut Conn<Stream>,
        ctx: &SessionContext,
        outcome: ScanOutcome,
    ) -> Result<Vec<Entry>, SessionError> {
        let cfg = &ctx.config;
        if !outcome.top_supported && !outcome.items.is_empty() {
            warn_once_no_top(&self.upstream);
        }
        if outcome.top_failures > 0 {
            tracing::warn!(failures = outcome.top_failures, "TOP failed for some messages; they are shown unfiltered");
        }
        let uidl_trusted = outcome.uidl_trusted;
        let unverified = outcome.unverified;
        // Messages the rules looked at in this login (not memoised, headers read): all were
        // evaluated during the scan, as their header blocks arrived.
        self.evaluated_now = outcome.evaluated;
        self.eval_per_message = outcome.eval_seconds / self.evaluated_now.max(1) as f64;
        let mut entries = build_entries(outcome.items, cfg.dry_run);
        // A cached or memoised verdict never condemns on its own: fetch those headers again.
        let rechecks = to_recheck(&entries, &unverified, cfg.dry_run);
        if !rechecks.is_empty() {
            let msgs: Vec<(u32, u64)> =
                rechecks.iter().filter_map(|&i| entries.get(i)).map(|e| (e.upstream, e.upstream_size)).collect();
            let fresh = refetch_headers(up, &msgs, &cfg.scan, &cfg.timeouts).await?;
            recheck(&mut entries, &rechecks, fresh, &self.rules, self.model.as_deref(), cfg.dry_run, &cfg.tag);
            tracing::debug!(
                rechecked = rechecks.len(),
                "condemning verdicts from the cache re-checked against fresh headers"
            );
        }
        if let (Some(scope), true) = (self.scope.clone(), uidl_trusted) {
            // One buffer per mailbox (issue 16: what the memo keeps outlives the sessions).
            let memo = MailboxMemo::build(
                entries.iter().filter_map(|e| Some((e.uidl.as_deref()?, e.upstream_size, e.evaluated.as_deref()?))),
            )
            .unwrap_or_default();
            ctx.memo.store_with_model(scope, self.rules.clone(), self.model_generation, memo);
        }
        Ok(entries)
    }

    /// Logs and counts the verdicts of the finished view.
    pub fn report(&self, entries: &[Entry], dry_run: bool) {
        use crate::metrics as m;
        // Evaluation runs in parallel chunks off the async threads, so per-message times are
        // not observed one by one: each evaluated message records the batch's mean.
        for _ in 0..self.evaluated_now {
            m::rule_eval_duration(self.eval_per_message);
        }
        for e in entries {
            let Some(v) = e.verdict() else { continue };
            m::message_scanned();
            let action = v.action.map_or("none", |a| a.as_str());
            m::message_verdict(if v.spam { "spam" } else { "ham" }, action);
            for r in &v.rules {
                m::rule_matched(r);
            }
            if v.action.is_some() || v.spam {
                let rules: Vec<&str> = v.rules.iter().map(|r| &**r).collect();
                tracing::info!(
                    uidl = e.uidl.as_deref().unwrap_or("-"),
                    msg = e.upstream,
                    action,
                    applied = ?e.disposition,
                    dry_run,
                    score = v.score,
                    rules = rules.join(",").as_str(),
                    "verdict"
                );
            }
        }
        m::scan_duration(self.started.elapsed().as_secs_f64());
        let (_, hidden, condemned) = crate::session::view::counts(entries.iter().map(|e| e.disposition));
        tracing::debug!(
            messages = entries.len(),
            hidden,
            condemned,
            elapsed_ms = self.started.elapsed().as_millis() as u64,
            "scan done"
        );
    }
}

/// Most upstreams remembered as "warned about: no TOP". The set only saves log lines, so
/// when it is full it is emptied and a warning may repeat once per upstream.
const MAX_WARNED: usize = 1024;

/// A bounded "already said so" set (issue 12: it grew with every upstream ever seen).
struct WarnedOnce {
    seen: std::sync::Mutex<std::collections::BTreeSet<String>>,
    cap: usize,
}

impl WarnedOnce {
    const fn new(cap: usize) -> WarnedOnce {
        WarnedOnce { seen: std::sync::Mutex::new(std::collections::BTreeSet::new()), cap }
    }

    /// True the first time `key` is seen (again after the set was emptied).
    fn first(&self, key: &str) -> bool {
        let Ok(mut seen) = self.seen.lock() else { return false };
        if seen.len() >= self.cap && !seen.contains(key) {
            seen.clear();
        }
        seen.insert(key.to_string())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }
}

/// Warns once per upstream that its mail passes unfiltered (no TOP).
fn warn_once_no_top(upstream: &str) {
    static WARNED: WarnedOnce = WarnedOnce::new(MAX_WARNED);
    let first = WARNED.first(upstream);
    if first {
        tracing::warn!(upstream, "upstream does not support TOP: mail is passed through UNFILTERED (set scan.without_top: refuse to refuse such logins)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warned_once_set_is_bounded_with_many_upstreams() {
        let w = WarnedOnce::new(8);
        assert!(w.first("a:110"));
        assert!(!w.first("a:110"));
        for i in 0..1000 {
            w.first(&format!("host{i}:110"));
            assert!(w.len() <= 8);
        }
    }
}
