//! Extensions from the config, the directory and the API, over each transport.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Daemon, config_with_key, rename_save};
use crate::peers::{
    everything_server, launch, python_server, rust_server, start_everything_http, stdio_manifest,
    tool_names,
};

const USER_KEY: &str = "user-key-0123456789abcdef";

#[tokio::test]
async fn stdio_server_from_config_lists_and_calls_tools() {
    let config = config_with_key(&format!(
        "extensions:\n  rusty:\n    type: stdio\n    cmd: {:?}\n    envs:\n      \
         TEST_TOKEN: secret-value-4711\n    available_tools: [echo, env, sleep]\n",
        rust_server()
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon.wait_running("rusty").await;
    assert_eq!(status["type"], "stdio");
    assert_eq!(status["source"], "config");
    assert_eq!(tool_names(&status), ["echo", "env", "sleep"]);

    let names: Value = daemon
        .get("/extensions/list", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(names, json!({"extensions": ["rusty"]}));

    let text = daemon
        .call_text("rusty", "echo", json!({"text": "hello"}))
        .await;
    assert_eq!(text, "hello");
    let env = daemon
        .call_text("rusty", "env", json!({"name": "TEST_TOKEN"}))
        .await;
    assert_eq!(env, "secret-value-4711", "envs reach the child");

    let (status, body) = daemon.call_tool("rusty", "big", json!({"bytes": 1})).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "filtered out by available_tools: {body}"
    );

    let listing = daemon
        .get("/extensions", ADMIN_KEY)
        .await
        .text()
        .await
        .unwrap();
    assert!(!listing.contains("secret-value-4711"), "{listing}");
    assert!(!daemon.stderr_text().contains("secret-value-4711"));
}

#[tokio::test]
async fn manifest_drop_in_starts_changes_and_stops() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    std::fs::create_dir_all(daemon.path("extensions")).unwrap();
    let manifest = daemon.path("extensions/dropped.yaml");
    std::fs::write(
        &manifest,
        stdio_manifest(&rust_server(), &[], "timeout: 30\n"),
    )
    .unwrap();
    let status = daemon.wait_running("dropped").await;
    assert_eq!(status["source"], "directory");
    let first_pid = daemon.call_text("dropped", "pid", json!({})).await;

    // A timeout change applies without a restart.
    rename_save(
        &manifest,
        &stdio_manifest(&rust_server(), &[], "timeout: 40\n"),
    );
    daemon
        .wait_extension("dropped", |s| s["timeout"] == 40)
        .await;
    assert_eq!(
        daemon.call_text("dropped", "pid", json!({})).await,
        first_pid
    );

    // Changed arguments restart the server.
    rename_save(
        &manifest,
        &stdio_manifest(&rust_server(), &["--banner"], "timeout: 40\n"),
    );
    let started = std::time::Instant::now();
    let second_pid = loop {
        daemon.wait_running("dropped").await;
        let (status, body) = daemon.call_tool("dropped", "pid", json!({})).await;
        let pid = body["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if status == StatusCode::OK && pid != first_pid {
            break pid;
        }
        assert!(
            started.elapsed() < crate::peers::EXTENSION_WAIT,
            "server was not restarted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    std::fs::remove_file(&manifest).unwrap();
    daemon.wait_extension("dropped", Value::is_null).await;
    crate::peers::wait_group_gone(second_pid.parse().unwrap()).await;
}

#[tokio::test]
async fn broken_and_duplicate_manifests_are_reported() {
    let config = config_with_key(&format!(
        "extensions:\n  twice:\n    type: stdio\n    cmd: {:?}\n",
        rust_server()
    ));
    let mut launch = launch(&config);
    launch.files.push((
        "extensions/broken.yaml".to_owned(),
        "type: stdio\ncommand: x\n".to_owned(),
    ));
    launch.files.push((
        "extensions/twice.json".to_owned(),
        r#"{"type": "stdio", "cmd": "true"}"#.to_owned(),
    ));
    launch.files.push((
        "extensions/denied.yaml".to_owned(),
        "type: stdio\ncmd: \"true\"\nenvs:\n  LD_PRELOAD: /tmp/x.so\n".to_owned(),
    ));
    launch.files.push((
        "extensions/README.md".to_owned(),
        "not a manifest".to_owned(),
    ));
    let daemon = Daemon::launch(launch).await;
    let status = daemon.wait_running("twice").await;
    assert_eq!(status["source"], "config");
    let listing: Value = daemon
        .get("/extensions", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let problems = listing["problems"].to_string();
    assert!(problems.contains("broken.yaml"), "{problems}");
    assert!(problems.contains("command"), "{problems}");
    assert!(problems.contains("defined twice"), "{problems}");
    assert!(problems.contains("LD_PRELOAD"), "{problems}");
    assert!(!problems.contains("README"), "{problems}");
    assert_eq!(daemon.extension("broken").await, Value::Null);
    assert_eq!(daemon.extension("denied").await, Value::Null);
}

#[tokio::test]
async fn api_adds_and_removes_extensions() {
    let config = config_with_key(&format!(
        "extensions_allow_api_changes: true\napi_keys:\n  - name: user\n    key: {USER_KEY}\n    \
         role: user\n"
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    let body = json!({"type": "stdio", "name": "added", "cmd": rust_server(),
                      "envs": {"ADDED_TOKEN": "added-secret-99"}});
    let response = daemon.post_json("/extensions/add", USER_KEY, &body).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "user key");

    let denied = json!({"type": "stdio", "name": "bad", "cmd": "true", "envs": {"PATH": "/x"}});
    let response = daemon
        .post_json("/extensions/add", ADMIN_KEY, &denied)
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("PATH"),
        "{error}"
    );

    let response = daemon.post_json("/extensions/add", ADMIN_KEY, &body).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        response.text().await.unwrap()
    );
    let status = daemon.wait_running("added").await;
    assert_eq!(status["source"], "api");
    let manifest = std::fs::read_to_string(daemon.path("extensions/added.yaml")).unwrap();
    assert!(
        manifest.contains("added-secret-99"),
        "the manifest keeps the value"
    );
    assert_eq!(
        daemon
            .call_text("added", "env", json!({"name": "ADDED_TOKEN"}))
            .await,
        "added-secret-99"
    );

    let response = daemon.post_json("/extensions/add", ADMIN_KEY, &body).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);

    let response = daemon
        .post_json("/extensions/remove", USER_KEY, &json!("added"))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = daemon
        .post_json("/extensions/remove", ADMIN_KEY, &json!("added"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(daemon.extension("added").await, Value::Null);
    assert!(!daemon.path("extensions/added.yaml").exists());
    let response = daemon
        .post_json("/extensions/remove", ADMIN_KEY, &json!("added"))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_changes_are_off_by_default() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    let body = json!({"type": "stdio", "name": "added", "cmd": rust_server()});
    let response = daemon.post_json("/extensions/add", ADMIN_KEY, &body).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("extensions_allow_api_changes")
    );
    let response = daemon
        .post_json("/extensions/remove", ADMIN_KEY, &json!("added"))
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(!daemon.path("extensions/added.yaml").exists());

    // Bodies that would be rejected with 400, 415 or 422 if they were parsed.
    let bodies = [
        ("application/json", "{not json"),
        ("text/plain", "added"),
        ("application/json", "[1, 2]"),
        ("application/json", ""),
    ];
    for path in ["/extensions/add", "/extensions/remove"] {
        for (content_type, body) in bodies {
            let response = daemon
                .http
                .post(daemon.url(path))
                .header("x-api-key", ADMIN_KEY)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .expect("send POST");
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "{path} with {content_type} body {body:?}"
            );
        }
    }
}

#[tokio::test]
async fn python_sdk_server_lists_and_calls_tools() {
    let (python, script) = python_server();
    let config = config_with_key(&format!(
        "extensions:\n  py:\n    type: stdio\n    cmd: {python:?}\n    args: [{script:?}]\n"
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon.wait_running("py").await;
    assert!(
        tool_names(&status).contains(&"shout".to_owned()),
        "{status}"
    );
    assert_eq!(
        daemon
            .call_text("py", "shout", json!({"text": "quiet"}))
            .await,
        "QUIET"
    );
}

#[tokio::test]
async fn everything_server_over_stdio() {
    let config = config_with_key(&format!(
        "extensions:\n  everything:\n    type: stdio\n    cmd: node\n    args: [{:?}]\n",
        everything_server()
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon.wait_running("everything").await;
    assert!(tool_names(&status).contains(&"echo".to_owned()), "{status}");
    let text = daemon
        .call_text("everything", "echo", json!({"message": "hi"}))
        .await;
    assert_eq!(text, "Echo: hi");
}

async fn check_http_transport(mode: &str, kind: &str, path: &str) {
    let (mut server, port) = start_everything_http(mode);
    let config = config_with_key(&format!(
        "extensions:\n  remote:\n    type: {kind}\n    uri: http://127.0.0.1:{port}{path}\n    \
         headers:\n      x-test-header: header-secret-31\n"
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon.wait_running("remote").await;
    assert_eq!(status["type"], kind);
    assert!(
        tool_names(&status).contains(&"get-sum".to_owned()),
        "{status}"
    );
    let text = daemon
        .call_text("remote", "get-sum", json!({"a": 2, "b": 3}))
        .await;
    assert!(text.contains('5'), "{text}");
    let listing = daemon
        .get("/extensions", ADMIN_KEY)
        .await
        .text()
        .await
        .expect("extension list");
    assert!(!listing.contains("header-secret-31"), "{listing}");
    drop(daemon);
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test]
async fn everything_server_over_streamable_http() {
    check_http_transport("streamableHttp", "streamable_http", "/mcp").await;
}

#[tokio::test]
async fn everything_server_over_sse() {
    check_http_transport("sse", "sse", "/sse").await;
}

#[tokio::test]
async fn api_rejects_env_names_with_equals() {
    let config = config_with_key("extensions_allow_api_changes: true\n");
    let daemon = Daemon::launch(launch(&config)).await;
    let bodies = [
        json!({"type": "stdio", "name": "e8", "cmd": rust_server(),
               "envs": {"NODE_OPTIONS=--require /tmp/evil.js ": ""}}),
        json!({"type": "stdio", "name": "e8", "cmd": rust_server(),
               "env_keys": ["NODE_OPTIONS=--require /tmp/evil.js "]}),
    ];
    for body in bodies {
        let (status, error) = daemon.post_value("/extensions/add", ADMIN_KEY, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("e8"), "{message}");
        assert!(message.contains("NODE_OPTIONS"), "{message}");
        assert!(message.contains("`=`"), "{message}");
        assert!(!message.contains("evil"), "{message}");
        assert!(!daemon.path("extensions/e8.yaml").exists());
    }
    assert_eq!(daemon.extension("e8").await, Value::Null);
}

#[tokio::test]
async fn manifest_decode_errors_hide_secrets() {
    let config = config_with_key(&format!(
        "api_keys:\n  - name: user\n    key: {USER_KEY}\n    role: user\n"
    ));
    let mut launch = launch(&config);
    launch.files.push((
        "extensions/leaky.yaml".to_owned(),
        "type: sse\nuri: http://127.0.0.1:9/sse\nheaders: \"Authorization: Bearer \
         MANIFESTSECRET-3\"\n"
            .to_owned(),
    ));
    let daemon = Daemon::launch(launch).await;
    let (status, listing) = daemon.get_value("/extensions", USER_KEY).await;
    assert_eq!(status, StatusCode::OK, "{listing}");
    let problems = listing["problems"].to_string();
    assert!(problems.contains("leaky.yaml"), "{problems}");
    assert!(problems.contains("headers"), "{problems}");
    assert!(problems.contains("expected a map"), "{problems}");
    assert!(!problems.contains("MANIFESTSECRET"), "{problems}");
    let logs = daemon.stderr_text();
    assert!(logs.contains("leaky.yaml"), "{logs}");
    assert!(!logs.contains("MANIFESTSECRET"), "{logs}");
}

/// Returns a loopback port that nothing listens on, so connecting to it is refused.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("pick a free port")
}

#[tokio::test]
async fn http_errors_hide_url_query_and_userinfo() {
    let port = closed_port();
    let config = config_with_key(&format!(
        "api_keys:\n  - name: user\n    key: {USER_KEY}\n    role: user\nextensions:\n  \
         old:\n    type: sse\n    uri: http://127.0.0.1:{port}/sse?token=QSECRET-1\n  \
         new:\n    type: streamable_http\n    \
         uri: http://name:USERSECRET-2@127.0.0.1:{port}/mcp?token=QSECRET-2\n"
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    for name in ["old", "new"] {
        daemon
            .wait_extension(name, |status| status["last_error"].is_string())
            .await;
        let (code, status) = daemon
            .get_value(&format!("/extensions/{name}"), USER_KEY)
            .await;
        assert_eq!(code, StatusCode::OK, "{status}");
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("request"), "{name}: {error}");
        assert!(!error.contains("QSECRET"), "{name}: {error}");
        assert!(!error.contains("USERSECRET"), "{name}: {error}");
    }
    let logs = daemon.stderr_text();
    assert!(!logs.contains("QSECRET"), "{logs}");
    assert!(!logs.contains("USERSECRET"), "{logs}");
}

#[tokio::test]
async fn api_rejects_long_extension_name() {
    let config = config_with_key("extensions_allow_api_changes: true\n");
    let daemon = Daemon::launch(launch(&config)).await;
    let name = "n".repeat(250);
    let body = json!({"type": "stdio", "name": name, "cmd": rust_server()});
    let (status, error) = daemon.post_value("/extensions/add", ADMIN_KEY, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("too long"), "{message}");
    assert!(message.contains("at most 64"), "{message}");
    assert_eq!(
        daemon.get("/health", ADMIN_KEY).await.status(),
        StatusCode::OK
    );
}
