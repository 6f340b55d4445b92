//! The standard `process_*` metrics of Prometheus clients (CPU, memory,
//! file descriptors, start time), read from `/proc/self` at each scrape.
//! Elsewhere than Linux there are none.

use std::fmt::Write;

/// What `/proc/self` says about this process.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub start_time_seconds: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// Parses `/proc/self/stat` (`stat`) with `/proc/stat`'s boot time, given
/// the clock tick rate and page size.
pub(crate) fn parse_stat(stat: &str, boot_time: f64, ticks: f64, page: f64) -> Option<Process> {
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last ')' are plain numbers, starting with field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| -> Option<f64> { f.get(field - 3)?.parse().ok() };
    Some(Process {
        cpu_seconds: (num(14)? + num(15)?) / ticks,
        start_time_seconds: boot_time + num(22)? / ticks,
        virtual_bytes: num(23)?,
        resident_bytes: num(24)? * page,
        open_fds: None,
        max_fds: None,
    })
}

#[cfg(target_os = "linux")]
fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    let mut p = parse_stat(&stat, boot_time, ticks as f64, page as f64)?;
    p.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        p.max_fds = Some(limit.rlim_cur as f64);
    }
    Some(p)
}

#[cfg(not(target_os = "linux"))]
fn read() -> Option<Process> {
    None
}

/// Appends the process metrics, under the names Prometheus clients use.
pub(crate) fn render(out: &mut String) {
    let Some(p) = read() else { return };
    let mut one = |name: &str, kind: &str, help: &str, v: Option<f64>| {
        if let Some(v) = v {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
    };
    one(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        Some(p.cpu_seconds),
    );
    one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", Some(p.resident_bytes));
    one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", Some(p.virtual_bytes));
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        Some(p.start_time_seconds),
    );
    one("process_open_fds", "gauge", "Number of open file descriptors.", p.open_fds);
    one("process_max_fds", "gauge", "Maximum number of open file descriptors.", p.max_fds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        // A command name with a space and a ')' in it, as /proc allows.
        let stat = "4242 (corr dor) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 3 0 \
                    123400 104857600 2560 18446744073709551615";
        let p = parse_stat(stat, 1_700_000_000.0, 100.0, 4096.0).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_000.0 + 1234.0);
        assert_eq!(p.virtual_bytes, 104_857_600.0);
        assert_eq!(p.resident_bytes, 2560.0 * 4096.0);
    }
}
