//! The `EnvelopeFrom` pseudo-header: the SMTP envelope sender (RFC 5321 §4.4 `MAIL FROM`),
//! recovered from the header block the way SpamAssassin's `get_envelope_from`
//! (`Mail::SpamAssassin::PerMsgStatus`, 4.0) does without an `envelope_sender_header` setting.
//!
//! A POP3 proxy never sees the SMTP envelope, only what the delivering MTAs wrote into the
//! header. SpamAssassin's order, followed here:
//! 1. the `envelope-from`/`envelope-sender`/`return-path` noted in a `Received` line of the
//!    last relay outside the trust boundary (or, when every relay is trusted, the oldest one);
//! 2. nothing at all when an `X-Sender` address and a `(fetchmail` `Received` line are both
//!    present (fetchmail reuses list software's `X-Sender` as the envelope sender);
//! 3. `X-Envelope-From` (procmail), unless a `Received` field precedes it (then: nothing);
//! 4. `Envelope-Sender` (qmail), unless a `Received` field precedes it;
//! 5. `Return-Path` (RFC 5321 §4.4, written at final delivery), unless a `Received` field
//!    precedes it.
//!
//! The trust boundary of step 1 is SpamAssassin's inferred one (no `trusted_networks`): relays
//! from a private address (RFC 1918, loopback, link-local, CGN, IPv6 ULA/link-local) or with
//! an authentication token (`with ESMTPA`/`ESMTPSA`/`LMTPA`/`HTTP…`, or SpamAssassin's
//! Sendmail/Courier/Postfix authentication comments) are trusted. Unlike SpamAssassin, which
//! knows some hundred `Received` formats, a relay here is any `Received: from … by …` line
//! naming an IP address before ` by ` where the receiving MTA writes it (see [`relay_ip`]):
//! the HELO and host name are the sender's choice, and reading an address or the word
//! `authenticated` from them would let a spammer move the trust boundary and pick the
//! envelope sender. Its envelope sender comes from the generic `envelope-from <…>` notes and
//! XMail's `from <…>`, not from qmail-scanner's separate header. Like SpamAssassin with its
//! default `originating_ip_headers`, an IP in `X-Originating-IP` and kin ends the chain with
//! a relay that names no sender.
use super::header::{parse_addresses, Headers};

/// The envelope sender as SpamAssassin would derive it; `None` when it cannot be known (the
/// rules then see an empty value, as SpamAssassin's do).
pub fn envelope_from(h: &Headers) -> Option<String> {
    if let Some(envf) = relay_envelope_from(h) {
        return Some(envf);
    }
    let x_sender = first_addr(h, "X-Sender");
    if x_sender.is_some_and(|a| a.contains('@')) && h.get_all_raw("Received").any(|r| r.contains("(fetchmail")) {
        return None;
    }
    if let Some(envf) = first_addr(h, "X-Envelope-From") {
        return (!received_before(h, "X-Envelope-From")).then_some(envf);
    }
    for name in ["Envelope-Sender", "Return-Path"] {
        if let Some(envf) = first_addr(h, name) {
            if !received_before(h, name) {
                return Some(envf);
            }
        }
    }
    None
}

/// SpamAssassin's `NAME:first:addr`: the first address of the topmost field of that name,
/// when it is one (`<>` and a bare word give nothing, as in SpamAssassin).
fn first_addr(h: &Headers, name: &str) -> Option<String> {
    let raw = h.get_all_raw(name).next()?;
    parse_addresses(raw).into_iter().next().map(|m| m.addr).filter(|a| a.contains('@'))
}

/// SpamAssassin's `ALL =~ /^Received:.*?^NAME:/smi`: some field `name` comes after some
/// `Received` field (not necessarily the topmost one of that name).
fn received_before(h: &Headers, name: &str) -> bool {
    let mut seen_received = false;
    for f in h.fields() {
        if seen_received && f.name().eq_ignore_ascii_case(name) {
            return true;
        }
        seen_received |= f.name().eq_ignore_ascii_case("Received");
    }
    false
}

