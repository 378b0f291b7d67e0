//! The YAML config schema, its defaults, and `validate` into a checked [`Config`] that the
//! rest of popsift trusts without re-checking.
//!
//! ```yaml
//! listeners:
//!   - listen: 127.0.0.1:1110
//!     upstream: pop.example.com:995
//!     upstream_tls: implicit        # implicit | starttls | none (default: implicit on 995)
//!     upstream_ca: /etc/popsift/extra-ca.pem
//!     # or, instead of (or besides) `upstream`: the login names the server, HOST:USER or
//!     # HOST:PORT:USER (crate::session::upstream_from_user)
//!     # upstream_from_user: { separator: ":", allow: [pop.example.com:995, "*.example.net:995"] }
//!     # network edge (see crate::edge::settings): tls, allow_plaintext, proxy_protocol,
//!     # max_sessions_per_ip, login_failures
//! rules: rules/
//! spam_action: tag                  # allow | tag | hide | delete | quarantine
//! dry_run: false
//! metrics: 127.0.0.1:9110           # or "off"
//! state_dir: /var/lib/popsift
//! max_sessions: 256
//! timeouts: { connect: 15s, tls_handshake: 15s, greeting: 30s, upstream_reply: 120s, upstream_min_rate: 1KiB,
//!             client_idle: 10m, client_line: 60s,
//!             drain: 30s, client_tls_handshake: 15s,
//!             history_lookup: 10s, quarantine_usage: 10s }
//! scan: { header_limit: 256KiB, without_top: pass, pipelining: true, window: 1024, window_bytes: 8MiB,
//!         early_answer_after: 20s }
//! cache: { enabled: true, max_size: 256MiB, memory: 2MiB }   # header cache, <state_dir>/header-cache.redb
//! bayes: { min_spam: 20, min_ham: 20, ignore_headers: [X-Barracuda*, …], train_restored: true,
//!          own_received: { skip: 0, hosts: [] },
//!          autolearn: { enabled: false, spam_above: 12.0, ham_below: 0.1, balance: 3.0 } }
//!                                   # classifier, <state_dir>/bayes.redb
//! rules_per_user: { enabled: true, dir: rules/users, max_files: 16, max_bytes: 1MiB }
//!                                   # <dir>/<user>@<upstream host>/*.yaml + allowlist.txt
//! tag: { strip_existing: true, subject_prefix: "[SPAM] ", ham_status: false }
//! quarantine: { dir: /var/lib/popsift/quarantine, on_failure: hide, max_size: 64MiB,
//!               quota_size: 1GiB, quota_messages: 10000 }   # quota per user folder
//! ```
//! Command-line flags override the first listener (or define it when the file has none).
//!
//! Defaults live in one place per section: the `Default` impls of the checked settings
//! (and the `DEFAULT_*` constants); durations and sizes are parsed while the file is read
//! ([`DurationValue`], [`SizeValue`]), so a bad one is reported with file:line:col; the
//! command line arrives as an [`Overrides`] value applied before anything is checked.
//! Where the file itself is found is [`crate::locate`]'s business.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::rules::Action;

/// Upstream connection security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// TLS from the first byte (POP3S, usually port 995).
    Implicit,
    /// Plain connection upgraded with STLS (RFC 2595); refuses to log in if STLS fails.
    Starttls,
    /// No TLS at all. Only sensible on loopback or a trusted network.
    None,
}

/// Values that override the config file (from the command line, or set by a test), applied
/// by [`Config::build`] before anything is checked. `None`/`false` leaves the file's value.
/// The listener fields override the file's first listener (or define it when the file has none).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub upstream_tls: Option<UpstreamTls>,
    pub upstream_ca: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub metrics: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub dry_run: bool,
    /// `--ui ADDR`: the review page's address (see [`UiSettings`]).
    pub ui: Option<SocketAddr>,
}

/// A duration written `500ms`, `30s`, `10m`, `1h` or a bare number of seconds, checked when
/// the file is parsed (so a bad one is reported with its file:line:col).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

/// A size written `256KiB`, `10MB`, `2 GiB` or a bare number of octets, checked when the
/// file is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeValue(pub u64);

/// A duration, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOrOff(pub Option<Duration>);

/// Accepts a YAML string or number and parses its text with `parse`.
struct TextVisitor<T>(fn(&str) -> Result<T, String>, &'static str);

impl<T> serde::de::Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.0)(v).map_err(E::custom)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(|t| parse_duration(t).map(DurationValue), "a duration such as 30s or 10m"))
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor(|t| parse_size(t).map(SizeValue), "a size such as 256KiB or 10MB"))
    }
}

impl<'de> Deserialize<'de> for DurationOrOff {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn parse(t: &str) -> Result<DurationOrOff, String> {
            if t.trim().eq_ignore_ascii_case("off") {
                return Ok(DurationOrOff(None));
            }
            parse_duration(t).map(|d| DurationOrOff(Some(d)))
        }
        d.deserialize_any(TextVisitor(parse, "a duration such as 20s, or off"))
    }
}

/// Default address clients connect to.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1110";
/// Default for `max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// Default for `spam_action`.
pub const DEFAULT_SPAM_ACTION: Action = Action::Tag;
/// Default metrics endpoint.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9110";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    ParseNoLocation { path: PathBuf, message: String },
    #[error("no upstream: give --upstream HOST:PORT or a `listeners:` entry in the config file")]
    NoUpstream,
    #[error("listener {index}: upstream {upstream:?}: {reason}")]
    BadUpstream { index: usize, upstream: String, reason: String },
    #[error("{field}: {reason}")]
    BadValue { field: String, reason: String },
}

/// The file as written by the user.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub listeners: Vec<ListenerFile>,
    pub rules: Option<PathBuf>,
    pub spam_action: Option<Action>,
    pub dry_run: Option<bool>,
    pub metrics: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub scan: ScanFile,
    #[serde(default)]
    pub tag: TagFile,
    #[serde(default)]
    pub quarantine: QuarantineFile,
    #[serde(default)]
    pub cache: CacheFile,
    #[serde(default)]
    pub bayes: BayesFile,
    // -- per-mailbox rules (issue 14) --
    #[serde(default)]
    pub rules_per_user: RulesPerUserFile,
    #[serde(default)]
    pub store: StoreFile,
    #[serde(default)]
    pub history: HistoryFile,
    pub ui: Option<UiFile>,
}

/// `rules_per_user:`: a rules directory per mailbox layered over the global rules (see
/// [`crate::rules::users`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesPerUserFile {
    /// Default `true`; without a mailbox directory nothing changes.
    pub enabled: Option<bool>,
    /// Default: `users/` inside the global rules directory.
    pub dir: Option<PathBuf>,
    /// Most rule files per mailbox (default 16).
    pub max_files: Option<usize>,
    /// Most octets of rule and allowlist files per mailbox (default 1MiB).
    pub max_bytes: Option<SizeValue>,
}

