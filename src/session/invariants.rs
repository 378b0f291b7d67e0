//! Properties of session planning on arbitrary peer input, checked by the fuzz target
//! `tests/fuzz/fuzz_targets/session.rs`, the proptest in `tests/session_proptest.rs` and
//! the regression replay in `tests/codec_regressions.rs` (issue 12: "no panic on any peer
//! input"). [`planning`] panics when a property is violated.
//!
//! One input is four parts separated by NUL bytes: the upstream's LIST body, its UIDL body,
//! a STAT status line, and the client's byte stream. The upstream parts go through the
//! boundary checks of [`crate::pop3::listing`]; whatever the outcome, a view is also built
//! from the raw numbers (gaps, duplicates, zero) to drive [`plan`] with upstream numbers the
//! boundary would have refused. The client's lines go through AUTHORIZATION until a login
//! command, then TRANSACTION, exactly as `net::driver` plans them.
//!
//! The same lines also drive the machines the driver runs ([`crate::session::auth`],
//! [`crate::session::pipeline`]): nothing they send upstream is a DELE, and UPDATE comes
//! only from the client's QUIT, with the planner's deletions.
//!
//! Checked: nothing panics; a `Fetch` names an entry that exists and asks the upstream for
//! that entry's number; DELE is planned only as the answer to a client QUIT in TRANSACTION
//! (RFC 1939 §6), and then only for upstream numbers the view holds that the client deleted
//! or the rules condemned, each once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;

use crate::pop3::command::{parse, Command, MAX_COMMAND_LINE};
use crate::pop3::line::{split_line, Line};
use crate::pop3::listing::{check_stat, parse_list, parse_uidl};
use crate::pop3::status::Status;
use crate::session::auth::Authorization;
use crate::session::pipeline::{Pipeline, Step};
use crate::session::plan::{self, AuthPlan, TxPlan};
use crate::session::view::{Disposition, Entry, MailboxView};

/// Runs one input through the boundary checks and the planners; panics on a violated
/// property (see the module doc).
pub fn planning(data: &[u8]) {
    let mut parts = data.splitn(4, |&b| b == 0);
    let list_body = parts.next().unwrap_or_default();
    let uidl_body = parts.next().unwrap_or_default();
    let stat_line = parts.next().unwrap_or_default();
    let client = parts.next().unwrap_or_default();

    let checked = parse_list(list_body);
    if let Ok(list) = &checked {
        for (i, (n, _)) in list.iter().enumerate() {
            assert_eq!(*n as usize, i + 1, "a LIST that passed the boundary is numbered 1..N");
        }
        if let Some(s) = Status::parse(stat_line) {
            let _ = s.resp_code();
            let text = String::from_utf8_lossy(s.text);
            let mut w = text.split_ascii_whitespace();
            if let (Some(Ok(c)), Some(Ok(z))) = (w.next().map(str::parse::<u64>), w.next().map(str::parse::<u64>)) {
                let ok = check_stat(c, z, list).is_ok();
                let total: u64 = list.iter().map(|(_, s)| *s).fold(0, u64::saturating_add);
                assert_eq!(ok, c == list.len() as u64 && z == total);
            }
        }
    }
    let uidls = parse_uidl(uidl_body).ok();

    // Drive the planners with the validated listing and with the raw numbers.
    if let Ok(list) = checked {
        let pairs: Vec<(u32, u64)> = list;
        run_client(view_of(&pairs, uidls.as_deref()), client);
    }
    run_client(view_of(&lenient_pairs(list_body), uidls.as_deref()), client);
}

