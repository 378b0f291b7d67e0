//! RFC 2047 encoded-word decoding (`=?charset?B|Q?text?=`), lenient as mail readers are.
//!
//! Why not `rfc2047-decoder`: it decodes each encoded word on its own, so a UTF-8 character
//! split across two adjacent words comes out as two replacement characters, and it rejects
//! 8-bit clear text. Here adjacent encoded words in the same charset are concatenated as
//! *bytes* before charset decoding (RFC 2047 §6.2 forbids the split, senders do it anyway),
//! whitespace between adjacent encoded words is dropped (§6.2), charsets are resolved with
//! `encoding_rs` (WHATWG labels plus a few aliases, RFC 2231 `*lang` suffixes stripped),
//! unknown charsets fall back to lossy UTF-8, and malformed words are left as they are.
use std::borrow::Cow;

use encoding_rs::Encoding;

/// Decodes every encoded word in `s`. Returns `s` unchanged (borrowed) when it has none.
pub fn decode_words(s: &str) -> Cow<'_, str> {
    if !s.contains("=?") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    // Pending bytes of adjacent encoded words sharing a charset.
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_cs: Option<String> = None;
    // Whitespace seen after the last encoded word, emitted only if clear text follows.
    let mut gap = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("=?") {
        let (before, tail) = rest.split_at(start);
        match parse_word(tail) {
            Some((cs, bytes, len)) => {
                let only_ws = before.chars().all(char::is_whitespace);
                if pending_cs.is_some() && only_ws {
                    // Adjacent to the previous encoded word: whitespace dropped.
                } else {
                    flush(&mut out, &mut pending, &mut pending_cs);
                    out.push_str(&gap);
                    out.push_str(before);
                }
                gap.clear();
                let same = pending_cs.as_deref().is_some_and(|p| p.eq_ignore_ascii_case(&cs));
                if !same {
                    flush(&mut out, &mut pending, &mut pending_cs);
                    pending_cs = Some(cs);
                }
                pending.extend_from_slice(&bytes);
                rest = &tail[len..];
                // Collect following whitespace into `gap`.
                let ws = rest.len() - rest.trim_start().len();
                gap.push_str(&rest[..ws]);
                rest = &rest[ws..];
            }
            None => {
                flush(&mut out, &mut pending, &mut pending_cs);
                out.push_str(&gap);
                gap.clear();
                out.push_str(before);
                out.push_str("=?");
                rest = &tail[2..];
            }
        }
    }
    flush(&mut out, &mut pending, &mut pending_cs);
    out.push_str(&gap);
    out.push_str(rest);
    Cow::Owned(out)
}

fn flush(out: &mut String, pending: &mut Vec<u8>, cs: &mut Option<String>) {
    if let Some(c) = cs.take() {
        out.push_str(&decode_charset(&c, pending));
        pending.clear();
    }
}

/// Parses one encoded word at the start of `s`: returns (charset, decoded bytes, length).
fn parse_word(s: &str) -> Option<(String, Vec<u8>, usize)> {
    let body = s.strip_prefix("=?")?;
    let q1 = body.find('?')?;
    let charset = &body[..q1];
    if charset.is_empty() || charset.len() > 64 || charset.contains(char::is_whitespace) {
        return None;
    }
    let after = &body[q1 + 1..];
    let enc = after.chars().next()?;
    if after.get(1..2) != Some("?") {
        return None;
    }
    let text_start = 2;
    let text_len = after[text_start..].find("?=")?;
    let text = &after[text_start..text_start + text_len];
    if text.contains([' ', '\t', '\n', '\r']) {
        return None;
    }
    let bytes = match enc {
        'B' | 'b' => decode_b(text),
        'Q' | 'q' => decode_q(text),
        _ => return None,
    };
    let total = 2 + q1 + 1 + text_start + text_len + 2;
    let charset = charset.split('*').next().unwrap_or(charset).to_string();
    Some((charset, bytes, total))
}