/// Step 1: the envelope sender of the last untrusted relay (else of the first trusted one),
/// when it has a usable one (`@` after the first character, or empty for `<>`).
fn relay_envelope_from(h: &Headers) -> Option<String> {
    let mut last_trusted = None;
    for r in h.get_all_raw("Received").filter_map(relay) {
        if !r.trusted {
            return r.envfrom.filter(|e| usable(e));
        }
        last_trusted = Some(r);
    }
    if originating_ip(h) {
        // SpamAssassin appends a relay without an envelope sender for these headers (its
        // default `originating_ip_headers`), below every `Received` one: trusted or not, it
        // is then the relay consulted, and it names no sender.
        return None;
    }
    last_trusted.and_then(|r| r.envfrom).filter(|e| usable(e))
}

/// SpamAssassin's default `originating_ip_headers` (10_default_prefs.cf); one counts when
/// its topmost field holds an IP address.
const ORIGINATING_IP_HEADERS: [&str; 6] = [
    "X-Yahoo-Post-IP",
    "X-Originating-IP",
    "X-Apparently-From",
    "X-SenderIP",
    "X-AOL-IP",
    "X-MS-Exchange-CrossTenant-OriginalAttributedTenantConnectingIp",
];

fn originating_ip(h: &Headers) -> bool {
    ORIGINATING_IP_HEADERS
        .iter()
        .filter_map(|name| h.get_all_raw(name).next())
        .any(|v| v.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':')).any(|t| ip_literal(t).is_some()))
}

fn usable(envf: &str) -> bool {
    envf.is_empty() || envf.find('@').is_some_and(|i| i > 0)
}

/// What step 1 needs of one `Received` line.
struct Relay {
    trusted: bool,
    envfrom: Option<String>,
}

/// Parses one `Received` value as a relay; `None` for lines SpamAssassin does not count as
/// relays (no `from`, local delivery, no IP address or no `by`).
fn relay(value: &str) -> Option<Relay> {
    let line = value.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.trim_end_matches([';', ' ']);
    let rest = strip_prefix_ci(line, "from ").or_else(|| strip_prefix_ci(line, "(from "))?;
    if line.contains(" with local for ") {
        return None;
    }
    let by = rest.find(" by ")?;
    let ip = relay_ip(&rest[..by])?;
    // SpamAssassin: ` with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)`, or one of
    // its authentication comments after the relay's address (see [`auth_comment`]).
    let lower = rest.to_ascii_lowercase();
    let auth = lower.match_indices(" with ").any(|(i, w)| {
        let proto = lower[i + w.len()..].split([' ', ';']).next().unwrap_or("");
        let smtp_auth = ["esmtp", "lmtp", "utf8smtp", "utf8lmtp"]
            .iter()
            .any(|p| proto.strip_prefix(p).is_some_and(|t| t == "a" || t == "sa"));
        smtp_auth || ["asmtp", "http", "https", "httpu"].contains(&proto)
    }) || auth_comment(line);
    Some(Relay { trusted: is_private(&ip) || auth, envfrom: envfrom_of(rest) })
}

fn strip_prefix_ci<'a>(s: &'a str, p: &str) -> Option<&'a str> {
    (s.len() >= p.len() && s.is_char_boundary(p.len()) && s[..p.len()].eq_ignore_ascii_case(p)).then(|| &s[p.len()..])
}

