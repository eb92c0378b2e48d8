//! The whole daemon against misbehaving neighbours at once: a provider that fails, rate
//! limits, disconnects, cuts streams part-way and stalls, MCP servers that crash, hang and
//! flood stderr, a plugin tool that panics, and an invalid config edit, with JSON and
//! streaming clients in several sessions. Then a `kill -9` mid-turn and a restart, after
//! which no extension server process is left behind and no committed message is lost.

mod clients;
mod history;
mod provider;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, Launch, WAIT, config_with_key, rename_save};
use crate::peers::{
    EXTENSION_WAIT, child_groups, group_members, launch, rust_server, wait_group_gone,
    wait_no_zombies,
};
use crate::plugins::built_library;
use clients::{DirectCalls, Observed, SharedObserved};
use provider::{Fault, Injector};

const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"userMessage": "crash the tool"},
   "response": {"toolCalls": [{"name": "crash__crash", "arguments": {}}]}},
  {"match": {"userMessage": "hang the tool"},
   "response": {"toolCalls": [{"name": "hang__sleep", "arguments": {"ms": 60000}}]}},
  {"match": {"userMessage": "hang the wrapped tool"},
   "response": {"toolCalls": [{"name": "wrapped__sleep", "arguments": {"ms": 60000}}]}},
  {"match": {"userMessage": "flood the tool"},
   "response": {"toolCalls": [{"name": "rust__big", "arguments": {"bytes": 3000000}}]}},
  {"match": {"userMessage": "panic the plugin"},
   "response": {"toolCalls": [{"name": "demo__panic", "arguments": {}}]}},
  {"match": {"userMessage": "stall the provider"},
   "response": {"content": "An answer whose stream stalls between its chunks."},
   "latency": 1500, "chunkSize": 8},
  {"match": {"userMessage": "cut the stream"},
   "response": {"content": "CUT-TEXT: aimock ends this stream after three chunks, long before the sentence ends."},
   "truncateAfterChunks": 3},
  {"match": {"userMessage": "drop the stream"},
   "response": {"content": "CUT-TIMED: aimock closes this connection 300 ms into the stream, while chunks still follow."},
   "latency": 100, "disconnectAfterMs": 300},
  {"match": {"userMessage": "cut the tool call"},
   "response": {"toolCalls": [{"name": "rust__echo", "arguments": {"text": "CUT-CALL: arguments that aimock never finishes sending"}}]},
   "truncateAfterChunks": 2},
  {"match": {"userMessage": "plain question"},
   "response": {"content": "A plain answer that streams in several chunks to the client."}}
]}"#;

/// The only text response of the fixtures, besides tool requests.
const PLAIN_ANSWER: &str = "A plain answer that streams in several chunks to the client.";
/// Texts of the responses that aimock never sends whole.
const NEVER_STORED: [&str; 4] = ["CUT-TEXT", "CUT-TIMED", "CUT-CALL", "stalls between"];
/// The prompt whose response stalls.
const STALL_PROMPT: &str = "stall the provider";
/// The prompt whose tool call is in flight when the daemon is killed.
const KILLED_PROMPT: &str = "hang the wrapped tool";

/// Prompts of the JSON clients, each sent once per session.
const JSON_PROMPTS: &[&str] = &[
    "plain question",
    "crash the tool",
    "hang the tool",
    "flood the tool",
    "panic the plugin",
    STALL_PROMPT,
    "cut the stream",
    "drop the stream",
    "cut the tool call",
];
/// Prompts of the streaming clients. Crashes are left to the JSON clients, so that the
/// crashing server's restart backoff stays short.
const SSE_PROMPTS: &[&str] = &[
    "plain question",
    STALL_PROMPT,
    "cut the stream",
    "hang the tool",
    "drop the stream",
    "panic the plugin",
    "cut the tool call",
];
/// Sessions with a JSON client each.
const JSON_SESSIONS: usize = 4;
/// Sessions with a streaming client each.
const SSE_SESSIONS: usize = 2;
/// Lines the flooding server writes to stderr.
const FLOOD_LINES: usize = 100_000;
/// Lines of stderr that `GET /extensions/{name}` keeps, `TAIL_LINES` in the daemon.
const STDERR_TAIL_LINES: usize = 40;
/// Maximum length in bytes of a kept stderr line: `MAX_LINE_BYTES` in the daemon plus the
/// truncation mark.
const MAX_STDERR_LINE: usize = 2048 + " [line truncated]".len();

