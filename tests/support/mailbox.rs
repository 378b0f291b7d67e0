//! The standard test mailbox and the stored → wire normalization.
//!
//! [`test_mailbox`] returns 30 messages in delivery order: 23 ham, 7 spam-like. Seven ham
//! messages are real ones copied from the shared dev corpus (`tests/fixtures/mail/corpus/`, see
//! `tests/fixtures/mail/SOURCE.md`); the rest are generated here so that every edge case is
//! visible in code:
//! - lines starting with `.` and `..` and a body line that is just `.` (dot-stuffing),
//! - a ~3 MB message (with dot lines deep inside it),
//! - files stored with LF and with CRLF line ends, and files without a final newline,
//! - a header longer than 78 characters (getmail6 re-folds it), 8-bit UTF-8 bodies,
//!   an empty body, a 1500-character body line,
//! - traps for rules: a ham message that mentions VIAGRA only in its body, and a ham message
//!   from `notspam.example`.
//!
//! # What "spam" means here
//! [`Kind::Spam`] ⇔ the From address's domain is exactly `spam.example`, **or** the Subject,
//! after RFC 2047 decoding, contains `VIAGRA` (upper case). A rule file for proxy tests should
//! encode exactly that rule (see [`SPAM_RULE`]); every other message is [`Kind::Ham`].
//!
//! # Names and order
//! Names are `NNNN.popsift-test-DESC` with NNNN = 1000 + position. Dovecot gives new Maildir
//! files their UIDs in file-name order of the leading number (it sorts new mail by the time
//! stamp that Maildir names start with), so when the whole mailbox is delivered before the
//! first login, POP3 message n is `test_mailbox()[n - 1]`. `harness_smoke` asserts this.
//!
//! # Wire form
//! [`expected_wire_form`] is what a client receives for a stored file after dot-unstuffing:
//! Dovecot serves every bare LF as CRLF (CRLF stays CRLF) and adds a final CRLF to a file that
//! does not end with a newline. LIST/STAT sizes do not count that added CRLF
//! ([`expected_list_size`]).
use std::sync::OnceLock;

/// Ham or spam-like, per the rule in the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Ham,
    Spam,
}

/// One message of the test mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestMessage {
    /// Maildir base name used by [`super::Dovecot::deliver`] and as key in
    /// [`super::Dovecot::mailbox`].
    pub name: String,
    /// The stored file, exactly.
    pub bytes: Vec<u8>,
    pub kind: Kind,
}

/// Human description of the spam rule the mailbox is labelled by.
pub const SPAM_RULE: &str = "spam iff From domain == spam.example, or RFC 2047-decoded Subject contains VIAGRA";

/// The domain whose senders are spam.
pub const SPAM_DOMAIN: &str = "spam.example";
/// The Subject word that marks spam.
pub const SPAM_SUBJECT_WORD: &str = "VIAGRA";

const CORPUS: [(&str, &[u8]); 7] = [
    ("00017", include_bytes!("../fixtures/mail/corpus/00017.eml")),
    ("00024", include_bytes!("../fixtures/mail/corpus/00024.eml")),
    ("00030", include_bytes!("../fixtures/mail/corpus/00030.eml")),
    ("00046", include_bytes!("../fixtures/mail/corpus/00046.eml")),
    ("00059", include_bytes!("../fixtures/mail/corpus/00059.eml")),
    ("00110", include_bytes!("../fixtures/mail/corpus/00110.eml")),
    ("00111", include_bytes!("../fixtures/mail/corpus/00111.eml")),
];

fn header(from: &str, subject: &str, id: &str) -> String {
    format!(
        "Return-Path: <{addr}>\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\n\
         From: {from}\n\
         To: alice@example.org\n\
         Subject: {subject}\n\
         Message-ID: <{id}@popsift.test>\n\
         MIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: 8bit\n\n",
        addr = from.rsplit('<').next().unwrap_or(from).trim_end_matches('>'),
    )
}

fn msg(from: &str, subject: &str, id: &str, body: &str) -> Vec<u8> {
    let mut s = header(from, subject, id);
    s.push_str(body);
    s.into_bytes()
}