impl RulesPerUserFile {
    /// The checked settings for the global rule path `rules`; `None` when disabled.
    pub fn settings(&self, rules: &Path) -> Result<Option<crate::rules::users::PerUserSettings>, ConfigError> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let d = crate::rules::users::PerUserSettings::defaults_for(rules);
        let max_files = self.max_files.unwrap_or(d.max_files);
        if max_files == 0 {
            return Err(ConfigError::BadValue {
                field: "rules_per_user.max_files".into(),
                reason: "must be at least 1 (use `enabled: false` to switch per-mailbox rules off)".into(),
            });
        }
        let max_bytes = self.max_bytes.map_or(d.max_bytes, |v| v.0);
        if max_bytes == 0 {
            return Err(ConfigError::BadValue {
                field: "rules_per_user.max_bytes".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Some(crate::rules::users::PerUserSettings { dir: self.dir.clone().unwrap_or(d.dir), max_files, max_bytes }))
    }
}

// ---- decision history and review page (issue 13) ----

/// `history:`: the decision history (see [`crate::store::history`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    /// `false`: record nothing (the review page then shows no decisions).
    pub enabled: Option<bool>,
    pub max_days: Option<u64>,
    pub max_per_mailbox: Option<u64>,
}

/// `ui:`: the review page (see [`crate::ui`]). Off unless `listen` (or `--ui`) is given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiFile {
    pub listen: Option<SocketAddr>,
    pub tls: Option<UiTlsFile>,
    /// An argon2 PHC string (`popsift hash-password`): this password logs in as admin.
    pub admin_password_hash: Option<String>,
    pub session_ttl: Option<DurationValue>,
    /// The whole POP3 login check of the login form (connect, greeting, USER, PASS), at
    /// most; default 30s, below the UI's 120 s connection limit.
    pub login_timeout: Option<DurationValue>,
    /// `HOST:PORT` of one configured upstream: the login form checks passwords there only.
    /// Without it, with several upstreams, the form offers them in a list.
    pub upstream: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UiTlsFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Checked `ui:` settings.
#[derive(Debug, Clone)]
pub struct UiSettings {
    pub listen: SocketAddr,
    pub tls: Option<UiTlsFile>,
    pub admin_password_hash: Option<String>,
    pub session_ttl: Duration,
    pub login_timeout: Duration,
    /// A configured upstream's `HOST:PORT` (checked against the listeners).
    pub upstream: Option<String>,
}

fn ui_settings(file: Option<UiFile>, flag: Option<SocketAddr>) -> Result<Option<UiSettings>, ConfigError> {
    let file = file.unwrap_or_default();
    let Some(listen) = flag.or(file.listen) else { return Ok(None) };
    if !listen.ip().is_loopback() && file.tls.is_none() {
        return Err(ConfigError::BadValue {
            field: "ui.listen".into(),
            reason: format!(
                "{listen} is not a loopback address: the review page carries mailbox passwords, so it needs \
                 `ui: {{tls: {{cert: FILE, key: FILE}}}}` there (or listen on 127.0.0.1)"
            ),
        });
    }
    if let Some(h) = &file.admin_password_hash {
        if argon2::PasswordHash::new(h).is_err() {
            return Err(ConfigError::BadValue {
                field: "ui.admin_password_hash".into(),
                reason: "not an argon2 hash string (make one with `popsift hash-password`)".into(),
            });
        }
    }
    Ok(Some(UiSettings {
        listen,
        tls: file.tls,
        admin_password_hash: file.admin_password_hash,
        session_ttl: file.session_ttl.map_or(Duration::from_secs(8 * 3600), |d| d.0),
        login_timeout: match file.login_timeout.map(|d| d.0) {
            None => crate::ui::auth::LOGIN_CHECK_TIMEOUT,
            Some(t) if !t.is_zero() && t < crate::ui::LIMITS.connection_lifetime => t,
            Some(_) => {
                return Err(ConfigError::BadValue {
                    field: "ui.login_timeout".into(),
                    reason: format!(
                        "must be more than 0s and less than the review page's {}s connection limit",
                        crate::ui::LIMITS.connection_lifetime.as_secs()
                    ),
                })
            }
        },
        upstream: file.upstream,
    }))
}

fn history_settings(file: &HistoryFile) -> Result<crate::store::history::HistorySettings, ConfigError> {
    let d = crate::store::history::HistorySettings::default();
    let s = crate::store::history::HistorySettings {
        enabled: file.enabled.unwrap_or(d.enabled),
        max_days: file.max_days.unwrap_or(d.max_days),
        max_per_mailbox: file.max_per_mailbox.unwrap_or(d.max_per_mailbox),
    };
    if s.max_days == 0 || s.max_per_mailbox == 0 {
        return Err(ConfigError::BadValue {
            field: "history".into(),
            reason: "max_days and max_per_mailbox must be at least 1".into(),
        });
    }
    Ok(s)
}

// ---- end of decision history and review page ----

/// `bayes:`: the header classifier (see [`crate::classify`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BayesFile {
    pub min_spam: Option<u64>,
    pub min_ham: Option<u64>,
    /// Replaces the default list of header names the tokenizer ignores.
    pub ignore_headers: Option<Vec<String>>,
    pub train_restored: Option<bool>,
    #[serde(default)]
    pub autolearn: AutolearnFile,
    #[serde(default)]
    pub own_received: OwnReceivedFile,
}

/// `bayes.own_received`: the user's own provider/fetch hops at the top of the Received
/// chain, which the tokenizer skips (see [`crate::classify::OwnHops`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnReceivedFile {
    /// The first this-many Received fields.
    pub skip: Option<usize>,
    /// Hops whose `by` host is one of these names or ends with one of these domains.
    pub hosts: Option<Vec<String>>,
}

/// `bayes.autolearn`: learning from the proxy's own confident verdicts (see
/// [`crate::classify::autolearn`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutolearnFile {
    pub enabled: Option<bool>,
    pub spam_above: Option<f64>,
    pub ham_below: Option<f64>,
    pub balance: Option<f64>,
}

