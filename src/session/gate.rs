//! The network edge's say in AUTHORIZATION, decided in the session machine (the driver only
//! performs): STLS (RFC 2595 §4), plain-text logins refused on a connection without TLS (as
//! Dovecot's `disable_plaintext_auth`), and the failed-login throttle, whose shared state
//! the machine asks about ([`Gate::CheckThrottle`] → `Need::LoginAllowed`). Refusals never
//! reach the upstream: the credentials go nowhere.
use crate::pop3::command::Command;
use crate::session::capa::{is_plaintext_mechanism, EdgeCapa};

/// The reply to STLS before the handshake (RFC 2595 §4).
pub const STLS_OK: &[u8] = b"+OK Begin TLS negotiation\r\n";
/// The reply to STLS once TLS is active (RFC 2595 §4: an error).
pub const TLS_ACTIVE: &[u8] = b"-ERR TLS is already active\r\n";
/// The reply to a plain-text login refused on an insecure connection.
pub const PLAINTEXT_REFUSED: &[u8] =
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections (use STLS or POP3S)\r\n";
/// The reply to a login attempt from an address over its failure limit.
pub const THROTTLED: &[u8] = b"-ERR [AUTH] Too many failed logins from your address; try again later\r\n";

/// Why a login failed, as logged (`reason=`) and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    /// The upstream answered `-ERR` to PASS, APOP or AUTH.
    UpstreamRefused,
    /// Refused by popsift: the address is over `login_failures.max`.
    Throttled,
    /// Refused by popsift: plain-text login on an insecure connection.
    PlaintextDisallowed,
    /// Refused by popsift: a per-user login named a server that is not allowed (or
    /// malformed, or internal); it was never contacted.
    UpstreamNotAllowed,
}

impl LoginFailure {
    pub fn label(self) -> &'static str {
        match self {
            LoginFailure::UpstreamRefused => "upstream-refused",
            LoginFailure::Throttled => "throttled",
            LoginFailure::PlaintextDisallowed => "plaintext-disallowed",
            LoginFailure::UpstreamNotAllowed => "upstream-not-allowed",
        }
    }
}

/// What to do with an AUTHORIZATION command before it is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not the edge's business: plan it as usual.
    Pass,
    /// STLS accepted: answer [`STLS_OK`], then the handshake.
    StartTls,
    /// Answer with these bytes.
    Reply(&'static [u8]),
    /// A login refused by popsift: logged as a failed login, answered with `reply`.
    Refuse { reply: &'static [u8], why: LoginFailure },
    /// A command carrying credentials: allowed only if the client's address is not
    /// throttled (shared state the performer holds).
    CheckThrottle,
}

/// Decides `cmd` for a connection with or without TLS (`secure`) under `policy`.
pub fn gate(cmd: &Command, policy: EdgeCapa, secure: bool) -> Gate {
    let plaintext_refused = !secure && !policy.plaintext_allowed;
    match cmd {
        Command::Stls => match (policy.starttls, secure) {
            (_, true) => Gate::Reply(TLS_ACTIVE),
            (true, false) => Gate::StartTls,
            (false, false) => Gate::Pass,
        },
        Command::User(_) | Command::Pass(_) if plaintext_refused => {
            Gate::Refuse { reply: PLAINTEXT_REFUSED, why: LoginFailure::PlaintextDisallowed }
        }
        Command::Auth { mechanism: Some(m), .. } if plaintext_refused && is_plaintext_mechanism(m) => {
            Gate::Refuse { reply: PLAINTEXT_REFUSED, why: LoginFailure::PlaintextDisallowed }
        }
        Command::Pass(_) | Command::Apop { .. } | Command::Auth { mechanism: Some(_), .. } => Gate::CheckThrottle,
        _ => Gate::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::command::parse;

    const STARTTLS_OFF_LOOPBACK: EdgeCapa = EdgeCapa { starttls: true, plaintext_allowed: false };

    #[test]
    fn plaintext_login_is_refused_without_tls_where_configured() {
        for line in ["USER alice", "PASS secret", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "auth login"] {
            let cmd = parse(line.as_bytes()).unwrap();
            assert!(
                matches!(
                    gate(&cmd, STARTTLS_OFF_LOOPBACK, false),
                    Gate::Refuse { why: LoginFailure::PlaintextDisallowed, .. }
                ),
                "{line}"
            );
            assert!(
                matches!(gate(&cmd, STARTTLS_OFF_LOOPBACK, true), Gate::Pass | Gate::CheckThrottle),
                "{line} over TLS"
            );
        }
        let apop = parse(b"APOP alice c4c9334bac560ecc979e58001b3e22fb").unwrap();
        assert_eq!(gate(&apop, STARTTLS_OFF_LOOPBACK, false), Gate::CheckThrottle, "APOP sends no password");
        assert_eq!(gate(&parse(b"AUTH CRAM-MD5").unwrap(), STARTTLS_OFF_LOOPBACK, false), Gate::CheckThrottle);
        let allowed = EdgeCapa { plaintext_allowed: true, ..STARTTLS_OFF_LOOPBACK };
        assert_eq!(gate(&parse(b"USER alice").unwrap(), allowed, false), Gate::Pass, "USER alone carries no secret");
    }

    #[test]
    fn stls_only_before_tls_and_only_when_configured() {
        let stls = parse(b"STLS").unwrap();
        assert_eq!(gate(&stls, STARTTLS_OFF_LOOPBACK, false), Gate::StartTls);
        assert_eq!(gate(&stls, STARTTLS_OFF_LOOPBACK, true), Gate::Reply(TLS_ACTIVE));
        assert_eq!(gate(&stls, EdgeCapa::default(), false), Gate::Pass);
    }
}
