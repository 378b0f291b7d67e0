//! Every metric popsift exports, in one place, and the Prometheus `/metrics` endpoint.
//!
//! This module owns the metric *names* ([`METRICS`] is the single table: name, type, unit,
//! labels, help text and histogram buckets), their registration at start-up and the `/metrics`
//! endpoint: `metrics-exporter-prometheus` records and renders, popsift's own bounded HTTP
//! server ([`crate::net::http`]: connection cap, header and lifetime deadlines) serves, so
//! idle or slow scrapers cannot take descriptors or CPU from the POP3 sessions. The rest of popsift records through
//! the small functions below and never spells a metric name or a label value itself, so the
//! exposition stays consistent with the dashboard and alert rules in `deploy/` — a test checks
//! every PromQL expression there against [`METRICS`].
//!
//! Naming follows the Prometheus conventions: prefix `popsift_`, base units (`_seconds`,
//! `_bytes`), counters end in `_total`, histograms have explicit buckets chosen for what they
//! measure. No label ever carries a user, sender or mailbox: label values come from small closed
//! sets (enums, `&'static str` kinds), except `rule`, whose cardinality is capped
//! ([`RULE_LABEL_CAP`]).
//!
//! Labelled counters with a known value set are initialised to 0 when [`install`] runs, so
//! `rate()`/`increase()` see the first event and alerts work from the first scrape.
//!
//! Before [`install`] (and in processes that never call it, e.g. `popsift check`) every
//! recording function is a cheap no-op: the `metrics` facade drops the data.
use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How a client session ended (`popsift_sessions_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionResult {
    /// Client sent QUIT and the UPDATE state completed.
    Ok,
    /// Login refused by the upstream.
    AuthFailed,
    /// Upstream unreachable, failed, or timed out.
    UpstreamError,
    /// Client went away or timed out before QUIT.
    ClientAborted,
}

impl SessionResult {
    /// Every variant, in label order; used to initialise the counters to 0.
    pub const ALL: [SessionResult; 4] =
        [SessionResult::Ok, SessionResult::AuthFailed, SessionResult::UpstreamError, SessionResult::ClientAborted];

    /// The `result` label value.
    pub fn label(self) -> &'static str {
        match self {
            SessionResult::Ok => "ok",
            SessionResult::AuthFailed => "auth_failed",
            SessionResult::UpstreamError => "upstream_error",
            SessionResult::ClientAborted => "client_aborted",
        }
    }
}

/// Direction for `popsift_bytes_total{direction}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Upstream → popsift.
    FromUpstream,
    /// popsift → client.
    ToClient,
}

impl Direction {
    /// Every variant; used to initialise the counters to 0.
    pub const ALL: [Direction; 2] = [Direction::FromUpstream, Direction::ToClient];

    /// The `direction` label value.
    pub fn label(self) -> &'static str {
        match self {
            Direction::FromUpstream => "from_upstream",
            Direction::ToClient => "to_client",
        }
    }
}

/// The metrics endpoint could not be set up. When [`install`] was called without an address,
/// `addr` is the unspecified address `0.0.0.0:0`.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint {addr}: {reason}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub reason: String,
}

// ---------------------------------------------------------------------------------------------
// Names. Callers outside this module never use these strings; tests and deploy checks do.
// ---------------------------------------------------------------------------------------------

