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
//! The whole session machine ([`crate::session::machine::Machine`]) is driven as well
//! ([`machine`]): the client's lines and the upstream's replies come from the input, the
//! scan finds the listed messages, the rules' verdicts and the quarantine's outcomes are
//! drawn from the sizes, and time jumps ahead between inputs. Checked there: nothing
//! panics, the machine never waits on an input it cannot get, and no DELE goes upstream
//! unless the client sent QUIT in TRANSACTION.
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
use crate::session::phase::Phase;
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
    let pairs = lenient_pairs(list_body);
    run_client(view_of(&pairs, uidls.as_deref()), client);
    drive_machine(&pairs, uidl_body, stat_line, client);
}

/// Drives the session machine alone (the fuzz target `machine`): one control byte, then
/// the upstream's replies and the client's stream separated by a NUL; the listing is
/// drawn from the control byte and the upstream part's length.
pub fn machine(data: &[u8]) {
    let (control, rest) = data.split_first().map_or((0, &[][..]), |(c, r)| (*c, r));
    let mut parts = rest.splitn(2, |&b| b == 0);
    let upstream = parts.next().unwrap_or_default();
    let client = parts.next().unwrap_or_default();
    let n = u32::from(control % 8);
    let pairs: Vec<(u32, u64)> = (1..=n).map(|i| (i, u64::from(i) * 37 + upstream.len() as u64 % 11)).collect();
    drive_machine(&pairs, upstream, &[control], client);
}

/// One session machine driven by `upstream` (status lines and bodies, in order), `client`
/// (command lines) and `control` (settings and outcomes); panics on a violated property.
fn drive_machine(pairs: &[(u32, u64)], upstream: &[u8], control: &[u8], client: &[u8]) {
    use crate::config::{OnFailure, WithoutTop};
    use crate::rules::{Action as Rule, Verdict};
    use crate::session::evaluated::Evaluated;
    use crate::session::machine::{Action, Input, Machine, Need, Quarantined, Settings};
    use crate::session::verdicts::{disposition, ScanItem, ScanOutcome};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let bits = control.first().copied().unwrap_or_default();
    let bit = |i: u32| bits & (1 << i) != 0;
    let settings = Settings {
        early_answer_after: bit(0).then_some(Duration::from_secs(20)),
        scan_pipelining: bit(1),
        window: usize::from(bits % 5),
        without_top: if bit(2) { WithoutTop::Refuse } else { WithoutTop::Pass },
        on_failure: if bit(3) { OnFailure::Show } else { OnFailure::Hide },
        dry_run: bit(4),
        edge: crate::session::capa::EdgeCapa { starttls: bit(5), plaintext_allowed: !bit(6) },
        // Per-user upstream: logins name `127.0.0.1:110` (listed) or `*.example` hosts.
        upstream_from_user: bit(7).then(|| {
            let allow = ["127.0.0.1:110".to_string(), "*.example:110".to_string()];
            Arc::new(
                crate::session::upstream_from_user::UpstreamFromUser::new(":", &allow, None, None)
                    .unwrap_or_else(|e| unreachable!("constant settings: {e}")),
            )
        }),
    };
    let routed = settings.upstream_from_user.is_some();
    let mut now = Instant::now();
    let mut m = Machine::new(settings, now);
    let mut client_lines = lines(client).peekable();
    let mut upstream_lines = lines(upstream);
    let mut outcomes = control.iter().cycle().skip(1);
    // The last client line fed, and whether QUIT was fed in TRANSACTION.
    let mut last_client: Option<Vec<u8>> = None;
    let mut quit_sent = false;
    for _ in 0..100_000 {
        let input = match m.next_action() {
            Action::Close => return,
            Action::ToUpstream { bytes, phase, .. } => {
                for cmd in bytes.split(|&b| b == b'\n') {
                    if !is_dele(cmd) {
                        continue;
                    }
                    match phase {
                        Phase::Update => assert!(quit_sent, "DELE upstream without the client's QUIT"),
                        // A SASL response is relayed verbatim: the client's own bytes (or, with a
                        // per-user upstream, a first response popsift re-encoded: base64).
                        Phase::Login => {
                            let relayed = cmd.strip_suffix(b"\r").unwrap_or(cmd);
                            let reencoded =
                                routed && relayed.iter().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(b));
                            assert!(last_client.as_deref() == Some(relayed) || reencoded, "DELE sent in AUTHORIZATION");
                        }
                        other => panic!("DELE sent upstream during {other}"),
                    }
                }
                continue;
            }
            Action::Need(need) => match need {
                Need::Connect => {
                    let caps = if bit(5) {
                        Some(vec![crate::pop3::capa::Capability::new("PIPELINING", "")].into())
                    } else {
                        None
                    };
                    Input::Connected { greeting: b"+OK hi".to_vec(), caps }
                }
                Need::StartTls => Input::TlsStarted,
                Need::LoginAllowed => Input::LoginAllowed(!bit(3)),
                Need::Resolve { port, .. } => {
                    // Either answer: a public address, or loopback (refused unless listed).
                    let ip = if bit(6) { [127, 0, 0, 1] } else { [93, 184, 216, 34] };
                    Input::Resolved(Ok(vec![std::net::SocketAddr::from((ip, port))]))
                }
                Need::ConnectTo { .. } => {
                    let caps = if bit(5) {
                        Some(vec![crate::pop3::capa::Capability::new("PIPELINING", "")].into())
                    } else {
                        None
                    };
                    Input::Connected { greeting: b"+OK hi".to_vec(), caps }
                }
                Need::ClientLine | Need::BufferedClientLine { .. } | Need::ClientInput => {
                    let buffered = matches!(need, Need::BufferedClientLine { .. });
                    if matches!(need, Need::ClientInput) {
                        // More octets arrived (the line is taken at the next need), or the
                        // client left and the performer ends the session.
                        if client_lines.peek().is_none() {
                            return;
                        }
                        m.handle(now, Input::ClientInput);
                        continue;
                    }
                    match client_lines.next() {
                        Some(line) => {
                            let quit = parse(&line).is_ok_and(|c| c == Command::Quit);
                            if quit && !m.authorizing() {
                                quit_sent = true;
                            }
                            last_client = Some(line.clone());
                            Input::ClientLine(line)
                        }
                        None if buffered => Input::NoClientLine,
                        // The client left: the performer ends the session.
                        None => return,
                    }
                }
                Need::UpstreamLine { lenient, .. } => match upstream_lines.next() {
                    Some(line) if Status::parse(&line).is_some() => Input::UpstreamLine(line),
                    _ if lenient => Input::UpstreamLineFailed,
                    // Closed, or not a status line: the performer ends the session.
                    _ => return,
                },
                Need::UpstreamBody { .. } => {
                    let mut body = Vec::new();
                    for line in upstream_lines.by_ref() {
                        if line == b"." {
                            break;
                        }
                        body.extend_from_slice(&line);
                        body.extend_from_slice(b"\r\n");
                    }
                    Input::UpstreamBody(body)
                }
                Need::Scan { .. } => {
                    let items = pairs
                        .iter()
                        .map(|&(n, size)| ScanItem {
                            upstream: n,
                            size,
                            uidl: Some(format!("u{n}").into()),
                            memo: None,
                            evaluated: None,
                        })
                        .collect();
                    Input::Listed(Box::new(ScanOutcome { items, top_supported: !bit(6), ..Default::default() }))
                }
                Need::Evaluate(outcome) => {
                    let dry_run = bit(4);
                    let entries = outcome
                        .items
                        .iter()
                        .map(|i| {
                            let action = match i.size % 5 {
                                0 => None,
                                1 => Some(Rule::Hide),
                                2 => Some(Rule::Delete),
                                3 => Some(Rule::Quarantine),
                                _ => Some(Rule::Tag),
                            };
                            let verdict = Verdict {
                                score: 1.0,
                                threshold: 5.0,
                                spam: action.is_some(),
                                action,
                                rules: Vec::new(),
                            };
                            Entry {
                                upstream: i.upstream,
                                upstream_size: i.size,
                                size: i.size,
                                uidl: i.uidl.clone(),
                                disposition: disposition(action, dry_run),
                                rewrite: None,
                                evaluated: Some(Arc::new(Evaluated {
                                    verdict,
                                    rewrite: None,
                                    about: Default::default(),
                                })),
                                released: None,
                            }
                        })
                        .collect();
                    Input::Evaluated(entries)
                }
                Need::QuarantineFolder => Input::QuarantineFolder,
                Need::Quarantine(_) => Input::Quarantined(match outcomes.next().copied().unwrap_or_default() % 3 {
                    0 => Quarantined::Stored,
                    1 => Quarantined::AlreadyStored,
                    _ => Quarantined::Failed,
                }),
                Need::Pending => panic!("the machine waits on an input it already had"),
            },
            _ => continue,
        };
        // Time jumps between inputs, sometimes past the early answer.
        now += Duration::from_secs(u64::from(bits % 13));
        m.handle(now, Input::Tick);
        m.handle(now, input);
    }
}

