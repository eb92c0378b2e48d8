//! Reloading the certificate when its files change, as certificate renewal tools replace
//! them, and on every config reload, which SIGHUP also triggers.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::CertStore;
use crate::config::ConfigHandle;
use crate::config::watch::{MAX_DELAY, QUIET_PERIOD, directory_or_current, settle};

/// Starts the task that reloads `certs` when a file in the certificate's or key's
/// directory changes, or a new config snapshot is published, until `shutdown`.
pub fn spawn_cert_watcher(
    certs: Arc<CertStore>,
    config: ConfigHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let names = watched_names(&certs);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match &event {
            // An error such as a queue overflow may hide a change, so reload to be safe.
            Err(_) => true,
            Ok(event) => !matches!(event.kind, EventKind::Access(_)) && touches(event, &names),
        };
        if relevant {
            // The receiver is gone only after shutdown, when events no longer matter.
            let _ = events_tx.send(());
        }
    })
    .context("while creating the TLS certificate watcher")?;
    for dir in watched_dirs(&certs) {
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch the TLS directory {}", dir.display()))?;
        tracing::debug!(path = %dir.display(), "watching TLS directory");
    }
    let mut snapshots = config.subscribe();
    Ok(tokio::spawn(async move {
        // Dropping the watcher ends the notifications, so it lives as long as the loop.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = events.recv() => {
                    settle(&mut events, QUIET_PERIOD, MAX_DELAY).await;
                }
                Ok(()) = snapshots.changed() => {}
            }
            reload(&certs);
        }
        tracing::debug!("TLS certificate watcher stopped");
    }))
}

fn reload(certs: &CertStore) {
    match certs.reload() {
        Ok(true) => tracing::info!(
            cert_file = %certs.files()[0].display(),
            "TLS certificate reloaded; new connections use it"
        ),
        Ok(false) => tracing::debug!("TLS certificate unchanged"),
        Err(error) => tracing::error!(
            error = format!("{error:#}"),
            "cannot reload the TLS certificate; keeping the current one"
        ),
    }
}

/// Directories of both files and of the files they resolve to, as for the config file.
fn watched_dirs(certs: &CertStore) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for file in certs.files() {
        dirs.extend(file.parent().map(directory_or_current));
        if let Ok(target) = std::fs::canonicalize(file) {
            dirs.extend(target.parent().map(Path::to_path_buf));
        }
    }
    dirs
}

fn watched_names(certs: &CertStore) -> BTreeSet<OsString> {
    let mut names = BTreeSet::new();
    for file in certs.files() {
        names.extend(file.file_name().map(ToOwned::to_owned));
        if let Ok(target) = std::fs::canonicalize(file) {
            names.extend(target.file_name().map(ToOwned::to_owned));
        }
    }
    names
}

/// Returns whether the event names one of the files or a Kubernetes `..data` entry.
fn touches(event: &notify::Event, names: &BTreeSet<OsString>) -> bool {
    event.paths.is_empty()
        || event.paths.iter().any(|path| {
            path.file_name().is_some_and(|name| {
                names.contains(name) || name.to_string_lossy().starts_with("..")
            })
        })
}
