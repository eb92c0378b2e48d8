//! Child processes of a run: each is started, its listening address read from its output,
//! and stopped by PID with SIGTERM.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Maximum wait for a child to print its listening address.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Maximum wait for a child to exit after SIGTERM before it gets SIGKILL. The harness stops
/// the daemon only when no request is in flight, so its drain finishes at once.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between checks whether a signalled child has exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Output lines kept to explain a child that exits before it listens.
const EARLY_LINES_KEPT: usize = 20;
/// WARN and ERROR lines kept; further ones are only counted.
const WARNING_SAMPLES_KEPT: usize = 5;

/// Log lines at WARN or ERROR level, and other unexpected lines, that a child wrote.
#[derive(Debug, Default)]
pub struct LogSummary {
    /// Number of such lines.
    pub warnings: usize,
    /// The first few of them.
    pub samples: Vec<String>,
}

/// Exit status of a stopped child, and the warnings it logged.
#[derive(Debug)]
pub struct StopOutcome {
    /// Exit status after SIGTERM, or after SIGKILL when `killed`.
    pub status: ExitStatus,
    /// Time from SIGTERM until the child had exited.
    pub waited: Duration,
    /// Whether the child ignored SIGTERM for [`STOP_TIMEOUT`] and was killed.
    pub killed: bool,
    /// Warnings and errors it logged.
    pub log: LogSummary,
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// VmRSS: resident set size now, in KiB.
    pub rss_kib: u64,
    /// VmHWM: peak resident set size since start, in KiB.
    pub peak_kib: u64,
}

/// A child that listens on a loopback address. [`ChildProcess::stop`] stops it, and `Drop`
/// stops it on error paths.
///
/// NOTE: a signal that kills the harness skips `Drop`. Children stay in the harness's process
/// group, so Ctrl-C and `timeout` reach them too, but `kill <harness PID>` leaves them running.
#[derive(Debug)]
pub struct ChildProcess {
    name: &'static str,
    child: Child,
    address: SocketAddr,
    output_reader: Option<JoinHandle<LogSummary>>,
    stopped: bool,
}

/// Starts goose-api with `config` in `workdir`, without the GOOSE_API_ variables of this
/// environment, so that only the config file decides its settings.
pub fn start_daemon(binary: &Path, config: &Path, workdir: &Path) -> anyhow::Result<ChildProcess> {
    check_daemon_binary(binary)?;
    let mut command = Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GOOSE_API_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let stderr = child
        .stderr
        .take()
        .context("the daemon's stderr was not captured")?;
    ChildProcess::wait_for_address(
        "goose-api",
        child,
        stderr,
        daemon_address,
        is_daemon_warning,
    )
}

/// Fails unless `binary` is a file, so that a run stops before it measures anything else.
pub fn check_daemon_binary(binary: &Path) -> anyhow::Result<()> {
    if !binary.is_file() {
        bail!(
            "the goose-api binary was not found at {}; build it with \
             `cargo build --release -p goose-api` or pass --daemon PATH",
            binary.display()
        );
    }
    Ok(())
}

/// Starts this binary's `hello` subcommand, the bare axum server.
pub fn start_hello() -> anyhow::Result<ChildProcess> {
    let binary = std::env::current_exe().context("while locating this binary")?;
    let mut child = Command::new(&binary)
        .arg("hello")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {} hello", binary.display()))?;
    let stdout = child
        .stdout
        .take()
        .context("the hello server's stdout was not captured")?;
    ChildProcess::wait_for_address("bare axum", child, stdout, hello_address, |_| false)
}

/// Clock ticks per second of the times in `/proc/<pid>/stat`; Linux fixes it at 100.
const USER_HZ: u64 = 100;

