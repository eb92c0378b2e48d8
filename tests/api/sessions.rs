//! Sessions through the HTTP API, with aimock as the LLM provider.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, Launch, WAIT};

const ALICE_KEY: &str = "alice-key-0123456789abcdef";
const BOB_KEY: &str = "bob-key-0123456789abcdef00";

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"userMessage": "Summarize the conversation so far"},
   "response": {"content": "SUMMARY: a greeting and two questions."}},
  {"match": {"userMessage": "hello there"}, "response": {"content": "Hi from aimock."}},
  {"match": {"userMessage": "second question"}, "response": {"content": "Second answer."}},
  {"match": {"userMessage": "third question"}, "response": {"content": "Third answer."}},
  {"match": {"userMessage": "Create a Python function to generate Fibonacci numbers"},
   "response": {"content": "def fib(n): ..."}},
  {"match": {"userMessage": "Add documentation to this function"},
   "response": {"content": "Documented fib."}},
  {"match": {"userMessage": "slow please"},
   "response": {"content": "This answer streams slowly, one small piece at a time, on purpose."}}
]}"#;

/// aimock with the fixtures above; `slow` adds latency between stream chunks.
fn provider(slow: bool) -> (Aimock, tempfile::TempDir) {
    let extra: &[&str] = if slow {
        &["--latency", "150", "--chunk-size", "4"]
    } else {
        &[]
    };
    provider_with(extra)
}

/// aimock with the fixtures above and extra command-line arguments.
fn provider_with(extra: &[&str]) -> (Aimock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = dir.path().join("fixtures.json");
    std::fs::write(&fixtures, FIXTURES).expect("write fixtures");
    (Aimock::start_with(&fixtures, extra), dir)
}

fn config(aimock: &Aimock, extra: &str) -> String {
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\napi_keys:\n  - name: alice\n    key: {ALICE_KEY}\n  \
         - name: bob\n    key: {BOB_KEY}\nprovider: openai\nmodel: mock-model\nproviders:\n  \
         openai:\n    base_url: {}/v1\n    api_key: mock-provider-key\nlog:\n  format: json\n{extra}",
        aimock.url
    )
}

async fn post(daemon: &Daemon, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    daemon.post_value(path, key, body).await
}

async fn get_json(daemon: &Daemon, path: &str, key: &str) -> (StatusCode, Value) {
    daemon.get_value(path, key).await
}

