//! The HTTP edge: error envelopes, body limit, timeouts, request ids, public routes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{ADMIN_KEY, Daemon, config_with_key, rename_save};

const USER_KEY: &str = "user-key-0123456789abcdef";

/// Sends raw bytes and returns the whole response text, read until the server closes.
fn raw_exchange(addr: SocketAddr, parts: &[&[u8]], pause: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set read timeout");
    for part in parts {
        stream.write_all(part).expect("write request part");
        std::thread::sleep(pause);
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// One request expected to fail, and the status and code it must get.
struct Rejection {
    method: Method,
    path: &'static str,
    key: Option<&'static str>,
    content_type: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
}

fn reload_with(
    content_type: &'static str,
    body: &str,
    status: u16,
    code: &'static str,
) -> Rejection {
    Rejection {
        method: Method::POST,
        path: "/config/reload",
        key: Some(ADMIN_KEY),
        content_type: Some(content_type),
        body: body.to_owned(),
        status,
        code,
    }
}

fn get_with(
    path: &'static str,
    key: Option<&'static str>,
    status: u16,
    code: &'static str,
) -> Rejection {
    Rejection {
        method: Method::GET,
        path,
        key,
        content_type: None,
        body: String::new(),
        status,
        code,
    }
}

#[tokio::test]
async fn every_rejection_uses_json_envelope() {
    let users = format!("api_keys:\n  - name: alice\n    key: {USER_KEY}\n");
    let limits = "limits:\n  max_body_bytes: 1024\n";
    let daemon = Daemon::start(&config_with_key(&format!("{limits}{users}"))).await;
    let json = "application/json";
    let big = format!("{{\"force\": false, \"pad\": \"{}\"}}", "x".repeat(4096));
    let cases = [
        reload_with(json, "{not json", 400, "bad_request"),
        get_with("/provider/config", None, 401, "unauthorized"),
        get_with("/config/status", Some(USER_KEY), 403, "forbidden"),
        get_with("/no/such/route", Some(ADMIN_KEY), 404, "not_found"),
        Rejection {
            method: Method::DELETE,
            ..get_with(
                "/provider/config",
                Some(ADMIN_KEY),
                405,
                "method_not_allowed",
            )
        },
        reload_with(json, &big, 413, "payload_too_large"),
        reload_with("text/plain", "{}", 415, "unsupported_media_type"),
        reload_with(json, "{\"force\": \"yes\"}", 422, "invalid_body"),
        reload_with(json, "{\"forse\": true}", 422, "invalid_body"),
    ];
    for case in cases {
        let Rejection {
            method,
            path,
            status,
            code,
            ..
        } = &case;
        let label = format!("{method} {path} expecting {status}");
        let mut request = daemon
            .http
            .request(method.clone(), daemon.url(path))
            .body(case.body.clone());
        if let Some(key) = case.key {
            request = request.header("x-api-key", key);
        }
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status().as_u16(), *status, "{label}");
        assert!(
            response.headers().contains_key("x-request-id"),
            "{label}: no request id"
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("application/json"),
            "{label}: {content_type}"
        );
        let body: Value = response.json().await.expect("JSON error body");
        assert_eq!(body["status"], "error", "{label}");
        assert_eq!(body["code"], *code, "{label}");
        assert!(
            !body["message"].as_str().unwrap_or_default().is_empty(),
            "{label}"
        );
    }
}

#[tokio::test]
async fn chunked_body_over_limit_is_rejected() {
    let daemon = Daemon::start(&config_with_key("limits:\n  max_body_bytes: 64\n")).await;
    let head = format!(
        "POST /config/reload HTTP/1.1\r\nhost: x\r\nx-api-key: {ADMIN_KEY}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    let chunk = format!(
        "{:x}\r\n{}\r\n",
        200,
        "{\"force\":false}".to_owned() + &" ".repeat(185)
    );
    let response = raw_exchange(
        daemon.addr,
        &[head.as_bytes(), chunk.as_bytes(), b"0\r\n\r\n"],
        Duration::from_millis(10),
    );
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "response was {response}"
    );
    assert_eq!(body_of(&response)["code"], "payload_too_large");
}

#[tokio::test]
async fn body_within_limit_and_charset_is_accepted() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let response = daemon
        .http
        .post(daemon.url("/config/reload"))
        .header("x-api-key", ADMIN_KEY)
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"force\": false}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(body["outcome"], "unchanged");
    assert_eq!(body["generation"], 1);
}

#[tokio::test]
async fn stalled_body_times_out_with_408() {
    let daemon = Daemon::start(&config_with_key("limits:\n  request_timeout_secs: 1\n")).await;
    let head = format!(
        "POST /config/reload HTTP/1.1\r\nhost: x\r\nx-api-key: {ADMIN_KEY}\r\n\
         content-type: application/json\r\ncontent-length: 40\r\n\r\n{{\"force\""
    );
    let addr = daemon.addr;
    // The body never completes, so only the timeout can end the request.
    let response =
        tokio::task::spawn_blocking(move || raw_exchange(addr, &[head.as_bytes()], Duration::ZERO))
            .await
            .expect("raw request thread");
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "response was {response}"
    );
    let body = body_of(&response);
    assert_eq!(body["status"], "error");
    assert_eq!(body["code"], "body_timeout");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("body was incomplete"), "{message}");
    assert!(message.contains("limits.request_timeout_secs"), "{message}");
}

