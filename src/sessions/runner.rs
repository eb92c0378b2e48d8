//! Running a turn of a session: storing each finished message as it completes and
//! publishing the turn's events.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::{OwnedMutexGuard, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{
    Conversation, LiveSession, SessionError, SessionManager, TurnReport, TurnTicket, lock,
};
use crate::agent::history::{CANCELLED_RESULT, summary_message};
use crate::agent::{
    ContentPart, Message, Provider, Role, ToolChoice, Turn, TurnEvent, TurnSettings, Usage,
    turn_settings,
};
use crate::config::Snapshot;
use crate::limits::TurnPermit;
use crate::metrics::MeteredProvider;
use crate::store::{SessionLock, SessionRecord};

/// Guards a running turn keeps until it ends: the session's lock in the store and its
/// place under the concurrency limits.
pub(super) struct TurnGuards {
    pub(super) session_lock: SessionLock,
    pub(super) _permit: TurnPermit,
}

/// Inputs of a turn: the request's config snapshot, the prompt and the tool choice.
pub(super) struct TurnInput {
    pub(super) snapshot: Arc<Snapshot>,
    pub(super) prompt: String,
    pub(super) tool_choice: Option<ToolChoice>,
}

/// Stores the prompt, then runs the turn on a task of its own, so a streaming client may
/// disconnect and resume while it runs.
pub(super) async fn begin(
    manager: Arc<SessionManager>,
    live: Arc<LiveSession>,
    mut conversation: OwnedMutexGuard<Conversation>,
    input: TurnInput,
    guards: TurnGuards,
) -> Result<TurnTicket, SessionError> {
    let TurnInput {
        snapshot,
        prompt,
        tool_choice,
    } = input;
    let session_id = live.record().id;
    let stored = store_prompt(&manager, &live, &mut conversation, prompt).await;
    if let Err(error) = stored {
        guards.session_lock.release().await;
        return Err(error);
    }

    let cancel = CancellationToken::new();
    let events = Arc::new(EventLogHandle::new());
    *lock(&live.running) = Some((cancel.clone(), events.log.clone()));
    let (result_tx, result_rx) = oneshot::channel();
    let ticket = TurnTicket {
        session_id: session_id.clone(),
        events: events.log.clone(),
        cancel: cancel.clone(),
        result: result_rx,
    };
    manager.metrics.running_turns.inc();
    tokio::spawn(async move {
        let result = drive(
            &manager,
            &live,
            &mut conversation,
            &snapshot,
            tool_choice,
            &cancel,
            &events,
        )
        .await;
        live.touch();
        // The session is free before any client learns that the turn ended, so a reply
        // sent right after the finish event or the JSON answer is not rejected with 409.
        // The store lock goes first: a request that gets the in-process lock next must find
        // the store lock free.
        guards.session_lock.release().await;
        drop(conversation);
        drop(guards._permit);
        match &result {
            Ok(report) => events.log.push(
                "finish",
                json!({"end": format!("{:?}", report.end).to_lowercase(), "usage": report.usage,
                       "message": report.answer}),
            ),
            Err(error) => {
                tracing::warn!(session_id = %session_id, %error, "turn failed");
                events
                    .log
                    .push("error", json!({"message": error.to_string()}));
            }
        }
        events.log.finish();
        let outcome = match &result {
            Ok(report) => format!("{:?}", report.end).to_lowercase(),
            Err(_) => "error".to_owned(),
        };
        manager
            .metrics
            .turns
            .with_label_values(&[outcome.as_str()])
            .inc();
        manager.metrics.running_turns.dec();
        // The client may have gone away, which is fine: the turn is stored.
        let _ = result_tx.send(result);
    });
    Ok(ticket)
}

async fn store_prompt(
    manager: &SessionManager,
    live: &LiveSession,
    conversation: &mut Conversation,
    prompt: String,
) -> Result<(), SessionError> {
    let session_id = live.record().id;
    let before = conversation.history.len();
    close_open_requests(manager, &session_id, conversation).await?;
    let closed = i64::try_from(conversation.history.len() - before).unwrap_or(0);
    lock(&live.record).message_count += closed;
    let prompt = Message::user(prompt);
    let seq = manager
        .store
        .append_message(&session_id, &prompt, None)
        .await?;
    conversation.history.push(prompt);
    conversation.seqs.push(Some(seq));
    lock(&live.record).message_count += 1;
    Ok(())
}

