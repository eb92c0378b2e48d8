//! The agent loop against real HTTP servers that speak each provider's wire protocol.

mod aimock;
mod fake_provider;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use goose_api::agent::{
    ContentPart, GenaiProvider, Message, ProviderError, Role, ToolChoice, Turn, TurnEnd, TurnEvent,
    TurnOutcome, TurnSettings,
};
use goose_api::config::model::ProviderConfig;
use goose_api::config::{ProviderKind, Secret};
use goose_api::tools::{ToolCallFuture, ToolDefinition, ToolError, ToolOutput, ToolSource};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use fake_provider::{
    FakeProvider, Reply, anthropic_event, openai_chunk, openai_done, openai_text_reply,
    openai_usage_chunk,
};

/// Tools for the tests: `calc__add` adds `a` and `b`, `calc__now` takes no arguments,
/// `slow__wait` waits until cancelled, `big__dump` returns `size` characters.
#[derive(Debug, Default)]
struct TestTools {
    calls: Mutex<Vec<(String, Value)>>,
}

impl TestTools {
    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().expect("calls").clone()
    }
}

fn definition(extension: &str, tool: &str) -> ToolDefinition {
    ToolDefinition {
        extension: extension.to_owned(),
        tool: tool.to_owned(),
        description: format!("test tool {tool}"),
        input_schema: json!({"type": "object"}),
    }
}

impl ToolSource for TestTools {
    fn tools(&self) -> Vec<ToolDefinition> {
        vec![
            definition("calc", "add"),
            definition("calc", "now"),
            definition("slow", "wait"),
            definition("big", "dump"),
        ]
    }

    fn call<'a>(
        &'a self,
        extension: &'a str,
        tool: &'a str,
        arguments: Value,
        cancel: CancellationToken,
    ) -> ToolCallFuture<'a> {
        Box::pin(async move {
            let name = format!("{extension}__{tool}");
            self.calls
                .lock()
                .expect("calls")
                .push((name.clone(), arguments.clone()));
            match name.as_str() {
                "calc__add" => {
                    let sum =
                        arguments["a"].as_i64().unwrap_or(0) + arguments["b"].as_i64().unwrap_or(0);
                    Ok(ToolOutput::text(sum.to_string()))
                }
                "calc__now" => Ok(ToolOutput::text("noon")),
                "slow__wait" => {
                    cancel.cancelled().await;
                    Err(ToolError::Cancelled)
                }
                "big__dump" => {
                    let size = arguments["size"].as_u64().unwrap_or(0) as usize;
                    Ok(ToolOutput::text("y".repeat(size)))
                }
                _ => Err(ToolError::NotFound {
                    extension: extension.to_owned(),
                    tool: tool.to_owned(),
                }),
            }
        })
    }
}

fn settings() -> TurnSettings {
    TurnSettings {
        model: "test-model".to_owned(),
        system_prompt: "You are a test.".to_owned(),
        tool_choice: ToolChoice::Auto,
        later_tool_choice: ToolChoice::Auto,
        max_steps: 5,
        max_tool_output_chars: 1_000,
        context_limit: None,
        summarize_threshold: 0.8,
        max_retries: 2,
        allowed_extensions: None,
    }
}

fn provider(kind: ProviderKind, base_url: String) -> GenaiProvider {
    let config = ProviderConfig {
        base_url: Some(base_url),
        api_key: Some(Secret::new("sk-test-secret-key")),
        ..ProviderConfig::default()
    };
    GenaiProvider::new(kind, &config).expect("build provider")
}

/// Runs one turn with `prompt` and returns the outcome, the history and the events.
async fn run(
    provider: &GenaiProvider,
    tools: &TestTools,
    settings: &TurnSettings,
    history: &mut Vec<Message>,
    cancel: &CancellationToken,
) -> (Result<TurnOutcome, ProviderError>, Vec<TurnEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let on_event = move |event: TurnEvent| sink.lock().expect("events").push(event);
    let turn = Turn {
        provider,
        tools,
        settings,
        on_event: &on_event,
        cancel,
    };
    let outcome = turn.run(history).await;
    let events = events.lock().expect("events").clone();
    (outcome, events)
}

