//! Reloading the config when its file changes or the daemon receives SIGHUP.
//!
//! The watcher observes the file's directory, not the file: editors and `sed -i` replace
//! the file by renaming a new one over it, and Kubernetes swaps a `..data` symlink in the
//! directory while the config path itself stays the same symlink.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::snapshot::{ConfigHandle, ReloadOutcome};

/// Editors save in several steps (truncate, write, rename) within a few milliseconds, so
/// events are collected until the directory has been quiet this long.
pub(crate) const QUIET_PERIOD: Duration = Duration::from_millis(100);
/// A file rewritten without pause still reloads this often.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(1);
/// Interval at which a config directory that is missing, and so cannot be watched, is
/// looked for again.
const MISSING_DIRECTORY_RETRY: Duration = Duration::from_secs(1);

/// Event that woke the watcher loop.
#[derive(Debug)]
enum Trigger {
    FileEvent,
    Hangup,
    /// Time to look for a config directory that was missing.
    Retry,
    Shutdown,
}

/// Starts the task that reloads `handle` on file changes and SIGHUP until `shutdown`.
pub fn spawn_watcher(
    handle: ConfigHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let hangups = signal(SignalKind::hangup()).context("while installing the SIGHUP handler")?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let file = handle.file();
    let watcher = match &file {
        Some(path) => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let interesting = interesting_names(&path);
            let directories: BTreeSet<PathBuf> = path
                .parent()
                .map(|dir| dir.ancestors().map(Path::to_path_buf).collect())
                .unwrap_or_default();
            let watcher = notify::recommended_watcher(move |event| {
                if is_relevant(&event, &interesting, &directories) {
                    // The receiver is gone only after shutdown, when events no longer matter.
                    let _ = events_tx.send(());
                }
            })
            .context("while creating the config file watcher")?;
            let mut watches = Watches {
                watcher,
                path,
                directories: BTreeSet::new(),
                complete: false,
                reported_missing: BTreeSet::new(),
            };
            watches.refresh();
            Some(watches)
        }
        None => None,
    };
    let task = WatchLoop {
        handle,
        events: events_rx,
        hangups,
        watcher,
    };
    Ok(tokio::spawn(task.run(shutdown)))
}

struct WatchLoop {
    handle: ConfigHandle,
    events: mpsc::UnboundedReceiver<()>,
    hangups: tokio::signal::unix::Signal,
    watcher: Option<Watches>,
}

impl WatchLoop {
    async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let incomplete = self
                .watcher
                .as_ref()
                .is_some_and(|watches| !watches.complete);
            let retry = async {
                if incomplete {
                    tokio::time::sleep(MISSING_DIRECTORY_RETRY).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => Trigger::Shutdown,
                Some(()) = self.events.recv() => Trigger::FileEvent,
                Some(()) = self.hangups.recv() => Trigger::Hangup,
                () = retry => Trigger::Retry,
            };
            match trigger {
                Trigger::FileEvent => {
                    settle(&mut self.events, QUIET_PERIOD, MAX_DELAY).await;
                    self.reload(false).await;
                }
                Trigger::Hangup => {
                    tracing::info!("SIGHUP received; reloading the config");
                    self.reload(true).await;
                }
                Trigger::Retry => {
                    // The file may have been written before its directory was watched.
                    if self.watcher.as_mut().is_some_and(Watches::refresh) {
                        self.reload(false).await;
                    }
                }
                Trigger::Shutdown => break,
            }
        }
        tracing::debug!("config watcher stopped");
    }

    async fn reload(&mut self, force: bool) {
        // Watching before the read means a write that follows the read raises an event.
        if let Some(watches) = &mut self.watcher {
            watches.refresh();
        }
        let handle = self.handle.clone();
        let outcome = tokio::task::spawn_blocking(move || handle.reload(force)).await;
        match outcome {
            Ok(ReloadOutcome::NoFile) => {
                tracing::info!("no config file is in use, so there is nothing to reload");
            }
            Ok(_) => {}
            Err(error) => tracing::error!(%error, "config reload task failed"),
        }
        if let Some(watches) = &mut self.watcher {
            watches.refresh();
        }
    }
}

/// Waits until no event has arrived for `quiet`, or `max` has passed, draining the channel.
pub(crate) async fn settle(
    events: &mut mpsc::UnboundedReceiver<()>,
    quiet: Duration,
    max: Duration,
) {
    let deadline = Instant::now() + max;
    loop {
        let wait = quiet.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(())) if Instant::now() < deadline => continue,
            _ => break,
        }
    }
    while events.try_recv().is_ok() {}
}

