//! Stdio server processes: failures at start, odd output, crashes, timeouts, and that no
//! process is left behind.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Daemon, config_with_key, rename_save};
use crate::peers::{
    child_groups, group_alive, launch, rust_server, stdio_manifest, wait_group_gone,
    wait_no_zombies, zombie_children,
};

fn daemon_config(name: &str, cmd: &str, args: &[&str], extra: &str) -> String {
    let args = serde_json::to_string(args).expect("arguments as JSON");
    config_with_key(&format!(
        "extensions:\n  {name}:\n    type: stdio\n    cmd: {cmd:?}\n    args: {args}\n{extra}"
    ))
}

#[tokio::test]
async fn server_exiting_at_start_reports_status_and_stderr() {
    let config = daemon_config(
        "dies",
        "sh",
        &["-c", "echo 'fatal: no database' >&2; exit 3"],
        "",
    );
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon
        .wait_extension("dies", |s| s["state"] == "failed")
        .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(error.contains("fatal: no database"), "{error}");
    let (code, body) = daemon.call_tool("dies", "echo", json!({"text": "x"})).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("dies"),
        "{body}"
    );
}

#[tokio::test]
async fn server_never_answering_initialize_times_out() {
    let config = daemon_config("silent", "sleep", &["1000"], "    timeout: 1\n");
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon
        .wait_extension("silent", |s| s["state"] == "failed")
        .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("did not respond to the initialize request within 1 s"),
        "{error}"
    );
}

#[tokio::test]
async fn server_exiting_on_closed_stdin_reports_timeout() {
    // Prints no JSON and exits only when its stdin closes, which the timeout causes.
    let config = daemon_config(
        "chatty",
        "sh",
        &["-c", "echo 'not JSON'; cat > /dev/null"],
        "    timeout: 1\n",
    );
    let daemon = Daemon::launch(launch(&config)).await;
    let status = daemon
        .wait_extension("chatty", |s| s["state"] == "failed")
        .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("did not respond to the initialize request within 1 s"),
        "{error}"
    );
}

#[tokio::test]
async fn banner_on_stdout_and_stderr_flood_are_tolerated() {
    let server = rust_server();
    let mut config = daemon_config("banner", &server, &["--banner"], "");
    config.push_str(&format!(
        "  flood:\n    type: stdio\n    cmd: {server:?}\n    args: [\"--flood\", \"20000\"]\n"
    ));
    let daemon = Daemon::launch(launch(&config)).await;
    daemon.wait_running("banner").await;
    assert_eq!(
        daemon
            .call_text("banner", "echo", json!({"text": "ok"}))
            .await,
        "ok"
    );
    daemon.wait_running("flood").await;
    let status = daemon
        .wait_extension("flood", |s| {
            s["stderr_tail"].to_string().contains("flood done")
        })
        .await;
    let tail = status["stderr_tail"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_default();
    assert!(tail <= 40, "tail has {tail} lines");
    assert_eq!(
        daemon
            .call_text("flood", "echo", json!({"text": "ok"}))
            .await,
        "ok"
    );
}

#[tokio::test]
async fn large_result_passes_through() {
    let config = daemon_config("big", &rust_server(), &[], "");
    let daemon = Daemon::launch(launch(&config)).await;
    daemon.wait_running("big").await;
    let text = daemon
        .call_text("big", "big", json!({"bytes": 10_000_000}))
        .await;
    assert_eq!(text.len(), 10_000_000);
}

#[tokio::test]
async fn oversized_result_fails_call_at_once() {
    let config = daemon_config("big", &rust_server(), &[], "    timeout: 20\n");
    let daemon = Daemon::launch(launch(&config)).await;
    daemon.wait_running("big").await;
    let started = std::time::Instant::now();
    let (status, body) = daemon
        .call_tool("big", "big", json!({"bytes": 20_000_000}))
        .await;
    let elapsed = started.elapsed();
    assert!(elapsed.as_secs() < 10, "the call took {elapsed:?}");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("extension big"), "{message}");
    assert!(message.contains("16777216 bytes"), "{message}");

    daemon.wait_running("big").await;
    assert_eq!(
        daemon.call_text("big", "echo", json!({"text": "ok"})).await,
        "ok"
    );
    let status = daemon.extension("big").await;
    assert_eq!(status["restarts"], json!(1), "{status}");
    let logs = daemon.stderr_text();
    let logged = logs
        .matches("larger than the limit of 16777216 bytes")
        .count();
    assert!(logged >= 1, "{logs}");
    let error_lines = logs
        .lines()
        .filter(|line| line.contains("\"level\":\"ERROR\""))
        .filter(|line| line.contains("16777216"))
        .count();
    assert_eq!(error_lines, 1, "{logs}");
}

