//! Watching the extensions directory, so a manifest dropped, edited or deleted there
//! applies without a reload of the config.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Editors save in several steps within a few milliseconds, so events are collected until
/// the directory has been quiet this long.
pub const QUIET_PERIOD: Duration = Duration::from_millis(100);
/// A directory written to without pause still applies this often.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// A watch on the extensions directory that follows `extensions_dir` across reloads.
#[derive(Debug)]
pub struct DirectoryWatch {
    watcher: Option<notify::RecommendedWatcher>,
    watched: Option<PathBuf>,
}

impl DirectoryWatch {
    /// Creates a watcher that sends `()` on `events` for each relevant change.
    pub fn new(events: mpsc::UnboundedSender<()>) -> Self {
        let watcher = notify::recommended_watcher(move |event| {
            if is_relevant(&event) {
                // The receiver is gone only after shutdown, when events no longer matter.
                let _ = events.send(());
            }
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(%error, "cannot create the extensions directory watcher; manifests apply on config reload only");
                None
            }
        };
        Self {
            watcher,
            watched: None,
        }
    }

    /// Watches `dir`, replacing the previous watch if the directory changed. While `dir`
    /// does not exist, its parent is watched instead, so creating it triggers a rescan.
    pub fn follow(&mut self, dir: &Path) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        let target = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            match dir.parent().map(directory_or_current) {
                Some(parent) if parent.is_dir() => parent,
                _ => {
                    tracing::warn!(path = %dir.display(), "neither the extensions directory nor its parent exists; manifests apply on config reload only");
                    return;
                }
            }
        };
        if self.watched.as_deref() == Some(target.as_path()) {
            return;
        }
        if let Some(old) = self.watched.take() {
            // The directory may be deleted already, which removed the watch with it.
            let _ = watcher.unwatch(&old);
        }
        match watcher.watch(&target, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(path = %target.display(), "watching for extension manifests");
                self.watched = Some(target);
            }
            Err(error) => tracing::error!(
                path = %target.display(),
                %error,
                "cannot watch the extensions directory; manifests apply on config reload only"
            ),
        }
    }

    /// Forgets the watched directory, so the next [`follow`](Self::follow) watches again.
    /// Called when the directory was deleted and may be created anew.
    pub fn reset_if_missing(&mut self) {
        if self.watched.as_deref().is_some_and(|dir| !dir.is_dir()) {
            self.watched = None;
        }
    }
}

fn directory_or_current(dir: &Path) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    }
}

fn is_relevant(event: &notify::Result<notify::Event>) -> bool {
    match event {
        // An error such as a queue overflow may hide a change, so rescan to be safe.
        Err(_) => true,
        Ok(event) => !matches!(event.kind, EventKind::Access(_)),
    }
}

/// Waits until no event has arrived for `quiet`, or `max` has passed, draining the channel.
pub async fn settle(events: &mut mpsc::UnboundedReceiver<()>, quiet: Duration, max: Duration) {
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
