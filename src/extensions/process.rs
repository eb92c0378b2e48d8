//! A stdio MCP server's process: started in its own process group so that wrappers such as
//! `npx`, `uv` or `sh -c` cannot leave grandchildren behind, and stopped by closing stdin,
//! then signalling the whole group, then reaping.

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::env;
use super::stderr::{self, StderrTail};
use crate::config::ExtensionConfig;

/// Time a server gets to exit after its stdin closes, and again after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Interval between checks whether a signalled process group is gone.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Number of the next server process, unique within this daemon, set in its marker.
static NEXT_SERVER: AtomicU64 = AtomicU64::new(1);

/// A running stdio server and the task draining its stderr.
#[derive(Debug)]
pub struct ServerProcess {
    extension: String,
    child: Child,
    group: Pid,
    exit: Option<ExitStatus>,
    stderr_task: Option<JoinHandle<()>>,
    record: GroupRecord,
    /// Number in the process's marker, which its children inherit.
    server: u64,
}

/// The process group of an extension's current stdio server, shared by its
/// [`ServerProcess`] and the registry. A supervisor task that is aborted drops its server
/// without the stop sequence, so the registry then kills and reaps the recorded group.
#[derive(Debug, Clone, Default)]
pub struct GroupRecord(Arc<Mutex<Option<RecordedGroup>>>);

#[derive(Debug, Clone, Copy)]
struct RecordedGroup {
    group: Pid,
    /// Whether the leader, whose process id is the group id, has been reaped.
    leader_reaped: bool,
}

