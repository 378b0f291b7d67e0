//! Per-user upstream (POPFile's convention): the client names its mail server in the user
//! name, `HOST:USER` or `HOST:PORT:USER` (the separator is configurable, e.g. `#` for user
//! names that hold `:`), and popsift logs in to that server as `USER`.
//!
//! This module decides, without I/O, whether a name may be followed:
//! - [`UpstreamFromUser::route`] splits the name and checks it against the listener's
//!   `allow` list (`host:port` entries and `*.domain` patterns; an entry without a port
//!   allows the default port only: 995 when the listener's `upstream_tls` is `implicit`,
//!   else 110). Anything else is refused before any connection is attempted: popsift is
//!   never an open relay.
//! - [`UpstreamFromUser::addresses_allowed`] is the second check, once the name resolved:
//!   a loopback, private (RFC 1918, ULA `fc00::/7`), link-local, unspecified, CGNAT
//!   (`100.64.0.0/10`) or IPv4-mapped such address is refused unless the host was listed
//!   exactly as written (SSRF through a `*.domain` pattern pointing at an internal address).
//!   The caller connects only to the addresses checked here (no second resolution).
//!
//! APOP (RFC 1939 §7) and CRAM-MD5 (RFC 2195) cannot work on such a listener: their
//! greeting timestamp or challenge would go out before popsift knows the server.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::cli::UpstreamTls;
use crate::config::Upstream;

/// Longest host name (RFC 1035 §2.3.4, in its dotted text form).
pub const MAX_HOST: usize = 253;

/// One `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allow {
    /// `host:port`, compared case-insensitively with the host as the client wrote it.
    Exact { host: String, port: u16 },
    /// `*.domain[:port]`: any name ending in `.domain` (not `domain` itself).
    Domain { suffix: String, port: u16 },
}

/// A listener's `upstream_from_user` settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFromUser {
    pub separator: String,
    pub allow: Vec<Allow>,
    /// The listener's `upstream_tls` (default: implicit on port 995, STLS otherwise).
    pub tls: Option<UpstreamTls>,
    /// The listener's `upstream_ca`.
    pub ca: Option<PathBuf>,
    /// The listener's own `upstream`, which serves a name without a separator (without
    /// one, such a name is refused).
    pub fallback: Option<Upstream>,
}

/// Where a login goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub upstream: Upstream,
    /// The user name to log in with at that server.
    pub user: String,
    /// The host:port was listed exactly in `allow` (internal addresses are then allowed).
    pub listed_exactly: bool,
}

/// Why a name cannot be followed (the client's `-ERR [AUTH]` text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("user name must be HOST{sep}USER or HOST{sep}PORT{sep}USER on this server")]
    NoHost { sep: String },
    #[error("empty host, port or user in the user name")]
    EmptyPart,
    #[error("host name too long (over {MAX_HOST} characters)")]
    HostTooLong,
    #[error("host name holds characters a host name cannot have")]
    BadHost,
    #[error("bad port in the user name (1-65535)")]
    BadPort,
    /// The server as named (`HOST:PORT`, well-formed), for the failed-login line.
    #[error("this mail server is not allowed here")]
    NotAllowed(String),
    #[error("this mail server resolves to an internal address, which is not allowed here")]
    Internal,
    #[error("this mail server's name could not be resolved")]
    Unresolved,
}