#[tokio::test]
async fn server_killed_mid_call_restarts() {
    let config = daemon_config("crashy", &rust_server(), &[], "");
    let daemon = Daemon::launch(launch(&config)).await;
    daemon.wait_running("crashy").await;
    let (code, body) = daemon.call_tool("crashy", "crash", json!({})).await;
    assert!(
        code == StatusCode::SERVICE_UNAVAILABLE || code == StatusCode::BAD_GATEWAY,
        "{code} {body}"
    );
    let status = daemon
        .wait_extension("crashy", |s| s["state"] == "running" && s["restarts"] == 1)
        .await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("status 7"),
        "{status}"
    );
    assert_eq!(
        daemon
            .call_text("crashy", "echo", json!({"text": "back"}))
            .await,
        "back"
    );
}

#[tokio::test]
async fn server_sigkilled_mid_call_restarts() {
    // The call timeout is far beyond the client's WAIT, so a call that returns at all
    // was not ended by the timeout.
    let config = daemon_config("victim", &rust_server(), &[], "    timeout: 120\n");
    let daemon = Daemon::launch(launch(&config)).await;
    daemon.wait_running("victim").await;
    let pid: i32 = daemon
        .call_text("victim", "pid", json!({}))
        .await
        .parse()
        .expect("pid tool returns a number");
    assert_eq!(
        child_groups(daemon.pid()),
        [pid],
        "the server leads its own group"
    );

    let never_created = daemon.path("never-created");
    let call = tokio::spawn(
        daemon
            .http
            .post(daemon.url("/extensions/victim/tools/wait_file"))
            .header("x-api-key", ADMIN_KEY)
            .json(&json!({"path": never_created}))
            .send(),
    );
    daemon
        .wait_extension("victim", |s| {
            s["stderr_tail"].to_string().contains("waiting for")
        })
        .await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("send SIGKILL to the server");

    let response = call
        .await
        .expect("call task")
        .expect("the call returns before the client timeout");
    let code = response.status();
    let body: Value = response.json().await.expect("error JSON");
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("extension victim"), "{message}");

    let status = daemon
        .wait_extension("victim", |s| s["state"] == "running" && s["restarts"] == 1)
        .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("killed by signal 9"), "{error}");
    assert_eq!(
        daemon
            .call_text("victim", "echo", json!({"text": "back"}))
            .await,
        "back"
    );
    let new_pid: i32 = daemon
        .call_text("victim", "pid", json!({}))
        .await
        .parse()
        .expect("pid tool returns a number");
    assert_ne!(new_pid, pid);
    wait_no_zombies(daemon.pid()).await;
    assert_eq!(child_groups(daemon.pid()), [new_pid]);
}

#[tokio::test]
async fn call_timeout_cancels_and_follows_reload() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    std::fs::create_dir_all(daemon.path("extensions")).unwrap();
    let manifest = daemon.path("extensions/slow.yaml");
    std::fs::write(
        &manifest,
        stdio_manifest(&rust_server(), &[], "timeout: 1\n"),
    )
    .unwrap();
    daemon.wait_running("slow").await;
    let (code, body) = daemon
        .call_tool("slow", "sleep", json!({"ms": 60_000}))
        .await;
    assert_eq!(code, StatusCode::GATEWAY_TIMEOUT, "{body}");
    daemon
        .wait_extension("slow", |s| {
            s["stderr_tail"].to_string().contains("sleep cancelled")
        })
        .await;

    rename_save(
        &manifest,
        &stdio_manifest(&rust_server(), &[], "timeout: 30\n"),
    );
    daemon.wait_extension("slow", |s| s["timeout"] == 30).await;
    assert_eq!(
        daemon.call_text("slow", "sleep", json!({"ms": 1500})).await,
        "slept"
    );
}

fn wrapped_manifest() -> String {
    let command = format!("sleep 1000 & exec {}", rust_server());
    stdio_manifest("sh", &["-c", &command], "")
}

#[tokio::test]
async fn removed_wrapper_leaves_no_process() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    std::fs::create_dir_all(daemon.path("extensions")).unwrap();
    let manifest = daemon.path("extensions/wrapped.yaml");
    std::fs::write(&manifest, wrapped_manifest()).unwrap();
    daemon.wait_running("wrapped").await;
    let group: i32 = daemon
        .call_text("wrapped", "pid", json!({}))
        .await
        .parse()
        .unwrap();
    assert!(group_alive(group));
    std::fs::remove_file(&manifest).unwrap();
    daemon.wait_extension("wrapped", Value::is_null).await;
    wait_group_gone(group).await;
    assert_eq!(zombie_children(daemon.pid()), Vec::<String>::new());
}