/// The event log of a turn, shared by the runner and streaming clients.
#[derive(Debug)]
struct EventLogHandle {
    log: Arc<super::EventLog>,
}

impl EventLogHandle {
    fn new() -> Self {
        Self {
            log: Arc::new(super::EventLog::default()),
        }
    }
}

/// Gives every tool request left without a result by a crash or cancel a "cancelled"
/// result, stored after it, so the provider accepts the conversation.
async fn close_open_requests(
    manager: &SessionManager,
    session_id: &str,
    conversation: &mut Conversation,
) -> Result<(), SessionError> {
    let Some(last) = conversation.history.last() else {
        return Ok(());
    };
    if last.role != Role::Assistant || last.tool_requests().is_empty() {
        return Ok(());
    }
    let results = Message {
        role: Role::Tool,
        content: last
            .tool_requests()
            .iter()
            .map(|(id, _, _)| ContentPart::tool_error(*id, CANCELLED_RESULT))
            .collect(),
    };
    let seq = manager
        .store
        .append_message(session_id, &results, None)
        .await?;
    conversation.history.push(results);
    conversation.seqs.push(Some(seq));
    Ok(())
}

fn metered_provider(
    manager: &SessionManager,
    snapshot: &Snapshot,
) -> Result<MeteredProvider, SessionError> {
    let provider: Arc<dyn Provider> = manager.providers.provider_for(snapshot)?;
    Ok(MeteredProvider::new(
        provider,
        manager.metrics.clone(),
        &snapshot.config.provider,
    ))
}

fn settings_for(
    snapshot: &Snapshot,
    record: &SessionRecord,
    tool_choice: Option<ToolChoice>,
) -> TurnSettings {
    let mut settings = turn_settings(snapshot);
    if let Some(model) = &record.model_override {
        settings.model.clone_from(model);
    }
    if !record.instructions.is_empty() {
        settings.system_prompt = format!("{}\n\n{}", settings.system_prompt, record.instructions);
    }
    settings.allowed_extensions.clone_from(&record.extensions);
    if let Some(choice) = tool_choice {
        settings.tool_choice = choice;
    }
    settings
}

async fn drive(
    manager: &SessionManager,
    live: &LiveSession,
    conversation: &mut Conversation,
    snapshot: &Snapshot,
    tool_choice: Option<ToolChoice>,
    cancel: &CancellationToken,
    events: &EventLogHandle,
) -> Result<TurnReport, SessionError> {
    let record = live.record();
    let settings = settings_for(snapshot, &record, tool_choice);
    let provider = metered_provider(manager, snapshot)?;
    let (sender, receiver) = mpsc::unbounded_channel();
    let on_event = move |event: TurnEvent| {
        // The receiver is dropped only after the turn ends, so a send cannot fail.
        let _ = sender.send(event);
    };
    let turn_done = CancellationToken::new();
    let Conversation { history, seqs } = conversation;
    let run = async {
        let turn = Turn {
            provider: &provider,
            tools: manager.tools.as_ref(),
            settings: &settings,
            on_event: &on_event,
            cancel,
        };
        let outcome = turn.run(history).await;
        turn_done.cancel();
        outcome
    };
    let store_events = record_events(
        manager, live, &record.id, receiver, seqs, &turn_done, cancel, events,
    );
    let (outcome, stored) = tokio::join!(run, store_events);
    stored?;
    let outcome = outcome?;
    manager
        .store
        .record_turn(
            &record.id,
            outcome.usage,
            &snapshot.config.provider,
            &settings.model,
        )
        .await?;
    manager
        .metrics
        .count_key_tokens(&record.owner, outcome.usage);
    Ok(TurnReport {
        answer: outcome.answer,
        end: outcome.end,
        usage: outcome.usage,
    })
}

