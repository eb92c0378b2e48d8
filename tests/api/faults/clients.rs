//! The suite's clients: turns as JSON and as server-sent events, and direct tool calls.
//! Each checks that every response is well formed and records what the later checks need.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::ADMIN_KEY;

/// Maximum number of direct tool calls sent while the turns run.
const MAX_DIRECT_CALLS: usize = 60;
/// Pause between direct tool calls.
const DIRECT_CALL_PAUSE: Duration = Duration::from_millis(50);
/// Event names a turn's stream may contain.
const EVENT_KINDS: [&str; 7] = [
    "text",
    "tool_call",
    "tool_result",
    "retry",
    "warning",
    "finish",
    "error",
];

/// Responses the turn clients received, summarized for the later checks.
#[derive(Debug, Default)]
pub struct Observed {
    /// Well-formed responses and errors other than 500.
    pub answered: usize,
    /// Descriptions of dropped connections, bodies of the wrong shape, broken streams and
    /// 500s.
    pub malformed: Vec<String>,
    /// Session id and reply text of every turn that succeeded.
    pub answers: Vec<(String, String)>,
    /// Provider errors the clients saw: messages of 502 responses, and of `retry` and
    /// `error` events.
    pub provider_errors: Vec<String>,
    /// Streams that ended with a `finish` event.
    pub streams_finished: usize,
    /// Streams that ended with an `error` event.
    pub streams_failed: usize,
}

/// [`Observed`], shared by the clients.
pub type SharedObserved = Arc<Mutex<Observed>>;

impl Observed {
    fn record_malformed(&mut self, description: String) {
        eprintln!("malformed: {description}");
        self.malformed.push(description);
    }
}

/// Returns whether `body` is the daemon's JSON error shape.
pub fn well_formed_error(body: &Value) -> bool {
    body["status"] == "error" && body["message"].is_string() && body["code"].is_string()
}

/// Returns whether a turn's JSON response is a well-formed reply or JSON error.
pub fn well_formed_turn(status: StatusCode, body: &Value) -> bool {
    if status == StatusCode::OK {
        body["message"].is_string() && body["status"].is_string() && body["session_id"].is_string()
    } else {
        well_formed_error(body)
    }
}

/// Sends a JSON reply, and returns its status and body; a dropped connection is `None`.
pub async fn json_turn(
    http: &reqwest::Client,
    base_url: &str,
    id: &str,
    prompt: &str,
) -> Option<(StatusCode, Value)> {
    let response = http
        .post(format!("{base_url}/session/reply"))
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"session_id": id, "prompt": prompt}))
        .send()
        .await
        .ok()?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

fn record_json_turn(
    observed: &SharedObserved,
    id: &str,
    prompt: &str,
    response: Option<(StatusCode, Value)>,
) {
    let mut observed = observed.lock().expect("observed");
    let Some((status, body)) = response else {
        observed.record_malformed(format!("{prompt:?} in {id}: connection dropped"));
        return;
    };
    // A fault of a neighbour is a 502, 503 or 504, and a 500 is a bug of the daemon.
    if !well_formed_turn(status, &body) || status == StatusCode::INTERNAL_SERVER_ERROR {
        observed.record_malformed(format!("{prompt:?} in {id}: {status} {body}"));
        return;
    }
    observed.answered += 1;
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    if status == StatusCode::OK {
        observed.answers.push((id.to_owned(), message));
    } else if status == StatusCode::BAD_GATEWAY {
        observed.provider_errors.push(message);
    }
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// `id:` field.
    pub id: Option<u64>,
    /// `event:` field.
    pub kind: String,
    /// `data:` field, parsed as JSON.
    pub data: Value,
}

/// How a streamed turn ended, when it ended well formed.
#[derive(Debug)]
pub enum StreamEnd {
    /// A JSON error before the stream started.
    Rejected(StatusCode, Value),
    /// The stream ended with `finish` or `error`; contains every event.
    Events(Vec<StreamEvent>),
}

