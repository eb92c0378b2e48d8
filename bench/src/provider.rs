//! The instant provider: an HTTP/1.1 server inside the harness that answers the OpenAI Chat
//! Completions, Anthropic Messages and Ollama `/api/chat` formats at once, streamed. A request
//! whose last message is not a tool result gets one call of [`TOOL_NAME`]; a request whose
//! last message is that tool's result gets the text [`ANSWER`]. A turn therefore makes two
//! requests.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Tool that the first request of a turn calls: `echo` of the demo plugin, loaded as the
/// extension `demo`.
pub const TOOL_NAME: &str = "demo__echo";
/// Text that the tool call asks `echo` to return. The second request must carry it back.
pub const ECHO_TEXT: &str = "bench-echo-text";
/// Final answer of every turn.
pub const ANSWER: &str = "bench answer";
/// Model name in the daemon's config and in every response.
pub const MODEL: &str = "bench-model";
/// Unexpected requests described per run; further ones are only counted.
const MAX_UNEXPECTED_SAMPLES: usize = 5;

/// Provider wire format, chosen by the daemon's `providers.<name>.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireFormat {
    /// OpenAI Chat Completions, `POST /v1/chat/completions`, server-sent events.
    Openai,
    /// Anthropic Messages, `POST /v1/messages`, server-sent events.
    Anthropic,
    /// Ollama, `POST /api/chat`, newline-delimited JSON.
    Ollama,
}

impl WireFormat {
    /// Every format, in report order.
    pub const ALL: [Self; 3] = [Self::Openai, Self::Anthropic, Self::Ollama];

    /// Value of `providers.<name>.kind` in the daemon's config.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Ollama => "ollama",
        }
    }

    /// Name of the format in reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::Openai => "OpenAI Chat Completions, streamed",
            Self::Anthropic => "Anthropic Messages, streamed",
            Self::Ollama => "Ollama /api/chat, streamed",
        }
    }

    /// Base URL for `providers.<name>.base_url`, to which the daemon's client appends
    /// `chat/completions`, `messages` or `api/chat`.
    pub fn base_url(self, address: SocketAddr) -> String {
        match self {
            Self::Openai | Self::Anthropic => format!("http://{address}/v1/"),
            Self::Ollama => format!("http://{address}/"),
        }
    }

    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/v1/chat/completions" => Some(Self::Openai),
            "/v1/messages" => Some(Self::Anthropic),
            "/api/chat" => Some(Self::Ollama),
            _ => None,
        }
    }
}

/// Counters of the requests served, shared with the connection tasks.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    /// Sum of the handler times, in nanoseconds.
    handler_nanos: AtomicU64,
    unexpected: AtomicU64,
    unexpected_samples: Mutex<Vec<String>>,
}

/// Requests served and the time the server spent on them since the previous
/// [`InstantProvider::take_totals`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderTotals {
    /// Requests answered, expected or not.
    pub requests: u64,
    /// Sum over those requests of the time from the parsed request head to the complete
    /// response body: reading and parsing the request body and building the response. The
    /// time to write the response to the socket is not included.
    pub handler_time: Duration,
}

/// A running instant provider. Dropping it stops the accept loop.
#[derive(Debug)]
pub struct InstantProvider {
    address: SocketAddr,
    counters: Arc<Counters>,
    accept_loop: JoinHandle<()>,
}

impl InstantProvider {
    /// Listens on a free port of 127.0.0.1. Must be called inside a Tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("the instant provider cannot listen on 127.0.0.1")?;
        let address = listener
            .local_addr()
            .context("while reading the instant provider's address")?;
        let counters = Arc::new(Counters::default());
        let accept_loop = tokio::spawn(accept_connections(listener, Arc::clone(&counters)));
        Ok(Self {
            address,
            counters,
            accept_loop,
        })
    }

    /// Loopback address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Returns the totals since the previous call and resets them.
    pub fn take_totals(&self) -> ProviderTotals {
        let requests = self.counters.requests.swap(0, Ordering::Relaxed);
        let nanos = self.counters.handler_nanos.swap(0, Ordering::Relaxed);
        ProviderTotals {
            requests,
            handler_time: Duration::from_nanos(nanos),
        }
    }

    /// Number of requests that did not match the expected conversation, since the start.
    pub fn unexpected(&self) -> u64 {
        self.counters.unexpected.load(Ordering::Relaxed)
    }

    /// The first few unexpected requests, described.
    pub fn unexpected_samples(&self) -> Vec<String> {
        self.counters
            .unexpected_samples
            .lock()
            .map(|samples| samples.clone())
            .unwrap_or_default()
    }
}

