//! Extensions that change while they serve: a server that adds a tool, and manifests that
//! are added, changed and removed while a tool call is in flight.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, config_with_key, rename_save};
use crate::peers::{
    EXTENSION_WAIT, launch, rust_server, stdio_manifest, tool_names, wait_group_gone,
};

/// The tool that the Rust test server hides until its tool `add_tool` is called.
const ADDED_TOOL: &str = "added";
/// Prompt whose turn calls `worker__wait_file` on the gate file.
const GATE_PROMPT: &str = "wait for the gate";
/// Reply that aimock returns once a request contains the tool's result.
const GATE_ANSWER: &str = "The wait is over: file appeared.";

#[tokio::test]
async fn list_changed_notification_adds_tool() {
    let config = config_with_key(&format!(
        "extensions:\n  growing:\n    type: stdio\n    cmd: {:?}\n",
        rust_server()
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    let before = daemon.wait_running("growing").await;
    assert!(
        !tool_names(&before).contains(&ADDED_TOOL.to_owned()),
        "{before}"
    );
    let (status, body) = daemon.call_tool("growing", ADDED_TOOL, json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let pid = daemon.call_text("growing", "pid", json!({})).await;

    // The server sends notifications/tools/list_changed before this call's response.
    let reply = daemon.call_text("growing", "add_tool", json!({})).await;
    assert_eq!(reply, "tool added");
    let after = daemon
        .wait_extension("growing", |status| {
            tool_names(status).contains(&ADDED_TOOL.to_owned())
        })
        .await;
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["restarts"], 0, "{after}");
    assert_eq!(
        daemon.call_text("growing", ADDED_TOOL, json!({})).await,
        "added tool called"
    );
    assert_eq!(
        daemon.call_text("growing", "pid", json!({})).await,
        pid,
        "the server was not restarted"
    );
    assert!(daemon.stderr_text().contains("tool list changed"));
}

#[tokio::test]
async fn removal_stops_server_stuck_listing_tools() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    std::fs::create_dir_all(daemon.path("extensions")).expect("create the directory");
    let manifest = daemon.path("extensions/stuck.yaml");
    let server = stdio_manifest(&rust_server(), &["--hang-listing-after-add"], "");
    rename_save(&manifest, &server);
    daemon.wait_running("stuck").await;
    let group: i32 = daemon
        .call_text("stuck", "pid", json!({}))
        .await
        .parse()
        .expect("a process id");
    // The extension's timeout is the default 300 s, so a removal that waited for the
    // listing would outlast this test.
    assert_eq!(
        daemon.call_text("stuck", "add_tool", json!({})).await,
        "tool added"
    );
    daemon
        .wait_extension("stuck", |status| {
            status["stderr_tail"]
                .to_string()
                .contains("not answering tools/list")
        })
        .await;

    std::fs::remove_file(&manifest).expect("delete the manifest");
    daemon.wait_extension("stuck", Value::is_null).await;
    wait_group_gone(group).await;
    rename_save(
        &daemon.path("extensions/next.yaml"),
        &stdio_manifest(&rust_server(), &[], ""),
    );
    daemon.wait_running("next").await;
}

#[tokio::test]
async fn manifests_change_while_turn_calls_tool() {
    let fixtures = tempfile::tempdir().expect("temporary directory");
    let gate = fixtures.path().join("gate");
    let aimock = start_gate_aimock(fixtures.path(), &gate);
    let mut launch = launch(&provider_config(&aimock));
    for (name, extra) in [
        ("worker", ""),
        ("changed", "envs:\n  MARK: before\n"),
        ("removed", ""),
    ] {
        launch.files.push((
            format!("extensions/{name}.yaml"),
            stdio_manifest(&rust_server(), &[], extra),
        ));
    }
    let daemon = Daemon::launch(launch).await;
    for name in ["worker", "changed", "removed"] {
        daemon.wait_running(name).await;
    }
    let worker_pid = daemon.call_text("worker", "pid", json!({})).await;
    let removed_pid: i32 = daemon
        .call_text("removed", "pid", json!({}))
        .await
        .parse()
        .expect("a process id");

    let turn = tokio::spawn(post_with_long_timeout(
        &daemon,
        "/session/start",
        json!({"prompt": GATE_PROMPT}),
    ));
    wait_for_pending_call(&daemon, "worker").await;

    rename_save(
        &daemon.path("extensions/added.yaml"),
        &stdio_manifest(&rust_server(), &[], ""),
    );
    rename_save(
        &daemon.path("extensions/changed.yaml"),
        &stdio_manifest(&rust_server(), &[], "envs:\n  MARK: after\n"),
    );
    std::fs::rename(
        daemon.path("extensions/removed.yaml"),
        daemon.path("removed.yaml.off"),
    )
    .expect("move the manifest out of the extensions directory");

    let added = daemon.wait_running("added").await;
    assert!(tool_names(&added).contains(&"echo".to_owned()), "{added}");
    assert_eq!(
        daemon
            .call_text("added", "echo", json!({"text": "new"}))
            .await,
        "new"
    );
    wait_for_env(&daemon, "changed", "MARK", "after").await;
    daemon.wait_extension("removed", Value::is_null).await;
    wait_group_gone(removed_pid).await;

    assert!(!turn.is_finished(), "the turn ended before its tool did");
    let worker = daemon.extension("worker").await;
    assert_eq!(worker["state"], "running", "{worker}");
    assert_eq!(worker["restarts"], 0, "{worker}");
    assert_eq!(
        daemon.call_text("worker", "pid", json!({})).await,
        worker_pid
    );

    std::fs::write(&gate, "").expect("create the gate file");
    let (status, answer) = turn.await.expect("the turn task");
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["message"], GATE_ANSWER, "{answer}");
    let id = answer["session_id"].as_str().unwrap_or_default();
    let (_, detail) = daemon
        .get_value(&format!("/sessions/{id}"), ADMIN_KEY)
        .await;
    let result = &detail["messages"][2]["content"][0];
    assert_eq!(result["content"][0]["text"], "file appeared", "{detail}");
    assert_eq!(result["is_error"], false, "{detail}");
}