#[tokio::test]
async fn session_lifecycle_through_original_routes() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;

    let (status, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(started["message"], "Hi from aimock.");
    assert_eq!(started["status"], "success");
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(id.len(), 36, "session id is a UUID: {started}");

    let (status, replied) = post(
        &daemon,
        "/session/reply",
        ALICE_KEY,
        json!({"prompt": "second question"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replied}");
    assert_eq!(replied["message"], "Second answer.");
    assert_eq!(replied["status"], "success");
    let body = json!({"session_id": id, "prompt": "third question"});
    let (status, replied) = post(&daemon, "/session/reply", ALICE_KEY, body).await;
    assert_eq!(status, StatusCode::OK, "{replied}");
    assert_eq!(replied["message"], "Third answer.");

    let (status, listed) = get_json(&daemon, "/sessions", ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert_eq!(listed["sessions"][0]["message_count"], 6);
    assert_eq!(listed["sessions"][0]["title"], "hello there");

    let (status, detail) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK);
    let roles: Vec<&str> = detail["messages"]
        .as_array()
        .map(|all| all.iter().filter_map(|m| m["role"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    assert_eq!(
        detail["messages"][1]["content"][0]["text"],
        "Hi from aimock."
    );

    let (status, summary) = post(
        &daemon,
        "/session/summarize",
        ALICE_KEY,
        json!({"session_id": id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["message"], "SUMMARY: a greeting and two questions.");
    let (status, _) = post(
        &daemon,
        "/session/reply",
        ALICE_KEY,
        json!({"prompt": "second question"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a summarized session continues");

    let (status, ended) = post(
        &daemon,
        "/session/end",
        ALICE_KEY,
        json!({"session_id": id}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    let body = json!({"session_id": id, "prompt": "hello there"});
    let (status, refused) = post(&daemon, "/session/reply", ALICE_KEY, body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (status, _) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK, "an ended session stays readable");

    let deleted = daemon
        .http
        .delete(daemon.url(&format!("/sessions/{id}")))
        .header("x-api-key", ALICE_KEY)
        .send()
        .await
        .expect("send DELETE");
    assert_eq!(deleted.status(), StatusCode::OK);
    let (status, _) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn other_keys_cannot_see_a_session() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let (status, _) = get_json(&daemon, &format!("/sessions/{id}"), BOB_KEY).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body = json!({"session_id": id, "prompt": "second question"});
    let (status, _) = post(&daemon, "/session/reply", BOB_KEY, body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(
        &daemon,
        &format!("/sessions/{id}/reply"),
        BOB_KEY,
        json!({"prompt": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let deleted = daemon
        .http
        .delete(daemon.url(&format!("/sessions/{id}")))
        .header("x-api-key", BOB_KEY)
        .send()
        .await
        .expect("send DELETE");
    assert_eq!(deleted.status(), StatusCode::NOT_FOUND);
    let (_, listed) = get_json(&daemon, "/sessions", BOB_KEY).await;
    assert_eq!(listed["sessions"], json!([]));
    let (status, _) = post(
        &daemon,
        "/session/reply",
        BOB_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "bob has no session to continue"
    );

    let (status, detail) = get_json(&daemon, &format!("/sessions/{id}"), ADMIN_KEY).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an admin key may read every session"
    );
    assert_eq!(detail["session"]["owner"], "alice");
}

#[tokio::test]
async fn restart_keeps_sessions_and_messages() {
    let (aimock, _fixtures) = provider(false);
    let config = config(&aimock, "");
    let daemon = Daemon::start(&config).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, before) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;

    let dir = daemon.kill_keeping_dir();
    let restarted = Daemon::launch(Launch {
        dir: Some(dir),
        ..Launch::with_config(&config)
    })
    .await;
    let (status, after) = get_json(&restarted, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["messages"], before["messages"]);
    let (status, replied) = post(
        &restarted,
        "/session/reply",
        ALICE_KEY,
        json!({"prompt": "second question"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replied}");
    assert_eq!(replied["session_id"], id.as_str());
}

#[tokio::test]
async fn kill_during_turn_keeps_store_intact() {
    let (aimock, _fixtures) = provider(true);
    let config = config(&aimock, "");
    let daemon = Daemon::start(&config).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, before) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;

    let slow = daemon
        .http
        .post(daemon.url("/session/reply"))
        .header("x-api-key", ALICE_KEY)
        .json(&json!({"prompt": "slow please"}))
        .send();
    let in_flight = tokio::spawn(slow);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let dir = daemon.kill_keeping_dir();
    assert!(
        in_flight.await.expect("request task").is_err(),
        "the killed turn cannot answer"
    );

    let store = goose_api::store::Store::open("sqlite://data/goose-api.db", dir.path())
        .await
        .expect("open the store after the kill");
    assert_eq!(
        store.integrity_check().await.expect("integrity check"),
        Vec::<String>::new()
    );
    let stored = store.messages(&id, 0, 100).await.expect("read messages");
    assert_eq!(
        stored.len(),
        3,
        "two earlier messages and the prompt of the killed turn"
    );
    let earlier = serde_json::to_value(&stored[..2]).expect("serialize");
    assert_eq!(earlier, before["messages"]);
    store.close().await;

    let restarted = Daemon::launch(Launch {
        dir: Some(dir),
        ..Launch::with_config(&config)
    })
    .await;
    let (status, replied) = post(
        &restarted,
        "/session/reply",
        ALICE_KEY,
        json!({"prompt": "second question"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{replied}");
    assert_eq!(replied["message"], "Second answer.");
}

#[tokio::test]
async fn concurrent_reply_gets_409() {
    let (aimock, _fixtures) = provider(true);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let first = daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", ALICE_KEY)
        .json(&json!({"prompt": "slow please"}))
        .send();
    let first = tokio::spawn(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post(
        &daemon,
        &format!("/sessions/{id}/reply"),
        ALICE_KEY,
        json!({"prompt": "second question"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "conflict");

    let first = first.await.expect("task").expect("first reply");
    assert_eq!(first.status(), StatusCode::OK);
    let (_, detail) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    let texts: Vec<String> = detail["messages"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|m| m["content"][0]["text"].to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(texts.len(), 4, "{texts:?}");
    assert!(
        !texts.iter().any(|t| t.contains("second question")),
        "the refused prompt was stored"
    );
}

#[tokio::test]
async fn delete_racing_replies_gets_no_500() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let mut deleted = Vec::new();
    for _ in 0..20 {
        let (status, started) = post(
            &daemon,
            "/session/start",
            ALICE_KEY,
            json!({"prompt": "hello there"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{started}");
        let id = started["session_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        // A reply that arrives while the delete runs gets 200, 404 or 409, never a 500 from
        // storing a message for rows that are gone.
        let path = format!("/sessions/{id}/reply");
        let replies = (0..4)
            .map(|_| daemon.post_value(&path, ALICE_KEY, json!({"prompt": "second question"})));
        let deletion = daemon
            .http
            .delete(daemon.url(&format!("/sessions/{id}")))
            .header("x-api-key", ALICE_KEY)
            .send();
        let (replies, deletion) = tokio::join!(futures::future::join_all(replies), deletion);
        let deletion = deletion.expect("send DELETE");
        assert_eq!(deletion.status(), StatusCode::OK);
        for (status, body) in replies {
            let expected = [StatusCode::OK, StatusCode::NOT_FOUND, StatusCode::CONFLICT];
            assert!(expected.contains(&status), "{status} {body}");
        }
        let (status, body) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        deleted.push(id);
    }
    let (_, metrics) = get_json(&daemon, "/metrics", ALICE_KEY).await;
    for id in &deleted {
        assert!(
            metrics["session_messages"].get(id).is_none(),
            "deleted session {id} is still live: {metrics}"
        );
    }
}

/// Reads server-sent events from `response` until `stop` returns true for one.
async fn read_events(
    response: reqwest::Response,
    stop: impl Fn(&(Option<String>, String, String)) -> bool,
) -> (Vec<(Option<String>, String, String)>, bool) {
    let mut events = Vec::new();
    let mut saw_heartbeat = false;
    let mut buffer = String::new();
    let mut body = response.bytes_stream();
    let started = Instant::now();
    while let Some(chunk) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("SSE chunk")));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if line.starts_with(':') {
                    saw_heartbeat = true;
                } else if let Some(value) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                    id = Some(value.to_owned());
                } else if let Some(value) =
                    line.strip_prefix("event: ").or(line.strip_prefix("event:"))
                {
                    kind = value.to_owned();
                } else if let Some(value) =
                    line.strip_prefix("data: ").or(line.strip_prefix("data:"))
                {
                    data.push_str(value);
                }
            }
            if kind.is_empty() {
                continue;
            }
            let event = (id, kind, data);
            let done = stop(&event);
            events.push(event);
            if done {
                return (events, saw_heartbeat);
            }
        }
        assert!(started.elapsed() < WAIT, "stream did not finish");
    }
    (events, saw_heartbeat)
}

#[tokio::test]
async fn sse_stream_orders_events_and_resumes() {
    // Three text chunks 1.5 s apart, so the 1 s heartbeat fires between them.
    let (aimock, _fixtures) = provider_with(&["--latency", "1500", "--chunk-size", "22"]);
    let daemon = Daemon::start(&config(&aimock, "sessions:\n  sse_heartbeat_secs: 1\n")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = daemon.url(&format!("/sessions/{id}/reply"));

    let response = daemon
        .http
        .post(&url)
        .header("x-api-key", ALICE_KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "slow please"}))
        .send()
        .await
        .expect("open the stream");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let (first, _) = read_events(response, |event| event.0.as_deref() == Some("2")).await;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|event| event.1 == "text"), "{first:?}");

    // Reconnect after the second event, as EventSource does, and get the rest.
    let resumed = daemon
        .http
        .post(&url)
        .header("x-api-key", ALICE_KEY)
        .header("accept", "text/event-stream")
        .header("last-event-id", "2")
        .json(&json!({"prompt": "slow please"}))
        .send()
        .await
        .expect("resume the stream");
    let (rest, heartbeat) = read_events(resumed, |event| event.1 == "finish").await;
    let ids: Vec<u64> = rest
        .iter()
        .filter_map(|event| event.0.as_deref().and_then(|id| id.parse().ok()))
        .collect();
    assert_eq!(ids.first(), Some(&3), "{rest:?}");
    assert!(
        ids.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "ids in order: {ids:?}"
    );
    let last = rest.last().cloned().unwrap_or_default();
    assert_eq!(last.1, "finish");
    let finish: Value = serde_json::from_str(&last.2).expect("finish data");
    assert!(finish["usage"]["input_tokens"].is_number(), "{finish}");
    let text: String = first
        .iter()
        .chain(&rest)
        .filter(|event| event.1 == "text")
        .filter_map(|event| serde_json::from_str::<Value>(&event.2).ok())
        .filter_map(|data| data["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        text,
        "This answer streams slowly, one small piece at a time, on purpose."
    );
    assert!(heartbeat, "a heartbeat comment arrives on a slow stream");
    let (_, detail) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(
        detail["messages"].as_array().map(Vec::len),
        Some(4),
        "one turn, not two"
    );
}

#[tokio::test]
async fn cancel_stops_running_turn() {
    let (aimock, _fixtures) = provider(true);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let running = daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", ALICE_KEY)
        .json(&json!({"prompt": "slow please"}))
        .send();
    let running = tokio::spawn(running);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = post(
        &daemon,
        &format!("/sessions/{id}/cancel"),
        ALICE_KEY,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer: Value = running
        .await
        .expect("task")
        .expect("reply")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["status"], "cancelled", "{answer}");
    let (status, _) = post(
        &daemon,
        &format!("/sessions/{id}/cancel"),
        ALICE_KEY,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "nothing left to cancel");
}

/// Replaces the original README's host and port with the daemon's address.
fn aimed_at(daemon: &Daemon, text: &str) -> String {
    text.replace("http://localhost:8080", &format!("http://{}", daemon.addr))
}

fn original_config(aimock: &Aimock) -> String {
    format!(
        "port: 0\napi_key: your_secure_api_key\nprovider: openai\nmodel: gpt-4o\nproviders:\n  \
         openai:\n    base_url: {}/v1\nlog:\n  format: json\n",
        aimock.url
    )
}

#[tokio::test]
async fn original_curl_examples_succeed() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&original_config(&aimock)).await;
    // The curl examples of the original goose-api README, as written there.
    let examples = [
        r#"curl -X POST http://localhost:8080/session/start \
-H "Content-Type: application/json" \
-H "x-api-key: your_secure_api_key" \
-d '{"prompt": "Create a Python function to generate Fibonacci numbers"}'"#,
        r#"curl -X POST http://localhost:8080/session/reply \
-H "Content-Type: application/json" \
-H "x-api-key: your_secure_api_key" \
-d '{"prompt": "Add documentation to this function"}'"#,
        r#"curl -X GET http://localhost:8080/extensions/list \
-H "x-api-key: your_secure_api_key""#,
        r#"curl -X GET http://localhost:8080/provider/config \
-H "x-api-key: your_secure_api_key""#,
    ];
    let mut outputs = Vec::new();
    for example in examples {
        let command = aimed_at(&daemon, example).replace("curl ", "curl -sS --fail-with-body ");
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{command}\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        outputs.push(serde_json::from_str::<Value>(&stdout).expect("JSON answer"));
    }
    assert_eq!(outputs[0]["message"], "def fib(n): ...");
    assert_eq!(outputs[0]["status"], "success");
    assert_eq!(outputs[1]["message"], "Documented fib.");
    assert!(outputs[2]["extensions"].is_array(), "{}", outputs[2]);
    assert_eq!(outputs[3], json!({"provider": "openai", "model": "gpt-4o"}));
}

#[tokio::test]
async fn original_python_example_succeeds() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&original_config(&aimock)).await;
    // The Python example of the original goose-api README, as written there.
    let script = r#"import requests

API_URL = "http://localhost:8080"
API_KEY = "your_secure_api_key"
HEADERS = {
"Content-Type": "application/json",
"x-api-key": API_KEY
}

# Start a session
response = requests.post(
f"{API_URL}/session/start",
headers=HEADERS,
json={"prompt": "Create a Python function to generate Fibonacci numbers"}
)
print(response.json())

# Reply to an ongoing session
response = requests.post(
f"{API_URL}/session/reply",
headers=HEADERS,
json={"prompt": "Add documentation to this function"}
)
print(response.json())

# List extensions
response = requests.get(f"{API_URL}/extensions/list", headers=HEADERS)
print(response.json())

# Get provider configuration
response = requests.get(f"{API_URL}/provider/config", headers=HEADERS)
print(response.json())
"#;
    let python = crate::aimock::peers_dir().join("venv/bin/python");
    let output = tokio::process::Command::new(python)
        .arg("-c")
        .arg(aimed_at(&daemon, script))
        .output()
        .await
        .expect("run the Python example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].contains("'message': 'def fib(n): ...'"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("'status': 'success'"), "{}", lines[0]);
    assert!(
        lines[1].contains("'message': 'Documented fib.'"),
        "{}",
        lines[1]
    );
    assert!(lines[2].starts_with("{'extensions': ["), "{}", lines[2]);
    assert_eq!(lines[3], "{'provider': 'openai', 'model': 'gpt-4o'}");
}

#[tokio::test]
async fn metrics_count_sessions_and_turns() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let unauthenticated = daemon
        .http
        .get(daemon.url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let (status, metrics) = get_json(&daemon, "/metrics", ALICE_KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(metrics["active_sessions"], 1, "{metrics}");
    assert_eq!(metrics["session_messages"][id.as_str()], 2, "{metrics}");
    assert!(metrics["pending_requests"].is_object(), "{metrics}");
    let (_, for_bob) = get_json(&daemon, "/metrics", BOB_KEY).await;
    assert_eq!(
        for_bob["session_messages"],
        json!({}),
        "bob sees no counts of alice's session"
    );

    let text = daemon
        .get("/metrics/prometheus", ALICE_KEY)
        .await
        .text()
        .await
        .expect("body");
    for expected in [
        "goose_api_turns_total{outcome=\"answered\"} 1",
        "goose_api_provider_calls_total{outcome=\"ok\",provider=\"openai\"} 1",
        "goose_api_http_requests_total{method=\"POST\",route=\"/session/start\",status=\"200\"} 1",
        "goose_api_http_request_duration_seconds_bucket{route=\"/session/start\"",
        "goose_api_live_sessions 1",
        "goose_api_tokens_total{direction=\"input\"}",
        "goose_api_config_reloads_total",
        "goose_api_extensions{state=\"running\"} 0",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

#[tokio::test]
async fn idle_session_is_released_and_reloaded() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "sessions:\n  idle_timeout_secs: 1\n")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let began = Instant::now();
    loop {
        let (_, metrics) = get_json(&daemon, "/metrics", ALICE_KEY).await;
        if metrics["active_sessions"] == 0 {
            break;
        }
        assert!(
            began.elapsed() < WAIT,
            "the idle session was not released: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = json!({"session_id": id, "prompt": "second question"});
    let (status, replied) = post(&daemon, "/session/reply", ALICE_KEY, body).await;
    assert_eq!(status, StatusCode::OK, "{replied}");
    let (_, detail) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(
        detail["messages"].as_array().map(Vec::len),
        Some(4),
        "history was loaded back"
    );
}

#[tokio::test]
async fn invalid_model_is_rejected() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let long = "m".repeat(257);
    for (model, expected) in [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        (long.as_str(), "257 characters"),
    ] {
        let body = json!({"prompt": "hello there", "model": model});
        let (status, error) = post(&daemon, "/session/start", ALICE_KEY, body).await;
        let label = format!("model of {} characters", model.len());
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{label}: {error}");
        assert_eq!(error["code"], "invalid_request", "{label}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{label}: {message}");
    }
    let (_, listed) = get_json(&daemon, "/sessions", ALICE_KEY).await;
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(0),
        "no session stored: {listed}"
    );

    let body = json!({"prompt": "hello there", "model": "m".repeat(256)});
    let (status, started) = post(&daemon, "/session/start", ALICE_KEY, body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "256 characters are allowed: {started}"
    );
}

/// Sends a streaming reply to session `id` with `last_event_id` as `Last-Event-ID`.
async fn resume_with(daemon: &Daemon, id: &str, last_event_id: &str) -> reqwest::Response {
    daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", ALICE_KEY)
        .header("accept", "text/event-stream")
        .header("last-event-id", last_event_id)
        .json(&json!({"prompt": "second question"}))
        .send()
        .await
        .expect("send the resuming request")
}

#[tokio::test]
async fn last_event_id_past_finished_turn_replays_finish() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let streamed = daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", ALICE_KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "second question"}))
        .send()
        .await
        .expect("stream a turn");
    let (events, _) = read_events(streamed, |event| event.1 == "finish").await;
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last.1, "finish", "{events:?}");
    let last_id: u64 = last.0.as_deref().unwrap_or_default().parse().expect("id");

    let resumed = resume_with(&daemon, &id, &(last_id + 1).to_string()).await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let (replayed, _) = read_events(resumed, |_| false).await;
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0].0, Some(last_id.to_string()));
    assert_eq!(replayed[0].1, "finish");
    assert_eq!(replayed[0].2, last.2);

    let (_, detail) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(
        detail["messages"].as_array().map(Vec::len),
        Some(4),
        "resuming starts no turn"
    );
}

#[tokio::test]
async fn unparsable_last_event_id_is_rejected() {
    let (aimock, _fixtures) = provider(false);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for value in ["garbage", "-1", "", "18446744073709551616"] {
        let response = resume_with(&daemon, &id, value).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{value:?}");
        let body: Value = response.json().await.expect("JSON error body");
        assert_eq!(body["code"], "bad_request", "{value:?}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("Last-Event-ID"), "{value:?}: {message}");
        assert!(message.contains("whole number"), "{value:?}: {message}");
    }
    let (_, detail) = get_json(&daemon, &format!("/sessions/{id}"), ALICE_KEY).await;
    assert_eq!(
        detail["messages"].as_array().map(Vec::len),
        Some(2),
        "a rejected request starts no turn"
    );
}

#[tokio::test]
async fn last_event_id_past_running_turn_gets_409() {
    let (aimock, _fixtures) = provider(true);
    let daemon = Daemon::start(&config(&aimock, "")).await;
    let (_, started) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    let id = started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let streamed = daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", ALICE_KEY)
        .header("accept", "text/event-stream")
        .json(&json!({"prompt": "slow please"}))
        .send()
        .await
        .expect("stream a turn");
    let (first, _) = read_events(streamed, |_| true).await;
    assert_eq!(first.len(), 1, "{first:?}");

    let response = resume_with(&daemon, &id, "1000").await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.expect("JSON error body");
    assert_eq!(body["code"], "conflict");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("Last-Event-ID 1000"), "{message}");
    assert!(message.contains("running turn"), "{message}");
}

#[tokio::test]
async fn computing_turn_times_out_with_503() {
    let (aimock, _fixtures) = provider(true);
    let limits = "limits:\n  request_timeout_secs: 1\n";
    let daemon = Daemon::start(&config(&aimock, limits)).await;
    let body = json!({"prompt": "slow please"});
    let (status, error) = post(&daemon, "/session/start", ALICE_KEY, body).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(error["code"], "timeout");
}
