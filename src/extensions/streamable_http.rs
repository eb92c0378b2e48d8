//! The streamable HTTP transport with an HTTP client whose requests can be ended from
//! outside. rmcp 3.11 sends the initialize request from its transport worker task and
//! ignores the transport's cancellation until the response arrives. So a server that
//! accepts the connection and never responds would keep that task and its socket open
//! after the handshake timed out or the extension was stopped.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use futures::stream::BoxStream;
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use sse_stream::Sse;
use tokio_util::sync::CancellationToken;

use super::client::{ConnectError, header_map, http_client};
use crate::config::ExtensionConfig;

/// A reqwest client whose requests fail with [`StreamableHttpError::TransportChannelClosed`]
/// once `closed` is cancelled. Streams that a request has already returned are not ended.
#[derive(Debug, Clone)]
pub struct ClosableClient {
    inner: reqwest::Client,
    closed: CancellationToken,
}

type Result<T> = std::result::Result<T, StreamableHttpError<reqwest::Error>>;

/// Builds the transport for `config`, whose requests end when `closed` is cancelled.
pub fn transport(
    config: &ExtensionConfig,
    closed: CancellationToken,
) -> std::result::Result<StreamableHttpClientTransport<ClosableClient>, ConnectError> {
    let uri = config.uri.clone().unwrap_or_default();
    let headers = header_map(config)?;
    let settings = StreamableHttpClientTransportConfig::with_uri(uri).custom_headers(headers);
    let inner = http_client()
        .map_err(|error| ConnectError(format!("HTTP client set-up failed: {error}")))?;
    let client = ClosableClient { inner, closed };
    Ok(StreamableHttpClientTransport::with_client(client, settings))
}

impl ClosableClient {
    async fn until_closed<T>(&self, request: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            result = request => result.map_err(without_url),
            () = self.closed.cancelled() => Err(StreamableHttpError::TransportChannelClosed),
        }
    }
}

/// Drops the request URL from a reqwest error, because its query or userinfo may hold a
/// token and the error ends up in `last_error` and the log. The extension name identifies
/// the server.
fn without_url(error: StreamableHttpError<reqwest::Error>) -> StreamableHttpError<reqwest::Error> {
    match error {
        StreamableHttpError::Client(error) => StreamableHttpError::Client(error.without_url()),
        other => other,
    }
}

impl StreamableHttpClient for ClosableClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse> {
        let request =
            self.inner
                .post_message(uri, message, session_id, auth_header, custom_headers);
        self.until_closed(request).await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse> {
        let request = self.inner.post_message_with_max_sse_event_size(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            max_sse_event_size,
        );
        self.until_closed(request).await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse> {
        let request = self.inner.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            limits,
        );
        self.until_closed(request).await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<()> {
        let request = self
            .inner
            .delete_session(uri, session_id, auth_header, custom_headers);
        self.until_closed(request).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, std::result::Result<Sse, SseError>>> {
        let request =
            self.inner
                .get_stream(uri, session_id, last_event_id, auth_header, custom_headers);
        self.until_closed(request).await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, std::result::Result<Sse, SseError>>> {
        let request = self.inner.get_stream_with_max_sse_event_size(
            uri,
            session_id,
            last_event_id,
            auth_header,
            custom_headers,
            max_sse_event_size,
        );
        self.until_closed(request).await
    }
}
