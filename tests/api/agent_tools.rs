//! Agent turns that call MCP tools, and provider settings changed while sessions run.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, rename_save};
use crate::peers::{launch, python_server, rust_server, start_everything_http};

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"toolResultContains": "ping-42"}, "response": {"content": "The tool said ping-42."}},
  {"match": {"userMessage": "use the echo tool"},
   "response": {"toolCalls": [{"name": "rust__echo", "arguments": {"text": "ping-42"}}]}},
  {"match": {"userMessage": "hello"}, "response": {"content": "Hello."}}
]}"#;

/// One scripted turn per transport: the prompt, the tool call it triggers, the text the
/// tool returns and the answer the model gives after it.
const TRANSPORT_TURNS: [(&str, &str, &str, &str); 3] = [
    (
        "call echo over sse",
        "sse__echo",
        "Echo: sse-token-17",
        "The SSE tool said sse-token-17.",
    ),
    (
        "call echo over streamable http",
        "streamable__echo",
        "Echo: http-token-23",
        "The HTTP tool said http-token-23.",
    ),
    (
        "call shout in python",
        "python__shout",
        "PY-TOKEN-31",
        "The Python tool said PY-TOKEN-31.",
    ),
];

const TRANSPORT_FIXTURES: &str = r#"{"fixtures": [
  {"match": {"toolResultContains": "sse-token-17"},
   "response": {"content": "The SSE tool said sse-token-17."}},
  {"match": {"toolResultContains": "http-token-23"},
   "response": {"content": "The HTTP tool said http-token-23."}},
  {"match": {"toolResultContains": "PY-TOKEN-31"},
   "response": {"content": "The Python tool said PY-TOKEN-31."}},
  {"match": {"userMessage": "call echo over sse"},
   "response": {"toolCalls": [{"name": "sse__echo", "arguments": {"message": "sse-token-17"}}]}},
  {"match": {"userMessage": "call echo over streamable http"},
   "response": {"toolCalls": [
     {"name": "streamable__echo", "arguments": {"message": "http-token-23"}}]}},
  {"match": {"userMessage": "call shout in python"},
   "response": {"toolCalls": [{"name": "python__shout", "arguments": {"text": "py-token-31"}}]}}
]}"#;

/// A test peer process, killed when the test ends or fails.
struct Peer(std::process::Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(aimock: &Aimock, model: &str) -> String {
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\nprovider: openai\nmodel: {model}\nproviders:\n  openai:\n    \
         base_url: {}/v1\nextensions:\n  rust:\n    type: stdio\n    cmd: {:?}\nlog:\n  format: json\n",
        aimock.url,
        rust_server()
    )
}

fn start_aimock() -> (Aimock, tempfile::TempDir) {
    start_aimock_with(FIXTURES)
}

fn start_aimock_with(fixtures_json: &str) -> (Aimock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = dir.path().join("fixtures.json");
    std::fs::write(&fixtures, fixtures_json).expect("write fixtures");
    (Aimock::start_with(&fixtures, &[]), dir)
}

/// Returns the messages of session `id` from `GET /sessions/{id}`.
async fn history(daemon: &Daemon, id: &str) -> Vec<Value> {
    let detail: Value = daemon
        .get(&format!("/sessions/{id}"), ADMIN_KEY)
        .await
        .json()
        .await
        .expect("session JSON");
    detail["messages"].as_array().cloned().unwrap_or_default()
}

async fn post(daemon: &Daemon, path: &str, body: Value) -> (StatusCode, Value) {
    daemon.post_value(path, ADMIN_KEY, body).await
}

