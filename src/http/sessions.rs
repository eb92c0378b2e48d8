//! Session routes: the original `/session/*` shapes and the `/sessions` resources.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, CurrentConfig};
use crate::agent::{ProviderError, ToolChoice, TurnEnd};
use crate::config::Caller;
use crate::sessions::{EventLog, SessionError, StreamEvent, TurnOptions, TurnReport, TurnTicket};
use crate::store::{KeyUsage, MessageRecord, SessionRecord, StoreError};

/// Header with which a reconnecting SSE client names the last event it received.
const LAST_EVENT_ID: &str = "last-event-id";

/// Default and maximum page sizes of the listing routes.
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 500;

/// Body of `POST /session/start`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The first instruction; it must contain a character other than whitespace.
    #[schema(min_length = 1, pattern = r"\S")]
    pub prompt: String,
    /// Added to the system prompt for this session.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Model for this session instead of the configured one, at most 256 characters and not
    /// only whitespace.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256, pattern = r"\S")]
    pub model: Option<String>,
    /// Extensions this session may use; all running ones when absent.
    #[serde(default)]
    pub extensions: Option<Vec<String>>,
    /// Tool choice for this turn: `auto`, `none`, `required` or `{"tool": "ext__tool"}`. A
    /// named tool must be one that the session may use, as `GET /extensions` lists them.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
}

/// Body of `POST /session/reply`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// Session to continue; the caller's most recent session when absent.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The follow-up instruction; it must contain a character other than whitespace.
    #[schema(min_length = 1, pattern = r"\S")]
    pub prompt: String,
    /// Tool choice for this turn.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
}

/// Body of `POST /sessions/{id}/reply`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionReplyRequest {
    /// The follow-up instruction; it must contain a character other than whitespace.
    #[schema(min_length = 1, pattern = r"\S")]
    pub prompt: String,
    /// Tool choice for this turn.
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
}

/// Body naming a session, for summarize and end.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionIdRequest {
    /// Session id; the caller's most recent session when absent.
    #[serde(default)]
    pub session_id: Option<String>,
}

/// Answer of a turn, in the original goose-api shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct TurnResponse {
    /// The agent's answer.
    pub message: String,
    /// `success`, or `cancelled` or `max_steps` when the turn stopped early.
    pub status: &'static str,
    /// The session the turn ran in.
    pub session_id: String,
}

/// A message and a status, as the original summarize and end answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    /// The summary, or what happened.
    pub message: String,
    /// `success`.
    pub status: &'static str,
}

impl From<SessionError> for ApiError {
    fn from(error: SessionError) -> Self {
        match error {
            SessionError::NotFound(_) | SessionError::NoSession => {
                Self::NotFound(error.to_string())
            }
            SessionError::Busy(_) | SessionError::Ended(_) => Self::Conflict(error.to_string()),
            SessionError::TooManyTurns(_) => Self::TooManyRequests {
                message: error.to_string(),
                retry_after_secs: None,
            },
            SessionError::Invalid(message) => Self::unprocessable(message),
            SessionError::Provider(ProviderError::Cancelled) => {
                Self::Conflict("the turn was cancelled".to_owned())
            }
            SessionError::Provider(error) => Self::BadGateway(error.to_string()),
            SessionError::Store(StoreError::SessionDeleted(id)) => {
                Self::NotFound(format!("session {id} was deleted during this request"))
            }
            SessionError::Store(error) => Self::Internal(error.into()),
        }
    }
}

/// Starts a session with a prompt and returns the agent's answer.
#[utoipa::path(post, path = "/session/start", tag = "sessions",
    security(("api_key" = []), ("bearer" = [])), request_body = StartRequest,
    responses((status = 200, body = TurnResponse),
              (status = 422, description = "A value is invalid, such as an empty or too long \
               model, an unknown extension, or a tool_choice naming a tool the session may \
               not use", body = ErrorBody),
              (status = 502, description = "The provider failed", body = ErrorBody)))]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    CurrentConfig(snapshot): CurrentConfig,
    ApiJson(request): ApiJson<StartRequest>,
) -> Result<Json<TurnResponse>, ApiError> {
    let options = TurnOptions {
        instructions: request.instructions,
        model: request.model,
        extensions: request.extensions,
        tool_choice: request.tool_choice,
    };
    let ticket = state
        .sessions
        .start(&caller, snapshot, request.prompt, options)
        .await?;
    answer(ticket).await
}

