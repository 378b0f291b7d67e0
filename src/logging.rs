//! Which session a log line belongs to, without a tracing span per session (issue 16).
//!
//! Every event logged while a session runs says which session: the client's address
//! (`peer`), and once known the `upstream` and the `user`. This used to be an
//! `info_span!("session", …)` entered around the session. With the fmt subscriber each live
//! span held three 160-byte objects (the registry's extension map, the formatted fields, …)
//! and a slot in the registry's slab, which keeps its slots and allocations for reuse at
//! the peak number of sessions, for ever: ~0.7 KiB per idle session, and 1.6 MB plus
//! 1.4 MiB of allocator slack pinned after 5,000 sessions had ended (README, "Idle
//! sessions").
//!
//! Instead, a session runs inside [`scope`]: a [`Label`] in a tokio task-local, one 64-byte
//! heap object per session that goes away with it. [`set_user`] and [`set_upstream`] fill
//! it in once they are known (not per command: the relay path does not touch it). The two
//! event formatters, [`Human`] and [`Json`], print it where the span used to be, in the
//! same shape:
//!
//! - human: `2026-11-30T04:00:00.000000Z  INFO session{peer=192.0.2.7:40000
//!   upstream=pop.example.com:995 user="alice"}: popsift::net::driver: session finished …`
//! - JSON: `"span":{"peer":"…","upstream":"…","user":"…","name":"session"}` and the same
//!   object as the root of `"spans":[…]`, the keys tracing-subscriber printed for the span.
//!
//! Code that runs in the session's task (stores called inline, the login scan, quarantine
//! copies) has the context for free; work handed to `spawn_blocking` or another task had
//! none with the span either (a span is not carried across tasks or threads).
//! An event with an explicit `parent: None` is printed without it: the failed-login line
//! (`popsift::login`, matched by fail2ban) starts with the address on purpose.
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;

use serde::ser::{SerializeMap, Serializer as _};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

tokio::task_local! {
    static SESSION: Label;
}

/// The span's name that the label stands for (log consumers match on it).
const NAME: &str = "session";

/// A session's log context. Boxed: the session future keeps one pointer, not 64 bytes.
pub struct Label(Box<Fields>);

/// `Cell`s, not a `RefCell`: no borrow flag, so the box fits the 64-byte size class. The
/// task-local is only ever touched by its own task, one call at a time.
struct Fields {
    peer: SocketAddr,
    upstream: Cell<Option<Box<str>>>,
    user: Cell<Option<Box<str>>>,
}

/// What a line prints of a label, read out of its cells for the time of one event.
struct Shown<'a> {
    peer: SocketAddr,
    upstream: Option<&'a str>,
    user: Option<&'a str>,
}

impl Label {
    /// A session from `peer`, its upstream not known yet.
    pub fn new(peer: SocketAddr) -> Self {
        Label(Box::new(Fields { peer, upstream: Cell::new(None), user: Cell::new(None) }))
    }

    /// The same, with the upstream known from the start (the listener's own).
    pub fn with_upstream(self, upstream: String) -> Self {
        self.0.upstream.set(Some(upstream.into_boxed_str()));
        self
    }
}

/// Runs `session` with `label` as the log context of every event it logs.
pub fn scope<F: Future>(label: Label, session: F) -> impl Future<Output = F::Output> {
    SESSION.scope(label, session)
}

/// Records the user name of the running session (after USER, APOP or AUTH). Outside a
/// session it does nothing.
pub fn set_user(name: &str) {
    let _ = SESSION.try_with(|l| {
        let old = l.0.user.take();
        l.0.user.set(if old.as_deref() == Some(name) { old } else { Some(name.into()) });
    });
}

/// Records the upstream of the running session (chosen from the user name).
pub fn set_upstream(upstream: String) {
    let _ = SESSION.try_with(|l| l.0.upstream.set(Some(upstream.into_boxed_str())));
}

/// Calls `f` with the running session's label, if the event is in one (an event with an
/// explicit parent, e.g. `parent: None`, is not). The values are taken out of their cells
/// while `f` runs and put back after it (formatting does not log, so nothing sees them
/// missing).
fn with_label<R>(event: &Event<'_>, f: impl FnOnce(&Shown<'_>) -> R) -> Option<R> {
    if !event.is_contextual() {
        return None;
    }
    SESSION
        .try_with(|l| {
            let (upstream, user) = (l.0.upstream.take(), l.0.user.take());
            let r = f(&Shown { peer: l.0.peer, upstream: upstream.as_deref(), user: user.as_deref() });
            l.0.upstream.set(upstream);
            l.0.user.set(user);
            r
        })
        .ok()
}