impl Drop for InstantProvider {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn accept_connections(listener: TcpListener, counters: Arc<Counters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Ignoring the error is safe: latency matters on loopback, and Nagle's delay would
        // only add to the measured time.
        let _ = stream.set_nodelay(true);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let counters = Arc::clone(&counters);
                async move { Ok::<_, Infallible>(answer(request, &counters).await) }
            });
            // A connection that the daemon closes ends here; nothing is left to record.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers one request and adds its handler time to the counters.
async fn answer(request: Request<Incoming>, counters: &Counters) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let format = WireFormat::from_path(request.uri().path());
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes());
    let response = match (format, body) {
        (Some(format), Ok(body)) => match reply(format, &body) {
            Ok(response) => response,
            Err(problem) => reject(counters, format!("{path}: {problem}")),
        },
        (None, _) => reject(counters, format!("unknown path {path}")),
        (_, Err(error)) => reject(counters, format!("{path}: cannot read the body: {error}")),
    };
    let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counters.handler_nanos.fetch_add(nanos, Ordering::Relaxed);
    counters.requests.fetch_add(1, Ordering::Relaxed);
    response
}

fn reject(counters: &Counters, problem: String) -> Response<Full<Bytes>> {
    counters.unexpected.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut samples) = counters.unexpected_samples.lock()
        && samples.len() < MAX_UNEXPECTED_SAMPLES
    {
        samples.push(problem.clone());
    }
    let mut response = Response::new(Full::new(Bytes::from(problem)));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}

/// Builds the streamed response: a tool call, or the answer after the tool's result.
fn reply(format: WireFormat, body: &[u8]) -> Result<Response<Full<Bytes>>, String> {
    let request: Value =
        serde_json::from_slice(body).map_err(|error| format!("invalid JSON body: {error}"))?;
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return Err("the request does not ask for a stream".to_owned());
    }
    let last = request
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|messages| messages.last())
        .ok_or("the request has no messages")?;
    let after_tool = is_tool_result(last);
    if after_tool && !last.to_string().contains(ECHO_TEXT) {
        return Err(format!("the tool result lacks {ECHO_TEXT:?}: {last}"));
    }
    let (content_type, text) = match (format, after_tool) {
        (WireFormat::Openai, false) => ("text/event-stream", openai_tool_call()),
        (WireFormat::Openai, true) => ("text/event-stream", openai_answer()),
        (WireFormat::Anthropic, false) => ("text/event-stream", anthropic_tool_call()),
        (WireFormat::Anthropic, true) => ("text/event-stream", anthropic_answer()),
        (WireFormat::Ollama, false) => ("application/x-ndjson", ollama_tool_call()),
        (WireFormat::Ollama, true) => ("application/x-ndjson", ollama_answer()),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.parse().map_err(|_| "invalid content type")?,
    );
    Ok(response)
}

/// Returns whether a message is a tool result: role `tool` in the OpenAI and Ollama formats,
/// a `tool_result` content block in the Anthropic format.
fn is_tool_result(message: &Value) -> bool {
    if message.get("role").and_then(Value::as_str) == Some("tool") {
        return true;
    }
    message
        .get("content")
        .and_then(Value::as_array)
        .is_some_and(|blocks| {
            blocks
                .iter()
                .any(|block| block.get("type").and_then(Value::as_str) == Some("tool_result"))
        })
}

fn tool_arguments() -> Value {
    json!({ "text": ECHO_TEXT })
}

fn sse_data(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn openai_chunk(delta: &Value, finish_reason: Option<&str>) -> String {
    sse_data(&json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    }))
}

