//! What to do with each client command: answer from the mailbox view, relay upstream, or
//! end the session. The driver executes the plan; nothing here does I/O.
use crate::pop3::Command;
use crate::session::view::{MailboxView, Msg};

/// Plans for the AUTHORIZATION state (RFC 1939 §4), which popsift passes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthPlan {
    /// Answer the client directly with these bytes.
    Reply(Vec<u8>),
    /// Relay; relay the single-line reply.
    Relay(Vec<u8>),
    /// Relay PASS / APOP; `+OK` means the user is logged in.
    Login(Vec<u8>),
    /// Relay `AUTH mechanism`; then relay SASL continuations (RFC 5034 §4) until `+OK`
    /// (logged in) or `-ERR`.
    Sasl(Vec<u8>),
    /// Relay `AUTH` without arguments: a `+OK` reply is followed by a mechanism list.
    RelayMultiline(Vec<u8>),
    /// Answer with the rewritten capability list.
    Capa,
    /// Relay QUIT and its reply, then close. RFC 1939 §6: QUIT in AUTHORIZATION does not
    /// enter UPDATE.
    Quit,
}

/// Plans for the TRANSACTION state (RFC 1939 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxPlan {
    Reply(Vec<u8>),
    /// Relay a single-line command (NOOP keeps the upstream's autologout timer fresh).
    /// Commands going upstream are values, encoded where they are written (issue 16: into
    /// the buffer of commands sent ahead, no allocation of their own).
    Relay(Command),
    /// Relay RETR / TOP for a visible message; the reply is multi-line on `+OK`.
    /// `entry` is the message's position in `MailboxView::entries` (from the view, never
    /// derived from the upstream number).
    Fetch {
        command: Command,
        entry: usize,
    },
    Capa,
    /// Enter UPDATE: DELE these upstream numbers, then QUIT.
    Quit {
        deletions: Vec<u32>,
    },
}

pub fn err(text: impl std::fmt::Display) -> Vec<u8> {
    format!("-ERR {text}\r\n").into_bytes()
}

/// `+OK text` CRLF written into `buf` (emptied first), which becomes the reply: `buf` is a
/// buffer the session recycles (see `session::pipeline`), so a local reply such as STAT's
/// allocates nothing once the session runs (issue 16).
fn ok_in(buf: &mut Vec<u8>, text: std::fmt::Arguments<'_>) -> Vec<u8> {
    use std::io::Write;
    let mut out = std::mem::take(buf);
    out.clear();
    // Writing into a `Vec` cannot fail.
    let _ = write!(out, "+OK {text}\r\n");
    out
}

/// `line` is the client's line without CRLF, relayed verbatim for login commands.
pub fn authorization(cmd: &Command, line: &[u8]) -> AuthPlan {
    let relay = || {
        let mut l = line.to_vec();
        l.extend_from_slice(b"\r\n");
        l
    };
    match cmd {
        Command::User(_) | Command::Utf8 => AuthPlan::Relay(relay()),
        Command::Pass(_) | Command::Apop { .. } => AuthPlan::Login(relay()),
        Command::Auth { mechanism: Some(_), .. } => AuthPlan::Sasl(relay()),
        Command::Auth { mechanism: None, .. } => AuthPlan::RelayMultiline(relay()),
        Command::Capa => AuthPlan::Capa,
        Command::Quit => AuthPlan::Quit,
        Command::Stls => AuthPlan::Reply(err("STLS is not available: popsift has no client-side TLS configured")),
        Command::Unknown(_) => AuthPlan::Reply(err("unknown command")),
        _ => AuthPlan::Reply(err("not logged in yet (AUTHORIZATION state)")),
    }
}

