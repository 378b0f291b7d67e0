//! The classifier inside the proxy, against a real Dovecot: a `serve` that started without a
//! model shows every message; after training (while it runs) the next login hides the spam
//! the `bayes:` rule condemns — no restart, and the verdict memo of the first login is not
//! reused for the second.
mod support;

use std::time::{Duration, Instant};

use ::popsift::classify::store::RedbStore;
use ::popsift::classify::{Tokenizer, Trainer};
use support::*;

const RULES: &str = "threshold: 5\nrules:\n  - id: B_SPAM\n    bayes: '0.90..1.00'\n    score: 6\n";

fn spam_msg(i: usize) -> String {
    format!(
        "From: \"Best Deals {i}\" <offer{i}@cheap-pills.example.biz>\r\nTo: undisclosed-recipients:;\r\nSubject: CHEAP pills, order now!!! {i}\r\nMessage-ID: <{i}.x@bulk.example.biz>\r\nX-Mailer: MassMailer 3.1\r\nContent-Type: text/html\r\n\r\nbuy\r\n"
    )
}

fn ham_msg(i: usize) -> String {
    format!(
        "From: Alice Colleague <alice@work.example.org>\r\nTo: Bob <bob@work.example.org>\r\nSubject: Meeting notes for project {i}\r\nMessage-ID: <m{i}@mail.work.example.org>\r\nUser-Agent: Thunderbird 128\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    )
}

fn stat(addr: &str, pass: &str) -> String {
    let mut c = RawPop::connect(addr);
    c.login("alice", pass);
    let s = c.command("STAT");
    assert!(c.command("QUIT").starts_with("+OK"));
    s
}

#[test]
fn serve_sees_training_done_while_it_runs() {
    let d = Dovecot::start(DovecotOptions::default());
    d.deliver("alice", "1000000001.M1P1.test", spam_msg(500).as_bytes());
    d.deliver("alice", "1000000002.M2P2.test", ham_msg(500).as_bytes());
    let pass = d.password("alice").to_string();
    let p = Popsift::start(&ProxyOpts {
        upstream: &d.pop3_addr(),
        tls: "none",
        rules: RULES,
        extra: "spam_action: hide\n",
        ..Default::default()
    });
    assert!(stat(&p.addr, &pass).starts_with("+OK 2 "), "no model: both visible");

    let store = RedbStore::open(&p.state_dir()).unwrap();
    let mut tr = Trainer::new(&store, Tokenizer::default(), None).unwrap();
    for i in 0..25 {
        tr.train(spam_msg(i).as_bytes(), true);
        tr.train(ham_msg(i).as_bytes(), false);
    }
    tr.commit().unwrap();
    drop(store);

    // Wait (bounded) for the proxy to log that it loaded the trained model.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.log().lines().any(|l| l.contains("bayes model loaded") && l.contains("spam=25")) {
        assert!(Instant::now() < deadline, "model not picked up; log:\n{}", p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = stat(&p.addr, &pass);
    assert!(s.starts_with("+OK 1 "), "spam hidden after training: {s}\n{}", p.log());
    assert!(p.log().contains("B_SPAM"), "{}", p.log());
    // Nothing was deleted on the server.
    assert_eq!(d.mailbox("alice").len(), 2);
}
