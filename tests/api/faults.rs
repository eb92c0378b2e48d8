//! The whole daemon against misbehaving neighbours at once: a provider that fails, rate
//! limits and drops streams, an MCP server that crashes, hangs and floods, an invalid config
//! edit, and a `kill -9` mid-turn followed by a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, Launch, rename_save};
use crate::peers::{launch, rust_server};

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"userMessage": "crash the tool"},
   "response": {"toolCalls": [{"name": "rust__crash", "arguments": {}}]}},
  {"match": {"userMessage": "hang the tool"},
   "response": {"toolCalls": [{"name": "rust__sleep", "arguments": {"ms": 60000}}]}},
  {"match": {"userMessage": "flood the tool"},
   "response": {"toolCalls": [{"name": "rust__big", "arguments": {"bytes": 3000000}}]}},
  {"match": {"userMessage": "plain question"},
   "response": {"content": "A plain answer that streams in several chunks to the client."}}
]}"#;

const PROMPTS: [&str; 4] = [
    "plain question",
    "crash the tool",
    "hang the tool",
    "flood the tool",
];

fn config(aimock: &Aimock) -> String {
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\nprovider: openai\nmodel: mock-model\nproviders:\n  \
         openai:\n    base_url: {}/v1\n    max_retries: 1\n    read_timeout_secs: 3\n\
         agent:\n  max_steps: 2\n  max_tool_output_chars: 20000\nextensions:\n  rust:\n    \
         type: stdio\n    cmd: {:?}\n    timeout: 2\nlog:\n  format: json\n",
        aimock.url,
        rust_server()
    )
}

/// Whether a response is a well-formed answer or a well-formed JSON error.
fn well_formed(status: StatusCode, body: &Value) -> bool {
    if status == StatusCode::OK {
        body["message"].is_string() && body["status"].is_string() && body["session_id"].is_string()
    } else {
        body["status"] == "error" && body["message"].is_string() && body["code"].is_string()
    }
}

/// Sends a reply, and returns its status and body; a dropped connection is `None`.
async fn reply(
    http: &reqwest::Client,
    url: &str,
    id: &str,
    prompt: &str,
) -> Option<(StatusCode, Value)> {
    let response = http
        .post(url)
        .header("x-api-key", ADMIN_KEY)
        .json(&json!({"session_id": id, "prompt": prompt}))
        .send()
        .await
        .ok()?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Some((status, body))
}