fn crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + lf.len() / 40);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

const DOT_BODY: &str = "Lines that start with dots follow.\n\
.\n\
..\n\
...\n\
.leading dot\n\
..two leading dots\n\
. dot space\n\
 .space dot\n\
end. of line.\n\
.\n";

/// Deterministic pseudo-random printable text of about `size` bytes in 76-character lines,
/// every 997th line starting with a dot.
fn big_body(size: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed;
    let mut out = String::with_capacity(size + 100);
    let mut line = 0usize;
    while out.len() < size {
        line += 1;
        if line % 997 == 0 {
            out.push('.');
        }
        for _ in 0..76 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            out.push(ALPHABET[(x >> 58) as usize] as char);
        }
        out.push('\n');
    }
    out
}

fn build() -> Vec<TestMessage> {
    let mut list: Vec<(String, Vec<u8>, Kind)> = Vec::new();
    let mut corpus = CORPUS.iter();
    let mut add_corpus = |list: &mut Vec<(String, Vec<u8>, Kind)>| {
        let (id, bytes) = corpus.next().expect("corpus message");
        list.push((format!("ham-corpus-{id}"), bytes.to_vec(), Kind::Ham));
    };
    let spam_from = "\"Best Deals\" <offers@spam.example>";
    let friend = "Bob Example <bob@example.net>";

    add_corpus(&mut list);
    list.push((
        "spam-viagra-subject".into(),
        msg("Pharmacy <pharma@pills.example>", "Cheap VIAGRA today only", "s1", "Buy now.\n"),
        Kind::Spam,
    ));
    add_corpus(&mut list);
    list.push(("ham-dot-lines".into(), msg(friend, "dots", "h-dots", DOT_BODY), Kind::Ham));
    list.push((
        "spam-from-domain-crlf".into(),
        crlf(&msg(spam_from, "An offer for you", "s2", "Click here.\nReally.\n")),
        Kind::Spam,
    ));
    add_corpus(&mut list);
    list.push((
        "ham-crlf".into(),
        crlf(&msg(friend, "stored with CRLF", "h-crlf", "Line one.\nLine two.\n\nLast.\n")),
        Kind::Ham,
    ));
    list.push((
        "ham-no-final-newline".into(),
        msg(friend, "no final newline", "h-nofinal", "This body does not end with a newline."),
        Kind::Ham,
    ));
    list.push(("spam-dot-lines".into(), msg(spam_from, "VIAGRA with dots", "s3", DOT_BODY), Kind::Spam));
    add_corpus(&mut list);
    list.push((
        "ham-large-3mb".into(),
        msg(friend, "a large attachment", "h-large", &big_body(3 * 1024 * 1024, 7)),
        Kind::Ham,
    ));
    list.push((
        "spam-rfc2047-subject".into(),
        // "Buy VIAGRA online" in base64 UTF-8.
        msg(spam_from, "=?UTF-8?B?QnV5IFZJQUdSQSBvbmxpbmU=?=", "s4", "Encoded subject.\n"),
        Kind::Spam,
    ));
    add_corpus(&mut list);
    list.push((
        "ham-long-header".into(),
        msg(
            friend,
            &format!("A subject that is much longer than seventy-eight characters {}", "and goes on ".repeat(8)),
            "h-long",
            "getmail6 re-folds the Subject of this message.\n",
        ),
        Kind::Ham,
    ));
    list.push((
        "spam-crlf-no-final-newline".into(),
        crlf(&msg(spam_from, "last chance", "s5", "No newline at the end.\nReally none.")).into_iter().collect(),
        Kind::Spam,
    ));
    list.push(("ham-utf8-body".into(), msg(friend, "Grüße", "h-utf8", "Grüße aus Köln — ünïcödé ✓\n"), Kind::Ham));
    add_corpus(&mut list);
    list.push((
        "spam-re-viagra".into(),
        msg(
            "Someone <someone@example.com>",
            "Re: your VIAGRA order",
            "s6",
            "From: fake@header.example\nnot a header\n",
        ),
        Kind::Spam,
    ));
    list.push(("ham-empty-body".into(), msg(friend, "empty body", "h-empty", ""), Kind::Ham));
    add_corpus(&mut list);
    list.push((
        "ham-viagra-in-body-only".into(),
        msg(friend, "doctor's appointment", "h-trap1", "The doctor mentioned VIAGRA; nothing in the headers.\n"),
        Kind::Ham,
    ));
    list.push((
        "ham-notspam-domain".into(),
        msg("Carol <carol@notspam.example>", "newsletter", "h-trap2", "Not spam.example.\n"),
        Kind::Ham,
    ));
    list.push(("spam-100k".into(), msg(spam_from, "VIAGRA catalogue", "s7", &big_body(100 * 1024, 11)), Kind::Spam));
    list.push((
        "ham-long-line".into(),
        msg(friend, "one long line", "h-longline", &format!("{}\n", "x".repeat(1500))),
        Kind::Ham,
    ));
    for i in 1..=6 {
        list.push((
            format!("ham-generated-{i}"),
            msg(
                friend,
                &format!("note {i}"),
                &format!("h-gen{i}"),
                &format!("Generated note {i}.\n{}", "Some filler text.\n".repeat(i * 3)),
            ),
            Kind::Ham,
        ));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, (desc, bytes, kind))| TestMessage { name: format!("{}.popsift-test-{desc}", 1001 + i), bytes, kind })
        .collect()
}