/// Returns the YAML of a stdio extension running `cmd` with `args`.
fn stdio_extension(name: &str, cmd: &str, args: &[&str], timeout: u64) -> String {
    let args = serde_json::to_string(args).expect("arguments as JSON");
    format!(
        "  {name}:\n    type: stdio\n    cmd: {cmd:?}\n    args: {args}\n    timeout: {timeout}\n"
    )
}

/// Returns the YAML of the extension whose server starts a `sleep` in the background of
/// its process group, as wrapper scripts can.
fn wrapped_extension(timeout: u64) -> String {
    let command = format!("sleep 1000 & exec {}", rust_server());
    stdio_extension("wrapped", "sh", &["-c", &command], timeout)
}

/// Returns the suite's config; `with_flood` adds the server that floods stderr.
fn config(aimock: &Aimock, with_flood: bool) -> String {
    let server = rust_server();
    let mut extensions = String::new();
    for name in ["rust", "crash", "hang"] {
        extensions.push_str(&stdio_extension(name, &server, &[], 2));
    }
    extensions.push_str(&wrapped_extension(30));
    if with_flood {
        let lines = FLOOD_LINES.to_string();
        extensions.push_str(&stdio_extension("flood", &server, &["--flood", &lines], 2));
    }
    format!(
        "port: 0\napi_key: {ADMIN_KEY}\nprovider: openai\nmodel: mock-model\nproviders:\n  \
         openai:\n    base_url: {}/v1\n    max_retries: 1\n    read_timeout_secs: 1\n\
         agent:\n  max_steps: 2\n  max_tool_output_chars: 20000\nextensions:\n{extensions}  \
         demo:\n    type: plugin\n    path: {:?}\nlog:\n  format: json\n",
        aimock.url,
        built_library("goose-plugin-demo"),
    )
}