impl AutolearnFile {
    /// The checked settings: thresholds finite, `ham_below < spam_above`, `balance >= 1`.
    pub fn settings(&self) -> Result<crate::classify::autolearn::AutolearnSettings, ConfigError> {
        let d = crate::classify::autolearn::AutolearnSettings::default();
        let s = crate::classify::autolearn::AutolearnSettings {
            enabled: self.enabled.unwrap_or(d.enabled),
            spam_above: self.spam_above.unwrap_or(d.spam_above),
            ham_below: self.ham_below.unwrap_or(d.ham_below),
            balance: self.balance.unwrap_or(d.balance),
        };
        let bad = |field: &str, reason: &str| ConfigError::BadValue {
            field: format!("bayes.autolearn.{field}"),
            reason: reason.to_string(),
        };
        if !s.spam_above.is_finite() || !s.ham_below.is_finite() {
            return Err(bad("spam_above", "spam_above and ham_below must be numbers"));
        }
        if s.ham_below >= s.spam_above {
            return Err(bad("ham_below", "must be below spam_above"));
        }
        if !(s.balance >= 1.0 && s.balance.is_finite()) {
            return Err(bad("balance", "must be a ratio of at least 1"));
        }
        Ok(s)
    }
}

impl BayesFile {
    /// The checked settings (every value is valid; defaults fill the gaps).
    pub fn settings(&self) -> crate::classify::BayesSettings {
        let d = crate::classify::BayesSettings::default();
        crate::classify::BayesSettings {
            min_spam: self.min_spam.unwrap_or(d.min_spam),
            min_ham: self.min_ham.unwrap_or(d.min_ham),
            ignore_headers: self.ignore_headers.clone().unwrap_or(d.ignore_headers),
            train_restored: self.train_restored.unwrap_or(d.train_restored),
            // Checked by `Config::validate` (below); unchecked values here only reach the
            // commands that never autolearn (`train`, `quarantine`).
            autolearn: self.autolearn.settings().unwrap_or_default(),
            own_received: crate::classify::OwnHops {
                skip: self.own_received.skip.unwrap_or(0),
                hosts: self.own_received.hosts.clone().unwrap_or_default(),
            },
        }
    }
}

/// `cache:`: the header cache (see [`crate::store::header_cache`]).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    pub enabled: Option<bool>,
    pub max_size: Option<SizeValue>,
    /// redb's in-memory page cache (issue 16); default 2 MiB.
    pub memory: Option<SizeValue>,
}

/// Checked header cache settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Bound on the stored bytes (keys + values); oldest entries go first.
    pub max_size: u64,
    /// `cache.memory`: bound on redb's in-memory page cache (the embedded store), which
    /// keeps the pages it read or wrote after the sessions that used them ended. `None`:
    /// 2 MiB (`store::header_cache::DEFAULT_MEMORY`, see `redb_cache_bytes` there).
    pub memory: Option<u64>,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings { enabled: true, max_size: 256 * 1024 * 1024, memory: None }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineFile {
    /// Where the quarantine Maildirs live (default `<state_dir>/quarantine`'s parent is
    /// the state dir; this names the state-like root directly).
    pub dir: Option<PathBuf>,
    pub on_failure: Option<OnFailure>,
    pub max_size: Option<SizeValue>,
    /// Per user folder: total bytes of its copies.
    pub quota_size: Option<SizeValue>,
    /// Per user folder: number of copies.
    pub quota_messages: Option<u64>,
}

/// What happens to a message whose quarantine copy could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Keep it off the client's view (still on the server, untouched).
    Hide,
    /// Show it to the client as if no rule had matched.
    Show,
}

/// Checked quarantine settings.
#[derive(Debug, Clone)]
pub struct QuarantineSettings {
    /// Directory holding one Maildir per user.
    pub dir: PathBuf,
    pub on_failure: OnFailure,
    /// Messages larger than this are not quarantined (they are handled as on failure).
    /// The copy also stops at the LIST size plus some (see
    /// [`QuarantineSettings::copy_limit`]).
    pub max_size: u64,
    /// A user folder already holding this many bytes (or `quota_messages` copies) takes no
    /// more: further quarantine candidates are handled as on failure (never deleted).
    pub quota_size: u64,
    pub quota_messages: u64,
}

impl QuarantineSettings {
    /// The defaults, for a state directory.
    pub fn defaults(state_dir: &Path) -> QuarantineSettings {
        QuarantineSettings {
            dir: state_dir.join("quarantine"),
            on_failure: OnFailure::Hide,
            max_size: 64 * 1024 * 1024,
            quota_size: 1024 * 1024 * 1024,
            quota_messages: 10_000,
        }
    }

