//! Typed configuration: every key goose-api reads, with its built-in default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_with::serde_as;

use super::lenient::Lenient;
use super::secret::{DatabaseUrl, Secret};

/// Loopback, so a daemon started without a config file is not reachable from the network.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// The port the original goose-api README documents.
pub const DEFAULT_PORT: u16 = 8080;
/// Large enough for long prompts with pasted files, small enough to bound memory per request.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 2 * 1024 * 1024;
/// A non-streaming turn can run many provider and tool calls, so the default is generous.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 300;
/// Seconds a client gets to send a request's headers, as in hyper's own default, so a
/// connection that stops part-way through them is closed instead of held.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Below the 30 s that Kubernetes and systemd wait between SIGTERM and SIGKILL by default.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 25;
/// Matches the provider the original goose-api README uses in its examples.
pub const DEFAULT_PROVIDER: &str = "openai";
/// Matches the model the original goose-api README uses in its examples.
pub const DEFAULT_MODEL: &str = "gpt-4o";
/// Relative to the working directory, like the extensions directory.
pub const DEFAULT_STORE_URL: &str = "sqlite://data/goose-api.db";

/// The whole daemon configuration, after defaults, file and environment are merged.
///
/// Numbers and booleans also accept strings, because environment variables are strings.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address to listen on. Changing it needs a restart.
    pub host: String,
    /// Port to listen on; 0 picks a free port. Changing it needs a restart.
    #[serde_as(as = "Lenient")]
    pub port: u16,
    /// One admin key, the form the original goose-api README uses.
    pub api_key: Option<Secret>,
    /// Named keys with roles.
    pub api_keys: Vec<ApiKeyConfig>,
    /// Name of the provider that answers turns: a key of `providers` or a built-in kind.
    pub provider: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Behaviour of the agent loop.
    pub agent: AgentConfig,
    /// Per-provider connection settings.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Directory scanned for extension manifests and plugins.
    pub extensions_dir: PathBuf,
    /// Extensions declared in the config file.
    pub extensions: BTreeMap<String, ExtensionConfig>,
    /// Whether admin keys may add and remove extensions through the HTTP API.
    #[serde_as(as = "Lenient")]
    pub extensions_allow_api_changes: bool,
    /// Session store.
    pub store: StoreConfig,
    /// Live sessions and streaming.
    pub sessions: SessionsConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// TLS on the listener; plain HTTP unless both files are set.
    pub tls: TlsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Cross-origin requests; off unless origins are listed.
    pub cors: CorsConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: DEFAULT_HOST.to_owned(),
            port: DEFAULT_PORT,
            api_key: None,
            api_keys: Vec::new(),
            provider: DEFAULT_PROVIDER.to_owned(),
            model: DEFAULT_MODEL.to_owned(),
            agent: AgentConfig::default(),
            providers: BTreeMap::new(),
            extensions_dir: PathBuf::from("extensions"),
            extensions: BTreeMap::new(),
            extensions_allow_api_changes: false,
            store: StoreConfig::default(),
            sessions: SessionsConfig::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            log: LogConfig::default(),
            cors: CorsConfig::default(),
            shutdown: ShutdownConfig::default(),
        }
    }
}

/// One entry of `api_keys`. Exactly one of `key` and `key_sha256` is set.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyConfig {
    /// Name that owns sessions and appears in logs and metrics instead of the key.
    pub name: String,
    /// The key itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// Hex SHA-256 of the key, so the file need not contain the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<Secret>,
    /// Permissions of the key.
    #[serde(default)]
    pub role: Role,
    /// Requests per minute for this key, instead of `limits.requests_per_minute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde_as(as = "Option<Lenient>")]
    pub requests_per_minute: Option<u32>,
    /// Requests this key may send at once after a quiet period, instead of `limits.burst`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde_as(as = "Option<Lenient>")]
    pub burst: Option<u32>,
    /// Turns this key may run at once, instead of `limits.max_concurrent_turns_per_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde_as(as = "Option<Lenient>")]
    pub max_concurrent_turns: Option<u32>,
}

/// Permission level of an API key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May use sessions and read extensions.
    #[default]
    User,
    /// May also change extensions and read daemon status.
    Admin,
}

/// Wire protocol spoken by a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions, also spoken by Ollama's `/v1`, llama.cpp, vLLM and others.
    Openai,
    /// Anthropic Messages API.
    Anthropic,
    /// Ollama's native `/api/chat`.
    Ollama,
    /// Google Gemini.
    Google,
}

impl ProviderKind {
    /// Returns the kind whose name is `name`, for providers configured without `kind`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "openai" => Some(Self::Openai),
            "anthropic" => Some(Self::Anthropic),
            "ollama" => Some(Self::Ollama),
            "google" | "gemini" => Some(Self::Google),
            _ => None,
        }
    }
}

