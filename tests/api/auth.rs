//! API keys, roles and the generated key.

use reqwest::StatusCode;

use crate::helpers::{ADMIN_KEY, Daemon, Launch, config_with_key, rename_save};

const USER_KEY: &str = "user-key-0123456789abcdef";
const SECOND_ADMIN_KEY: &str = "ops-key-0123456789abcdef";

fn config_with_roles(include_ops: bool) -> String {
    let mut keys = format!("api_keys:\n  - name: alice\n    key: {USER_KEY}\n    role: user\n");
    if include_ops {
        keys.push_str(&format!(
            "  - name: ops\n    key: {SECOND_ADMIN_KEY}\n    role: admin\n"
        ));
    }
    config_with_key(&keys)
}

#[tokio::test]
async fn missing_or_wrong_key_is_unauthorized() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let no_key = daemon
        .http
        .get(daemon.url("/provider/config"))
        .send()
        .await
        .expect("send");
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    let wrong = daemon
        .get("/provider/config", "admin-key-0123456789abcdeX")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = daemon.get("/provider/config", ADMIN_KEY).await;
    assert_eq!(right.status(), StatusCode::OK);
}

#[tokio::test]
async fn bearer_token_is_accepted() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let response = daemon
        .http
        .get(daemon.url("/provider/config"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn user_key_on_admin_route_is_forbidden() {
    let daemon = Daemon::start(&config_with_roles(false)).await;
    assert_eq!(
        daemon.get("/provider/config", USER_KEY).await.status(),
        StatusCode::OK
    );
    let forbidden = daemon.get("/config/status", USER_KEY).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = forbidden.json().await.expect("JSON body");
    assert_eq!(body["code"], "forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("alice")
    );
    assert_eq!(
        daemon.get("/config/status", ADMIN_KEY).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn key_removed_from_file_is_rejected() {
    let daemon = Daemon::start(&config_with_roles(true)).await;
    assert_eq!(
        daemon
            .get("/provider/config", SECOND_ADMIN_KEY)
            .await
            .status(),
        StatusCode::OK
    );

    rename_save(&daemon.path("config.yaml"), &config_with_roles(false));
    let started = std::time::Instant::now();
    while daemon
        .get("/provider/config", SECOND_ADMIN_KEY)
        .await
        .status()
        == StatusCode::OK
    {
        assert!(
            started.elapsed() < crate::helpers::WAIT,
            "revoked key still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let revoked = daemon.get("/provider/config", SECOND_ADMIN_KEY).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        daemon.get("/provider/config", USER_KEY).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn hashed_key_is_accepted() {
    use sha2_digest::hex_sha256;
    let config = config_with_key(&format!(
        "api_keys:\n  - name: hashed\n    key_sha256: {}\n    role: user\n",
        hex_sha256(USER_KEY)
    ));
    let daemon = Daemon::start(&config).await;
    assert_eq!(
        daemon.get("/provider/config", USER_KEY).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn generated_key_is_printed_once_and_never_logged() {
    let launch = Launch::default()
        .env("GOOSE_API_PORT", "0")
        .env("GOOSE_API_LOG__FORMAT", "json");
    let daemon = Daemon::launch(launch).await;
    let stdout = daemon.stdout_text();
    let key = stdout
        .rsplit(": ")
        .next()
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(key.len(), 64, "stdout was {stdout:?}");
    assert_eq!(stdout.matches(&key).count(), 1);
    assert_eq!(
        daemon.get("/provider/config", &key).await.status(),
        StatusCode::OK
    );
    assert!(
        !daemon.stderr_text().contains(&key),
        "the generated key reached the log"
    );
}

#[tokio::test]
async fn keys_never_appear_in_logs_or_responses() {
    // Debug level logs every request, so a key in any request line would show.
    let config = config_with_roles(true).replace("format: json", "format: json\n  level: debug");
    let daemon = Daemon::start(&config).await;
    let status = daemon
        .get("/config/status", ADMIN_KEY)
        .await
        .text()
        .await
        .expect("body");
    let wrong = daemon
        .get("/provider/config", "not-a-key-but-secret-looking")
        .await;
    let wrong_body = wrong.text().await.expect("body");
    let openapi = daemon
        .get("/openapi.json", USER_KEY)
        .await
        .text()
        .await
        .expect("body");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logs = daemon.stderr_text();
    for secret in [
        ADMIN_KEY,
        USER_KEY,
        SECOND_ADMIN_KEY,
        "not-a-key-but-secret-looking",
    ] {
        assert!(!logs.contains(secret), "log contains a key");
        assert!(!status.contains(secret), "status contains a key");
        assert!(!wrong_body.contains(secret), "error body contains a key");
        assert!(!openapi.contains(secret), "openapi contains a key");
    }
}

mod sha2_digest {
    /// Hex SHA-256 of `text`, computed with the system's `sha256sum` so the test does not
    /// reuse the daemon's own hashing code.
    pub fn hex_sha256(text: &str) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run sha256sum");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write to sha256sum");
        let output = child.wait_with_output().expect("sha256sum output");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}
