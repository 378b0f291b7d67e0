//! `popsift check` and `popsift scan` (PLACEHOLDER — owned by the rules helper).
use crate::cli::{CheckArgs, ScanArgs};

pub fn run_check(_args: &CheckArgs) -> i32 {
    0
}
pub fn run_scan(_args: &ScanArgs) -> i32 {
    0
}
