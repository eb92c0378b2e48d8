//! The task that keeps a plugin extension loaded: it loads the library, then watches the
//! file and swaps in each new version, until the extension is stopped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::load::{self, FileIdentity, PluginVersion};
use crate::extensions::slot::Slot;

/// How often the library file is checked for a new version. Changes in the extensions
/// directory are noticed sooner, through the registry's directory watch.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A changed file must stay unchanged this long before it is loaded, so a copy still in
/// progress is not read half written.
const QUIET_PERIOD: Duration = Duration::from_millis(100);

/// Loads `slot`'s plugin and follows changes of its file until `stop` is cancelled.
pub async fn supervise(slot: Arc<Slot>, stop: CancellationToken) {
    slot.set_starting();
    let definition = slot.definition();
    match load::library_path(&slot.name, &definition.config) {
        Ok(path) => follow(&slot, &path, &stop).await,
        Err(error) => {
            slot.set_failed(error);
            stop.cancelled().await;
        }
    }
    slot.set_stopped();
    tracing::info!(extension = %slot.name, "plugin extension stopped");
}

async fn follow(slot: &Slot, path: &Path, stop: &CancellationToken) {
    // Identity of the file at the last load attempt; a new attempt waits for a change.
    let mut attempted: Option<FileIdentity> = None;
    let mut reported_missing = false;
    loop {
        let seen = stat(path).await;
        if seen.is_some() && seen != attempted {
            reported_missing = false;
            attempted = settle(path, seen, stop).await;
            if attempted.is_some() {
                load_version(slot, path.to_path_buf()).await;
            }
        } else if seen.is_none() && !reported_missing && !slot.has_plugin() {
            reported_missing = true;
            slot.set_failed(format!(
                "cannot read {}: the file does not exist or is not readable; check the path",
                path.display()
            ));
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = slot.refresh.notified() => {}
            () = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

async fn stat(path: &Path) -> Option<FileIdentity> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || FileIdentity::of(&path).ok())
        .await
        .ok()
        .flatten()
}

/// Waits until the file's identity stays the same for [`QUIET_PERIOD`], and returns it.
async fn settle(
    path: &Path,
    mut seen: Option<FileIdentity>,
    stop: &CancellationToken,
) -> Option<FileIdentity> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(QUIET_PERIOD) => {}
        }
        let now = stat(path).await;
        if now == seen {
            return now;
        }
        seen = now;
    }
}

async fn load_version(slot: &Slot, path: PathBuf) {
    let loaded = tokio::task::spawn_blocking(move || load::load(&path)).await;
    let loaded = loaded.unwrap_or_else(|error| Err(format!("loading the plugin failed: {error}")));
    match loaded {
        Ok(version) => install(slot, version),
        Err(error) if slot.has_plugin() => slot.set_swap_failed(format!(
            "a new version of the library was rejected and the previous version keeps \
             serving: {error}"
        )),
        Err(error) => slot.set_failed(error),
    }
}

fn install(slot: &Slot, version: PluginVersion) {
    let replaced = slot.has_plugin();
    tracing::info!(
        extension = %slot.name,
        plugin = %version.manifest.name,
        version = %version.manifest.version,
        path = %version.file.display(),
        sha256 = %version.sha256,
        tools = version.manifest.tools.len(),
        "{}",
        if replaced { "plugin replaced by a new version" } else { "plugin loaded" }
    );
    slot.set_plugin(Arc::new(version));
}
