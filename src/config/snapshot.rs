//! The current configuration as an immutable snapshot, swapped atomically on reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::keys::KeyTable;
use super::model::Config;
use super::secret::Secret;
use super::{LoadError, Loaded, Problem, build, validate};

/// One generation of the configuration. A request loads one snapshot when it starts and
/// uses it to its end, so it never sees half of two configs.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration, with settings that need a restart kept at their running values.
    pub config: Config,
    /// Keys accepted by this generation.
    pub keys: KeyTable,
    /// Starts at 1 and grows by one with each applied reload.
    pub generation: u64,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// A setting changed in the file that keeps its running value until a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingRestart {
    /// Dotted key.
    pub key: String,
    /// Value in use, with secrets redacted.
    pub running: String,
    /// Value in the file, with secrets redacted.
    pub configured: String,
}

/// The outcome of the last reload attempts, for the status route.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    /// Problems of the last rejected edit, cleared when a valid edit is applied.
    pub last_error: Option<Vec<String>>,
    /// When the last rejected edit was seen.
    #[serde(skip)]
    pub last_error_at: Option<SystemTime>,
    /// Settings changed in the file that need a restart to apply.
    pub restart_required: Vec<PendingRestart>,
    /// Reloads applied since start.
    pub applied: u64,
    /// Reloads rejected since start.
    pub rejected: u64,
}

/// Outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new snapshot is serving.
    Applied {
        /// Its generation.
        generation: u64,
    },
    /// The file content is the same as last time.
    Unchanged,
    /// The daemon runs without a config file, so there is nothing to reload.
    NoFile,
    /// The file is empty, which editors produce briefly while saving; the old config stays.
    Empty,
    /// The new content is invalid; the old config stays.
    Rejected(Vec<Problem>),
}

/// Shared handle to the current snapshot, cheap to clone.
#[derive(Debug, Clone)]
pub struct ConfigHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    current: ArcSwap<Snapshot>,
    /// The config the daemon started with; its restart-only settings stay in force.
    started_with: Config,
    env: HashMap<String, String>,
    generated_key: Option<Secret>,
    reload: Mutex<ReloadState>,
    published: watch::Sender<Arc<Snapshot>>,
}

#[derive(Debug, Default)]
struct ReloadState {
    last_hash: Option<[u8; 32]>,
    status: ReloadStatus,
}

impl ConfigHandle {
    /// Creates the handle from the start-up config; `generated_key` applies whenever the
    /// config has no key.
    pub fn new(
        loaded: Loaded,
        env: HashMap<String, String>,
        generated_key: Option<Secret>,
    ) -> Self {
        let snapshot = Arc::new(Snapshot {
            keys: KeyTable::build(&loaded.config, generated_key.as_ref()),
            config: loaded.config.clone(),
            generation: 1,
            file: loaded.file,
            loaded_at: SystemTime::now(),
        });
        let (published, _) = watch::channel(snapshot.clone());
        let state = ReloadState {
            last_hash: loaded.text.as_deref().map(hash),
            status: ReloadStatus::default(),
        };
        Self {
            inner: Arc::new(Inner {
                current: ArcSwap::new(snapshot),
                started_with: loaded.config,
                env,
                generated_key,
                reload: Mutex::new(state),
                published,
            }),
        }
    }