impl UpstreamFromUser {
    /// Checks the settings (`allow` non-empty, every entry well-formed, separator one
    /// printable non-space character); `Err` is the reason.
    pub fn new(
        separator: &str,
        allow: &[String],
        tls: Option<UpstreamTls>,
        ca: Option<PathBuf>,
    ) -> Result<UpstreamFromUser, String> {
        let mut chars = separator.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) if c.is_ascii_graphic() && c != '.' && c != '-' && c != '[' && c != ']' => {}
            _ => return Err(format!("separator {separator:?} must be one printable character other than . - [ ]")),
        }
        if allow.is_empty() {
            return Err("allow must list at least one host:port or *.domain (an empty list would refuse everyone; \
                        an open relay is never offered)"
                .into());
        }
        let mut u = UpstreamFromUser { separator: separator.to_string(), allow: Vec::new(), tls, ca, fallback: None };
        for a in allow {
            let entry = u.parse_allow(a).map_err(|e| format!("allow entry {a:?}: {e}"))?;
            u.allow.push(entry);
        }
        Ok(u)
    }

    pub fn with_fallback(self, fallback: Option<Upstream>) -> UpstreamFromUser {
        UpstreamFromUser { fallback, ..self }
    }

    fn parse_allow(&self, text: &str) -> Result<Allow, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or("unclosed [")?;
            (h, p.strip_prefix(':'))
        } else {
            match text.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err("IPv6 addresses are written [ADDR]:PORT".into()),
                None => (text, None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => Some(parse_port(p).ok_or("bad port (1-65535)")?),
        };
        let port = port.unwrap_or_else(|| self.default_port());
        if let Some(domain) = host.strip_prefix("*.") {
            check_host(domain).map_err(|e| e.to_string())?;
            return Ok(Allow::Domain { suffix: format!(".{}", domain.to_ascii_lowercase()), port });
        }
        check_host(host).map_err(|e| e.to_string())?;
        Ok(Allow::Exact { host: normal_host(host), port })
    }

    /// The port when the user name names none: 995 with implicit TLS, else 110.
    pub fn default_port(&self) -> u16 {
        if self.tls == Some(UpstreamTls::Implicit) {
            995
        } else {
            110
        }
    }

    /// Splits `HOST{sep}USER` / `HOST{sep}PORT{sep}USER` and checks the server against
    /// `allow`. A name without the separator goes to the listener's own upstream (trusted
    /// as configured), or is refused when it has none.
    pub fn route(&self, name: &str) -> Result<Route, RouteError> {
        match self.split(name)? {
            Some(r) => Ok(r),
            None => match &self.fallback {
                Some(up) => Ok(Route { upstream: up.clone(), user: name.to_string(), listed_exactly: true }),
                None => Err(RouteError::NoHost { sep: self.separator.clone() }),
            },
        }
    }

    fn split(&self, name: &str) -> Result<Option<Route>, RouteError> {
        let sep = self.separator.as_str();
        let (host, rest) = if let Some(inner) = name.strip_prefix('[') {
            // An IPv6 literal: `[::1]:110:alice`.
            let (h, r) = inner.split_once(']').ok_or(RouteError::BadHost)?;
            (h, r.strip_prefix(sep).ok_or(RouteError::BadHost)?)
        } else {
            match name.split_once(sep) {
                Some(x) => x,
                None => return Ok(None),
            }
        };
        let (port, user) = match rest.split_once(sep) {
            Some(("", _)) => return Err(RouteError::EmptyPart),
            Some((p, u)) if p.bytes().all(|b| b.is_ascii_digit()) => {
                (Some(parse_port(p).ok_or(RouteError::BadPort)?), u)
            }
            _ => (None, rest),
        };
        if host.is_empty() || user.is_empty() {
            return Err(RouteError::EmptyPart);
        }
        check_host(host)?;
        let port = port.unwrap_or_else(|| self.default_port());
        let lower = normal_host(host);
        let listed_exactly =
            self.allow.iter().any(|a| matches!(a, Allow::Exact { host: h, port: p } if *h == lower && *p == port));
        // Patterns name domains: an address literal never matches one.
        let literal = host.parse::<IpAddr>().is_ok();
        let by_pattern = !literal
            && self.allow.iter().any(
                |a| matches!(a, Allow::Domain { suffix, port: p } if *p == port && lower.ends_with(suffix.as_str())),
            );
        if !listed_exactly && !by_pattern {
            let shown =
                if literal && host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            return Err(RouteError::NotAllowed(shown));
        }
        let tls = self.tls.unwrap_or(if port == 995 { UpstreamTls::Implicit } else { UpstreamTls::Starttls });
        Ok(Some(Route {
            // The normal form: history, quarantine folder and quota and the header-cache
            // scope are keyed by `Upstream::display()`, so `POP.A.EXAMPLE:alice` must be the
            // same mailbox as `pop.a.example:alice`.
            upstream: Upstream { host: lower, port, tls, ca: self.ca.clone() },
            user: user.to_string(),
            listed_exactly,
        }))
    }

    /// The second check, on what the route's host resolved to: every address must be
    /// public unless the host was listed exactly (see the module doc).
    pub fn addresses_allowed(route: &Route, addrs: &[SocketAddr]) -> Result<(), RouteError> {
        if addrs.is_empty() {
            return Err(RouteError::Unresolved);
        }
        if !route.listed_exactly && addrs.iter().any(|a| is_internal(a.ip())) {
            return Err(RouteError::Internal);
        }
        Ok(())
    }
}

/// A host in one spelling per server: DNS names are case-insensitive (RFC 4343), so
/// lowercased; an IP literal in its canonical text form (`::0001` → `::1`, no brackets).
fn normal_host(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&p| p != 0)
}

