//! The shared state of one extension: its definition, lifecycle state, tools and the
//! connection calls go through. The supervisor writes it; calls and status routes read it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use arc_swap::ArcSwap;
use rmcp::RoleClient;
use rmcp::service::Peer;
use serde::Serialize;
use utoipa::ToSchema;

use tokio::sync::Notify;

use super::definition::{Definition, Source};
use super::line_limit::Overflow;
use super::plugin::PluginVersion;
use super::process::GroupRecord;
use super::stderr::StderrTail;
use crate::tools::ToolDefinition;

/// Lifecycle state of an extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The server is starting or the handshake is in progress.
    Starting,
    /// The server completed the handshake and its tools are listed.
    Running,
    /// The server crashed or could not start; it is restarted after a backoff.
    Failed,
    /// The extension is disabled, removed or the daemon is shutting down.
    Stopped,
}

impl State {
    /// Returns the state's name as the status route shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Failed => "failed",
            Self::Stopped => "stopped",
        }
    }
}

/// Values the supervisor changes while an extension runs.
#[derive(Debug)]
struct Runtime {
    state: State,
    restarts: u32,
    last_error: Option<String>,
    tools: Vec<ToolDefinition>,
    peer: Option<Peer<RoleClient>>,
    /// The plugin version new calls go to, for native plugins.
    plugin: Option<Arc<PluginVersion>>,
    /// Earlier plugin versions, alive while calls or hung threads still use them.
    retired: Vec<Weak<PluginVersion>>,
}

/// Where a call to a running extension goes.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// An MCP server's connection.
    Mcp(Peer<RoleClient>),
    /// A loaded plugin version.
    Plugin(Arc<PluginVersion>),
}

/// One extension's shared state.
#[derive(Debug)]
pub struct Slot {
    /// Extension name.
    pub name: String,
    definition: ArcSwap<Definition>,
    runtime: Mutex<Runtime>,
    /// Last lines of a stdio server's stderr.
    pub tail: StderrTail,
    /// Process group of the current stdio server.
    pub server_group: GroupRecord,
    /// Set when the current stdio connection failed on a message over the size limit.
    pub stdout_overflow: Overflow,
    /// Plugin calls that timed out or were cancelled and whose thread still runs.
    pub hung_calls: Arc<AtomicU64>,
    /// Wakes a plugin's supervisor to check its library file for a new version.
    pub refresh: Notify,
}

/// The loaded version of a native plugin, as the status route shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PluginStatus {
    /// Plugin name from its manifest.
    pub name: String,
    /// Plugin version from its manifest.
    pub version: String,
    /// The library file, with symbolic links resolved.
    pub file: String,
    /// Hex SHA-256 of the library file, which names its private copy.
    pub sha256: String,
    /// Versions still loaded: the current one and older ones that calls still use.
    pub loaded_versions: usize,
}

/// Status of one extension, as `GET /extensions/{name}` returns it. Never contains the
/// values of `envs` or `headers`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExtensionStatus {
    /// Extension name.
    pub name: String,
    /// Transport: `stdio`, `streamable_http`, `sse`, `builtin` or `plugin`.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    pub kind: crate::config::ExtensionKind,
    /// Where it is defined.
    pub source: Source,
    /// The manifest file, for extensions from the directory.
    pub file: Option<String>,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Lifecycle state.
    pub state: State,
    /// Names of the tools offered to the agent, after `available_tools`.
    pub tools: Vec<String>,
    /// Restarts after a crash or failed start since the definition was loaded.
    pub restarts: u32,
    /// Seconds each tool call may take.
    pub timeout: u64,
    /// Reason of the last failure, with the stderr tail for stdio servers.
    pub last_error: Option<String>,
    /// Last lines the server wrote to stderr.
    pub stderr_tail: Vec<String>,
    /// The loaded library, for `builtin` and `plugin` extensions that are running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginStatus>,
    /// Plugin calls that timed out or were cancelled and whose thread still runs the
    /// plugin's code, because a thread cannot be stopped from outside.
    pub hung_calls: u64,
}

impl Slot {
    /// Creates the state of an extension that has not started.
    pub fn new(definition: Definition) -> Arc<Self> {
        Arc::new(Self {
            name: definition.name.clone(),
            definition: ArcSwap::from_pointee(definition),
            runtime: Mutex::new(Runtime {
                state: State::Stopped,
                restarts: 0,
                last_error: None,
                tools: Vec::new(),
                peer: None,
                plugin: None,
                retired: Vec::new(),
            }),
            tail: StderrTail::default(),
            server_group: GroupRecord::default(),
            stdout_overflow: Overflow::default(),
            hung_calls: Arc::default(),
            refresh: Notify::new(),
        })
    }

