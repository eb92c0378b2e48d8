//! A keep-alive HTTP/1.1 client for the daemon's JSON routes, authenticated with its API key.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Header that carries the daemon's API key.
const API_KEY_HEADER: &str = "x-api-key";

/// Opens a keep-alive HTTP/1.1 connection to `address` with TCP_NODELAY and returns its
/// request sender. The connection runs on a task of its own, so a connection that breaks
/// fails the next request sent on it.
pub async fn open_http1<B>(address: SocketAddr) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    stream
        .set_nodelay(true)
        .context("while setting TCP_NODELAY")?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP/1.1 handshake with {address} failed"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends `request` once the connection is free and reads the whole response body, so that
/// the connection is free again for the next request.
pub async fn exchange<B>(
    sender: &mut SendRequest<B>,
    request: Request<B>,
) -> anyhow::Result<(StatusCode, Bytes)>
where
    B: hyper::body::Body + Send + 'static,
{
    sender
        .ready()
        .await
        .context("the server closed the connection")?;
    let response = sender
        .send_request(request)
        .await
        .context("the request failed")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("while reading the response body")?
        .to_bytes();
    Ok((status, body))
}

/// One connection to the daemon.
#[derive(Debug)]
pub struct ApiClient {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    api_key: HeaderValue,
}

impl ApiClient {
    /// Connects with TCP_NODELAY and completes the HTTP/1.1 handshake.
    pub async fn connect(address: SocketAddr, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            sender: open_http1(address).await?,
            host: HeaderValue::from_str(&address.to_string())
                .with_context(|| format!("invalid Host header value {address}"))?,
            api_key: HeaderValue::from_str(api_key)
                .context("the API key is not a valid header value")?,
        })
    }

    /// Sends `GET path` and returns the status and the whole body.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::GET, path, None).await
    }

    /// Sends `POST path` with a JSON body and returns the status and the whole body.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// Sends `GET path`, fails unless it returns 200 within `timeout`, and parses the body.
    pub async fn get_json_ok(&mut self, path: &str, timeout: Duration) -> anyhow::Result<Value> {
        let (status, body) = tokio::time::timeout(timeout, self.get(path))
            .await
            .with_context(|| format!("GET {path} got no response within {timeout:?}"))??;
        if status != StatusCode::OK {
            bail!(
                "GET {path} returned {status} with body {}",
                String::from_utf8_lossy(&body)
            );
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("GET {path} returned a body that is not JSON"))
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone())
            .header(API_KEY_HEADER, self.api_key.clone());
        let body = match body {
            Some(json) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder
            .body(body)
            .with_context(|| format!("cannot build the request for {path}"))?;
        exchange(&mut self.sender, request).await
    }
}