/// Counter `{result}`: finished client sessions by how they ended.
pub const SESSIONS_TOTAL: &str = "popsift_sessions_total";
/// Gauge: client sessions currently open.
pub const SESSIONS_ACTIVE: &str = "popsift_sessions_active";
/// Counter: messages whose headers were evaluated against the rule set.
pub const MESSAGES_SCANNED_TOTAL: &str = "popsift_messages_scanned_total";
/// Counter `{verdict,action}`: messages by verdict and the action taken.
pub const MESSAGES_TOTAL: &str = "popsift_messages_total";
/// Counter `{rule}`: rule matches (capped label set, see [`RULE_LABEL_CAP`]).
pub const RULE_MATCHES_TOTAL: &str = "popsift_rule_matches_total";
/// Histogram: duration of a whole-mailbox scan.
pub const SCAN_DURATION_SECONDS: &str = "popsift_scan_duration_seconds";
/// Histogram: rule evaluation time for one message.
pub const RULE_EVAL_DURATION_SECONDS: &str = "popsift_rule_eval_duration_seconds";
/// Counter `{kind}`: upstream failures by kind.
pub const UPSTREAM_ERRORS_TOTAL: &str = "popsift_upstream_errors_total";
/// Histogram: time to establish the upstream connection.
pub const UPSTREAM_CONNECT_DURATION_SECONDS: &str = "popsift_upstream_connect_duration_seconds";
/// Counter `{direction}`: bytes relayed.
pub const BYTES_TOTAL: &str = "popsift_bytes_total";
/// Gauge: rules in the active rule set.
pub const RULES_LOADED: &str = "popsift_rules_loaded";
/// Counter `{result}`: rule (re)load attempts.
pub const RULES_RELOADS_TOTAL: &str = "popsift_rules_reloads_total";
/// Gauge: 1 when the most recent rule (re)load succeeded, else 0.
pub const RULES_LAST_RELOAD_SUCCESSFUL: &str = "popsift_rules_last_reload_successful";
/// Gauge: Unix time of the last successful rule (re)load.
pub const RULES_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS: &str = "popsift_rules_last_reload_success_timestamp_seconds";
/// Counter: messages written to the quarantine.
pub const QUARANTINE_MESSAGES_TOTAL: &str = "popsift_quarantine_messages_total";
/// Counter: messages that should have been quarantined but could not be written.
pub const QUARANTINE_ERRORS_TOTAL: &str = "popsift_quarantine_errors_total";
/// Counter `{result}`: header cache lookups, `hit` or `miss`; `memo` when the in-memory
/// verdict memo answered and the cache was not read.
pub const HEADER_CACHE_LOOKUPS_TOTAL: &str = "popsift_header_cache_lookups_total";
/// Counter: logins whose UIDL listing could not be trusted (duplicate, missing or malformed
/// UIDLs, RFC 1939 §7), so every UIDL-keyed shortcut was off for that session.
pub const UIDL_UNTRUSTED_SESSIONS_TOTAL: &str = "popsift_uidl_untrusted_sessions_total";
/// Counter `{reply}`: upstream replies refused at the boundary for breaking RFC 1939's
/// invariants (`list`: not numbered 1..N or a size not a number; `stat`: disagrees with LIST;
/// `top`: a `TOP n 0` reply far longer than the size LIST announced).
pub const UPSTREAM_INVALID_REPLIES_TOTAL: &str = "popsift_upstream_invalid_replies_total";
/// Counter: sessions that ended in a panic (a bug: caught at the session boundary).
pub const SESSION_PANICS_TOTAL: &str = "popsift_session_panics_total";
/// Counter: login decision batches the history writer could not take (queue full).
pub const HISTORY_DROPPED_TOTAL: &str = "popsift_history_dropped_total";
/// Gauge `{version}`: always 1; carries the version as a label.
pub const BUILD_INFO: &str = "popsift_build_info";
/// Gauge: Unix time at which the metrics were installed (process start, for uptime and for
/// alerts that need a full window of data).
pub const START_TIME_SECONDS: &str = "popsift_start_time_seconds";
// --- network edge (crate::edge) ---
/// Connections refused at the edge, by reason ([`EDGE_REFUSAL_REASONS`]).
pub const EDGE_REFUSALS_TOTAL: &str = "popsift_edge_refusals_total";
/// Failed logins, by reason ([`LOGIN_FAILURE_REASONS`]).
pub const LOGIN_FAILURES_TOTAL: &str = "popsift_login_failures_total";
/// `reason` values of `popsift_edge_refusals_total`.
pub const EDGE_REFUSAL_REASONS: &[&str] = &["proxy_untrusted", "proxy_header", "per_ip_limit", "tls_handshake"];
/// `reason` values of `popsift_login_failures_total`.
pub const LOGIN_FAILURE_REASONS: &[&str] =
    &["upstream-refused", "throttled", "plaintext-disallowed", "upstream-not-allowed"];
// --- end network edge ---
// --- shared store (issue 15) ---
/// Gauge `{reason="unreachable"|"not_durable"}`: 1 while the Redis store is degraded so.
pub const STORE_DEGRADED: &str = "popsift_store_degraded";
/// Counter `{op}`: Redis calls that failed or timed out (the session went on without them).
pub const STORE_ERRORS_TOTAL: &str = "popsift_store_errors_total";
/// The reasons [`STORE_DEGRADED`] can carry.
pub const STORE_DEGRADED_REASONS: &[&str] = &["unreachable", "not_durable"];
/// The operations [`STORE_ERRORS_TOTAL`] can carry.
pub const STORE_OPS: &[&str] = &["connect", "header_lookup", "header_update", "quarantine", "model", "history"];
// --- end shared store ---
// --- login-time store deadlines (net::history_hooks, net::quarantine_copy) ---
/// Counter `{step}`: a login step past its named deadline (`timeouts.<step>`); the login went
/// on with the safe fallback.
pub const LOGIN_STEP_TIMEOUTS_TOTAL: &str = "popsift_login_step_timeouts_total";
/// `step` values of [`LOGIN_STEP_TIMEOUTS_TOTAL`].
pub const LOGIN_STEPS: &[&str] = &["history_lookup", "quarantine_usage"];
// --- end login-time store deadlines ---
// --- allocator memory (issue 16) ---
/// Gauge `{kind}`: the allocator's figures (see [`crate::allocator`]), read at each scrape.
pub const ALLOCATOR_BYTES: &str = "popsift_allocator_bytes";
// --- end allocator memory ---
// --- memory back after the sessions end (issue 16) ---
pub const IDLE_RELEASES_TOTAL: &str = "popsift_idle_releases_total";
// --- end memory back after the sessions end ---

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric: everything a reader of the exposition, the dashboard or the alert
/// rules needs to know about it.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub unit: Option<Unit>,
    /// Label names; every value set is closed except `rule` (capped).
    pub labels: &'static [&'static str],
    pub help: &'static str,
    /// Upper bounds of the histogram buckets (`le`), empty for counters and gauges.
    pub buckets: &'static [f64],
}

/// Whole-mailbox scan: one `TOP n 0` (or cache lookup) per message over the network, so from a
/// few milliseconds (small, cached mailbox on loopback) to minutes (thousands of messages at
/// 50 ms RTT take ~100 s). Mail clients typically give up after 30–60 s.
pub const SCAN_DURATION_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];
/// Rule evaluation of one header block is in-memory (RegexSet, aho-corasick): microseconds,
/// a slow rule set shows up in the milliseconds.
pub const RULE_EVAL_DURATION_BUCKETS: &[f64] =
    &[0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1];