/// A host name (letters, digits, `-`, `.`; RFC 1123 §2.1) or an IP address literal.
fn check_host(host: &str) -> Result<(), RouteError> {
    if host.is_empty() {
        return Err(RouteError::EmptyPart);
    }
    if host.len() > MAX_HOST {
        return Err(RouteError::HostTooLong);
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with('.')
        && !host.contains("..");
    if ok {
        Ok(())
    } else {
        Err(RouteError::BadHost)
    }
}

/// Addresses a name from a user must not reach unless listed exactly: loopback,
/// unspecified, private (RFC 1918, ULA), link-local, CGNAT (RFC 6598), broadcast,
/// multicast, `0.0.0.0/8`, IETF protocol assignments `192.0.0.0/24` (RFC 6890),
/// benchmarking `198.18.0.0/15` (RFC 2544), reserved `240.0.0.0/4`, deprecated site-local
/// `fec0::/10` (RFC 3879); IPv4-mapped and IPv4-compatible IPv6, NAT64 (`64:ff9b::/96`,
/// RFC 6052; `64:ff9b:1::/48`, RFC 8215) and 6to4 (`2002::/16`, RFC 3056) count as the
/// IPv4 address they embed.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let first = s[0];
    let o = ip.octets();
    let low_v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0
        // IPv4-compatible (deprecated) ::a.b.c.d
        || ip.to_ipv4().is_some_and(|v4| first == 0 && is_internal_v4(v4))
        // NAT64 well-known prefix 64:ff9b::/96: the last 32 bits are the IPv4 address.
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_internal_v4(low_v4))
        // Local-use NAT64 64:ff9b:1::/48: a translator the operator runs, internal.
        || (s[..3] == [0x64, 0xff9b, 1])
        // 6to4 2002:AABB:CCDD::/48: bits 16..48 are the IPv4 address.
        || (first == 0x2002 && is_internal_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(allow: &[&str]) -> UpstreamFromUser {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        UpstreamFromUser::new(":", &allow, None, None).unwrap()
    }

    #[test]
    fn host_user_and_host_port_user() {
        let u = u(&["pop.a.example:110", "*.b.example:995", "127.0.0.1:1110"]);
        let r = u.route("pop.a.example:alice").unwrap();
        assert_eq!(
            (r.upstream.display(), r.user.as_str(), r.listed_exactly),
            ("pop.a.example:110".into(), "alice", true)
        );
        assert_eq!(r.upstream.tls, UpstreamTls::Starttls);
        let r = u.route("mail.b.example:995:bob:x").unwrap();
        assert_eq!(
            (r.upstream.display(), r.user.as_str(), r.listed_exactly),
            ("mail.b.example:995".into(), "bob:x", false)
        );
        assert_eq!(r.upstream.tls, UpstreamTls::Implicit);
        assert_eq!(u.route("127.0.0.1:1110:carol").unwrap().user, "carol");
        assert_eq!(u.route("POP.A.EXAMPLE:alice").unwrap().upstream.host, "pop.a.example");
        assert_eq!(u.route("plainuser"), Err(RouteError::NoHost { sep: ":".into() }));
        let fallback = Upstream { host: "own.example".into(), port: 110, tls: UpstreamTls::None, ca: None };
        let r = u.clone().with_fallback(Some(fallback.clone())).route("plainuser").unwrap();
        assert_eq!((r.upstream, r.user.as_str(), r.listed_exactly), (fallback, "plainuser", true));
    }

    #[test]
    fn anything_not_listed_is_refused() {
        let u = u(&["pop.a.example:110", "*.b.example:995"]);
        for (name, shown) in [
            ("evil.example:alice", "evil.example:110"),
            ("pop.a.example:111:alice", "pop.a.example:111"),
            ("b.example:995:x", "b.example:995"),
            ("mail.b.example:x", "mail.b.example:110"),
            ("10.0.0.1:110:x", "10.0.0.1:110"),
        ] {
            assert_eq!(u.route(name), Err(RouteError::NotAllowed(shown.into())), "{name}");
        }
    }

    #[test]
    fn bad_names_are_errors_not_panics() {
        let u = u(&["pop.a.example:110"]);
        let long = format!("{}:alice", "a".repeat(254));
        let cases = [
            (":alice", RouteError::EmptyPart),
            ("pop.a.example:", RouteError::EmptyPart),
            ("pop.a.example::alice", RouteError::EmptyPart),
            ("pop.a.example:110:", RouteError::EmptyPart),
            ("pop.a.example:99999:alice", RouteError::BadPort),
            ("pop.a.example:0:alice", RouteError::BadPort),
            (long.as_str(), RouteError::HostTooLong),
            ("pop a:alice", RouteError::BadHost),
            ("[::1:alice", RouteError::BadHost),
            ("a..b:alice", RouteError::BadHost),
        ];
        for (name, want) in cases {
            assert_eq!(u.route(name), Err(want), "{name}");
        }
    }

    #[test]
    fn another_separator() {
        let allow = vec!["pop.a.example:110".to_string()];
        let u = UpstreamFromUser::new("#", &allow, None, None).unwrap();
        let r = u.route("pop.a.example#al:ice").unwrap();
        assert_eq!(r.user, "al:ice");
        assert_eq!(
            u.route("pop.a.example:alice"),
            Err(RouteError::NoHost { sep: "#".into() }),
            "':' is part of the user name here"
        );
    }

    #[test]
    fn settings_are_checked() {
        assert!(UpstreamFromUser::new(":", &[], None, None).is_err());
        for bad in ["", "::", ".", " "] {
            assert!(UpstreamFromUser::new(bad, &["h:110".into()], None, None).is_err(), "{bad:?}");
        }
        for bad in ["h:0", "h:x", "*.:110", "a b:110", "::1:110"] {
            assert!(UpstreamFromUser::new(":", &[bad.into()], None, None).is_err(), "{bad}");
        }
        let u =
            UpstreamFromUser::new(":", &["[::1]:110".into(), "*.c.example".into()], Some(UpstreamTls::Implicit), None)
                .unwrap();
        assert_eq!(u.allow[1], Allow::Domain { suffix: ".c.example".into(), port: 995 });
        assert!(u.route("[::1]:110:x").unwrap().listed_exactly);
        // A pattern never matches an address literal, however its digits end.
        let u = UpstreamFromUser::new(":", &["*.0.0.1:110".into()], None, None).unwrap();
        assert_eq!(u.route("127.0.0.1:alice"), Err(RouteError::NotAllowed("127.0.0.1:110".into())));
    }

    #[test]
    fn internal_addresses_need_an_exact_entry() {
        let u = u(&["*.example:110", "localhost:110"]);
        let via_pattern = u.route("localhost.example:alice").unwrap();
        for a in [
            "127.0.0.1:110",
            "10.1.2.3:110",
            "172.16.0.1:110",
            "192.168.1.1:110",
            "169.254.1.1:110",
            "100.64.0.1:110",
            "0.0.0.0:110",
            "[::1]:110",
            "[fd00::1]:110",
            "[fe80::1]:110",
            "[::ffff:127.0.0.1]:110",
            "[::ffff:10.0.0.1]:110",
            "[::]:110",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(UpstreamFromUser::addresses_allowed(&via_pattern, &[addr]), Err(RouteError::Internal), "{a}");
        }
        let public: SocketAddr = "93.184.216.34:110".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:110".parse().unwrap();
        assert_eq!(UpstreamFromUser::addresses_allowed(&via_pattern, &[public]), Ok(()));
        assert_eq!(UpstreamFromUser::addresses_allowed(&via_pattern, &[public, lo]), Err(RouteError::Internal));
        assert_eq!(UpstreamFromUser::addresses_allowed(&via_pattern, &[]), Err(RouteError::Unresolved));
        let exact = u.route("localhost:alice").unwrap();
        assert_eq!(UpstreamFromUser::addresses_allowed(&exact, &[lo]), Ok(()));
    }

    #[test]
    fn reserved_translated_and_site_local_ranges_are_internal() {
        for ip in [
            "192.0.0.8",
            "198.18.0.1",
            "198.19.255.254",
            "240.0.0.1",
            "255.255.255.254",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::5db8:d822",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            "fec0::1",
            "feff::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} must be internal");
        }
        for ip in [
            "192.0.1.1",
            "198.17.0.1",
            "198.20.0.1",
            "239.0.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "2001:db8::1",
            "93.184.216.34",
        ] {
            // 239/8 is multicast (internal); the others are public.
            assert_eq!(is_internal(ip.parse().unwrap()), ip.starts_with("239."), "{ip}");
        }
    }

    #[test]
    fn hosts_are_keyed_in_one_spelling() {
        let u = u(&["pop.a.example:110", "[::1]:110", "127.0.0.1:110"]);
        let a = u.route("POP.A.Example:alice").unwrap();
        assert_eq!((a.upstream.display(), a.listed_exactly), ("pop.a.example:110".into(), true));
        let b = u.route("[0:0::0001]:110:alice").unwrap();
        assert_eq!((b.upstream.host.as_str(), b.upstream.port, b.listed_exactly), ("::1", 110, true));
        assert_eq!(b.upstream.display(), u.route("[::1]:alice").unwrap().upstream.display());
    }
}