#[tokio::test]
async fn turn_calls_mcp_tool_and_answers() {
    let (aimock, _fixtures) = start_aimock();
    let daemon = Daemon::launch(launch(&config(&aimock, "mock-model"))).await;
    daemon.wait_running("rust").await;

    let (status, answer) = post(
        &daemon,
        "/session/start",
        json!({"prompt": "use the echo tool"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["message"], "The tool said ping-42.");
    let id = answer["session_id"].as_str().unwrap_or_default().to_owned();
    let detail: Value = daemon
        .get(&format!("/sessions/{id}"), ADMIN_KEY)
        .await
        .json()
        .await
        .expect("session JSON");
    let messages = detail["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(messages.len(), 4, "{detail}");
    assert_eq!(messages[1]["content"][0]["type"], "tool_request");
    assert_eq!(messages[1]["content"][0]["name"], "rust__echo");
    assert_eq!(messages[2]["role"], "tool");
    assert_eq!(messages[2]["content"][0]["content"][0]["text"], "ping-42");
    assert_eq!(messages[2]["content"][0]["is_error"], false);

    let extensions: Value = daemon
        .get("/extensions/list", ADMIN_KEY)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(extensions, json!({"extensions": ["rust"]}));
}

#[tokio::test]
async fn session_limited_to_other_extensions_cannot_call_tool() {
    let (aimock, _fixtures) = start_aimock();
    let daemon = Daemon::launch(launch(&config(&aimock, "mock-model"))).await;
    daemon.wait_running("rust").await;
    let body = json!({"prompt": "hello", "extensions": ["missing"]});
    let (status, error) = post(&daemon, "/session/start", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("missing"),
        "{error}"
    );
}

#[tokio::test]
async fn tool_choice_outside_session_tools_is_rejected() {
    let (aimock, _fixtures) = start_aimock();
    let limited = config(&aimock, "mock-model")
        .replace("    cmd: ", "    available_tools: [echo, pid]\n    cmd: ");
    let daemon = Daemon::launch(launch(&limited)).await;
    daemon.wait_running("rust").await;

    let offered = json!({"prompt": "hello", "tool_choice": {"tool": "rust__echo"}});
    let (status, answer) = post(&daemon, "/session/start", offered).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an offered tool is accepted: {answer}"
    );
    let id = answer["session_id"].as_str().unwrap_or_default().to_owned();

    let start_cases = [
        ("nope__x", json!(null)),
        ("rust__crash", json!(null)),
        ("rust__echo", json!([])),
    ];
    for (tool, extensions) in start_cases {
        let mut body = json!({"prompt": "hello", "tool_choice": {"tool": tool}});
        if !extensions.is_null() {
            body["extensions"] = extensions.clone();
        }
        let label = format!("start with {tool} and extensions {extensions}");
        let (status, error) = post(&daemon, "/session/start", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{label}: {error}");
        assert_eq!(error["code"], "invalid_request", "{label}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains(tool), "{label}: {message}");
        assert!(message.contains("GET /extensions"), "{label}: {message}");
    }

    let choice = json!({"tool": "nope__x"});
    let reply_cases = [
        (
            "/session/reply".to_owned(),
            json!({"session_id": id, "prompt": "hello", "tool_choice": choice}),
        ),
        (
            format!("/sessions/{id}/reply"),
            json!({"prompt": "hello", "tool_choice": choice}),
        ),
    ];
    for (path, body) in reply_cases {
        let (status, error) = post(&daemon, &path, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("nope__x"), "{path}: {message}");
    }
    assert_eq!(
        history(&daemon, &id).await.len(),
        2,
        "rejected replies store nothing"
    );
    let sessions: Value = daemon
        .get("/sessions", ADMIN_KEY)
        .await
        .json()
        .await
        .expect("sessions JSON");
    assert_eq!(
        sessions["sessions"].as_array().map(Vec::len),
        Some(1),
        "rejected starts store no session: {sessions}"
    );
}

#[tokio::test]
async fn model_change_applies_to_next_turn() {
    let (aimock, _fixtures) = start_aimock();
    let daemon = Daemon::launch(launch(&config(&aimock, "model-one"))).await;
    let (status, _) = post(&daemon, "/session/start", json!({"prompt": "hello"})).await;
    assert_eq!(status, StatusCode::OK);

    rename_save(&daemon.path("config.yaml"), &config(&aimock, "model-two"));
    daemon.wait_for_model("model-two").await;
    let (status, _) = post(&daemon, "/session/reply", json!({"prompt": "hello"})).await;
    assert_eq!(status, StatusCode::OK);

    let models = journal_models(&daemon, &aimock).await;
    assert_eq!(models, ["model-one", "model-two"]);
}

#[tokio::test]
async fn reload_during_turn_keeps_its_model() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let gate = dir.path().join("gate");
    let fixtures = dir.path().join("fixtures.json");
    let wait_call = json!({"name": "rust__wait_file", "arguments": {"path": gate}});
    let fixture_set = json!({"fixtures": [
        {"match": {"toolResultContains": "file appeared"},
         "response": {"content": "The file appeared."}},
        {"match": {"userMessage": "wait for the file"}, "response": {"toolCalls": [wait_call]}},
        {"match": {"userMessage": "hello"}, "response": {"content": "Hello."}}
    ]});
    std::fs::write(&fixtures, fixture_set.to_string()).expect("write fixtures");
    let aimock = Aimock::start_with(&fixtures, &[]);
    let daemon = Daemon::launch(launch(&config(&aimock, "model-one"))).await;
    daemon.wait_running("rust").await;

    // The turn's tool call waits for the gate file, and the config changes meanwhile.
    let turn = post(
        &daemon,
        "/session/start",
        json!({"prompt": "wait for the file"}),
    );
    let reload = async {
        daemon
            .wait_extension("rust", |status| {
                status["stderr_tail"].to_string().contains("waiting for")
            })
            .await;
        rename_save(&daemon.path("config.yaml"), &config(&aimock, "model-two"));
        daemon.wait_for_model("model-two").await;
        std::fs::write(&gate, "").expect("create the gate file");
    };
    let ((status, answer), ()) = tokio::join!(turn, reload);
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["message"], "The file appeared.");
    assert_eq!(
        answer["session_id"].as_str().map(str::is_empty),
        Some(false)
    );

    let (status, _) = post(&daemon, "/session/reply", json!({"prompt": "hello"})).await;
    assert_eq!(status, StatusCode::OK);
    let models = journal_models(&daemon, &aimock).await;
    // Both requests of the first turn use the config the request started with.
    assert_eq!(models, ["model-one", "model-one", "model-two"]);
}

/// Returns the `model` of each request in aimock's journal, in order.
async fn journal_models(daemon: &Daemon, aimock: &Aimock) -> Vec<String> {
    let models = journal_field(daemon, aimock, "model").await;
    models
        .iter()
        .filter_map(|model| model.as_str().map(str::to_owned))
        .collect()
}

/// Returns the body field `name` of each request in aimock's journal, in order, with `null`
/// where a request has no such field.
async fn journal_field(daemon: &Daemon, aimock: &Aimock, name: &str) -> Vec<Value> {
    let journal: Value = daemon
        .http
        .get(format!("{}/__aimock/journal", aimock.url))
        .send()
        .await
        .expect("read the aimock journal")
        .json()
        .await
        .expect("journal JSON");
    let entries = journal
        .as_array()
        .or_else(|| journal["entries"].as_array())
        .cloned()
        .unwrap_or_default();
    entries
        .iter()
        .map(|entry| entry["body"][name].clone())
        .collect()
}

#[tokio::test]
async fn tool_choice_from_request_and_config() {
    let (aimock, _fixtures) = start_aimock();
    let with_choice =
        config(&aimock, "mock-model").replace("log:\n", "agent:\n  tool_choice: none\nlog:\n");
    let daemon = Daemon::launch(launch(&with_choice)).await;
    daemon.wait_running("rust").await;

    let forced = json!({"prompt": "use the echo tool", "tool_choice": {"tool": "rust__echo"}});
    let (status, answer) = post(&daemon, "/session/start", forced).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["message"], "The tool said ping-42.");
    let (status, _) = post(&daemon, "/session/reply", json!({"prompt": "hello"})).await;
    assert_eq!(status, StatusCode::OK);
    let invalid = json!({"prompt": "hello", "tool_choice": {"tool": 7}});
    let (status, error) = post(&daemon, "/session/reply", invalid).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");

    let choices = journal_field(&daemon, &aimock, "tool_choice").await;
    assert_eq!(choices.len(), 3, "{choices:?}");
    // The request's choice forces the first step, and the config's applies after it.
    assert_eq!(choices[0]["function"]["name"], "rust__echo", "{choices:?}");
    assert_eq!(choices[1], "none", "{choices:?}");
    assert_eq!(choices[2], "none", "{choices:?}");
}

#[tokio::test]
async fn turn_calls_tool_over_each_transport() {
    let (aimock, _fixtures) = start_aimock_with(TRANSPORT_FIXTURES);
    let (sse_server, sse_port) = start_everything_http("sse");
    let _sse_server = Peer(sse_server);
    let (http_server, http_port) = start_everything_http("streamableHttp");
    let _http_server = Peer(http_server);
    let (python, script) = python_server();
    let config = format!(
        "port: 0\napi_key: {ADMIN_KEY}\nprovider: openai\nmodel: mock-model\nproviders:\n  \
         openai:\n    base_url: {}/v1\nextensions:\n  sse:\n    type: sse\n    uri: \
         http://127.0.0.1:{sse_port}/sse\n  streamable:\n    type: streamable_http\n    uri: \
         http://127.0.0.1:{http_port}/mcp\n  python:\n    type: stdio\n    cmd: {python:?}\n    \
         args: [{script:?}]\nlog:\n  format: json\n",
        aimock.url
    );
    let daemon = Daemon::launch(launch(&config)).await;
    for name in ["sse", "streamable", "python"] {
        daemon.wait_running(name).await;
    }

    for (prompt, tool, result, answer) in TRANSPORT_TURNS {
        let (status, body) = post(&daemon, "/session/start", json!({"prompt": prompt})).await;
        assert_eq!(status, StatusCode::OK, "{prompt}: {body}");
        assert_eq!(body["message"], answer, "{prompt}: {body}");
        let id = body["session_id"].as_str().unwrap_or_default();
        let messages = history(&daemon, id).await;
        assert_eq!(messages.len(), 4, "{prompt}: {messages:#?}");
        let request = &messages[1]["content"][0];
        assert_eq!(request["type"], "tool_request", "{prompt}: {request}");
        assert_eq!(request["name"], tool, "{prompt}: {request}");
        let response = &messages[2];
        assert_eq!(response["role"], "tool", "{prompt}: {response}");
        assert_eq!(
            response["content"][0]["content"][0]["text"], result,
            "{prompt}: {response}"
        );
        assert_eq!(
            response["content"][0]["is_error"], false,
            "{prompt}: {response}"
        );
        assert_eq!(messages[3]["role"], "assistant", "{prompt}: {messages:#?}");
    }
}
