//! Resource alarms, as RabbitMQ's `vm_memory_monitor`, `rabbit_disk_monitor`
//! and `rabbit_alarm`: the memory high watermark and the free disk limit,
//! the node's measured memory and free disk, and which alarms are in
//! effect.
//!
//! [`monitor`] samples the process's resident memory and the data
//! directory's free space every `memory_monitor_interval` and sets or
//! clears the alarms; connections watch them ([`Alarms::subscribe`]) and
//! block their publishers while one is in effect (see the AMQP layer's
//! connection task). The limits can be changed at run time
//! ([`Alarms::set_memory_watermark`], RabbitMQ's
//! `rabbitmqctl set_vm_memory_high_watermark`), which re-checks at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// RabbitMQ's `vm_memory_high_watermark`: a fraction of the memory
/// available (RAM, or the cgroup's limit when lower), or bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    Relative(f64),
    Absolute(u64),
}

/// RabbitMQ's `disk_free_limit`: bytes, or a multiple of the memory
/// available (`{mem_relative, R}`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFreeLimit {
    Absolute(u64),
    MemRelative(f64),
}

/// What the monitor is told by the configuration.
#[derive(Debug, Clone)]
pub struct AlarmConfig {
    pub memory: MemoryWatermark,
    pub disk: DiskFreeLimit,
    /// How often memory and disk are measured.
    pub interval: Duration,
    /// Where free disk space is measured (the data directory).
    pub data_dir: PathBuf,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            memory: MemoryWatermark::Relative(0.4),
            disk: DiskFreeLimit::Absolute(50_000_000),
            interval: Duration::from_millis(500),
            data_dir: PathBuf::from("."),
        }
    }
}

/// The alarms in effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmSet {
    pub memory: bool,
    pub disk: bool,
}

impl AlarmSet {
    pub fn any(self) -> bool {
        self.memory || self.disk
    }

    /// connection.blocked's reason, as RabbitMQ words it
    /// (`rabbit_reader:blocked_by_message`): "low on memory", "low on
    /// disk", "low on memory & disk".
    pub fn reason(self) -> String {
        let mut parts = Vec::new();
        if self.memory {
            parts.push("memory");
        }
        if self.disk {
            parts.push("disk");
        }
        format!("low on {}", parts.join(" & "))
    }

    /// The resources named as RabbitMQ's health checks name them
    /// (`rabbit_alarm:format_as_map`).
    pub fn resources(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.memory {
            v.push("memory");
        }
        if self.disk {
            v.push("disk space");
        }
        v
    }
}

/// The figures the management API and Prometheus show.
#[derive(Debug, Clone, Copy)]
pub struct AlarmStatus {
    pub alarms: AlarmSet,
    pub mem_used: u64,
    pub mem_limit: u64,
    pub disk_free: u64,
    pub disk_free_limit: u64,
}

/// The node's resource alarms: one owner (the monitor) measures, every
/// connection watches.
pub struct Alarms {
    state: watch::Sender<AlarmSet>,
    /// Serialises the read-modify-write of `state` and the limits (the
    /// monitor and a run-time change may race).
    limits: Mutex<(MemoryWatermark, DiskFreeLimit)>,
    /// RAM, or the cgroup's limit when lower.
    total_memory: u64,
    mem_used: AtomicU64,
    mem_limit: AtomicU64,
    disk_free: AtomicU64,
    disk_free_limit: AtomicU64,
    data_dir: PathBuf,
    interval: Duration,
}

impl Alarms {
    pub fn new(cfg: &AlarmConfig) -> Arc<Self> {
        let total = available_memory();
        let a = Alarms {
            state: watch::Sender::new(AlarmSet::default()),
            limits: Mutex::new((cfg.memory, cfg.disk)),
            total_memory: total,
            mem_used: AtomicU64::new(0),
            mem_limit: AtomicU64::new(memory_limit(cfg.memory, total)),
            disk_free: AtomicU64::new(u64::MAX),
            disk_free_limit: AtomicU64::new(disk_limit(cfg.disk, total)),
            data_dir: cfg.data_dir.clone(),
            interval: cfg.interval,
        };
        tracing::info!(
            limit = a.mem_limit.load(Ordering::Relaxed),
            total_memory = total,
            disk_free_limit = a.disk_free_limit.load(Ordering::Relaxed),
            "memory high watermark and disk free limit set"
        );
        // Measured once now, so the alarms hold from the first connection
        // on (the broker is built off the async workers).
        a.record_memory(rss_bytes());
        a.record_disk_free(disk_free(&a.data_dir));
        Arc::new(a)
    }