fn openai_usage_and_done() -> String {
    let usage = sse_data(&json!({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }));
    format!("{usage}data: [DONE]\n\n")
}

fn openai_tool_call() -> String {
    let call = json!({
        "role": "assistant", "content": null,
        "tool_calls": [{"index": 0, "id": "call_bench", "type": "function",
            "function": {"name": TOOL_NAME, "arguments": tool_arguments().to_string()}}]
    });
    format!(
        "{}{}{}",
        openai_chunk(&call, None),
        openai_chunk(&json!({}), Some("tool_calls")),
        openai_usage_and_done()
    )
}

fn openai_answer() -> String {
    format!(
        "{}{}{}",
        openai_chunk(&json!({"role": "assistant", "content": ANSWER}), None),
        openai_chunk(&json!({}), Some("stop")),
        openai_usage_and_done()
    )
}

fn anthropic_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Events of one Anthropic message with a single content block.
fn anthropic_message(block: &Value, delta: &Value, stop_reason: &str) -> String {
    [
        anthropic_event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": "msg_bench", "type": "message", "role": "assistant", "model": MODEL,
                "content": [], "stop_reason": null,
                "usage": {"input_tokens": 10, "output_tokens": 1}}}),
        ),
        anthropic_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": block}),
        ),
        anthropic_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": delta}),
        ),
        anthropic_event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ),
        anthropic_event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                "usage": {"output_tokens": 5}}),
        ),
        anthropic_event("message_stop", &json!({"type": "message_stop"})),
    ]
    .concat()
}

fn anthropic_tool_call() -> String {
    anthropic_message(
        &json!({"type": "tool_use", "id": "toolu_bench", "name": TOOL_NAME, "input": {}}),
        &json!({"type": "input_json_delta", "partial_json": tool_arguments().to_string()}),
        "tool_use",
    )
}

fn anthropic_answer() -> String {
    anthropic_message(
        &json!({"type": "text", "text": ""}),
        &json!({"type": "text_delta", "text": ANSWER}),
        "end_turn",
    )
}

fn ollama_line(message: &Value, done: bool) -> String {
    let mut line = json!({
        "model": MODEL, "created_at": "2026-01-01T00:00:00Z", "message": message, "done": done
    });
    if done {
        line["done_reason"] = json!("stop");
        line["prompt_eval_count"] = json!(10);
        line["eval_count"] = json!(5);
    }
    format!("{line}\n")
}

fn ollama_tool_call() -> String {
    let call = json!({"role": "assistant", "content": "",
        "tool_calls": [{"function": {"name": TOOL_NAME, "arguments": tool_arguments()}}]});
    format!(
        "{}{}",
        ollama_line(&call, false),
        ollama_line(&json!({"role": "assistant", "content": ""}), true)
    )
}

fn ollama_answer() -> String {
    format!(
        "{}{}",
        ollama_line(&json!({"role": "assistant", "content": ANSWER}), false),
        ollama_line(&json!({"role": "assistant", "content": ""}), true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_result_detected_in_each_format() {
        assert!(is_tool_result(&json!({"role": "tool", "content": "x"})));
        assert!(is_tool_result(
            &json!({"role": "user", "content": [{"type": "tool_result", "content": "x"}]})
        ));
        assert!(!is_tool_result(&json!({"role": "user", "content": "hi"})));
        assert!(!is_tool_result(
            &json!({"role": "user", "content": [{"type": "text", "text": "hi"}]})
        ));
    }

    #[test]
    fn first_request_gets_tool_call() {
        let body = json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let response = reply(WireFormat::Openai, body.to_string().as_bytes());
        assert!(response.is_ok_and(|response| response.status() == StatusCode::OK));
    }

    #[test]
    fn tool_result_without_echo_text_rejected() {
        let body = json!({"stream": true, "messages": [{"role": "tool", "content": "other"}]});
        let problem = reply(WireFormat::Ollama, body.to_string().as_bytes()).err();
        assert!(problem.is_some_and(|problem| problem.contains(ECHO_TEXT)));
    }

    #[test]
    fn request_without_stream_rejected() {
        let body = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert!(reply(WireFormat::Anthropic, body.to_string().as_bytes()).is_err());
    }
}
