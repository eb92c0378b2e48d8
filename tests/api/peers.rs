//! The MCP servers the extension tests start, and daemon helpers for extensions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_KEY, Daemon, Launch, WAIT};

/// Time allowed for an extension to reach a state; servers started by Node take longest.
pub const EXTENSION_WAIT: Duration = Duration::from_secs(30);

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Rust MCP server example, which `cargo test` builds with the tests.
pub fn rust_server() -> String {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_goose-api"));
    let path = daemon
        .parent()
        .map(|dir| dir.join("examples").join("mcp-test-server"))
        .unwrap_or_default();
    assert!(
        path.is_file(),
        "{} is missing; run `cargo test` without --test, or `cargo build --example \
         mcp-test-server`",
        path.display()
    );
    path.display().to_string()
}

/// The entry point of `@modelcontextprotocol/server-everything`, installed on first use.
pub fn everything_server() -> String {
    crate::aimock::install_peers();
    let path = repository()
        .join("tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        path.is_file(),
        "{} is missing; run .ci/run, or `npm install` in tests/peers",
        path.display()
    );
    path.display().to_string()
}

/// The Node preload that makes servers listen on 127.0.0.1 only.
pub fn loopback_preload() -> String {
    repository()
        .join("tests/peers/loopback.cjs")
        .display()
        .to_string()
}

/// Starts server-everything in `mode` on a free loopback port and returns the process and
/// the port.
pub fn start_everything_http(mode: &str) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("pick a free port");
    let child = std::process::Command::new("node")
        .arg("--require")
        .arg(loopback_preload())
        .arg(everything_server())
        .arg(mode)
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start node");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < crate::peers::EXTENSION_WAIT,
            "{mode} server did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (child, port)
}

/// The Python interpreter of the test virtual environment and the Python test server.
pub fn python_server() -> (String, String) {
    crate::aimock::install_peers();
    let python = repository().join("tests/peers/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run .ci/run to create the virtual environment",
        python.display()
    );
    let script = repository().join("tests/peers/python_server.py");
    (python.display().to_string(), script.display().to_string())
}

/// Returns a launch with `config` and the test process's `PATH`, so servers find `sh`.
pub fn launch(config: &str) -> Launch {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned());
    Launch::with_config(config).env("PATH", &path)
}

/// Returns a YAML manifest of a stdio extension.
pub fn stdio_manifest(cmd: &str, args: &[&str], extra: &str) -> String {
    let args = serde_json::to_string(args).expect("arguments as JSON");
    format!("type: stdio\ncmd: {cmd:?}\nargs: {args}\n{extra}")
}

/// Returns the tool names of an extension status from `GET /extensions/{name}`.
pub fn tool_names(status: &Value) -> Vec<String> {
    status["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

impl Daemon {
    /// Returns `GET /extensions/{name}`, or `Value::Null` when it is not defined.
    pub async fn extension(&self, name: &str) -> Value {
        let response = self.get(&format!("/extensions/{name}"), ADMIN_KEY).await;
        if response.status() == StatusCode::NOT_FOUND {
            return Value::Null;
        }
        response.json().await.expect("extension status JSON")
    }

    /// Waits until extension `name` satisfies `ready` and returns its status.
    pub async fn wait_extension(&self, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let status = self.extension(name).await;
            if ready(&status) {
                return status;
            }
            assert!(
                started.elapsed() < EXTENSION_WAIT,
                "extension {name} stayed {status:#}\nlogs:\n{}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until extension `name` is running.
    pub async fn wait_running(&self, name: &str) -> Value {
        self.wait_extension(name, |status| status["state"] == "running")
            .await
    }

    /// Sends `POST path` with a JSON body and `key`.
    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("x-api-key", key)
            .json(body)
            .send()
            .await
            .expect("send POST")
    }

    /// Calls a tool through the daemon and returns the status and the JSON body.
    pub async fn call_tool(&self, name: &str, tool: &str, arguments: Value) -> (StatusCode, Value) {
        let response = self
            .post_json(
                &format!("/extensions/{name}/tools/{tool}"),
                ADMIN_KEY,
                &arguments,
            )
            .await;
        let status = response.status();
        (status, response.json().await.expect("tool call JSON"))
    }

    /// Calls a tool that must succeed and returns the text of its first part.
    pub async fn call_text(&self, name: &str, tool: &str, arguments: Value) -> String {
        let (status, body) = self.call_tool(name, tool, arguments).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["is_error"], json!(false), "{body}");
        body["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Returns the daemon's process id.
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child_id()).expect("pid fits i32")
    }
}

/// Returns whether any process of group `group` exists.
pub fn group_alive(group: i32) -> bool {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), None).is_ok()
}

/// Waits until no process of group `group` is left.
pub async fn wait_group_gone(group: i32) {
    let started = Instant::now();
    while group_alive(group) {
        assert!(
            started.elapsed() < WAIT,
            "process group {group} is still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the process ids of the children of process `pid`, from `/proc`.
fn children(pid: i32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for task in tasks.filter_map(Result::ok) {
        let listed = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(listed.split_whitespace().map(str::to_owned));
    }
    children
}

/// Returns the fields of `/proc/<pid>/stat` after the parenthesized command name: state,
/// parent id, process group id and so on. Empty when the process is gone.
fn stat_fields(pid: &str) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Returns the zombie children of process `pid`, from `/proc`.
pub fn zombie_children(pid: i32) -> Vec<String> {
    children(pid)
        .into_iter()
        .filter(|child| stat_fields(child).first().is_some_and(|state| state == "Z"))
        .collect()
}

/// Waits until process `pid` has no zombie children. A server that crashed stays a zombie
/// until its supervisor reaps it, shortly after it exits.
pub async fn wait_no_zombies(pid: i32) {
    let started = Instant::now();
    loop {
        let zombies = zombie_children(pid);
        if zombies.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "process {pid} left zombie children {zombies:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Returns the process groups of the live children of process `pid`. Every stdio server
/// leads a group of its own, so for a daemon these are its extension servers' groups.
pub fn child_groups(pid: i32) -> Vec<i32> {
    let mut groups: Vec<i32> = children(pid)
        .iter()
        .map(|child| stat_fields(child))
        .filter(|fields| fields.first().is_some_and(|state| state != "Z"))
        .filter_map(|fields| fields.get(2)?.parse().ok())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Returns the live processes of group `group`, from `/proc`; zombies are left out.
pub fn group_members(group: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let group = group.to_string();
    let mut members: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let fields = stat_fields(&pid.to_string());
            fields.first().is_some_and(|state| state != "Z") && fields.get(2) == Some(&group)
        })
        .collect();
    members.sort_unstable();
    members
}
