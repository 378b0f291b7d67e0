//! The whole session machine on arbitrary peer input (issue 12): a control byte, the
//! upstream's replies and the client's stream. No panic, and no DELE upstream unless the
//! client sent QUIT. See `popsift::session::invariants::machine`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    popsift::session::invariants::machine(data);
});