    /// The most octets a quarantine copy may take for a message LIST announced as
    /// `list_size`: `min(max_size, list_size + 64 KiB + list_size/16)`. The slack allows
    /// for servers whose LIST size is an estimate (RFC 1939 §5 asks for the exact size, but
    /// e.g. line-ending conversion makes some servers off by a little); an upstream that
    /// sends more is misbehaving, and the copy is discarded rather than grown.
    pub fn copy_limit(&self, list_size: u64) -> u64 {
        self.max_size.min(list_size.saturating_add(64 * 1024).saturating_add(list_size / 16))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagFile {
    pub strip_existing: Option<bool>,
    pub subject_prefix: Option<String>,
    pub ham_status: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub listen: Option<SocketAddr>,
    pub upstream: Option<String>,
    pub upstream_tls: Option<UpstreamTls>,
    pub upstream_ca: Option<PathBuf>,
    // --- network edge (crate::edge::settings): client TLS, PROXY protocol, limits ---
    pub tls: Option<crate::edge::settings::ClientTlsFile>,
    pub allow_plaintext: Option<bool>,
    pub proxy_protocol: Option<crate::edge::settings::ProxyProtocolFile>,
    pub max_sessions_per_ip: Option<usize>,
    pub login_failures: Option<crate::edge::settings::LoginFailuresFile>,
    // --- end network edge ---
    /// Per-user upstream (`HOST:USER` logins); see [`UpstreamFromUserFile`].
    pub upstream_from_user: Option<UpstreamFromUserFile>,
}

/// `upstream_from_user: {separator: ":", allow: [pop.example.com:995, "*.example.net"]}`:
/// the client names its server in the user name (see
/// [`crate::session::upstream_from_user`]). Checked while the file is read, so an empty
/// `allow` or a bad entry is reported with file:line:col.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "UpstreamFromUserRaw")]
pub struct UpstreamFromUserFile {
    pub separator: String,
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamFromUserRaw {
    separator: Option<String>,
    allow: Vec<String>,
}

impl TryFrom<UpstreamFromUserRaw> for UpstreamFromUserFile {
    type Error = String;

    fn try_from(raw: UpstreamFromUserRaw) -> Result<Self, String> {
        let separator = raw.separator.unwrap_or_else(|| ":".to_string());
        crate::session::upstream_from_user::UpstreamFromUser::new(&separator, &raw.allow, None, None)
            .map_err(|e| format!("upstream_from_user: {e}"))?;
        Ok(UpstreamFromUserFile { separator, allow: raw.allow })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect: Option<DurationValue>,
    pub tls_handshake: Option<DurationValue>,
    pub greeting: Option<DurationValue>,
    pub upstream_reply: Option<DurationValue>,
    /// A size per second, e.g. `1KiB`.
    pub upstream_min_rate: Option<SizeValue>,
    pub client_idle: Option<DurationValue>,
    pub client_line: Option<DurationValue>,
    pub drain: Option<DurationValue>,
    /// The client's TLS handshake (implicit TLS, or after STLS); see crate::edge.
    pub client_tls_handshake: Option<DurationValue>,
    // --- login-time store deadlines (net::history_hooks, net::quarantine_copy) ---
    pub history_lookup: Option<DurationValue>,
    pub quarantine_usage: Option<DurationValue>,
    // --- end login-time store deadlines ---
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanFile {
    pub header_limit: Option<SizeValue>,
    pub without_top: Option<WithoutTop>,
    pub pipelining: Option<bool>,
    pub window: Option<usize>,
    pub window_bytes: Option<SizeValue>,
    /// A duration, or `off`.
    pub early_answer_after: Option<DurationOrOff>,
}

/// What to do when the upstream cannot serve `TOP` (it is optional in RFC 1939 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WithoutTop {
    /// Show the mailbox unfiltered and log a warning.
    Pass,
    /// Refuse the login with `-ERR [SYS/PERM]`: the user prefers no mail to unfiltered mail.
    Refuse,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub rules: PathBuf,
    pub spam_action: Action,
    pub dry_run: bool,
    pub metrics: Option<SocketAddr>,
    pub state_dir: PathBuf,
    pub max_sessions: usize,
    pub timeouts: Timeouts,
    pub scan: ScanSettings,
    pub tag: TagSettings,
    pub quarantine: QuarantineSettings,
    pub cache: CacheSettings,
    pub bayes: crate::classify::BayesSettings,
    /// Per-mailbox rules; `None` when switched off.
    pub rules_per_user: Option<crate::rules::users::PerUserSettings>,
    pub store: StoreSettings,
    pub history: crate::store::history::HistorySettings,
    /// The review page; `None`: off.
    pub ui: Option<UiSettings>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub listen: SocketAddr,
    /// The listener's upstream; `None` only with `upstream_from_user` (every login then
    /// names its server).
    pub upstream: Option<Upstream>,
    /// Per-user upstream (`HOST:USER` logins), when configured.
    pub upstream_from_user: Option<std::sync::Arc<crate::session::upstream_from_user::UpstreamFromUser>>,
    /// Client TLS, PROXY protocol, per-address limits (crate::edge).
    pub edge: crate::edge::settings::EdgeSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    pub ca: Option<PathBuf>,
}

impl Listener {
    /// The CA file for upstream TLS (`upstream_ca`).
    pub fn upstream_ca(&self) -> Option<&Path> {
        match (&self.upstream, &self.upstream_from_user) {
            (Some(u), _) => u.ca.as_deref(),
            (None, Some(f)) => f.ca.as_deref(),
            (None, None) => None,
        }
    }

    /// The upstream as shown in logs: the listener's, or `per-user` when logins name it.
    pub fn upstream_display(&self) -> String {
        self.upstream.as_ref().map_or_else(|| "per-user".to_string(), Upstream::display)
    }
}

impl Upstream {
    pub fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Every timeout is named after its phase; errors carry the name. Each is a deadline for a
/// whole unit (a line, a greeting, a reply), not for each read, so a peer that trickles
/// one octet at a time cannot hold a session slot (see `net::conn`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub tls_handshake: Duration,
    /// The whole greeting line.
    pub greeting: Duration,
    /// Each whole upstream status line; for a multi-line reply also the longest silence
    /// and the allowance before `upstream_min_rate` applies.
    pub upstream_reply: Duration,
    /// Octets per second a multi-line reply (RETR, TOP, LIST, UIDL, CAPA) must average
    /// beyond its `upstream_reply` allowance: a reply of N octets may take
    /// `upstream_reply + N / upstream_min_rate`. A 500 MB message at the default 1 KiB/s
    /// may take ~6 days, so slow links deliver; a server sending one octet a second is cut
    /// about `upstream_reply` after it began.
    pub upstream_min_rate: u64,
    /// Until the first octet of the client's next command. RFC 1939 §3: an autologout
    /// timer must be at least 10 minutes.
    pub client_idle: Duration,
    /// From the first octet of a client command line to its CRLF. Mail clients send a
    /// command in one write, so this is short; it stops a client that trickles a line.
    pub client_line: Duration,
    /// After SIGTERM/SIGINT: how long running sessions may take to finish before they are
    /// cut off (without UPDATE).
    pub drain: Duration,
    /// A client's whole TLS handshake (implicit TLS, or after STLS).
    pub client_tls_handshake: Duration,
    // --- login-time store deadlines (net::history_hooks, net::quarantine_copy) ---
    /// The review page's overrides lookup at login; past it, the login goes on without the
    /// owner's corrections (nothing is condemned by their absence: a "Not spam" message
    /// stays hidden this once, released messages are not shown this once).
    pub history_lookup: Duration,
    /// Reading the quarantine folder's usage (quota) at login; past it, every quarantine
    /// copy of this login fails and `quarantine.on_failure` applies (nothing is deleted).
    pub quarantine_usage: Duration,
    // --- end login-time store deadlines ---
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(15),
            tls_handshake: Duration::from_secs(15),
            greeting: Duration::from_secs(30),
            upstream_reply: Duration::from_secs(120),
            upstream_min_rate: 1024,
            client_idle: Duration::from_secs(600),
            client_line: Duration::from_secs(60),
            drain: Duration::from_secs(30),
            client_tls_handshake: crate::edge::settings::DEFAULT_CLIENT_TLS_HANDSHAKE,
            history_lookup: Duration::from_secs(10),
            quarantine_usage: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ScanSettings {
    /// Cap on the header block kept per message (the rest of a `TOP n 0` reply is discarded).
    pub header_limit: usize,
    pub without_top: WithoutTop,
    /// Pipeline scan commands when the upstream advertises PIPELINING (RFC 2449 §6.6).
    pub pipelining: bool,
    /// Most scan commands in flight at once. The default, 1024, keeps a 50 ms link busy
    /// (about 1,000 `TOP n 0` per round trip: 10,000 messages in ~10 round trips) while a
    /// batch of commands stays ~14 KB, far below the socket buffers, so popsift's writes
    /// cannot block against a server that is itself blocked writing replies.
    pub window: usize,
    /// Most header octets the login scan holds at once: `TOP` replies expected in flight
    /// (each counted as its LIST size, capped at `header_limit`), and header blocks read but
    /// not yet evaluated. Blocks are evaluated and written to the header cache in batches of
    /// about this size and then dropped, so a scan's memory does not grow with the mailbox.
    pub window_bytes: usize,
    /// When the login scan is still running after this long, the client gets its `+OK`
    /// and the scan finishes before the first command is answered (see `net::driver`).
    /// `None` (`off`): the `+OK` waits for the scan.
    pub early_answer_after: Option<Duration>,
}

/// Default for `scan.early_answer_after`: well below the 30–60 s that mail clients wait for
/// a reply by default.
pub const DEFAULT_EARLY_ANSWER_AFTER: Duration = Duration::from_secs(20);

impl Default for ScanSettings {
    fn default() -> Self {
        ScanSettings {
            header_limit: 256 * 1024,
            without_top: WithoutTop::Pass,
            pipelining: true,
            window: 1024,
            window_bytes: 8 * 1024 * 1024,
            early_answer_after: Some(DEFAULT_EARLY_ANSWER_AFTER),
        }
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        ConfigFile::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        serde_norway::from_str(text).map_err(|e| match e.location() {
            Some(loc) => ConfigError::Parse {
                path: path.to_path_buf(),
                line: loc.line(),
                column: loc.column(),
                message: e.to_string(),
            },
            None => ConfigError::ParseNoLocation { path: path.to_path_buf(), message: e.to_string() },
        })
    }
}

impl Config {
    /// Merges the file (if any) with command-line flags and checks everything.
    pub fn build(file: ConfigFile, overrides: impl Into<Overrides>) -> Result<Config, ConfigError> {
        let args = &overrides.into();
        let mut listeners_file = file.listeners;
        if listeners_file.is_empty() {
            listeners_file.push(ListenerFile::default());
        }
        // Flags override the first listener.
        {
            let first = &mut listeners_file[0];
            if args.listen.is_some() {
                first.listen = args.listen;
            }
            if args.upstream.is_some() {
                first.upstream = args.upstream.clone();
            }
            if args.upstream_tls.is_some() {
                first.upstream_tls = args.upstream_tls;
            }
            if args.upstream_ca.is_some() {
                first.upstream_ca = args.upstream_ca.clone();
            }
        }
        let mut listeners = Vec::new();
        for (index, l) in listeners_file.into_iter().enumerate() {
            let upstream = match (l.upstream, &l.upstream_from_user) {
                (Some(upstream), _) => {
                    let (host, port) = split_host_port(&upstream).map_err(|reason| ConfigError::BadUpstream {
                        index,
                        upstream: upstream.clone(),
                        reason,
                    })?;
                    let tls = l.upstream_tls.unwrap_or(if port == 995 {
                        UpstreamTls::Implicit
                    } else {
                        UpstreamTls::Starttls
                    });
                    Some(Upstream { host, port, tls, ca: l.upstream_ca.clone() })
                }
                (None, Some(_)) => None,
                (None, None) => return Err(ConfigError::NoUpstream),
            };
            let upstream_from_user = match l.upstream_from_user {
                Some(f) => {
                    let u = crate::session::upstream_from_user::UpstreamFromUser::new(
                        &f.separator,
                        &f.allow,
                        l.upstream_tls,
                        l.upstream_ca.clone(),
                    )
                    .map_err(|reason| ConfigError::BadValue {
                        field: format!("listeners[{index}].upstream_from_user"),
                        reason,
                    })?;
                    Some(std::sync::Arc::new(u.with_fallback(upstream.clone())))
                }
                None => None,
            };
            let listen = match l.listen {
                Some(a) => a,
                None if index == 0 => DEFAULT_LISTEN.parse().expect("constant address"),
                None => {
                    return Err(ConfigError::BadValue {
                        field: format!("listeners[{index}].listen"),
                        reason: "required for every listener but the first".into(),
                    })
                }
            };
            let edge = crate::edge::settings::EdgeFile {
                tls: l.tls,
                allow_plaintext: l.allow_plaintext,
                proxy_protocol: l.proxy_protocol,
                max_sessions_per_ip: l.max_sessions_per_ip,
                login_failures: l.login_failures,
            }
            .check(index)?;
            listeners.push(Listener { listen, upstream, upstream_from_user, edge });
        }
        for (i, a) in listeners.iter().enumerate() {
            if listeners[..i].iter().any(|b| b.listen == a.listen) {
                return Err(ConfigError::BadValue {
                    field: format!("listeners[{i}].listen"),
                    reason: format!("{} is used by another listener", a.listen),
                });
            }
        }
        let metrics_text = args.metrics.clone().or(file.metrics).unwrap_or_else(|| DEFAULT_METRICS.to_string());
        let metrics = if metrics_text.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(metrics_text.parse().map_err(|_| ConfigError::BadValue {
                field: "metrics".into(),
                reason: format!("{metrics_text:?} is not an ADDR:PORT or \"off\""),
            })?)
        };
        let t = file.timeouts;
        let d = Timeouts::default();
        let timeouts = Timeouts {
            connect: t.connect.map_or(d.connect, |v| v.0),
            tls_handshake: t.tls_handshake.map_or(d.tls_handshake, |v| v.0),
            greeting: t.greeting.map_or(d.greeting, |v| v.0),
            upstream_reply: t.upstream_reply.map_or(d.upstream_reply, |v| v.0),
            upstream_min_rate: match t.upstream_min_rate {
                Some(SizeValue(0)) => {
                    return Err(ConfigError::BadValue {
                        field: "timeouts.upstream_min_rate".into(),
                        reason: "must be at least 1 octet per second".into(),
                    })
                }
                Some(v) => v.0,
                None => d.upstream_min_rate,
            },
            client_idle: t.client_idle.map_or(d.client_idle, |v| v.0),
            client_line: t.client_line.map_or(d.client_line, |v| v.0),
            drain: t.drain.map_or(d.drain, |v| v.0),
            client_tls_handshake: t.client_tls_handshake.map_or(d.client_tls_handshake, |v| v.0),
            history_lookup: t.history_lookup.map_or(d.history_lookup, |v| v.0),
            quarantine_usage: t.quarantine_usage.map_or(d.quarantine_usage, |v| v.0),
        };
        let s = file.scan;
        let ds = ScanSettings::default();
        let header_limit = s.header_limit.map_or(ds.header_limit as u64, |v| v.0);
        if !(1024..=64 * 1024 * 1024).contains(&header_limit) {
            return Err(ConfigError::BadValue {
                field: "scan.header_limit".into(),
                reason: "must be between 1KiB and 64MiB".into(),
            });
        }
        let window = s.window.unwrap_or(ds.window);
        if window == 0 || window > 4096 {
            return Err(ConfigError::BadValue {
                field: "scan.window".into(),
                reason: "must be between 1 and 4096".into(),
            });
        }
        let window_bytes = s.window_bytes.map_or(ds.window_bytes as u64, |v| v.0);
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&window_bytes) {
            return Err(ConfigError::BadValue {
                field: "scan.window_bytes".into(),
                reason: "must be between 64KiB and 1GiB".into(),
            });
        }
        let early_answer_after = s.early_answer_after.map_or(ds.early_answer_after, |v| v.0);
        let scan = ScanSettings {
            header_limit: header_limit as usize,
            without_top: s.without_top.unwrap_or(ds.without_top),
            pipelining: s.pipelining.unwrap_or(ds.pipelining),
            window,
            window_bytes: window_bytes as usize,
            early_answer_after,
        };
        let dc = CacheSettings::default();
        let cache = CacheSettings {
            enabled: file.cache.enabled.unwrap_or(dc.enabled),
            max_size: file.cache.max_size.map_or(dc.max_size, |v| v.0),
            memory: file.cache.memory.map(|v| v.0).or(dc.memory),
        };
        let max_sessions = file.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            return Err(ConfigError::BadValue { field: "max_sessions".into(), reason: "must be at least 1".into() });
        }
        let state_dir = args.state_dir.clone().or(file.state_dir).unwrap_or_else(default_state_dir);
        let mut bayes = file.bayes.settings();
        bayes.autolearn = file.bayes.autolearn.settings()?;
        let history = history_settings(&file.history)?;
        let ui = ui_settings(file.ui, args.ui)?;
        if let Some(up) = ui.as_ref().and_then(|u| u.upstream.as_deref()) {
            if !listeners.iter().any(|l| l.upstream_display() == up) {
                let known: Vec<String> = listeners.iter().map(|l| l.upstream_display()).collect();
                return Err(ConfigError::BadValue {
                    field: "ui.upstream".into(),
                    reason: format!("{up:?} is not the upstream of any listener (they are: {})", known.join(", ")),
                });
            }
        }
        let dt = TagSettings::default();
        let q = file.quarantine;
        let dq = QuarantineSettings::defaults(&state_dir);
        let quarantine = QuarantineSettings {
            dir: q.dir.unwrap_or(dq.dir),
            on_failure: q.on_failure.unwrap_or(dq.on_failure),
            max_size: q.max_size.map_or(dq.max_size, |v| v.0),
            quota_size: q.quota_size.map_or(dq.quota_size, |v| v.0),
            quota_messages: q.quota_messages.unwrap_or(dq.quota_messages),
        };
        let rules = args.rules.clone().or(file.rules).unwrap_or_else(|| PathBuf::from(crate::locate::RULES_DIR));
        let rules_per_user = file.rules_per_user.settings(&rules)?;
        Ok(Config {
            listeners,
            rules,
            spam_action: file.spam_action.unwrap_or(DEFAULT_SPAM_ACTION),
            dry_run: args.dry_run || file.dry_run.unwrap_or(false),
            metrics,
            state_dir,
            max_sessions,
            timeouts,
            scan,
            tag: TagSettings {
                strip_existing: file.tag.strip_existing.unwrap_or(dt.strip_existing),
                subject_prefix: file.tag.subject_prefix.or(dt.subject_prefix).filter(|p| !p.is_empty()),
                ham_status: file.tag.ham_status.unwrap_or(dt.ham_status),
            },
            quarantine,
            cache,
            bayes,
            rules_per_user,
            store: file.store.settings()?,
            history,
            ui,
        })
    }
}

// --- store backend (issue 15) ---------------------------------------------------------------

/// `store:`: where the shared state lives (see [`crate::store`]). `backend: redb` (the
/// default) keeps everything in files under `state_dir`; `backend: redis` puts the header
/// cache, the quarantine and the classifier model into one Redis, so several popsift
/// instances behind a load balancer serve every mailbox alike.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub backend: Option<StoreBackend>,
    pub redis: Option<RedisFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Redb,
    Redis,
}

/// `store.redis:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`, `redis+unix://`).
    pub url: Option<String>,
    pub key_prefix: Option<String>,
    pub connect_timeout: Option<DurationValue>,
    pub command_timeout: Option<DurationValue>,
}