/// Writes `s` with control characters escaped (`\u{1b}`), so that a value taken from a
/// client (a user name, an upstream named by it) cannot forge a line or a terminal escape.
fn write_escaped(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() {
            write!(w, "{}", c.escape_debug())?;
        } else {
            w.write_char(c)?;
        }
    }
    Ok(())
}

// ANSI styles as tracing-subscriber's own formatter writes them (nu-ansi-term).
const BOLD: &str = "\x1b[1m";
const DIMMED: &str = "\x1b[2m";
const ITALIC: &str = "\x1b[3m";
const RESET: &str = "\x1b[0m";

/// tracing-subscriber's default human format (`Format<Full>`), with the session label in
/// front of the spans: `TIME LEVEL session{peer=… upstream=… user="…"}: target: fields`.
pub struct Human {
    /// Everything after the level: spans (if any), target, fields.
    rest: format::Format<format::Full, ()>,
    timer: SystemTime,
}

impl Default for Human {
    fn default() -> Self {
        Human { rest: format::Format::default().without_time().with_level(false), timer: SystemTime }
    }
}

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ansi = writer.has_ansi_escapes();
        if ansi {
            writer.write_str(DIMMED)?;
        }
        if self.timer.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        if ansi {
            writer.write_str(RESET)?;
        }
        writer.write_char(' ')?;
        write_level(&mut writer, *event.metadata().level(), ansi)?;
        writer.write_char(' ')?;
        let more_spans = ctx.event_scope().is_some();
        with_label(event, |f| write_human_label(&mut writer, f, ansi, more_spans)).transpose()?;
        self.rest.format_event(ctx, writer, event)
    }
}

fn write_level(w: &mut Writer<'_>, level: Level, ansi: bool) -> fmt::Result {
    let (text, colour) = match level {
        Level::TRACE => ("TRACE", "\x1b[35m"),
        Level::DEBUG => ("DEBUG", "\x1b[34m"),
        Level::INFO => (" INFO", "\x1b[32m"),
        Level::WARN => (" WARN", "\x1b[33m"),
        Level::ERROR => ("ERROR", "\x1b[31m"),
    };
    if ansi {
        write!(w, "{colour}{text}{RESET}")
    } else {
        w.write_str(text)
    }
}

/// `session{peer=… upstream=… user="…"}:` and a space unless other spans follow, as
/// tracing-subscriber printed the span (`user` in `Debug` form, as a recorded `&str` was).
fn write_human_label(w: &mut Writer<'_>, f: &Shown<'_>, ansi: bool, more_spans: bool) -> fmt::Result {
    let (bold, dimmed, italic, reset) = if ansi { (BOLD, DIMMED, ITALIC, RESET) } else { ("", "", "", "") };
    write!(w, "{bold}{NAME}{reset}{bold}{{{reset}")?;
    write!(w, "{italic}peer{reset}{dimmed}={reset}{}", f.peer)?;
    if let Some(up) = f.upstream {
        write!(w, " {italic}upstream{reset}{dimmed}={reset}")?;
        write_escaped(w, up)?;
    }
    if let Some(user) = f.user {
        write!(w, " {italic}user{reset}{dimmed}={reset}{user:?}")?;
    }
    write!(w, "{bold}}}{reset}{dimmed}:{reset}")?;
    if !more_spans {
        w.write_char(' ')?;
    }
    Ok(())
}

/// tracing-subscriber's JSON format (`Format<Json>`), with the session label as the span it
/// used to be: `"span":{…,"name":"session"}` and the root of `"spans":[…]`. Lines of
/// events outside a session are exactly the inner format's.
pub struct Json {
    inner: format::Format<format::Json>,
}

impl Default for Json {
    fn default() -> Self {
        Json { inner: format::Format::default().json() }
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some(label) = with_label(event, json_label).transpose()? else {
            return self.inner.format_event(ctx, writer, event);
        };
        // Per event of a session (at the default level a few per session; at `debug` also
        // one per client command): the line is built, then the label goes where the
        // inner format puts spans (after every other key).
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_json_label(&line, &label))
    }
}