/// TCP connect plus TLS handshake to the upstream: sub-millisecond on loopback, tens to
/// hundreds of milliseconds over the internet; the connect timeout bounds the top.
pub const UPSTREAM_CONNECT_DURATION_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// `verdict` label values of `popsift_messages_total`.
pub const VERDICTS: &[&str] = &["spam", "ham"];
/// `action` label values of `popsift_messages_total`.
pub const ACTIONS: &[&str] = &["none", "allow", "tag", "hide", "delete", "quarantine"];
/// `kind` label values of `popsift_upstream_errors_total` initialised to 0.
pub const UPSTREAM_ERROR_KINDS: &[&str] = &["connect", "tls", "timeout", "protocol", "closed", "greeting"];
/// Only the first this-many distinct rule ids get their own `rule` label value on
/// `popsift_rule_matches_total`; matches of any further rule are counted under
/// `rule="_other"`. The set of labelled rules lives for the process (a reload does not reset
/// it), so the series count is bounded even across many reloads with renamed rules.
pub const RULE_LABEL_CAP: usize = 500;
/// The `rule` label value for matches beyond [`RULE_LABEL_CAP`].
pub const RULE_OTHER: &str = "_other";

/// Every metric popsift exports.
pub const METRICS: &[MetricDef] = &[
    MetricDef {
        name: SESSIONS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["result"],
        help: "Client sessions that ended, by result (ok, auth_failed, upstream_error, client_aborted).",
        buckets: &[],
    },
    MetricDef {
        name: SESSIONS_ACTIVE,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Client sessions currently open.",
        buckets: &[],
    },
    MetricDef {
        name: MESSAGES_SCANNED_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Messages whose headers were evaluated against the rule set.",
        buckets: &[],
    },
    MetricDef {
        name: MESSAGES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["verdict", "action"],
        help: "Messages by verdict (spam, ham) and the action taken (none, allow, tag, hide, delete, quarantine).",
        buckets: &[],
    },
    MetricDef {
        name: RULE_MATCHES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["rule"],
        help: "Rule matches by rule id; rules beyond the first 500 distinct ids are counted as rule=\"_other\".",
        buckets: &[],
    },
    MetricDef {
        name: SCAN_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &[],
        help: "Time to scan a whole mailbox (fetch and evaluate every message's headers).",
        buckets: SCAN_DURATION_BUCKETS,
    },
    MetricDef {
        name: RULE_EVAL_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &[],
        help: "Time to evaluate the rule set against one message's headers.",
        buckets: RULE_EVAL_DURATION_BUCKETS,
    },
    MetricDef {
        name: UPSTREAM_ERRORS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["kind"],
        help: "Upstream failures by kind (connect, tls, timeout, protocol, closed, greeting).",
        buckets: &[],
    },
    MetricDef {
        name: UPSTREAM_CONNECT_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &[],
        help: "Time to connect to the upstream POP3 server, including the TLS handshake.",
        buckets: UPSTREAM_CONNECT_DURATION_BUCKETS,
    },
    MetricDef {
        name: BYTES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Bytes),
        labels: &["direction"],
        help: "Bytes relayed, by direction (from_upstream, to_client).",
        buckets: &[],
    },
    MetricDef {
        name: RULES_LOADED,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Rules in the active rule set.",
        buckets: &[],
    },
    MetricDef {
        name: RULES_RELOADS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["result"],
        help: "Rule set loads and reloads, by result (success, failure).",
        buckets: &[],
    },
    MetricDef {
        name: RULES_LAST_RELOAD_SUCCESSFUL,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "1 if the most recent rule set load or reload succeeded, 0 if it failed.",
        buckets: &[],
    },
    MetricDef {
        name: RULES_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Seconds),
        labels: &[],
        help: "Unix time of the last successful rule set load or reload.",
        buckets: &[],
    },
    MetricDef {
        name: QUARANTINE_MESSAGES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Messages written to the quarantine.",
        buckets: &[],
    },
    MetricDef {
        name: HISTORY_DROPPED_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Login decision batches not recorded in the decision history because its queue was full.",
        buckets: &[],
    },
    MetricDef {
        name: QUARANTINE_ERRORS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Messages that should have been quarantined but could not be written.",
        buckets: &[],
    },
    MetricDef {
        name: HEADER_CACHE_LOOKUPS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["result"],
        help: "Header cache lookups, by result (hit, miss; memo: answered by the in-memory verdict memo).",
        buckets: &[],
    },
    MetricDef {
        name: UIDL_UNTRUSTED_SESSIONS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Logins with duplicate, missing or malformed UIDLs: cache, memo and quarantine shortcuts were off.",
        buckets: &[],
    },
    MetricDef {
        name: UPSTREAM_INVALID_REPLIES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["reply"],
        help: "Upstream replies refused for breaking RFC 1939 invariants, by reply (list, stat, top); the session ends without UPDATE.",
        buckets: &[],
    },
    MetricDef {
        name: SESSION_PANICS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Client sessions that ended in a panic (a bug), caught at the session boundary.",
        buckets: &[],
    },
    MetricDef {
        name: BUILD_INFO,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &["version"],
        help: "Always 1; the version label names the running popsift.",
        buckets: &[],
    },
    MetricDef {
        name: START_TIME_SECONDS,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Seconds),
        labels: &[],
        help: "Unix time at which popsift started.",
        buckets: &[],
    },
    // The classifier (see the `bayes` block below).
    MetricDef {
        name: BAYES_TRAINED_MESSAGES,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        labels: &["class"],
        help: "Messages trained into the classifier model the proxy uses, by class (spam, ham).",
        buckets: &[],
    },
    MetricDef {
        name: BAYES_MODEL_GENERATION,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Generation of the classifier model the proxy uses (+1 per training batch).",
        buckets: &[],
    },
    MetricDef {
        name: BAYES_CLASSIFICATIONS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["band"],
        help: "Messages classified, by band: ham (p < 0.2), unsure, spam (p >= 0.8), none (model not ready).",
        buckets: &[],
    },
    MetricDef {
        name: BAYES_AUTOLEARN_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["result"],
        help: "Autolearn offers by result (spam, ham, skipped_balance, skipped_known, dropped, failed).",
        buckets: &[],
    },
    MetricDef {
        name: BAYES_MODEL_REBUILDS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Damaged classifier model files moved aside and replaced by an empty model.",
        buckets: &[],
    },
    // --- network edge (crate::edge) ---
    MetricDef {
        name: EDGE_REFUSALS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["reason"],
        help: "Connections refused at the network edge, by reason (proxy_untrusted, proxy_header, per_ip_limit, tls_handshake).",
        buckets: &[],
    },
    MetricDef {
        name: LOGIN_FAILURES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["reason"],
        help: "Failed logins, by reason (upstream-refused, throttled, plaintext-disallowed).",
        buckets: &[],
    },
    // --- shared store (issue 15) ---
    MetricDef {
        name: STORE_DEGRADED,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &["reason"],
        help: "1 while the Redis store is degraded: unreachable (cache misses, quarantine falls back to quarantine.on_failure) or not_durable (no appendonly/appendfsync always: quarantine falls back).",
        buckets: &[],
    },
    MetricDef {
        name: STORE_ERRORS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["op"],
        help: "Redis store calls that failed or timed out, by operation; the session went on without them (header writes and model writes are dropped).",
        buckets: &[],
    },
    // --- end shared store ---
    // --- login-time store deadlines ---
    MetricDef {
        name: LOGIN_STEP_TIMEOUTS_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &["step"],
        help: "Login steps past their deadline, by step (history_lookup: the review page's overrides not applied this login; quarantine_usage: quarantine copies fall back to quarantine.on_failure).",
        buckets: &[],
    },
    // --- end login-time store deadlines ---
    // --- allocator memory (issue 16) ---
    MetricDef {
        name: ALLOCATOR_BYTES,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Bytes),
        labels: &["kind"],
        help: "The memory allocator's figures: allocated (live objects), active (their pages), metadata, resident (pages the allocator holds in RAM), mapped, retained (address space kept, not resident).",
        buckets: &[],
    },
    // --- end allocator memory ---
    // --- memory back after the sessions end (issue 16) ---
    MetricDef {
        name: IDLE_RELEASES_TOTAL,
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        labels: &[],
        help: "Times the stores gave their memory back after no session had run for 5 s (the redb header cache and decision history close and reopen their files; the verdict memo is repacked).",
        buckets: &[],
    },
    // --- end memory back after the sessions end ---
];

