//! The review page's HTML: maud templates (every interpolated value is escaped), one inline
//! stylesheet, no scripts and no external assets, readable on a phone (one column, a
//! viewport meta, tables that scroll sideways).
use maud::{html, Markup, DOCTYPE};

use crate::store::history::{split_mailbox, Decision, Query};
use crate::store::quarantine::Listed;

const CSS: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}\
header{background:#234;color:#fff;padding:.5em 1em;display:flex;flex-wrap:wrap;gap:1em;align-items:center}\
header a{color:#fff}main{padding:1em;max-width:70em}\
table{border-collapse:collapse;width:100%;display:block;overflow-x:auto}\
td,th{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}\
.spam{color:#a00}.ham{color:#070}form.inline{display:inline}button{font:inherit;padding:.2em .6em}\
.msg{background:#fff;border:1px solid #ddd;padding:1em;white-space:pre-wrap;overflow-x:auto}\
.err{background:#fee;border:1px solid #c00;padding:.5em}.ok{background:#efe;border:1px solid #0a0;padding:.5em}\
label.allow{display:inline-block;font-size:.8em;color:#444;max-width:10em;vertical-align:middle}.hdr{color:#555;font-family:monospace}td.matched{font-family:monospace;word-break:break-word}\
input[type=text],input[type=search],input[type=password],select{font:inherit;max-width:100%}";

/// The page frame. `who` is shown with a log-out button when logged in.
pub fn frame(title: &str, who: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — popsift" }
                style { (maud::PreEscaped(CSS)) }
            }
            body {
                header {
                    strong { "popsift" }
                    @if let Some((name, csrf)) = who {
                        a href="/decisions" { "Decisions" }
                        a href="/quarantine" { "Quarantine" }
                        a href="/stats" { "Statistics" }
                        span { (name) }
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form; `servers` (configured upstreams, `HOST:PORT`) become a list to choose
/// from when there are several.
pub fn login(error: Option<&str>, csrf: &str, servers: &[String]) -> Markup {
    html! {
        h1 { "Log in" }
        p { "Your mailbox's user name and password (checked with your mail server, never stored)." }
        @if let Some(e) = error { p.err { (e) } }
        form method="post" action="/login" {
            input type="hidden" name="csrf" value=(csrf);
            p { label { "User name " input type="text" name="user" autocomplete="username" required; } }
            p { label { "Password " input type="password" name="password" autocomplete="current-password" required; } }
            @if servers.len() > 1 {
                p { label { "Mail server " select name="server" required {
                    @for s in servers { option value=(s) { (s) } }
                } } }
            }
            p { button type="submit" { "Log in" } }
        }
    }
}

pub fn notice(text: &str, ok: bool) -> Markup {
    html! { @if ok { p.ok { (text) } } @else { p.err { (text) } } }
}

fn time(secs: u64) -> String {
    crate::cmd::quarantine::format_time(secs)
}

fn verdict_class(d: &Decision) -> &'static str {
    if d.spam {
        "spam"
    } else {
        "ham"
    }
}

/// The "add sender to my allowlist" checkbox that goes with a "Not spam" button.
fn allow_box() -> Markup {
    html! { " " label.allow { input type="checkbox" name="allow" value="1"; " add sender to my allowlist" } }
}

/// The two one-click buttons for a decision.
pub fn buttons(mailbox: &str, seq: u64, csrf: &str) -> Markup {
    html! {
        form.inline method="post" action="/notspam" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="mb" value=(mailbox);
            input type="hidden" name="seq" value=(seq);
            button type="submit" { "Not spam" }
            (allow_box())
        }
        " "
        form.inline method="post" action="/spam" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="mb" value=(mailbox);
            input type="hidden" name="seq" value=(seq);
            button type="submit" { "Spam" }
        }
    }
}

fn link_query(mailbox: &str, seq: u64) -> String {
    let mut s = String::from("/decision?");
    s.push_str(&crate::ui::form_encode(&[("mb", mailbox), ("seq", &seq.to_string())]));
    s
}

/// The decisions list, newest first, with filters.
pub fn decisions(rows: &[(u64, Decision)], q: &Query, csrf: &str, admin: bool, limit: usize) -> Markup {
    let action = q.action.as_deref().unwrap_or("");
    html! {
        h1 { "Decisions" }
        form method="get" action="/decisions" {
            label { "Action " select name="action" {
                @for a in ["", "spam", "ham", "none", "tag", "hide", "quarantine", "delete", "allow"] {
                    option value=(a) selected[a == action] { @if a.is_empty() { "any" } @else { (a) } }
                }
            } }
            " "
            label { "Rule " input type="text" name="rule" size="12" value=(q.rule.as_deref().unwrap_or("")); }
            " "
            label { "From/Subject " input type="search" name="q" size="16" value=(q.search.as_deref().unwrap_or("")); }
            " "
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() { p { "No decisions recorded." } }
        @else {
            table {
                thead { tr {
                    th { "Time" } @if admin { th { "Mailbox" } } th { "From" } th { "Subject" } th { "Score" }
                    th { "Action" } th { "Applied" } th { "Rules" } th {}
                } }
                tbody {
                    @for (seq, d) in rows {
                        tr class=(verdict_class(d)) {
                            td { (time(d.time)) }
                            @if admin { td { (split_mailbox(&d.mailbox).0) } }
                            td { (d.from) }
                            td { a href=(link_query(&d.mailbox, *seq)) { @if d.subject.is_empty() { "(no subject)" } @else { (d.subject) } } }
                            td { (format!("{:.1}", d.score)) }
                            td { (d.action) }
                            td { (d.disposition) @if d.dry_run { " (dry run)" } }
                            td { (d.rules.join(", ")) }
                            td { (buttons(&d.mailbox, *seq, csrf)) }
                        }
                    }
                }
            }
            @if rows.len() >= limit {
                @if let Some((last, _)) = rows.last() {
                    p { a href=(format!("/decisions?{}", crate::ui::form_encode(&[
                        ("action", action),
                        ("rule", q.rule.as_deref().unwrap_or("")),
                        ("q", q.search.as_deref().unwrap_or("")),
                        ("before", &last.to_string()),
                    ]))) { "Older" } }
                }
            }
        }
    }
}

/// One fired rule in a decision's score breakdown (from the current rule set).
pub struct RuleLine {
    pub id: String,
    pub score: Option<f64>,
    pub action: Option<String>,
    pub describe: Option<String>,
}

/// One decision: why, and the message's headers when popsift still holds them.
pub fn decision(seq: u64, d: &Decision, rules: &[RuleLine], held: Option<&str>, csrf: &str) -> Markup {
    html! {
        h1 { @if d.subject.is_empty() { "(no subject)" } @else { (d.subject) } }
        table {
            tr { th { "Mailbox" } td { (split_mailbox(&d.mailbox).0) " at " (split_mailbox(&d.mailbox).1) } }
            tr { th { "Time" } td { (time(d.time)) } }
            tr { th { "From" } td { (d.from) } }
            tr { th { "UIDL" } td { (d.uidl) } }
            tr { th { "Size" } td { (d.size) " octets" } }
            tr { th { "Verdict" } td class=(verdict_class(d)) { @if d.spam { "spam" } @else { "not spam" } } }
            tr { th { "Score" } td { (format!("{:.2}", d.score)) " (threshold " (format!("{:.2}", d.threshold)) ")" } }
            tr { th { "Rules" } td { @if d.rules.is_empty() { "none" } @else { (d.rules.join(", ")) } } }
            tr { th { "Bayes" } td { @match d.bayes { Some(p) => (format!("{p:.3}")), None => "not consulted" } } }
            tr { th { "Action" } td { (d.action) } }
            tr { th { "Applied" } td { (d.disposition) @if d.dry_run { " (dry run: nothing changed)" } } }
        }
        p { (buttons(&d.mailbox, seq, csrf)) }
        @if !rules.is_empty() {
            h2 { "Why" }
            table {
                thead { tr { th { "Rule" } th { "Score" } th { "Action" } th { "Matched" } th { "Description" } } }
                tbody {
                    @for r in rules {
                        tr {
                            td { (r.id) }
                            td { @if let Some(sc) = r.score { (format!("{sc:+.1}")) } }
                            td { (r.action.as_deref().unwrap_or("")) }
                            td.matched {
                                @if let Some(m) = d.matched.iter().find(|m| m.rule == r.id) {
                                    @if !m.header.is_empty() { span.hdr { (m.header) ": " } }
                                    (m.before) @if !m.found.is_empty() { mark { (m.found) } } (m.after)
                                }
                            }
                            td { (r.describe.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if !d.clues.is_empty() {
            h2 { "Classifier: the tokens that weighed most" }
            table {
                thead { tr { th { "Token" } th { "Spam probability" } th { "Towards" } th { "Trained spam" } th { "Trained ham" } } }
                tbody {
                    @for c in &d.clues {
                        tr class=(if c.probability >= 0.5 { "spam" } else { "ham" }) {
                            td.matched { (c.token) }
                            td { (format!("{:.3}", c.probability)) }
                            td { @if c.probability >= 0.5 { "spam" } @else { "not spam" } " (" (format!("{:+.1}", c.log_odds())) ")" }
                            td { (c.spam) }
                            td { (c.ham) }
                        }
                    }
                }
            }
        }
        @if let Some(h) = held {
            h2 { "Headers as the server held them" }
            pre.msg { (h) }
        }
    }
}

/// The quarantine of the viewer's mailbox (or every mailbox for the admin).
pub fn quarantine(items: &[Listed], csrf: &str) -> Markup {
    html! {
        h1 { "Quarantine" }
        @if items.is_empty() { p { "The quarantine is empty." } }
        @else {
            table {
                thead { tr { th { "Quarantined" } th { "From" } th { "Subject" } th { "Score" } th { "Rules" } th {} } }
                tbody {
                    @for m in items {
                        tr {
                            td { (time(m.quarantined_at)) }
                            td { (m.from) }
                            td { a href=(format!("/quarantine/view?{}", crate::ui::form_encode(&[("id", &m.id)]))) {
                                @if m.subject.is_empty() { "(no subject)" } @else { (m.subject) } } }
                            td { (m.score) }
                            td { (m.rules) }
                            td { (quarantine_buttons(&m.id, csrf)) }
                        }
                    }
                }
            }
        }
    }
}

/// The `Not spam` and `Delete for good` forms of one quarantined message (list row and
/// detail view alike).
fn quarantine_buttons(id: &str, csrf: &str) -> Markup {
    html! {
        form.inline method="post" action="/release" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="id" value=(id);
            button type="submit" { "Not spam" }
            (allow_box())
        }
        " "
        form.inline method="post" action="/quarantine/delete" {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="id" value=(id);
            button type="submit" { "Delete for good" }
        }
    }
}

/// One quarantined message: its header block, and the body as text.
pub fn quarantined(m: &Listed, text: &str, csrf: &str) -> Markup {
    html! {
        h1 { @if m.subject.is_empty() { "(no subject)" } @else { (m.subject) } }
        p { (quarantine_buttons(&m.id, csrf)) }
        pre.msg { (text) }
    }
}

/// Rule hit counts and the classifier's training counts.
pub fn stats(rules: &[(String, [u64; 3])], trained: Option<(u64, u64, u64)>) -> Markup {
    html! {
        h1 { "Rule hits" }
        @if rules.is_empty() { p { "No rule has fired in the recorded decisions." } }
        @else {
            table {
                thead { tr { th { "Rule" } th { "1 day" } th { "7 days" } th { "30 days" } } }
                tbody { @for (r, c) in rules { tr { td { (r) } td { (c[0]) } td { (c[1]) } td { (c[2]) } } } }
            }
        }
        h2 { "Classifier" }
        @match trained {
            Some((spam, ham, tokens)) => p { "Trained on " (spam) " spam and " (ham) " ham messages (" (tokens) " tokens)." },
            None => p { "Not trained yet." },
        }
    }
}