/// Checked `store:` settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreSettings {
    /// `None`: the embedded redb files (the default).
    pub redis: Option<RedisSettings>,
}

/// Checked `store.redis:` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    /// Every key starts with `<key_prefix>:` (default `popsift`), so one Redis can hold
    /// several independent deployments.
    pub key_prefix: String,
    /// Bound on establishing a connection (TCP + AUTH + the durability check).
    pub connect_timeout: Duration,
    /// Bound on every command (or pipeline) once connected.
    pub command_timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    /// The URL may carry a password: only its host part is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redacted_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// A Redis URL with any `user:password@` part replaced by `***@` (for logs).
pub fn redacted_url(url: &str) -> String {
    // `redis+unix://` and `unix://` URLs carry the password as a query parameter (`?pass=…`):
    // the query is never shown.
    let (url, query) = match url.split_once('?') {
        Some((u, _)) => (u, "?***"),
        None => (url, ""),
    };
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}{query}", &url[..s + 3], &url[at..]),
        _ => format!("{url}{query}"),
    }
}

impl StoreFile {
    /// The checked settings (also used by the CLI tools, which need no listener).
    pub fn settings(&self) -> Result<StoreSettings, ConfigError> {
        let bad = |field: &str, reason: String| ConfigError::BadValue { field: format!("store.{field}"), reason };
        let backend = self.backend.unwrap_or(StoreBackend::Redb);
        if backend == StoreBackend::Redb {
            return Ok(StoreSettings { redis: None });
        }
        let r = self.redis.as_ref().ok_or_else(|| bad("redis", "required with `backend: redis`".into()))?;
        let url = r.url.clone().ok_or_else(|| bad("redis.url", "required with `backend: redis`".into()))?;
        if !["redis://", "rediss://", "redis+unix://", "unix://"].iter().any(|s| url.starts_with(s)) {
            return Err(bad(
                "redis.url",
                format!("{:?} is not a redis://, rediss:// or redis+unix:// URL", redacted_url(&url)),
            ));
        }
        let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "popsift".into());
        if key_prefix.is_empty() || key_prefix.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(bad("redis.key_prefix", "must be non-empty, without spaces or control characters".into()));
        }
        let connect_timeout = r.connect_timeout.map_or(Duration::from_secs(2), |v| v.0);
        let command_timeout = r.command_timeout.map_or(Duration::from_secs(1), |v| v.0);
        for (field, d) in [("redis.connect_timeout", connect_timeout), ("redis.command_timeout", command_timeout)] {
            if d.is_zero() || d > Duration::from_secs(600) {
                return Err(bad(field, "must be between 1ms and 10m".into()));
            }
        }
        Ok(StoreSettings { redis: Some(RedisSettings { url, key_prefix, connect_timeout, command_timeout }) })
    }
}