/// Continues a session, by default the caller's most recent one.
#[utoipa::path(post, path = "/session/reply", tag = "sessions",
    security(("api_key" = []), ("bearer" = [])), request_body = ReplyRequest,
    responses((status = 200, body = TurnResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "A turn is already running", body = ErrorBody),
              (status = 422, description = "A value is invalid, such as a tool_choice naming \
               a tool the session may not use", body = ErrorBody)))]
pub async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    CurrentConfig(snapshot): CurrentConfig,
    ApiJson(request): ApiJson<ReplyRequest>,
) -> Result<Json<TurnResponse>, ApiError> {
    let ticket = state
        .sessions
        .reply(
            &caller,
            snapshot,
            request.session_id.as_deref(),
            request.prompt,
            request.tool_choice,
        )
        .await?;
    answer(ticket).await
}

/// Replaces a session's history with a summary and returns it.
#[utoipa::path(post, path = "/session/summarize", tag = "sessions",
    security(("api_key" = []), ("bearer" = [])), request_body = SessionIdRequest,
    responses((status = 200, body = StatusResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "A turn is running, or the session has ended",
               body = ErrorBody)))]
pub async fn summarize(
    State(state): State<AppState>,
    caller: Caller,
    CurrentConfig(snapshot): CurrentConfig,
    ApiJson(request): ApiJson<SessionIdRequest>,
) -> Result<Json<StatusResponse>, ApiError> {
    let id = session_or_latest(&state, &caller, request.session_id).await?;
    let summary = state.sessions.summarize(&caller, &snapshot, &id).await?;
    Ok(Json(StatusResponse {
        message: summary,
        status: "success",
    }))
}

/// Ends a session; its history stays readable until deleted.
#[utoipa::path(post, path = "/session/end", tag = "sessions",
    security(("api_key" = []), ("bearer" = [])), request_body = SessionIdRequest,
    responses((status = 200, body = StatusResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "A turn is running, or the session has ended",
               body = ErrorBody)))]
pub async fn end(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(request): ApiJson<SessionIdRequest>,
) -> Result<Json<StatusResponse>, ApiError> {
    let id = session_or_latest(&state, &caller, request.session_id).await?;
    state.sessions.end(&caller, &id).await?;
    Ok(Json(StatusResponse {
        message: format!("session {id} ended"),
        status: "success",
    }))
}

async fn session_or_latest(
    state: &AppState,
    caller: &Caller,
    id: Option<String>,
) -> Result<String, ApiError> {
    match id {
        Some(id) => Ok(id),
        None => {
            let latest = state.sessions.store().latest_session(&caller.name).await;
            let latest = latest.map_err(|error| ApiError::Internal(error.into()))?;
            Ok(latest.ok_or(SessionError::NoSession)?.id)
        }
    }
}

/// Waits for the turn and renders its answer. If the client disconnects first, this future
/// is dropped and the guard cancels the turn.
async fn answer(ticket: TurnTicket) -> Result<Json<TurnResponse>, ApiError> {
    let guard = ticket.cancel.clone().drop_guard();
    let result = ticket.result.await;
    guard.disarm();
    let report = result
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("the turn task stopped unexpectedly")))??;
    Ok(Json(turn_response(report, ticket.session_id)))
}

fn turn_response(report: TurnReport, session_id: String) -> TurnResponse {
    let status = match report.end {
        TurnEnd::Answered => "success",
        TurnEnd::StepLimit => "max_steps",
        TurnEnd::Cancelled => "cancelled",
    };
    TurnResponse {
        message: report.answer,
        status,
        session_id,
    }
}

/// Query of `GET /sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 50 by default.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Body of `GET /sessions`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Sessions, newest first.
    pub sessions: Vec<SessionRecord>,
    /// Cursor of the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Tokens used by the caller's key over all its turns, on every replica, including
    /// sessions since deleted.
    pub usage: KeyUsage,
}

