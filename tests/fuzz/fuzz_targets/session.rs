//! Session planning on arbitrary peer input (issue 12): upstream LIST / UIDL / STAT and the
//! client's byte stream, NUL-separated. See `popsift::session::invariants`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    popsift::session::invariants::planning(data);
});
