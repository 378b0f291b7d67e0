//! The capability list popsift shows its client (RFC 2449 §5), derived honestly from the
//! upstream's: popsift keeps what it can pass through, always adds PIPELINING (it queues
//! pipelined client commands whatever the upstream does, RFC 2449 §6.6), drops the
//! upstream's STLS (that is the upstream hop's business) and names itself in IMPLEMENTATION.
//! The client hop's own STLS and the plain-text policy are applied by [`edge_adjust`].
use crate::pop3::capa::Capability;

/// Capabilities popsift relays when the upstream has them.
const PASS_THROUGH: &[&str] =
    &["TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "EXPIRE", "LOGIN-DELAY", "UTF8"];

/// What the session learned about the upstream without or beyond CAPA.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known {
    pub top: bool,
    pub uidl: bool,
    pub logged_in: bool,
}

/// Rewrites the upstream's list (`None` when it does not answer CAPA).
pub fn rewrite(upstream: Option<&[Capability]>, known: Known) -> Vec<Capability> {
    let mut out: Vec<Capability> = match upstream {
        Some(caps) => caps.iter().filter(|c| PASS_THROUGH.contains(&c.tag.as_str())).cloned().collect(),
        None => {
            // RFC 2449 §6: with no CAPA we know only what RFC 1939 guarantees and what the
            // session saw work.
            let mut v = Vec::new();
            if !known.logged_in {
                v.push(Capability::new("USER", ""));
            }
            if known.top {
                v.push(Capability::new("TOP", ""));
            }
            if known.uidl {
                v.push(Capability::new("UIDL", ""));
            }
            v
        }
    };
    out.push(Capability::new("PIPELINING", ""));
    out.push(Capability::new("IMPLEMENTATION", concat!("popsift/", env!("CARGO_PKG_VERSION"))));
    out
}

/// Whether the upstream list carries `tag`.
pub fn has(caps: Option<&[Capability]>, tag: &str) -> bool {
    caps.is_some_and(|c| c.iter().any(|c| c.tag == tag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::capa::parse;

    #[test]
    fn dovecot_before_login() {
        let up = parse(b"CAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\nAUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN CRAM-MD5\r\n");
        let tags: Vec<String> = rewrite(Some(&up), Known::default()).into_iter().map(|c| c.tag).collect();
        assert_eq!(
            tags,
            ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "USER", "SASL", "PIPELINING", "IMPLEMENTATION"]
        );
    }

    #[test]
    fn sasl_args_and_expire_survive() {
        let up = parse(b"SASL PLAIN XOAUTH2\r\nEXPIRE 30\r\nIMPLEMENTATION Other\r\nLANG\r\n");
        let out = rewrite(Some(&up), Known::default());
        assert_eq!(out[0], Capability::new("SASL", "PLAIN XOAUTH2"));
        assert_eq!(out[1], Capability::new("EXPIRE", "30"));
        assert!(out.iter().all(|c| c.args != "Other" && c.tag != "LANG"));
        assert!(out.iter().any(|c| c.tag == "IMPLEMENTATION" && c.args.starts_with("popsift/")));
    }

    #[test]
    fn no_upstream_capa() {
        let out = rewrite(None, Known { top: true, uidl: false, logged_in: true });
        let tags: Vec<&str> = out.iter().map(|c| c.tag.as_str()).collect();
        assert_eq!(tags, ["TOP", "PIPELINING", "IMPLEMENTATION"]);
    }
}

/// The listener's client-side TLS policy, as far as the capability list shows it.
#[derive(Debug, Clone, Copy)]
pub struct EdgeCapa {
    /// STLS can be offered (`tls.mode: starttls`).
    pub starttls: bool,
    /// Plain-text logins may go over a connection without TLS.
    pub plaintext_allowed: bool,
}

impl Default for EdgeCapa {
    fn default() -> EdgeCapa {
        EdgeCapa { starttls: false, plaintext_allowed: true }
    }
}

/// Adjusts the list shown before login: STLS is offered while it can be used (RFC 2595 §4:
/// never once TLS is active, never after login), and plain-text mechanisms are hidden where
/// they would be refused (as Dovecot does).
pub fn edge_adjust(list: &mut Vec<Capability>, policy: EdgeCapa, secure: bool, logged_in: bool) {
    if logged_in {
        return;
    }
    if !secure && !policy.plaintext_allowed {
        list.retain(|c| c.tag != "USER");
        for c in list.iter_mut().filter(|c| c.tag == "SASL") {
            c.args =
                c.args.split_ascii_whitespace().filter(|m| !is_plaintext_mechanism(m)).collect::<Vec<_>>().join(" ");
        }
        list.retain(|c| !(c.tag == "SASL" && c.args.is_empty()));
    }
    if !secure && policy.starttls {
        let at = list.iter().position(|c| c.tag == "PIPELINING").unwrap_or(list.len());
        list.insert(at, Capability::new("STLS", ""));
    }
}

/// SASL mechanisms that carry the password itself (RFC 4616 PLAIN, the LOGIN draft) or a
/// bearer token: refused without TLS where plain text is.
pub fn is_plaintext_mechanism(m: &str) -> bool {
    ["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"].iter().any(|p| p.eq_ignore_ascii_case(m))
}