/// Reads the CPU time, user and system, that process `pid` has used, all threads counted.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name in field 2 may hold spaces, so fields are counted after its ')'.
    let ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        .and_then(|fields| {
            // utime and stime are fields 14 and 15; the slice starts at field 3.
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .with_context(|| format!("{path} has no utime and stime fields"))?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Reads VmRSS and VmHWM of process `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|number| number.trim().parse().ok())
            .with_context(|| format!("{path} has no {name} line in kB"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

impl ChildProcess {
    /// Reads `output` on a thread until `parse_address` finds the listening address in a
    /// line, and fails if the child exits first or prints none within the start timeout.
    pub fn wait_for_address<R: Read + Send + 'static>(
        name: &'static str,
        mut child: Child,
        output: R,
        parse_address: fn(&str) -> Option<SocketAddr>,
        is_warning: fn(&str) -> bool,
    ) -> anyhow::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let output_reader = std::thread::Builder::new()
            .name(format!("{name} output"))
            .spawn(move || read_output(output, parse_address, is_warning, &sender))
            .context("while starting the output reader thread")?;
        let address = match receiver.recv_timeout(START_TIMEOUT) {
            Ok(Ok(address)) => address,
            Ok(Err(last_lines)) => {
                let (status, _) = terminate(&mut child)?;
                bail!(
                    "{name} exited with {status} before it printed its listening address; \
                     its last output:\n{}",
                    last_lines.join("\n")
                );
            }
            Err(_) => {
                terminate(&mut child)?;
                bail!("{name} printed no listening address within {START_TIMEOUT:?}");
            }
        };
        let process = Self {
            name,
            child,
            address,
            output_reader: Some(output_reader),
            stopped: false,
        };
        if !address.ip().is_loopback() {
            bail!("{name} listens on {address}, which is not a loopback address");
        }
        Ok(process)
    }

    /// Loopback address the child listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Process id of the child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has exited, which it should do only when stopped.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let exited = self
            .child
            .try_wait()
            .with_context(|| format!("while checking whether {} runs", self.name))?;
        match exited {
            Some(status) => bail!("{} exited unexpectedly with {status}", self.name),
            None => Ok(()),
        }
    }

    /// Sends SIGTERM, waits for the exit (SIGKILL after [`STOP_TIMEOUT`]) and collects the
    /// warnings that the child logged.
    pub fn stop(mut self) -> anyhow::Result<StopOutcome> {
        self.stopped = true;
        let signalled_at = Instant::now();
        let (status, killed) =
            terminate(&mut self.child).with_context(|| format!("while stopping {}", self.name))?;
        let waited = signalled_at.elapsed();
        // The reader thread ends at end of file, which the child's exit causes.
        let log = match self.output_reader.take() {
            Some(reader) => reader.join().unwrap_or_default(),
            None => LogSummary::default(),
        };
        Ok(StopOutcome {
            status,
            waited,
            killed,
            log,
        })
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if !self.stopped {
            // An error path skipped `stop`; the child must not outlive the harness.
            let _ = terminate(&mut self.child);
        }
    }
}

/// Sends SIGTERM to the child's PID, waits up to [`STOP_TIMEOUT`], then sends SIGKILL.
/// Returns the exit status and whether SIGKILL was needed. The PID cannot belong to another
/// process meanwhile, because the child is not reaped before `try_wait` or `wait` returns.
fn terminate(child: &mut Child) -> anyhow::Result<(ExitStatus, bool)> {
    if let Some(status) = child.try_wait()? {
        return Ok((status, false));
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).context("the child's PID is out of range")?);
    kill(pid, Signal::SIGTERM).with_context(|| format!("cannot send SIGTERM to PID {pid}"))?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        std::thread::sleep(EXIT_POLL_INTERVAL);
    }
    child
        .kill()
        .with_context(|| format!("cannot send SIGKILL to PID {pid}"))?;
    Ok((child.wait()?, true))
}

/// Reads `output` line by line until end of file. Sends the listening address as soon as a
/// line contains it, or the last lines if none did, and returns the warnings seen. Reading
/// on to end of file keeps the pipe drained, so that the child does not block on a full pipe.
fn read_output(
    output: impl Read,
    parse_address: fn(&str) -> Option<SocketAddr>,
    is_warning: fn(&str) -> bool,
    sender: &mpsc::Sender<Result<SocketAddr, Vec<String>>>,
) -> LogSummary {
    let mut reader = BufReader::new(output);
    let mut summary = LogSummary::default();
    let mut early_lines = VecDeque::new();
    let mut address = None;
    while let Some(line) = next_line(&mut reader) {
        if is_warning(&line) {
            summary.warnings += 1;
            if summary.samples.len() < WARNING_SAMPLES_KEPT {
                summary.samples.push(line.clone());
            }
        }
        if address.is_some() {
            continue;
        }
        address = parse_address(&line);
        match address {
            // The receiver is gone only when start-up has already failed.
            Some(found) => drop(sender.send(Ok(found))),
            None => {
                early_lines.push_back(line);
                if early_lines.len() > EARLY_LINES_KEPT {
                    early_lines.pop_front();
                }
            }
        }
    }
    if address.is_none() {
        drop(sender.send(Err(early_lines.into())));
    }
    summary
}

/// Returns the next line without its line break, replacing invalid UTF-8, or `None` at end
/// of file or on a read error.
fn next_line(reader: &mut impl BufRead) -> Option<String> {
    let mut bytes = Vec::new();
    match reader.read_until(b'\n', &mut bytes) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            let line = String::from_utf8_lossy(&bytes);
            Some(line.trim_end_matches(['\n', '\r']).to_owned())
        }
    }
}

/// Returns the address of the daemon's JSON `"message":"listening"` line.
fn daemon_address(line: &str) -> Option<SocketAddr> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    if event.get("message")?.as_str()? != "listening" {
        return None;
    }
    event.get("address")?.as_str()?.parse().ok()
}

/// Returns whether a daemon stderr line is a WARN or ERROR event, or is not a JSON event at
/// all, as a panic message is.
fn is_daemon_warning(line: &str) -> bool {
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(event) => matches!(
            event.get("level").and_then(serde_json::Value::as_str),
            Some("WARN" | "ERROR")
        ),
        Err(_) => true,
    }
}

/// Returns 127.0.0.1 with the port that the hello server prints.
fn hello_address(line: &str) -> Option<SocketAddr> {
    let port: u16 = line.trim().parse().ok()?;
    Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_listening_line_gives_address() {
        let line = r#"{"level":"INFO","message":"listening","address":"127.0.0.1:4321"}"#;
        assert_eq!(
            daemon_address(line),
            Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4321)))
        );
    }

    #[test]
    fn daemon_other_line_gives_no_address() {
        let line = r#"{"level":"INFO","message":"ready","address":"127.0.0.1:4321"}"#;
        assert_eq!(daemon_address(line), None);
        assert_eq!(daemon_address("not json"), None);
    }

    #[test]
    fn daemon_warning_lines() {
        assert!(is_daemon_warning(r#"{"level":"WARN","message":"x"}"#));
        assert!(is_daemon_warning(r#"{"level":"ERROR","message":"x"}"#));
        assert!(!is_daemon_warning(r#"{"level":"INFO","message":"x"}"#));
        assert!(is_daemon_warning(
            "thread 'main' panicked at src/main.rs:1:1"
        ));
    }

    #[test]
    fn output_reader_finds_address_after_other_lines() {
        let output = "starting\n4321\n1\n2\n".as_bytes();
        let (sender, receiver) = mpsc::channel();
        read_output(output, hello_address, |line| line == "2", &sender);
        let address = receiver.recv().ok().and_then(Result::ok);
        assert_eq!(address, Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 4321))));
    }

    #[test]
    fn output_reader_counts_warnings() {
        let output = "4321\nwarn\nok\nwarn\n".as_bytes();
        let (sender, _receiver) = mpsc::channel();
        let summary = read_output(output, hello_address, |line| line == "warn", &sender);
        assert_eq!(summary.warnings, 2);
        assert_eq!(summary.samples.len(), 2);
    }

    #[test]
    fn output_without_address_sends_last_lines() {
        let output = "error: bad config\n".as_bytes();
        let (sender, receiver) = mpsc::channel();
        read_output(output, hello_address, |_| false, &sender);
        let sent = receiver.recv().ok();
        assert!(matches!(sent, Some(Err(lines)) if lines == ["error: bad config"]));
    }

    #[test]
    fn memory_of_this_process() {
        let memory = memory(std::process::id()).ok();
        assert!(memory.is_some_and(|memory| memory.rss_kib > 0));
        assert!(memory.is_some_and(|memory| memory.peak_kib >= memory.rss_kib));
    }
}
