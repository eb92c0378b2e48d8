//! Request rates and concurrent turns per key and per daemon, their headers, and their
//! changes by reload.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, WAIT, rename_save};

const ALICE_KEY: &str = "alice-key-0123456789abcdef";
const BOB_KEY: &str = "bob-key-0123456789abcdef00";

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"userMessage": "hello there"}, "response": {"content": "Hi from aimock."}},
  {"match": {"userMessage": "slow please"},
   "response": {"content": "This answer streams slowly, one small piece at a time, on purpose, so that the turn is still running while the test sends its other requests."}}
]}"#;

/// Returns a config with alice's and bob's settings under `api_keys` and `extra` at the top level.
fn config(model: &str, alice: &str, bob: &str, provider_url: &str, extra: &str) -> String {
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\napi_keys:\n  - name: alice\n    key: {ALICE_KEY}\n{alice}\
         \n  - name: bob\n    key: {BOB_KEY}\n{bob}\nprovider: openai\nmodel: {model}\n\
         providers:\n  openai:\n    base_url: {provider_url}/v1\n    api_key: mock-provider-key\n\
         log:\n  format: json\n{extra}"
    )
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn slow_provider() -> (Aimock, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("fixtures.json");
    std::fs::write(&path, FIXTURES).expect("write fixtures");
    let aimock = Aimock::start_with(&path, &["--latency", "100", "--chunk-size", "4"]);
    (aimock, dir)
}

async fn post(daemon: &Daemon, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
    daemon.post_value(path, key, body).await
}

