//! What the node view and the Prometheus process metrics read about this
//! process and machine: open file descriptors and threads, from /proc
//! (Linux). Memory and free disk are the resource alarms' measures
//! (`broker::alarms`).

pub fn fd_used() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The soft limit on open files, from /proc/self/limits.
pub fn fd_total() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("Max open files"))?;
            l["Max open files".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(1024)
}

pub fn threads() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(1)
}
