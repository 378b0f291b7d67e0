//! Rule engine: every rule feature, verdict precedence, header decoding edge cases.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use popsift::rules::{Action, EngineOptions, Headers, RuleSet, Verdict};

fn set(yaml: &str) -> RuleSet {
    set_at(Path::new("test.yaml"), yaml)
}

fn set_at(path: &Path, yaml: &str) -> RuleSet {
    match RuleSet::from_yaml(path, yaml, &EngineOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("rules did not load:\n{e}"),
    }
}

fn ids(v: &Verdict) -> Vec<&str> {
    v.rules.iter().map(|r| &**r).collect()
}

fn fired(s: &RuleSet, block: &str) -> Vec<String> {
    ids(&s.evaluate(block.as_bytes(), 1000)).into_iter().map(str::to_string).collect()
}

#[test]
fn regex_on_decoded_subject() {
    let s = set(r#"
rules:
  - id: SUBJ_DRUGS
    header: Subject
    regex: '(?i)\bv[i1]agra\b'
    score: 3.5
"#);
    assert_eq!(fired(&s, "Subject: buy V1AGRA now\r\n"), ["SUBJ_DRUGS"]);
    // Decoded before matching.
    assert_eq!(fired(&s, "Subject: =?utf-8?B?YnV5IHZpYWdyYQ==?=\r\n"), ["SUBJ_DRUGS"]);
    assert!(fired(&s, "Subject: viagrafalls\r\n").is_empty());
    assert!(fired(&s, "X-Other: viagra\r\n").is_empty());
    let v = s.evaluate(b"Subject: viagra\n", 10);
    assert_eq!(v.score, 3.5);
    assert!(!v.spam);
    assert_eq!(v.action, None);
}

#[test]
fn keywords_case_insensitive_and_whole_word() {
    let s = set(r#"
rules:
  - id: LOTTERY
    header: Subject
    keywords: [lottery, "you have won", jackpot]
    score: 2.0
  - id: FREE_WORD
    header: Subject
    keywords: [free]
    whole_word: true
    score: 1
  - id: FREE_ANY
    header: Subject
    keywords: [free, ÜBER]
    score: 1
"#);
    assert_eq!(fired(&s, "Subject: YOU HAVE WON the Lottery\n"), ["LOTTERY"]);
    assert_eq!(fired(&s, "Subject: free stuff\n"), ["FREE_WORD", "FREE_ANY"]);
    assert_eq!(fired(&s, "Subject: freedom\n"), ["FREE_ANY"]);
    assert_eq!(fired(&s, "Subject: (free)\n"), ["FREE_WORD", "FREE_ANY"]);
    // Non-ASCII keyword: Unicode case folding.
    assert_eq!(fired(&s, "Subject: über alles\n"), ["FREE_ANY"]);
}

#[test]
fn keywords_file_is_read_relative_to_rule_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lists")).unwrap();
    std::fs::write(dir.path().join("lists/kw.txt"), "# words\nmortgage\n\nrefinance # comment\n").unwrap();
    let s = set_at(
        &dir.path().join("r.yaml"),
        "rules:\n  - id: KW\n    header: Subject\n    keywords_file: lists/kw.txt\n    score: 1\n",
    );
    assert_eq!(fired(&s, "Subject: Refinance today\n"), ["KW"]);
    assert!(fired(&s, "Subject: comment\n").is_empty());
    assert_eq!(s.list_files(), [dir.path().join("r.yaml").parent().unwrap().join("lists/kw.txt")]);
}

#[test]
fn domain_and_address_lists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("blocked.txt"), "spam.biz\n*.evil.test\n").unwrap();
    std::fs::write(dir.path().join("friends.txt"), "Alice@Example.org\n").unwrap();
    let s = set_at(
        &dir.path().join("r.yaml"),
        r#"
rules:
  - id: BLOCKED
    header: From:addr
    domain_in: blocked.txt
    action: delete
  - id: FRIENDS
    header: From
    address_in: friends.txt
    action: allow
  - id: RCPT_BLOCKED
    header: ToCc
    domain_in: blocked.txt
    score: 1
"#,
    );
    let v = s.evaluate(b"From: Bad <x@mail.SPAM.biz>\n", 1);
    assert_eq!(ids(&v), ["BLOCKED"]);
    assert_eq!(v.action, Some(Action::Delete));
    assert!(v.spam);
    assert_eq!(fired(&s, "From: y@evil.test\n"), ["BLOCKED"]);
    assert!(fired(&s, "From: y@notspam.biz\n").is_empty());
    // Allow beats delete.
    let v = s.evaluate(b"From: \"Alice\" <alice@example.ORG>\n", 1);
    assert_eq!(v.action, Some(Action::Allow));
    assert!(!v.spam);
    assert_eq!(fired(&s, "To: a@b.c\nCc: \"Evil, Inc\" <z@spam.biz>\n"), ["RCPT_BLOCKED"]);
}

