//! One MCP client connection: the initialize handshake over stdio, streamable HTTP or SSE,
//! tool listing and tool calls with the extension's timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use rmcp::model::{CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation};
use rmcp::service::{
    NotificationContext, Peer, QuitReason, RunningService, RunningServiceCancellationToken,
};
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::line_limit::{LimitedLines, MAX_MESSAGE_BYTES, Overflow};
use super::process::{self, GroupRecord, ServerProcess};
use super::sse::{SseError, SseTransport};
use super::stderr::StderrTail;
use super::streamable_http;
use crate::config::{ExtensionConfig, ExtensionKind};
use crate::tools::{ToolError, ToolOutput};

/// Maximum wait for the initialize handshake, used when the extension's `timeout` is
/// longer. Servers started by `npx` or `uvx` may download packages first, hence a minute.
pub const MAX_HANDSHAKE: Duration = Duration::from_secs(60);
/// Time the MCP client task gets to finish after a cancel before it is aborted.
const CLIENT_CLOSE_GRACE: Duration = Duration::from_millis(250);
/// Time a server that closed its stdout gets to exit before it is reported as hung.
const EXIT_AFTER_CLOSE: Duration = Duration::from_millis(500);

/// Receives server notifications; a changed tool list wakes the supervisor.
#[derive(Debug, Clone, Default)]
pub struct Handler {
    tools_changed: Arc<Notify>,
}

impl ClientHandler for Handler {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.tools_changed.notify_one();
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("goose-api", env!("CARGO_PKG_VERSION")),
        )
    }
}

/// A connected MCP server.
pub struct Connection {
    peer: Peer<RoleClient>,
    stop: Option<RunningServiceCancellationToken>,
    service_task: JoinHandle<Result<QuitReason, JoinError>>,
    service_ended: bool,
    /// The server process, for stdio extensions.
    pub process: Option<ServerProcess>,
    /// Notified when the server reports a changed tool list.
    pub tools_changed: Arc<Notify>,
    /// Records why a stdio connection closed on a message over the size limit.
    overflow: Option<Overflow>,
}

/// A failure to connect. The message names the extension's problem and
/// includes the stderr tail where there is one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

/// Starts or reaches the server of `config` and completes the initialize handshake, all
/// within the handshake limit. Gives up when `stop` fires, and a stdio server started by
/// then is stopped and reaped. `group` records a stdio server's process group, and
/// `overflow` the error of a message from it over [`MAX_MESSAGE_BYTES`].
pub async fn connect(
    name: &str,
    config: &ExtensionConfig,
    tail: &StderrTail,
    group: &GroupRecord,
    overflow: &Overflow,
    stop: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let limit = Duration::from_secs(config.timeout).min(MAX_HANDSHAKE);
    match config.kind {
        ExtensionKind::Stdio => {
            let server = StdioServer {
                tail,
                group,
                overflow,
            };
            connect_stdio(name, config, &server, limit, stop).await
        }
        ExtensionKind::StreamableHttp | ExtensionKind::Sse => tokio::select! {
            result = connect_http(name, config, limit) => result,
            () = stop.cancelled() => Err(ConnectError(
                "the extension was stopped while connecting".to_owned(),
            )),
        },
        ExtensionKind::Builtin | ExtensionKind::Plugin => Err(ConnectError(
            "native plugins are loaded by the plugin loader, not as MCP servers".to_owned(),
        )),
    }
}

/// Connects over streamable HTTP or SSE. Dropping the future closes the connection.
async fn connect_http(
    name: &str,
    config: &ExtensionConfig,
    limit: Duration,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + limit;
    let handler = Handler::default();
    let tools_changed = handler.tools_changed.clone();
    let service = if config.kind == ExtensionKind::Sse {
        let transport =
            SseTransport::connect(config, deadline)
                .await
                .map_err(|error| match error {
                    SseError::TimedOut(step) => timed_out(name, step, limit),
                    other => ConnectError(other.to_string()),
                })?;
        handshake(name, handler.serve(transport), deadline, limit).await?
    } else {
        // Ends the transport's requests when the handshake fails or this future is dropped.
        let closed = CancellationToken::new();
        let close_on_drop = closed.clone().drop_guard();
        let transport = streamable_http::transport(config, closed)?;
        let service = handshake(name, handler.serve(transport), deadline, limit).await?;
        close_on_drop.disarm();
        service
    };
    Ok(Connection::new(service, None, tools_changed))
}

