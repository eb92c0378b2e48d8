//! A goose-api process set up for agent turns: its config points the provider at the
//! instant provider, its extensions directory holds the demo plugin, and its session store
//! is a SQLite file in its working directory or a PostgreSQL schema.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::client::ApiClient;
use crate::process::{self, ChildProcess};
use crate::provider::{ANSWER, MODEL, WireFormat};

/// API key in the daemon's config.
pub const API_KEY: &str = "bench-key-0123456789abcdef";
/// Name of the demo plugin's extension, from its file name `demo.so`.
const PLUGIN_EXTENSION: &str = "demo";
/// File name of the demo plugin that `cargo build --release --workspace` writes beside the
/// daemon.
const PLUGIN_FILE: &str = "libgoose_plugin_demo.so";
/// Maximum wait for the plugin extension to reach the state `running`.
const EXTENSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between checks of the extension's state.
const EXTENSION_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A turn without a response by then counts as failed.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of the requests that set up and check a run.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Paths of the binaries that a run starts or loads.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// goose-api binary.
    pub daemon: PathBuf,
    /// The demo plugin library.
    pub plugin: PathBuf,
}

impl Binaries {
    /// Uses `daemon`, or `goose-api` beside this binary, and `plugin`, or the demo plugin
    /// beside the daemon. Fails if either file is missing.
    pub fn locate(daemon: Option<PathBuf>, plugin: Option<PathBuf>) -> anyhow::Result<Self> {
        let daemon = match daemon {
            Some(path) => path,
            None => std::env::current_exe()
                .context("while locating this binary")?
                .with_file_name("goose-api"),
        };
        process::check_daemon_binary(&daemon)?;
        let plugin = plugin.unwrap_or_else(|| daemon.with_file_name(PLUGIN_FILE));
        if !plugin.is_file() {
            bail!(
                "the demo plugin was not found at {}; build it with \
                 `cargo build --release --workspace` or pass --plugin PATH",
                plugin.display()
            );
        }
        Ok(Self { daemon, plugin })
    }
}

/// Settings that differ between the daemon processes of a run.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Wire format of the instant provider that the daemon calls.
    pub format: WireFormat,
    /// Base URL of the instant provider for that format.
    pub provider_base_url: String,
    /// `store.url`: a SQLite URL relative to the working directory, or a PostgreSQL URL.
    pub store_url: String,
}

/// A working directory with the daemon's config and extensions directory. Deleted on drop.
#[derive(Debug)]
pub struct AgentWorkdir {
    dir: TempDir,
    config_path: PathBuf,
}