fn tool_call_delta(index: u64, id: Option<&str>, name: Option<&str>, arguments: &str) -> Value {
    let mut call =
        json!({"index": index, "type": "function", "function": {"arguments": arguments}});
    if let Some(id) = id {
        call["id"] = json!(id);
    }
    if let Some(name) = name {
        call["function"]["name"] = json!(name);
    }
    json!({"tool_calls": [call]})
}

#[tokio::test]
async fn openai_fragments_and_parallel_calls() {
    let first = Reply::sse(&[
        openai_chunk(json!({"role": "assistant", "content": null}), None),
        openai_chunk(
            tool_call_delta(0, Some("call_a"), Some("calc__add"), ""),
            None,
        ),
        openai_chunk(tool_call_delta(0, None, None, "{\"a\": "), None),
        openai_chunk(
            tool_call_delta(1, Some("call_b"), Some("calc__add"), "{\"a\": 10,"),
            None,
        ),
        openai_chunk(tool_call_delta(0, None, None, "1, \"b\": 2}"), None),
        openai_chunk(tool_call_delta(1, None, None, " \"b\": 20}"), None),
        openai_chunk(json!({}), Some("tool_calls")),
        openai_usage_chunk(30, 12),
        openai_done(),
    ]);
    let server = FakeProvider::start(vec![first, openai_text_reply("3 and 30")]).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let tools = TestTools::default();
    let mut history = vec![Message::user("add twice")];
    let (outcome, events) = run(
        &provider,
        &tools,
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;
    let outcome = outcome.expect("turn succeeds");

    assert_eq!(outcome.end, TurnEnd::Answered);
    assert_eq!(outcome.answer, "3 and 30");
    assert_eq!(
        outcome.usage.input_tokens, 40,
        "usage from the empty-choices chunk"
    );
    let calls = tools.calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls.contains(&("calc__add".to_owned(), json!({"a": 1, "b": 2}))),
        "{calls:?}"
    );
    assert!(
        calls.contains(&("calc__add".to_owned(), json!({"a": 10, "b": 20}))),
        "{calls:?}"
    );
    assert_eq!(history.len(), 4);
    assert_eq!(history[2].tool_result_ids(), vec!["call_a", "call_b"]);

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    let auth = requests[0]
        .headers
        .iter()
        .find(|(n, _)| n == "authorization");
    assert_eq!(
        auth.map(|(_, v)| v.as_str()),
        Some("Bearer sk-test-secret-key")
    );
    let replayed = requests[1].body["messages"].to_string();
    assert!(
        replayed.contains("call_a") && replayed.contains("\"30\""),
        "{replayed}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TurnEvent::TextDelta(t) if t == "3 and 30"))
    );
}

#[tokio::test]
async fn openai_missing_id_and_empty_arguments() {
    let first = Reply::sse(&[
        openai_chunk(tool_call_delta(0, None, Some("calc__now"), ""), None),
        openai_chunk(json!({}), Some("tool_calls")),
        openai_done(),
    ]);
    let server = FakeProvider::start(vec![first, openai_text_reply("it is noon")]).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let tools = TestTools::default();
    let mut history = vec![Message::user("time?")];
    let (outcome, _) = run(
        &provider,
        &tools,
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "it is noon");
    assert_eq!(tools.calls(), vec![("calc__now".to_owned(), json!({}))]);
    let requested = history[1].tool_requests();
    let id = requested[0].0.to_owned();
    assert!(!id.is_empty(), "a missing id is synthesized");
    assert_eq!(
        history[2].tool_result_ids(),
        vec![id.as_str()],
        "the result carries the same id"
    );
}

