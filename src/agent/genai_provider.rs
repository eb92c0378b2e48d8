//! [`Provider`] over the genai client, which speaks the OpenAI Chat Completions, Anthropic
//! Messages, Ollama `/api/chat` and Gemini wire protocols.

use std::time::Duration;

use futures::StreamExt;
use genai::adapter::AdapterKind;
use genai::chat::{
    ChatMessage, ChatOptions, ChatRequest, ChatStreamEvent, MessageContent, Tool, ToolCall,
    ToolResponse,
};
use genai::resolver::{AuthData, Endpoint};
use genai::{ModelIden, ServiceTarget, WebConfig};
use tokio_util::sync::CancellationToken;

use super::message::{ContentPart, Message, Role, tool_content_text};
use super::provider::{
    Completion, CompletionFuture, CompletionRequest, Provider, ProviderError, StopReason, TextSink,
    ToolChoice, Usage,
};
use crate::config::ProviderKind;
use crate::config::model::ProviderConfig;

/// Seconds to wait for a TCP and TLS connection when the config sets none.
const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;
/// Seconds a stream may stay silent when the config sets none; long enough for a slow local
/// model to produce its first token.
const DEFAULT_READ_TIMEOUT_SECS: u64 = 300;
/// Maximum length of a provider error message kept, so a huge HTML error page does not fill the logs.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// A provider reached over HTTP through genai.
pub struct GenaiProvider {
    client: genai::Client,
    adapter: AdapterKind,
    endpoint: Endpoint,
    auth: AuthData,
    options: ChatOptions,
    stream: bool,
    /// The configured key and header values, removed from error messages because a
    /// provider's error body may repeat the request's credentials.
    secrets: Vec<String>,
}

impl std::fmt::Debug for GenaiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenaiProvider")
            .field("adapter", &self.adapter)
            .field("endpoint", &self.endpoint.base_url())
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl GenaiProvider {
    /// Builds a provider of `kind` from its config. The config was validated at load time.
    pub fn new(kind: ProviderKind, config: &ProviderConfig) -> Result<Self, ProviderError> {
        let connect = config
            .connect_timeout_secs
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        let read = config
            .read_timeout_secs
            .unwrap_or(DEFAULT_READ_TIMEOUT_SECS);
        let web = WebConfig::default().with_connect_timeout(Duration::from_secs(connect));
        let client = genai::Client::builder()
            .with_web_config(web)
            .build()
            .map_err(|error| ProviderError::Connection(error.to_string()))?;
        let mut options = ChatOptions::default()
            .with_capture_usage(true)
            .with_capture_content(true)
            // Without capture, streamed argument fragments are not joined with their call id.
            .with_capture_tool_calls(true)
            .with_stream_read_timeout(Duration::from_secs(read));
        if let Some(temperature) = config.temperature {
            options = options.with_temperature(temperature);
        }
        if let Some(max_tokens) = config.max_tokens {
            options = options.with_max_tokens(max_tokens);
        }
        if !config.headers.is_empty() {
            let headers: Vec<(String, String)> = config
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), value.expose().to_owned()))
                .collect();
            options = options.with_extra_headers(headers);
        }
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(kind).to_owned());
        Ok(Self {
            client,
            adapter: adapter_kind(kind),
            endpoint: Endpoint::from_owned(with_trailing_slash(&base_url)),
            auth: auth_data(kind, config),
            options,
            stream: config.stream.unwrap_or(true),
            secrets: secrets_of(config),
        })
    }

    /// Converts a genai error, with every configured secret replaced by a placeholder.
    fn error_from(&self, error: genai::Error) -> ProviderError {
        let mut mapped = map_error(error);
        for secret in &self.secrets {
            mapped = mapped.without(secret);
        }
        mapped
    }

    fn target(&self, model: &str) -> ServiceTarget {
        ServiceTarget {
            endpoint: self.endpoint.clone(),
            auth: self.auth.clone(),
            model: ModelIden::new(self.adapter, model.to_owned()),
        }
    }

    fn options_for(&self, request: &CompletionRequest) -> ChatOptions {
        let choice = match &request.tool_choice {
            _ if request.tools.is_empty() => return self.options.clone(),
            ToolChoice::Auto => genai::chat::ToolChoice::Auto,
            ToolChoice::None => genai::chat::ToolChoice::None,
            ToolChoice::Required => genai::chat::ToolChoice::Required,
            ToolChoice::Tool(name) => genai::chat::ToolChoice::tool(name.clone()),
        };
        self.options.clone().with_tool_choice(choice)
    }

    async fn complete_streaming(
        &self,
        request: &CompletionRequest,
        on_text: TextSink<'_>,
    ) -> Result<Completion, ProviderError> {
        let options = self.options_for(request);
        let response = self
            .client
            .exec_chat_stream(
                self.target(&request.model),
                to_chat_request(request),
                Some(&options),
            )
            .await
            .map_err(|error| self.error_from(error))?;
        let mut stream = response.stream;
        let mut text = String::new();
        while let Some(event) = stream.next().await {
            match event.map_err(|error| self.error_from(error))? {
                ChatStreamEvent::Chunk(chunk) => {
                    on_text(&chunk.content);
                    text.push_str(&chunk.content);
                }
                ChatStreamEvent::End(end) => {
                    let tool_calls = end
                        .captured_content
                        .map(MessageContent::into_tool_calls)
                        .unwrap_or_default();
                    return Ok(completion(
                        text,
                        tool_calls,
                        end.captured_usage,
                        end.captured_stop_reason,
                    ));
                }
                _ => {}
            }
        }
        Err(ProviderError::Connection(
            "the response stream ended before it was complete".to_owned(),
        ))
    }

    /// Runs a non-streaming call; the whole text is passed to `on_text` as one delta, so
    /// observers see the same events as with streaming.
    async fn complete_once(
        &self,
        request: &CompletionRequest,
        on_text: TextSink<'_>,
    ) -> Result<Completion, ProviderError> {
        let options = self.options_for(request);
        let response = self
            .client
            .exec_chat(
                self.target(&request.model),
                to_chat_request(request),
                Some(&options),
            )
            .await
            .map_err(|error| self.error_from(error))?;
        let text = response.texts().concat();
        if !text.is_empty() {
            on_text(&text);
        }
        let stop_reason = response.stop_reason.clone();
        let usage = response.usage.clone();
        Ok(completion(
            text,
            response.into_tool_calls(),
            Some(usage),
            stop_reason,
        ))
    }
}

