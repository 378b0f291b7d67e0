//! The AUTHORIZATION state (RFC 1939 §4) as popsift passes it through, sans-IO: fed the
//! client's lines (commands, then SASL responses while an exchange runs), it says what to
//! do with each and keeps track of whose mailbox a login opens.
//!
//! That identity keys the header cache, the verdict memo and the quarantine folder, so it
//! is taken only when popsift knows it for sure: the last USER for PASS, APOP's name, and
//! for SASL (RFC 5034) the name inside the first response of PLAIN/LOGIN/CRAM-MD5 (read
//! without ever logging the secret); any other mechanism leaves it unknown. A first
//! response whose name holds control bytes or is malformed is never relayed: the command
//! is refused, or a running exchange cancelled (RFC 5034 §4 `*`).
use crate::pop3::command::{self, Command, SaslIdentity};
use crate::session::plan::{self, err, AuthPlan};

/// The client's reply text when a SASL identity is refused.
pub const INVALID_SASL_NAME: &str = "invalid user name in SASL response";

/// What to do with a client response line during a SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Relay this line (CRLF added) upstream, then read the next reply.
    Relay(Vec<u8>),
    /// Send `*` upstream to cancel the exchange, read its reply, and answer the client
    /// [`INVALID_SASL_NAME`] as `-ERR`.
    Cancel,
}

/// The AUTHORIZATION state of one session.
#[derive(Debug, Default)]
pub struct Authorization {
    /// The name given by the last USER or APOP (for the log).
    named: Option<Box<str>>,
    /// Whose mailbox the login in progress opens, when known for sure.
    login_user: Option<Box<str>>,
    /// A SASL exchange is running with this mechanism, and its identity is still to be read
    /// from the first response. `None` once read (or when none runs): the machine keeps
    /// this for the whole session, so nothing that is over stays in it (issue 16: `Box<str>`
    /// rather than `String` here, 16 bytes instead of 24 in every idle session's future).
    sasl: Option<Box<str>>,
}

impl Authorization {
    pub fn new() -> Authorization {
        Authorization::default()
    }

    /// The name given by the last USER or APOP.
    pub fn named(&self) -> Option<&str> {
        self.named.as_deref()
    }

    /// The mailbox the login in progress opens, when popsift knows it for sure.
    pub fn login_user(&self) -> Option<&str> {
        self.login_user.as_deref()
    }

    /// Plans one client command line (without CRLF). `AuthPlan::Sasl` starts an exchange
    /// (answer its continuations with [`Authorization::sasl_response`]).
    pub fn command(&mut self, line: &[u8]) -> AuthPlan {
        self.sasl = None;
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => return AuthPlan::Reply(err(e)),
        };
        tracing::debug!(command = cmd.keyword(), "client command");
        if let Command::User(name) | Command::Apop { name, .. } = &cmd {
            self.named = Some(name.as_str().into());
        }
        let planned = plan::authorization(&cmd, line);
        match (&planned, &cmd) {
            (AuthPlan::Login(_), Command::Apop { name, .. }) => self.login_user = Some(name.as_str().into()),
            // PASS logs in the name of the last USER.
            (AuthPlan::Login(_), _) => self.login_user = self.named.clone(),
            (AuthPlan::Sasl(_), Command::Auth { mechanism: Some(mech), initial }) => {
                self.login_user = None;
                self.sasl = Some(mech.as_str().into());
                if let Some(init) = initial {
                    if !self.read_identity(init.expose()) {
                        self.sasl = None;
                        return AuthPlan::Reply(err(INVALID_SASL_NAME));
                    }
                }
            }
            _ => {}
        }
        planned
    }

    /// A client response line (without CRLF) to a SASL challenge (RFC 5034 §4).
    pub fn sasl_response(&mut self, line: &[u8]) -> SaslStep {
        if !self.read_identity(line) {
            self.sasl = None;
            return SaslStep::Cancel;
        }
        let mut l = line.to_vec();
        l.extend_from_slice(b"\r\n");
        SaslStep::Relay(l)
    }

    /// Reads the identity from the exchange's first response; false when it must not be
    /// relayed.
    fn read_identity(&mut self, response: &[u8]) -> bool {
        let Some(mech) = self.sasl.take() else { return true };
        match command::sasl_identity(&mech, response) {
            SaslIdentity::Known(name) => {
                self.login_user = Some(name.into_boxed_str());
                true
            }
            SaslIdentity::Unknown => true,
            SaslIdentity::Invalid => false,
        }
    }
}