/// Starts `config.cmd` with piped stdio in a new process group. Returns the process and
/// the pipes the MCP transport uses.
pub fn spawn(
    extension: &str,
    config: &ExtensionConfig,
    tail: StderrTail,
    record: GroupRecord,
) -> std::io::Result<(ServerProcess, ChildStdout, ChildStdin)> {
    let program = config.cmd.as_deref().unwrap_or_default();
    let mut command = Command::new(program);
    command
        .args(&config.args)
        .env_clear()
        .envs(env::child_env(config, |name| std::env::var(name).ok()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Only a safety net if the supervisor panics; normal stops go through `stop`.
        .kill_on_drop(true);
    if let Some(cwd) = &config.cwd {
        command.current_dir(cwd);
    }
    // Set last, so that no `envs` entry can replace the marker.
    let server = NEXT_SERVER.fetch_add(1, Ordering::Relaxed);
    #[cfg(target_os = "linux")]
    command.envs(super::orphans::marker_env(extension, server));
    let mut child = command.spawn()?;
    tail.clear();
    let missing = || std::io::Error::other("child pipes were not created");
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr_pipe = child.stderr.take().ok_or_else(missing)?;
    let pid = child.id().ok_or_else(missing)?;
    let group = Pid::from_raw(i32::try_from(pid).map_err(std::io::Error::other)?);
    let stderr_task = tokio::spawn(stderr::drain(extension.to_owned(), stderr_pipe, tail));
    record.set(group);
    let process = ServerProcess {
        extension: extension.to_owned(),
        child,
        group,
        exit: None,
        stderr_task: Some(stderr_task),
        record,
        server,
    };
    Ok((process, stdout, stdin))
}

impl ServerProcess {
    /// Returns the process id of the server, which is also its process group id.
    pub fn pid(&self) -> i32 {
        self.group.as_raw()
    }

    /// Waits until the server process exits and reaps it. Cancel-safe.
    pub async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self.child.wait().await?;
        self.set_exit(status);
        Ok(status)
    }

    /// Waits up to `limit` for the server to exit.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(limit, self.exited())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Stops the server whose stdin the caller has closed: waits [`STOP_GRACE`] for it to
    /// exit, sends SIGTERM to its process group, waits again, sends SIGKILL, and reaps it.
    /// The group is signalled even when the server exits by itself, to end what it left
    /// behind.
    pub async fn stop(mut self) -> Option<ExitStatus> {
        let mut status = self.exited_within(STOP_GRACE).await;
        if self.group_alive() {
            self.signal_group(Signal::SIGTERM);
            if !self.wait_group_gone(STOP_GRACE).await {
                self.signal_group(Signal::SIGKILL);
                self.wait_group_gone(STOP_GRACE).await;
            }
        }
        if status.is_none() {
            status = self.exited().await.ok();
        }
        self.stop_escaped().await;
        if let Some(task) = self.stderr_task.take() {
            // Every writer of the pipe is gone, so the drain ends at once unless a process
            // outside the group inherited the pipe.
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                tracing::warn!(extension = %self.extension, "stderr of a stopped server stayed open");
            }
        }
        self.record.clear();
        tracing::debug!(extension = %self.extension, status = ?status, "MCP server process reaped");
        status
    }

    /// Stops the processes of this server that left its process group, as a daemon started
    /// with `setsid` does, by the marker they inherited.
    async fn stop_escaped(&self) {
        #[cfg(target_os = "linux")]
        {
            let server = self.server;
            let stopped =
                tokio::task::spawn_blocking(move || super::orphans::stop_escaped(Some(server)))
                    .await
                    .unwrap_or(0);
            if stopped > 0 {
                tracing::warn!(
                    extension = %self.extension,
                    stopped,
                    "stopped processes that the server had moved out of its process group"
                );
            }
        }
    }

    fn set_exit(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        self.record.mark_leader_reaped();
    }

    fn group_alive(&self) -> bool {
        // NOTE: once the leader is reaped and the group is empty, a new group could reuse
        // the id before this check. The window is a few milliseconds.
        killpg(self.group, None).is_ok() && has_live_member(self.group)
    }

    fn signal_group(&self, signal: Signal) {
        if let Err(error) = killpg(self.group, signal) {
            tracing::debug!(extension = %self.extension, %error, ?signal, "cannot signal process group");
        }
    }

    /// Reaps the leader while polling until no process of the group is left.
    async fn wait_group_gone(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.exit.is_none()
                && let Ok(Some(status)) = self.child.try_wait()
            {
                self.set_exit(status);
            }
            if !self.group_alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl GroupRecord {
    fn set(&self, group: Pid) {
        *self.lock() = Some(RecordedGroup {
            group,
            leader_reaped: false,
        });
    }

    fn mark_leader_reaped(&self) {
        if let Some(recorded) = self.lock().as_mut() {
            recorded.leader_reaped = true;
        }
    }

    fn clear(&self) {
        *self.lock() = None;
    }

    /// Sends SIGKILL to the recorded group, reaps its leader unless its [`ServerProcess`]
    /// did, and waits up to `limit` until no live member is left. Returns the group id, or
    /// `None` when no server was recorded. Only for servers whose supervisor has ended or
    /// been aborted, because a running [`ServerProcess`] would lose its exit status.
    pub async fn kill_and_reap(&self, extension: &str, limit: Duration) -> Option<i32> {
        let recorded = self.lock().take()?;
        let group = recorded.group;
        if let Err(error) = killpg(group, Signal::SIGKILL) {
            tracing::debug!(extension, %error, group = group.as_raw(), "cannot signal process group");
        }
        let deadline = tokio::time::Instant::now() + limit;
        let mut leader_reaped = recorded.leader_reaped;
        loop {
            if !leader_reaped {
                // ECHILD means that tokio's reaper of dropped children reaped it first.
                leader_reaped = !matches!(
                    waitpid(group, Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                );
            }
            if leader_reaped && !has_live_member(group) {
                tracing::info!(
                    extension,
                    group = group.as_raw(),
                    "killed and reaped the process group of an aborted server"
                );
                return Some(group.as_raw());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(
                    extension,
                    group = group.as_raw(),
                    leader_reaped,
                    "processes of a killed server's group are still alive"
                );
                return Some(group.as_raw());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<RecordedGroup>> {
        // The record is a plain value that stays consistent if a holder panicked.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Returns whether a process of `group` other than a zombie exists, from `/proc`. Members
/// that outlive the leader are reparented to init, which reaps them on its own schedule, so
/// their zombies must not count. Without `/proc`, every member counts.
pub(super) fn has_live_member(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    let group = group.as_raw().to_string();
    entries.filter_map(Result::ok).any(|entry| {
        let is_process = entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit());
        if !is_process {
            return false;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesized command name: state, parent id, group id.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let group_field = fields.nth(1);
        group_field == Some(group.as_str()) && state != Some("Z")
    })
}

/// Describes how a process ended, for error messages.
pub fn describe_exit(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            _ => "exited".to_owned(),
        },
        None => "exited with an unknown status".to_owned(),
    }
}