#[tokio::test]
async fn openai_length_cut_calls_are_not_run() {
    let first = Reply::sse(&[
        openai_chunk(
            tool_call_delta(0, Some("call_x"), Some("calc__add"), "{\"a\": 1, \"b"),
            None,
        ),
        openai_chunk(json!({}), Some("length")),
        openai_done(),
    ]);
    let server = FakeProvider::start(vec![first, openai_text_reply("sorry")]).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let tools = TestTools::default();
    let mut history = vec![Message::user("add")];
    let (outcome, events) = run(
        &provider,
        &tools,
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").end, TurnEnd::Answered);
    assert!(tools.calls().is_empty(), "a cut-off call must not run");
    let result = &history[2].content[0];
    assert!(
        matches!(result, ContentPart::ToolResult { is_error: true, .. }),
        "{result:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TurnEvent::Warning(w) if w.contains("cut off")))
    );
}

#[tokio::test]
async fn openai_null_content_beside_tool_calls_parses() {
    let first = Reply::json(
        200,
        json!({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": "call_n", "type": "function",
                                "function": {"name": "calc__add", "arguments": "{\"a\":2,\"b\":2}"}}]}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
        }),
    );
    let second = Reply::json(
        200,
        json!({
            "id": "chatcmpl-3", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "four"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        }),
    );
    let server = FakeProvider::start(vec![first, second]).await;
    let config = ProviderConfig {
        base_url: Some(server.url("/v1")),
        stream: Some(false),
        ..ProviderConfig::default()
    };
    let provider = GenaiProvider::new(ProviderKind::Openai, &config).expect("provider");
    let tools = TestTools::default();
    let mut history = vec![Message::user("2+2")];
    let (outcome, _) = run(
        &provider,
        &tools,
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "four");
    assert_eq!(
        tools.calls(),
        vec![("calc__add".to_owned(), json!({"a": 2, "b": 2}))]
    );
}

#[tokio::test]
async fn rate_limit_retried_after_retry_after() {
    let limited =
        Reply::json(429, json!({"error": {"message": "slow down"}})).header("retry-after", "1");
    let server = FakeProvider::start(vec![limited, openai_text_reply("done")]).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let mut history = vec![Message::user("hi")];
    let (outcome, events) = run(
        &provider,
        &TestTools::default(),
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "done");
    assert_eq!(server.requests().len(), 2);
    let retry = events.iter().find_map(|e| match e {
        TurnEvent::Retry { attempt: 1, error } => Some(error.clone()),
        _ => None,
    });
    let retry = retry.expect("one retry event");
    assert!(retry.contains("429"), "{retry}");
}

#[tokio::test]
async fn rejected_credentials_are_not_echoed() {
    let denied = Reply::json(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-test-secret-key"}}),
    );
    let server = FakeProvider::start(vec![denied]).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let mut history = vec![Message::user("hi")];
    let (outcome, _) = run(
        &provider,
        &TestTools::default(),
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    let error = outcome.expect_err("401 fails the turn");
    assert_eq!(error, ProviderError::Authentication { status: 401 });
    let text = error.to_string();
    assert!(text.contains("rejected the credentials"), "{text}");
    assert!(!text.contains("sk-test"), "{text}");
    assert_eq!(server.requests().len(), 1, "401 is not retried");
}

#[tokio::test]
async fn provider_errors_never_repeat_the_key() {
    let echo = |status| {
        let message = "bad auth Bearer sk-test-secret-key for this request";
        Reply::json(status, json!({"error": {"message": message}}))
    };
    let replies = vec![echo(500), echo(500), echo(500), echo(400)];
    let server = FakeProvider::start(replies).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    for case in ["500, retried", "400"] {
        let mut history = vec![Message::user("hi")];
        let (outcome, events) = run(
            &provider,
            &TestTools::default(),
            &settings(),
            &mut history,
            &CancellationToken::new(),
        )
        .await;
        let error = outcome.expect_err("the provider fails the turn");
        let text = error.to_string();
        assert!(!text.contains("sk-test"), "{text}");
        assert!(text.contains("bad auth Bearer <redacted>"), "{text}");
        for event in &events {
            let shown = format!("{event:?}");
            assert!(!shown.contains("sk-test"), "{case}: {shown}");
        }
    }
    assert_eq!(
        server.requests().len(),
        4,
        "three tries of the 500, one of the 400"
    );
}

fn anthropic_success(text: &str) -> Reply {
    Reply::sse(&[
        anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_2", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic_event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": text}}),
        ),
        anthropic_event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        anthropic_event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 4}}),
        ),
        anthropic_event("message_stop", json!({"type": "message_stop"})),
    ])
}

