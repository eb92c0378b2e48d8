//! The older MCP HTTP+SSE transport (protocol version 2024-11-05), which rmcp no longer
//! ships: the client opens an SSE stream, the server's first `endpoint` event names the URL
//! for POSTing messages, and responses arrive as `message` events on the stream.

use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use rmcp::RoleClient;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use sse_stream::{Sse, SseStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use url::Url;

use super::client::{header_map, http_client};
use crate::config::ExtensionConfig;

/// Messages buffered between the SSE reader and the MCP client.
const CHANNEL_CAPACITY: usize = 64;

/// Why the SSE transport failed.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    /// The URL, a header or the endpoint is invalid.
    #[error("{0}")]
    Invalid(String),
    /// An HTTP request failed. The `From` conversion removes the request URL.
    #[error("HTTP request to the MCP server failed: {0}")]
    Http(reqwest::Error),
    /// The stream ended or broke before the server sent its `endpoint` event.
    #[error("the SSE stream ended before the server sent its endpoint event: {0}")]
    NoEndpoint(String),
    /// The deadline passed before the server completed this step, such as "send the
    /// response headers of its SSE stream".
    #[error("the server did not {0} in time")]
    TimedOut(&'static str),
}

impl From<reqwest::Error> for SseError {
    /// Drops the request URL, because its query or userinfo may hold a token. The extension
    /// name in the surrounding message identifies the server.
    fn from(error: reqwest::Error) -> Self {
        Self::Http(error.without_url())
    }
}

/// A client transport over HTTP+SSE.
#[derive(Debug)]
pub struct SseTransport {
    client: reqwest::Client,
    endpoint: Url,
    headers: HeaderMap,
    incoming: mpsc::Receiver<RxJsonRpcMessage<RoleClient>>,
    reader: JoinHandle<()>,
}

impl SseTransport {
    /// Opens the SSE stream at `config.uri` and waits for the endpoint event, both before
    /// `deadline`.
    pub async fn connect(config: &ExtensionConfig, deadline: Instant) -> Result<Self, SseError> {
        let uri = config.uri.as_deref().unwrap_or_default();
        let url = Url::parse(uri)
            .map_err(|error| SseError::Invalid(format!("invalid URL in `uri`: {error}")))?;
        let mut headers = HeaderMap::new();
        let configured = header_map(config).map_err(|error| SseError::Invalid(error.0))?;
        headers.extend(configured);
        let client = http_client()?;
        let request = client
            .get(url.clone())
            .headers(headers.clone())
            .header(ACCEPT, "text/event-stream")
            .send();
        let response = tokio::time::timeout_at(deadline, request)
            .await
            .map_err(|_| SseError::TimedOut("send the response headers of its SSE stream"))??
            .error_for_status()?;
        let mut events = Box::pin(SseStream::from_bytes_stream(response.bytes_stream()));
        let endpoint = tokio::time::timeout_at(deadline, async {
            while let Some(event) = events.next().await {
                let event = event.map_err(|error| SseError::NoEndpoint(stream_error(error)))?;
                if event.event.as_deref() == Some("endpoint") {
                    return resolve_endpoint(&url, event.data.as_deref().unwrap_or_default());
                }
            }
            Err(SseError::NoEndpoint(
                "the server closed the stream".to_owned(),
            ))
        })
        .await
        .map_err(|_| SseError::TimedOut("send its endpoint event"))??;
        let (sender, incoming) = mpsc::channel(CHANNEL_CAPACITY);
        let reader = tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                if let Some(message) = parse_message(&event)
                    && sender.send(message).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            client,
            endpoint,
            headers,
            incoming,
            reader,
        })
    }
}

/// Resolves the endpoint event's URL, which servers send as an absolute path
/// (`/messages/?session_id=...`), a relative path or a full URL, against the SSE URL.
/// A full URL must keep the SSE URL's origin, so a server cannot redirect the client's
/// headers to another host.
fn resolve_endpoint(sse_url: &Url, data: &str) -> Result<Url, SseError> {
    let endpoint = sse_url
        .join(data.trim())
        .map_err(|error| SseError::Invalid(format!("invalid endpoint {data:?}: {error}")))?;
    if endpoint.origin() != sse_url.origin() {
        return Err(SseError::Invalid(format!(
            "the endpoint {endpoint} is not on the SSE server's origin {}",
            sse_url.origin().ascii_serialization()
        )));
    }
    Ok(endpoint)
}

/// Describes an error of the SSE stream without the URL that a body error from reqwest
/// would print.
fn stream_error(error: sse_stream::Error) -> String {
    match error {
        sse_stream::Error::Body(body) => match body.downcast::<reqwest::Error>() {
            Ok(error) => format!("body error: {}", error.without_url()),
            Err(other) => format!("body error: {other}"),
        },
        other => other.to_string(),
    }
}

fn parse_message(event: &Sse) -> Option<RxJsonRpcMessage<RoleClient>> {
    if !matches!(event.event.as_deref(), None | Some("message")) {
        return None;
    }
    let data = event.data.as_deref()?;
    match serde_json::from_str(data) {
        Ok(message) => Some(message),
        Err(error) => {
            tracing::debug!(%error, "skipping an SSE message that is not JSON-RPC");
            None
        }
    }
}

impl Transport<RoleClient> for SseTransport {
    type Error = SseError;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let request = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json");
        async move {
            let body = serde_json::to_vec(&item)
                .map_err(|error| SseError::Invalid(format!("cannot encode a message: {error}")))?;
            request.body(body).send().await?.error_for_status()?;
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        self.incoming.recv().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        self.incoming.close();
        Ok(())
    }
}

impl Drop for SseTransport {
    fn drop(&mut self) {
        // Aborting is synchronous; it only ends the task reading the stream.
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_resolves_against_the_sse_url() {
        let sse = Url::parse("http://127.0.0.1:3001/sse").unwrap();
        let cases = [
            (
                "/messages?sessionId=1",
                "http://127.0.0.1:3001/messages?sessionId=1",
            ),
            (
                "/messages/?session_id=2",
                "http://127.0.0.1:3001/messages/?session_id=2",
            ),
            ("message?id=3", "http://127.0.0.1:3001/message?id=3"),
            ("http://127.0.0.1:3001/x", "http://127.0.0.1:3001/x"),
        ];
        for (data, expected) in cases {
            let resolved = resolve_endpoint(&sse, data).unwrap();
            assert_eq!(resolved.as_str(), expected, "endpoint {data}");
        }
        let nested = Url::parse("http://127.0.0.1:3001/mcp/sse").unwrap();
        let resolved = resolve_endpoint(&nested, "messages?id=4").unwrap();
        assert_eq!(resolved.as_str(), "http://127.0.0.1:3001/mcp/messages?id=4");
        assert!(resolve_endpoint(&sse, "http://192.0.2.1/steal").is_err());
    }
}