/// Lists the caller's sessions, newest first.
#[utoipa::path(get, path = "/sessions", tag = "sessions", params(ListQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<SessionList>, ApiError> {
    let limit = page_size(query.limit)?;
    let cursor = query.cursor.as_deref().map(parse_cursor).transpose()?;
    let sessions = state.sessions.list(&caller, cursor, limit).await?;
    let next_cursor = (sessions.len() as i64 == limit)
        .then(|| {
            sessions
                .last()
                .map(|s| format!("{}_{}", s.created_at, s.id))
        })
        .flatten();
    let usage = state
        .sessions
        .store()
        .key_usage(&caller.name)
        .await
        .map_err(|error| ApiError::Internal(error.into()))?;
    Ok(Json(SessionList {
        sessions,
        next_cursor,
        usage,
    }))
}

fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if (1..=MAX_PAGE).contains(&limit) => Ok(limit),
        Some(limit) => Err(ApiError::BadRequest(format!(
            "invalid limit {limit}; use 1 to {MAX_PAGE}"
        ))),
    }
}

fn parse_cursor(cursor: &str) -> Result<(i64, String), ApiError> {
    cursor
        .split_once('_')
        .and_then(|(time, id)| Some((time.parse().ok()?, id.to_owned())))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "invalid cursor {cursor:?}; pass the next_cursor of the previous page"
            ))
        })
}

/// Path parameter of the `/sessions/{id}` routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionId {
    /// Session id, as `session_id` in a turn's response.
    pub id: String,
}

/// Query of `GET /sessions/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    /// Return messages with a sequence number above this; 0 by default.
    pub after: Option<i64>,
    /// Page size, 50 by default.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Body of `GET /sessions/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionDetail {
    /// Metadata.
    pub session: SessionRecord,
    /// Messages, in order.
    pub messages: Vec<MessageRecord>,
    /// `after` value of the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// Returns a session's metadata and a page of its messages.
#[utoipa::path(get, path = "/sessions/{id}", tag = "sessions", params(SessionId, MessagesQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = SessionDetail), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SessionId { id }): ApiPath<SessionId>,
    ApiQuery(query): ApiQuery<MessagesQuery>,
) -> Result<Json<SessionDetail>, ApiError> {
    let limit = page_size(query.limit)?;
    let (session, messages) = state
        .sessions
        .get(&caller, &id, query.after.unwrap_or(0), limit)
        .await?;
    let next_after = (messages.len() as i64 == limit)
        .then(|| messages.last().map(|m| m.seq))
        .flatten();
    Ok(Json(SessionDetail {
        session,
        messages,
        next_after,
    }))
}

/// Deletes a session and its messages, cancelling a running turn.
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions", params(SessionId),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = StatusResponse), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SessionId { id }): ApiPath<SessionId>,
) -> Result<Json<StatusResponse>, ApiError> {
    state.sessions.delete(&caller, &id).await?;
    Ok(Json(StatusResponse {
        message: format!("session {id} deleted"),
        status: "success",
    }))
}

/// Cancels the running turn of a session.
#[utoipa::path(post, path = "/sessions/{id}/cancel", tag = "sessions", params(SessionId),
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, body = StatusResponse), (status = 404, body = ErrorBody),
              (status = 409, description = "No turn is running", body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(SessionId { id }): ApiPath<SessionId>,
) -> Result<Json<StatusResponse>, ApiError> {
    if !state.sessions.cancel(&caller, &id).await? {
        return Err(ApiError::Conflict(format!(
            "session {id} is not running a turn"
        )));
    }
    Ok(Json(StatusResponse {
        message: format!("the turn of session {id} was cancelled"),
        status: "success",
    }))
}

/// Runs a turn. With `Accept: text/event-stream` the turn streams as server-sent events.
///
/// A streaming request with `Last-Event-ID` resumes the session's running or last turn after
/// that event instead of starting a turn, and starts one only when no turn is buffered. An
/// id past the end of a finished turn replays its final `finish` or `error` event, so an
/// `EventSource` client ends as it would have without the gap. An id past the last event of
/// a running turn gets 409 with the last id sent.
#[utoipa::path(post, path = "/sessions/{id}/reply", tag = "sessions",
    params(SessionId,
           ("Last-Event-ID" = Option<String>, Header, description = "ID of the last event \
            received, a whole number from 0 to 18446744073709551615, to resume a stream")),
    security(("api_key" = []), ("bearer" = [])), request_body = SessionReplyRequest,
    responses((status = 200, description = "JSON answer, or an event stream", body = TurnResponse),
              (status = 400, description = "Invalid JSON body, path parameter or \
               Last-Event-ID header", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "A turn is already running, the session has ended, \
               or Last-Event-ID is past the last event of the running turn", body = ErrorBody),
              (status = 422, description = "A value is invalid, such as a tool_choice naming \
               a tool the session may not use", body = ErrorBody)))]