/// Injects provider faults through aimock's control API while `running` is set.
async fn inject_provider_faults(
    http: reqwest::Client,
    aimock_url: String,
    running: Arc<AtomicBool>,
) {
    let mut round = 0_u32;
    while running.load(Ordering::SeqCst) {
        let fault = match round % 4 {
            0 => json!({"status": 500, "body": {"message": "injected server error"}}),
            1 => json!({"status": 429, "body": {"message": "injected rate limit"}}),
            2 => json!({"status": 503, "body": {"message": "injected overload"}}),
            _ => json!({"status": 500}),
        };
        let _ = http
            .post(format!("{aimock_url}/__aimock/error"))
            .json(&fault)
            .send()
            .await;
        let disconnects = if round.is_multiple_of(3) { 0.3 } else { 0.0 };
        let _ = http
            .post(format!("{aimock_url}/__aimock/chaos"))
            .json(&json!({"disconnectRate": disconnects}))
            .send()
            .await;
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = http
        .delete(format!("{aimock_url}/__aimock/chaos"))
        .send()
        .await;
}

#[tokio::test]
async fn daemon_survives_faults_and_kill() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = dir.path().join("fixtures.json");
    std::fs::write(&fixtures, FIXTURES).expect("write fixtures");
    let aimock = Aimock::start_with(&fixtures, &["--latency", "20", "--chunk-size", "8"]);
    let config = config(&aimock);
    let daemon = Daemon::launch(launch(&config)).await;
    daemon.wait_running("rust").await;
    let server_group: i32 = daemon
        .call_text("rust", "pid", json!({}))
        .await
        .parse()
        .expect("pid");

    // Turns here wait for retries and tool timeouts, which on a busy machine can take longer
    // than the helper client's timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build HTTP client");
    let url = daemon.url("/session/reply");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let started = daemon
            .http
            .post(daemon.url("/session/start"))
            .header("x-api-key", ADMIN_KEY)
            .json(&json!({"prompt": "plain question"}))
            .send()
            .await
            .expect("start a session");
        let body: Value = started.json().await.expect("JSON");
        ids.push(body["session_id"].as_str().unwrap_or_default().to_owned());
    }

    let running = Arc::new(AtomicBool::new(true));
    let injector = tokio::spawn(inject_provider_faults(
        http.clone(),
        aimock.url.clone(),
        running.clone(),
    ));
    let malformed = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for (index, id) in ids.iter().cloned().enumerate() {
        let (http, url, malformed, answered) = (
            http.clone(),
            url.clone(),
            malformed.clone(),
            answered.clone(),
        );
        clients.push(tokio::spawn(async move {
            for round in 0..4 {
                let prompt = PROMPTS[(index + round) % PROMPTS.len()];
                match reply(&http, &url, &id, prompt).await {
                    Some((status, body)) if well_formed(status, &body) => {
                        eprintln!("{prompt:?}: {status} {}", body["status"]);
                        if status == StatusCode::INTERNAL_SERVER_ERROR {
                            // A fault of a neighbour is a 502, 503 or 504; a 500 is our bug.
                            malformed.fetch_add(1, Ordering::SeqCst);
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        eprintln!("malformed response to {prompt:?}: {other:?}");
                        malformed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // An invalid edit while the clients run, then a fix.
    tokio::time::sleep(Duration::from_millis(500)).await;
    rename_save(
        &daemon.path("config.yaml"),
        &(config.clone() + "limits:\n  max_body_bytez: 1\n"),
    );
    let began = std::time::Instant::now();
    while daemon.config_status().await["last_reload_error"].is_null() {
        assert!(
            began.elapsed() < crate::helpers::WAIT,
            "the invalid edit was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rename_save(&daemon.path("config.yaml"), &config);

    for client in clients {
        client.await.expect("client task");
    }
    running.store(false, Ordering::SeqCst);
    injector.await.expect("injector task");
    let errors: Vec<String> = daemon
        .stderr_text()
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\"") && line.contains("request failed"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        malformed.load(Ordering::SeqCst),
        0,
        "every client gets an answer or a JSON error other than 500; errors:\n{}",
        errors.join("\n")
    );
    assert_eq!(answered.load(Ordering::SeqCst), 16);
    let health = daemon
        .http
        .get(daemon.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK, "the daemon still serves");

    // Record what is committed, kill the daemon in the middle of a turn, and restart it.
    let mut committed = Vec::new();
    for id in &ids {
        let detail: Value = daemon
            .get(&format!("/sessions/{id}?limit=500"), ADMIN_KEY)
            .await
            .json()
            .await
            .expect("session JSON");
        committed.push(detail["messages"].clone());
    }
    let in_flight = tokio::spawn({
        let (http, url, id) = (http.clone(), url.clone(), ids[0].clone());
        async move { reply(&http, &url, &id, "hang the tool").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dir = daemon.kill_keeping_dir();
    let _ = in_flight.await;
    crate::peers::wait_group_gone(server_group).await;

    let restarted = Daemon::launch(Launch {
        dir: Some(dir),
        ..launch(&config)
    })
    .await;
    for (id, before) in ids.iter().zip(&committed) {
        let after: Value = restarted
            .get(&format!("/sessions/{id}?limit=500"), ADMIN_KEY)
            .await
            .json()
            .await
            .expect("session JSON");
        let after = after["messages"].as_array().cloned().unwrap_or_default();
        let before = before.as_array().cloned().unwrap_or_default();
        assert!(after.len() >= before.len(), "session {id} lost messages");
        assert_eq!(
            after[..before.len()],
            before[..],
            "session {id} changed committed messages"
        );
    }
    let store_check =
        goose_api::store::Store::open("sqlite://data/goose-api.db", restarted.dir.path())
            .await
            .expect("open the store");
    assert_eq!(
        store_check.integrity_check().await.expect("check"),
        Vec::<String>::new()
    );
    store_check.close().await;
    // Errors queued in aimock before the injector stopped may still fail a few calls, so the
    // restarted daemon gets a few tries; each answer must be well-formed, and one a success.
    let mut last = Value::Null;
    for _ in 0..6 {
        let (status, body) = reply(
            &restarted.http,
            &restarted.url("/session/reply"),
            &ids[0],
            "plain question",
        )
        .await
        .expect("reply after restart");
        assert!(well_formed(status, &body), "{status} {body}");
        if status == StatusCode::OK {
            return;
        }
        last = body;
    }
    panic!("no successful reply after the restart; last answer {last}");
}