// --- end of store backend ---------------------------------------------------------------------

/// `$XDG_STATE_HOME/popsift`, else `~/.local/state/popsift`, else `./popsift-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("popsift");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/popsift");
    }
    PathBuf::from("popsift-state")
}

/// Splits `host:port` (IPv6 as `[::1]:110`).
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or("expected [IPv6]:PORT")?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or("expected HOST:PORT")?
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    let port: u16 = port.parse().map_err(|_| format!("bad port {port:?}"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    Ok((host.to_string(), port))
}

/// Parses `500ms`, `30s`, `10m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 10m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown duration unit {u:?} (ms, s, m, h)")),
    };
    if !(0.0..=86400.0 * 7.0).contains(&secs) || secs == 0.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `256KiB`, `10MB`, `1024`, `2 GiB` (KB/MB/GB are decimal, KiB/MiB/GiB binary).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 256KiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => return Err(format!("unknown size unit {u:?}")),
    };
    Ok((n * mult) as u64)
}

// --- Tagging settings (moved from session::tag so that config imports no session code) ---

/// Tagging settings (config `tag:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSettings {
    /// Remove `X-Spam-*` fields the message already carries (forged by the sender or added by
    /// another filter) before adding ours.
    pub strip_existing: bool,
    /// Prefix for the Subject of spam, e.g. `[SPAM] `. Off by default.
    pub subject_prefix: Option<String>,
    /// Add `X-Spam-Status: No, …` to ham too.
    pub ham_status: bool,
}

