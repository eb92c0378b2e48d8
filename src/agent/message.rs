//! The conversation model: messages with roles and content parts, stored and returned by the
//! API in this JSON shape.

use serde::{Deserialize, Serialize};

use crate::tools::{ToolContent, ToolOutput};

/// Author of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The client's prompt, or a summary standing in for earlier messages.
    User,
    /// The model's answer, possibly with tool requests.
    Assistant,
    /// Results of the tool requests of the preceding assistant message.
    Tool,
}

/// One part of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call the model requested.
    ToolRequest {
        /// Call id, matched by the result.
        id: String,
        /// Qualified tool name, `extension__tool`.
        name: String,
        /// Arguments object.
        arguments: serde_json::Value,
    },
    /// The result of a tool call.
    ToolResult {
        /// Id of the request this answers.
        id: String,
        /// Result parts.
        content: Vec<ToolContent>,
        /// Whether the call failed.
        #[serde(default)]
        is_error: bool,
    },
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Parts, in order.
    pub content: Vec<ContentPart>,
}

impl Message {
    /// Creates a user message with one text part.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![ContentPart::Text { text: text.into() }],
        }
    }

    /// Creates an assistant message with one text part.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: vec![ContentPart::Text { text: text.into() }],
        }
    }

    /// Returns the text parts joined, without tool parts.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|part| match part {
                ContentPart::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        texts.join("")
    }

    /// Returns the tool requests as (id, name, arguments).
    pub fn tool_requests(&self) -> Vec<(&str, &str, &serde_json::Value)> {
        self.content
            .iter()
            .filter_map(|part| match part {
                ContentPart::ToolRequest {
                    id,
                    name,
                    arguments,
                } => Some((id.as_str(), name.as_str(), arguments)),
                _ => None,
            })
            .collect()
    }

    /// Returns the ids of the tool results in this message.
    pub fn tool_result_ids(&self) -> Vec<&str> {
        self.content
            .iter()
            .filter_map(|part| match part {
                ContentPart::ToolResult { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl ContentPart {
    /// Creates a tool result part from a tool's output.
    pub fn tool_result(id: impl Into<String>, output: ToolOutput) -> Self {
        Self::ToolResult {
            id: id.into(),
            content: output.content,
            is_error: output.is_error,
        }
    }

    /// Creates a failed tool result with one text part.
    pub fn tool_error(id: impl Into<String>, message: impl Into<String>) -> Self {
        Self::ToolResult {
            id: id.into(),
            content: vec![ToolContent::Text {
                text: message.into(),
            }],
            is_error: true,
        }
    }
}

/// Renders tool result parts as the text sent to providers that accept only text.
pub fn tool_content_text(content: &[ToolContent]) -> String {
    let rendered: Vec<String> = content
        .iter()
        .map(|part| match part {
            ToolContent::Text { text } => text.clone(),
            ToolContent::Image { mime_type, data } => {
                format!("[image {mime_type}, {} base64 characters]", data.len())
            }
            ToolContent::Resource { uri, text, .. } => match text {
                Some(text) => format!("[resource {uri}]\n{text}"),
                None => format!("[resource {uri}]"),
            },
        })
        .collect();
    rendered.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn message_json_shape_is_stable() {
        let message = Message {
            role: Role::Assistant,
            content: vec![
                ContentPart::Text {
                    text: "Let me look.".to_owned(),
                },
                ContentPart::ToolRequest {
                    id: "call_1".to_owned(),
                    name: "files__read".to_owned(),
                    arguments: json!({"path": "a.txt"}),
                },
            ],
        };
        let value = serde_json::to_value(&message).unwrap();
        assert_eq!(
            value,
            json!({"role": "assistant", "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_request", "id": "call_1", "name": "files__read",
                 "arguments": {"path": "a.txt"}}
            ]})
        );
        let back: Message = serde_json::from_value(value).unwrap();
        assert_eq!(back, message);
    }

    #[test]
    fn tool_result_round_trips_with_error_flag() {
        let part = ContentPart::tool_error("call_1", "timed out");
        let value = serde_json::to_value(&part).unwrap();
        assert_eq!(value["type"], "tool_result");
        assert_eq!(value["is_error"], true);
        assert_eq!(
            value["content"][0],
            json!({"type": "text", "text": "timed out"})
        );
    }
}