/// The standard test mailbox (30 messages, in delivery and POP3 order). See the module docs.
pub fn test_mailbox() -> Vec<TestMessage> {
    static MAILBOX: OnceLock<Vec<TestMessage>> = OnceLock::new();
    MAILBOX.get_or_init(build).clone()
}

/// The ham messages of a list, in order.
pub fn ham(messages: &[TestMessage]) -> Vec<TestMessage> {
    messages.iter().filter(|m| m.kind == Kind::Ham).cloned().collect()
}

/// The spam messages of a list, in order.
pub fn spam(messages: &[TestMessage]) -> Vec<TestMessage> {
    messages.iter().filter(|m| m.kind == Kind::Spam).cloned().collect()
}

/// What a client receives (after dot-unstuffing) for a stored message: bare LF becomes CRLF,
/// CRLF stays, and a final CRLF is added when the file does not end with a newline.
pub fn expected_wire_form(stored: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(stored.len() + stored.len() / 40 + 2);
    let mut prev = 0u8;
    for &b in stored {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !stored.is_empty() && !stored.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The size Dovecot reports in LIST/STAT for a stored message: the stored file with bare LF
/// counted as CRLF, but **without** the final CRLF that RETR adds to a file lacking a final
/// newline (so for such a file LIST is 2 octets less than what RETR sends — a Dovecot quirk
/// a proxy must pass through unchanged, not "fix").
pub fn expected_list_size(stored: &[u8]) -> u64 {
    let wire = expected_wire_form(stored).len() as u64;
    if !stored.is_empty() && !stored.ends_with(b"\n") {
        wire - 2
    } else {
        wire
    }
}

/// Rules that match exactly [`SPAM_RULE`], each with the direct `action` given.
pub fn spam_rules(action: &str) -> String {
    format!(
        r#"
rules:
  - id: SPAM_DOMAIN
    describe: the test mailbox's spam sender domain
    header: From:addr
    regex: '(?i)@spam\.example$'
    action: {action}
  - id: VIAGRA_SUBJECT
    header: Subject
    regex: 'VIAGRA'
    action: {action}
"#
    )
}

/// What a client receives for each message ([`expected_wire_form`]), in order.
pub fn wire(msgs: &[TestMessage]) -> Vec<Vec<u8>> {
    msgs.iter().map(|m| expected_wire_form(&m.bytes)).collect()
}

/// The delivered names, in order (the keys of [`Dovecot::mailbox`](super::Dovecot::mailbox)).
pub fn names(msgs: &[TestMessage]) -> Vec<String> {
    msgs.iter().map(|m| m.name.clone()).collect()
}

/// The message names present in a mailbox snapshot.
pub fn keys(b: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<String> {
    b.keys().cloned().collect()
}