/// Stores each finished message in order and publishes the events. A store failure cancels
/// the turn, because messages that cannot be stored would be lost on restart.
#[allow(
    clippy::too_many_arguments,
    reason = "the pieces of one turn, borrowed separately"
)]
async fn record_events(
    manager: &SessionManager,
    live: &LiveSession,
    session_id: &str,
    mut receiver: mpsc::UnboundedReceiver<TurnEvent>,
    seqs: &mut Vec<Option<i64>>,
    turn_done: &CancellationToken,
    cancel: &CancellationToken,
    events: &EventLogHandle,
) -> Result<(), SessionError> {
    let mut failure = None;
    loop {
        let event = tokio::select! {
            biased;
            event = receiver.recv() => event,
            _ = turn_done.cancelled() => receiver.try_recv().ok(),
        };
        let Some(event) = event else { break };
        if failure.is_some() {
            continue;
        }
        if let Err(error) = record_event(manager, live, session_id, event, seqs, events).await {
            tracing::error!(session_id, %error, "cannot store a message; cancelling the turn");
            cancel.cancel();
            failure = Some(error);
        }
    }
    failure.map_or(Ok(()), Err)
}

async fn record_event(
    manager: &SessionManager,
    live: &LiveSession,
    session_id: &str,
    event: TurnEvent,
    seqs: &mut Vec<Option<i64>>,
    events: &EventLogHandle,
) -> Result<(), SessionError> {
    let log = &events.log;
    match event {
        TurnEvent::TextDelta(text) => log.push("text", json!({"text": text})),
        TurnEvent::ToolCall {
            id,
            name,
            arguments,
        } => {
            log.push(
                "tool_call",
                json!({"id": id, "name": name, "arguments": arguments}),
            );
        }
        TurnEvent::ToolResult { id, name, is_error } => {
            log.push(
                "tool_result",
                json!({"id": id, "name": name, "is_error": is_error}),
            );
        }
        TurnEvent::Retry { attempt, error } => {
            log.push("retry", json!({"attempt": attempt, "error": error}));
        }
        TurnEvent::Warning(message) => log.push("warning", json!({"message": message})),
        TurnEvent::Message(message) => {
            let seq = manager
                .store
                .append_message(session_id, &message, None)
                .await?;
            seqs.push(Some(seq));
            lock(&live.record).message_count += 1;
        }
        TurnEvent::Summarized { summary, replaced } => {
            let replaced = replaced.min(seqs.len());
            let through = seqs[..replaced]
                .iter()
                .flatten()
                .max()
                .copied()
                .unwrap_or(0);
            let seq = manager
                .store
                .append_message(session_id, &summary, Some(through))
                .await?;
            seqs.splice(..replaced, [Some(seq)]);
            lock(&live.record).message_count += 1;
        }
    }
    Ok(())
}

/// Summarizes the whole conversation, stores the summary and makes it the history.
pub(super) async fn summarize(
    manager: &SessionManager,
    snapshot: &Snapshot,
    record: &SessionRecord,
    conversation: &mut Conversation,
) -> Result<String, SessionError> {
    if conversation.history.is_empty() {
        return Err(SessionError::Invalid(format!(
            "session {} has no messages to summarize",
            record.id
        )));
    }
    let settings = settings_for(snapshot, record, None);
    let provider = metered_provider(manager, snapshot)?;
    let ignore = |_: TurnEvent| {};
    let cancel = CancellationToken::new();
    let turn = Turn {
        provider: &provider,
        tools: manager.tools.as_ref(),
        settings: &settings,
        on_event: &ignore,
        cancel: &cancel,
    };
    let mut usage = Usage::default();
    let summary = turn.summary_of(&conversation.history, &mut usage).await?;
    let message = summary_message(&summary);
    let through = conversation
        .seqs
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(0);
    let seq = manager
        .store
        .append_message(&record.id, &message, Some(through))
        .await?;
    manager
        .store
        .record_turn(
            &record.id,
            usage,
            &snapshot.config.provider,
            &settings.model,
        )
        .await?;
    manager.metrics.count_key_tokens(&record.owner, usage);
    conversation.history = vec![message];
    conversation.seqs = vec![Some(seq)];
    Ok(summary)
}
