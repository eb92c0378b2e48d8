//! The routes of the `mixed` benchmark: the cycle each client walks, the request it sends on
//! each route and the check of each response.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::client::ApiClient;
use crate::provider::ANSWER;

/// Text that the direct tool calls ask the demo plugin's `echo` to return.
const DIRECT_ECHO_TEXT: &str = "mixed-echo-text";
/// Extension name of the demo plugin in the daemon's extensions directory.
const PLUGIN_EXTENSION: &str = "demo";

/// A route of the mix. A turn is two provider requests and one plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /session/start`, a turn in a new session.
    SessionStart,
    /// `GET /health`.
    Health,
    /// `GET /provider/config`.
    ProviderConfig,
    /// `POST /session/reply` with the client's session, a turn.
    SessionReply,
    /// `GET /extensions/list`.
    ExtensionNames,
    /// `GET /extensions`.
    ExtensionStatuses,
    /// `GET /extensions/demo`.
    ExtensionStatus,
    /// `POST /sessions/{id}/reply` without streaming, a turn.
    SessionsReply,
    /// `GET /sessions/{id}`, the session's history.
    SessionHistory,
    /// `POST /extensions/demo/tools/echo`.
    ToolCall,
    /// `GET /metrics`.
    Metrics,
    /// `GET /metrics/prometheus`.
    PrometheusMetrics,
}

impl Route {
    /// The order in which each client sends the routes, over and over.
    pub const CYCLE: [Self; 12] = [
        Self::SessionStart,
        Self::Health,
        Self::ProviderConfig,
        Self::SessionReply,
        Self::ExtensionNames,
        Self::ExtensionStatuses,
        Self::ExtensionStatus,
        Self::SessionsReply,
        Self::SessionHistory,
        Self::ToolCall,
        Self::Metrics,
        Self::PrometheusMetrics,
    ];

    /// Method and route template, for reports.
    pub fn label(self) -> &'static str {
        match self {
            Self::SessionStart => "POST /session/start",
            Self::Health => "GET /health",
            Self::ProviderConfig => "GET /provider/config",
            Self::SessionReply => "POST /session/reply",
            Self::ExtensionNames => "GET /extensions/list",
            Self::ExtensionStatuses => "GET /extensions",
            Self::ExtensionStatus => "GET /extensions/{name}",
            Self::SessionsReply => "POST /sessions/{id}/reply",
            Self::SessionHistory => "GET /sessions/{id}",
            Self::ToolCall => "POST /extensions/{name}/tools/{tool}",
            Self::Metrics => "GET /metrics",
            Self::PrometheusMetrics => "GET /metrics/prometheus",
        }
    }

    pub(crate) fn index(self) -> usize {
        Self::CYCLE
            .iter()
            .position(|route| *route == self)
            .unwrap_or_default()
    }

    pub(crate) fn needs_session(self) -> bool {
        matches!(
            self,
            Self::SessionReply | Self::SessionsReply | Self::SessionHistory
        )
    }

    fn is_turn(self) -> bool {
        matches!(
            self,
            Self::SessionStart | Self::SessionReply | Self::SessionsReply
        )
    }
}

/// Sends the request of `route`, in `session` where the route needs one.
pub(crate) async fn send(
    client: &mut ApiClient,
    route: Route,
    session: Option<&str>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let session = session.unwrap_or_default();
    match route {
        Route::SessionStart => {
            let body = json!({"prompt": "mixed load"});
            client.post_json("/session/start", &body).await
        }
        Route::Health => client.get("/health").await,
        Route::ProviderConfig => client.get("/provider/config").await,
        Route::SessionReply => {
            let body = json!({"session_id": session, "prompt": "mixed load reply"});
            client.post_json("/session/reply", &body).await
        }
        Route::ExtensionNames => client.get("/extensions/list").await,
        Route::ExtensionStatuses => client.get("/extensions").await,
        Route::ExtensionStatus => client.get(&format!("/extensions/{PLUGIN_EXTENSION}")).await,
        Route::SessionsReply => {
            let body = json!({"prompt": "mixed load reply"});
            let path = format!("/sessions/{session}/reply");
            client.post_json(&path, &body).await
        }
        Route::SessionHistory => client.get(&format!("/sessions/{session}")).await,
        Route::ToolCall => {
            let body = json!({"text": DIRECT_ECHO_TEXT});
            let path = format!("/extensions/{PLUGIN_EXTENSION}/tools/echo");
            client.post_json(&path, &body).await
        }
        Route::Metrics => client.get("/metrics").await,
        Route::PrometheusMetrics => client.get("/metrics/prometheus").await,
    }
}

/// Checks a response. Every route must return 2xx, a turn must return the instant
/// provider's [`ANSWER`] text and the tool call the echoed text. Returns the session id of
/// a started session.
pub(crate) fn check(
    route: Route,
    status: StatusCode,
    body: &[u8],
) -> Result<Option<String>, String> {
    let text = || {
        String::from_utf8_lossy(body)
            .chars()
            .take(300)
            .collect::<String>()
    };
    if !status.is_success() {
        return Err(format!("status {status}, body {}", text()));
    }
    if !route.is_turn() && route != Route::ToolCall && route != Route::SessionHistory {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| format!("status {status}, body not JSON: {}", text()))?;
    let expected = match route {
        Route::ToolCall => {
            value["is_error"] == false && value["content"][0]["text"] == DIRECT_ECHO_TEXT
        }
        Route::SessionHistory => value["messages"].is_array(),
        _ => value["status"] == "success" && value["message"] == ANSWER,
    };
    if !expected {
        return Err(format!("status {status}, unexpected body {}", text()));
    }
    if route != Route::SessionStart {
        return Ok(None);
    }
    match value["session_id"].as_str() {
        Some(id) => Ok(Some(id.to_owned())),
        None => Err(format!("status {status}, no session_id in {}", text())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_indexes_are_positions() {
        for (position, route) in Route::CYCLE.iter().enumerate() {
            assert_eq!(route.index(), position);
        }
    }

    #[test]
    fn turn_with_expected_answer_passes() {
        let body = json!({"status": "success", "message": ANSWER, "session_id": "s1"});
        let started = check(
            Route::SessionStart,
            StatusCode::OK,
            body.to_string().as_bytes(),
        );
        assert_eq!(started, Ok(Some("s1".to_owned())));
        let replied = check(
            Route::SessionReply,
            StatusCode::OK,
            body.to_string().as_bytes(),
        );
        assert_eq!(replied, Ok(None));
    }

    #[test]
    fn error_status_fails() {
        let checked = check(Route::Health, StatusCode::SERVICE_UNAVAILABLE, b"{}");
        assert!(checked.is_err_and(|problem| problem.contains("503")));
    }

    #[test]
    fn tool_call_with_other_text_fails() {
        let body = json!({"is_error": false, "content": [{"type": "text", "text": "other"}]});
        let checked = check(Route::ToolCall, StatusCode::OK, body.to_string().as_bytes());
        assert!(checked.is_err());
    }
}
