//! Readings from `/proc` that the `mixed` benchmark takes besides its requests: the daemon's
//! open file descriptors and threads during the run, and the load average. The module also
//! raises this process's file descriptor limit for the clients' connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Interval between samples of the daemon's file descriptors and threads.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);
/// File descriptors kept free beyond two per client: the harness's own files, the runtime
/// and the daemon's store, logs and listener.
const SPARE_FILES: u64 = 256;

/// Largest values seen in the samples of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessPeaks {
    /// Open file descriptors, from `/proc/<pid>/fd`.
    pub open_fds: usize,
    /// Threads, from `/proc/<pid>/task`.
    pub threads: usize,
    /// Samples taken.
    pub samples: usize,
}

/// Raises the soft limit on open files, which the daemon inherits, to two descriptors per
/// client plus [`SPARE_FILES`]. The harness and the daemon each hold one end of every
/// client's connection and one end of up to one daemon connection to the instant provider
/// per client. Fails when the hard limit is lower.
pub fn ensure_file_limit(clients: usize) -> anyhow::Result<()> {
    let needed = 2 * clients as u64 + SPARE_FILES;
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("while reading the open file limit")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{clients} clients need {needed} open files, and the hard limit is {hard}; raise \
             it (ulimit -Hn) or pass fewer --clients"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard)
        .with_context(|| format!("cannot raise the open file limit from {soft} to {needed}"))
}

/// Returns the first three fields of `/proc/loadavg`: the 1, 5 and 15 minute averages.
pub fn load_average() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/loadavg").context("while reading /proc/loadavg")?;
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    if fields.len() < 3 {
        bail!("/proc/loadavg has fewer than three fields: {text:?}");
    }
    Ok(fields.join(" "))
}

/// Samples process `pid` until `running` is cleared and returns the peaks.
pub async fn watch(pid: u32, running: Arc<AtomicBool>) -> ProcessPeaks {
    let mut peaks = ProcessPeaks::default();
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    while running.load(Ordering::Relaxed) {
        interval.tick().await;
        peaks.open_fds = peaks.open_fds.max(count_entries(pid, "fd"));
        peaks.threads = peaks.threads.max(count_entries(pid, "task"));
        peaks.samples += 1;
    }
    peaks
}

/// Counts the entries of `/proc/<pid>/<directory>`, or 0 when it cannot be read.
fn count_entries(pid: u32, directory: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{directory}"))
        .map(Iterator::count)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_average_has_three_numbers() {
        let average = load_average().unwrap_or_default();
        let numbers: Vec<f64> = average
            .split(' ')
            .filter_map(|field| field.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 3, "{average}");
    }

    #[test]
    fn this_process_has_open_files_and_threads() {
        assert!(count_entries(std::process::id(), "fd") > 0);
        assert!(count_entries(std::process::id(), "task") > 0);
    }
}