/// Saves an invalid config, waits until the daemon reports it, and saves `fixed`.
async fn invalid_edit_and_fix(daemon: &Daemon, config: &str, fixed: &str) {
    rename_save(
        &daemon.path("config.yaml"),
        &(config.to_owned() + "limits:\n  max_body_bytez: 1\n"),
    );
    let began = Instant::now();
    while daemon.config_status().await["last_reload_error"].is_null() {
        assert!(began.elapsed() < WAIT, "the invalid edit was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rename_save(&daemon.path("config.yaml"), fixed);
}

/// Waits until the flooding server has written its last line, checking meanwhile that the
/// daemon serves `GET /health`, and checks that the stderr tail stays capped.
async fn check_flood(daemon: &Daemon) {
    daemon.wait_running("flood").await;
    let started = Instant::now();
    let status = loop {
        let health = daemon.get("/health", ADMIN_KEY).await;
        assert_eq!(
            health.status(),
            StatusCode::OK,
            "the daemon serves during the flood"
        );
        let status = daemon.extension("flood").await;
        let tail = status["stderr_tail"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if tail.last().is_some_and(|line| line == "flood done") {
            break status;
        }
        assert!(
            started.elapsed() < EXTENSION_WAIT,
            "the flood did not end: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tail = status["stderr_tail"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tail.len(), STDERR_TAIL_LINES, "{status:#}");
    for line in &tail {
        let length = line.as_str().map_or(usize::MAX, str::len);
        assert!(
            length <= MAX_STDERR_LINE,
            "stderr line of {length} bytes kept"
        );
    }
    assert_eq!(status["state"], "running", "{status:#}");
    let flood_lines = daemon
        .stderr_text()
        .lines()
        .filter(|line| line.contains("flood line"))
        .count();
    assert_eq!(
        flood_lines, 0,
        "server stderr reached the daemon's log at info"
    );
}

/// Starts `count` sessions, each with one plain turn, and returns their ids.
async fn start_sessions(daemon: &Daemon, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
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

/// Returns the process groups of the daemon's extension servers once the servers that
/// never crash run and every exited server is reaped.
async fn server_groups(daemon: &Daemon) -> Vec<i32> {
    for name in ["rust", "hang", "wrapped"] {
        daemon.wait_running(name).await;
    }
    wait_no_zombies(daemon.pid()).await;
    let groups = child_groups(daemon.pid());
    assert!(!groups.is_empty(), "the stdio servers are not children");
    groups
}

/// Returns the process group of the `wrapped` server, once it runs with its background
/// `sleep`.
async fn wrapped_group(daemon: &Daemon) -> i32 {
    daemon.wait_running("wrapped").await;
    let pid = daemon.call_text("wrapped", "pid", json!({})).await;
    let group: i32 = pid.parse().expect("the server's pid");
    let members = group_members(group);
    assert!(
        members.len() >= 2,
        "server and sleep in group {group}: {members:?}"
    );
    group
}

/// Results of the fault phase that the later checks use.
struct FaultPhase {
    /// Responses the turn clients received.
    observed: Observed,
    /// Responses the direct tool calls received.
    direct: DirectCalls,
    /// aimock's request journal at the end of the phase.
    journal: Vec<Value>,
}

/// Runs the turn clients in `ids`, the direct tool calls and the provider faults at once,
/// saves an invalid config and then `fixed_config`, which adds the flooding server, and
/// checks the flood. Returns when every client is done and the queued errors are drained.
async fn run_faults(
    daemon: &Daemon,
    http: &reqwest::Client,
    aimock: &Aimock,
    ids: &[String],
    initial_config: &str,
    fixed_config: &str,
) -> FaultPhase {
    let (json_ids, sse_ids) = ids.split_at(JSON_SESSIONS);
    let running = Arc::new(AtomicBool::new(true));
    let injector = Injector::new(http.clone(), &aimock.url);
    let injecting = tokio::spawn(provider::inject_while(injector.clone(), running.clone()));
    let observed: SharedObserved = Arc::new(Mutex::new(Observed::default()));
    let base_url = &daemon.base_url;
    let mut turns =
        clients::spawn_clients(http, base_url, json_ids, JSON_PROMPTS, false, &observed);
    let streams = clients::spawn_clients(http, base_url, sse_ids, SSE_PROMPTS, true, &observed);
    turns.extend(streams);
    let direct = tokio::spawn(clients::direct_calls(
        http.clone(),
        base_url.clone(),
        running.clone(),
    ));
    invalid_edit_and_fix(daemon, initial_config, fixed_config).await;
    check_flood(daemon).await;

    for turn in turns {
        turn.await.expect("client task");
    }
    running.store(false, Ordering::SeqCst);
    let queued = injecting.await.expect("injector task");
    assert!(queued > 0, "no provider error was queued");
    let journal = injector.journal().await;
    injector.drain().await;
    let direct = direct.await.expect("direct call task");
    let observed = Arc::into_inner(observed)
        .expect("every client ended")
        .into_inner()
        .expect("observed");
    FaultPhase {
        observed,
        direct,
        journal,
    }
}

/// Asserts that every client got well-formed responses and no 500, that the streams and
/// direct calls reported the faults, and that every kind of provider fault showed.
fn assert_clients_served(daemon: &Daemon, faults: &FaultPhase) {
    let FaultPhase {
        observed,
        direct,
        journal,
    } = faults;
    let errors: Vec<String> = daemon
        .stderr_text()
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\"") && line.contains("request failed"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        observed.malformed,
        Vec::<String>::new(),
        "every turn gets an answer or a JSON error other than 500; errors:\n{}",
        errors.join("\n")
    );
    let turn_count = JSON_SESSIONS * JSON_PROMPTS.len() + SSE_SESSIONS * SSE_PROMPTS.len();
    assert_eq!(observed.answered, turn_count);
    // Every streamed turn of a cut or stalled response fails, so error events must show.
    assert!(
        observed.streams_failed > 0,
        "no stream ended with an error event; {} finished",
        observed.streams_finished
    );
    assert_faults_seen(journal, observed);
    assert_eq!(
        direct.malformed,
        Vec::<String>::new(),
        "every direct tool call gets a result or a JSON error other than 500; errors:\n{}",
        errors.join("\n")
    );
    assert_eq!(
        direct.panics_other,
        Vec::<String>::new(),
        "a panic is a 502 error"
    );
    assert!(
        direct.panics_contained > 0,
        "the panicking tool was called directly"
    );
    assert_eq!(
        direct.hangs_other,
        Vec::<String>::new(),
        "a hung call is a 504 error"
    );
    assert!(
        direct.hangs_timed_out > 0,
        "the hanging tool was called directly"
    );
}

/// Asserts that every kind of provider fault reached the daemon and was retried or
/// reported to a client.
fn assert_faults_seen(journal: &[Value], observed: &Observed) {
    let found = provider::evidence(journal, &observed.provider_errors, STALL_PROMPT);
    eprintln!("provider faults: {found:#?}");
    for fault in Fault::ALL {
        let evidence = found[&fault];
        assert!(
            evidence.served > 0,
            "aimock never served {fault:?}: {found:?}"
        );
        assert!(
            evidence.retried + evidence.reported > 0,
            "no client saw {fault:?} and the daemon never retried it: {found:?}\nerrors: {:#?}",
            observed.provider_errors
        );
    }
}

/// Asserts that the agent's calls of the hanging, crashing and panicking tools are stored
/// as failed results whose text names the cause.
fn assert_tool_failures_stored(histories: &[Vec<Value>]) {
    let cases = [
        ("hang__sleep", "timed out"),
        ("crash__crash", "extension crash is unavailable"),
        ("demo__panic", "panicked"),
    ];
    for (tool, reason) in cases {
        let results = history::tool_results(histories, tool);
        assert!(!results.is_empty(), "no stored result of {tool}");
        for result in &results {
            assert!(result.is_error, "{tool} succeeded: {result:?}");
            assert!(result.content.contains(reason), "{tool} result: {result:?}");
        }
    }
}

/// Asserts that the crashing server's crash shows in its status.
async fn assert_crash_reported(daemon: &Daemon) {
    let status = daemon.extension("crash").await;
    let last_error = status["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("exited with status 7"), "{status:#}");
    assert!(last_error.contains("crashing on request"), "{status:#}");
    assert!(status["restarts"].as_u64() > Some(0), "{status:#}");
}

#[tokio::test]
async fn daemon_survives_faults_and_kill() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = dir.path().join("fixtures.json");
    std::fs::write(&fixtures, FIXTURES).expect("write fixtures");
    let aimock = Aimock::start_with(&fixtures, &["--latency", "20", "--chunk-size", "8"]);
    let initial_config = config(&aimock, false);
    let fixed_config = config(&aimock, true);
    let daemon = Daemon::launch(launch(&initial_config)).await;
    for name in ["rust", "crash", "hang", "wrapped", "demo"] {
        daemon.wait_running(name).await;
    }
    let ids = start_sessions(&daemon, JSON_SESSIONS + SSE_SESSIONS).await;
    let (json_ids, sse_ids) = ids.split_at(JSON_SESSIONS);

    // Turns here wait for retries and tool timeouts, which on a busy machine can take longer
    // than the helper client's timeout.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build HTTP client");
    let faults = run_faults(
        &daemon,
        &http,
        &aimock,
        &ids,
        &initial_config,
        &fixed_config,
    )
    .await;
    assert_clients_served(&daemon, &faults);
    assert_crash_reported(&daemon).await;
    assert_eq!(daemon.extension("demo").await["state"], "running");
    let health = daemon.get("/health", ADMIN_KEY).await;
    assert_eq!(health.status(), StatusCode::OK, "the daemon still serves");

    // Kill the daemon while two turns wait for a tool, after their prompts and tool
    // requests are stored, and restart it.
    let base_url = daemon.base_url.clone();
    let after_faults = history::session_messages(&daemon, &ids).await;
    let groups = server_groups(&daemon).await;
    let wrapped = wrapped_group(&daemon).await;
    let in_flight_json = tokio::spawn({
        let (http, base_url, id) = (http.clone(), base_url.clone(), json_ids[0].clone());
        async move { clients::json_turn(&http, &base_url, &id, KILLED_PROMPT).await }
    });
    let in_flight_sse = tokio::spawn({
        let (http, base_url, id) = (http.clone(), base_url.clone(), sse_ids[0].clone());
        async move { clients::sse_turn(&http, &base_url, &id, KILLED_PROMPT).await }
    });
    history::wait_tool_request(&daemon, &json_ids[0], "wrapped__sleep").await;
    history::wait_tool_request(&daemon, &sse_ids[0], "wrapped__sleep").await;
    let before_kill = history::session_messages(&daemon, &ids).await;
    let dir = daemon.kill_keeping_dir();
    let _ = in_flight_json.await;
    let _ = in_flight_sse.await;
    // A server ends when it reads the end of its stdin, but the wrapped server's sleep
    // stays until the restarted daemon finds it.
    for &group in groups.iter().filter(|&&group| group != wrapped) {
        wait_group_gone(group).await;
    }

    let mut restarted = Daemon::launch(Launch {
        dir: Some(dir),
        ..launch(&fixed_config)
    })
    .await;
    wait_group_gone(wrapped).await;
    let after_restart = history::session_messages(&restarted, &ids).await;
    history::assert_prefixes(&ids, &after_faults, &before_kill, "after the faults");
    history::assert_prefixes(&ids, &before_kill, &after_restart, "before the kill");
    history::assert_answers_stored(&ids, &after_restart, &faults.observed.answers);
    history::assert_no_partial_messages(&ids, &after_restart, &NEVER_STORED, &[PLAIN_ANSWER]);
    assert_tool_failures_stored(&after_restart);
    let store_check =
        goose_api::store::Store::open("sqlite://data/goose-api.db", restarted.dir.path())
            .await
            .expect("open the store");
    assert_eq!(
        store_check.integrity_check().await.expect("check"),
        Vec::<String>::new()
    );
    store_check.close().await;
    let (status, body) = clients::json_turn(
        &restarted.http,
        &restarted.base_url,
        &ids[0],
        "plain question",
    )
    .await
    .expect("reply after restart");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(clients::well_formed_turn(status, &body), "{body}");

    // A clean shutdown stops every server and leaves no process of their groups.
    let groups = server_groups(&restarted).await;
    restarted.signal(Signal::SIGTERM);
    let exit = restarted.wait_exit().await;
    assert!(exit.success(), "{exit}\n{}", restarted.stderr_text());
    for group in groups {
        wait_group_gone(group).await;
    }
}

#[tokio::test]
async fn restart_spares_live_replica_servers() {
    let config = config_with_key(&format!("extensions:\n{}", wrapped_extension(5)));
    let killed = Daemon::launch(launch(&config)).await;
    let replica = Daemon::launch(launch(&config)).await;
    let killed_group = wrapped_group(&killed).await;
    let replica_group = wrapped_group(&replica).await;
    let replica_members = group_members(replica_group);

    let dir = killed.kill_keeping_dir();
    let mut restarted = Daemon::launch(Launch {
        dir: Some(dir),
        ..launch(&config)
    })
    .await;
    wait_group_gone(killed_group).await;
    restarted.wait_running("wrapped").await;
    assert_eq!(
        group_members(replica_group),
        replica_members,
        "the restart stopped processes of a live daemon"
    );
    assert_eq!(
        replica
            .call_text("wrapped", "echo", json!({"text": "still here"}))
            .await,
        "still here"
    );

    let mut replica = replica;
    for daemon in [&mut restarted, &mut replica] {
        let groups = child_groups(daemon.pid());
        daemon.signal(Signal::SIGTERM);
        let exit = daemon.wait_exit().await;
        assert!(exit.success(), "{exit}\n{}", daemon.stderr_text());
        for group in groups {
            wait_group_gone(group).await;
        }
    }
}