#[tokio::test]
async fn own_manifest_change_fails_call_cleanly() {
    let mut launch = launch(&config_with_key(""));
    launch.files.push((
        "extensions/worker.yaml".to_owned(),
        stdio_manifest(&rust_server(), &[], "envs:\n  MARK: before\n"),
    ));
    let daemon = Daemon::launch(launch).await;
    daemon.wait_running("worker").await;
    let old_pid: i32 = daemon
        .call_text("worker", "pid", json!({}))
        .await
        .parse()
        .expect("a process id");
    let gate = daemon.path("gate-never-opened");

    let call = tokio::spawn(post_with_long_timeout(
        &daemon,
        "/extensions/worker/tools/wait_file",
        json!({"path": gate}),
    ));
    wait_for_pending_call(&daemon, "worker").await;
    rename_save(
        &daemon.path("extensions/worker.yaml"),
        &stdio_manifest(&rust_server(), &[], "envs:\n  MARK: after\n"),
    );

    let (status, body) = call.await.expect("the call task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("extension worker"), "{message}");
    wait_group_gone(old_pid).await;
    wait_for_env(&daemon, "worker", "MARK", "after").await;
    let (status, _) = daemon.get_value("/health", ADMIN_KEY).await;
    assert_eq!(status, StatusCode::OK);
}

/// Starts aimock with fixtures in `dir`: the gate prompt calls `worker__wait_file` on
/// `gate`, and a tool result from it gets [`GATE_ANSWER`].
fn start_gate_aimock(dir: &Path, gate: &Path) -> Aimock {
    let call = json!({"name": "worker__wait_file", "arguments": {"path": gate}});
    let fixtures = json!({"fixtures": [
        {"match": {"toolResultContains": "file appeared"},
         "response": {"content": GATE_ANSWER}},
        {"match": {"userMessage": GATE_PROMPT}, "response": {"toolCalls": [call]}},
    ]});
    let path = dir.join("fixtures.json");
    std::fs::write(&path, fixtures.to_string()).expect("write fixtures");
    Aimock::start_with(&path, &[])
}

fn provider_config(aimock: &Aimock) -> String {
    config_with_key(&format!(
        "provider: openai\nmodel: mock-model\nproviders:\n  openai:\n    base_url: {}/v1\n",
        aimock.url
    ))
}

/// Sends `POST path` on a client of its own whose timeout is [`EXTENSION_WAIT`], so a
/// request may outlast the extension changes that a test makes meanwhile, but not hang.
fn post_with_long_timeout(
    daemon: &Daemon,
    path: &str,
    body: Value,
) -> impl Future<Output = (StatusCode, Value)> + Send + 'static {
    let client = reqwest::Client::builder()
        .timeout(EXTENSION_WAIT)
        .build()
        .expect("build HTTP client");
    let request = client
        .post(daemon.url(path))
        .header("x-api-key", ADMIN_KEY)
        .json(&body);
    async move {
        let response = request.send().await.expect("a response within the timeout");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Waits until `name`'s server reports on stderr that a `wait_file` call started.
async fn wait_for_pending_call(daemon: &Daemon, name: &str) {
    daemon
        .wait_extension(name, |status| {
            status["stderr_tail"].to_string().contains("waiting for")
        })
        .await;
}

/// Calls the tool `env` of `name` until it returns `expected` for `variable`, which it
/// does once a changed manifest has restarted the server.
async fn wait_for_env(daemon: &Daemon, name: &str, variable: &str, expected: &str) {
    let started = Instant::now();
    loop {
        let arguments = json!({ "name": variable });
        let (status, body) = daemon.call_tool(name, "env", arguments).await;
        if status == StatusCode::OK && body["content"][0]["text"] == expected {
            return;
        }
        assert!(
            started.elapsed() < EXTENSION_WAIT,
            "{name} returned {status} {body}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
