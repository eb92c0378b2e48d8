//! The session store on SQLite, and on PostgreSQL when `GOOSE_API_TEST_POSTGRES_URL` is set.

use goose_api::agent::{ContentPart, Message, Role, Usage};
use goose_api::store::{NewSession, Store};
use sqlx::Executor;

/// Variable naming a PostgreSQL database for these tests; `.ci/run` sets it.
const POSTGRES_VARIABLE: &str = "GOOSE_API_TEST_POSTGRES_URL";

/// A store on a fresh database: a SQLite file, or a new schema in the PostgreSQL database.
struct TestStore {
    store: Store,
    _dir: tempfile::TempDir,
    label: &'static str,
    /// The PostgreSQL URL and schema to drop at the end.
    postgres: Option<(String, String)>,
}

impl TestStore {
    /// Closes the store and drops its PostgreSQL schema.
    async fn finish(self) {
        self.store.close().await;
        if let Some((url, schema)) = self.postgres {
            let admin = sqlx::AnyPool::connect(&url)
                .await
                .expect("connect to PostgreSQL");
            let statement = format!("DROP SCHEMA {schema} CASCADE");
            admin
                .execute(statement.as_str())
                .await
                .expect("drop the test schema");
            admin.close().await;
        }
    }
}

async fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open("sqlite://data/test.db", dir.path())
        .await
        .expect("open the SQLite store");
    TestStore {
        store,
        _dir: dir,
        label: "sqlite",
        postgres: None,
    }
}

async fn postgres_store() -> Option<TestStore> {
    let url = std::env::var(POSTGRES_VARIABLE).ok()?;
    sqlx::any::install_default_drivers();
    let schema = format!("goose_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::AnyPool::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .expect("create a test schema");
    admin.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&scoped, dir.path())
        .await
        .expect("open the PostgreSQL store");
    Some(TestStore {
        store,
        _dir: dir,
        label: "postgres",
        postgres: Some((url, schema)),
    })
}

/// Returns the stores to test: SQLite always, PostgreSQL when configured.
async fn stores() -> Vec<TestStore> {
    let mut stores = vec![sqlite_store().await];
    stores.extend(postgres_store().await);
    stores
}

fn new_session(owner: &str, title: &str) -> NewSession {
    NewSession {
        owner: owner.to_owned(),
        title: title.to_owned(),
        provider: "openai".to_owned(),
        model: "m".to_owned(),
        model_override: None,
        instructions: String::new(),
        extensions: Some(vec!["files".to_owned()]),
    }
}

#[tokio::test]
async fn messages_round_trip_in_order() {
    for test_store in stores().await {
        let (store, label) = (&test_store.store, test_store.label);
        let session = store
            .create_session(new_session("alice", "t"))
            .await
            .expect("create");
        let messages = [
            Message::user("question"),
            Message {
                role: Role::Assistant,
                content: vec![ContentPart::ToolRequest {
                    id: "c1".to_owned(),
                    name: "files__read".to_owned(),
                    arguments: serde_json::json!({"path": "ü.txt"}),
                }],
            },
            Message::assistant("answer"),
        ];
        for (index, message) in messages.iter().enumerate() {
            let seq = store
                .append_message(&session.id, message, None)
                .await
                .expect("append");
            assert_eq!(seq, index as i64 + 1, "{label}");
        }
        store
            .record_turn(
                &session.id,
                Usage {
                    input_tokens: 7,
                    output_tokens: 3,
                },
                "anthropic",
                "m2",
            )
            .await
            .expect("record usage");
        let stored = store
            .session(&session.id)
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(stored.message_count, 3, "{label}");
        assert_eq!(stored.input_tokens, 7, "{label}");
        assert_eq!(stored.provider, "anthropic", "{label}");
        assert_eq!(stored.extensions, Some(vec!["files".to_owned()]), "{label}");
        let history = store.history(&session.id).await.expect("history");
        let loaded: Vec<Message> = history.into_iter().map(|(_, message)| message).collect();
        assert_eq!(loaded, messages, "{label}");
        assert_eq!(
            store.integrity_check().await.expect("check"),
            Vec::<String>::new(),
            "{label}"
        );
        test_store.finish().await;
    }
}

#[tokio::test]
async fn summary_replaces_earlier_messages_in_history() {
    for test_store in stores().await {
        let (store, label) = (&test_store.store, test_store.label);
        let session = store
            .create_session(new_session("alice", "t"))
            .await
            .expect("create");
        for text in ["one", "two", "three"] {
            store
                .append_message(&session.id, &Message::user(text), None)
                .await
                .expect("append");
        }
        let summary = Message::user("Summary of the earlier conversation:\none and two");
        store
            .append_message(&session.id, &summary, Some(2))
            .await
            .expect("summary");
        store
            .append_message(&session.id, &Message::user("four"), None)
            .await
            .expect("append");
        let texts: Vec<String> = store
            .history(&session.id)
            .await
            .expect("history")
            .iter()
            .map(|(_, message)| message.text())
            .collect();
        assert_eq!(texts.len(), 3, "{label}: {texts:?}");
        assert!(texts[0].starts_with("Summary"), "{label}: {texts:?}");
        assert_eq!(
            texts[1..],
            ["three".to_owned(), "four".to_owned()],
            "{label}"
        );
        let all = store.messages(&session.id, 0, 100).await.expect("messages");
        assert_eq!(all.len(), 5, "{label}: every message stays readable");
        test_store.finish().await;
    }
}

