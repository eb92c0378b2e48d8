//! The provider interface the agent loop calls, independent of any wire protocol.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::message::Message;
use crate::tools::ToolDefinition;

/// Whether and which tool the model must call: `"auto"`, `"none"`, `"required"` or
/// `{"tool": "extension__tool"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model may not call tools.
    None,
    /// The model must call some tool.
    Required,
    /// The model must call this tool, by qualified name. Small local models produce a valid
    /// call only when told which tool to use.
    Tool(String),
}

/// One call to a provider.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// Model name.
    pub model: String,
    /// System prompt.
    pub system: String,
    /// Conversation so far.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    pub tools: Vec<ToolDefinition>,
    /// Tool choice.
    pub tool_choice: ToolChoice,
}

/// Tokens used by one provider call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

impl Usage {
    /// Adds `other` to this usage.
    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
    }
}

/// Reason the model stopped generating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// It finished its answer or its tool requests.
    Completed,
    /// It reached the output token limit, so the last part may be cut off.
    MaxTokens,
    /// Another reason reported by the provider.
    Other(String),
}

/// A provider's answer.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The assistant message: text and tool requests.
    pub message: Message,
    /// Tokens used.
    pub usage: Usage,
    /// Reason generation stopped.
    pub stop_reason: StopReason,
}

/// A provider call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// 401 or 403 from the provider. The message never includes the credentials.
    #[error(
        "the provider rejected the credentials (HTTP {status}); check providers.<name>.api_key"
    )]
    Authentication {
        /// HTTP status.
        status: u16,
    },
    /// 429 from the provider.
    #[error("the provider is rate limiting requests (HTTP 429)")]
    RateLimited {
        /// The delay the provider asked for.
        retry_after: Option<Duration>,
    },
    /// A 5xx status, or an error event in a stream that had started.
    #[error("the provider failed: {message}")]
    Server {
        /// HTTP status, if the failure had one.
        status: Option<u16>,
        /// The provider's message.
        message: String,
    },
    /// The conversation is longer than the model's context window.
    #[error("the conversation is too long for the model: {0}")]
    ContextTooLong(String),
    /// Any other 4xx: the request was invalid.
    #[error("the provider rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// Connecting, sending or reading failed, or the stream stayed silent too long.
    #[error("cannot reach the provider: {0}")]
    Connection(String),
    /// The response could not be parsed.
    #[error("the provider sent an invalid response: {0}")]
    InvalidResponse(String),
    /// The call was cancelled.
    #[error("the provider call was cancelled")]
    Cancelled,
}

impl ProviderError {
    /// Returns the error with each occurrence of `secret` in its message replaced by
    /// `<redacted>`.
    pub fn without(self, secret: &str) -> Self {
        let clean = |text: String| {
            if text.contains(secret) {
                text.replace(secret, "<redacted>")
            } else {
                text
            }
        };
        match self {
            Self::Server { status, message } => Self::Server {
                status,
                message: clean(message),
            },
            Self::Rejected { status, message } => Self::Rejected {
                status,
                message: clean(message),
            },
            Self::ContextTooLong(message) => Self::ContextTooLong(clean(message)),
            Self::Connection(message) => Self::Connection(clean(message)),
            Self::InvalidResponse(message) => Self::InvalidResponse(clean(message)),
            other => other,
        }
    }

    /// Returns whether retrying the same request can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. } | Self::Server { .. } | Self::Connection(_)
        )
    }
}

/// Receives text as the model generates it.
pub type TextSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Future returned by [`Provider::complete`].
pub type CompletionFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Completion, ProviderError>> + Send + 'a>>;

/// An LLM provider.
pub trait Provider: Send + Sync {
    /// Runs one completion, passing text deltas to `on_text` as they arrive. Cancelling
    /// `cancel` stops the call and returns [`ProviderError::Cancelled`].
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
        on_text: TextSink<'a>,
        cancel: &'a CancellationToken,
    ) -> CompletionFuture<'a>;
}
