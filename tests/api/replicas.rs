//! Three daemons sharing one PostgreSQL store, as replicas behind a load balancer.

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, WAIT};
use crate::postgres::TestSchema;

const ALICE_KEY: &str = "alice-key-0123456789abcdef";

/// The slow reply streams in about 40 chunks, so a turn is still running while the test
/// sends its other requests; no check depends on how long it takes.
const FIXTURES: &str = r#"{"fixtures": [
  {"match": {"userMessage": "hello there"}, "response": {"content": "Hi from aimock."}},
  {"match": {"userMessage": "second question"}, "response": {"content": "Second answer."}},
  {"match": {"userMessage": "third question"}, "response": {"content": "Third answer."}},
  {"match": {"userMessage": "fourth question"}, "response": {"content": "Fourth answer."}},
  {"match": {"userMessage": "slow please"},
   "response": {"content": "This answer streams slowly, one small piece at a time, on purpose, so that the turn is still running while other replicas are asked to continue the same session."}}
]}"#;

struct Cluster {
    aimock: Aimock,
    replicas: Vec<Daemon>,
    _fixtures: tempfile::TempDir,
    /// Dropped last, after the daemons have closed their connections.
    _schema: TestSchema,
}

/// Starts aimock and three replicas on one schema; `None` when PostgreSQL is not set up.
async fn cluster(test: &str, aimock_args: &[&str]) -> Option<Cluster> {
    let schema = TestSchema::create(test).await?;
    let fixtures = tempfile::tempdir().expect("temporary directory");
    let path = fixtures.path().join("fixtures.json");
    std::fs::write(&path, FIXTURES).expect("write fixtures");
    let aimock = Aimock::start_with(&path, aimock_args);
    let config = format!(
        "port: 0\napi_key: {ADMIN_KEY}\napi_keys:\n  - name: alice\n    key: {ALICE_KEY}\n\
         provider: openai\nmodel: mock-model\nproviders:\n  openai:\n    base_url: {}/v1\n    \
         api_key: mock-provider-key\nstore:\n  url: \"{}\"\nlog:\n  format: json\n",
        aimock.url, schema.url
    );
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(Daemon::start(&config).await);
    }
    Some(Cluster {
        aimock,
        replicas,
        _fixtures: fixtures,
        _schema: schema,
    })
}

async fn post(daemon: &Daemon, path: &str, body: Value) -> (StatusCode, Value) {
    daemon.post_value(path, ALICE_KEY, body).await
}

async fn start_session(daemon: &Daemon) -> String {
    let (status, started) = post(daemon, "/session/start", json!({"prompt": "hello there"})).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    started["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn reply(daemon: &Daemon, id: &str, prompt: &str) -> (StatusCode, Value) {
    let body = json!({"session_id": id, "prompt": prompt});
    post(daemon, "/session/reply", body).await
}

async fn message_texts(daemon: &Daemon, id: &str) -> Vec<String> {
    let detail: Value = daemon
        .get(&format!("/sessions/{id}"), ALICE_KEY)
        .await
        .json()
        .await
        .expect("session JSON");
    detail["messages"]
        .as_array()
        .map(|all| {
            all.iter()
                .map(|m| m["content"][0]["text"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts a streamed turn and returns the response once its first text event arrived, so
/// the turn keeps the session locked while the caller goes on.
async fn start_streamed_turn(daemon: &Daemon, id: &str, prompt: &str) -> reqwest::Response {
    let mut response = daemon
        .http
        .post(daemon.url(&format!("/sessions/{id}/reply")))
        .header("x-api-key", ALICE_KEY)
        .header("accept", "text/event-stream")
        .timeout(WAIT * 3)
        .json(&json!({"prompt": prompt}))
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
async fn session_continues_on_other_replicas() {
    let Some(cluster) = cluster("session_continues_on_other_replicas", &[]).await else {
        return;
    };
    let [a, b, c] = &cluster.replicas[..] else {
        unreachable!("three replicas")
    };
    let id = start_session(a).await;
    let (status, body) = reply(b, &id, "second question").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Second answer.");
    let (status, body) = reply(c, &id, "third question").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Replica a still caches the session as it was after the first turn.
    let (status, body) = reply(a, &id, "fourth question").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Fourth answer.");

    let texts = message_texts(b, &id).await;
    assert_eq!(
        texts,
        [
            "hello there",
            "Hi from aimock.",
            "second question",
            "Second answer.",
            "third question",
            "Third answer.",
            "fourth question",
            "Fourth answer."
        ]
    );
    let journal: Value = reqwest::get(format!("{}/__aimock/journal", cluster.aimock.url))
        .await
        .expect("read the aimock journal")
        .json()
        .await
        .expect("journal JSON");
    let entries = journal.as_array().cloned().unwrap_or_default();
    let last_turn = entries
        .iter()
        .map(Value::to_string)
        .find(|entry| entry.contains("fourth question"))
        .expect("the provider saw the fourth prompt");
    for earlier in [
        "hello there",
        "Second answer.",
        "third question",
        "Third answer.",
    ] {
        assert!(
            last_turn.contains(earlier),
            "replica a sent the provider a history without {earlier:?}: {last_turn}"
        );
    }
}

#[tokio::test]
async fn second_replica_gets_409_during_turn() {
    let latency = ["--latency", "100", "--chunk-size", "4"];
    let Some(cluster) = cluster("second_replica_gets_409_during_turn", &latency).await else {
        return;
    };
    let [a, b, c] = &cluster.replicas[..] else {
        unreachable!("three replicas")
    };
    let id = start_session(a).await;
    let running = start_streamed_turn(a, &id, "slow please").await;

    for other in [b, c] {
        let (status, body) = reply(other, &id, "second question").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "conflict");
    }
    let rest: Vec<_> = running.bytes_stream().collect().await;
    assert!(rest.iter().all(Result::is_ok), "the running turn finished");

    let (status, body) = reply(b, &id, "second question").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let texts = message_texts(c, &id).await;
    assert_eq!(texts.len(), 6, "{texts:?}");
    assert_eq!(texts[2], "slow please");
    assert_eq!(
        texts[4], "second question",
        "the rejected prompts were not stored"
    );
}

#[tokio::test]
async fn killed_replica_releases_its_session() {
    let latency = ["--latency", "100", "--chunk-size", "4"];
    let Some(mut cluster) = cluster("killed_replica_releases_its_session", &latency).await else {
        return;
    };
    let id = start_session(&cluster.replicas[0]).await;
    let running = start_streamed_turn(&cluster.replicas[0], &id, "slow please").await;
    let (status, body) = reply(&cluster.replicas[1], &id, "second question").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let killed = cluster.replicas.remove(0);
    let _dir = killed.kill_keeping_dir();
    drop(running);

    // PostgreSQL releases the lock once it detects that the killed replica's connection
    // closed, which takes a moment, so the survivor retries until then.
    let survivor = &cluster.replicas[0];
    let started = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = reply(survivor, &id, "second question").await;
        if status != StatusCode::CONFLICT || started.elapsed() > WAIT {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Second answer.");
    let texts = message_texts(&cluster.replicas[1], &id).await;
    assert_eq!(
        texts,
        [
            "hello there",
            "Hi from aimock.",
            "slow please",
            "second question",
            "Second answer."
        ],
        "the killed turn kept its prompt and lost only its unfinished answer"
    );
}
