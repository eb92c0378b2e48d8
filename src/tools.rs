//! The interface between the agent loop and whatever provides tools: MCP servers and
//! native plugins behind the extension registry, or a test double in unit tests.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Separator between extension and tool in the names the model sees, as in `files__read`.
/// Extension names may not contain it, so the first occurrence splits a name.
pub const NAMESPACE_SEPARATOR: &str = "__";

/// One tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Extension that provides the tool.
    pub extension: String,
    /// Tool name within its extension.
    pub tool: String,
    /// Description shown to the model.
    pub description: String,
    /// JSON Schema of the arguments object.
    pub input_schema: serde_json::Value,
}

impl ToolDefinition {
    /// Returns the name the model sees: `extension__tool`.
    pub fn qualified_name(&self) -> String {
        format!("{}{NAMESPACE_SEPARATOR}{}", self.extension, self.tool)
    }
}

/// Splits `extension__tool` into its extension and tool names.
pub fn split_qualified_name(name: &str) -> Option<(&str, &str)> {
    name.split_once(NAMESPACE_SEPARATOR)
        .filter(|(extension, tool)| !extension.is_empty() && !tool.is_empty())
}

/// One part of a tool's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolContent {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, base64 encoded.
    Image {
        /// Base64 image bytes.
        data: String,
        /// MIME type such as `image/png`.
        mime_type: String,
    },
    /// A resource the tool refers to or embeds.
    Resource {
        /// Resource URI.
        uri: String,
        /// MIME type, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime_type: Option<String>,
        /// Embedded text, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

/// A tool's result. `is_error` marks a failure the tool itself reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// Result parts, in order.
    pub content: Vec<ToolContent>,
    /// Whether the tool reported an error.
    #[serde(default)]
    pub is_error: bool,
}

impl ToolOutput {
    /// Creates a successful result with one text part.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            content: vec![ToolContent::Text { text: text.into() }],
            is_error: false,
        }
    }
}

/// Reason a tool call produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// No running extension offers this tool.
    #[error("tool {tool} of extension {extension} not found")]
    NotFound {
        /// Extension name.
        extension: String,
        /// Tool name.
        tool: String,
    },
    /// The extension is not running, or stopped during the call.
    #[error("extension {extension} is unavailable: {reason}")]
    Unavailable {
        /// Extension name.
        extension: String,
        /// Description of what happened to it.
        reason: String,
    },
    /// The call took longer than the extension's `timeout`.
    #[error("tool call timed out after {secs} s")]
    TimedOut {
        /// The timeout in seconds.
        secs: u64,
    },
    /// The caller cancelled the call.
    #[error("tool call cancelled")]
    Cancelled,
    /// The arguments were rejected before the call.
    #[error("invalid tool arguments: {0}")]
    InvalidArguments(String),
    /// The call failed in the transport or the server.
    #[error("tool call failed: {0}")]
    Failed(String),
}

/// Future returned by [`ToolSource::call`].
pub type ToolCallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ToolOutput, ToolError>> + Send + 'a>>;

/// Something that lists and calls tools. The agent loop asks for the list before each
/// provider call, so tools added or removed while a session runs apply to its next step.
pub trait ToolSource: Send + Sync {
    /// Returns the tools available now.
    fn tools(&self) -> Vec<ToolDefinition>;

    /// Calls `tool` of `extension` with a JSON object of arguments. Cancelling `cancel`
    /// stops the call and returns [`ToolError::Cancelled`].
    fn call<'a>(
        &'a self,
        extension: &'a str,
        tool: &'a str,
        arguments: serde_json::Value,
        cancel: CancellationToken,
    ) -> ToolCallFuture<'a>;
}

/// Wraps a tool source and counts the calls in flight per extension.
pub struct CountingTools {
    inner: std::sync::Arc<dyn ToolSource>,
    pending: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for CountingTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountingTools").finish_non_exhaustive()
    }
}

impl CountingTools {
    /// Wraps `inner`, recording each call's outcome in `metrics`.
    pub fn new(
        inner: std::sync::Arc<dyn ToolSource>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            inner,
            pending: std::sync::Mutex::default(),
            metrics,
        }
    }

    /// Returns the number of calls in flight per extension.
    pub fn pending(&self) -> std::collections::HashMap<String, u64> {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn adjust(&self, extension: &str, up: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let count = pending.entry(extension.to_owned()).or_default();
        *count = if up {
            *count + 1
        } else {
            count.saturating_sub(1)
        };
    }
}

/// Decrements the in-flight count when a call ends, also when it is dropped on cancel.
struct PendingCall<'a> {
    tools: &'a CountingTools,
    extension: &'a str,
}

impl Drop for PendingCall<'_> {
    fn drop(&mut self) {
        self.tools.adjust(self.extension, false);
    }
}

impl ToolSource for CountingTools {
    fn tools(&self) -> Vec<ToolDefinition> {
        self.inner.tools()
    }

    fn call<'a>(
        &'a self,
        extension: &'a str,
        tool: &'a str,
        arguments: serde_json::Value,
        cancel: CancellationToken,
    ) -> ToolCallFuture<'a> {
        Box::pin(async move {
            self.adjust(extension, true);
            let _pending = PendingCall {
                tools: self,
                extension,
            };
            let result = self.inner.call(extension, tool, arguments, cancel).await;
            let outcome = match &result {
                Ok(output) if output.is_error => "tool_error",
                Ok(_) => "ok",
                Err(ToolError::TimedOut { .. }) => "timeout",
                Err(ToolError::Cancelled) => "cancelled",
                Err(_) => "failed",
            };
            self.metrics
                .tool_calls
                .with_label_values(&[extension, outcome])
                .inc();
            result
        })
    }
}

/// A tool source with no tools, for a daemon without extensions.
#[derive(Debug, Default)]
pub struct NoTools;

impl ToolSource for NoTools {
    fn tools(&self) -> Vec<ToolDefinition> {
        Vec::new()
    }

    fn call<'a>(
        &'a self,
        extension: &'a str,
        tool: &'a str,
        _arguments: serde_json::Value,
        _cancel: CancellationToken,
    ) -> ToolCallFuture<'a> {
        Box::pin(async move {
            Err(ToolError::NotFound {
                extension: extension.to_owned(),
                tool: tool.to_owned(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_name_round_trips() {
        let definition = ToolDefinition {
            extension: "files".to_owned(),
            tool: "read_file".to_owned(),
            description: String::new(),
            input_schema: serde_json::json!({"type": "object"}),
        };
        let name = definition.qualified_name();
        assert_eq!(name, "files__read_file");
        assert_eq!(split_qualified_name(&name), Some(("files", "read_file")));
        assert_eq!(split_qualified_name("files__a__b"), Some(("files", "a__b")));
        assert_eq!(split_qualified_name("nosplit"), None);
        assert_eq!(split_qualified_name("__tool"), None);
    }
}