#[tokio::test]
async fn anthropic_error_event_is_retried_without_partial_text() {
    let overloaded = Reply::sse(&[
        anthropic_event(
            "message_start",
            json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [],
            "stop_reason": null, "usage": {"input_tokens": 12, "output_tokens": 1}}}),
        ),
        anthropic_event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        anthropic_event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "PARTIAL"}}),
        ),
        anthropic_event(
            "error",
            json!({"type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
    ]);
    let server = FakeProvider::start(vec![overloaded, anthropic_success("complete answer")]).await;
    let provider = provider(ProviderKind::Anthropic, server.url("/v1"));
    let mut history = vec![Message::user("hi")];
    let (outcome, events) = run(
        &provider,
        &TestTools::default(),
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    let outcome = outcome.expect("the retry succeeds");
    assert_eq!(outcome.answer, "complete answer");
    assert_eq!(history.len(), 2);
    assert!(!history[1].text().contains("PARTIAL"));
    assert!(
        events.iter().any(|e| matches!(e, TurnEvent::Retry { .. })),
        "{events:?}"
    );
    assert_eq!(server.requests()[0].path, "/v1/messages");
    let key = server.requests()[0]
        .headers
        .iter()
        .find(|(n, _)| n == "x-api-key")
        .cloned();
    assert_eq!(key.map(|(_, v)| v), Some("sk-test-secret-key".to_owned()));
}

#[tokio::test]
async fn anthropic_replay_has_no_empty_text_blocks() {
    let server = FakeProvider::start(vec![anthropic_success("ok")]).await;
    let provider = provider(ProviderKind::Anthropic, server.url("/v1"));
    let mut history = vec![
        Message::user("first"),
        Message {
            role: Role::Assistant,
            content: vec![
                ContentPart::Text {
                    text: String::new(),
                },
                ContentPart::ToolRequest {
                    id: "toolu_1".to_owned(),
                    name: "calc__now".to_owned(),
                    arguments: json!({}),
                },
            ],
        },
        Message {
            role: Role::Tool,
            content: vec![ContentPart::tool_result(
                "toolu_1",
                ToolOutput::text("noon"),
            )],
        },
        Message::user("and now?"),
    ];
    let (outcome, _) = run(
        &provider,
        &TestTools::default(),
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "ok");
    let body = server.requests()[0].body.to_string();
    assert!(
        !body.contains(r#""text":"""#),
        "empty text block sent: {body}"
    );
    assert!(body.contains("toolu_1"), "{body}");
}

#[tokio::test]
async fn ollama_native_tool_call_arguments_object() {
    let first = Reply::ndjson(&[
        json!({"model": "m", "created_at": "2026-12-04T00:00:00Z", "message": {"role": "assistant",
            "content": "", "tool_calls": [{"function": {"name": "calc__add", "arguments": {"a": 4, "b": 5}}}]},
            "done": false}),
        json!({"model": "m", "created_at": "2026-12-04T00:00:00Z", "message": {"role": "assistant", "content": ""},
            "done": true, "done_reason": "stop", "prompt_eval_count": 9, "eval_count": 3}),
    ]);
    let second = Reply::ndjson(&[
        json!({"model": "m", "created_at": "2026-12-04T00:00:00Z", "message": {"role": "assistant", "content": "nine"}, "done": false}),
        json!({"model": "m", "created_at": "2026-12-04T00:00:00Z", "message": {"role": "assistant", "content": ""},
            "done": true, "done_reason": "stop", "prompt_eval_count": 9, "eval_count": 1}),
    ]);
    let server = FakeProvider::start(vec![first, second]).await;
    let provider = provider(ProviderKind::Ollama, server.url(""));
    let tools = TestTools::default();
    let mut history = vec![Message::user("4+5")];
    let (outcome, _) = run(
        &provider,
        &tools,
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "nine");
    assert_eq!(
        tools.calls(),
        vec![("calc__add".to_owned(), json!({"a": 4, "b": 5}))]
    );
    assert_eq!(server.requests()[0].path, "/api/chat");
}

fn always_calls(tool: &str, arguments: &str, count: usize) -> Vec<Reply> {
    (0..count)
        .map(|index| {
            Reply::sse(&[
                openai_chunk(
                    tool_call_delta(0, Some(&format!("call_{index}")), Some(tool), arguments),
                    None,
                ),
                openai_chunk(json!({}), Some("tool_calls")),
                openai_done(),
            ])
        })
        .collect()
}

#[tokio::test]
async fn step_limit_stops_the_turn() {
    let server = FakeProvider::start(always_calls("calc__now", "{}", 5)).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let settings = TurnSettings {
        max_steps: 2,
        ..settings()
    };
    let mut history = vec![Message::user("loop")];
    let (outcome, _) = run(
        &provider,
        &TestTools::default(),
        &settings,
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    let outcome = outcome.expect("turn ends");
    assert_eq!(outcome.end, TurnEnd::StepLimit);
    assert_eq!(server.requests().len(), 2);
    assert!(
        outcome.answer.contains("Stopped after 2 steps"),
        "{}",
        outcome.answer
    );
}

#[tokio::test]
async fn tool_output_is_capped_before_the_model() {
    let mut replies = always_calls("big__dump", "{\"size\": 5000}", 1);
    replies.push(openai_text_reply("big"));
    let server = FakeProvider::start(replies).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let settings = TurnSettings {
        max_tool_output_chars: 100,
        ..settings()
    };
    let mut history = vec![Message::user("dump")];
    let (outcome, _) = run(
        &provider,
        &TestTools::default(),
        &settings,
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "big");
    let replayed = server.requests()[1].body["messages"].to_string();
    assert!(replayed.contains("4900 characters dropped"), "{replayed}");
    assert!(
        !replayed.contains(&"y".repeat(101)),
        "more than the cap was sent"
    );
}

#[tokio::test]
async fn cancel_stops_outstanding_tool_calls() {
    let server = FakeProvider::start(always_calls("slow__wait", "{}", 1)).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let tools = TestTools::default();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let mut history = vec![Message::user("wait")];
    let (outcome, _) = tokio::time::timeout(
        Duration::from_secs(10),
        run(&provider, &tools, &settings(), &mut history, &cancel),
    )
    .await
    .expect("cancel ends the turn");

    assert_eq!(
        outcome.expect("cancel is not an error").end,
        TurnEnd::Cancelled
    );
    assert_eq!(
        history.len(),
        3,
        "request and its cancelled result are kept"
    );
    assert!(matches!(
        &history[2].content[0],
        ContentPart::ToolResult { is_error: true, .. }
    ));
}

#[tokio::test]
async fn open_tool_request_is_repaired_before_the_call() {
    let server = FakeProvider::start(vec![openai_text_reply("fine")]).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let mut history = vec![
        Message::user("first"),
        Message {
            role: Role::Assistant,
            content: vec![ContentPart::ToolRequest {
                id: "call_lost".to_owned(),
                name: "calc__now".to_owned(),
                arguments: json!({}),
            }],
        },
        Message::user("again"),
    ];
    let (outcome, _) = run(
        &provider,
        &TestTools::default(),
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "fine");
    let messages = &server.requests()[0].body["messages"];
    let tool_message = messages
        .as_array()
        .and_then(|all| all.iter().find(|m| m["role"] == "tool"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(tool_message["tool_call_id"], "call_lost");
    assert!(
        tool_message["content"].to_string().contains("cancelled"),
        "{tool_message}"
    );
}

#[tokio::test]
async fn long_history_is_summarized_first() {
    let server = FakeProvider::start(vec![
        openai_text_reply("SUMMARY-TEXT"),
        openai_text_reply("answer"),
    ])
    .await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let settings = TurnSettings {
        context_limit: Some(1_000),
        ..settings()
    };
    let long = "z".repeat(4_000);
    let mut history = vec![
        Message::user(long.clone()),
        Message::assistant(long),
        Message::user("short question"),
    ];
    let (outcome, events) = run(
        &provider,
        &TestTools::default(),
        &settings,
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "answer");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0].body.get("tools").is_none(),
        "the summary call offers no tools"
    );
    let sent = requests[1].body["messages"].to_string();
    assert!(sent.contains("SUMMARY-TEXT"), "{sent}");
    assert!(
        !sent.contains("zzzz"),
        "summarized messages were sent again"
    );
    let summarized = events
        .iter()
        .any(|e| matches!(e, TurnEvent::Summarized { replaced: 2, .. }));
    assert!(summarized, "{events:?}");
    assert_eq!(history.len(), 3, "summary, kept question, answer");
}

/// Two tool steps, then an answer: each fixture matches on the previous tool result.
const TWO_STEP_FIXTURES: &str = r#"{"fixtures": [
  {"match": {"toolResultContains": "456"}, "response": {"content": "The total is 456."}},
  {"match": {"toolResultContains": "123"},
   "response": {"toolCalls": [{"name": "calc__add", "arguments": {"a": 400, "b": 56}}]}},
  {"match": {"userMessage": "two steps please"},
   "response": {"toolCalls": [{"name": "calc__add", "arguments": {"a": 100, "b": 23}}]}}
]}"#;

#[tokio::test]
async fn two_tool_steps_in_every_wire_format() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = dir.path().join("two-steps.json");
    std::fs::write(&fixtures, TWO_STEP_FIXTURES).expect("write fixtures");
    let server = aimock::Aimock::start(&fixtures);
    let formats = [
        (ProviderKind::Openai, format!("{}/v1", server.url)),
        (ProviderKind::Anthropic, format!("{}/v1", server.url)),
        (ProviderKind::Ollama, server.url.clone()),
    ];
    for (kind, base_url) in formats {
        for stream in [true, false] {
            let case = format!("{kind:?} stream={stream}");
            let config = ProviderConfig {
                base_url: Some(base_url.clone()),
                api_key: Some(Secret::new("mock-key-0123456789")),
                stream: Some(stream),
                ..ProviderConfig::default()
            };
            let provider = GenaiProvider::new(kind, &config).expect("provider");
            let tools = TestTools::default();
            let mut history = vec![Message::user("two steps please")];
            let (outcome, events) = run(
                &provider,
                &tools,
                &settings(),
                &mut history,
                &CancellationToken::new(),
            )
            .await;
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(error) => panic!("{case}: {error}"),
            };
            assert_eq!(outcome.end, TurnEnd::Answered, "{case}");
            assert_eq!(outcome.answer, "The total is 456.", "{case}");
            let expected = vec![
                ("calc__add".to_owned(), json!({"a": 100, "b": 23})),
                ("calc__add".to_owned(), json!({"a": 400, "b": 56})),
            ];
            assert_eq!(tools.calls(), expected, "{case}");
            assert_eq!(history.len(), 6, "{case}: {history:?}");
            let streamed_text = events.iter().any(|e| matches!(e, TurnEvent::TextDelta(_)));
            assert!(streamed_text, "{case}: no text delta event");
        }
    }
}

