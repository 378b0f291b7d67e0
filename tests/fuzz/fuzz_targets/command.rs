#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| popsift::pop3::invariants::command_line(data));
