//! What the node view and the Prometheus process metrics read about this
//! process and machine: resident memory, total memory, free disk, open
//! file descriptors and threads, from /proc and statvfs (Linux).

/// The memory limit RabbitMQ reports by default: 40% of the machine's RAM
/// (its `vm_memory_high_watermark`). Warren has no memory alarm yet; the
/// figure is shown so dashboards have a scale.
pub fn mem_limit() -> u64 {
    (total_memory() as f64 * 0.4) as u64
}

/// RabbitMQ's default `disk_free_limit` (50 MB).
pub const DISK_FREE_LIMIT: u64 = 50_000_000;

/// Resident set size in bytes, from /proc/self/statm.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * page_size()
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Total memory in bytes, from /proc/meminfo.
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Free bytes on the file system of `dir` (its nearest existing ancestor).
pub fn disk_free(dir: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            p = std::path::PathBuf::from(".");
            break;
        }
    }
    if p.as_os_str().is_empty() {
        p = std::path::PathBuf::from(".");
    }
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a
    // valid NUL-terminated string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) == 0 {
            st.f_bavail as u64 * st.f_frsize as u64
        } else {
            0
        }
    }
}

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