/// Settings of one provider under `providers.<name>`.
#[serde_as]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    /// Wire protocol; defaults to the provider's name when that names a kind.
    pub kind: Option<ProviderKind>,
    /// Base URL of the API, for self-hosted and compatible servers.
    pub base_url: Option<String>,
    /// Credential sent to the provider.
    pub api_key: Option<Secret>,
    /// Extra HTTP headers sent with every provider request.
    pub headers: BTreeMap<String, Secret>,
    /// Seconds to wait for the TCP and TLS connection.
    #[serde_as(as = "Option<Lenient>")]
    pub connect_timeout_secs: Option<u64>,
    /// Seconds a response stream may stay silent before the call fails.
    #[serde_as(as = "Option<Lenient>")]
    pub read_timeout_secs: Option<u64>,
    /// Sampling temperature.
    #[serde_as(as = "Option<Lenient>")]
    pub temperature: Option<f64>,
    /// Maximum tokens the model may generate per call.
    #[serde_as(as = "Option<Lenient>")]
    pub max_tokens: Option<u32>,
    /// Context window of the model, in tokens.
    #[serde_as(as = "Option<Lenient>")]
    pub context_limit: Option<u32>,
    /// Retries after a 429, a 5xx or a connection error.
    #[serde_as(as = "Option<Lenient>")]
    pub max_retries: Option<u32>,
    /// Whether to stream responses; on by default.
    #[serde_as(as = "Option<Lenient>")]
    pub stream: Option<bool>,
}

/// Transport of an extension, tagged `type` as in the original `POST /extensions/add` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionKind {
    /// MCP server run as a child process speaking over stdin and stdout.
    Stdio,
    /// MCP server over streamable HTTP.
    StreamableHttp,
    /// MCP server over the older HTTP and server-sent events transport.
    Sse,
    /// Plugin shipped with goose-api, loaded by name.
    Builtin,
    /// Native plugin loaded from a shared library path.
    Plugin,
}

/// One extension definition, from `extensions.<name>` or a manifest file.
///
/// Which fields apply depends on `type`; validation rejects the others.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtensionConfig {
    /// Transport.
    #[serde(rename = "type")]
    pub kind: ExtensionKind,
    /// Disabled extensions are listed but not started.
    #[serde(default = "enabled_default")]
    #[serde_as(as = "Lenient")]
    pub enabled: bool,
    /// When set, only these tools are offered to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_tools: Option<Vec<String>>,
    /// Seconds each tool call may take.
    #[serde(default = "extension_timeout_default")]
    #[serde_as(as = "Lenient")]
    pub timeout: u64,
    /// `stdio`: program to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// `stdio`: program arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// `stdio`: environment variables set for the child.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, Secret>,
    /// `stdio`: names of variables copied from the daemon's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_keys: Vec<String>,
    /// `stdio`: working directory of the child.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// `streamable_http` and `sse`: server URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `streamable_http` and `sse`: extra HTTP headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// `builtin`: name of the shipped plugin; defaults to the extension's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `plugin`: path of the shared library.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

fn enabled_default() -> bool {
    true
}

/// Five minutes, the per-call limit goose uses for MCP tools.
pub const DEFAULT_EXTENSION_TIMEOUT_SECS: u64 = 300;

fn extension_timeout_default() -> u64 {
    DEFAULT_EXTENSION_TIMEOUT_SECS
}

/// Settings under `store`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`. Changing it needs a restart.
    pub url: DatabaseUrl,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::new(DEFAULT_STORE_URL),
        }
    }
}

/// Settings under `limits`.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes.
    #[serde_as(as = "Lenient")]
    pub max_body_bytes: u64,
    /// Seconds a non-streaming request may take before it fails with 503.
    #[serde_as(as = "Lenient")]
    pub request_timeout_secs: u64,
    /// Seconds a connection may take to send a request's headers, counted from when it opens
    /// or from its previous response, before it is closed. 0 turns the limit off.
    #[serde_as(as = "Lenient")]
    pub header_read_timeout_secs: u64,
    /// Requests per minute of each key; no rate limit when unset.
    #[serde_as(as = "Option<Lenient>")]
    pub requests_per_minute: Option<u32>,
    /// Requests a key may send at once after a quiet period; `requests_per_minute` when
    /// unset.
    #[serde_as(as = "Option<Lenient>")]
    pub burst: Option<u32>,
    /// Turns each key may run at once; no limit when unset.
    #[serde_as(as = "Option<Lenient>")]
    pub max_concurrent_turns_per_key: Option<u32>,
    /// Turns the daemon runs at once over all keys; no limit when unset.
    #[serde_as(as = "Option<Lenient>")]
    pub max_concurrent_turns: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout_secs: DEFAULT_REQUEST_TIMEOUT_SECS,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            requests_per_minute: None,
            burst: None,
            max_concurrent_turns_per_key: None,
            max_concurrent_turns: None,
        }
    }
}

