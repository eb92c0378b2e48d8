//! Stopping processes of stdio servers whose daemon died without stopping them, as after a
//! `kill -9`. Every server process starts with a marker in its environment that names the
//! owning daemon process, and its children inherit it. A sweep at start and every minute
//! after finds processes whose marker names a daemon that no longer runs, and stops them.
//!
//! A process counts as an orphan only if it carries the marker, belongs to this daemon's
//! user, and names an owner in this daemon's PID and time namespaces that is gone. A
//! process whose marker names a live daemon, a replica on the same host included, is never
//! signalled.
//! Linux only, because the sweep reads `/proc` and signals through pidfds.

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::fd::OwnedFd;
use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio_util::sync::CancellationToken;

/// Variable that names the daemon owning a server process, as `PID:START:PIDNS:TIMENS`:
/// the daemon's process id, its start time in clock ticks after boot (field 22 of
/// `/proc/PID/stat`), and the inode numbers of its PID and time namespaces.
pub const OWNER_VAR: &str = crate::config::SERVER_MARKERS[0];
/// Variable that names the extension a server process belongs to, for the log.
pub const EXTENSION_VAR: &str = crate::config::SERVER_MARKERS[1];
/// Variable that numbers each server process this daemon starts, so that the processes one
/// server left outside its process group can be distinguished from those of its successor.
pub const SERVER_VAR: &str = crate::config::SERVER_MARKERS[2];

/// Interval between sweeps after the first, so that the orphans of a replica that died
/// on the same host are stopped within about a minute.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// Time an orphan gets to exit after SIGTERM, and again after SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
/// Interval between checks whether signalled orphans are gone.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Scans per sweep, so that processes an orphan forks while it is being stopped, which
/// inherit its marker, are found by the next scan.
const MAX_SCANS: usize = 3;

/// A daemon process, identified so that a reused process id does not match it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: i32,
    start_ticks: u64,
    pid_namespace: u64,
    time_namespace: u64,
}

impl Owner {
    /// Returns this daemon's identity, or `None` without a readable `/proc`.
    fn current() -> Option<Self> {
        static CURRENT: OnceLock<Option<Owner>> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let pid = i32::try_from(std::process::id()).ok()?;
            let (_, start_ticks) = process_state(pid)?;
            let (pid_namespace, time_namespace) = own_namespaces()?;
            Some(Self {
                pid,
                start_ticks,
                pid_namespace,
                time_namespace,
            })
        })
    }

    fn marker(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.pid, self.start_ticks, self.pid_namespace, self.time_namespace
        )
    }

    fn parse(marker: &str) -> Option<Self> {
        let mut fields = marker.split(':');
        let owner = Self {
            pid: fields.next()?.parse().ok()?,
            start_ticks: fields.next()?.parse().ok()?,
            pid_namespace: fields.next()?.parse().ok()?,
            time_namespace: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(owner)
    }

    /// Returns whether the process this names still runs. Only meaningful for an owner in
    /// the caller's namespaces, because `/proc` shows start times relative to the reader's
    /// time namespace.
    fn is_alive(&self) -> bool {
        process_state(self.pid)
            .is_some_and(|(state, start)| start == self.start_ticks && !is_dead_state(state))
    }
}

/// Returns the environment variables that mark a server process of `extension` as owned
/// by this daemon. Empty when `/proc` cannot be read, and then no sweep runs either.
pub fn marker_env(extension: &str, server: u64) -> Vec<(&'static str, String)> {
    match Owner::current() {
        Some(owner) => vec![
            (OWNER_VAR, owner.marker()),
            (EXTENSION_VAR, extension.to_owned()),
            (SERVER_VAR, server.to_string()),
        ],
        None => Vec::new(),
    }
}

/// Stops the live processes that carry this daemon's marker and, when `server` is set, that
/// server's number: processes that left their server's process group, for example with
/// `setsid`, so that stopping the group missed them. Blocks for up to twice [`GRACE`] in
/// each of up to [`MAX_SCANS`] rounds.
/// Returns how many were signalled. A process that cleared its environment is not found.
pub fn stop_escaped(server: Option<u64>) -> usize {
    let Some(current) = Owner::current() else {
        return 0;
    };
    let uid = nix::unistd::geteuid().as_raw();
    let select = |pid: i32| {
        let candidate = own_process(pid, uid, &current)?;
        let matches = server.is_none_or(|server| candidate.server == Some(server));
        matches.then_some(candidate.process)
    };
    let mut stopped = 0;
    for _ in 0..MAX_SCANS {
        let found = scan_with(current.pid, select);
        if found.is_empty() {
            break;
        }
        stopped += stop(
            &found,
            "stopping a process that left its extension server's group",
        );
    }
    stopped
}