/// Every exported metric name (the `name` column of [`METRICS`]).
pub const ALL_NAMES: &[&str] = &[
    SESSIONS_TOTAL,
    SESSIONS_ACTIVE,
    MESSAGES_SCANNED_TOTAL,
    MESSAGES_TOTAL,
    RULE_MATCHES_TOTAL,
    SCAN_DURATION_SECONDS,
    RULE_EVAL_DURATION_SECONDS,
    UPSTREAM_ERRORS_TOTAL,
    UPSTREAM_CONNECT_DURATION_SECONDS,
    BYTES_TOTAL,
    RULES_LOADED,
    RULES_RELOADS_TOTAL,
    RULES_LAST_RELOAD_SUCCESSFUL,
    RULES_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS,
    QUARANTINE_MESSAGES_TOTAL,
    HISTORY_DROPPED_TOTAL,
    QUARANTINE_ERRORS_TOTAL,
    HEADER_CACHE_LOOKUPS_TOTAL,
    UIDL_UNTRUSTED_SESSIONS_TOTAL,
    UPSTREAM_INVALID_REPLIES_TOTAL,
    SESSION_PANICS_TOTAL,
    BUILD_INFO,
    START_TIME_SECONDS,
    BAYES_TRAINED_MESSAGES,
    BAYES_MODEL_GENERATION,
    BAYES_CLASSIFICATIONS_TOTAL,
    BAYES_AUTOLEARN_TOTAL,
    BAYES_MODEL_REBUILDS_TOTAL,
    EDGE_REFUSALS_TOTAL,
    LOGIN_FAILURES_TOTAL,
    STORE_DEGRADED,
    STORE_ERRORS_TOTAL,
    LOGIN_STEP_TIMEOUTS_TOTAL,
    ALLOCATOR_BYTES,
    IDLE_RELEASES_TOTAL,
];

// ---------------------------------------------------------------------------------------------
// Installation
// ---------------------------------------------------------------------------------------------

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The builder with every histogram's buckets; shared by [`install`] and the unit tests.
fn builder() -> PrometheusBuilder {
    let mut b = PrometheusBuilder::new();
    for m in METRICS.iter().filter(|m| m.kind == MetricKind::Histogram) {
        b = b
            .set_buckets_for_metric(Matcher::Full(m.name.to_owned()), m.buckets)
            .expect("METRICS histograms have non-empty buckets (unit-tested)");
    }
    b
}