/// The limits that apply to one key: its own `api_keys` settings, else those of `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per minute; no rate limit when `None`.
    pub requests_per_minute: Option<u32>,
    /// Requests accepted at once after a quiet period.
    pub burst: Option<u32>,
    /// Turns the key may run at once; no limit when `None`.
    pub max_concurrent_turns: Option<u32>,
}

impl Config {
    /// Returns the limits of the key named `name`. The single `api_key` and the generated
    /// key have no entry in `api_keys`, so they get the `limits` values.
    pub fn key_limits(&self, name: &str) -> KeyLimits {
        let entry = self.api_keys.iter().find(|entry| entry.name == name);
        let requests_per_minute = entry
            .and_then(|entry| entry.requests_per_minute)
            .or(self.limits.requests_per_minute);
        let burst = entry
            .and_then(|entry| entry.burst)
            .or(self.limits.burst)
            .or(requests_per_minute);
        let max_concurrent_turns = entry
            .and_then(|entry| entry.max_concurrent_turns)
            .or(self.limits.max_concurrent_turns_per_key);
        KeyLimits {
            requests_per_minute,
            burst,
            max_concurrent_turns,
        }
    }
}

/// Settings under `tls`. The file paths need a restart to change; new content at the same
/// paths applies to new connections while the daemon runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM file with the server certificate, followed by its intermediate certificates.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of the certificate.
    pub key_file: Option<PathBuf>,
}

/// Settings under `log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter: a level such as `info`, or directives such as `goose_api=debug`.
    pub level: String,
    /// Line format. Changing it needs a restart.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings under `cors`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Origins allowed to call the API from a browser, such as `https://app.example.com`.
    /// Changing them needs a restart.
    pub allowed_origins: Vec<String>,
}

/// Settings under `shutdown`.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT.
    #[serde_as(as = "Lenient")]
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
        }
    }
}

/// A general-purpose assistant prompt; operators replace it for their team's work.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant. Use the tools you are \
    given when they help, and answer concisely.";
/// Enough steps for multi-tool tasks, few enough to stop a model that loops.
pub const DEFAULT_MAX_STEPS: u32 = 25;
/// About 25,000 tokens, so one tool result cannot fill a model's context window.
pub const DEFAULT_MAX_TOOL_OUTPUT_CHARS: usize = 100_000;
/// Summarize before the window is full, leaving room for the answer.
pub const DEFAULT_SUMMARIZE_THRESHOLD: f64 = 0.8;

/// Settings under `agent`.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// System prompt of every session; a session's `instructions` are appended.
    pub system_prompt: String,
    /// `auto`, `none`, `required`, or `{tool: extension__tool}` to force one tool.
    pub tool_choice: crate::agent::ToolChoice,
    /// Most provider calls in one turn; `max_turns` is accepted as another name.
    #[serde(alias = "max_turns")]
    #[serde_as(as = "Lenient")]
    pub max_steps: u32,
    /// Most characters of one tool result passed to the model.
    #[serde_as(as = "Lenient")]
    pub max_tool_output_chars: usize,
    /// Fraction of the provider's `context_limit` at which older messages are summarized.
    #[serde_as(as = "Lenient")]
    pub summarize_threshold: f64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_owned(),
            tool_choice: crate::agent::ToolChoice::Auto,
            max_steps: DEFAULT_MAX_STEPS,
            max_tool_output_chars: DEFAULT_MAX_TOOL_OUTPUT_CHARS,
            summarize_threshold: DEFAULT_SUMMARIZE_THRESHOLD,
        }
    }
}

/// Fifteen minutes: long enough for a person to read an answer and reply.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 900;
/// Below the 30 to 60 s idle timeouts of common proxies and load balancers.
pub const DEFAULT_SSE_HEARTBEAT_SECS: u64 = 15;

/// Settings under `sessions`.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionsConfig {
    /// Seconds after which an idle session's in-memory state is released.
    #[serde_as(as = "Lenient")]
    pub idle_timeout_secs: u64,
    /// Seconds between comment lines on an idle event stream.
    #[serde_as(as = "Lenient")]
    pub sse_heartbeat_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            sse_heartbeat_secs: DEFAULT_SSE_HEARTBEAT_SECS,
        }
    }
}