/// SpamAssassin: `/(?:return-path:? |envelope-(?:sender|from)[ =])(\S+)\b/i` on the line
/// after `from `, then leading `<` and trailing `>` removed and `[\s#[]()<>|]` made `!`.
fn envfrom_of(rest: &str) -> Option<String> {
    let lower = rest.to_ascii_lowercase();
    let mut found = None;
    for key in
        ["return-path: ", "return-path ", "envelope-sender ", "envelope-sender=", "envelope-from ", "envelope-from="]
    {
        if let Some(i) = lower.find(key) {
            if !found.is_some_and(|(j, _)| i >= j) {
                found = Some((i, key.len()));
            }
        }
    }
    let value = match found {
        Some((i, len)) => {
            let run = rest[i + len..].split(' ').next().unwrap_or("");
            // `(\S+)\b`: the longest non-space run that ends at a word boundary.
            let b = run.as_bytes();
            let word = |k: usize| b[k].is_ascii_alphanumeric() || b[k] == b'_';
            let end =
                (1..=b.len()).rev().find(|&e| e == b.len() && word(e - 1) || e < b.len() && word(e - 1) != word(e))?;
            run[..end].to_string()
        }
        None if rest.contains("[XMail ") => {
            let i = rest.find(" from <")?;
            let v = &rest[i + 7..];
            v[..v.find('>')?].to_string()
        }
        None => return None,
    };
    let v = value.trim_start().trim_start_matches('<').trim_end().trim_end_matches('>');
    Some(v.chars().map(|c| if c.is_whitespace() || "\0#[]()<>|".contains(c) { '!' } else { c }).collect())
}

/// SpamAssassin's authentication comments (`Received.pm`, 4.0), each anchored after the
/// MTA-written address so that a sender-chosen HELO or host name cannot supply the word:
/// Sendmail/MDaemon `([IP]) (… authenticated …) by` (case-sensitive `authenticated`),
/// Courier `]) (AUTH: LOGIN user) by` and Postfix `) (Authenticated sender: u) by h (Postfix) with`.
fn auth_comment(line: &str) -> bool {
    static RES: std::sync::OnceLock<[regex::Regex; 3]> = std::sync::OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            r"^\(?from .*?(?:\](?: \([^)]*\))?\)|\)\]) .*?\(.*?authenticated.*?\).*? by",
            r"^\(?from .*?(?:\]\)|\)\]) \(AUTH: (?:LOGIN|PLAIN|DIGEST-MD5|CRAM-MD5) \S+(?:, .*?)?\) by ",
            r"\) \(Authenticated sender: \S+\) by \S+ \([^)]+\) with ",
        ]
        .map(|re| regex::Regex::new(re).expect("fixed pattern"))
    });
    (line.contains("authenticated") && res[0].is_match(line)) || res[1..].iter().any(|re| re.is_match(line))
}

/// The relay's address, taken only from where the receiving MTA writes it, never from the
/// sender-chosen HELO or host name: the first word after `from` is skipped, and so are
/// `(HELO …)`/`(EHLO …)` comments and `helo=…` fields. What is left gives the first bracketed
/// IP (Postfix/Sendmail `(rdns [IP])`, Exim `([IP] …)`, `(user@[IP])`, `([IP])`,
/// `[IPv6:…]`), else the first bare IPv4 (qmail `(HELO x) (IP)`). When the comments hold
/// no address, a first word `[IP]` is the connecting address: Exim writes it there when the
/// client has no reverse DNS (`from [IP] (helo=x) by`, SpamAssassin's `Received.pm` reads
/// it so), and a line that is only `from [IP]` names it too.
fn relay_ip(from_part: &str) -> Option<String> {
    let from_part = from_part.trim();
    let (first, rest) = from_part.split_once(' ').unwrap_or((from_part, ""));
    let written_as_first = || first.strip_prefix('[').and_then(|t| t.strip_suffix(']')).and_then(ip_literal);
    if rest.trim().is_empty() {
        return written_as_first();
    }
    let rest = drop_helo(rest);
    let mut scan = rest.as_str();
    while let Some(open) = scan.find('[') {
        let inner = &scan[open + 1..];
        let Some(close) = inner.find(']') else { break };
        if let Some(ip) = ip_literal(&inner[..close]) {
            return Some(ip);
        }
        scan = &inner[close..];
    }
    rest.split([' ', '(', ')'])
        .map(|t| t.trim_end_matches([',', ';']))
        .map(|t| t.split_once(':').filter(|(a, _)| is_ipv4(a)).map_or(t, |(a, _)| a))
        .find(|t| is_ipv4(t))
        .map(str::to_string)
        .or_else(written_as_first)
}