/// Plans one command in TRANSACTION, updating deletion marks in `view`. A `+OK` reply is
/// written into `buf` (taken; see [`ok_in`]); `buf` is left as it was otherwise.
pub fn transaction(cmd: &Command, view: &mut MailboxView, buf: &mut Vec<u8>) -> TxPlan {
    use std::io::Write;
    match cmd {
        Command::Stat => {
            let (n, size) = view.stat();
            TxPlan::Reply(ok_in(buf, format_args!("{n} {size}")))
        }
        Command::List(None) => {
            let (n, size) = view.stat();
            let mut out = ok_in(buf, format_args!("{n} messages ({size} octets)"));
            for (v, e) in view.live() {
                let _ = write!(out, "{v} {}\r\n", e.size);
            }
            out.extend_from_slice(b".\r\n");
            TxPlan::Reply(out)
        }
        Command::List(Some(n)) => match view.get(*n) {
            Ok(e) => TxPlan::Reply(ok_in(buf, format_args!("{n} {}", e.size))),
            Err(e) => TxPlan::Reply(err(e)),
        },
        Command::Uidl(arg) => {
            if !view.all_have_uidl() {
                return TxPlan::Reply(err("UIDL is not supported by the server"));
            }
            match arg {
                None => {
                    let mut out = ok_in(buf, format_args!("unique-id listing follows"));
                    for (v, e) in view.live() {
                        let uid = e.uidl.unwrap_or_default();
                        let _ = write!(out, "{v} {uid}\r\n");
                    }
                    out.extend_from_slice(b".\r\n");
                    TxPlan::Reply(out)
                }
                Some(n) => match view.get(*n) {
                    Ok(e) => TxPlan::Reply(ok_in(buf, format_args!("{n} {}", e.uidl.unwrap_or_default()))),
                    Err(e) => TxPlan::Reply(err(e)),
                },
            }
        }
        Command::Retr(n) => fetch(view, *n, Command::Retr, None),
        Command::Top { msg, lines } => {
            let lines = *lines;
            fetch(view, *msg, move |u| Command::Top { msg: u, lines }, Some(lines))
        }
        Command::Dele(n) => match view.delete(*n) {
            Ok(()) => TxPlan::Reply(ok_in(buf, format_args!("message {n} deleted"))),
            Err(e) => TxPlan::Reply(err(e)),
        },
        Command::Rset => {
            view.reset();
            let (n, size) = view.stat();
            TxPlan::Reply(ok_in(buf, format_args!("maildrop has {n} messages ({size} octets)")))
        }
        Command::Noop => TxPlan::Relay(Command::Noop),
        Command::Capa => TxPlan::Capa,
        Command::Quit => TxPlan::Quit { deletions: view.update_deletions() },
        Command::User(_)
        | Command::Pass(_)
        | Command::Apop { .. }
        | Command::Auth { .. }
        | Command::Stls
        | Command::Utf8 => TxPlan::Reply(err("already logged in (TRANSACTION state)")),
        Command::Unknown(_) => TxPlan::Reply(err("unknown command")),
    }
}

