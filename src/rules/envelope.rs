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
//! an authentication token (`with ESMTPA`/`ESMTPSA`/`LMTPA`/`HTTP…`) are trusted. Unlike
//! SpamAssassin, which knows some hundred `Received` formats, a relay here is any
//! `Received: from … by …` line naming an IP address before ` by ` (bracketed, or the first
//! bare one); its envelope sender comes from the generic `envelope-from <…>` notes and XMail's
//! `from <…>`, not from qmail-scanner's separate header.
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
    last_trusted.and_then(|r| r.envfrom).filter(|e| usable(e))
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
    let ip = first_ip(&rest[..by])?;
    // SpamAssassin: ` with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)`, or an
    // `authenticated` comment before ` by `.
    let lower = rest.to_ascii_lowercase();
    let auth = lower.match_indices(" with ").any(|(i, w)| {
        let proto = lower[i + w.len()..].split([' ', ';']).next().unwrap_or("");
        let smtp_auth = ["esmtp", "lmtp", "utf8smtp", "utf8lmtp"]
            .iter()
            .any(|p| proto.strip_prefix(p).is_some_and(|t| t == "a" || t == "sa"));
        smtp_auth || ["asmtp", "http", "https", "httpu"].contains(&proto)
    }) || lower[..by].contains("authenticated");
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

/// The relay's address: the first bracketed IP (`[192.0.2.1]`, `cpunks@[192.0.2.1]`,
/// `[IPv6:2001:db8::1]`), else the first bare IPv4 address after the host name.
fn first_ip(from_part: &str) -> Option<String> {
    let mut rest = from_part;
    while let Some(open) = rest.find('[') {
        let inner = &rest[open + 1..];
        let Some(close) = inner.find(']') else { break };
        let t = &inner[..close];
        let t = strip_prefix_ci(t, "ipv6:").unwrap_or(t);
        if is_ipv4(t) || (t.contains(':') && t.parse::<std::net::Ipv6Addr>().is_ok()) {
            return Some(t.to_ascii_lowercase());
        }
        rest = &inner[close..];
    }
    from_part
        .split([' ', '(', ')'])
        .skip(1)
        .map(|t| t.trim_end_matches([',', ';']))
        .map(|t| t.split_once(':').filter(|(a, _)| is_ipv4(a)).map_or(t, |(a, _)| a))
        .find(|t| is_ipv4(t))
        .map(str::to_string)
}

fn is_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.parse::<u8>().is_ok())
}

/// SpamAssassin's `IP_PRIVATE` (Constants.pm) for the addresses [`first_ip`] returns.
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
        assert_eq!(first_ip("h (cpunks@[207.200.56.4])").as_deref(), Some("207.200.56.4"));
        assert_eq!(first_ip("h ([IPv6:2001:db8::1])").as_deref(), Some("2001:db8::1"));
        assert_eq!(first_ip("unknown (HELO x) (97.103.86.127)").as_deref(), Some("97.103.86.127"));
        assert!(is_private("172.20.1.1") && is_private("fe80::1") && !is_private("8.8.8.8"));
    }
}