    /// Returns the snapshot serving now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// Returns a receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.published.subscribe()
    }

    /// Returns the reload status.
    pub fn status(&self) -> ReloadStatus {
        self.lock_state().status.clone()
    }

    /// Returns the config file, if the daemon runs with one.
    pub fn file(&self) -> Option<PathBuf> {
        self.current().file.clone()
    }

    /// Re-reads the config file and swaps in the new config if it is valid.
    ///
    /// Unchanged content is skipped unless `force` is set. This blocks on file I/O, so async
    /// callers run it with `spawn_blocking`.
    pub fn reload(&self, force: bool) -> ReloadOutcome {
        let mut state = self.lock_state();
        let current = self.current();
        let Some(path) = current.file.clone() else {
            return ReloadOutcome::NoFile;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                let problem = Problem {
                    origin: Some(path.display().to_string()),
                    ..Problem::new("", format!("cannot read the config file: {error}"))
                };
                state.last_hash = None;
                return self.reject(&mut state, &path, vec![problem]);
            }
        };
        let digest = hash(&text);
        if !force && state.last_hash == Some(digest) {
            tracing::debug!(path = %path.display(), "config file content unchanged");
            return ReloadOutcome::Unchanged;
        }
        if text.trim().is_empty() {
            tracing::warn!(
                path = %path.display(),
                "config file is empty; keeping the current config until it has content"
            );
            return ReloadOutcome::Empty;
        }
        state.last_hash = Some(digest);
        match self.build_snapshot(&path, &text, &current) {
            Ok((snapshot, pending)) => self.apply(&mut state, snapshot, pending),
            Err(error) => self.reject(&mut state, &path, error.problems),
        }
    }

    fn build_snapshot(
        &self,
        path: &Path,
        text: &str,
        current: &Snapshot,
    ) -> Result<(Snapshot, Vec<PendingRestart>), LoadError> {
        let mut config = build(Some(path), Some(text), &self.inner.env)?;
        let pending = keep_restart_only_settings(&mut config, &self.inner.started_with);
        let mut problems = Vec::new();
        let host = &config.host;
        if !validate::has_keys(&config) {
            if !validate::is_loopback(host) {
                problems.push(Problem::new(
                    "api_keys",
                    format!("the daemon listens on {host}, so at least one key is required"),
                ));
            } else if self.inner.generated_key.is_none() {
                problems.push(Problem::new(
                    "api_keys",
                    "this edit removes every API key, which would reject all clients; keep at \
                     least one key, or restart the daemon to get a generated key",
                ));
            }
        }
        if !problems.is_empty() {
            for problem in &mut problems {
                problem.origin = Some(path.display().to_string());
            }
            return Err(LoadError { problems });
        }
        let snapshot = Snapshot {
            keys: KeyTable::build(&config, self.inner.generated_key.as_ref()),
            config,
            generation: current.generation + 1,
            file: Some(path.to_path_buf()),
            loaded_at: SystemTime::now(),
        };
        Ok((snapshot, pending))
    }

    fn apply(
        &self,
        state: &mut ReloadState,
        snapshot: Snapshot,
        pending: Vec<PendingRestart>,
    ) -> ReloadOutcome {
        let generation = snapshot.generation;
        for setting in &pending {
            tracing::warn!(
                key = %setting.key,
                running = %setting.running,
                configured = %setting.configured,
                "config setting changed but needs a restart to apply"
            );
        }
        let snapshot = Arc::new(snapshot);
        self.inner.current.store(snapshot.clone());
        self.inner.published.send_replace(snapshot.clone());
        state.status.last_error = None;
        state.status.last_error_at = None;
        state.status.restart_required = pending;
        state.status.applied += 1;
        tracing::info!(
            generation,
            path = %snapshot.file.as_deref().map(Path::display).map(|p| p.to_string()).unwrap_or_default(),
            keys = snapshot.keys.len(),
            "config reloaded"
        );
        ReloadOutcome::Applied { generation }
    }

    fn reject(
        &self,
        state: &mut ReloadState,
        path: &Path,
        problems: Vec<Problem>,
    ) -> ReloadOutcome {
        for problem in &problems {
            tracing::error!(
                path = %path.display(),
                key = %problem.key,
                error = %problem.message,
                "config reload rejected; the previous config stays in use"
            );
        }
        state.status.last_error = Some(problems.iter().map(ToString::to_string).collect());
        state.status.last_error_at = Some(SystemTime::now());
        state.status.rejected += 1;
        ReloadOutcome::Rejected(problems)
    }

    fn lock_state(&self) -> MutexGuard<'_, ReloadState> {
        // A panic while holding the lock leaves plain data behind, which stays usable.
        self.inner
            .reload
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Resets settings that cannot change while running to their start-up values and returns
/// the ones the file changed.
fn keep_restart_only_settings(config: &mut Config, running: &Config) -> Vec<PendingRestart> {
    let mut pending = Vec::new();
    let mut check = |key: &str, configured: String, started: String| {
        if configured != started {
            pending.push(PendingRestart {
                key: key.to_owned(),
                running: started,
                configured,
            });
        }
    };
    check("host", config.host.clone(), running.host.clone());
    check("port", config.port.to_string(), running.port.to_string());
    check(
        "store.url",
        config.store.url.redacted(),
        running.store.url.redacted(),
    );
    check(
        "log.format",
        format!("{:?}", config.log.format).to_lowercase(),
        format!("{:?}", running.log.format).to_lowercase(),
    );
    check(
        "cors.allowed_origins",
        config.cors.allowed_origins.join(","),
        running.cors.allowed_origins.join(","),
    );
    let tls_paths = |config: &Config| {
        let show = |path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map_or_else(|| "none".to_owned(), |path| path.display().to_string())
        };
        format!(
            "{}, {}",
            show(&config.tls.cert_file),
            show(&config.tls.key_file)
        )
    };
    check("tls", tls_paths(config), tls_paths(running));
    // A password-only change of the store URL is invisible after redaction but still
    // needs a restart, so compare the full URL too.
    if config.store.url != running.store.url && !pending.iter().any(|p| p.key == "store.url") {
        pending.push(PendingRestart {
            key: "store.url".to_owned(),
            running: running.store.url.redacted(),
            configured: config.store.url.redacted(),
        });
    }
    config.host.clone_from(&running.host);
    config.port = running.port;
    config.store.url = running.store.url.clone();
    config.log.format = running.log.format;
    config.tls.clone_from(&running.tls);
    config
        .cors
        .allowed_origins
        .clone_from(&running.cors.allowed_origins);
    pending
}

fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}