fn fetch(view: &MailboxView, n: u32, make: impl FnOnce(u32) -> Command, top: Option<u64>) -> TxPlan {
    // The entry's position comes from the view, not from `upstream - 1`: an upstream whose
    // numbers have gaps (issue 12) must not send a lookup out of bounds.
    match view.locate(n) {
        // Released from quarantine (review page): answered from popsift's copy.
        Ok((_, Msg { released: Some(bytes), .. })) => TxPlan::Reply(crate::session::view::released_reply(bytes, top)),
        Ok((entry, e)) => TxPlan::Fetch { command: make(e.upstream), entry },
        Err(e) => TxPlan::Reply(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pop3::command::parse;
    use crate::session::view::{Disposition, Entry};

    fn view() -> MailboxView {
        let e = |n: u32, d| Entry {
            upstream: n,
            upstream_size: n as u64 * 10,
            size: n as u64 * 10,
            uidl: Some(format!("uid-{n}").into()),
            disposition: d,
            rewrite: None,
            evaluated: None,
            released: None,
        };
        MailboxView::new(&[
            e(1, Disposition::Hidden),
            e(2, Disposition::Visible),
            e(3, Disposition::Condemned),
            e(4, Disposition::Visible),
        ])
    }

    fn tx(v: &mut MailboxView, line: &str) -> TxPlan {
        transaction(&parse(line.as_bytes()).unwrap(), v, &mut Vec::new())
    }

    fn reply(p: TxPlan) -> String {
        match p {
            TxPlan::Reply(b) => String::from_utf8(b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transcript() {
        let mut v = view();
        assert_eq!(reply(tx(&mut v, "STAT")), "+OK 2 60\r\n");
        assert_eq!(reply(tx(&mut v, "LIST")), "+OK 2 messages (60 octets)\r\n1 20\r\n2 40\r\n.\r\n");
        assert_eq!(reply(tx(&mut v, "LIST 2")), "+OK 2 40\r\n");
        assert_eq!(reply(tx(&mut v, "LIST 3")), "-ERR no such message, only 2 messages in maildrop\r\n");
        assert_eq!(reply(tx(&mut v, "UIDL")), "+OK unique-id listing follows\r\n1 uid-2\r\n2 uid-4\r\n.\r\n");
        assert_eq!(reply(tx(&mut v, "UIDL 1")), "+OK 1 uid-2\r\n");
        assert_eq!(tx(&mut v, "RETR 2"), TxPlan::Fetch { command: Command::Retr(4), entry: 3 });
        assert_eq!(tx(&mut v, "TOP 1 5"), TxPlan::Fetch { command: Command::Top { msg: 2, lines: 5 }, entry: 1 });
        assert_eq!(
            tx(&mut v, "TOP 1 99999999"),
            TxPlan::Fetch { command: Command::Top { msg: 2, lines: 99999999 }, entry: 1 }
        );
        assert_eq!(reply(tx(&mut v, "DELE 1")), "+OK message 1 deleted\r\n");
        assert_eq!(reply(tx(&mut v, "RETR 1")), "-ERR message 1 already deleted\r\n");
        assert_eq!(reply(tx(&mut v, "DELE 1")), "-ERR message 1 already deleted\r\n");
        assert_eq!(reply(tx(&mut v, "STAT")), "+OK 1 40\r\n");
        assert_eq!(reply(tx(&mut v, "LIST")), "+OK 1 messages (40 octets)\r\n2 40\r\n.\r\n");
        assert_eq!(tx(&mut v, "QUIT"), TxPlan::Quit { deletions: vec![2, 3] });
        assert_eq!(reply(tx(&mut v, "RSET")), "+OK maildrop has 2 messages (60 octets)\r\n");
        assert_eq!(tx(&mut v, "QUIT"), TxPlan::Quit { deletions: vec![3] });
        assert_eq!(tx(&mut v, "NOOP"), TxPlan::Relay(Command::Noop));
        assert_eq!(reply(tx(&mut v, "USER x")), "-ERR already logged in (TRANSACTION state)\r\n");
        assert_eq!(reply(tx(&mut v, "XYZZY")), "-ERR unknown command\r\n");
    }

    #[test]
    fn uidl_without_server_support() {
        let mut v = MailboxView::new(&[Entry {
            upstream: 1,
            upstream_size: 1,
            size: 1,
            uidl: None,
            disposition: Disposition::Visible,
            rewrite: None,
            evaluated: None,
            released: None,
        }]);
        assert!(reply(tx(&mut v, "UIDL")).starts_with("-ERR"));
    }

    /// Issue 12: upstream numbers with gaps (`1 37`, `5 37`) made `RETR 2` compute
    /// `upstream - 1` = 4 as an index into two entries and panic the session.
    #[test]
    fn upstream_numbers_with_gaps_do_not_index_out_of_bounds() {
        let e = |n: u32| Entry {
            upstream: n,
            upstream_size: 37,
            size: 37,
            uidl: None,
            disposition: Disposition::Visible,
            rewrite: None,
            evaluated: None,
            released: None,
        };
        let mut v = MailboxView::new(&[e(1), e(5)]);
        assert_eq!(tx(&mut v, "RETR 2"), TxPlan::Fetch { command: Command::Retr(5), entry: 1 });
        let TxPlan::Fetch { entry, .. } = tx(&mut v, "TOP 2 0") else { panic!() };
        assert_eq!(v.at(entry).map(|e| e.upstream), Some(5));
        assert_eq!(reply(tx(&mut v, "RETR 3")), "-ERR no such message, only 2 messages in maildrop\r\n");
        assert_eq!(reply(tx(&mut v, "DELE 2")), "+OK message 2 deleted\r\n");
        assert_eq!(tx(&mut v, "QUIT"), TxPlan::Quit { deletions: vec![5] });
    }

    #[test]
    fn authorization_plans() {
        let a = |l: &str| authorization(&parse(l.as_bytes()).unwrap(), l.as_bytes());
        assert_eq!(a("USER alice"), AuthPlan::Relay(b"USER alice\r\n".to_vec()));
        assert_eq!(a("PASS s e"), AuthPlan::Login(b"PASS s e\r\n".to_vec()));
        assert_eq!(a("AUTH PLAIN"), AuthPlan::Sasl(b"AUTH PLAIN\r\n".to_vec()));
        assert_eq!(a("AUTH"), AuthPlan::RelayMultiline(b"AUTH\r\n".to_vec()));
        assert_eq!(a("CAPA"), AuthPlan::Capa);
        assert_eq!(a("QUIT"), AuthPlan::Quit);
        assert!(matches!(a("STLS"), AuthPlan::Reply(r) if r.starts_with(b"-ERR")));
        assert!(matches!(a("STAT"), AuthPlan::Reply(r) if r.starts_with(b"-ERR")));
    }
}
