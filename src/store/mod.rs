//! On-disk state under the state directory.
//!
//! - [`quarantine`]: one Maildir per user (written with fsync before any DELE, digest-checked,
//!   bounded, with a per-user quota).
//! - [`header_cache`]: header blocks by (upstream, user, UIDL), so a login fetches only new ones.
//! - [`history`]: the decision history and the review page's overrides and releases.
//! - [`verdict_memo`]: in memory, what those headers evaluated to under the current rules.
//!
//! Each kind of state sits behind one interface with the embedded store as default and a
//! shared one on Redis (`store.backend: redis`, [`redis`]) for several instances:
//! [`header_cache::HeaderStore`] ([`redis_cache`]), the quarantine's backends
//! ([`quarantine::Quarantine::for_config`], [`redis_quarantine`]), and the classifier's
//! [`crate::classify::ModelStore`] ([`redis_model`]), the decision history with the review
//! page's releases and overrides ([`history::History`], [`redis_history`]). Nothing above
//! `store/` knows which one runs. Each Redis store holds [`redis::shared`]'s connection, keys
//! under `<prefix>:<kind>:`, every call through [`redis::Redis::query`] (bounded, counted,
//! circuit breaker with backoff).

pub mod header_cache;
pub mod history;
pub mod history_codec;
pub mod quarantine;
pub mod redis;
pub mod redis_cache;
pub mod redis_history;
pub mod redis_model;
pub mod redis_quarantine;
pub mod release;
pub mod verdict_memo;
pub mod wire;
