//! Agent turns that call MCP tools, and provider settings changed while sessions run.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, rename_save};
use crate::peers::{launch, rust_server};

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"toolResultContains": "ping-42"}, "response": {"content": "The tool said ping-42."}},
  {"match": {"userMessage": "use the echo tool"},
   "response": {"toolCalls": [{"name": "rust__echo", "arguments": {"text": "ping-42"}}]}},
  {"match": {"userMessage": "hello"}, "response": {"content": "Hello."}}
]}"#;

fn config(aimock: &Aimock, model: &str) -> String {
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\nprovider: openai\nmodel: {model}\nproviders:\n  openai:\n    \
         base_url: {}/v1\nextensions:\n  rust:\n    type: stdio\n    cmd: {:?}\nlog:\n  format: json\n",
        aimock.url,
        rust_server()
    )
}

fn start_aimock() -> (Aimock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = dir.path().join("fixtures.json");
    std::fs::write(&fixtures, FIXTURES).expect("write fixtures");
    (Aimock::start_with(&fixtures, &[]), dir)
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