#[tokio::test]
async fn forced_tool_choice_applies_to_first_step_only() {
    let mut replies = always_calls("calc__now", "{}", 1);
    replies.push(openai_text_reply("noon it is"));
    let server = FakeProvider::start(replies).await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let settings = TurnSettings {
        tool_choice: ToolChoice::Tool("calc__now".to_owned()),
        later_tool_choice: ToolChoice::None,
        ..settings()
    };
    let mut history = vec![Message::user("what time is it")];
    let (outcome, _) = run(
        &provider,
        &TestTools::default(),
        &settings,
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(outcome.expect("turn succeeds").answer, "noon it is");
    let requests = server.requests();
    assert_eq!(
        requests[0].body["tool_choice"]["function"]["name"], "calc__now",
        "{}",
        requests[0].body
    );
    assert_eq!(
        requests[1].body["tool_choice"], "none",
        "{}",
        requests[1].body
    );
}

#[tokio::test]
async fn context_too_long_summarizes_and_retries_once() {
    let too_long = Reply::json(
        400,
        json!({"error": {"message": "This model's maximum context length is 4096 tokens.",
                         "type": "invalid_request_error", "code": "context_length_exceeded"}}),
    );
    let server = FakeProvider::start(vec![
        too_long,
        openai_text_reply("SHORT-SUMMARY"),
        openai_text_reply("answer after summary"),
    ])
    .await;
    let provider = provider(ProviderKind::Openai, server.url("/v1"));
    let mut history = vec![
        Message::user("first question"),
        Message::assistant("first answer"),
        Message::user("second question"),
    ];
    let (outcome, events) = run(
        &provider,
        &TestTools::default(),
        &settings(),
        &mut history,
        &CancellationToken::new(),
    )
    .await;

    assert_eq!(
        outcome.expect("turn succeeds").answer,
        "answer after summary"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "failed call, summary call, retried call");
    let retried = requests[2].body["messages"].to_string();
    assert!(retried.contains("SHORT-SUMMARY"), "{retried}");
    assert!(!retried.contains("first answer"), "{retried}");
    let summarized = events
        .iter()
        .any(|e| matches!(e, TurnEvent::Summarized { .. }));
    assert!(summarized, "{events:?}");
}
