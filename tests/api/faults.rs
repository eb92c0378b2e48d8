//! The whole daemon against misbehaving neighbours at once: a provider that fails, rate
//! limits, drops streams and stalls mid-stream, an MCP server that crashes, hangs and floods,
//! a plugin tool that panics, an invalid config edit, and a `kill -9` mid-turn followed by a
//! restart. At the end no extension server process is left behind and the daemon has no
//! zombie children.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, Launch, rename_save};
use crate::peers::{child_groups, launch, rust_server, wait_group_gone, wait_no_zombies};
use crate::plugins::built_library;

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"userMessage": "crash the tool"},
   "response": {"toolCalls": [{"name": "rust__crash", "arguments": {}}]}},
  {"match": {"userMessage": "hang the tool"},
   "response": {"toolCalls": [{"name": "rust__sleep", "arguments": {"ms": 60000}}]}},
  {"match": {"userMessage": "flood the tool"},
   "response": {"toolCalls": [{"name": "rust__big", "arguments": {"bytes": 3000000}}]}},
  {"match": {"userMessage": "panic the plugin"},
   "response": {"toolCalls": [{"name": "demo__panic", "arguments": {}}]}},
  {"match": {"userMessage": "stall the provider"},
   "response": {"content": "An answer whose stream stalls between its chunks."},
   "latency": 1500, "chunkSize": 8},
  {"match": {"userMessage": "plain question"},
   "response": {"content": "A plain answer that streams in several chunks to the client."}}
]}"#;