/// Every line that starts with two numbers, unchecked: gaps, repeats, 0 and all.
fn lenient_pairs(body: &[u8]) -> Vec<(u32, u64)> {
    body.split(|&b| b == b'\n')
        .filter_map(|l| {
            let t = std::str::from_utf8(l).ok()?;
            let mut w = t.split_ascii_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .take(4096)
        .collect()
}

/// A view whose dispositions come from the sizes (so the input chooses them too).
fn view_of(pairs: &[(u32, u64)], uidls: Option<&[(u32, String)]>) -> MailboxView {
    let entries = pairs
        .iter()
        .map(|&(n, size)| Entry {
            upstream: n,
            upstream_size: size,
            size: size.saturating_add(size % 7),
            uidl: uidls.and_then(|u| u.iter().find(|(m, _)| *m == n)).map(|(_, id)| id.as_str().into()),
            disposition: match size % 3 {
                0 => Disposition::Visible,
                1 => Disposition::Hidden,
                _ => Disposition::Condemned,
            },
            rewrite: None,
            evaluated: None,
            released: None,
        })
        .collect();
    MailboxView::new(entries)
}

fn run_client(mut view: MailboxView, client: &[u8]) {
    // The TRANSACTION machine the driver runs, fed the same lines as the planner beside it
    // (its upstream pipelines or not, as the input's length says).
    let mut pipeline = Pipeline::new(view.clone(), client.len() % 2 == 0);
    let mut auth = Authorization::new();
    let condemned: BTreeSet<u32> =
        view.entries().iter().filter(|e| e.disposition == Disposition::Condemned).map(|e| e.upstream).collect();
    let all: BTreeSet<u32> = view.entries().iter().map(|e| e.upstream).collect();
    let mut logged_in = false;
    let mut rest = client;
    loop {
        let (content, consumed) = match split_line(rest, MAX_COMMAND_LINE) {
            Line::Complete { content, consumed } => (content, consumed),
            // The driver ends the session on an over-long line: nothing more is planned.
            Line::TooLong | Line::Incomplete => return,
        };
        let line = &rest[..content];
        rest = &rest[consumed..];
        if !logged_in {
            let machine = auth.command(line);
            if let AuthPlan::Sasl(_) = machine {
                // The exchange's continuations are opaque: relayed, never a command.
                let _ = auth.sasl_response(b"*");
            }
            if let AuthPlan::Relay(b) | AuthPlan::RelayMultiline(b) | AuthPlan::Login(b) | AuthPlan::Sasl(b) = &machine
            {
                assert!(!is_dele(b), "DELE relayed in AUTHORIZATION");
            }
        }
        let Ok(cmd) = parse(line) else { continue };
        if !logged_in {
            match plan::authorization(&cmd, line) {
                AuthPlan::Login(_) | AuthPlan::Sasl(_) => logged_in = true,
                AuthPlan::Quit => return,
                AuthPlan::Reply(b) => assert!(b.starts_with(b"-ERR ") && b.ends_with(b"\r\n")),
                AuthPlan::Relay(b) | AuthPlan::RelayMultiline(b) => {
                    assert!(!is_dele(&b), "DELE relayed in AUTHORIZATION")
                }
                AuthPlan::Capa => {}
            }
            continue;
        }
        let planned = plan::transaction(&cmd, &mut view);
        drive_pipeline(&mut pipeline, line, &planned);
        match planned {
            TxPlan::Quit { deletions } => {
                assert_eq!(cmd, Command::Quit, "DELE planned without the client's QUIT");
                let set: BTreeSet<u32> = deletions.iter().copied().collect();
                assert_eq!(set.len(), deletions.len(), "a message deleted twice: {deletions:?}");
                assert!(set.is_subset(&all), "DELE of a number the server never listed: {deletions:?}");
                assert!(condemned.is_subset(&set), "a condemned message was not deleted");
                return;
            }
            TxPlan::Fetch { command, entry, .. } => {
                let e = view.entries().get(entry).expect("Fetch names an existing entry");
                assert!(matches!(cmd, Command::Retr(_) | Command::Top { .. }));
                let asked = parse(command.strip_suffix(b"\r\n").expect("CRLF")).expect("fetch command parses");
                let n = match asked {
                    Command::Retr(n) | Command::Top { msg: n, .. } => n,
                    other => panic!("fetch planned {other:?}"),
                };
                assert_eq!(n, e.upstream, "fetch asks for another message than its entry");
                assert_eq!(e.disposition, Disposition::Visible, "fetch of a message the client cannot see");
            }
            TxPlan::Relay(b) => assert!(!is_dele(&b), "DELE relayed in TRANSACTION"),
            TxPlan::Reply(b) => assert!(b.ends_with(b"\r\n")),
            TxPlan::Capa => {}
        }
    }
}

/// Feeds one line to the pipeline and performs every step it has: nothing it sends
/// upstream is a DELE, and its UPDATE carries exactly the planner's deletions, only at QUIT.
fn drive_pipeline(p: &mut Pipeline, line: &[u8], planned: &TxPlan) {
    assert!(p.wants_input() || !p.quit_planned(), "input after QUIT");
    p.push_line(line);
    if let Some(ahead) = p.take_ahead() {
        for cmd in ahead.bytes.split(|&b| b == b'\n') {
            assert!(!is_dele(cmd), "DELE sent ahead upstream");
        }
    }
    while let Some(step) = p.next_step() {
        match step {
            Step::Relay { send: Some(c) } | Step::Fetch { send: Some(c), .. } | Step::Capa { send: Some(c) } => {
                assert!(!is_dele(&c), "DELE sent upstream in TRANSACTION")
            }
            Step::Quit { deletions } => {
                assert_eq!(planned, &TxPlan::Quit { deletions }, "UPDATE without the client's QUIT");
            }
            _ => {}
        }
    }
}

fn is_dele(line: &[u8]) -> bool {
    line.get(..4).is_some_and(|k| k.eq_ignore_ascii_case(b"DELE"))
}