async fn handshake<F, E>(
    name: &str,
    serving: F,
    deadline: Instant,
    limit: Duration,
) -> Result<RunningService<RoleClient, Handler>, ConnectError>
where
    F: Future<Output = Result<RunningService<RoleClient, Handler>, E>>,
    E: std::fmt::Display,
{
    match tokio::time::timeout_at(deadline, serving).await {
        Ok(Ok(service)) => Ok(service),
        Ok(Err(error)) => Err(ConnectError(format!(
            "the initialize handshake failed: {error}"
        ))),
        Err(_) => Err(timed_out(name, "respond to the initialize request", limit)),
    }
}

/// Describes a connection `step` that did not finish within `limit`, which counts from
/// the start of the connection.
fn timed_out(name: &str, step: &str, limit: Duration) -> ConnectError {
    ConnectError(format!(
        "extension {name} timed out: the server did not {step} within {} s",
        limit.as_secs()
    ))
}

/// Outcome of the handshake with a stdio server.
enum StdioHandshake {
    Done(Result<RunningService<RoleClient, Handler>, ConnectError>),
    Exited,
    Stopped,
}

/// The slot state a stdio connection records into.
struct StdioServer<'a> {
    tail: &'a StderrTail,
    group: &'a GroupRecord,
    overflow: &'a Overflow,
}

async fn connect_stdio(
    name: &str,
    config: &ExtensionConfig,
    slot: &StdioServer<'_>,
    limit: Duration,
    stop: &CancellationToken,
) -> Result<Connection, ConnectError> {
    let deadline = Instant::now() + limit;
    let handler = Handler::default();
    let tools_changed = handler.tools_changed.clone();
    let program = config.cmd.as_deref().unwrap_or_default();
    let tail = slot.tail;
    let (mut server, stdout, stdin) =
        process::spawn(name, config, tail.clone(), slot.group.clone())
            .map_err(|error| ConnectError(format!("cannot start {program:?}: {error}")))?;
    slot.overflow.clear();
    let stdout = LimitedLines::new(stdout, name, MAX_MESSAGE_BYTES, slot.overflow.clone());
    // The reader above enforces the limit, so rmcp's own line limit, which drops a long
    // line without failing the call waiting for it, is turned off.
    let transport =
        AsyncRwTransport::<RoleClient, _, _>::new(stdout, stdin).with_max_line_length(usize::MAX);
    tracing::debug!(
        extension = name,
        pid = server.pid(),
        "MCP server process started"
    );
    let serving = handler.serve(transport);
    let outcome = tokio::select! {
        result = handshake(name, serving, deadline, limit) => StdioHandshake::Done(result),
        _ = server.exited() => StdioHandshake::Exited,
        () = stop.cancelled() => StdioHandshake::Stopped,
    };
    let failure = match outcome {
        StdioHandshake::Done(Ok(service)) => {
            let mut connection = Connection::new(service, Some(server), tools_changed);
            connection.overflow = Some(slot.overflow.clone());
            return Ok(connection);
        }
        StdioHandshake::Done(Err(error)) => {
            // A timed-out handshake drops the transport, which closes the server's stdin, so
            // an exit after that is the result of the timeout and the timeout is reported.
            let timed_out = Instant::now() >= deadline;
            match server.exited_within(EXIT_AFTER_CLOSE).await {
                Some(_) if !timed_out => None,
                _ => Some(error),
            }
        }
        StdioHandshake::Exited => None,
        StdioHandshake::Stopped => Some(ConnectError(
            "the extension was stopped during the initialize handshake".to_owned(),
        )),
    };
    let status = server.stop().await;
    let reason = failure.map_or_else(
        || {
            format!(
                "the server {} during the initialize handshake",
                process::describe_exit(status)
            )
        },
        |error| error.0,
    );
    Err(ConnectError(with_stderr(reason, tail)))
}

/// Appends the stderr tail to `message`, when there is one.
pub fn with_stderr(message: String, tail: &StderrTail) -> String {
    let lines = tail.joined();
    if lines.is_empty() {
        message
    } else {
        format!("{message}; stderr:\n{lines}")
    }
}

/// Maximum redirects an HTTP extension's client follows, as reqwest's default policy does.
const MAX_REDIRECTS: usize = 10;

/// Builds the HTTP client of an SSE or streamable HTTP extension. It follows a redirect only
/// within the first URL's origin, because the configured headers go with every request and
/// may hold a credential that another host must not see.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !same_origin {
            let from = attempt.previous().first().map(ToString::to_string);
            tracing::warn!(
                from = from.as_deref().unwrap_or_default(),
                to = %attempt.url(),
                "redirect of an HTTP extension to another origin rejected; set its uri to the final URL"
            );
            attempt.error("redirect to another origin; set the extension's uri to the final URL")
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder().redirect(policy).build()
}

