//! Small helpers of the benchmark: progress lines, and CPU and memory read
//! from `/proc` (per process, per thread, machine-wide), the services' process ids.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Progress line on stderr.
pub fn say(message: impl AsRef<str>) {
    eprintln!("bench: {}", message.as_ref());
}

/// Clock ticks per second for `/proc/<pid>/stat` (from `getconf CLK_TCK`, else 100).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process, from `/proc/<pid>/stat`.
pub fn proc_cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_seconds(&stat, ticks)
}

/// utime + stime of a `/proc/.../stat` line, in seconds.
fn stat_cpu_seconds(stat: &str, ticks: f64) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command name start at field 3 (state); utime is 14, stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// CPU seconds of each live thread of `pid`, by thread id, with the thread's name.
pub fn proc_thread_cpu_seconds(pid: u32, ticks: f64) -> BTreeMap<u32, (String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    tasks
        .filter_map(|task| {
            let tid: u32 = task.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string();
            Some((tid, (name, stat_cpu_seconds(&stat, ticks)?)))
        })
        .collect()
}

/// CPU seconds each thread group used between two [`proc_thread_cpu_seconds`] readings. A
/// group is a thread name without its trailing number (`specflow-dsp-0` and `specflow-dsp-1`
/// are `specflow-dsp`; every librdkafka client's broker thread is `rdk:broker`). Threads that
/// ended in between are missing from `after`; their share is the process's total minus these.
pub fn thread_groups_cpu(
    before: &BTreeMap<u32, (String, f64)>,
    after: &BTreeMap<u32, (String, f64)>,
) -> BTreeMap<String, f64> {
    let mut groups = BTreeMap::new();
    for (tid, (name, seconds)) in after {
        let earlier = before.get(tid).map_or(0.0, |(_, s)| *s);
        let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *groups.entry(group.to_string()).or_insert(0.0) += seconds - earlier;
    }
    groups
}

/// A `kB` line of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in bytes.
pub fn proc_status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// Machine-wide busy and total CPU seconds (all cores) from `/proc/stat`.
pub fn machine_cpu(ticks: f64) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    ((total - idle) / ticks, total / ticks)
}

/// The pid written by `scripts/services.sh` for a service, when that process is alive.
pub fn service_pid(service: &str) -> Option<u32> {
    let state =
        std::env::var("SPECFLOW_STATE_DIR").unwrap_or_else(|_| "/tmp/specflow-services".into());
    let pid: u32 = std::fs::read_to_string(Path::new(&state).join(service).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race is accepted).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