    /// The alarms in effect, and every later change.
    pub fn subscribe(&self) -> watch::Receiver<AlarmSet> {
        self.state.subscribe()
    }

    pub fn current(&self) -> AlarmSet {
        *self.state.borrow()
    }

    pub fn status(&self) -> AlarmStatus {
        AlarmStatus {
            alarms: self.current(),
            mem_used: self.mem_used.load(Ordering::Relaxed),
            mem_limit: self.mem_limit.load(Ordering::Relaxed),
            disk_free: match self.disk_free.load(Ordering::Relaxed) {
                // Not measured yet.
                u64::MAX => 0,
                n => n,
            },
            disk_free_limit: self.disk_free_limit.load(Ordering::Relaxed),
        }
    }

    /// A new memory high watermark, checked against the last measure at
    /// once (RabbitMQ's `set_vm_memory_high_watermark`).
    pub fn set_memory_watermark(&self, w: MemoryWatermark) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.0 = w;
        let limit = memory_limit(w, self.total_memory);
        self.mem_limit.store(limit, Ordering::Relaxed);
        tracing::info!(limit, "memory high watermark set");
        self.update_memory(self.mem_used.load(Ordering::Relaxed), limit);
    }

    /// A new free disk limit, checked against the last measure at once
    /// (RabbitMQ's `set_disk_free_limit`).
    pub fn set_disk_free_limit(&self, l: DiskFreeLimit) {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.1 = l;
        let limit = disk_limit(l, self.total_memory);
        self.disk_free_limit.store(limit, Ordering::Relaxed);
        tracing::info!(limit, "disk free limit set");
        let free = self.disk_free.load(Ordering::Relaxed);
        if free != u64::MAX {
            self.update_disk(free, limit);
        }
    }

    /// Records a memory measure and sets or clears the memory alarm.
    pub fn record_memory(&self, used: u64) {
        let _limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        self.mem_used.store(used, Ordering::Relaxed);
        self.update_memory(used, self.mem_limit.load(Ordering::Relaxed));
    }

    /// Records a free disk measure and sets or clears the disk alarm.
    pub fn record_disk_free(&self, free: u64) {
        let _limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        self.disk_free.store(free, Ordering::Relaxed);
        self.update_disk(free, self.disk_free_limit.load(Ordering::Relaxed));
    }

    /// As vm_memory_monitor: in alarm while used is above the limit.
    fn update_memory(&self, used: u64, limit: u64) {
        let on = used > limit;
        self.state.send_if_modified(|s| {
            if s.memory == on {
                return false;
            }
            s.memory = on;
            if on {
                tracing::warn!(
                    used,
                    allowed = limit,
                    "memory resource limit alarm set: publishers are blocked"
                );
            } else {
                tracing::warn!(used, allowed = limit, "memory resource limit alarm cleared");
            }
            true
        });
    }

    /// As rabbit_disk_monitor: in alarm while free space is below the limit.
    fn update_disk(&self, free: u64, limit: u64) {
        let on = free < limit;
        self.state.send_if_modified(|s| {
            if s.disk == on {
                return false;
            }
            s.disk = on;
            if on {
                tracing::warn!(
                    free,
                    limit,
                    "disk resource limit alarm set: publishers are blocked"
                );
            } else {
                tracing::warn!(free, limit, "disk resource limit alarm cleared");
            }
            true
        });
    }
}

/// Measures memory and free disk every interval until aborted. The disk
/// check (statvfs) runs off the async workers; reading /proc/self/statm
/// does not block.
pub async fn monitor(alarms: Arc<Alarms>) {
    let mut tick = tokio::time::interval(alarms.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        alarms.record_memory(rss_bytes());
        let dir = alarms.data_dir.clone();
        if let Ok(free) = tokio::task::spawn_blocking(move || disk_free(&dir)).await {
            alarms.record_disk_free(free);
        }
    }
}

fn memory_limit(w: MemoryWatermark, total: u64) -> u64 {
    match w {
        MemoryWatermark::Relative(r) => (total as f64 * r) as u64,
        MemoryWatermark::Absolute(b) => b,
    }
}

fn disk_limit(l: DiskFreeLimit, total: u64) -> u64 {
    match l {
        DiskFreeLimit::Absolute(b) => b,
        DiskFreeLimit::MemRelative(r) => (total as f64 * r) as u64,
    }
}