/// Converts the configured headers; validation has already checked them.
pub fn header_map(
    config: &ExtensionConfig,
) -> Result<HashMap<HeaderName, HeaderValue>, ConnectError> {
    let mut headers = HashMap::new();
    for (name, value) in &config.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConnectError(format!("invalid header name {name:?}")))?;
        // The message names the header only, because its value may be a credential.
        let value = HeaderValue::from_str(value.expose())
            .map_err(|_| ConnectError(format!("invalid value of header {name}")))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("process", &self.process)
            .field("service_ended", &self.service_ended)
            .finish_non_exhaustive()
    }
}

impl Connection {
    fn new(
        service: RunningService<RoleClient, Handler>,
        process: Option<ServerProcess>,
        tools_changed: Arc<Notify>,
    ) -> Self {
        let peer = service.peer().clone();
        let stop = Some(service.cancellation_token());
        Self {
            peer,
            stop,
            service_task: tokio::spawn(service.waiting()),
            service_ended: false,
            process,
            tools_changed,
            overflow: None,
        }
    }

    /// Returns a handle that calls the server while the supervisor owns the connection.
    pub fn peer(&self) -> Peer<RoleClient> {
        self.peer.clone()
    }

    /// Waits until the server exits or the connection's message loop ends, for example
    /// because the HTTP stream failed. Returns a description of why. Cancel-safe.
    pub async fn closed(&mut self) -> String {
        let ended = match &mut self.process {
            Some(server) if !self.service_ended => tokio::select! {
                status = server.exited() => {
                    return format!("the server {}", process::describe_exit(status.ok()));
                }
                ended = &mut self.service_task => ended,
            },
            Some(server) => {
                let status = server.exited().await.ok();
                return format!("the server {}", process::describe_exit(status));
            }
            None if !self.service_ended => (&mut self.service_task).await,
            None => return "the connection to the server closed".to_owned(),
        };
        self.service_ended = true;
        if let Some(message) = self.overflow.as_ref().and_then(Overflow::get) {
            return message;
        }
        match (ended, &mut self.process) {
            (_, Some(server)) => match server.exited_within(EXIT_AFTER_CLOSE).await {
                Some(status) => format!("the server {}", process::describe_exit(Some(status))),
                None => "the server closed its stdout".to_owned(),
            },
            (Ok(reason), None) => format!("the connection to the server closed ({reason:?})"),
            (Err(error), None) => format!("the MCP client task failed: {error}"),
        }
    }

    /// Closes the connection, which closes a stdio server's stdin, then stops and reaps
    /// the server. Returns how the server process ended, for stdio servers.
    pub async fn shutdown(mut self) -> Option<String> {
        if let Some(stop) = self.stop.take() {
            stop.cancel();
        }
        if !self.service_ended {
            // After a cancel, rmcp 3.11 drains in-flight responses for up to 2 s and keeps
            // the transport open meanwhile. That would delay closing the server's stdin.
            match tokio::time::timeout(CLIENT_CLOSE_GRACE, &mut self.service_task).await {
                Ok(Err(error)) => tracing::debug!(%error, "MCP client task ended abnormally"),
                Ok(Ok(_)) => {}
                Err(_) => self.service_task.abort(),
            }
        }
        let server = self.process.take()?;
        Some(process::describe_exit(server.stop().await))
    }
}

/// Calls `tool` through `peer`, cancelling the request on the server when `limit` passes
/// or `cancel` fires.
pub async fn call_tool(
    peer: &Peer<RoleClient>,
    tool: &str,
    arguments: serde_json::Value,
    limit: Duration,
    cancel: CancellationToken,
) -> Result<ToolOutput, ToolError> {
    let arguments = match arguments {
        serde_json::Value::Object(map) => Some(map),
        serde_json::Value::Null => None,
        other => {
            return Err(ToolError::InvalidArguments(format!(
                "arguments must be a JSON object, found {}",
                super::convert::kind_of(&other)
            )));
        }
    };
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = arguments;
    // Dropping the call future sends `notifications/cancelled` for the request.
    let result = tokio::select! {
        result = tokio::time::timeout(limit, peer.call_tool(params)) => result,
        () = cancel.cancelled() => return Err(ToolError::Cancelled),
    };
    match result {
        Ok(Ok(result)) => Ok(super::convert::tool_output(&result)),
        Ok(Err(error)) => Err(super::convert::service_error(error)),
        Err(_) => Err(ToolError::TimedOut {
            secs: limit.as_secs(),
        }),
    }
}