fn decode_b(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn decode_q(text: &str) -> Vec<u8> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'_' => out.push(b' '),
            b'=' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push(hex(b[i + 1]).unwrap_or(0) << 4 | hex(b[i + 2]).unwrap_or(0));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Looks up a charset label: WHATWG labels via `encoding_rs`, plus common aliases.
pub fn charset(label: &str) -> Option<&'static Encoding> {
    let l = label.trim().to_ascii_lowercase();
    if let Some(e) = Encoding::for_label(l.as_bytes()) {
        return Some(e);
    }
    let alias = match l.as_str() {
        "utf8" => "utf-8",
        "latin-1" | "latin_1" | "iso8859-1" | "iso_8859_1" => "iso-8859-1",
        "iso8859-15" | "latin-9" | "latin9" => "iso-8859-15",
        "cp1250" => "windows-1250",
        "cp1251" => "windows-1251",
        "cp1252" => "windows-1252",
        "cp1253" => "windows-1253",
        "cp1254" => "windows-1254",
        "cp1255" => "windows-1255",
        "cp1256" => "windows-1256",
        "cp1257" => "windows-1257",
        "cp1258" => "windows-1258",
        "cp936" | "ms936" => "gbk",
        "cp932" | "ms932" | "sjis" | "shift-jis" => "shift_jis",
        "cp949" | "ks_c_5601" | "ksc5601" => "euc-kr",
        "cp850" | "cp437" | "ansi" => "windows-1252",
        "big5-hkscs" | "cp950" => "big5",
        "koi8u" => "koi8-u",
        "koi8r" => "koi8-r",
        "mac" | "x-mac-roman" | "macroman" => "macintosh",
        _ => return None,
    };
    Encoding::for_label(alias.as_bytes())
}

fn decode_charset(label: &str, bytes: &[u8]) -> String {
    match charset(label) {
        Some(enc) => enc.decode_without_bom_handling(bytes).0.into_owned(),
        None => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_passthrough() {
        assert!(matches!(decode_words("hello"), Cow::Borrowed("hello")));
        assert_eq!(decode_words("a =? b"), "a =? b");
        assert_eq!(decode_words("=?"), "=?");
        assert_eq!(decode_words("=?utf-8?X?abc?="), "=?utf-8?X?abc?=");
        assert_eq!(decode_words("=?utf-8?B?abc"), "=?utf-8?B?abc");
    }

    #[test]
    fn b_and_q() {
        assert_eq!(decode_words("=?UTF-8?B?SGVsbG8gd29ybGQ=?="), "Hello world");
        assert_eq!(decode_words("=?iso-8859-1?Q?caf=E9_au_lait?="), "café au lait");
        assert_eq!(decode_words("Re: =?utf-8?q?=C3=A9t=C3=A9?= ok"), "Re: été ok");
    }

    #[test]
    fn adjacent_words_merge_and_split_utf8() {
        // "é" = C3 A9 split across two B words.
        let s = "=?UTF-8?B?w6k=?= =?UTF-8?B?w6k=?=";
        assert_eq!(decode_words(s), "éé");
        let split = "=?utf-8?Q?caf=C3?=\r\n =?utf-8?Q?=A9?=";
        assert_eq!(decode_words(split), "café");
        // Whitespace between encoded word and clear text kept.
        assert_eq!(decode_words("=?utf-8?Q?a?= b =?utf-8?Q?c?="), "a b c");
        // Different charsets next to each other.
        assert_eq!(decode_words("=?iso-8859-1?Q?=E9?= =?utf-8?Q?=C3=A9?="), "éé");
    }

    #[test]
    fn unknown_charset_and_lang() {
        assert_eq!(decode_words("=?x-unknown?Q?abc=FF?="), "abc\u{fffd}");
        assert_eq!(decode_words("=?utf-8*en?Q?hi?="), "hi");
        assert_eq!(decode_words("=?koi8-r?B?8NLJ18XU?="), "Привет");
        assert_eq!(decode_words("=?cp1252?Q?=80?="), "€");
    }
}
