//! The network-edge keys of one listener, as written in the YAML file and as checked:
//!
//! ```yaml
//! listeners:
//!   - listen: 0.0.0.0:995
//!     upstream: pop.example.com:995
//!     tls: { mode: implicit, cert: /etc/popsift/cert.pem, key: /etc/popsift/key.pem }
//!     allow_plaintext: false          # plain-text login without TLS (default: only on loopback)
//!     proxy_protocol: { trusted: [10.0.0.0/8, "::1"], header_timeout: 5s }
//!     max_sessions_per_ip: 20
//!     login_failures: { max: 5, window: 10m, delay: 2s, tracked: 65536 }
//! ```
//! The files named by `tls` are read at start (a missing or broken one stops popsift with
//! exit 2) and again on SIGHUP (see [`crate::edge::tls`]).
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, DurationValue};

/// `tls.mode`: how clients reach TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// TLS from the first octet (POP3S, RFC 8314 §3.3).
    Implicit,
    /// Plain POP3 upgraded by the client's STLS (RFC 2595 §4).
    Starttls,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFile {
    pub mode: ClientTlsMode,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolFile {
    #[serde(default)]
    pub trusted: Vec<String>,
    pub header_timeout: Option<DurationValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFailuresFile {
    pub max: Option<u32>,
    pub window: Option<DurationValue>,
    pub delay: Option<DurationValue>,
    pub tracked: Option<usize>,
}

/// The checked client-side TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub mode: ClientTlsMode,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An address range `ADDR/PREFIX` (or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| format!("{text:?} is not an address or ADDR/PREFIX"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix must be 0..={max}"))?,
        };
        Ok(Cidr { net, prefix })
    }

    /// Whether `ip` lies in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_eq(&n.octets(), &a.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let mut left = u32::from(prefix);
    for (x, y) in a.iter().zip(b) {
        if left == 0 {
            return true;
        }
        let bits = left.min(8);
        let mask = !(0xffu8.checked_shr(bits).unwrap_or(0));
        if x & mask != y & mask {
            return false;
        }
        left -= bits;
    }
    true
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The checked PROXY protocol settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    pub trusted: Vec<Cidr>,
    /// The whole header must arrive within this (`proxy_header` deadline).
    pub header_timeout: Duration,
}

impl ProxyProtocol {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

/// The checked login failure throttle (per client address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    /// Failed logins allowed per address within `window`; the next login attempt is refused
    /// without asking the upstream until the window has passed.
    pub max: u32,
    pub window: Duration,
    /// How long a failed (or refused) login waits before its `-ERR` (slows guessing down).
    pub delay: Duration,
    /// Most addresses remembered; beyond it the stalest are forgotten.
    pub tracked: usize,
}

impl Default for LoginFailures {
    fn default() -> Self {
        LoginFailures { max: 10, window: Duration::from_secs(600), delay: Duration::from_secs(2), tracked: 65_536 }
    }
}

/// Default deadline for a PROXY header.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default deadline for a client's TLS handshake (implicit and after STLS).
pub const DEFAULT_CLIENT_TLS_HANDSHAKE: Duration = Duration::from_secs(15);

/// Everything a listener knows about its network edge, checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeSettings {
    pub tls: Option<ClientTls>,
    /// Plain-text login (USER/PASS, AUTH PLAIN/LOGIN) without TLS: `None` means "only when
    /// the listener is on loopback" (Dovecot's `disable_plaintext_auth` default).
    pub allow_plaintext: Option<bool>,
    pub proxy_protocol: Option<ProxyProtocol>,
    /// 0: no per-address limit.
    pub max_sessions_per_ip: usize,
    pub login_failures: LoginFailures,
}

/// The edge keys of one `listeners:` entry as read from the file.
#[derive(Debug, Clone, Default)]
pub struct EdgeFile {
    pub tls: Option<ClientTlsFile>,
    pub allow_plaintext: Option<bool>,
    pub proxy_protocol: Option<ProxyProtocolFile>,
    pub max_sessions_per_ip: Option<usize>,
    pub login_failures: Option<LoginFailuresFile>,
}

impl EdgeFile {
    /// Checks the keys of listener `index`.
    pub fn check(self, index: usize) -> Result<EdgeSettings, ConfigError> {
        let bad =
            |key: &str, reason: String| ConfigError::BadValue { field: format!("listeners[{index}].{key}"), reason };
        let tls = self.tls.map(|t| ClientTls { mode: t.mode, cert: t.cert, key: t.key });
        let proxy_protocol = match self.proxy_protocol {
            None => None,
            Some(p) => {
                if p.trusted.is_empty() {
                    return Err(bad("proxy_protocol.trusted", "list at least one trusted address or range".into()));
                }
                let trusted = p
                    .trusted
                    .iter()
                    .map(|t| Cidr::parse(t).map_err(|e| bad("proxy_protocol.trusted", e)))
                    .collect::<Result<Vec<_>, _>>()?;
                let header_timeout = p.header_timeout.map_or(DEFAULT_PROXY_HEADER_TIMEOUT, |d| d.0);
                if header_timeout.is_zero() {
                    return Err(bad("proxy_protocol.header_timeout", "must be more than 0".into()));
                }
                Some(ProxyProtocol { trusted, header_timeout })
            }
        };
        let d = LoginFailures::default();
        let lf = self.login_failures.unwrap_or_default();
        let login_failures = LoginFailures {
            max: lf.max.unwrap_or(d.max),
            window: lf.window.map_or(d.window, |v| v.0),
            delay: lf.delay.map_or(d.delay, |v| v.0),
            tracked: lf.tracked.unwrap_or(d.tracked),
        };
        if login_failures.max == 0 {
            return Err(bad("login_failures.max", "must be at least 1".into()));
        }
        if login_failures.tracked == 0 {
            return Err(bad("login_failures.tracked", "must be at least 1".into()));
        }
        if login_failures.delay > Duration::from_secs(60) {
            return Err(bad("login_failures.delay", "at most 60s (a longer wait only holds session slots)".into()));
        }
        Ok(EdgeSettings {
            tls,
            allow_plaintext: self.allow_plaintext,
            proxy_protocol,
            max_sessions_per_ip: self.max_sessions_per_ip.unwrap_or(0),
            login_failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.200.1.2".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.1.1".parse().unwrap()), "v4-mapped counts as v4");
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let odd = Cidr::parse("192.168.4.0/22").unwrap();
        assert!(odd.contains("192.168.7.255".parse().unwrap()));
        assert!(!odd.contains("192.168.8.0".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/x", ""] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn empty_trusted_list_is_an_error() {
        let f = EdgeFile { proxy_protocol: Some(ProxyProtocolFile::default()), ..Default::default() };
        let e = f.check(0).unwrap_err().to_string();
        assert!(e.contains("listeners[0].proxy_protocol.trusted"), "{e}");
    }
}