/// `192.0.2.1`, `2001:db8::1` or `IPv6:2001:db8::1` as an address, lower-cased.
fn ip_literal(t: &str) -> Option<String> {
    let t = strip_prefix_ci(t, "ipv6:").unwrap_or(t);
    (is_ipv4(t) || (t.contains(':') && t.parse::<std::net::Ipv6Addr>().is_ok())).then(|| t.to_ascii_lowercase())
}

/// The from-part without its sender-chosen `(HELO …)`/`(EHLO …)` comments and `helo=…` fields.
fn drop_helo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('(') {
        let after = &rest[open + 1..];
        if strip_prefix_ci(after, "helo ").or_else(|| strip_prefix_ci(after, "ehlo ")).is_some() {
            out.push_str(&rest[..open]);
            rest = after.find(')').map_or("", |c| &after[c + 1..]);
        } else {
            out.push_str(&rest[..=open]);
            rest = after;
        }
    }
    out.push_str(rest);
    let mut cleaned = String::with_capacity(out.len());
    let mut rest = out.as_str();
    // ASCII case-insensitive search in place: lower-casing the rest per field was quadratic.
    while let Some(i) = rest.as_bytes().windows(5).position(|w| w.eq_ignore_ascii_case(b"helo=")) {
        cleaned.push_str(&rest[..i]);
        let tail = &rest[i + 5..];
        rest = tail.find([' ', ')']).map_or("", |e| &tail[e..]);
    }
    cleaned.push_str(rest);
    cleaned
}

fn is_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u8>().is_ok())
}

