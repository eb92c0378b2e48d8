//! Start-up checks, check-config, signals and draining.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nix::sys::signal::Signal;
use reqwest::StatusCode;

use crate::helpers::{ADMIN_KEY, Daemon, Launch, config_with_key, spawn};

/// Runs the binary to completion and returns its exit code, stdout and stderr.
fn run_to_end(launch: &Launch) -> (Option<i32>, String, String) {
    let mut launch = Launch {
        files: launch.files.clone(),
        config_arg: launch.config_arg.clone(),
        env: launch.env.clone(),
        args: launch.args.clone(),
        dir: None,
        trusted_cert: None,
    };
    let (child, _dir) = spawn(&mut launch);
    let output = child.wait_with_output().expect("wait for goose-api");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn non_loopback_host_without_key_refuses_to_start() {
    let launch = Launch::with_config("host: 0.0.0.0\nport: 0\n");
    let (code, _, stderr) = run_to_end(&launch);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("config.yaml: key `host`"), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn invalid_config_exits_64_listing_every_problem() {
    let config = "port: 0\nprot: 1\nlimits:\n  max_body_bytes: lots\nlog:\n  format: xml\n";
    let (code, _, stderr) = run_to_end(&Launch::with_config(config));
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("3 problems"), "{stderr}");
    for key in ["`prot`", "`limits.max_body_bytes`", "`log.format`"] {
        assert!(stderr.contains(key), "{key} missing from {stderr}");
    }
    assert!(stderr.contains("config.yaml"), "{stderr}");
}

#[test]
fn check_config_prints_redacted_config() {
    let config = "api_key: very-secret-admin-key-123\nproviders:\n  openai:\n    api_key: \
                  sk-very-secret\n    headers:\n      x-org: secret-org\nstore:\n  url: \
                  postgres://goose:hunter2secret@127.0.0.1:5432/test\n";
    let mut launch = Launch::with_config(config);
    launch.args.push("check-config".to_owned());
    let (code, stdout, stderr) = run_to_end(&launch);
    assert_eq!(code, Some(0), "{stderr}");
    for secret in [
        "very-secret-admin-key-123",
        "sk-very-secret",
        "secret-org",
        "hunter2secret",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    assert!(stdout.contains("[redacted]"), "{stdout}");
    assert!(stdout.contains("127.0.0.1:5432/test"), "{stdout}");
    assert!(
        stdout.contains("max_body_bytes: 2097152"),
        "defaults are shown:\n{stdout}"
    );
}

#[test]
fn check_config_fails_on_invalid_config() {
    let mut launch = Launch::with_config("prot: 1\nmodel: ''\n");
    launch.args.push("check-config".to_owned());
    let (code, _, stderr) = run_to_end(&launch);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("`prot`") && stderr.contains("`model`"),
        "{stderr}"
    );
}

#[test]
fn version_and_help_print() {
    let mut launch = Launch::default();
    launch.args.push("--version".to_owned());
    let (code, stdout, _) = run_to_end(&launch);
    assert_eq!(code, Some(0));
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
    launch.args = vec!["--help".to_owned()];
    let (code, stdout, _) = run_to_end(&launch);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("check-config"), "{stdout}");
}

#[tokio::test]
async fn environment_overrides_file_in_the_daemon() {
    let launch = Launch::with_config(&config_with_key("model: from-file\n"))
        .env("GOOSE_API_MODEL", "from-env")
        .env("GOOSE_API_PROVIDER", "anthropic");
    let daemon = Daemon::launch(launch).await;
    let body: serde_json::Value = daemon
        .get("/provider/config", ADMIN_KEY)
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(body["model"], "from-env");
    assert_eq!(body["provider"], "anthropic");
}

#[tokio::test]
async fn file_named_config_is_found_without_flag() {
    let formats = [
        (
            "toml",
            format!(
                "port = 0\napi_key = \"{ADMIN_KEY}\"\nmodel = \"toml-model\"\n\
                 [log]\nformat = \"json\"\n"
            ),
        ),
        (
            "yaml",
            format!("port: 0\napi_key: {ADMIN_KEY}\nmodel: yaml-model\nlog:\n  format: json\n"),
        ),
        (
            "json",
            format!(
                r#"{{"port": 0, "api_key": "{ADMIN_KEY}", "model": "json-model",
                    "log": {{"format": "json"}}}}"#
            ),
        ),
    ];
    for (format, text) in formats {
        let launch = Launch {
            files: vec![("config".to_owned(), text)],
            ..Launch::default()
        };
        let daemon = Daemon::launch(launch).await;
        assert_eq!(daemon.model().await, format!("{format}-model"));
        let status = daemon.config_status().await;
        let file = status["file"].as_str().unwrap_or_default();
        assert!(file.ends_with("/config"), "{format}: {status}");
    }
}

/// Starts a request whose body arrives in two parts and returns the open connection.
fn start_slow_request(daemon: &Daemon, body: &str, first_part: usize) -> TcpStream {
    let mut stream = TcpStream::connect(daemon.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let head = format!(
        "POST /config/reload HTTP/1.1\r\nhost: x\r\nx-api-key: {ADMIN_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    stream
        .write_all(&body.as_bytes()[..first_part])
        .expect("write first part");
    stream
}

#[tokio::test]
async fn sigterm_drains_in_flight_request() {
    drain_in_flight_request(&config_with_key("")).await;
}

/// Without a header read timeout the connection loop arms no hyper timer, and must drain
/// the same way.
#[tokio::test]
async fn sigterm_drains_without_header_read_timeout() {
    drain_in_flight_request(&config_with_key("limits:\n  header_read_timeout_secs: 0\n")).await;
}

async fn drain_in_flight_request(config: &str) {
    let mut daemon = Daemon::start(config).await;
    let body = "{\"force\": false}";
    let mut stream = start_slow_request(&daemon, body, 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are no longer accepted once draining starts.
    let refused = daemon.http.get(daemon.url("/health")).send().await;
    assert!(refused.is_err(), "a new request was served while draining");

    stream
        .write_all(&body.as_bytes()[5..])
        .expect("write the rest");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "response was {response}"
    );
    assert!(response.contains("\"outcome\":\"unchanged\""), "{response}");

    let status = daemon.wait_exit().await;
    assert!(status.success(), "exit status {status}");
    let logs = daemon.stderr_text();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("all in-flight requests finished"), "{logs}");
}

#[tokio::test]
async fn drain_deadline_closes_stuck_requests() {
    let config = config_with_key("shutdown:\n  drain_timeout_secs: 1\n");
    let mut daemon = Daemon::start(&config).await;
    let _stream = start_slow_request(&daemon, "{\"force\": false}", 3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    daemon.signal(Signal::SIGINT);
    let status = daemon.wait_exit().await;
    assert!(status.success(), "exit status {status}");
    let logs = daemon.stderr_text();
    assert!(logs.contains("SIGINT received"), "{logs}");
    assert!(logs.contains("drain deadline passed"), "{logs}");
}

#[tokio::test]
async fn ready_reports_ready_after_start() {
    let daemon = Daemon::start(&config_with_key("")).await;
    let response = daemon
        .http
        .get(daemon.url("/ready"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}