#[tokio::test]
async fn request_id_is_generated_or_echoed() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let generated = daemon.get("/provider/config", ADMIN_KEY).await;
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(id.len(), 36, "expected a UUID, got {id:?}");
    let echoed = daemon
        .http
        .get(daemon.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("send");
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-42");
}

#[tokio::test]
async fn health_and_ready_need_no_key() {
    let daemon = Daemon::start(&config_with_key("")).await;
    for path in ["/health", "/ready"] {
        let response = daemon
            .http
            .get(daemon.url(path))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn provider_config_has_original_shape() {
    let daemon = Daemon::start(&config_with_key(
        "provider: anthropic\nmodel: claude-test\nproviders:\n  anthropic:\n    api_key: sk-ant-secret-value\n",
    ))
    .await;
    let response = daemon.get("/provider/config", ADMIN_KEY).await;
    let body: Value = response.json().await.expect("JSON body");
    assert_eq!(
        body,
        serde_json::json!({"provider": "anthropic", "model": "claude-test"})
    );
}

#[tokio::test]
async fn openapi_document_lists_routes() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let document: Value = daemon
        .get("/openapi.json", ADMIN_KEY)
        .await
        .json()
        .await
        .expect("JSON");
    assert!(
        document["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{document}"
    );
    for path in [
        "/provider/config",
        "/health",
        "/ready",
        "/config/status",
        "/config/reload",
    ] {
        assert!(document["paths"][path].is_object(), "{path} missing");
    }
    assert!(document["components"]["securitySchemes"]["api_key"].is_object());
}

#[tokio::test]
async fn invalid_query_and_path_are_json_errors() {
    let daemon = Daemon::start(&config_with_key("")).await;
    for (path, expected) in [
        ("/sessions?limit=abc", "limit=abc"),
        ("/sessions?color=red", "color"),
        ("/sessions/abc?after=x", "after=x"),
        ("/sessions/%FF", "/sessions/%FF"),
        ("/extensions/%FF", "/extensions/%FF"),
    ] {
        let (status, body) = daemon.get_value(path, ADMIN_KEY).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["code"], "bad_request", "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{path}: {message}");
    }
}

#[tokio::test]
async fn reload_accepts_null_body() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let response = daemon
        .http
        .post(daemon.url("/config/reload"))
        .header("x-api-key", ADMIN_KEY)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_is_off_unless_origins_are_configured() {
    let origin = "https://app.example.com";
    let closed = Daemon::start(&config_with_key("")).await;
    let response = closed
        .http
        .get(closed.url("/health"))
        .header("origin", origin)
        .send()
        .await
        .expect("send");
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let open = Daemon::start(&config_with_key(&format!(
        "cors:\n  allowed_origins: [\"{origin}\"]\n"
    )))
    .await;
    let response = open
        .http
        .get(open.url("/health"))
        .header("origin", origin)
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["access-control-allow-origin"], origin);
}

#[tokio::test]
async fn partial_headers_close_connection() {
    // Started without the limit, which a reload then sets for new connections.
    let daemon = Daemon::start(&config_with_key("limits:\n  header_read_timeout_secs: 0\n")).await;
    rename_save(
        &daemon.path("config.yaml"),
        &config_with_key("model: timed\nlimits:\n  header_read_timeout_secs: 1\n"),
    );
    daemon.wait_for_model("timed").await;
    let addr = daemon.addr;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        // The blank line that ends the headers never comes.
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            .expect("send part of the headers");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).map(|_| received)
    })
    .await
    .expect("raw request thread");
    // The daemon closes the connection; without the timeout the read would time out.
    let received = outcome.expect("the daemon closed the connection");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "received {text}"
    );
    // The listener still serves new connections.
    assert_eq!(
        daemon.get("/health", ADMIN_KEY).await.status(),
        StatusCode::OK
    );
}

/// Starts a provider on 127.0.0.1 that responds to every request with 400 and a body that
/// repeats the request's headers, as some providers do with a bad request.
async fn echoing_provider() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the provider");
    let addr = listener.local_addr().expect("provider address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0; 64 * 1024];
                let read = stream.read(&mut request).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..read]).replace('"', "'");
                let head = head.split("\r\n\r\n").next().unwrap_or_default().to_owned();
                let body = serde_json::json!({"error": {"message": format!("bad request {head}")}})
                    .to_string();
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn provider_secrets_stay_out_of_logs() {
    let provider = echoing_provider().await;
    let config = config_with_key(&format!(
        "provider: echo\nmodel: m\nproviders:\n  echo:\n    kind: openai\n    \
         base_url: http://{provider}/v1\n    api_key: sk-provider-secret-0123\n    \
         max_retries: 0\n    headers:\n      x-org: header-secret-4567\n"
    ))
    .replace("format: json", "format: json\n  level: debug");
    let daemon = Daemon::start(&config).await;
    let (status, body) = daemon
        .post_value(
            "/session/start",
            ADMIN_KEY,
            serde_json::json!({"prompt": "hi"}),
        )
        .await;
    assert!(status.is_server_error(), "{status} {body}");
    let body_text = body.to_string();
    assert!(body_text.contains("bad request"), "{body_text}");
    assert!(!body_text.contains("sk-provider-secret"), "{body_text}");
    assert!(!body_text.contains("header-secret"), "{body_text}");
    let logs = daemon.stderr_text();
    assert!(
        logs.contains("bad request"),
        "the failure is logged: {logs}"
    );
    assert!(!logs.contains("sk-provider-secret"), "{logs}");
    assert!(!logs.contains("header-secret"), "{logs}");
}
