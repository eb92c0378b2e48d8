//! Conversions between rmcp's MCP types and the daemon's tool types.

use rmcp::ServiceError;
use rmcp::model::{CallToolResult, Tool};
use serde_json::Value;

use crate::tools::{ToolContent, ToolDefinition, ToolError, ToolOutput};

/// Converts a tool listed by `extension`'s server.
pub fn tool_definition(extension: &str, tool: &Tool) -> ToolDefinition {
    ToolDefinition {
        extension: extension.to_owned(),
        tool: tool.name.to_string(),
        description: tool.description.as_deref().unwrap_or_default().to_owned(),
        input_schema: Value::Object(tool.input_schema.as_ref().clone()),
    }
}

/// Converts a tool result. Content is read from its JSON form, which is stable across
/// rmcp versions. Audio has no [`ToolContent`] kind and becomes a text note; structured
/// content without other content becomes its JSON text.
pub fn tool_output(result: &CallToolResult) -> ToolOutput {
    let is_error = result.is_error.unwrap_or(false);
    let mut content: Vec<ToolContent> = match serde_json::to_value(&result.content) {
        Ok(Value::Array(items)) => items.iter().map(content_part).collect(),
        _ => Vec::new(),
    };
    if content.is_empty()
        && let Some(structured) = &result.structured_content
    {
        content.push(ToolContent::Text {
            text: structured.to_string(),
        });
    }
    ToolOutput { content, is_error }
}

fn content_part(item: &Value) -> ToolContent {
    let text = |key: &str| item.get(key).and_then(Value::as_str).map(str::to_owned);
    match item.get("type").and_then(Value::as_str) {
        Some("text") => ToolContent::Text {
            text: text("text").unwrap_or_default(),
        },
        Some("image") => ToolContent::Image {
            data: text("data").unwrap_or_default(),
            mime_type: text("mimeType").unwrap_or_default(),
        },
        Some("resource") => {
            let resource = item.get("resource").cloned().unwrap_or(Value::Null);
            let field = |key: &str| resource.get(key).and_then(Value::as_str).map(str::to_owned);
            ToolContent::Resource {
                uri: field("uri").unwrap_or_default(),
                mime_type: field("mimeType"),
                text: field("text"),
            }
        }
        Some("resource_link") => ToolContent::Resource {
            uri: text("uri").unwrap_or_default(),
            mime_type: text("mimeType"),
            text: None,
        },
        Some("audio") => ToolContent::Text {
            text: format!(
                "[audio content of type {} omitted]",
                text("mimeType").unwrap_or_else(|| "unknown".to_owned())
            ),
        },
        _ => ToolContent::Text {
            text: item.to_string(),
        },
    }
}

/// Converts a failed request; the caller names the extension for a closed transport.
pub fn service_error(error: ServiceError) -> ToolError {
    match error {
        ServiceError::McpError(data) => {
            let message = data.message.to_string();
            if data.code == rmcp::model::ErrorCode::INVALID_PARAMS {
                ToolError::InvalidArguments(message)
            } else {
                ToolError::Failed(format!(
                    "the server returned error {}: {message}",
                    data.code.0
                ))
            }
        }
        ServiceError::TransportClosed => ToolError::Failed(
            "the connection to the server closed during the call; the server stopped, \
             crashed or was restarted"
                .to_owned(),
        ),
        ServiceError::Timeout { timeout } => ToolError::TimedOut {
            secs: timeout.as_secs(),
        },
        other => ToolError::Failed(other.to_string()),
    }
}

/// Names a JSON value's type for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
