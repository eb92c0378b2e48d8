//! A byte-level HTTP server on 127.0.0.1 that replies with scripted provider responses and
//! records each request, for wire cases a full mock server cannot produce.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One scripted response.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    /// Body pieces, written with `pause` between them.
    chunks: Vec<String>,
    pause: Duration,
}

impl Reply {
    /// Creates a 200 server-sent-events stream of `events`, each a full `data:` or `event:` block.
    pub fn sse(events: &[String]) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            chunks: events.to_vec(),
            pause: Duration::from_millis(5),
        }
    }

    /// Creates a 200 newline-delimited JSON stream, as Ollama sends.
    pub fn ndjson(lines: &[Value]) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/x-ndjson".into())],
            chunks: lines.iter().map(|line| format!("{line}\n")).collect(),
            pause: Duration::from_millis(5),
        }
    }

    /// Creates a JSON body with `status`.
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![body.to_string()],
            pause: Duration::ZERO,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// Lower-cased header lines.
    pub headers: Vec<(String, String)>,
    /// Parsed JSON body.
    pub body: Value,
}

/// The running server.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    /// Listening address.
    pub addr: SocketAddr,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeProvider {
    /// Starts a server that sends `replies` in order, then 500s.
    pub async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake provider");
        let server = Self {
            addr: listener.local_addr().expect("fake provider address"),
            replies: Arc::new(Mutex::new(replies.into())),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let handle = server.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handle = handle.clone();
                tokio::spawn(async move { handle.serve(stream).await });
            }
        });
        server
    }

    /// Returns the base URL, such as `http://127.0.0.1:1234/v1`.
    pub fn url(&self, suffix: &str) -> String {
        format!("http://{}{suffix}", self.addr)
    }

    /// Returns the requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }

    async fn serve(&self, mut stream: TcpStream) {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        self.requests.lock().expect("requests").push(request);
        let reply = self.replies.lock().expect("replies").pop_front();
        let reply = reply.unwrap_or_else(|| {
            Reply::json(
                500,
                serde_json::json!({"error": {"message": "no scripted reply left"}}),
            )
        });
        let mut head = format!(
            "HTTP/1.1 {} Scripted\r\nconnection: close\r\n",
            reply.status
        );
        for (name, value) in &reply.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in &reply.chunks {
            if stream.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
            let _ = stream.flush().await;
            tokio::time::sleep(reply.pause).await;
        }
        let _ = stream.shutdown().await;
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = serde_json::from_slice(&buffer[head_end..]).unwrap_or(Value::Null);
    Some(Recorded {
        path,
        headers,
        body,
    })
}

/// Formats one OpenAI stream chunk.
pub fn openai_chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    });
    format!("data: {chunk}\n\n")
}

/// Formats the final OpenAI usage chunk, whose `choices` array is empty.
pub fn openai_usage_chunk(prompt: u64, completion: u64) -> String {
    let chunk = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    });
    format!("data: {chunk}\n\n")
}

/// Returns the end marker of an OpenAI stream.
pub fn openai_done() -> String {
    "data: [DONE]\n\n".to_owned()
}

/// Creates an OpenAI stream whose reply is `text`.
pub fn openai_text_reply(text: &str) -> Reply {
    Reply::sse(&[
        openai_chunk(
            serde_json::json!({"role": "assistant", "content": text}),
            None,
        ),
        openai_chunk(serde_json::json!({}), Some("stop")),
        openai_usage_chunk(10, 5),
        openai_done(),
    ])
}

/// Formats one Anthropic stream event.
pub fn anthropic_event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}