/// Starts a task that sweeps at once and then every [`SWEEP_INTERVAL`] until `shutdown`
/// is cancelled. A sweep still waiting for orphans to exit when the runtime stops is
/// abandoned, and the next daemon's first sweep finds what it left.
pub fn spawn_sweeper(shutdown: CancellationToken) {
    tokio::spawn(async move {
        if Owner::current().is_none() {
            tracing::warn!(
                "cannot read /proc/self; processes left by earlier daemons are not stopped"
            );
            return;
        }
        loop {
            match tokio::task::spawn_blocking(sweep).await {
                Ok(0) => tracing::debug!("found no processes left by earlier daemons"),
                Ok(stopped) => {
                    tracing::info!(stopped, "stopped processes left by earlier daemons")
                }
                Err(error) => tracing::error!(%error, "orphan sweep task failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
        }
    });
}

/// Stops every orphan, scanning again after each round. Returns how many were signalled.
fn sweep() -> usize {
    let mut stopped = 0;
    for _ in 0..MAX_SCANS {
        let orphans = scan();
        if orphans.is_empty() {
            break;
        }
        stopped += stop(
            &orphans,
            "stopping a process of an extension server whose daemon exited",
        );
    }
    stopped
}

/// A process that carries the marker of a daemon that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Orphan {
    pid: i32,
    start_ticks: u64,
    extension: String,
    owner_pid: i32,
}

/// Lists the orphans visible in `/proc`. Processes whose environment cannot be read, such
/// as those of other users, are skipped.
fn scan() -> Vec<Orphan> {
    let Some(current) = Owner::current() else {
        return Vec::new();
    };
    let uid = nix::unistd::geteuid().as_raw();
    scan_with(current.pid, |pid| orphan(pid, uid, &current))
}

/// Returns what `select` returns for each process in `/proc` other than `own_pid`.
fn scan_with(own_pid: i32, select: impl Fn(i32) -> Option<Orphan>) -> Vec<Orphan> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own_pid)
        .filter_map(select)
        .collect()
}

/// A live process that carries the marker of this daemon.
struct OwnProcess {
    process: Orphan,
    server: Option<u64>,
}