#[test]
fn addr_name_raw_all_modifiers() {
    let s = set(r#"
rules:
  - id: ADDR
    header: From:addr
    regex: '^joe@example\.com$'
    score: 1
  - id: NAME
    header: From:name
    regex: '^Jürgen Joe$'
    score: 1
  - id: RAW
    header: Subject:raw
    regex: '=\?utf-8\?'
    score: 1
  - id: ALL_RECEIVED
    header: ALL
    regex: '(?m)^Received: from evil'
    score: 1
  - id: TOCC_NAME
    header: ToCc:name
    regex: '(?m)^Boss$'
    score: 1
"#);
    let block = "From: =?utf-8?Q?J=C3=BCrgen?= Joe <joe@example.com>\r\nSubject: =?utf-8?Q?hi?=\r\nReceived: from good\r\nReceived: from evil\r\nTo: a@b.c\r\nCc: Boss <boss@b.c>\r\n";
    assert_eq!(fired(&s, block), ["ADDR", "NAME", "RAW", "ALL_RECEIVED", "TOCC_NAME"]);
}

#[test]
fn exists_size_negate() {
    let s = set(r#"
rules:
  - id: NO_MSGID
    header: Message-ID
    exists: false
    score: 1
  - id: HAS_LIST
    header: list-id
    exists: true
    score: -1
  - id: HUGE
    size_over: 10MB
    action: hide
  - id: SMALL
    size_over: 1KB
    negate: true
    score: 0.5
  - id: NOT_FROM_US
    header: From:addr
    regex: '@us\.example$'
    negate: true
    score: 2
"#);
    let v = s.evaluate(b"From: a@us.example\nList-Id: <x>\n", 500);
    assert_eq!(ids(&v), ["NO_MSGID", "HAS_LIST", "SMALL"]);
    assert_eq!(v.score, 0.5);
    let v = s.evaluate(b"Message-ID: <a@b>\nFrom: a@them.example\n", 11 << 20);
    assert_eq!(ids(&v), ["HUGE", "NOT_FROM_US"]);
    assert_eq!(v.action, Some(Action::Hide));
    // Missing header: a negated test fires (the value is empty).
    assert_eq!(fired(&s, "Message-ID: <a@b>\n"), ["SMALL", "NOT_FROM_US"]);
}

#[test]
fn expr_and_helpers() {
    let s = set(r#"
rules:
  - id: __DRUGS
    header: Subject
    regex: '(?i)viagra'
  - id: FRIENDS
    header: From:addr
    regex: '@friend\.org$'
  - id: DRUGS_NOT_FRIEND
    expr: '__DRUGS && !FRIENDS'
    score: 2.0
  - id: NEG_EXPR
    expr: '__DRUGS || FRIENDS'
    negate: true
    score: 0.1
  - id: NESTED
    expr: '(DRUGS_NOT_FRIEND || FRIENDS) && !(NEG_EXPR)'
    score: 1
"#);
    assert_eq!(fired(&s, "Subject: viagra\nFrom: a@x.org\n"), ["DRUGS_NOT_FRIEND", "NESTED"]);
    // FRIENDS has no score: not reported, but usable.
    assert_eq!(fired(&s, "Subject: viagra\nFrom: a@friend.org\n"), ["NESTED"]);
    assert_eq!(fired(&s, "Subject: hi\n"), ["NEG_EXPR"]);
    assert_eq!(s.len(), 5);
}

#[test]
fn verdict_precedence_and_threshold() {
    let yaml = r#"
threshold: 3
rules:
  - id: A
    header: Subject
    regex: a
    score: 2
  - id: B
    header: Subject
    regex: b
    score: 2
  - id: TAGME
    header: Subject
    regex: t
    action: tag
  - id: QUAR
    header: Subject
    regex: q
    action: quarantine
  - id: DEL
    header: Subject
    regex: d
    action: delete
  - id: OK
    header: Subject
    regex: o
    action: allow
"#;
    let s = set(yaml);
    assert_eq!(s.threshold(), 3.0);
    let v = s.evaluate(b"Subject: a\n", 1);
    assert_eq!((v.spam, v.action), (false, None));
    let v = s.evaluate(b"Subject: ab\n", 1);
    assert_eq!((v.spam, v.action, v.score), (true, Some(Action::Tag), 4.0));
    let v = s.evaluate(b"Subject: tq\n", 1);
    assert_eq!((v.spam, v.action), (true, Some(Action::Quarantine)));
    let v = s.evaluate(b"Subject: abqd\n", 1);
    assert_eq!(v.action, Some(Action::Delete));
    let v = s.evaluate(b"Subject: abqdo\n", 1);
    assert_eq!((v.spam, v.action), (false, Some(Action::Allow)));
    assert_eq!(ids(&v), ["A", "B", "QUAR", "DEL", "OK"]);
    // The configured spam action applies to spam by score.
    let s = RuleSet::from_yaml(Path::new("t.yaml"), yaml, &EngineOptions { spam_action: Action::Hide }).unwrap();
    assert_eq!(s.evaluate(b"Subject: ab\n", 1).action, Some(Action::Hide));
    assert_eq!(s.evaluate(b"Subject: abt\n", 1).action, Some(Action::Hide));
    assert_eq!(s.evaluate(b"Subject: abd\n", 1).action, Some(Action::Delete));
}

#[test]
fn threshold_last_file_wins_and_directory_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.yaml"), "threshold: 7\nrules: []\n").unwrap();
    std::fs::write(
        dir.path().join("a.yml"),
        "threshold: 2\nrules:\n  - id: X\n    header: S\n    regex: x\n    score: 1\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("c.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.path().join("d.yaml"), "").unwrap();
    let s = RuleSet::load(dir.path(), &EngineOptions::default()).unwrap();
    assert_eq!(s.threshold(), 7.0);
    assert_eq!(s.file_count(), 3);
    assert_eq!(s.len(), 1);
    let files: Vec<PathBuf> = s.rule_files().to_vec();
    assert_eq!(files, [dir.path().join("a.yml"), dir.path().join("b.yaml"), dir.path().join("d.yaml")]);
}

#[test]
fn shipped_rules_load_and_classify_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let s = RuleSet::load(&root.join("rules"), &EngineOptions::default()).unwrap();
    assert!(s.len() > 30);
    assert!(s.rules().all(|r| !r.id.is_empty()));
    let msgs = root.join("tests/fixtures/rules/msgs");
    let spam = std::fs::read(msgs.join("00016.eml")).unwrap();
    let v = s.evaluate(popsift::mailfiles::header_block(&spam), spam.len() as u64);
    assert!(v.spam, "{v:?}");
    for ham in ["00006.eml", "00007.eml", "00017.eml"] {
        let m = std::fs::read(msgs.join(ham)).unwrap();
        let v = s.evaluate(popsift::mailfiles::header_block(&m), m.len() as u64);
        assert!(!v.spam, "{ham}: {v:?}");
    }
}

#[test]
fn shared_rule_set_is_shareable() {
    let s = Arc::new(set("rules:\n  - id: X\n    header: Subject\n    regex: x\n    score: 9\n"));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.evaluate(b"Subject: x\n", 1).spam)
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

// ---- header decoding edge cases ----

#[test]
fn decode_split_utf8_across_encoded_words() {
    // "€" = E2 82 AC split over two B-encoded words and over a folded line.
    let h = Headers::parse(b"Subject: =?UTF-8?B?4oI=?=\r\n =?UTF-8?B?rA==?= 100\r\n");
    assert_eq!(h.get("subject"), Some("€ 100"));
    let h = Headers::parse(b"Subject: =?utf-8?Q?=E2=82?= =?utf-8?Q?=AC?=\n");
    assert_eq!(h.get("Subject"), Some("€"));
}

#[test]
fn decode_q_underscores_and_charsets() {
    let h = Headers::parse(b"Subject: =?ISO-8859-1?Q?Gr=FC=DFe_aus_K=F6ln?=\n");
    assert_eq!(h.get("subject"), Some("Grüße aus Köln"));
    let h = Headers::parse(b"Subject: =?windows-1251?B?W1NQQU1dIA==?=x\n");
    assert_eq!(h.get("subject"), Some("[SPAM] x"));
    let h = Headers::parse(b"Subject: =?x-unknown-charset?Q?caf=C3=A9?=\n");
    assert_eq!(h.get("subject"), Some("café"));
    let h = Headers::parse(b"Subject: =?gb2312?B?1tDOxA==?=\n");
    assert_eq!(h.get("subject"), Some("中文"));
    let h = Headers::parse(b"Subject: =?ISO-2022-JP?B?GyRCJEskWyRzGyhC?=\n");
    assert_eq!(h.get("subject"), Some("にほん"));
}

#[test]
fn folded_lines_lf_crlf_and_mbox_from() {
    let crlf = b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011\r\nSubject: one\r\n\ttwo\r\nTo: a@b\r\n\r\nBody: x\r\n";
    let lf = b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011\nSubject: one\n\ttwo\nTo: a@b\n\nBody: x\n";
    for b in [&crlf[..], &lf[..]] {
        let h = Headers::parse(b);
        assert_eq!(h.get("subject"), Some("one two"));
        assert_eq!(h.get("to"), Some("a@b"));
        assert!(!h.contains("body"));
        assert!(!h.contains("From MAILER-DAEMON Fri Jul  8 12"));
    }
}

#[test]
fn mbox_lines_inside_block_are_not_fields() {
    let h = Headers::parse(
        b"Subject : spaced\n>From x@y Mon Jan  1 00:00:00 2024\nFrom x@y Mon Jan  1 00:00:00 2024\nTo: a@b\n",
    );
    assert_eq!(h.get("subject"), Some("spaced"));
    assert_eq!(h.fields().len(), 2);
    assert_eq!(h.get("to"), Some("a@b"));
}

#[test]
fn duplicates_joined_and_raw_access() {
    let block = b"Received: a\r\nX-Spam-Flag: YES\r\nreceived: b\r\n c\r\n";
    let h = Headers::parse(block);
    assert_eq!(h.get("Received"), Some("a\nb c"));
    assert_eq!(h.get_raw("RECEIVED"), Some("a\nb c"));
    let f = h.fields().iter().find(|f| f.name() == "X-Spam-Flag").unwrap();
    assert_eq!(&block[f.range()], b"X-Spam-Flag: YES\r\n");
}

#[test]
fn eight_bit_junk_and_truncation() {
    let h = Headers::parse(b"Subject: \xe9t\xe9 \xff\r\nFrom: x@\xc3");
    assert_eq!(h.get("subject"), Some("\u{fffd}t\u{fffd} \u{fffd}"));
    assert_eq!(h.get("from"), Some("x@\u{fffd}"));
    let s = set("rules:\n  - id: X\n    header: From:addr\n    regex: '^x@'\n    score: 1\n");
    assert_eq!(ids(&s.evaluate(b"From: x@\xc3", 1)), ["X"]);
    // Truncated inside an encoded word: left as text.
    let h = Headers::parse(b"Subject: =?utf-8?B?4oK");
    assert_eq!(h.get("subject"), Some("=?utf-8?B?4oK"));
}

#[test]
fn issue_example_rule_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules/good");
    let s = RuleSet::load(&dir, &EngineOptions::default()).unwrap();
    assert_eq!(s.len(), 7);
    assert_eq!(s.threshold(), 5.0);
    let v = s.evaluate(b"Subject: cheap VIAGRA\r\nFrom: a@x.example\r\n", 100);
    assert_eq!(ids(&v), ["SUBJ_DRUGS", "NO_MESSAGE_ID", "DRUGS_NOT_FRIEND"]);
    assert_eq!((v.score, v.spam, v.action), (6.5, true, Some(Action::Tag)));
    let v = s.evaluate(b"Subject: viagra\r\nFrom: Friend <FRIEND@example.org>\r\n", 100);
    assert_eq!((v.spam, v.action), (false, Some(Action::Allow)));
    let v = s.evaluate(b"Subject: hi\r\nFrom: x@mx.spam.example\r\nMessage-ID: <a@b>\r\n", 100);
    assert_eq!((v.spam, v.action), (true, Some(Action::Delete)));
    let v = s.evaluate(b"Subject: hi\r\nMessage-ID: <a@b>\r\n", 20 << 20);
    assert_eq!((v.spam, v.action, ids(&v)), (true, Some(Action::Hide), vec!["HUGE"]));
    let v = s.evaluate(b"Subject: You Have Won the JACKPOT\r\nMessage-ID: <a@b>\r\n", 1);
    assert_eq!((v.score, v.spam, v.action), (2.0, false, None));
}