/// Installs the recorder and, when `addr` is given, serves `GET /metrics` there (any other
/// path or method: 404) with [`HttpLimits::METRICS`](crate::net::http::HttpLimits::METRICS).
/// Must be called inside a tokio runtime. Registers (describes) every metric and sets
/// `popsift_build_info`.
///
/// With `addr = None` (`--metrics off`) the recorder is still installed, so [`render`] works
/// and recording costs the same, but nothing listens. Binding happens before this returns, so
/// a busy port is an error here, not later.
///
/// The global recorder can be installed once per process: a second call fails.
pub fn install(addr: Option<SocketAddr>) -> Result<(), MetricsError> {
    let err_addr = addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let err = |reason: String| MetricsError { addr: err_addr, reason };

    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| err("install must be called inside a tokio runtime".into()))?;
    if HANDLE.get().is_some() {
        return Err(err("metrics are already installed".into()));
    }

    // Bind first (a busy port fails here), install second, serve last: a failed install
    // leaves no listener or task behind.
    let listener = match addr {
        Some(addr) => {
            let _guard = runtime.enter();
            let std = std::net::TcpListener::bind(addr).map_err(|e| err(e.to_string()))?;
            std.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
            Some(tokio::net::TcpListener::from_std(std).map_err(|e| err(e.to_string()))?)
        }
        None => None,
    };
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| err(e.to_string()))?;
    // Cannot fail: the global recorder is set once, and only here.
    let _ = HANDLE.set(handle.clone());

    if let Some(listener) = listener {
        let limits = crate::net::http::HttpLimits::METRICS;
        let render_handle = handle.clone();
        runtime.spawn(crate::net::http::serve(listener, "metrics", limits, move |req| {
            let h = render_handle.clone();
            async move { metrics_response(&h, req.method(), req.uri().path()).await }
        }));
    }
    // Histogram samples are drained into their buckets at each render, or here every 5 s
    // (as the exporter's own listener did) so memory stays bounded between scrapes.
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    });

    register();
    Ok(())
}

/// The answer to one request on the metrics port: the exposition for `GET /metrics`
/// (Prometheus text format 0.0.4), 404 for anything else. The request body is never read.
async fn metrics_response(
    handle: &PrometheusHandle,
    method: &hyper::Method,
    path: &str,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use crate::net::http::response;
    if method == hyper::Method::GET && path == "/metrics" {
        allocator_figures();
        response(hyper::StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", handle.render())
    } else if method == hyper::Method::GET && path == "/debug/allocator" {
        // jemalloc's own statistics (issue 16): live objects per size class and more. Printed
        // on the blocking pool, at most once a second (see `allocator::StatsCache`).
        match crate::allocator::STATS.get().await {
            Some(json) => response(hyper::StatusCode::OK, "application/json", json.to_string()),
            None => response(hyper::StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "no allocator statistics\n"),
        }
    } else {
        response(hyper::StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: use GET /metrics\n")
    }
}

/// The current exposition (Prometheus text format), or `None` before [`install`].
pub fn render() -> Option<String> {
    allocator_figures();
    HANDLE.get().map(PrometheusHandle::render)
}

/// Sets [`ALLOCATOR_BYTES`] from the allocator's counters now (a scrape reads them fresh).
fn allocator_figures() {
    if let Some(f) = crate::allocator::figures() {
        for (kind, bytes) in f.labelled() {
            gauge!(ALLOCATOR_BYTES, "kind" => kind).set(bytes as f64);
        }
    }
}

/// Describes every metric and creates the series whose label values are known, at 0, so they
/// appear in the first scrape.
fn register() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(u)) => metrics::describe_counter!(m.name, u, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Gauge, Some(u)) => metrics::describe_gauge!(m.name, u, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Histogram, Some(u)) => metrics::describe_histogram!(m.name, u, m.help),
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }

    for r in SessionResult::ALL {
        counter!(SESSIONS_TOTAL, "result" => r.label()).absolute(0);
    }
    gauge!(SESSIONS_ACTIVE).set(0.0);
    counter!(MESSAGES_SCANNED_TOTAL).absolute(0);
    for &verdict in VERDICTS {
        for &action in ACTIONS {
            counter!(MESSAGES_TOTAL, "verdict" => verdict, "action" => action).absolute(0);
        }
    }
    for &kind in UPSTREAM_ERROR_KINDS {
        counter!(UPSTREAM_ERRORS_TOTAL, "kind" => kind).absolute(0);
    }
    for d in Direction::ALL {
        counter!(BYTES_TOTAL, "direction" => d.label()).absolute(0);
    }
    for result in ["success", "failure"] {
        counter!(RULES_RELOADS_TOTAL, "result" => result).absolute(0);
    }
    counter!(QUARANTINE_MESSAGES_TOTAL).absolute(0);
    for &reason in EDGE_REFUSAL_REASONS {
        counter!(EDGE_REFUSALS_TOTAL, "reason" => reason).absolute(0);
    }
    for &reason in LOGIN_FAILURE_REASONS {
        counter!(LOGIN_FAILURES_TOTAL, "reason" => reason).absolute(0);
    }
    counter!(QUARANTINE_ERRORS_TOTAL).absolute(0);
    counter!(HISTORY_DROPPED_TOTAL).absolute(0);
    counter!(UIDL_UNTRUSTED_SESSIONS_TOTAL).absolute(0);
    for result in ["hit", "miss", "memo"] {
        counter!(HEADER_CACHE_LOOKUPS_TOTAL, "result" => result).absolute(0);
    }
    for &reply in INVALID_REPLIES {
        counter!(UPSTREAM_INVALID_REPLIES_TOTAL, "reply" => reply).absolute(0);
    }
    counter!(SESSION_PANICS_TOTAL).absolute(0);
    // Memory back after the sessions end.
    counter!(IDLE_RELEASES_TOTAL).absolute(0);
    // Histograms: registering the handle renders empty buckets from the first scrape.
    let _ = histogram!(SCAN_DURATION_SECONDS);
    let _ = histogram!(RULE_EVAL_DURATION_SECONDS);
    let _ = histogram!(UPSTREAM_CONNECT_DURATION_SECONDS);
    // `popsift_rules_loaded` and the reload gauges are set by the first rule load, not here:
    // a made-up 0 would look like "empty rule set" / "reload failed".
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    gauge!(START_TIME_SECONDS).set(unix_now());
    register_bayes();
    // shared store (issue 15): exported from the start, 0 = not degraded / no errors yet.
    for &reason in STORE_DEGRADED_REASONS {
        gauge!(STORE_DEGRADED, "reason" => reason).set(0.0);
    }
    for &op in STORE_OPS {
        counter!(STORE_ERRORS_TOTAL, "op" => op).absolute(0);
    }
    for &step in LOGIN_STEPS {
        counter!(LOGIN_STEP_TIMEOUTS_TOTAL, "step" => step).absolute(0);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Recording
// ---------------------------------------------------------------------------------------------

/// One open client session in `popsift_sessions_active`: + 1 when made, − 1 when dropped,
/// however the session ends (returned, panicked, or its task dropped at shutdown), so the
/// gauge cannot leak. [`finish`](Self::finish) also counts `popsift_sessions_total{result}`.
#[must_use = "the session counts as active only while this guard lives"]
#[derive(Debug)]
pub struct ActiveSession {
    _private: (),
}

impl ActiveSession {
    /// A client connected: `popsift_sessions_active` + 1.
    pub fn start() -> ActiveSession {
        gauge!(SESSIONS_ACTIVE).increment(1.0);
        ActiveSession { _private: () }
    }

    /// The session ended with `result`: `popsift_sessions_total{result}` + 1, and the
    /// gauge − 1 (by dropping the guard).
    pub fn finish(self, result: SessionResult) {
        counter!(SESSIONS_TOTAL, "result" => result.label()).increment(1);
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        gauge!(SESSIONS_ACTIVE).decrement(1.0);
    }
}

/// One message's headers were evaluated: `popsift_messages_scanned_total` + 1.
pub fn message_scanned() {
    counter!(MESSAGES_SCANNED_TOTAL).increment(1);
}

/// `verdict`: "spam" | "ham"; `action`: "none" | "allow" | "tag" | "hide" | "delete" | "quarantine".
///
/// Any other value is counted under `"other"`, so a caller bug cannot create unbounded series.
pub fn message_verdict(verdict: &str, action: &str) {
    let verdict = known(VERDICTS, verdict);
    let action = known(ACTIONS, action);
    counter!(MESSAGES_TOTAL, "verdict" => verdict, "action" => action).increment(1);
}

fn known(set: &[&'static str], value: &str) -> &'static str {
    set.iter().find(|v| **v == value).copied().unwrap_or("other")
}

/// A rule with a score or action matched: `popsift_rule_matches_total{rule}` + 1. The first
/// [`RULE_LABEL_CAP`] distinct rule ids get their own series; later ones count as `_other`.
/// Callers should report only rules that contribute a score or an action.
pub fn rule_matched(rule_id: &str) {
    static LABELS: OnceLock<RuleLabels> = OnceLock::new();
    let label = LABELS.get_or_init(|| RuleLabels::new(RULE_LABEL_CAP)).label(rule_id);
    counter!(RULE_MATCHES_TOTAL, "rule" => label.into_owned()).increment(1);
}

/// The bounded set of rule ids that have their own label value.
#[derive(Debug)]
struct RuleLabels {
    cap: usize,
    seen: Mutex<HashSet<String>>,
}

impl RuleLabels {
    fn new(cap: usize) -> Self {
        RuleLabels { cap, seen: Mutex::new(HashSet::new()) }
    }

    /// `rule_id` if it already has a series or there is still room for one, else `_other`.
    fn label<'a>(&self, rule_id: &'a str) -> Cow<'a, str> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(rule_id) {
            return Cow::Borrowed(rule_id);
        }
        if seen.len() < self.cap {
            seen.insert(rule_id.to_owned());
            return Cow::Borrowed(rule_id);
        }
        Cow::Borrowed(RULE_OTHER)
    }
}

