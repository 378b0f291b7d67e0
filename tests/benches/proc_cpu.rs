//! CPU time of a child process for benches that compare one login's cost (issue 13: history
//! on vs off). Per-thread schedstat, because `/proc/PID/stat`'s user+sys ticks are 10 ms, too
//! coarse for one login, and because the work to count runs on several threads (sessions,
//! the blocking pool, the history writer).
use std::time::{Duration, Instant};

/// CPU time of process `pid` so far: the sum over its threads of the on-CPU time in
/// `/proc/PID/task/*/schedstat` (nanoseconds).
pub fn cpu(pid: u32) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

/// The CPU time of `pid` once it stops growing (background work such as the history writer
/// runs after the login's `+OK`): read until two reads 200 ms apart agree, at most 10 s.
pub fn settled_cpu(pid: u32) -> Duration {
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = cpu(pid);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        let now = cpu(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// User and system CPU of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15; 10 ms
/// ticks, meaningful summed over runs); (0, 0) when the process is gone. Not every bench
/// that includes this file reads the split.
#[allow(dead_code)]
pub fn user_sys_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (in parentheses, may contain spaces): utime and
    // stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    (f.get(11).copied().unwrap_or(0), f.get(12).copied().unwrap_or(0))
}