pub async fn session_reply(
    State(state): State<AppState>,
    caller: Caller,
    CurrentConfig(snapshot): CurrentConfig,
    ApiPath(SessionId { id }): ApiPath<SessionId>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SessionReplyRequest>,
) -> Result<Response, ApiError> {
    let streaming = prefers_event_stream(&headers);
    let last_event_id = last_event_id(&headers)?;
    let heartbeat = Duration::from_secs(snapshot.config.sessions.sse_heartbeat_secs);
    if let (true, Some(after)) = (streaming, last_event_id)
        && let Some(log) = state.sessions.resume(&caller, &id).await?
    {
        let after = resume_point(&id, &log, after)?;
        return Ok(event_stream(log.follow(after), heartbeat));
    }
    let ticket = state
        .sessions
        .reply(
            &caller,
            snapshot,
            Some(&id),
            request.prompt,
            request.tool_choice,
        )
        .await?;
    if streaming {
        let log = ticket.events.clone();
        Ok(event_stream(log.follow(0), heartbeat))
    } else {
        Ok(answer(ticket).await?.into_response())
    }
}

/// Returns whether `Accept` requests `text/event-stream` with a quality above 0 and at
/// least that of JSON (`application/json`, `application/*` or `*/*`).
fn prefers_event_stream(headers: &HeaderMap) -> bool {
    let mut event_stream: f32 = 0.0;
    let mut json: f32 = 0.0;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for range in ranges {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let quality = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/event-stream" => event_stream = event_stream.max(quality),
            "application/json" | "application/*" | "*/*" => json = json.max(quality),
            _ => {}
        }
    }
    event_stream > 0.0 && event_stream >= json
}

/// Parses the `Last-Event-ID` header, which is absent or the id of an event.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(LAST_EVENT_ID) else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    text.parse::<u64>().map(Some).map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid Last-Event-ID header {text:?}; send the id of the last event received, a \
             whole number from 0 to {}, or omit the header to start a turn",
            u64::MAX
        ))
    })
}

/// Returns the id after which a stream of `log` resumes for a client that last received
/// event `after`.
fn resume_point(id: &str, log: &EventLog, after: u64) -> Result<u64, ApiError> {
    let (last, finished) = log.progress();
    if after <= last {
        Ok(after)
    } else if finished {
        // The final event of a finished log is its `finish` or `error` event.
        Ok(last.saturating_sub(1))
    } else {
        Err(ApiError::Conflict(format!(
            "Last-Event-ID {after} is past the last event of the running turn of session {id}, \
             which is {last}; resume with an id from 0 to {last}"
        )))
    }
}

/// Renders events as SSE with a comment heartbeat. The turn keeps running if the client
/// disconnects, so that the client can resume it.
fn event_stream(
    events: impl futures::Stream<Item = StreamEvent> + Send + 'static,
    heartbeat: Duration,
) -> Response {
    let stream = events.map(|event| {
        let rendered = Event::default()
            .id(event.id.to_string())
            .event(event.kind)
            .json_data(&event.data)
            .unwrap_or_else(|_| Event::default().id(event.id.to_string()).event(event.kind));
        Ok::<_, Infallible>(rendered)
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().expect("header value"));
        headers
    }

    #[test]
    fn event_stream_follows_accept_qualities() {
        let cases = [
            ("text/event-stream", true),
            ("text/event-stream, application/json", true),
            ("application/json, text/event-stream;q=0.5", false),
            ("text/event-stream;q=0, application/json", false),
            ("text/event-stream; q=0", false),
            ("TEXT/EVENT-STREAM", true),
            ("*/*", false),
            ("application/json", false),
        ];
        for (value, expected) in cases {
            assert_eq!(prefers_event_stream(&accept(value)), expected, "{value}");
        }
        assert!(!prefers_event_stream(&HeaderMap::new()));
    }
}
