//! The login scan's first requests, sent in the same write as PASS (issue 16: one round trip
//! less per login).
//!
//! When the server advertised PIPELINING before login (RFC 2449 §6.6: the client may send
//! commands without waiting for replies, also in AUTHORIZATION), the scan's STAT, LIST and
//! UIDL go out right behind `PASS`. If PASS succeeds, their replies are already on the way
//! and the scan reads them instead of asking (`net::login_scan`). If it fails, the server
//! answers each with `-ERR` (they are not valid before login, RFC 1939 §4) and popsift
//! reads and drops them; a server that closes the connection instead has refused the login,
//! nothing more.
//!
//! # Why CAPA sits between LIST and UIDL
//! Dovecot's pop3-login (2.3) drops a connection after three invalid commands in a row
//! (`-ERR Too many invalid bad commands.`, seen here): after a wrong password, `STAT LIST
//! UIDL` would cost the client its connection, and with it the retry a client makes on the
//! same connection. CAPA is valid in both states (RFC 2449 §5), so it breaks the row: at
//! most two invalid commands follow one another. Its reply is read and dropped either way.
//!
//! Only PASS gets this: APOP and SASL logins (rare, and SASL has its own exchange) keep
//! the plain order.

/// What follows `PASS …\r\n` in the same write, in this order.
pub const REQUESTS: &[u8] = b"STAT\r\nLIST\r\nCAPA\r\nUIDL\r\n";

/// The replies to [`REQUESTS`], in order: whether a `+OK` reply is multi-line (STAT's is
/// one line; LIST, CAPA and UIDL without an argument are multi-line).
pub const MULTILINE_IF_OK: [bool; 4] = [false, true, true, true];

/// Whether this login line is a `PASS` (not APOP, not a SASL exchange).
pub fn is_pass(login_line: &[u8]) -> bool {
    login_line.get(..5).is_some_and(|w| w.eq_ignore_ascii_case(b"PASS "))
}

/// Reading and dropping the replies to [`REQUESTS`] after a refused PASS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discard {
    /// Index of the next reply in [`MULTILINE_IF_OK`].
    next: usize,
    /// The reply's `+OK` line was read and its body is due.
    body: bool,
}

/// The next thing a [`Discard`] wants read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    StatusLine,
    Body,
    Done,
}

impl Discard {
    pub fn new() -> Discard {
        Discard { next: 0, body: false }
    }

    pub fn due(&self) -> Due {
        if self.body {
            Due::Body
        } else if self.next < MULTILINE_IF_OK.len() {
            Due::StatusLine
        } else {
            Due::Done
        }
    }

    /// A status line was read (`ok`: it was `+OK`).
    pub fn status(mut self, ok: bool) -> Discard {
        let multiline = MULTILINE_IF_OK.get(self.next).copied().unwrap_or(false);
        self.next += 1;
        self.body = ok && multiline;
        self
    }

    /// The body of the last `+OK` was read.
    pub fn body_read(mut self) -> Discard {
        self.body = false;
        self
    }
}

impl Default for Discard {
    fn default() -> Self {
        Discard::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_only() {
        assert!(is_pass(b"PASS x\r\n"));
        assert!(is_pass(b"pass x\r\n"));
        assert!(!is_pass(b"APOP a b\r\n"));
        assert!(!is_pass(b"PAS"));
    }

    #[test]
    fn four_refusals_then_done() {
        let mut d = Discard::new();
        for _ in 0..4 {
            assert_eq!(d.due(), Due::StatusLine);
            d = d.status(false);
        }
        assert_eq!(d.due(), Due::Done);
    }

    #[test]
    fn an_ok_capa_has_its_body_read() {
        let mut d = Discard::new().status(false).status(false);
        d = d.status(true);
        assert_eq!(d.due(), Due::Body);
        d = d.body_read();
        assert_eq!(d.due(), Due::StatusLine);
        assert_eq!(d.status(false).due(), Due::Done);
    }

    #[test]
    fn no_invalid_command_three_in_a_row() {
        // STAT, LIST and UIDL are invalid before login; CAPA is not (see the module doc).
        let text = String::from_utf8_lossy(REQUESTS);
        let mut run = 0;
        for cmd in text.split("\r\n").filter(|c| !c.is_empty()) {
            run = if cmd == "CAPA" { 0 } else { run + 1 };
            assert!(run < 3, "{text:?}");
        }
    }
}