/// Sends a streaming reply to `POST /sessions/{id}/reply` and reads the stream to its end.
/// Returns how it ended, or a description of what was malformed.
pub async fn sse_turn(
    http: &reqwest::Client,
    base_url: &str,
    id: &str,
    prompt: &str,
) -> Result<StreamEnd, String> {
    let response = http
        .post(format!("{base_url}/sessions/{id}/reply"))
        .header("x-api-key", ADMIN_KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": prompt}))
        .send()
        .await
        .map_err(|error| format!("connection failed: {error}"))?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.json().await.unwrap_or(Value::Null);
        if well_formed_error(&body) && status != StatusCode::INTERNAL_SERVER_ERROR {
            return Ok(StreamEnd::Rejected(status, body));
        }
        return Err(format!("{status} before the stream: {body}"));
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !content_type.starts_with("text/event-stream") {
        return Err(format!("200 with content type {content_type:?}"));
    }
    let events = read_events(response).await?;
    check_events(&events)?;
    Ok(StreamEnd::Events(events))
}

/// Reads every event of a stream; comments, such as heartbeats, are skipped.
async fn read_events(response: reqwest::Response) -> Result<Vec<StreamEvent>, String> {
    let mut events = Vec::new();
    let mut buffer: Vec<u8> = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|error| format!("stream broke after {} events: {error}", events.len()))?;
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.windows(2).position(|pair| pair == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end + 2).collect();
            if let Some(event) = parse_event(&String::from_utf8_lossy(&block))? {
                events.push(event);
            }
        }
    }
    if !String::from_utf8_lossy(&buffer).trim().is_empty() {
        return Err(format!("stream ended inside an event: {buffer:?}"));
    }
    Ok(events)
}

/// Parses one event block; `None` for a block of comments only.
fn parse_event(block: &str) -> Result<Option<StreamEvent>, String> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in block.lines() {
        if line.starts_with(':') || line.is_empty() {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => {
                id = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid id in {block:?}"))?,
                )
            }
            "event" => kind = Some(value.to_owned()),
            "data" => data.push_str(value),
            _ => return Err(format!("unknown field {field:?} in {block:?}")),
        }
    }
    let Some(kind) = kind else {
        return match id {
            None if data.is_empty() => Ok(None),
            _ => Err(format!("event without a name: {block:?}")),
        };
    };
    let data = serde_json::from_str(&data).map_err(|_| format!("data is not JSON: {block:?}"))?;
    Ok(Some(StreamEvent { id, kind, data }))
}

/// Checks that events are numbered from 1 and that the stream ends with exactly one
/// well-formed `finish` or `error` event.
fn check_events(events: &[StreamEvent]) -> Result<(), String> {
    for (index, event) in events.iter().enumerate() {
        if event.id != Some(index as u64 + 1) {
            return Err(format!("event {index} has id {:?}: {events:?}", event.id));
        }
        if !EVENT_KINDS.contains(&event.kind.as_str()) {
            return Err(format!("unknown event {:?}", event.kind));
        }
    }
    let terminal = |event: &&StreamEvent| event.kind == "finish" || event.kind == "error";
    if events.iter().filter(terminal).count() != 1 {
        return Err(format!("not exactly one finish or error event: {events:?}"));
    }
    let Some(last) = events.last().filter(terminal) else {
        return Err(format!(
            "the stream did not end with finish or error: {events:?}"
        ));
    };
    let complete = match last.kind.as_str() {
        "finish" => last.data["message"].is_string() && last.data["usage"].is_object(),
        _ => last.data["message"].is_string(),
    };
    if !complete {
        return Err(format!("incomplete {} event: {}", last.kind, last.data));
    }
    Ok(())
}

fn record_sse_turn(
    observed: &SharedObserved,
    id: &str,
    prompt: &str,
    outcome: Result<StreamEnd, String>,
) {
    let mut observed = observed.lock().expect("observed");
    let events = match outcome {
        Err(description) => {
            observed.record_malformed(format!("{prompt:?} streamed in {id}: {description}"));
            return;
        }
        Ok(StreamEnd::Rejected(status, body)) => {
            eprintln!("{prompt:?} streamed in {id}: {status} {}", body["message"]);
            observed.answered += 1;
            return;
        }
        Ok(StreamEnd::Events(events)) => events,
    };
    observed.answered += 1;
    for event in &events {
        match event.kind.as_str() {
            "retry" => {
                let error = event.data["error"].as_str().unwrap_or_default();
                observed.provider_errors.push(error.to_owned());
            }
            "error" => {
                let message = event.data["message"].as_str().unwrap_or_default();
                observed.provider_errors.push(message.to_owned());
                observed.streams_failed += 1;
            }
            "finish" => {
                let answer = event.data["message"].as_str().unwrap_or_default();
                observed.answers.push((id.to_owned(), answer.to_owned()));
                observed.streams_finished += 1;
            }
            _ => {}
        }
    }
}