/// The complete lines of `bytes`, without line ends, at most 4,096.
fn lines(bytes: &[u8]) -> std::vec::IntoIter<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while out.len() < 4096 {
        match split_line(rest, MAX_COMMAND_LINE) {
            Line::Complete { content, consumed } => {
                out.push(rest[..content].to_vec());
                rest = &rest[consumed..];
            }
            Line::TooLong | Line::Incomplete => break,
        }
    }
    out.into_iter()
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
    let entries: Vec<Entry> = pairs
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
    MailboxView::new(&entries)
}

fn run_client(mut view: MailboxView, client: &[u8]) {
    // The TRANSACTION machine the driver runs, fed the same lines as the planner beside it
    // (its upstream pipelines or not, as the input's length says).
    let mut pipeline = Pipeline::new(view.clone(), client.len() % 2 == 0);
    let mut auth = Authorization::new();
    let condemned: BTreeSet<u32> =
        view.messages().filter(|e| e.disposition == Disposition::Condemned).map(|e| e.upstream).collect();
    let all: BTreeSet<u32> = view.messages().map(|e| e.upstream).collect();
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
        let planned = plan::transaction(&cmd, &mut view, &mut Vec::new());
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
                let e = view.at(entry).expect("Fetch names an existing entry");
                assert!(matches!(cmd, Command::Retr(_) | Command::Top { .. }));
                let wire = command.encode();
                let asked = parse(wire.strip_suffix(b"\r\n").expect("CRLF")).expect("fetch command parses");
                let n = match asked {
                    Command::Retr(n) | Command::Top { msg: n, .. } => n,
                    other => panic!("fetch planned {other:?}"),
                };
                assert_eq!(n, e.upstream, "fetch asks for another message than its entry");
                assert_eq!(e.disposition, Disposition::Visible, "fetch of a message the client cannot see");
            }
            TxPlan::Relay(c) => assert!(!is_dele(&c.encode()), "DELE relayed in TRANSACTION"),
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