/// File names whose events can change what the config path reads: the path's own name,
/// the name of the file it resolves to, and Kubernetes' `..data` entries.
fn interesting_names(path: &Path) -> BTreeSet<std::ffi::OsString> {
    let mut names = BTreeSet::new();
    names.extend(path.file_name().map(ToOwned::to_owned));
    if let Ok(target) = std::fs::canonicalize(path) {
        names.extend(target.file_name().map(ToOwned::to_owned));
    }
    names
}

/// Returns whether `event` can change what the config path reads: an event on one of the
/// `interesting` names, on a Kubernetes `..` entry, or on one of the config path's
/// `directories` itself, such as its removal.
fn is_relevant(
    event: &notify::Result<notify::Event>,
    interesting: &BTreeSet<std::ffi::OsString>,
    directories: &BTreeSet<PathBuf>,
) -> bool {
    let Ok(event) = event else {
        // An error such as a queue overflow may hide a change, so reload to be safe.
        return true;
    };
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            directories.contains(path)
                || path.file_name().is_some_and(|name| {
                    interesting.contains(name) || name.to_string_lossy().starts_with("..")
                })
        })
}

/// The watches on the directories of the config path.
struct Watches {
    watcher: notify::RecommendedWatcher,
    /// The config path, absolute.
    path: PathBuf,
    /// Directories being watched.
    directories: BTreeSet<PathBuf>,
    /// Whether every directory that should be watched is, which fails while one is missing.
    complete: bool,
    /// Directories already logged as missing, so a long absence is logged once.
    reported_missing: BTreeSet<PathBuf>,
}

impl Watches {
    /// Watches the directory of the config path and of the file it resolves to, which
    /// changes when a Kubernetes `..data` swap points the path into a new directory.
    /// Returns whether a directory that was not watched before now is.
    fn refresh(&mut self) -> bool {
        let mut wanted = BTreeSet::new();
        wanted.extend(self.path.parent().map(directory_or_current));
        if let Ok(target) = std::fs::canonicalize(&self.path) {
            wanted.extend(target.parent().map(Path::to_path_buf));
        }
        for gone in self.directories.difference(&wanted) {
            // The directory may already be deleted, which removed the watch with it.
            let _ = self.watcher.unwatch(gone);
        }
        self.directories.retain(|dir| wanted.contains(dir));
        let mut started = false;
        self.complete = true;
        for dir in wanted {
            // Added again each time: a directory removed and made again lost its watch,
            // even when the new one reuses the inode number, and adding a watch that
            // exists changes nothing.
            if self.watch(&dir) {
                started |= self.directories.insert(dir);
            } else {
                self.directories.remove(&dir);
                self.complete = false;
            }
        }
        started
    }

    fn watch(&mut self, dir: &Path) -> bool {
        if !dir.is_dir() {
            if self.reported_missing.insert(dir.to_path_buf()) {
                tracing::warn!(
                    path = %dir.display(),
                    "config directory is missing; edits apply once it exists again"
                );
            }
            return false;
        }
        match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                if self.reported_missing.remove(dir) || !self.directories.contains(dir) {
                    tracing::debug!(path = %dir.display(), "watching config directory");
                }
                true
            }
            Err(error) => {
                if self.reported_missing.insert(dir.to_path_buf()) {
                    tracing::error!(
                        path = %dir.display(),
                        %error,
                        "cannot watch the config directory; retrying every second, and SIGHUP reloads"
                    );
                }
                false
            }
        }
    }
}

pub(crate) fn directory_or_current(dir: &Path) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_of_events_settles_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            for _ in 0..20 {
                let _ = tx.send(());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tx
        });
        settle(&mut rx, QUIET_PERIOD, MAX_DELAY).await;
        let waited = started.elapsed();
        // 20 events 10 ms apart, then one quiet period.
        assert!(
            waited >= Duration::from_millis(290),
            "settled after {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(400),
            "settled after {waited:?}"
        );
        let _tx = sender.await;
        assert!(rx.try_recv().is_err(), "channel drained");
    }

    #[tokio::test(start_paused = true)]
    async fn endless_events_settle_by_max_delay() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sender = tokio::spawn(async move {
            loop {
                if tx.send(()).is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let started = Instant::now();
        settle(&mut rx, QUIET_PERIOD, MAX_DELAY).await;
        let waited = started.elapsed();
        assert!(waited >= MAX_DELAY, "settled after {waited:?}");
        assert!(
            waited < MAX_DELAY + QUIET_PERIOD,
            "settled after {waited:?}"
        );
        drop(rx);
        sender.abort();
    }
}