/// Starts a session for `key` and a streamed slow turn in it, and returns the response once
/// the turn runs.
async fn running_turn(daemon: &Daemon, key: &str) -> reqwest::Response {
    let (status, started) = post(
        daemon,
        "/session/start",
        key,
        json!({"prompt": "hello there"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let id = started["session_id"].as_str().unwrap_or_default();
    let mut response = daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", key)
        .header("accept", "text/event-stream")
        .timeout(WAIT * 3)
        .json(&json!({"prompt": "slow please"}))
        .send()
        .await
        .expect("start a streamed turn");
    assert_eq!(response.status(), StatusCode::OK);
    let mut seen = String::new();
    while !seen.contains("event: text") {
        let chunk = response.chunk().await.expect("read the event stream");
        let chunk = chunk.expect("the stream ended before the first text event");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    response
}

#[tokio::test]
async fn rate_limit_rejects_with_headers() {
    // One request per minute with a burst of two: the third request in a row is over.
    let alice = "    requests_per_minute: 1\n    burst: 2";
    let daemon = Daemon::start(&config("m", alice, "", "http://127.0.0.1:9", "")).await;

    let first = daemon.get("/provider/config", ALICE_KEY).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-ratelimit-limit").as_deref(), Some("1"));
    assert_eq!(
        header(&first, "x-ratelimit-remaining").as_deref(),
        Some("1")
    );
    let second = daemon.get("/provider/config", ALICE_KEY).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        header(&second, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let reset: u64 = header(&second, "x-ratelimit-reset")
        .and_then(|value| value.parse().ok())
        .expect("numeric x-ratelimit-reset");
    assert!((61..=120).contains(&reset), "reset {reset}");

    let third = daemon.get("/provider/config", ALICE_KEY).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        header(&third, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let retry_after: u64 = header(&third, "retry-after")
        .and_then(|value| value.parse().ok())
        .expect("numeric retry-after");
    assert!((1..=60).contains(&retry_after), "retry-after {retry_after}");
    let body: Value = third.json().await.expect("error JSON");
    assert_eq!(body["status"], "error");
    assert_eq!(body["code"], "rate_limited");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("\"alice\""), "{message}");
    assert!(message.contains("requests_per_minute"), "{message}");

    let bob = daemon.get("/provider/config", BOB_KEY).await;
    assert_eq!(bob.status(), StatusCode::OK, "bob has no limit");
    assert_eq!(header(&bob, "x-ratelimit-limit"), None);
    let metrics = daemon
        .get("/metrics/prometheus", ADMIN_KEY)
        .await
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("goose_api_limit_rejections_total{key=\"alice\",limit=\"rate\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn rate_limit_follows_reload() {
    let daemon = Daemon::start(&config(
        "first",
        "",
        "",
        "http://127.0.0.1:9",
        "limits:\n  requests_per_minute: 1\n",
    ))
    .await;
    // Alice has no rate of her own, so the limits rate applies to her.
    assert_eq!(
        daemon.get("/provider/config", ALICE_KEY).await.status(),
        StatusCode::OK
    );
    let over = daemon.get("/provider/config", ALICE_KEY).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);

    let alice = "    requests_per_minute: 1000\n    burst: 5";
    rename_save(
        &daemon.path("config.yaml"),
        &config("second", alice, "", "http://127.0.0.1:9", ""),
    );
    daemon.wait_for_model("second").await;
    for remaining in ["4", "3"] {
        let response = daemon.get("/provider/config", ALICE_KEY).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "x-ratelimit-limit").as_deref(),
            Some("1000")
        );
        assert_eq!(
            header(&response, "x-ratelimit-remaining").as_deref(),
            Some(remaining)
        );
    }
}

#[tokio::test]
async fn turn_limits_per_key_and_daemon() {
    let (aimock, _fixtures) = slow_provider();
    let limits = |max: u32| format!("limits:\n  max_concurrent_turns: {max}\n");
    let alice = "    max_concurrent_turns: 1";
    let daemon = Daemon::start(&config("m", alice, "", &aimock.url, &limits(2))).await;

    let _alice_turn = running_turn(&daemon, ALICE_KEY).await;
    let (status, body) = post(
        &daemon,
        "/session/start",
        ALICE_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_concurrent_turns"), "{message}");
    assert!(message.contains("\"alice\""), "{message}");

    let _bob_turn = running_turn(&daemon, BOB_KEY).await;
    let (status, body) = post(
        &daemon,
        "/session/start",
        ADMIN_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("limits.max_concurrent_turns"), "{message}");

    rename_save(
        &daemon.path("config.yaml"),
        &config("raised", alice, "", &aimock.url, &limits(3)),
    );
    daemon.wait_for_model("raised").await;
    let (status, body) = post(
        &daemon,
        "/session/start",
        ADMIN_KEY,
        json!({"prompt": "hello there"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn token_usage_per_key_is_listed() {
    let (aimock, _fixtures) = slow_provider();
    let daemon = Daemon::start(&config("m", "", "", &aimock.url, "")).await;
    for _ in 0..2 {
        let (status, body) = post(
            &daemon,
            "/session/start",
            ALICE_KEY,
            json!({"prompt": "hello there"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let listed: Value = daemon
        .get("/sessions", ALICE_KEY)
        .await
        .json()
        .await
        .expect("session list JSON");
    let sessions = listed["sessions"].as_array().cloned().unwrap_or_default();
    let sum = |field: &str| -> i64 { sessions.iter().filter_map(|s| s[field].as_i64()).sum() };
    assert_eq!(listed["usage"]["key"], "alice");
    assert_eq!(
        listed["usage"]["input_tokens"].as_i64(),
        Some(sum("input_tokens"))
    );
    assert_eq!(
        listed["usage"]["output_tokens"].as_i64(),
        Some(sum("output_tokens"))
    );
    assert!(
        sum("output_tokens") > 0,
        "aimock reports token usage: {listed}"
    );

    let bob: Value = daemon
        .get("/sessions", BOB_KEY)
        .await
        .json()
        .await
        .expect("session list JSON");
    assert_eq!(bob["usage"]["input_tokens"], 0, "{bob}");

    let metrics = daemon
        .get("/metrics/prometheus", ADMIN_KEY)
        .await
        .text()
        .await
        .expect("metrics text");
    let output = sum("output_tokens");
    let expected =
        format!("goose_api_key_tokens_total{{direction=\"output\",key=\"alice\"}} {output}");
    assert!(
        metrics.contains(&expected),
        "{expected} missing from:\n{metrics}"
    );
}