impl Default for TagSettings {
    fn default() -> Self {
        TagSettings { strip_existing: true, subject_prefix: None, ham_status: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Overrides {
        Overrides::default()
    }

    #[test]
    fn flags_alone() {
        let mut a = args();
        a.upstream = Some("pop.example.com:995".into());
        let c = Config::build(ConfigFile::default(), a.clone()).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.listeners[0].upstream.as_ref().unwrap().tls, UpstreamTls::Implicit);
        a.upstream = Some("pop.example.com:110".into());
        let c = Config::build(ConfigFile::default(), a.clone()).unwrap();
        assert_eq!(c.listeners[0].upstream.as_ref().unwrap().tls, UpstreamTls::Starttls);
        assert_eq!(c.metrics.unwrap().to_string(), DEFAULT_METRICS);
        assert_eq!(c.timeouts.client_idle, Duration::from_secs(600));
    }

    // --- store backend (issue 15) ---
    #[test]
    fn store_block_defaults_validation_and_locations() {
        let p = Path::new("c.yaml");
        let f = ConfigFile::parse("store:\n  backend: redis\n  redis:\n    url: redis://:secret@10.0.0.5:6379/2\n    command_timeout: 250ms\n", p).unwrap();
        let s = f.store.settings().unwrap().redis.unwrap();
        assert_eq!(
            (s.key_prefix.as_str(), s.command_timeout, s.connect_timeout),
            ("popsift", Duration::from_millis(250), Duration::from_secs(2))
        );
        assert!(!format!("{s:?}").contains("secret"), "the password never reaches a log: {s:?}");
        assert_eq!(redacted_url("redis://:secret@h:1"), "redis://***@h:1");
        assert_eq!(redacted_url("redis+unix:///run/redis.sock?db=1&pass=secret"), "redis+unix:///run/redis.sock?***");
        assert!(ConfigFile::default().store.settings().unwrap().redis.is_none(), "redb is the default");
        let bad = |t: &str| ConfigFile::parse(t, p).and_then(|f| f.store.settings()).unwrap_err().to_string();
        assert!(bad("store:\n  backend: redis\n").contains("store.redis"));
        assert!(bad("store:\n  backend: redis\n  redis: {}\n").contains("store.redis.url"));
        assert!(bad("store:\n  backend: redis\n  redis:\n    url: http://x\n").contains("not a redis://"));
        assert!(
            bad("store:\n  backend: redis\n  redis:\n    url: redis://x\n    key_prefix: ''\n").contains("key_prefix")
        );
        // Typos are reported with file:line:col.
        assert!(
            bad("store:\n  backend: memcached\n").starts_with("c.yaml:2:"),
            "{}",
            bad("store:\n  backend: memcached\n")
        );
        assert!(bad("store:\n  redis:\n    urll: x\n").starts_with("c.yaml:3:"));
    }

    #[test]
    fn bayes_autolearn_and_own_received() {
        let build = |yaml: &str| {
            let f: ConfigFile = serde_norway::from_str(yaml).unwrap();
            let mut a = args();
            a.upstream = Some("pop.example.com:995".into());
            Config::build(f, a)
        };
        let c = build("bayes: {}").unwrap();
        assert!(!c.bayes.autolearn.enabled);
        let c = build("bayes: {autolearn: {enabled: true, spam_above: 9, balance: 2}, own_received: {skip: 2, hosts: [mx.example.net]}}").unwrap();
        assert_eq!(
            (c.bayes.autolearn.enabled, c.bayes.autolearn.spam_above, c.bayes.autolearn.ham_below),
            (true, 9.0, 0.1)
        );
        assert_eq!(c.bayes.autolearn.balance, 2.0);
        assert_eq!(c.bayes.own_received, crate::classify::OwnHops { skip: 2, hosts: vec!["mx.example.net".into()] });
        for (bad, field) in [
            ("{spam_above: 1, ham_below: 1}", "bayes.autolearn.ham_below"),
            ("{balance: 0.5}", "bayes.autolearn.balance"),
            ("{spam_above: .nan}", "bayes.autolearn.spam_above"),
        ] {
            match build(&format!("bayes: {{autolearn: {bad}}}")) {
                Err(ConfigError::BadValue { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_upstream_is_an_error() {
        assert!(matches!(Config::build(ConfigFile::default(), args()), Err(ConfigError::NoUpstream)));
    }

    #[test]
    fn upstream_from_user_makes_upstream_optional_and_needs_an_allow_list() {
        let text = "listeners:\n  - listen: 127.0.0.1:1110\n    upstream_from_user: { separator: '#', allow: [pop.a.example:995, '*.b.example'] }\n";
        let c = Config::build(ConfigFile::parse(text, Path::new("p.yaml")).unwrap(), Overrides::default()).unwrap();
        let l = &c.listeners[0];
        assert!(l.upstream.is_none());
        let from_user = l.upstream_from_user.as_ref().unwrap();
        assert_eq!(from_user.route("x.b.example#u").unwrap().upstream.display(), "x.b.example:110");
        // Errors carry file:line:col.
        for (text, want) in [
            ("listeners:\n  - listen: 127.0.0.1:1110\n    upstream_from_user: { allow: [] }\n", "allow must list"),
            ("listeners:\n  - listen: 127.0.0.1:1110\n    upstream_from_user: { separator: ':' }\n", "allow"),
            ("listeners:\n  - listen: 127.0.0.1:1110\n    upstream_from_user:\n      allow: ['h:0']\n", "bad port"),
            (
                "listeners:\n  - listen: 127.0.0.1:1110\n    upstream_from_user: { allow: [h:1], sep: ':' }\n",
                "unknown field",
            ),
        ] {
            let e = ConfigFile::parse(text, Path::new("p.yaml")).unwrap_err();
            let shown = e.to_string();
            assert!(matches!(e, ConfigError::Parse { line: 2.., .. }), "{text}: {shown}");
            assert!(shown.starts_with("p.yaml:") && shown.contains(want), "{shown}");
        }
    }

    #[test]
    fn file_with_several_listeners_and_flag_override() {
        let text = "listeners:\n  - upstream: a.example:110\n    upstream_tls: none\n  - listen: 127.0.0.1:1111\n    upstream: b.example:995\nmetrics: 'off'\ntimeouts:\n  client_idle: 15m\nscan:\n  header_limit: 64KiB\n";
        let f = ConfigFile::parse(text, Path::new("p.yaml")).unwrap();
        let mut a = args();
        a.listen = Some("127.0.0.1:2110".parse().unwrap());
        let c = Config::build(f, a.clone()).unwrap();
        assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:2110");
        assert_eq!(c.listeners[0].upstream.as_ref().unwrap().tls, UpstreamTls::None);
        assert_eq!(c.listeners[1].upstream.as_ref().unwrap().tls, UpstreamTls::Implicit);
        assert!(c.metrics.is_none());
        assert_eq!(c.timeouts.client_idle, Duration::from_secs(900));
        assert_eq!(c.scan.header_limit, 65536);
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = ConfigFile::parse("rules: x\nlistenrs: []\n", Path::new("p.yaml")).unwrap_err();
        match err {
            ConfigError::Parse { line, column, message, .. } => {
                assert_eq!(line, 2);
                assert_eq!(column, 1);
                assert!(message.contains("listenrs"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("0").is_err());
        assert_eq!(parse_size("256KiB").unwrap(), 262144);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn quarantine_quota_and_copy_limit() {
        let mut a = args();
        a.upstream = Some("h:110".into());
        let c = Config::build(ConfigFile::parse("", Path::new("p.yaml")).unwrap(), a.clone()).unwrap();
        assert_eq!((c.quarantine.quota_size, c.quarantine.quota_messages), (1 << 30, 10_000));
        let text = "quarantine: { quota_size: 2MiB, quota_messages: 5, max_size: 1MiB }\n";
        let c = Config::build(ConfigFile::parse(text, Path::new("p.yaml")).unwrap(), a.clone()).unwrap();
        assert_eq!((c.quarantine.quota_size, c.quarantine.quota_messages), (2 << 20, 5));
        assert_eq!(c.quarantine.copy_limit(100), 100 + 64 * 1024 + 6);
        assert_eq!(c.quarantine.copy_limit(50 << 20), 1 << 20, "never above max_size");
        let e = ConfigFile::parse("quarantine: { quota_size: lots }\n", Path::new("p.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("p.yaml:1:27: quarantine.quota_size: \"lots\" is not a size"), "{e}");
    }

    #[test]
    fn cache_and_early_answer() {
        let mut a = args();
        a.upstream = Some("h:110".into());
        let c = Config::build(ConfigFile::default(), a.clone()).unwrap();
        assert_eq!(c.cache, CacheSettings { enabled: true, max_size: 256 * 1024 * 1024, memory: None });
        assert_eq!(c.scan.early_answer_after, Some(DEFAULT_EARLY_ANSWER_AFTER));
        let text = "cache: { enabled: false, max_size: 1MiB, memory: 4MiB }\nscan: { early_answer_after: 'off' }\n";
        let c = Config::build(ConfigFile::parse(text, Path::new("p.yaml")).unwrap(), a.clone()).unwrap();
        assert_eq!(c.cache, CacheSettings { enabled: false, max_size: 1024 * 1024, memory: Some(4 << 20) });
        assert_eq!(c.scan.early_answer_after, None);
        let text = "scan: { early_answer_after: 1500ms }\n";
        let c = Config::build(ConfigFile::parse(text, Path::new("p.yaml")).unwrap(), a.clone()).unwrap();
        assert_eq!(c.scan.early_answer_after, Some(Duration::from_millis(1500)));
        assert!(ConfigFile::parse("cache: { size: 1 }\n", Path::new("p.yaml")).is_err(), "unknown keys refused");
        let e = ConfigFile::parse("scan: { early_answer_after: soon }\n", Path::new("p.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("p.yaml:1:29: scan.early_answer_after:"), "{e}");
    }

    #[test]
    fn phase_deadlines_and_scan_window_bytes() {
        let mut a = args();
        a.upstream = Some("h:110".into());
        let c = Config::build(ConfigFile::default(), a.clone()).unwrap();
        assert_eq!((c.timeouts.client_line, c.timeouts.upstream_min_rate), (Duration::from_secs(60), 1024));
        assert_eq!(c.scan.window_bytes, 8 * 1024 * 1024);
        let text = "timeouts: { client_line: 3s, upstream_min_rate: 2KiB }\nscan: { window_bytes: 1MiB }\n";
        let c = Config::build(ConfigFile::parse(text, Path::new("p.yaml")).unwrap(), a.clone()).unwrap();
        assert_eq!((c.timeouts.client_line, c.timeouts.upstream_min_rate), (Duration::from_secs(3), 2048));
        assert_eq!(c.scan.window_bytes, 1024 * 1024);
        for (bad, field) in [
            ("timeouts: { upstream_min_rate: 0 }\n", "timeouts.upstream_min_rate"),
            ("timeouts: { client_line: 0s }\n", "timeouts.client_line"),
            ("scan: { window_bytes: 1KiB }\n", "scan.window_bytes"),
        ] {
            // Bad text fails while parsing, with its location; a bad value while checking.
            let e = match ConfigFile::parse(bad, Path::new("p.yaml")) {
                Ok(f) => Config::build(f, a.clone()).unwrap_err(),
                Err(e) => {
                    assert!(e.to_string().starts_with("p.yaml:1:"), "{e}");
                    e
                }
            };
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("[::1]:110").unwrap(), ("::1".into(), 110));
        assert_eq!(split_host_port("h:995").unwrap(), ("h".into(), 995));
        assert!(split_host_port("h").is_err());
        assert!(split_host_port(":1").is_err());
    }
}
