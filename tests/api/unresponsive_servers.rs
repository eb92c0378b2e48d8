//! HTTP extensions whose server misbehaves. A server that accepts TCP connections and never
//! responds times out, and neither removal nor shutdown waits for it. A redirect to another
//! origin is not followed, so the configured headers stay with the configured server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::helpers::config_with_key;
use crate::peers::{EXTENSION_WAIT, launch};

/// Maximum bytes of a request head that the silent server reads to find the request line.
const MAX_HEAD: usize = 8192;

/// Connections to one request path of a [`SilentServer`].
#[derive(Debug, Default, Clone, Copy)]
struct Connections {
    opened: usize,
    closed_by_client: usize,
}

/// A TCP listener on 127.0.0.1 that accepts every connection, reads the request line and
/// never sends a byte. It keeps each connection open until the client closes it.
struct SilentServer {
    port: u16,
    by_path: Arc<Mutex<BTreeMap<String, Connections>>>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl SilentServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let by_path = Arc::new(Mutex::new(BTreeMap::new()));
        let seen = by_path.clone();
        let accept_task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(hold(stream, seen.clone()));
            }
        });
        Self {
            port,
            by_path,
            accept_task,
        }
    }

    fn uri(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connections(&self, path: &str) -> Connections {
        let by_path = self.by_path.lock().expect("connection counts");
        by_path.get(path).copied().unwrap_or_default()
    }

    /// Waits until a connection for `path` is open, which means a client waits for a
    /// response on it.
    async fn wait_open(&self, path: &str) {
        let started = Instant::now();
        loop {
            let connections = self.connections(path);
            if connections.opened > connections.closed_by_client {
                return;
            }
            assert!(
                started.elapsed() < EXTENSION_WAIT,
                "no open connection for {path}: {connections:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Reads the request line of `stream`, counts the connection under its path and keeps it
/// open without a response until the client closes it.
async fn hold(mut stream: TcpStream, by_path: Arc<Mutex<BTreeMap<String, Connections>>>) {
    let mut head = Vec::new();
    let mut buffer = [0_u8; 1024];
    while !head.windows(2).any(|pair| pair == b"\r\n") && head.len() < MAX_HEAD {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    by_path
        .lock()
        .expect("connection counts")
        .entry(path.clone())
        .or_default()
        .opened += 1;
    while let Ok(read) = stream.read(&mut buffer).await {
        if read == 0 {
            break;
        }
    }
    by_path
        .lock()
        .expect("connection counts")
        .entry(path)
        .or_default()
        .closed_by_client += 1;
}

fn manifest(kind: &str, uri: &str, timeout: u64) -> String {
    format!("type: {kind}\nuri: {uri}\ntimeout: {timeout}\n")
}

async fn check_unresponsive_server(kind: &str) {
    let server = SilentServer::start().await;
    let config = config_with_key(&format!(
        "extensions:\n  quick:\n    type: {kind}\n    uri: {}\n    timeout: 1\n  \
         held:\n    type: {kind}\n    uri: {}\n    timeout: 60\n",
        server.uri("/quick"),
        server.uri("/held"),
    ));
    let mut launch = launch(&config);
    launch.files.push((
        "extensions/stuck.yaml".to_owned(),
        manifest(kind, &server.uri("/stuck"), 60),
    ));
    let mut daemon = crate::helpers::Daemon::launch(launch).await;

    let status = daemon
        .wait_extension("quick", |s| s["state"] == "failed")
        .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("extension quick timed out"), "{error}");
    assert!(error.contains("within 1 s"), "{error}");

    // The handshake limit of `stuck` is 60 s, longer than the wait for its removal.
    server.wait_open("/stuck").await;
    let status = daemon.extension("stuck").await;
    assert_eq!(status["state"], "starting", "{status}");
    std::fs::remove_file(daemon.path("extensions/stuck.yaml")).expect("remove the manifest");
    daemon.wait_extension("stuck", Value::is_null).await;
    let logs = daemon.stderr_text();
    assert!(!logs.contains("did not stop in time"), "{logs}");
    let started = Instant::now();
    while server.connections("/stuck").closed_by_client == 0 {
        assert!(
            started.elapsed() < EXTENSION_WAIT,
            "the daemon kept the connection of a removed extension open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.wait_open("/held").await;
    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait_exit().await;
    let logs = daemon.stderr_text();
    assert!(exit.success(), "{exit}\n{logs}");
    assert!(logs.contains("all extensions stopped"), "{logs}");
    assert!(!logs.contains("did not stop in time"), "{logs}");
}

#[tokio::test]
async fn unresponsive_sse_server_times_out_and_stops() {
    check_unresponsive_server("sse").await;
}

#[tokio::test]
async fn unresponsive_streamable_http_server_times_out_and_stops() {
    check_unresponsive_server("streamable_http").await;
}

/// Starts a listener on 127.0.0.1 that responds to every request with a redirect to `location`
/// and returns its port.
async fn start_redirecting_server(location: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buffer = [0_u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let response = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\n\
                     content-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

async fn check_cross_origin_redirect(kind: &str) {
    // `localhost` and `127.0.0.1` are different origins that reach the same listener.
    let target = SilentServer::start().await;
    let location = format!("http://localhost:{}/elsewhere", target.port);
    let redirecting = start_redirecting_server(location).await;
    let config = config_with_key(&format!(
        "extensions:\n  moved:\n    type: {kind}\n    uri: http://127.0.0.1:{redirecting}/mcp\n    \
         timeout: 5\n    headers:\n      x-upstream-token: redirect-secret-0123456789\n",
    ));
    let daemon = crate::helpers::Daemon::launch(launch(&config)).await;

    let status = daemon
        .wait_extension("moved", |s| s["state"] == "failed")
        .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("error following redirect"), "{error}");
    assert_eq!(target.connections("/elsewhere").opened, 0, "{status}");
    let logs = daemon.stderr_text();
    assert!(logs.contains("to another origin rejected"), "{logs}");
    assert!(!logs.contains("redirect-secret"), "{logs}");
}

#[tokio::test]
async fn sse_redirect_to_other_origin_is_rejected() {
    check_cross_origin_redirect("sse").await;
}

#[tokio::test]
async fn streamable_http_redirect_to_other_origin_is_rejected() {
    check_cross_origin_redirect("streamable_http").await;
}