/// SpamAssassin's `IP_PRIVATE` (Constants.pm) for the addresses [`relay_ip`] returns.
fn is_private(ip: &str) -> bool {
    if let Ok(v4) = ip.parse::<std::net::Ipv4Addr>() {
        let [a, b, ..] = v4.octets();
        return a == 10
            || a == 127
            || (a == 169 && b == 254)
            || (a == 172 && (16..=31).contains(&b))
            || (a == 192 && b == 168)
            || (a == 100 && (64..=127).contains(&b));
    }
    match ip.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| is_private(&v4.to_string()))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ef(block: &str) -> Option<String> {
        envelope_from(&Headers::parse(block.as_bytes()))
    }

    #[test]
    fn header_order_of_spamassassin() {
        // Return-Path at the top, written at final delivery.
        assert_eq!(ef("Return-Path: <a@b.example>\nReceived: from x by y; now\n\n").as_deref(), Some("a@b.example"));
        // `<>` and a bare word are no address: nothing.
        assert_eq!(ef("Return-Path: <>\n\n"), None);
        assert_eq!(ef("Return-Path: yyyy\n\n"), None);
        // A second Return-Path below a Received line makes the first one untrusted too.
        assert_eq!(ef("Return-Path: <a@b.example>\nReceived: via x; now\nReturn-Path: <c@d.example>\n\n"), None);
        // Below a Received line it may be a list's: not trusted, and nothing else is left.
        assert_eq!(ef("Received: from x by y; now\nReturn-Path: <a@b.example>\n\n"), None);
        // X-Envelope-From first; below a Received line it stops the search.
        let b = "X-Envelope-From: <p@q.example>\nEnvelope-Sender: e@s.example\nReturn-Path: <a@b.example>\n\n";
        assert_eq!(ef(b).as_deref(), Some("p@q.example"));
        let b = "Return-Path: <a@b.example>\nReceived: from x by y; now\nX-Envelope-From: <p@q.example>\n\n";
        assert_eq!(ef(b), None);
        // Envelope-Sender below a Received line: on to Return-Path.
        let b = "Return-Path: <a@b.example>\nReceived: from x by y; now\nEnvelope-Sender: e@s.example\n\n";
        assert_eq!(ef(b).as_deref(), Some("a@b.example"));
        // X-Sender with a fetchmail signature: unknown.
        let b = "X-Sender: l@list.example\nReceived: from pop (fetchmail-6.4 POP3) by me; now\nReturn-Path: <a@b.example>\n\n";
        assert_eq!(ef(b), None);
        assert_eq!(ef("Subject: x\n\n"), None);
    }

    #[test]
    fn envelope_sender_of_the_last_untrusted_relay() {
        // Exim notes the envelope sender; 203.0.113.9 is the first public (untrusted) relay.
        let b = "Received: from [192.168.1.5] (helo=lan) by mx.example with esmtp (Exim 4.96)\n\
                 \t(envelope-from <inner@lan.example>) id 1; now\n\
                 Received: from mail.sender.example ([203.0.113.9]) by gw.example with esmtp (Exim 4.96)\n\
                 \t(envelope-from <bounce-x@sender.example>) id 2; now\n\
                 Return-Path: <a@b.example>\n\n";
        assert_eq!(ef(b).as_deref(), Some("bounce-x@sender.example"));
        // The untrusted relay names no envelope sender: the headers decide.
        let b = "Return-Path: <a@b.example>\n\
                 Received: from mail.sender.example ([203.0.113.9]) by gw.example with esmtp id 2; now\n\
                 Received: from x ([198.51.100.7]) by y with esmtp (envelope-from <z@w.example>) id 3; now\n\n";
        assert_eq!(ef(b).as_deref(), Some("a@b.example"));
        // Every relay trusted (private or authenticated): the oldest one's.
        let b = "Received: from a ([10.0.0.1]) by b with esmtp (envelope-from <new@x.example>); now\n\
                 Received: from c ([198.51.100.7]) by d with esmtpsa (envelope-from <old@x.example>); now\n\n";
        assert_eq!(ef(b).as_deref(), Some("old@x.example"));
        // `envelope-sender=` and the word-boundary end of SpamAssassin's `(\S+)\b`.
        assert_eq!(
            envfrom_of("x ([198.51.100.7]) by y (envelope-sender=<q@r.example>);").as_deref(),
            Some("q@r.example")
        );
        // Lines without an IP address or `by` are not relays.
        assert!(relay("from localhost by host with local (Exim) (envelope-from <a@b>)").is_none());
        assert!(relay("by host with LMTP id 4").is_none());
        assert_eq!(relay_ip("h (cpunks@[207.200.56.4])").as_deref(), Some("207.200.56.4"));
        assert_eq!(relay_ip("h ([IPv6:2001:db8::1])").as_deref(), Some("2001:db8::1"));
        assert_eq!(relay_ip("unknown (HELO x) (97.103.86.127)").as_deref(), Some("97.103.86.127"));
        assert_eq!(relay_ip("[203.0.113.9]").as_deref(), Some("203.0.113.9"));
        assert!(is_private("172.20.1.1") && is_private("fe80::1") && !is_private("8.8.8.8"));
    }

    /// Each expectation is what SpamAssassin 4.0's `get_envelope_from` returned for the same
    /// header block (checked with a throwaway Perl call).
    #[test]
    fn relay_address_and_trust_ignore_sender_chosen_text() {
        let forged =
            "Received: from x ([198.51.100.7]) by y with esmtp (envelope-from <ceo@bank.example>) id 2; now\n\n";
        // Postfix with `EHLO [10.0.0.1]`: the address is the one in `(unknown [IP])`, public.
        let b = format!(
            "Return-Path: <rp@sender.example>\n\
             Received: from [10.0.0.1] (unknown [203.0.113.9]) by mx.example (Postfix) with ESMTP id 1; now\n{forged}"
        );
        assert_eq!(ef(&b).as_deref(), Some("rp@sender.example"));
        // qmail with `HELO 10.0.0.1`: the address follows the HELO comment.
        let b = format!(
            "Return-Path: <rp@sender.example>\n\
             Received: from unknown (HELO 10.0.0.1) (203.0.113.9) by mx.example with SMTP; now\n{forged}"
        );
        assert_eq!(ef(&b).as_deref(), Some("rp@sender.example"));
        assert_eq!(relay_ip("unknown (HELO 10.0.0.1) (203.0.113.9)").as_deref(), Some("203.0.113.9"));
        assert_eq!(relay_ip("h ([203.0.113.9] helo=10.0.0.1)").as_deref(), Some("203.0.113.9"));
        // Exim without reverse DNS writes the address as the first word: an untrusted public
        // relay whose envelope sender counts, not the forged line below it (SpamAssassin 4.0:
        // `real@spam.example`, relays untrusted `[ ip=203.0.113.9 … ] [ ip=10.0.0.1 … ]`).
        assert_eq!(relay_ip("[203.0.113.9] (helo=x)").as_deref(), Some("203.0.113.9"));
        assert_eq!(relay_ip("[203.0.113.9] (port=25 helo=x)").as_deref(), Some("203.0.113.9"));
        let b = "Return-Path: <rp@sender.example>\n\
             Received: from [203.0.113.9] (helo=x) by mx.example with esmtp (Exim 4.96) (envelope-from <real@spam.example>) id 1; now\n\
             Received: from x ([10.0.0.1]) by y with esmtp (envelope-from <ceo@bank.example>) id 2; now\n\n";
        assert_eq!(ef(b).as_deref(), Some("real@spam.example"));
        // Exim with a host name that contains `authenticated`: not an authentication note.
        let b = format!(
            "Return-Path: <rp@sender.example>\n\
             Received: from authenticated.evil.example ([203.0.113.9] helo=x) by mx.example with esmtp (Exim 4.96) id 1; now\n{forged}"
        );
        assert_eq!(ef(&b).as_deref(), Some("rp@sender.example"));
        // Sendmail's and Postfix's real authentication comments still make the relay trusted.
        let b = format!(
            "Return-Path: <rp@sender.example>\n\
             Received: from mail.sender.example ([203.0.113.9]) (authenticated bits=0) by mx.example (8.15/8.15) with ESMTP id 1; now\n{forged}"
        );
        assert_eq!(ef(&b).as_deref(), Some("ceo@bank.example"));
        let b = format!(
            "Return-Path: <rp@sender.example>\n\
             Received: from h (unknown [203.0.113.9]) (Authenticated sender: u) by mx.example (Postfix) with ESMTP id 1; now\n{forged}"
        );
        assert_eq!(ef(&b).as_deref(), Some("ceo@bank.example"));
    }

    #[test]
    fn originating_ip_header_ends_the_chain() {
        let b = "Return-Path: <rp@sender.example>\n\
                 Received: from a ([10.0.0.1]) by b with esmtp (envelope-from <new@x.example>); now\n\
                 Received: from c ([198.51.100.7]) by d with esmtpsa (envelope-from <old@x.example>); now\n";
        assert_eq!(ef(&format!("{b}\n")).as_deref(), Some("old@x.example"));
        assert_eq!(ef(&format!("{b}X-Originating-IP: [198.51.100.99]\n\n")).as_deref(), Some("rp@sender.example"));
        assert_eq!(ef(&format!("{b}X-Originating-IP: [10.1.2.3]\n\n")).as_deref(), Some("rp@sender.example"));
        assert_eq!(ef(&format!("{b}X-Originating-IP: none\n\n")).as_deref(), Some("old@x.example"));
    }
}
