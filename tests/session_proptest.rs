//! Issue 12, "no panic on any peer input": session planning (the mailbox view, the
//! TRANSACTION planner, the LIST/UIDL/STAT boundary checks) driven with arbitrary upstream
//! listings and arbitrary client commands. The properties are those of
//! `popsift::session::invariants::planning`: no panic, every fetch names an existing entry,
//! and DELE only as the answer to the client's QUIT. The same function is the fuzz target
//! `tests/fuzz/fuzz_targets/session.rs`.
use proptest::prelude::*;

/// A message number as a broken server or client might send it.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..8).prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| n.to_string()),
        Just("99999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("x".to_string()),
    ]
}

/// A LIST or UIDL body: mostly well-formed lines, numbered in order or not.
fn listing(value: BoxedStrategy<String>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // 1..N in order.
        prop::collection::vec(value.clone(), 0..12).prop_map(|vs| {
            vs.iter().enumerate().map(|(i, v)| format!("{} {v}\r\n", i + 1)).collect::<String>().into_bytes()
        }),
        // Arbitrary numbers: gaps, repeats, 0, overflow.
        prop::collection::vec((number(), value), 0..12).prop_map(|ls| ls
            .iter()
            .map(|(n, v)| format!("{n} {v}\r\n"))
            .collect::<String>()
            .into_bytes()),
        // Garbage without NULs (a NUL separates the parts).
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..64),
    ]
}

fn size() -> BoxedStrategy<String> {
    prop_oneof![(0u64..5000).prop_map(|n| n.to_string()), Just("37 extra".into()), Just("3e4".into()), "[ -~]{0,6}"]
        .boxed()
}

fn uid() -> BoxedStrategy<String> {
    prop_oneof!["[!-~]{1,8}", Just("dup".to_string()), "[ -~]{0,4}"].boxed()
}

fn client_line() -> impl Strategy<Value = String> {
    let n = number;
    prop_oneof![
        Just("USER alice".to_string()),
        Just("PASS pw".to_string()),
        Just("APOP alice c4c9334bac560ecc979e58001b3e22fb".to_string()),
        Just("AUTH PLAIN".to_string()),
        Just("STAT".to_string()),
        Just("LIST".to_string()),
        n().prop_map(|n| format!("LIST {n}")),
        Just("UIDL".to_string()),
        n().prop_map(|n| format!("UIDL {n}")),
        n().prop_map(|n| format!("RETR {n}")),
        (n(), n()).prop_map(|(a, b)| format!("TOP {a} {b}")),
        n().prop_map(|n| format!("DELE {n}")),
        Just("RSET".to_string()),
        Just("NOOP".to_string()),
        Just("CAPA".to_string()),
        Just("QUIT".to_string()),
        "[ -~]{0,20}",
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    (
        listing(size()),
        listing(uid()),
        prop_oneof![(0u64..20, 0u64..100_000).prop_map(|(a, b)| format!("+OK {a} {b}")), "[ -~]{0,20}"],
        prop::collection::vec(client_line(), 0..24),
    )
        .prop_map(|(list, uidl, stat, client)| {
            let mut data = list;
            data.push(0);
            data.extend_from_slice(&uidl);
            data.push(0);
            data.extend_from_slice(stat.as_bytes());
            data.push(0);
            for l in client {
                data.extend_from_slice(l.as_bytes());
                data.extend_from_slice(b"\r\n");
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn planning_never_panics_and_deletes_only_after_quit(data in input()) {
        popsift::session::invariants::planning(&data);
    }

    #[test]
    fn planning_survives_raw_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        popsift::session::invariants::planning(&data);
    }
}