#[tokio::test]
async fn wrapper_restarted_fifty_times_leaves_no_process() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    std::fs::create_dir_all(daemon.path("extensions")).unwrap();
    let manifest = daemon.path("extensions/wrapped.yaml");
    let mut groups = Vec::new();
    for round in 0..50 {
        // Each distinct argument list is a change that needs a restart.
        let command = format!("sleep 1000 & exec {} --round {round}", rust_server());
        rename_save(&manifest, &stdio_manifest("sh", &["-c", &command], ""));
        // The previous server may still respond until the reload reaches the registry, and
        // calls fail while it restarts.
        let group = loop {
            daemon.wait_running("wrapped").await;
            let (code, body) = daemon.call_tool("wrapped", "pid", json!({})).await;
            let pid = body["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if code == StatusCode::OK && !groups.contains(&pid) {
                break pid;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        groups.push(group);
    }
    std::fs::remove_file(&manifest).unwrap();
    daemon.wait_extension("wrapped", Value::is_null).await;
    for group in &groups {
        wait_group_gone(group.parse().unwrap()).await;
    }
    assert_eq!(zombie_children(daemon.pid()), Vec::<String>::new());
}

#[tokio::test]
async fn shutdown_stops_wrapper_and_its_group() {
    let daemon_config = daemon_config(
        "wrapped",
        "sh",
        &["-c", &format!("sleep 1000 & exec {}", rust_server())],
        "",
    );
    let mut daemon = Daemon::launch(launch(&daemon_config)).await;
    daemon.wait_running("wrapped").await;
    let group: i32 = daemon
        .call_text("wrapped", "pid", json!({}))
        .await
        .parse()
        .unwrap();
    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait_exit().await;
    assert!(exit.success(), "{exit}\n{}", daemon.stderr_text());
    // Members that outlived the server are reparented to init, which reaps them.
    wait_group_gone(group).await;
    assert!(daemon.stderr_text().contains("all extensions stopped"));
}

/// Returns a server command that first starts `sleep 1000` in a session of its own, which
/// leaves the server's process group, and writes that process's id to `pid_file`.
fn escaping_server(pid_file: &std::path::Path) -> String {
    format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 1000' & exec {}",
        pid_file.display(),
        rust_server()
    )
}

/// Waits until `pid_file` names a live process and returns its id, which is also its
/// process group's id.
async fn escaped_process(pid_file: &std::path::Path) -> i32 {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(pid_file).unwrap_or_default();
        if let Ok(pid) = text.trim().parse::<i32>()
            && group_alive(pid)
        {
            return pid;
        }
        assert!(
            started.elapsed() < crate::helpers::WAIT,
            "{} names no live process: {text:?}",
            pid_file.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn removal_stops_process_that_left_group() {
    let daemon = Daemon::launch(launch(&config_with_key(""))).await;
    std::fs::create_dir_all(daemon.path("extensions")).unwrap();
    let pid_file = daemon.path("escaped.pid");
    let manifest = daemon.path("extensions/escaping.yaml");
    let command = escaping_server(&pid_file);
    rename_save(&manifest, &stdio_manifest("sh", &["-c", &command], ""));
    daemon.wait_running("escaping").await;
    let escaped = escaped_process(&pid_file).await;

    std::fs::remove_file(&manifest).unwrap();
    daemon.wait_extension("escaping", Value::is_null).await;
    wait_group_gone(escaped).await;
    let logs = daemon.stderr_text();
    assert!(logs.contains("moved out of its process group"), "{logs}");
}

#[tokio::test]
async fn shutdown_stops_process_that_left_group() {
    let mut daemon = Daemon::launch(launch(&config_with_key(""))).await;
    let pid_file = daemon.path("escaped.pid");
    let command = escaping_server(&pid_file);
    std::fs::create_dir_all(daemon.path("extensions")).unwrap();
    rename_save(
        &daemon.path("extensions/escaping.yaml"),
        &stdio_manifest("sh", &["-c", &command], ""),
    );
    daemon.wait_running("escaping").await;
    let escaped = escaped_process(&pid_file).await;

    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait_exit().await;
    assert!(exit.success(), "{exit}\n{}", daemon.stderr_text());
    wait_group_gone(escaped).await;
}