/// A whole-mailbox scan took `seconds` (`popsift_scan_duration_seconds`).
pub fn scan_duration(seconds: f64) {
    histogram!(SCAN_DURATION_SECONDS).record(seconds);
}

/// Evaluating the rules against one message took `seconds`
/// (`popsift_rule_eval_duration_seconds`).
pub fn rule_eval_duration(seconds: f64) {
    histogram!(RULE_EVAL_DURATION_SECONDS).record(seconds);
}

/// `kind`: "connect" | "tls" | "timeout" | "protocol" | "closed" | "greeting".
pub fn upstream_error(kind: &'static str) {
    counter!(UPSTREAM_ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// Label values of `popsift_upstream_invalid_replies_total`.
pub const INVALID_REPLIES: &[&str] = &["list", "stat", "top"];

/// An upstream reply broke RFC 1939's invariants (`reply`: "list" | "stat" | "top"):
/// `popsift_upstream_invalid_replies_total{reply}` + 1. Other values count as "other".
pub fn upstream_invalid_reply(reply: &str) {
    counter!(UPSTREAM_INVALID_REPLIES_TOTAL, "reply" => known(INVALID_REPLIES, reply)).increment(1);
}

/// A connection was refused at the edge (`popsift_edge_refusals_total`).
pub fn edge_refusal(reason: &'static str) {
    counter!(EDGE_REFUSALS_TOTAL, "reason" => known(EDGE_REFUSAL_REASONS, reason)).increment(1);
}

/// A login failed (`popsift_login_failures_total`).
pub fn login_failure(reason: &'static str) {
    counter!(LOGIN_FAILURES_TOTAL, "reason" => known(LOGIN_FAILURE_REASONS, reason)).increment(1);
}

/// A session panicked and was caught at the session boundary: `popsift_session_panics_total` + 1.
pub fn session_panicked() {
    counter!(SESSION_PANICS_TOTAL).increment(1);
}

/// Connecting to the upstream (TCP connect and, if any, the TLS handshake) took `seconds`
/// (`popsift_upstream_connect_duration_seconds`).
pub fn upstream_connect_duration(seconds: f64) {
    histogram!(UPSTREAM_CONNECT_DURATION_SECONDS).record(seconds);
}

/// `n` bytes were relayed in `direction` (`popsift_bytes_total{direction}`).
pub fn bytes(direction: Direction, n: u64) {
    counter!(BYTES_TOTAL, "direction" => direction.label()).increment(n);
}

/// The active rule set has `n` rules (`popsift_rules_loaded`).
pub fn rules_loaded(n: usize) {
    gauge!(RULES_LOADED).set(n as f64);
}

/// A rule set load or reload finished; call it for the initial load too.
/// Counts `popsift_rules_reloads_total{result="success"|"failure"}`, sets
/// `popsift_rules_last_reload_successful` and, on success,
/// `popsift_rules_last_reload_success_timestamp_seconds` to now.
pub fn rules_reload(ok: bool) {
    let result = if ok { "success" } else { "failure" };
    counter!(RULES_RELOADS_TOTAL, "result" => result).increment(1);
    gauge!(RULES_LAST_RELOAD_SUCCESSFUL).set(if ok { 1.0 } else { 0.0 });
    if ok {
        gauge!(RULES_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS).set(unix_now());
    }
}

/// A message was written to the quarantine (`popsift_quarantine_messages_total`).
pub fn quarantine_message() {
    counter!(QUARANTINE_MESSAGES_TOTAL).increment(1);
}

/// A message could not be written to the quarantine (`popsift_quarantine_errors_total`).
pub fn quarantine_error() {
    counter!(QUARANTINE_ERRORS_TOTAL).increment(1);
}

/// A login's decisions were not recorded (`popsift_history_dropped_total`).
pub fn history_dropped(_decisions: usize) {
    counter!(HISTORY_DROPPED_TOTAL).increment(1);
}

/// A login whose UIDLs could not be trusted (`popsift_uidl_untrusted_sessions_total`).
pub fn uidl_untrusted_session() {
    counter!(UIDL_UNTRUSTED_SESSIONS_TOTAL).increment(1);
}

/// A header cache lookup (`popsift_header_cache_lookups_total{result="hit"|"miss"}`).
pub fn header_cache_lookup(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!(HEADER_CACHE_LOOKUPS_TOTAL, "result" => result).increment(1);
}

/// No session ran for a while and the stores gave their page caches back
/// (`popsift_idle_releases_total`, see `net::idle_release`).
pub fn idle_released() {
    counter!(IDLE_RELEASES_TOTAL).increment(1);
}

/// A message answered by the in-memory verdict memo, without reading the header cache
/// (`popsift_header_cache_lookups_total{result="memo"}`).
pub fn verdict_memo_hit() {
    counter!(HEADER_CACHE_LOOKUPS_TOTAL, "result" => "memo").increment(1);
}

// ---------------------------------------------------------------------------------------------
// The classifier (`crate::classify`): model counts, classifications by band, autolearn.
// ---------------------------------------------------------------------------------------------

/// Gauge `{class}`: trained messages of the model snapshot in use.
pub const BAYES_TRAINED_MESSAGES: &str = "popsift_bayes_trained_messages";
/// Gauge: generation of the model snapshot in use.
pub const BAYES_MODEL_GENERATION: &str = "popsift_bayes_model_generation";
/// Counter `{band}`: classifications by probability band.
pub const BAYES_CLASSIFICATIONS_TOTAL: &str = "popsift_bayes_classifications_total";
/// Counter `{result}`: autolearn offers by what became of them.
pub const BAYES_AUTOLEARN_TOTAL: &str = "popsift_bayes_autolearn_total";
/// Counter: damaged model files moved aside.
pub const BAYES_MODEL_REBUILDS_TOTAL: &str = "popsift_bayes_model_rebuilds_total";
/// `band` label values of `popsift_bayes_classifications_total`.
pub const BAYES_BANDS: &[&str] = &["none", "ham", "unsure", "spam"];

fn register_bayes() {
    for &band in BAYES_BANDS {
        counter!(BAYES_CLASSIFICATIONS_TOTAL, "band" => band).absolute(0);
    }
    for r in crate::classify::autolearn::AutolearnResult::ALL {
        counter!(BAYES_AUTOLEARN_TOTAL, "result" => r.label()).absolute(0);
    }
    counter!(BAYES_MODEL_REBUILDS_TOTAL).absolute(0);
    // The model gauges exist from the first scrape (0 until a model is loaded: the proxy
    // has nothing trained); `increment(0)` keeps a value a model load already set.
    gauge!(BAYES_TRAINED_MESSAGES, "class" => "spam").increment(0.0);
    gauge!(BAYES_TRAINED_MESSAGES, "class" => "ham").increment(0.0);
    gauge!(BAYES_MODEL_GENERATION).increment(0.0);
}

/// The proxy swapped in a model snapshot.
pub fn bayes_model(nspam: u64, nham: u64, generation: u64) {
    gauge!(BAYES_TRAINED_MESSAGES, "class" => "spam").set(nspam as f64);
    gauge!(BAYES_TRAINED_MESSAGES, "class" => "ham").set(nham as f64);
    gauge!(BAYES_MODEL_GENERATION).set(generation as f64);
}

/// One classification: `None` when the model was not ready, else the probability.
pub fn bayes_classified(p: Option<f64>) {
    let band = match p {
        None => "none",
        Some(p) if p < 0.2 => "ham",
        Some(p) if p < 0.8 => "unsure",
        Some(_) => "spam",
    };
    counter!(BAYES_CLASSIFICATIONS_TOTAL, "band" => band).increment(1);
}

/// `n` autolearn offers ended with `result` (an [`crate::classify::autolearn::AutolearnResult`]
/// label).
pub fn bayes_autolearn(result: &'static str, n: u64) {
    counter!(BAYES_AUTOLEARN_TOTAL, "result" => result).increment(n);
}

/// A damaged model file was moved aside.
pub fn bayes_model_rebuilt() {
    counter!(BAYES_MODEL_REBUILDS_TOTAL).increment(1);
}
// --- shared store (issue 15) ---

/// Sets `popsift_store_degraded{reason}` to 1 (degraded) or 0.
pub fn store_degraded(reason: &'static str, degraded: bool) {
    gauge!(STORE_DEGRADED, "reason" => reason).set(if degraded { 1.0 } else { 0.0 });
}

/// A failed or timed-out Redis call (`popsift_store_errors_total{op}`).
pub fn store_error(op: &'static str) {
    counter!(STORE_ERRORS_TOTAL, "op" => op).increment(1);
}

// --- end shared store ---

/// A login step passed its named deadline (`popsift_login_step_timeouts_total{step}`); `step`
/// is one of [`LOGIN_STEPS`].
pub fn login_step_timeout(step: &'static str) {
    counter!(LOGIN_STEP_TIMEOUTS_TOTAL, "step" => step).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label names that would put a person or a mailbox into a series.
    const FORBIDDEN_LABELS: &[&str] =
        &["user", "username", "sender", "from", "to", "mailbox", "peer", "address", "subject"];

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} defined twice", m.name);
            assert!(m.name.starts_with("popsift_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{} is not snake_case",
                m.name
            );
            assert!(!m.help.is_empty(), "{} has no help", m.name);
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                MetricKind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
                MetricKind::Histogram => {
                    assert!(m.name.ends_with("_seconds") || m.name.ends_with("_bytes"), "{} has no base unit", m.name)
                }
            }
            if m.unit == Some(Unit::Seconds) {
                assert!(m.name.contains("_seconds"), "{}", m.name);
            }
            if m.unit == Some(Unit::Bytes) {
                assert!(m.name.contains("_bytes"), "{}", m.name);
            }
            for l in m.labels {
                assert!(!FORBIDDEN_LABELS.contains(l), "{} has label {l}", m.name);
            }
        }
    }

    #[test]
    fn all_names_matches_the_table() {
        let table: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(table, ALL_NAMES);
    }

    #[test]
    fn histograms_have_increasing_buckets_and_others_none() {
        for m in METRICS {
            if m.kind == MetricKind::Histogram {
                assert!(!m.buckets.is_empty(), "{}", m.name);
                assert!(m.buckets.windows(2).all(|w| w[0] < w[1]), "{}", m.name);
                assert!(m.buckets[0] > 0.0, "{}", m.name);
            } else {
                assert!(m.buckets.is_empty(), "{}", m.name);
            }
        }
        // Builds without error: every bucket set is accepted by the exporter.
        let _ = builder().build_recorder();
    }

    #[test]
    fn rule_labels_are_capped() {
        let labels = RuleLabels::new(3);
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("a"), "a");
        assert_eq!(labels.label("c"), "c");
        assert_eq!(labels.label("d"), RULE_OTHER);
        assert_eq!(labels.label("e"), RULE_OTHER);
        // Rules admitted before the cap keep their own series.
        assert_eq!(labels.label("b"), "b");
        assert_eq!(labels.label("c"), "c");
    }

    #[test]
    fn label_values_are_snake_case() {
        let values = SessionResult::ALL
            .iter()
            .map(|r| r.label())
            .chain(Direction::ALL.iter().map(|d| d.label()))
            .chain(VERDICTS.iter().copied())
            .chain(ACTIONS.iter().copied())
            .chain(UPSTREAM_ERROR_KINDS.iter().copied());
        for v in values {
            assert!(v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{v}");
        }
    }

    /// Records through a local (non-global) recorder built like the installed one, so the
    /// label mapping and the histogram buckets are checked without touching global state.
    #[test]
    fn recording_functions_render_expected_series() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        let open = metrics::with_local_recorder(&recorder, || {
            register();
            let open = ActiveSession::start();
            ActiveSession::start().finish(SessionResult::AuthFailed);
            // A session whose task is dropped without finishing (a panic) still leaves.
            drop(ActiveSession::start());
            message_verdict("spam", "hide");
            bytes(Direction::ToClient, 10);
            scan_duration(0.3);
            upstream_invalid_reply("list");
            upstream_invalid_reply("bogus");
            session_panicked();
            open
        });
        let text = handle.render();
        for line in [
            "popsift_sessions_active 1",
            "popsift_sessions_total{result=\"auth_failed\"} 1",
            "popsift_sessions_total{result=\"ok\"} 0",
            "popsift_messages_total{verdict=\"spam\",action=\"hide\"} 1",
            "popsift_bytes_total{direction=\"to_client\"} 10",
            "popsift_scan_duration_seconds_bucket{le=\"0.25\"} 0",
            "popsift_scan_duration_seconds_bucket{le=\"0.5\"} 1",
            "popsift_scan_duration_seconds_count 1",
            "popsift_upstream_invalid_replies_total{reply=\"list\"} 1",
            "popsift_upstream_invalid_replies_total{reply=\"stat\"} 0",
            "popsift_upstream_invalid_replies_total{reply=\"other\"} 1",
            "popsift_session_panics_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        metrics::with_local_recorder(&recorder, || drop(open));
        assert!(handle.render().lines().any(|l| l == "popsift_sessions_active 0"));
    }
}