const PROMPTS: [&str; 5] = [
    "plain question",
    "crash the tool",
    "hang the tool",
    "flood the tool",
    "panic the plugin",
];
/// Sessions that run turns at the same time, one client each.
const SESSIONS: usize = 4;
/// Turns per client; with five prompts each client sends every prompt once.
const ROUNDS: usize = 5;
/// Maximum number of direct tool calls sent while the turns run.
const MAX_DIRECT_CALLS: usize = 60;
/// Direct tool calls, extension and tool, sent in turn.
const DIRECT_CALLS: [(&str, &str, &str); 3] = [
    ("demo", "panic", "{}"),
    ("demo", "echo", r#"{"text": "direct"}"#),
    ("rust", "echo", r#"{"text": "direct"}"#),
];

fn config(aimock: &Aimock) -> String {
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\nprovider: openai\nmodel: mock-model\nproviders:\n  \
         openai:\n    base_url: {}/v1\n    max_retries: 1\n    read_timeout_secs: 1\n\
         agent:\n  max_steps: 2\n  max_tool_output_chars: 20000\nextensions:\n  rust:\n    \
         type: stdio\n    cmd: {:?}\n    timeout: 2\n  demo:\n    type: plugin\n    \
         path: {:?}\nlog:\n  format: json\n",
        aimock.url,
        rust_server(),
        built_library("goose-plugin-demo"),
    )
}

/// Returns whether a turn's response is a well-formed answer or a well-formed JSON error.
fn well_formed(status: StatusCode, body: &Value) -> bool {
    if status == StatusCode::OK {
        body["message"].is_string() && body["status"].is_string() && body["session_id"].is_string()
    } else {
        well_formed_error(body)
    }
}

fn well_formed_error(body: &Value) -> bool {
    body["status"] == "error" && body["message"].is_string() && body["code"].is_string()
}

/// Returns whether a direct tool call's response is a well-formed result or JSON error.
fn well_formed_tool_result(status: StatusCode, body: &Value) -> bool {
    if status == StatusCode::OK {
        body["content"].is_array() && body["is_error"].is_boolean()
    } else {
        well_formed_error(body)
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

/// Counts of the responses that the clients received.
#[derive(Debug, Default)]
struct Tally {
    /// Well-formed results and JSON errors other than 500.
    answered: AtomicUsize,
    /// Dropped connections, bodies of the wrong shape, and 500s.
    malformed: AtomicUsize,
}

impl Tally {
    fn record(&self, well_formed: bool, status: Option<StatusCode>) {
        // A fault of a neighbour is a 502, 503 or 504, and a 500 is a bug of the daemon.
        if well_formed && status != Some(StatusCode::INTERNAL_SERVER_ERROR) {
            self.answered.fetch_add(1, Ordering::SeqCst);
        } else {
            self.malformed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Runs `ROUNDS` turns in each session, one client per session, all at once.
fn spawn_turn_clients(
    http: &reqwest::Client,
    url: &str,
    ids: &[String],
    tally: &Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut clients = Vec::new();
    for (index, id) in ids.iter().cloned().enumerate() {
        let (http, url, tally) = (http.clone(), url.to_owned(), tally.clone());
        clients.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let prompt = PROMPTS[(index + round) % PROMPTS.len()];
                let response = reply(&http, &url, &id, prompt).await;
                match &response {
                    Some((status, body)) => {
                        eprintln!(
                            "{prompt:?}: {status} {} {}",
                            body["status"], body["message"]
                        );
                        tally.record(well_formed(*status, body), Some(*status));
                    }
                    None => {
                        eprintln!("{prompt:?}: connection dropped");
                        tally.record(false, None);
                    }
                }
            }
        }));
    }
    clients
}

/// Outcomes of the direct calls of the plugin's panicking tool.
#[derive(Debug, Default)]
struct PanicCalls {
    /// Calls that returned a 502 JSON error naming the panic.
    contained: usize,
    /// Calls that returned anything else, described.
    other: Vec<String>,
}

/// Calls tools through `POST /extensions/{name}/tools/{tool}` while `running` is set, at
/// most `MAX_DIRECT_CALLS` times, and checks what the panicking tool returns.
async fn direct_calls(
    http: reqwest::Client,
    base_url: String,
    running: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> PanicCalls {
    let mut panics = PanicCalls::default();
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
            eprintln!("{extension}/{tool}: connection dropped");
            tally.record(false, None);
            continue;
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        tally.record(well_formed_tool_result(status, &body), Some(status));
        if tool == "panic" {
            let message = body["message"].as_str().unwrap_or_default();
            if status == StatusCode::BAD_GATEWAY && message.contains("the tool panicked") {
                panics.contained += 1;
            } else {
                panics.other.push(format!("{status} {body}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panics
}

/// Saves an invalid config, waits until the daemon reports it, and saves the valid one
/// again.
async fn invalid_edit_and_fix(daemon: &Daemon, config: &str) {
    rename_save(
        &daemon.path("config.yaml"),
        &(config.to_owned() + "limits:\n  max_body_bytez: 1\n"),
    );
    let began = std::time::Instant::now();
    while daemon.config_status().await["last_reload_error"].is_null() {
        assert!(
            began.elapsed() < crate::helpers::WAIT,
            "the invalid edit was not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rename_save(&daemon.path("config.yaml"), config);
}

/// Returns the messages of each session, as `GET /sessions/{id}` lists them.
async fn session_messages(daemon: &Daemon, ids: &[String]) -> Vec<Vec<Value>> {
    let mut sessions = Vec::new();
    for id in ids {
        let detail: Value = daemon
            .get(&format!("/sessions/{id}?limit=500"), ADMIN_KEY)
            .await
            .json()
            .await
            .expect("session JSON");
        sessions.push(detail["messages"].as_array().cloned().unwrap_or_default());
    }
    sessions
}

/// Starts `SESSIONS` sessions, each with one plain turn, and returns their ids.
async fn start_sessions(daemon: &Daemon) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let (status, body) = daemon
            .post_value(
                "/session/start",
                ADMIN_KEY,
                json!({"prompt": "plain question"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        ids.push(body["session_id"].as_str().unwrap_or_default().to_owned());
    }
    ids
}

/// Sends chat requests straight to aimock until one succeeds, which consumes the errors that
/// the injector queued and no client used.
async fn drain_queued_errors(http: &reqwest::Client, aimock_url: &str) {
    let request = json!({
        "model": "mock-model",
        "messages": [{"role": "user", "content": "plain question"}],
    });
    for _ in 0..500 {
        let response = http
            .post(format!("{aimock_url}/v1/chat/completions"))
            .json(&request)
            .send()
            .await
            .expect("send a chat request to aimock");
        if response.status().is_success() {
            return;
        }
    }
    panic!("aimock still returns queued errors after 500 requests");
}

/// Returns the process groups of the daemon's extension servers once the stdio server runs
/// and every exited server is reaped.
async fn server_groups(daemon: &Daemon) -> Vec<i32> {
    daemon.wait_running("rust").await;
    wait_no_zombies(daemon.pid()).await;
    let groups = child_groups(daemon.pid());
    assert!(!groups.is_empty(), "the stdio server is not a child");
    groups
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
    daemon.wait_running("demo").await;
    let ids = start_sessions(&daemon).await;

    // Turns here wait for retries and tool timeouts, which on a busy machine can take longer
    // than the helper client's timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build HTTP client");
    let running = Arc::new(AtomicBool::new(true));
    let injector = tokio::spawn(inject_provider_faults(
        http.clone(),
        aimock.url.clone(),
        running.clone(),
    ));
    let turns = Arc::new(Tally::default());
    let clients = spawn_turn_clients(&http, &daemon.url("/session/reply"), &ids, &turns);
    let tool_calls = Arc::new(Tally::default());
    let direct = tokio::spawn(direct_calls(
        http.clone(),
        daemon.base_url.clone(),
        running.clone(),
        tool_calls.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    invalid_edit_and_fix(&daemon, &config).await;

    for client in clients {
        client.await.expect("client task");
    }
    running.store(false, Ordering::SeqCst);
    injector.await.expect("injector task");
    drain_queued_errors(&http, &aimock.url).await;

    // With no errors queued, a stream that stalls longer than read_timeout_secs fails the
    // turn with a 502 that names the timeout, after the retry stalls too.
    let (status, body) = reply(
        &http,
        &daemon.url("/session/reply"),
        &ids[1],
        "stall the provider",
    )
    .await
    .expect("reply to a stalled stream");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(well_formed(status, &body), "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("timed out"), "{message}");
    let panics = direct.await.expect("direct call task");
    let errors: Vec<String> = daemon
        .stderr_text()
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\"") && line.contains("request failed"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        turns.malformed.load(Ordering::SeqCst),
        0,
        "every turn gets an answer or a JSON error other than 500; errors:\n{}",
        errors.join("\n")
    );
    assert_eq!(turns.answered.load(Ordering::SeqCst), SESSIONS * ROUNDS);
    assert_eq!(
        tool_calls.malformed.load(Ordering::SeqCst),
        0,
        "every direct tool call gets a result or a JSON error other than 500; errors:\n{}",
        errors.join("\n")
    );
    assert_eq!(panics.other, Vec::<String>::new(), "a panic is a 502 error");
    assert!(
        panics.contained > 0,
        "the panicking tool was called directly"
    );
    assert_eq!(daemon.extension("demo").await["state"], "running");
    let health = daemon.get("/health", ADMIN_KEY).await;
    assert_eq!(health.status(), StatusCode::OK, "the daemon still serves");

    // Record what is committed, kill the daemon in the middle of a turn, and restart it.
    let groups = server_groups(&daemon).await;
    let committed = session_messages(&daemon, &ids).await;
    let in_flight = tokio::spawn({
        let (http, url, id) = (http.clone(), daemon.url("/session/reply"), ids[0].clone());
        async move { reply(&http, &url, &id, "hang the tool").await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let dir = daemon.kill_keeping_dir();
    let _ = in_flight.await;
    // A server outlives a killed daemon only until it reads the end of its stdin.
    // NOTE: processes that a server starts in the background of its group, as a wrapper
    // script can, keep running after a kill -9 of the daemon; only a clean stop ends them.
    for group in groups {
        wait_group_gone(group).await;
    }

    let mut restarted = Daemon::launch(Launch {
        dir: Some(dir),
        ..launch(&config)
    })
    .await;
    let after_restart = session_messages(&restarted, &ids).await;
    for ((id, before), after) in ids.iter().zip(&committed).zip(&after_restart) {
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
    let (status, body) = reply(
        &restarted.http,
        &restarted.url("/session/reply"),
        &ids[0],
        "plain question",
    )
    .await
    .expect("reply after restart");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(well_formed(status, &body), "{body}");

    // A clean shutdown stops every server and leaves no process of their groups.
    let groups = server_groups(&restarted).await;
    restarted.signal(Signal::SIGTERM);
    let exit = restarted.wait_exit().await;
    assert!(exit.success(), "{exit}\n{}", restarted.stderr_text());
    for group in groups {
        wait_group_gone(group).await;
    }
}