#[cfg(test)]
mod tests {
    //! `C:` lines in, the plan out; the identity a login would open after each.
    use super::*;
    use base64::Engine;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn user_pass_logs_in_the_last_user() {
        let mut a = Authorization::new();
        assert_eq!(a.command(b"USER alice"), AuthPlan::Relay(b"USER alice\r\n".to_vec()));
        assert_eq!(a.command(b"USER bob"), AuthPlan::Relay(b"USER bob\r\n".to_vec()));
        assert_eq!(a.login_user(), None);
        assert_eq!(a.command(b"PASS secret"), AuthPlan::Login(b"PASS secret\r\n".to_vec()));
        assert_eq!((a.named(), a.login_user()), (Some("bob"), Some("bob")));
    }

    #[test]
    fn apop_names_its_mailbox() {
        let mut a = Authorization::new();
        let line = b"APOP carol c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(a.command(line), AuthPlan::Login([&line[..], b"\r\n"].concat()));
        assert_eq!(a.login_user(), Some("carol"));
    }

    #[test]
    fn sasl_plain_identity_from_the_initial_response() {
        let mut a = Authorization::new();
        a.command(b"USER alice");
        let line = format!("AUTH PLAIN {}", b64(b"\0dave\0pw"));
        assert_eq!(a.command(line.as_bytes()), AuthPlan::Sasl(format!("{line}\r\n").into_bytes()));
        assert_eq!(a.login_user(), Some("dave"));
        // Later continuation lines are opaque.
        assert_eq!(a.sasl_response(b"anything"), SaslStep::Relay(b"anything\r\n".to_vec()));
        assert_eq!(a.login_user(), Some("dave"));
    }

    #[test]
    fn sasl_login_identity_from_the_first_continuation() {
        let mut a = Authorization::new();
        assert_eq!(a.command(b"AUTH LOGIN"), AuthPlan::Sasl(b"AUTH LOGIN\r\n".to_vec()));
        assert_eq!(a.login_user(), None);
        let user = b64(b"erin");
        assert_eq!(a.sasl_response(user.as_bytes()), SaslStep::Relay(format!("{user}\r\n").into_bytes()));
        let pw = b64(b"bad\0name");
        // The second response is the password: relayed as is, whatever it holds.
        assert_eq!(a.sasl_response(pw.as_bytes()), SaslStep::Relay(format!("{pw}\r\n").into_bytes()));
        assert_eq!(a.login_user(), Some("erin"));
    }

    #[test]
    fn a_malformed_identity_is_never_relayed() {
        let mut a = Authorization::new();
        let bad = format!("AUTH PLAIN {}", b64(b"\0al\nice\0pw"));
        assert_eq!(a.command(bad.as_bytes()), AuthPlan::Reply(err(INVALID_SASL_NAME)));
        assert_eq!(a.command(b"AUTH PLAIN"), AuthPlan::Sasl(b"AUTH PLAIN\r\n".to_vec()));
        assert_eq!(a.sasl_response(b"!!not base64"), SaslStep::Cancel);
        assert_eq!(a.login_user(), None);
    }

    #[test]
    fn other_mechanisms_leave_the_mailbox_unknown() {
        let mut a = Authorization::new();
        a.command(b"USER alice");
        assert!(matches!(a.command(b"AUTH SCRAM-SHA-256"), AuthPlan::Sasl(_)));
        assert_eq!(a.sasl_response(b"biws"), SaslStep::Relay(b"biws\r\n".to_vec()));
        assert_eq!(a.login_user(), None);
    }

    #[test]
    fn everything_else_follows_the_plan() {
        let mut a = Authorization::new();
        assert_eq!(a.command(b"CAPA"), AuthPlan::Capa);
        assert_eq!(a.command(b"AUTH"), AuthPlan::RelayMultiline(b"AUTH\r\n".to_vec()));
        assert!(matches!(a.command(b"STAT"), AuthPlan::Reply(r) if r.starts_with(b"-ERR")));
        assert!(matches!(a.command(b"\xff\xfe"), AuthPlan::Reply(r) if r.starts_with(b"-ERR")));
        assert_eq!(a.command(b"QUIT"), AuthPlan::Quit);
    }
}