    /// Returns the current definition.
    pub fn definition(&self) -> Arc<Definition> {
        self.definition.load_full()
    }

    /// Replaces the definition; fields read at call time apply to the next call.
    pub fn set_definition(&self, definition: Definition) {
        self.definition.store(Arc::new(definition));
    }

    /// Marks the extension as starting.
    pub fn set_starting(&self) {
        let mut runtime = self.lock();
        runtime.state = State::Starting;
        runtime.peer = None;
        runtime.retire_plugin();
    }

    /// Marks the extension as running with `tools`, called through `peer`.
    pub fn set_running(&self, peer: Peer<RoleClient>, tools: Vec<ToolDefinition>) {
        let tools = checked_tools(&self.name, tools);
        let mut runtime = self.lock();
        runtime.state = State::Running;
        runtime.peer = Some(peer);
        runtime.tools = tools;
    }

    /// Stops routing calls to the connection, which is about to close, and shows `state`
    /// while it closes.
    pub fn detach(&self, state: State) {
        let mut runtime = self.lock();
        runtime.state = state;
        runtime.peer = None;
        runtime.retire_plugin();
        runtime.tools.clear();
    }

    /// Replaces the tool list after the server reported a change.
    pub fn set_tools(&self, tools: Vec<ToolDefinition>) {
        let tools = checked_tools(&self.name, tools);
        self.lock().tools = tools;
    }

    /// Marks the extension as failed with `error`.
    pub fn set_failed(&self, error: String) {
        tracing::error!(extension = %self.name, %error, "extension failed");
        let mut runtime = self.lock();
        runtime.state = State::Failed;
        runtime.last_error = Some(error);
        runtime.peer = None;
        runtime.retire_plugin();
        runtime.tools.clear();
    }

    /// Marks the extension as stopped, keeping its last error.
    pub fn set_stopped(&self) {
        let mut runtime = self.lock();
        runtime.state = State::Stopped;
        runtime.peer = None;
        runtime.retire_plugin();
        runtime.tools.clear();
    }

    /// Counts a restart after a failure.
    pub fn count_restart(&self) {
        self.lock().restarts += 1;
    }

    /// Marks the extension as running `version` and routes new calls to it. A previous
    /// version stays loaded until its calls end.
    pub fn set_plugin(&self, version: Arc<PluginVersion>) {
        let tools = version
            .manifest
            .tools
            .iter()
            .map(|tool| ToolDefinition {
                extension: self.name.clone(),
                tool: tool.name.clone(),
                description: tool.description.clone(),
                input_schema: tool.input_schema.clone(),
            })
            .collect();
        let tools = checked_tools(&self.name, tools);
        let mut runtime = self.lock();
        runtime.retire_plugin();
        runtime.state = State::Running;
        runtime.plugin = Some(version);
        runtime.tools = tools;
    }

    /// Records that a new plugin version was rejected while the previous one keeps serving.
    pub fn set_swap_failed(&self, error: String) {
        tracing::error!(extension = %self.name, %error, "plugin swap failed");
        self.lock().last_error = Some(error);
    }

    /// Returns whether a plugin version is loaded and serving.
    pub fn has_plugin(&self) -> bool {
        self.lock().plugin.is_some()
    }

    /// Returns where to send a call, or the state that prevents calls.
    pub fn endpoint(&self) -> Result<Endpoint, (State, Option<String>)> {
        let runtime = self.lock();
        if let Some(version) = &runtime.plugin {
            return Ok(Endpoint::Plugin(version.clone()));
        }
        runtime
            .peer
            .clone()
            .map(Endpoint::Mcp)
            .ok_or_else(|| (runtime.state, runtime.last_error.clone()))
    }

    /// Returns the tools offered to the agent: the server's tools allowed by
    /// `available_tools`.
    pub fn tools(&self) -> Vec<ToolDefinition> {
        let definition = self.definition();
        self.lock()
            .tools
            .iter()
            .filter(|tool| definition.allows(&tool.tool))
            .cloned()
            .collect()
    }

    /// Returns whether the server lists `tool` and `available_tools` allows it.
    pub fn offers(&self, tool: &str) -> bool {
        self.definition().allows(tool) && self.lock().tools.iter().any(|t| t.tool == tool)
    }