/// Parses RabbitMQ's information units (`rabbit_resource_monitor_misc:
/// parse_information_unit`): digits, then optionally k/K/kiB/KiB (1024),
/// M/MiB, G/GiB, or kB/KB (1000), MB, GB and their case variants.
pub fn parse_information_unit(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let n: u64 = s[..digits].parse().ok()?;
    let mult: u64 = match &s[digits..] {
        "" => 1,
        "k" | "K" | "kiB" | "KiB" | "KIB" | "kib" => 1 << 10,
        "m" | "M" | "MiB" | "MIB" | "mib" => 1 << 20,
        "g" | "G" | "GiB" | "GIB" | "gib" => 1 << 30,
        "kB" | "KB" | "kb" | "Kb" => 1_000,
        "MB" | "mB" | "mb" | "Mb" => 1_000_000,
        "GB" | "gB" | "gb" | "Gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Resident set size in bytes, from /proc/self/statm (RabbitMQ's `rss`
/// memory calculation strategy).
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

/// The memory this process may use: RAM, or its cgroup's limit when
/// that is lower (a container's `memory.max`).
pub fn available_memory() -> u64 {
    let ram = total_memory();
    match cgroup_memory_limit() {
        Some(l) if l > 0 && (ram == 0 || l < ram) => l,
        _ => ram,
    }
}

/// The memory limit of this process's cgroup: v2's `memory.max` (in our
/// cgroup's directory, else the mount's root), or v1's
/// `memory.limit_in_bytes`; `None` when unlimited or unknown.
fn cgroup_memory_limit() -> Option<u64> {
    let v2_dir = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_owned()))
        });
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = v2_dir {
        candidates.push(
            Path::new("/sys/fs/cgroup")
                .join(p.trim_start_matches('/'))
                .join("memory.max"),
        );
    }
    candidates.push(PathBuf::from("/sys/fs/cgroup/memory.max"));
    candidates.push(PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes"));
    candidates
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        // "max" (v2) or a huge number (v1) when unlimited.
        .find_map(|s| s.trim().parse::<u64>().ok())
        .filter(|&l| l < (1u64 << 60))
}

/// Free bytes on the file system of `dir` (its nearest existing ancestor).
pub fn disk_free(dir: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            p = PathBuf::from(".");
            break;
        }
    }
    if p.as_os_str().is_empty() {
        p = PathBuf::from(".");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn information_units_are_rabbitmqs() {
        assert_eq!(parse_information_unit("50000000"), Some(50_000_000));
        assert_eq!(parse_information_unit("50MB"), Some(50_000_000));
        assert_eq!(parse_information_unit("1024M"), Some(1 << 30));
        assert_eq!(parse_information_unit("2GiB"), Some(2 << 30));
        assert_eq!(parse_information_unit("1kB"), Some(1000));
        assert_eq!(parse_information_unit("1k"), Some(1024));
        assert_eq!(parse_information_unit("1 GB"), None);
        assert_eq!(parse_information_unit("GB"), None);
        assert_eq!(parse_information_unit("1TB"), None);
    }

    #[test]
    fn reasons_are_rabbitmqs() {
        let m = AlarmSet {
            memory: true,
            disk: false,
        };
        assert_eq!(m.reason(), "low on memory");
        let d = AlarmSet {
            memory: false,
            disk: true,
        };
        assert_eq!(d.reason(), "low on disk");
        let both = AlarmSet {
            memory: true,
            disk: true,
        };
        assert_eq!(both.reason(), "low on memory & disk");
        assert_eq!(both.resources(), vec!["memory", "disk space"]);
    }

    #[test]
    fn alarms_follow_measures_and_limits() {
        let a = Alarms::new(&AlarmConfig {
            memory: MemoryWatermark::Absolute(1000),
            disk: DiskFreeLimit::Absolute(500),
            ..AlarmConfig::default()
        });
        let mut rx = a.subscribe();
        a.record_memory(999);
        assert!(!a.current().memory);
        a.record_memory(1001);
        assert!(a.current().memory);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        a.set_memory_watermark(MemoryWatermark::Absolute(2000));
        assert!(!a.current().memory);
        a.record_disk_free(499);
        assert!(a.current().disk);
        a.set_disk_free_limit(DiskFreeLimit::Absolute(100));
        assert!(!a.current().disk);
        assert_eq!(a.status().disk_free_limit, 100);
    }
}