/// Runs every prompt of `prompts` once in each session of `ids`, one client per session,
/// all at once, as JSON turns or as streams.
pub fn spawn_clients(
    http: &reqwest::Client,
    base_url: &str,
    ids: &[String],
    prompts: &'static [&'static str],
    streaming: bool,
    observed: &SharedObserved,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut clients = Vec::new();
    for (index, id) in ids.iter().cloned().enumerate() {
        let (http, base_url, observed) = (http.clone(), base_url.to_owned(), observed.clone());
        clients.push(tokio::spawn(async move {
            for round in 0..prompts.len() {
                let prompt = prompts[(index + round) % prompts.len()];
                if streaming {
                    let outcome = sse_turn(&http, &base_url, &id, prompt).await;
                    record_sse_turn(&observed, &id, prompt, outcome);
                } else {
                    let response = json_turn(&http, &base_url, &id, prompt).await;
                    record_json_turn(&observed, &id, prompt, response);
                }
            }
        }));
    }
    clients
}

/// Outcomes of the direct tool calls.
#[derive(Debug, Default)]
pub struct DirectCalls {
    /// Descriptions of dropped connections, bodies of the wrong shape and 500s.
    pub malformed: Vec<String>,
    /// Calls of the panicking plugin tool that returned a 502 naming the panic.
    pub panics_contained: usize,
    /// Calls of the panicking plugin tool that returned anything else, described.
    pub panics_other: Vec<String>,
    /// Calls of the hanging tool that returned a 504 naming the timeout.
    pub hangs_timed_out: usize,
    /// Calls of the hanging tool that returned anything else, described.
    pub hangs_other: Vec<String>,
}

/// Direct tool calls, extension and tool and arguments, sent in turn.
const DIRECT_CALLS: [(&str, &str, &str); 5] = [
    ("demo", "panic", "{}"),
    ("demo", "echo", r#"{"text": "direct"}"#),
    ("rust", "echo", r#"{"text": "direct"}"#),
    ("hang", "sleep", r#"{"ms": 60000}"#),
    ("flood", "echo", r#"{"text": "direct"}"#),
];

/// Calls tools through `POST /extensions/{name}/tools/{tool}` while `running` is set, at
/// most [`MAX_DIRECT_CALLS`] times, and checks each response.
pub async fn direct_calls(
    http: reqwest::Client,
    base_url: String,
    running: Arc<AtomicBool>,
) -> DirectCalls {
    let mut calls = DirectCalls::default();
    for index in 0..MAX_DIRECT_CALLS {
        if !running.load(Ordering::SeqCst) {
            break;
        }
        let (extension, tool, arguments) = DIRECT_CALLS[index % DIRECT_CALLS.len()];
        let sent = http
            .post(format!("{base_url}/extensions/{extension}/tools/{tool}"))
            .header("x-api-key", ADMIN_KEY)
            .header("content-type", "application/json")
            .body(arguments)
            .send()
            .await;
        let Ok(response) = sent else {
            calls
                .malformed
                .push(format!("{extension}/{tool}: connection dropped"));
            continue;
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        record_direct_call(&mut calls, extension, tool, status, &body);
        tokio::time::sleep(DIRECT_CALL_PAUSE).await;
    }
    calls
}

fn record_direct_call(
    calls: &mut DirectCalls,
    extension: &str,
    tool: &str,
    status: StatusCode,
    body: &Value,
) {
    let well_formed = if status == StatusCode::OK {
        body["content"].is_array() && body["is_error"].is_boolean()
    } else {
        well_formed_error(body)
    };
    if !well_formed || status == StatusCode::INTERNAL_SERVER_ERROR {
        calls
            .malformed
            .push(format!("{extension}/{tool}: {status} {body}"));
    }
    let message = body["message"].as_str().unwrap_or_default();
    match (extension, tool) {
        ("demo", "panic")
            if status == StatusCode::BAD_GATEWAY && message.contains("the tool panicked") =>
        {
            calls.panics_contained += 1;
        }
        ("demo", "panic") => calls.panics_other.push(format!("{status} {body}")),
        ("hang", "sleep")
            if status == StatusCode::GATEWAY_TIMEOUT
                && body["code"] == "upstream_timeout"
                && message.contains("timed out") =>
        {
            calls.hangs_timed_out += 1;
        }
        ("hang", "sleep") => calls.hangs_other.push(format!("{status} {body}")),
        _ => {}
    }
}