    /// Returns the status for the HTTP API.
    pub fn status(&self) -> ExtensionStatus {
        let definition = self.definition();
        let tools = self.tools().into_iter().map(|tool| tool.tool).collect();
        let runtime = self.lock();
        ExtensionStatus {
            name: self.name.clone(),
            kind: definition.config.kind,
            source: definition.source,
            file: definition
                .file
                .as_ref()
                .map(|path| path.display().to_string()),
            enabled: definition.config.enabled,
            state: runtime.state,
            tools,
            restarts: runtime.restarts,
            timeout: definition.config.timeout,
            last_error: runtime.last_error.clone(),
            stderr_tail: self.tail.lines(),
            plugin: runtime.plugin_status(),
            hung_calls: self.hung_calls.load(Ordering::Acquire),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Runtime> {
        // Runtime holds plain values that stay consistent if a holder panicked.
        self.runtime
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Runtime {
    /// Stops routing calls to the current plugin version; calls in flight keep it loaded.
    fn retire_plugin(&mut self) {
        self.retired.retain(|version| version.strong_count() > 0);
        if let Some(version) = self.plugin.take() {
            self.retired.push(Arc::downgrade(&version));
        }
    }

    fn plugin_status(&self) -> Option<PluginStatus> {
        let version = self.plugin.as_ref()?;
        let retired = self
            .retired
            .iter()
            .filter(|version| version.strong_count() > 0)
            .count();
        Some(PluginStatus {
            name: version.manifest.name.clone(),
            version: version.manifest.version.clone(),
            file: version.file.display().to_string(),
            sha256: version.sha256.clone(),
            loaded_versions: retired + 1,
        })
    }
}

/// Maximum number of tools one extension offers to the agent. Every tool goes to the provider with each
/// request, and OpenAI, for one, accepts at most 128 in all.
pub const MAX_TOOLS_PER_EXTENSION: usize = 256;
/// Maximum length of a tool name offered to the agent, whose characters are ASCII.
const MAX_TOOL_NAME_CHARS: usize = 128;

/// Returns the tools of `extension` that can be offered to a model: names of letters,
/// digits, `_`, `-` and `.` up to [`MAX_TOOL_NAME_CHARS`], each name once, and at most
/// [`MAX_TOOLS_PER_EXTENSION`] of them. Logs what it leaves out.
fn checked_tools(extension: &str, tools: Vec<ToolDefinition>) -> Vec<ToolDefinition> {
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::with_capacity(tools.len().min(MAX_TOOLS_PER_EXTENSION));
    let mut over_limit = 0_usize;
    for tool in tools {
        let name = tool.tool.as_str();
        let valid = !name.is_empty()
            && name.len() <= MAX_TOOL_NAME_CHARS
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            tracing::warn!(
                extension,
                tool = %name.escape_debug(),
                "tool left out: its name must be 1 to 128 letters, digits, `_`, `-` or `.`"
            );
        } else if !seen.insert(tool.tool.clone()) {
            tracing::warn!(
                extension,
                tool = name,
                "tool left out: its name is listed twice"
            );
        } else if kept.len() == MAX_TOOLS_PER_EXTENSION {
            over_limit += 1;
        } else {
            kept.push(tool);
        }
    }
    if over_limit > 0 {
        tracing::warn!(
            extension,
            left_out = over_limit,
            "tools left out: an extension offers at most {MAX_TOOLS_PER_EXTENSION}"
        );
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition {
            extension: "ext".to_owned(),
            tool: name.to_owned(),
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
        }
    }

    fn names(tools: &[ToolDefinition]) -> Vec<&str> {
        tools.iter().map(|tool| tool.tool.as_str()).collect()
    }

    #[test]
    fn odd_and_repeated_tool_names_are_left_out() {
        let long = "x".repeat(MAX_TOOL_NAME_CHARS + 1);
        let listed = [
            "echo",
            "../x y",
            "",
            "echo",
            "get.v2-item_3",
            long.as_str(),
            "a\nb",
        ];
        let kept = checked_tools("ext", listed.iter().map(|name| tool(name)).collect());
        assert_eq!(names(&kept), ["echo", "get.v2-item_3"]);
    }

    #[test]
    fn tools_past_the_limit_are_left_out() {
        let listed = (0..MAX_TOOLS_PER_EXTENSION + 10).map(|i| tool(&format!("t{i}")));
        let kept = checked_tools("ext", listed.collect());
        assert_eq!(kept.len(), MAX_TOOLS_PER_EXTENSION);
        assert_eq!(kept[0].tool, "t0");
    }
}