impl Provider for GenaiProvider {
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
        on_text: TextSink<'a>,
        cancel: &'a CancellationToken,
    ) -> CompletionFuture<'a> {
        Box::pin(async move {
            let call = async {
                if self.stream {
                    self.complete_streaming(request, on_text).await
                } else {
                    self.complete_once(request, on_text).await
                }
            };
            // Dropping the call on cancel drops the HTTP response, which closes the stream.
            tokio::select! {
                result = call => result,
                _ = cancel.cancelled() => Err(ProviderError::Cancelled),
            }
        })
    }
}

fn adapter_kind(kind: ProviderKind) -> AdapterKind {
    match kind {
        ProviderKind::Openai => AdapterKind::OpenAI,
        ProviderKind::Anthropic => AdapterKind::Anthropic,
        ProviderKind::Ollama => AdapterKind::Ollama,
        ProviderKind::Google => AdapterKind::Gemini,
    }
}

fn default_base_url(kind: ProviderKind) -> &'static str {
    match kind {
        ProviderKind::Openai => "https://api.openai.com/v1/",
        ProviderKind::Anthropic => "https://api.anthropic.com/v1/",
        ProviderKind::Ollama => "http://127.0.0.1:11434/",
        ProviderKind::Google => "https://generativelanguage.googleapis.com/v1beta/",
    }
}

/// genai appends the route (`chat/completions`, `messages`, `api/chat`) to the base URL
/// without a separator.
fn with_trailing_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

/// Shortest secret that is removed from error messages. Shorter values, such as a header
/// `1`, would also match ordinary text.
const MIN_REDACTED_SECRET_CHARS: usize = 8;

fn secrets_of(config: &ProviderConfig) -> Vec<String> {
    config
        .api_key
        .iter()
        .chain(config.headers.values())
        .map(|secret| secret.expose().to_owned())
        .filter(|secret| secret.chars().count() >= MIN_REDACTED_SECRET_CHARS)
        .collect()
}

fn auth_data(kind: ProviderKind, config: &ProviderConfig) -> AuthData {
    match (&config.api_key, kind) {
        (Some(key), _) => AuthData::from_single(key.expose()),
        (None, ProviderKind::Ollama) => AuthData::None,
        // Local OpenAI-compatible servers need no key, but genai's OpenAI adapter requires
        // one, so a placeholder is sent; a real API rejects it with the credentials error.
        (None, _) => AuthData::from_single("no-key-configured"),
    }
}

/// Converts our history to genai's request. Empty text parts are dropped, because the
/// Anthropic API rejects empty text blocks.
fn to_chat_request(request: &CompletionRequest) -> ChatRequest {
    let messages = request
        .messages
        .iter()
        .filter_map(to_chat_message)
        .collect();
    let tools: Vec<Tool> = request
        .tools
        .iter()
        .map(|tool| {
            Tool::new(tool.qualified_name())
                .with_description(tool.description.clone())
                .with_schema(tool.input_schema.clone())
        })
        .collect();
    let mut chat = ChatRequest::new(messages);
    if !request.system.is_empty() {
        chat = chat.with_system(request.system.clone());
    }
    if !tools.is_empty() {
        chat = chat.with_tools(tools);
    }
    chat
}