#[tokio::test]
async fn listing_pages_newest_first_per_owner() {
    for test_store in stores().await {
        let (store, label) = (&test_store.store, test_store.label);
        let mut created = Vec::new();
        for index in 0..5 {
            let session = store
                .create_session(new_session("alice", &format!("s{index}")))
                .await
                .expect("create");
            created.push(session.id);
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        store
            .create_session(new_session("bob", "other"))
            .await
            .expect("create");
        let first = store
            .list_sessions(Some("alice"), None, 2)
            .await
            .expect("page 1");
        let last = first.last().expect("page 1 has sessions");
        let second = store
            .list_sessions(Some("alice"), Some((last.created_at, last.id.clone())), 10)
            .await
            .expect("page 2");
        let titles: Vec<String> = first
            .iter()
            .chain(&second)
            .map(|s| s.title.clone())
            .collect();
        assert_eq!(titles, ["s4", "s3", "s2", "s1", "s0"], "{label}");
        let latest = store
            .latest_session("alice")
            .await
            .expect("latest")
            .expect("exists");
        assert_eq!(latest.title, "s4", "{label}");
        assert_eq!(
            store
                .list_sessions(None, None, 100)
                .await
                .expect("all")
                .len(),
            6,
            "{label}"
        );
        test_store.finish().await;
    }
}

#[tokio::test]
async fn delete_removes_session_and_messages() {
    for test_store in stores().await {
        let (store, label) = (&test_store.store, test_store.label);
        let session = store
            .create_session(new_session("alice", "t"))
            .await
            .expect("create");
        store
            .append_message(&session.id, &Message::user("x"), None)
            .await
            .expect("append");
        assert!(
            store.delete_session(&session.id).await.expect("delete"),
            "{label}"
        );
        assert!(
            !store
                .delete_session(&session.id)
                .await
                .expect("delete again"),
            "{label}"
        );
        assert_eq!(
            store.session(&session.id).await.expect("read"),
            None,
            "{label}"
        );
        assert!(
            store
                .messages(&session.id, 0, 10)
                .await
                .expect("messages")
                .is_empty(),
            "{label}"
        );
        assert_eq!(
            store.integrity_check().await.expect("check"),
            Vec::<String>::new(),
            "{label}"
        );
        test_store.finish().await;
    }
}

#[tokio::test]
async fn postgres_is_tested_when_configured() {
    // Makes a missing PostgreSQL run visible in the output instead of silently passing.
    match std::env::var(POSTGRES_VARIABLE) {
        Ok(_) => {
            let store = postgres_store().await.expect("PostgreSQL store");
            store.finish().await;
        }
        Err(_) => eprintln!("{POSTGRES_VARIABLE} is not set; the store tests ran on SQLite only"),
    }
}

#[tokio::test]
async fn key_usage_sums_turns_and_survives_delete() {
    for test_store in stores().await {
        let (store, label) = (&test_store.store, test_store.label);
        let first = store
            .create_session(new_session("alice", "one"))
            .await
            .expect("create");
        let second = store
            .create_session(new_session("alice", "two"))
            .await
            .expect("create");
        let turns = [(&first.id, 5, 2), (&second.id, 7, 3), (&first.id, 1, 1)];
        for (id, input_tokens, output_tokens) in turns {
            let usage = Usage {
                input_tokens,
                output_tokens,
            };
            store
                .record_turn(id, usage, "openai", "m")
                .await
                .expect("record usage");
        }
        store.delete_session(&first.id).await.expect("delete");

        let alice = store.key_usage("alice").await.expect("read usage");
        assert_eq!(alice.key, "alice", "{label}");
        assert_eq!(alice.input_tokens, 13, "{label}");
        assert_eq!(alice.output_tokens, 6, "{label}");
        let bob = store.key_usage("bob").await.expect("read usage");
        assert_eq!(bob.input_tokens, 0, "{label}");
        assert_eq!(bob.output_tokens, 0, "{label}");
        test_store.finish().await;
    }
}

#[tokio::test]
async fn turn_lock_excludes_other_connections() {
    for test_store in stores().await {
        let (store, label) = (&test_store.store, test_store.label);
        let session = store
            .create_session(new_session("alice", "t"))
            .await
            .expect("create");
        let held = store.try_lock_session(&session.id).await.expect("lock");
        let held = held.expect("the first lock is granted");
        let second = store.try_lock_session(&session.id).await.expect("lock");
        if label == "postgres" {
            assert!(second.is_none(), "a second connection got the lock");
        } else {
            // SQLite has one daemon per file, whose in-process lock excludes other turns.
            assert!(second.is_some(), "{label}");
        }
        drop(second);
        held.release().await;
        let again = store.try_lock_session(&session.id).await.expect("lock");
        assert!(
            again.is_some(),
            "{label}: the released lock is granted again"
        );
        if let Some(again) = again {
            again.release().await;
        }
        test_store.finish().await;
    }
}