/// Returns process `pid` if it belongs to `uid`, is alive and its marker names `current`.
fn own_process(pid: i32, uid: u32, current: &Owner) -> Option<OwnProcess> {
    let metadata = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    if metadata.uid() != uid {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    if Owner::parse(&variable(&environ, OWNER_VAR)?)? != *current {
        return None;
    }
    let (state, start_ticks) = process_state(pid)?;
    if is_dead_state(state) {
        return None;
    }
    Some(OwnProcess {
        process: Orphan {
            pid,
            start_ticks,
            extension: variable(&environ, EXTENSION_VAR).unwrap_or_default(),
            owner_pid: current.pid,
        },
        server: variable(&environ, SERVER_VAR).and_then(|value| value.parse().ok()),
    })
}

/// Returns process `pid` as an orphan if it belongs to `uid` and its marker names a dead
/// owner in the namespaces of `current`.
fn orphan(pid: i32, uid: u32, current: &Owner) -> Option<Orphan> {
    let metadata = std::fs::metadata(format!("/proc/{pid}")).ok()?;
    if metadata.uid() != uid {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let owner = Owner::parse(&variable(&environ, OWNER_VAR)?)?;
    let same_namespaces = owner.pid_namespace == current.pid_namespace
        && owner.time_namespace == current.time_namespace;
    if !same_namespaces || owner.is_alive() {
        return None;
    }
    let (state, start_ticks) = process_state(pid)?;
    if is_dead_state(state) {
        return None;
    }
    Some(Orphan {
        pid,
        start_ticks,
        extension: variable(&environ, EXTENSION_VAR).unwrap_or_default(),
        owner_pid: owner.pid,
    })
}

/// Sends SIGTERM to each orphan, waits up to [`GRACE`], and sends SIGKILL to those left.
/// Logs `message` for each. Returns how many were signalled.
fn stop(orphans: &[Orphan], message: &str) -> usize {
    // A pidfd keeps naming the process it was opened for, so no signal can reach a
    // process that reused the id after the scan.
    let targets: Vec<(&Orphan, OwnedFd)> = orphans
        .iter()
        .filter_map(|orphan| Some((orphan, open_verified(orphan)?)))
        .collect();
    for (orphan, pidfd) in &targets {
        tracing::warn!(
            extension = %orphan.extension,
            pid = orphan.pid,
            owner_pid = orphan.owner_pid,
            "{message}"
        );
        send(orphan, pidfd, Signal::TERM);
    }
    if !wait_gone(&targets) {
        for (orphan, pidfd) in &targets {
            if !is_gone(orphan) {
                tracing::warn!(
                    extension = %orphan.extension,
                    pid = orphan.pid,
                    "process did not exit after SIGTERM; sending SIGKILL"
                );
                send(orphan, pidfd, Signal::KILL);
            }
        }
        if !wait_gone(&targets) {
            tracing::error!("processes of extension servers survived SIGKILL");
        }
    }
    targets.len()
}

/// Opens a pidfd for the orphan, and returns it only if the process still has the start
/// time the scan saw, so that the pidfd names the scanned process.
fn open_verified(orphan: &Orphan) -> Option<OwnedFd> {
    let pidfd = pidfd_open(Pid::from_raw(orphan.pid)?, PidfdFlags::empty()).ok()?;
    let (state, start_ticks) = process_state(orphan.pid)?;
    (start_ticks == orphan.start_ticks && !is_dead_state(state)).then_some(pidfd)
}

fn send(orphan: &Orphan, pidfd: &OwnedFd, signal: Signal) {
    if let Err(error) = pidfd_send_signal(pidfd, signal) {
        tracing::debug!(pid = orphan.pid, %error, ?signal, "cannot signal an orphaned process");
    }
}

/// Polls until every target is gone or [`GRACE`] passes. Returns whether all are gone.
fn wait_gone(targets: &[(&Orphan, OwnedFd)]) -> bool {
    let deadline = Instant::now() + GRACE;
    loop {
        if targets.iter().all(|(orphan, _)| is_gone(orphan)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Returns whether the orphan exited. A zombie counts as gone, because its new parent
/// reaps it on its own schedule.
fn is_gone(orphan: &Orphan) -> bool {
    process_state(orphan.pid)
        .is_none_or(|(state, start)| start != orphan.start_ticks || is_dead_state(state))
}

fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// Returns the state and start time in clock ticks of process `pid`, fields 3 and 22 of
/// `/proc/PID/stat`.
fn process_state(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in field 2 is parenthesized and may contain spaces and brackets.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some((state, start_ticks))
}

/// Returns the inode numbers of this process's PID and time namespaces. Kernels before
/// 5.6 have no time namespaces, and then the time namespace is 0.
fn own_namespaces() -> Option<(u64, u64)> {
    let pid_namespace = std::fs::metadata("/proc/self/ns/pid").ok()?.ino();
    let time_namespace = std::fs::metadata("/proc/self/ns/time").map_or(0, |m| m.ino());
    Some((pid_namespace, time_namespace))
}

/// Returns the value of `name` in a NUL-separated environment block.
fn variable(environ: &[u8], name: &str) -> Option<String> {
    environ.split(|&byte| byte == 0).find_map(|entry| {
        let value = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    fn sleeper(marker: &str) -> Child {
        Command::new("sleep")
            .arg("30")
            .env(OWNER_VAR, marker)
            .env(EXTENSION_VAR, "test-extension")
            .spawn()
            .expect("start sleep")
    }

    /// Returns the identity of a process that ran in these namespaces and has exited.
    fn dead_owner() -> Owner {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("start sleep");
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let (_, start_ticks) = process_state(pid).expect("stat of a running child");
        child.kill().expect("kill the child");
        child.wait().expect("reap the child");
        Owner {
            pid,
            start_ticks,
            ..Owner::current().expect("this process's identity")
        }
    }

    #[test]
    fn marker_round_trips_and_rejects_junk() {
        let owner = Owner::current().expect("this process's identity");
        assert_eq!(Owner::parse(&owner.marker()), Some(owner));
        for junk in ["", "12", "1:2:3", "1:2:3:4:5", "a:2:3:4", "1:-2:3:4"] {
            assert_eq!(Owner::parse(junk), None, "{junk:?}");
        }
        let environ = b"A=1\0GOOSE_API_OWNER=1:2:3:4\0GOOSE_API_OWNER_X=no\0";
        assert_eq!(variable(environ, OWNER_VAR).as_deref(), Some("1:2:3:4"));
        assert_eq!(variable(environ, EXTENSION_VAR), None);
    }

    #[test]
    fn owner_liveness_follows_start_time() {
        let owner = Owner::current().expect("this process's identity");
        assert!(owner.is_alive());
        let reused = Owner {
            start_ticks: owner.start_ticks + 1,
            ..owner
        };
        assert!(
            !reused.is_alive(),
            "a different start time is another process"
        );
        assert!(!dead_owner().is_alive());
    }

    #[test]
    fn sweep_stops_orphans_and_spares_live_owners() {
        let current = Owner::current().expect("this process's identity");
        let mut orphaned = sleeper(&dead_owner().marker());
        let mut owned = sleeper(&current.marker());
        let foreign = Owner {
            pid_namespace: current.pid_namespace + 1,
            ..dead_owner()
        };
        let mut other_namespace = sleeper(&foreign.marker());
        let pid_of = |child: &Child| i32::try_from(child.id()).expect("pid fits i32");

        let found: Vec<Orphan> = scan()
            .into_iter()
            .filter(|orphan| {
                [pid_of(&orphaned), pid_of(&owned), pid_of(&other_namespace)].contains(&orphan.pid)
            })
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, pid_of(&orphaned));
        assert_eq!(found[0].extension, "test-extension");

        assert_eq!(stop(&found, "stopping a test orphan"), 1);
        let status = orphaned.wait().expect("reap the orphan");
        assert_eq!(
            status.signal(),
            Some(nix::sys::signal::Signal::SIGTERM as i32)
        );
        for child in [&mut owned, &mut other_namespace] {
            assert_eq!(child.try_wait().expect("poll the child"), None, "spared");
            child.kill().expect("kill the child");
            child.wait().expect("reap the child");
        }
    }
}