fn to_chat_message(message: &Message) -> Option<ChatMessage> {
    match message.role {
        Role::User => {
            let text = message.text();
            (!text.is_empty()).then(|| ChatMessage::user(text))
        }
        Role::Assistant => {
            let mut parts = Vec::new();
            for part in &message.content {
                match part {
                    ContentPart::Text { text } if !text.is_empty() => {
                        parts.push(genai::chat::ContentPart::Text(text.clone()));
                    }
                    ContentPart::ToolRequest {
                        id,
                        name,
                        arguments,
                    } => parts.push(genai::chat::ContentPart::ToolCall(ToolCall {
                        call_id: id.clone(),
                        fn_name: name.clone(),
                        fn_arguments: arguments.clone(),
                        thought_signatures: None,
                    })),
                    _ => {}
                }
            }
            (!parts.is_empty()).then(|| ChatMessage::assistant(MessageContent::from_parts(parts)))
        }
        Role::Tool => {
            let responses: Vec<ToolResponse> = message
                .content
                .iter()
                .filter_map(|part| match part {
                    ContentPart::ToolResult {
                        id,
                        content,
                        is_error,
                    } => {
                        let text = tool_content_text(content);
                        let text = if *is_error {
                            format!("Error: {text}")
                        } else {
                            text
                        };
                        Some(ToolResponse::new(id.clone(), text))
                    }
                    _ => None,
                })
                .collect();
            (!responses.is_empty()).then(|| ChatMessage::from(responses))
        }
    }
}

fn completion(
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: Option<genai::chat::Usage>,
    stop_reason: Option<genai::chat::StopReason>,
) -> Completion {
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(ContentPart::Text { text });
    }
    for call in tool_calls {
        content.push(ContentPart::ToolRequest {
            id: call.call_id,
            name: call.fn_name,
            arguments: normalize_arguments(call.fn_arguments),
        });
    }
    let usage = usage.map_or_else(Usage::default, |usage| Usage {
        input_tokens: token_count(usage.prompt_tokens),
        output_tokens: token_count(usage.completion_tokens),
    });
    let stop_reason = match stop_reason {
        Some(genai::chat::StopReason::MaxTokens(_)) => StopReason::MaxTokens,
        Some(genai::chat::StopReason::Other(reason)) => StopReason::Other(reason),
        _ => StopReason::Completed,
    };
    Completion {
        message: Message {
            role: Role::Assistant,
            content,
        },
        usage,
        stop_reason,
    }
}

fn token_count(count: Option<i32>) -> u64 {
    count
        .and_then(|count| u64::try_from(count).ok())
        .unwrap_or(0)
}

/// An empty arguments string, sent for tools without parameters, means `{}`; a string that
/// holds JSON is parsed. Anything else is left for the loop to reject as invalid.
fn normalize_arguments(arguments: serde_json::Value) -> serde_json::Value {
    match arguments {
        serde_json::Value::Null => serde_json::json!({}),
        serde_json::Value::String(text) if text.trim().is_empty() => serde_json::json!({}),
        serde_json::Value::String(text) => {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        }
        other => other,
    }
}

fn map_error(error: genai::Error) -> ProviderError {
    if let Some(mapped) = map_http_error(&error) {
        return mapped;
    }
    // A failed status on a streaming call arrives wrapped in a stream error.
    if let genai::Error::WebStream { error: inner, .. } = &error
        && let Some(mapped) = inner
            .downcast_ref::<genai::Error>()
            .and_then(map_http_error)
    {
        return mapped;
    }
    match error {
        genai::Error::ChatResponse { body, .. } => {
            let message = truncate(&body.to_string());
            if mentions_context_length(&message) {
                ProviderError::ContextTooLong(message)
            } else {
                ProviderError::Server {
                    status: None,
                    message,
                }
            }
        }
        genai::Error::StreamParse { serde_error, .. } => {
            ProviderError::InvalidResponse(serde_error.to_string())
        }
        other => ProviderError::Connection(truncate(&other.to_string())),
    }
}

/// Maps an error that carries an HTTP status; `None` for other errors.
fn map_http_error(error: &genai::Error) -> Option<ProviderError> {
    let code = error.status()?.as_u16();
    let retry_after = error.headers().and_then(retry_after);
    let message = truncate(&error_body(error));
    let mapped = match code {
        401 | 403 => ProviderError::Authentication { status: code },
        429 => ProviderError::RateLimited { retry_after },
        500..=599 => ProviderError::Server {
            status: Some(code),
            message,
        },
        _ if mentions_context_length(&message) => ProviderError::ContextTooLong(message),
        _ => ProviderError::Rejected {
            status: code,
            message,
        },
    };
    Some(mapped)
}

fn error_body(error: &genai::Error) -> String {
    match error {
        genai::Error::HttpError { body, .. } => body.clone(),
        other => other.to_string(),
    }
}

fn mentions_context_length(message: &str) -> bool {
    let lower = message.to_lowercase();
    lower.contains("context length")
        || lower.contains("context_length")
        || lower.contains("context window")
        || lower.contains("prompt is too long")
        || lower.contains("too many tokens")
}

/// Reads `retry-after-ms` or `retry-after` in seconds. An HTTP date is ignored and the
/// normal backoff applies.
fn retry_after(headers: &axum::http::HeaderMap) -> Option<Duration> {
    let read = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| value.is_finite() && *value >= 0.0)
    };
    read("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| read("retry-after").map(Duration::from_secs_f64))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}
