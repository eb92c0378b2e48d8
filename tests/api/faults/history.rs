//! Stored session histories and the checks that nothing committed is lost and nothing
//! incomplete is stored.

use std::time::Instant;

use serde_json::Value;

use crate::helpers::{ADMIN_KEY, Daemon};
use crate::peers::EXTENSION_WAIT;

/// Returns the messages of each session, as `GET /sessions/{id}` lists them.
pub async fn session_messages(daemon: &Daemon, ids: &[String]) -> Vec<Vec<Value>> {
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

/// Returns the text parts of a stored message, joined.
fn text_of(message: &Value) -> String {
    let parts = message["content"].as_array().cloned().unwrap_or_default();
    parts
        .iter()
        .filter(|part| part["type"] == "text")
        .filter_map(|part| part["text"].as_str().map(str::to_owned))
        .collect()
}

/// Returns the names of the tool requests in a stored message.
fn tool_requests(message: &Value) -> Vec<String> {
    let parts = message["content"].as_array().cloned().unwrap_or_default();
    parts
        .iter()
        .filter(|part| part["type"] == "tool_request")
        .filter_map(|part| part["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until the last stored message of session `id` is an assistant message that
/// requests `tool`, which the turn stores before it calls the tool.
pub async fn wait_tool_request(daemon: &Daemon, id: &str, tool: &str) {
    let started = Instant::now();
    loop {
        let messages = session_messages(daemon, &[id.to_owned()]).await.remove(0);
        let requested = messages.last().is_some_and(|last| {
            last["role"] == "assistant" && tool_requests(last).iter().any(|name| name == tool)
        });
        if requested {
            return;
        }
        assert!(
            started.elapsed() < EXTENSION_WAIT,
            "session {id} did not store a request of {tool}: {messages:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Asserts that each session's history in `earlier` is a prefix of its history in
/// `later`. `moment` names the earlier reading in messages.
pub fn assert_prefixes(ids: &[String], earlier: &[Vec<Value>], later: &[Vec<Value>], moment: &str) {
    for ((id, before), after) in ids.iter().zip(earlier).zip(later) {
        assert!(
            after.len() >= before.len(),
            "session {id} lost messages stored {moment}: {} then, {} now",
            before.len(),
            after.len()
        );
        assert_eq!(
            after[..before.len()],
            before[..],
            "session {id} changed messages stored {moment}"
        );
    }
}

/// Asserts that the reply text of every turn that succeeded is an assistant message of its
/// session in `histories`, whose order follows `ids`.
pub fn assert_answers_stored(
    ids: &[String],
    histories: &[Vec<Value>],
    answers: &[(String, String)],
) {
    for (id, answer) in answers {
        let index = ids
            .iter()
            .position(|known| known == id)
            .expect("a known session");
        let stored = histories[index]
            .iter()
            .any(|message| message["role"] == "assistant" && text_of(message) == *answer);
        assert!(
            stored,
            "session {id} has no stored message with the answer {answer:?}"
        );
    }
}

/// Asserts that no stored message contains any of `never_stored`, the texts of responses
/// that never arrive whole. Also asserts that the text of every assistant message is
/// empty, one of `complete_answers`, or the note of a turn that reached the step limit.
pub fn assert_no_partial_messages(
    ids: &[String],
    histories: &[Vec<Value>],
    never_stored: &[&str],
    complete_answers: &[&str],
) {
    for (id, messages) in ids.iter().zip(histories) {
        for message in messages {
            let serialized = message.to_string();
            for text in never_stored {
                assert!(
                    !serialized.contains(text),
                    "session {id} stored part of a response that never completed: {message}"
                );
            }
            if message["role"] != "assistant" {
                continue;
            }
            let text = text_of(message);
            let known = text.is_empty()
                || complete_answers.contains(&text.as_str())
                || text.starts_with("Stopped after");
            assert!(known, "session {id} stored an unexpected answer {text:?}");
        }
    }
}

/// A stored tool result: whether it is an error, and its content as JSON text.
#[derive(Debug)]
pub struct ToolResult {
    /// `is_error` of the result.
    pub is_error: bool,
    /// The result's content parts, serialized.
    pub content: String,
}

/// Returns the stored results of every request of `tool` in `histories`.
pub fn tool_results(histories: &[Vec<Value>], tool: &str) -> Vec<ToolResult> {
    let parts: Vec<&Value> = histories
        .iter()
        .flatten()
        .filter_map(|message| message["content"].as_array())
        .flatten()
        .collect();
    let request_ids: Vec<&Value> = parts
        .iter()
        .filter(|part| part["type"] == "tool_request" && part["name"] == tool)
        .map(|part| &part["id"])
        .collect();
    parts
        .iter()
        .filter(|part| part["type"] == "tool_result" && request_ids.contains(&&part["id"]))
        .map(|part| ToolResult {
            is_error: part["is_error"] == true,
            content: part["content"].to_string(),
        })
        .collect()
}