impl AgentWorkdir {
    /// Creates the directory, copies the plugin into `extensions/demo.so` with mode 0644
    /// and writes `config.yaml`.
    pub fn create(plugin: &Path, config: &AgentConfig) -> anyhow::Result<Self> {
        // tempfile creates the directory with mode 0700, and the daemon rejects plugins in
        // directories that group or others can write.
        let dir = tempfile::Builder::new()
            .prefix("goose-api-bench-")
            .tempdir()
            .context("cannot create a temporary directory for the daemon")?;
        let extensions = dir.path().join("extensions");
        std::fs::create_dir(&extensions)
            .with_context(|| format!("cannot create {}", extensions.display()))?;
        std::fs::set_permissions(&extensions, Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", extensions.display()))?;
        let installed = extensions.join(format!("{PLUGIN_EXTENSION}.so"));
        std::fs::copy(plugin, &installed).with_context(|| {
            format!(
                "cannot copy {} to {}",
                plugin.display(),
                installed.display()
            )
        })?;
        std::fs::set_permissions(&installed, Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set the mode of {}", installed.display()))?;
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config_text(config, &extensions))
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        Ok(Self { dir, config_path })
    }

    /// The directory, which is the daemon's working directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the daemon in this directory with this config.
    pub fn start(&self, daemon: &Path) -> anyhow::Result<ChildProcess> {
        process::start_daemon(daemon, &self.config_path, self.dir.path())
    }
}

/// Renders the config. Strings are written as JSON strings, which YAML reads unchanged.
fn config_text(config: &AgentConfig, extensions: &Path) -> String {
    let quote = |text: &str| Value::from(text).to_string();
    format!(
        "port: 0\n\
         api_key: {API_KEY}\n\
         provider: bench\n\
         model: {MODEL}\n\
         providers:\n\
        \x20 bench:\n\
        \x20   kind: {kind}\n\
        \x20   base_url: {base_url}\n\
        \x20   api_key: bench-provider-key\n\
        \x20   max_retries: 0\n\
         extensions_dir: {extensions}\n\
         store:\n\
        \x20 url: {store_url}\n\
         log:\n\
        \x20 level: info\n\
        \x20 format: json\n",
        kind = config.format.kind(),
        base_url = quote(&config.provider_base_url),
        extensions = quote(&extensions.to_string_lossy()),
        store_url = quote(&config.store_url),
    )
}

/// Waits until the demo plugin's extension is `running`, so that its tool is offered to the
/// model from the first turn on.
pub async fn wait_for_plugin(client: &mut ApiClient) -> anyhow::Result<()> {
    let path = format!("/extensions/{PLUGIN_EXTENSION}");
    let deadline = Instant::now() + EXTENSION_TIMEOUT;
    loop {
        let (status, body) = tokio::time::timeout(CHECK_TIMEOUT, client.get(&path))
            .await
            .with_context(|| format!("GET {path} got no response within {CHECK_TIMEOUT:?}"))??;
        let state = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|value| {
                value
                    .get("state")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        if status == StatusCode::OK && state.as_deref() == Some("running") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the extension {PLUGIN_EXTENSION} was not running after {EXTENSION_TIMEOUT:?}; \
                 GET {path} returned {status} with {}",
                String::from_utf8_lossy(&body)
            );
        }
        tokio::time::sleep(EXTENSION_POLL_INTERVAL).await;
    }
}

/// Runs one turn with `POST /session/start`. Returns a description of the failure when the
/// response is not 200 with status `success`, the expected answer and a session id.
pub async fn start_session(client: &mut ApiClient, prompt: &str) -> Result<(), String> {
    let body = json!({ "prompt": prompt });
    let (status, body) =
        tokio::time::timeout(TURN_TIMEOUT, client.post_json("/session/start", &body))
            .await
            .map_err(|_| format!("no response within {TURN_TIMEOUT:?}"))?
            .map_err(|error| format!("{error:#}"))?;
    let text = String::from_utf8_lossy(&body);
    if status != StatusCode::OK {
        return Err(format!("status {status}, body {text}"));
    }
    let reply: Value =
        serde_json::from_slice(&body).map_err(|_| format!("status 200, body not JSON: {text}"))?;
    let expected = reply.get("status").and_then(Value::as_str) == Some("success")
        && reply.get("message").and_then(Value::as_str) == Some(ANSWER)
        && reply.get("session_id").and_then(Value::as_str).is_some();
    if !expected {
        return Err(format!("status 200, unexpected body {text}"));
    }
    Ok(())
}

/// Reads `active_sessions` from `GET /metrics`.
pub async fn active_sessions(client: &mut ApiClient) -> anyhow::Result<u64> {
    let metrics = client.get_json_ok("/metrics", CHECK_TIMEOUT).await?;
    metrics
        .get("active_sessions")
        .and_then(Value::as_u64)
        .with_context(|| format!("GET /metrics has no active_sessions number: {metrics}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_urls() {
        let config = AgentConfig {
            format: WireFormat::Anthropic,
            provider_base_url: "http://127.0.0.1:9/v1/".to_owned(),
            store_url: "postgres://u@127.0.0.1:5432/test?options=-c%20search_path%3Ds".to_owned(),
        };
        let text = config_text(&config, Path::new("/tmp/x/extensions"));
        assert!(text.contains("    kind: anthropic\n"), "{text}");
        assert!(
            text.contains("    base_url: \"http://127.0.0.1:9/v1/\"\n"),
            "{text}"
        );
        assert!(text.contains("search_path%3Ds\"\n"), "{text}");
    }
}