/// The label as the JSON object tracing-subscriber printed for the span: its fields in
/// name order, then `"name"`.
fn json_label(f: &Shown<'_>) -> Result<String, fmt::Error> {
    struct AsStr<'a>(&'a dyn fmt::Display);
    impl serde::Serialize for AsStr<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_str(self.0)
        }
    }
    let mut out = Vec::with_capacity(96);
    let mut ser = serde_json::Serializer::new(&mut out);
    let write = |ser: &mut serde_json::Serializer<&mut Vec<u8>>| -> Result<(), serde_json::Error> {
        let mut map = ser.serialize_map(None)?;
        map.serialize_entry("peer", &AsStr(&f.peer))?;
        if let Some(up) = f.upstream {
            map.serialize_entry("upstream", up)?;
        }
        if let Some(user) = f.user {
            map.serialize_entry("user", user)?;
        }
        map.serialize_entry("name", NAME)?;
        map.end()
    };
    write(&mut ser).map_err(|_| fmt::Error)?;
    String::from_utf8(out).map_err(|_| fmt::Error)
}

/// Puts `label` into one line of tracing-subscriber's JSON: as the root of `"spans"` when
/// other spans are there already, else as `"span"` and `"spans":[label]` at the end. A
/// `,"spans":[` cannot occur inside a value: quotes in strings are escaped.
fn with_json_label(line: &str, label: &str) -> String {
    const SPANS: &str = ",\"spans\":[";
    let mut out = String::with_capacity(line.len() + 2 * label.len() + 24);
    if let Some(at) = line.rfind(SPANS) {
        let (head, tail) = line.split_at(at + SPANS.len());
        out.push_str(head);
        out.push_str(label);
        out.push(',');
        out.push_str(tail);
    } else if let Some(head) = line.strip_suffix("}\n") {
        out.push_str(head);
        out.push_str(",\"span\":");
        out.push_str(label);
        out.push_str(SPANS);
        out.push_str(label);
        out.push_str("]}\n");
    } else {
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing::{info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }
    impl Buf {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap().lines().map(str::to_string).collect()
        }
    }

    const PEER: &str = "192.0.2.7:40000";

    /// What a session logs: an event before the user is known, one after, a failed-login
    /// line outside the session (`parent: None`), and one event outside any session.
    fn session_events() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let label = Label::new(PEER.parse().unwrap()).with_upstream("pop.example.com:995".into());
        rt.block_on(scope(label, async {
            info!("connected");
            set_user("al\"ice");
            info!(messages = 3u64, "session finished");
            warn!(target: "popsift::login", parent: None, "login failed: client=192.0.2.7 user=\"x\"");
        }));
        info!("listening");
    }

    /// The same, the way it was logged before: a span per session.
    fn span_events() {
        let span = info_span!("session", peer = %PEER, upstream = tracing::field::Empty, user = tracing::field::Empty);
        span.record("upstream", tracing::field::display("pop.example.com:995"));
        span.in_scope(|| {
            info!("connected");
            span.record("user", "al\"ice");
            info!(messages = 3u64, "session finished");
            warn!(target: "popsift::login", parent: None, "login failed: client=192.0.2.7 user=\"x\"");
        });
        info!("listening");
    }

    fn human(ansi: bool, events: fn()) -> Vec<String> {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt().with_writer(buf.clone()).with_ansi(ansi).event_format(Human::default());
        tracing::subscriber::with_default(sub.finish(), events);
        buf.lines()
    }

    fn stock_human(ansi: bool, events: fn()) -> Vec<String> {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt().with_writer(buf.clone()).with_ansi(ansi);
        tracing::subscriber::with_default(sub.finish(), events);
        buf.lines()
    }

    fn json(events: fn()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt().json().with_writer(buf.clone()).event_format(Json::default());
        tracing::subscriber::with_default(sub.finish(), events);
        buf.lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    fn stock_json(events: fn()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt().json().with_writer(buf.clone());
        tracing::subscriber::with_default(sub.finish(), events);
        buf.lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The line without its timestamp (the first word, possibly in ANSI dim).
    fn untimed(line: &str) -> &str {
        line.split_once(' ').unwrap().1
    }

    #[test]
    fn human_lines_carry_the_session_where_the_span_was() {
        let lines = human(false, session_events);
        assert_eq!(lines.len(), 4, "{lines:?}");
        let target = module_path!();
        assert_eq!(
            untimed(&lines[0]),
            format!(" INFO session{{peer={PEER} upstream=pop.example.com:995}}: {target}: connected")
        );
        assert_eq!(
            untimed(&lines[1]),
            format!(
                " INFO session{{peer={PEER} upstream=pop.example.com:995 user=\"al\\\"ice\"}}: {target}: session finished messages=3"
            )
        );
        // fail2ban's line starts with the address: no session in front of it.
        assert_eq!(untimed(&lines[2]), " WARN popsift::login: login failed: client=192.0.2.7 user=\"x\"");
        assert_eq!(untimed(&lines[3]), format!(" INFO {target}: listening"));
    }

    #[test]
    fn human_lines_are_what_the_span_printed() {
        for ansi in [false, true] {
            let ours: Vec<String> = human(ansi, session_events).iter().map(|l| untimed(l).to_string()).collect();
            let stock: Vec<String> = stock_human(ansi, span_events).iter().map(|l| untimed(l).to_string()).collect();
            assert_eq!(ours, stock, "ansi {ansi}");
        }
    }

    #[test]
    fn json_lines_carry_the_session_as_the_span_did() {
        let mut ours = json(session_events);
        let mut stock = stock_json(span_events);
        assert_eq!(ours.len(), 4);
        let finished = &ours[1];
        assert_eq!(finished["fields"]["message"], "session finished");
        assert_eq!(finished["span"]["name"], "session");
        assert_eq!(finished["span"]["peer"], PEER);
        assert_eq!(finished["span"]["upstream"], "pop.example.com:995");
        assert_eq!(finished["span"]["user"], "al\"ice");
        assert_eq!(finished["spans"][0], finished["span"]);
        assert!(ours[0]["span"].get("user").is_none(), "no user before it is known");
        assert!(ours[2].get("span").is_none() && ours[3].get("span").is_none());
        for v in ours.iter_mut().chain(stock.iter_mut()) {
            v.as_object_mut().unwrap().remove("timestamp");
        }
        // tracing-subscriber's JSON format printed the current span even on an event with
        // `parent: None` (its human format did not); the failed-login line's message
        // already names client, user and upstream, and is now the same in both formats.
        let stock_login = stock[2].as_object_mut().unwrap();
        assert_eq!(stock_login.remove("span").unwrap()["name"], "session");
        stock_login.remove("spans");
        assert_eq!(ours, stock);
    }

    #[test]
    fn json_key_order_is_the_stock_order() {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt().json().with_writer(buf.clone()).event_format(Json::default());
        tracing::subscriber::with_default(sub.finish(), session_events);
        let line = buf.lines().remove(1);
        let keys = ["\"timestamp\":", "\"level\":", "\"fields\":", "\"target\":", "\"span\":", "\"spans\":"];
        let at: Vec<usize> = keys.iter().map(|k| line.find(k).unwrap()).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
        assert!(line.contains(&format!("\"span\":{{\"peer\":\"{PEER}\",\"upstream\":")), "{line}");
    }

    #[test]
    fn the_label_is_the_root_of_other_spans() {
        fn nested() {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(scope(Label::new(PEER.parse().unwrap()), async {
                info_span!("inner", n = 1).in_scope(|| info!("deep"));
            }));
        }
        let line = human(false, nested).remove(0);
        assert!(untimed(&line).starts_with(&format!(" INFO session{{peer={PEER}}}:inner{{n=1}}: ")), "{line}");
        let v = json(nested).remove(0);
        assert_eq!(v["span"]["name"], "inner");
        assert_eq!(v["spans"][0]["name"], "session");
        assert_eq!(v["spans"][0]["peer"], PEER);
        assert_eq!(v["spans"][1]["name"], "inner");
    }

    #[test]
    fn client_chosen_values_cannot_break_a_line() {
        fn hostile() {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(scope(Label::new(PEER.parse().unwrap()), async {
                set_user("a\r\nINFO fake\x1b[31m");
                set_upstream("evil\n.example:110".into());
                info!("x");
            }));
        }
        let lines = human(false, hostile);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(!lines[0].contains('\x1b'), "{lines:?}");
        let v = json(hostile).remove(0);
        assert_eq!(v["span"]["user"], "a\r\nINFO fake\x1b[31m");
        assert_eq!(v["span"]["upstream"], "evil\n.example:110");
    }

    #[test]
    fn a_label_fits_the_64_byte_size_class_and_the_future_keeps_a_pointer() {
        assert!(std::mem::size_of::<Fields>() <= 64, "{}", std::mem::size_of::<Fields>());
        assert_eq!(std::mem::size_of::<Label>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn setting_the_user_outside_a_session_does_nothing() {
        set_user("nobody");
        set_upstream("x:1".into());
    }
}
