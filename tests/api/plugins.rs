//! Native plugins: the demo and calc libraries the workspace builds, and C plugins compiled
//! by the tests, loaded by the real daemon from its config and extensions directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::aimock::Aimock;
use crate::helpers::{ADMIN_KEY, Daemon, Launch, config_with_key};

/// The marker the demo plugin's `build_marker` tool returns; tests patch its last byte to
/// make other versions of the library.
const MARKER: &[u8] = b"goose-plugin-demo-build-marker-A";

/// Returns a library that `cargo test` builds into `target/<profile>/deps/`, because the
/// plugin crates are dev-dependencies.
pub fn built_library(crate_name: &str) -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_goose-api"));
    let file = format!("lib{}.so", crate_name.replace('-', "_"));
    let path = daemon
        .parent()
        .expect("binary directory")
        .join("deps")
        .join(&file);
    assert!(
        path.is_file(),
        "{} is missing; run plain `cargo test`",
        path.display()
    );
    path
}

/// Returns the demo library with its build marker ending in `version` instead of `A`.
fn demo_version(version: u8) -> Vec<u8> {
    let bytes = std::fs::read(built_library("goose-plugin-demo")).expect("read the demo");
    let mut patched = MARKER.to_vec();
    *patched.last_mut().expect("marker is not empty") = version;
    let at = bytes
        .windows(MARKER.len())
        .position(|window| window == MARKER)
        .expect("the demo library contains its build marker");
    let mut bytes = bytes;
    bytes[at..at + MARKER.len()].copy_from_slice(&patched);
    bytes
}

/// Writes `bytes` to `path` with mode 0644 in one step, by renaming a hidden file, as an
/// operator's deployment does.
fn install_by_rename(path: &Path, bytes: &[u8]) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let temp = path.with_file_name(format!(".{name}.tmp"));
    write_with_mode(&temp, bytes, 0o644);
    std::fs::rename(&temp, path).expect("rename the library into place");
}

fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).expect("write a library");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Compiles `source` into a shared library with `cc` and returns its bytes.
fn compile_c(dir: &Path, name: &str, source: &str, defines: &[&str]) -> Vec<u8> {
    let source_path = dir.join(format!("{name}.c"));
    let output = dir.join(format!("{name}.so"));
    std::fs::write(&source_path, source).expect("write C source");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&output)
        .args(defines)
        .arg(&source_path)
        .status()
        .expect("run cc; a C compiler is needed, as for building Rust");
    assert!(status.success(), "cc failed for {name}");
    std::fs::read(&output).expect("read the compiled library")
}

fn c_example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/c-example/echo.c");
    std::fs::read_to_string(path).expect("read plugins/c-example/echo.c")
}

/// Starts a daemon whose extensions directory contains `libraries`, name and bytes.
async fn daemon_with(libraries: &[(&str, Vec<u8>)], extra_config: &str) -> Daemon {
    let mut launch = Launch::with_config(&config_with_key(extra_config));
    let dir = tempfile::tempdir().expect("temporary directory");
    let extensions = dir.path().join("extensions");
    std::fs::create_dir(&extensions).expect("create the extensions directory");
    std::fs::set_permissions(&extensions, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the extensions directory");
    for (name, bytes) in libraries {
        write_with_mode(&extensions.join(name), bytes, 0o644);
    }
    launch.dir = Some(dir);
    Daemon::launch(launch).await
}

async fn wait_marker(daemon: &Daemon, expected: &str) {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = daemon.call_tool("demo", "build_marker", json!({})).await;
        if status == StatusCode::OK && body["content"][0]["text"] == expected {
            return;
        }
        assert!(
            started.elapsed() < crate::peers::EXTENSION_WAIT,
            "the demo plugin still returns {body} instead of {expected}\nlogs:\n{}",
            daemon.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts a call of `wait_for_file` on `extension` that returns once `release` exists, and
/// waits until the plugin runs it.
async fn held_call(
    daemon: &Daemon,
    extension: &str,
    release: &Path,
) -> tokio::task::JoinHandle<(StatusCode, String)> {
    let url = daemon.url(&format!("/extensions/{extension}/tools/wait_for_file"));
    let http = daemon.http.clone();
    let started = release.with_extension("started");
    let arguments = json!({"path": release, "max_millis": 60_000, "started": started});
    let call = tokio::spawn(async move {
        let response = http
            .post(url)
            .header("x-api-key", ADMIN_KEY)
            .json(&arguments)
            .send()
            .await
            .expect("send the held call");
        (response.status(), response.text().await.unwrap_or_default())
    });
    let waited = std::time::Instant::now();
    while !started.exists() {
        assert!(
            waited.elapsed() < crate::peers::EXTENSION_WAIT,
            "the held call did not start
logs:
{}",
            daemon.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call
}

fn marker(version: char) -> String {
    format!("goose-plugin-demo-build-marker-{version}")
}

#[tokio::test]
async fn plugins_load_list_and_call() {
    let demo = std::fs::read(built_library("goose-plugin-demo")).expect("read the demo");
    let daemon = daemon_with(
        &[("demo.so", demo)],
        "extensions:\n  calc:\n    type: builtin\n",
    )
    .await;
    let demo = daemon.wait_running("demo").await;
    let calc = daemon.wait_running("calc").await;
    // The daemon runs with an empty environment, so its temporary directory is /tmp.
    let copies = format!("/tmp/goose-api-plugins-{}", daemon.child_id());
    assert!(
        !std::path::Path::new(&copies).exists(),
        "{copies} is left after loading"
    );

    assert_eq!(demo["type"], "plugin");
    assert_eq!(demo["source"], "directory");
    assert_eq!(demo["plugin"]["name"], "demo");
    assert_eq!(demo["plugin"]["loaded_versions"], 1);
    assert_eq!(
        demo["tools"],
        json!([
            "echo",
            "sleep",
            "wait_for_file",
            "fail",
            "panic",
            "build_marker"
        ])
    );
    assert_eq!(calc["type"], "builtin");
    assert_eq!(calc["tools"], json!(["evaluate", "summarize"]));
    let names: Value = daemon
        .get("/extensions/list", ADMIN_KEY)
        .await
        .json()
        .await
        .expect("list JSON");
    assert_eq!(names, json!({"extensions": ["calc", "demo"]}));

    let echoed = daemon
        .call_text("demo", "echo", json!({"text": "hi"}))
        .await;
    assert_eq!(echoed, "hi");
    let sum = daemon
        .call_text("calc", "evaluate", json!({"expression": "(400 + 56) * 2"}))
        .await;
    assert_eq!(sum, "912");

    let (status, failed) = daemon
        .call_tool("demo", "fail", json!({"message": "disk full"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["is_error"], true);
    assert_eq!(failed["content"][0]["text"], "disk full");

    let (status, invalid) = daemon.call_tool("demo", "echo", json!({"txt": 1})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");
    assert!(
        invalid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("text")
    );

    let (status, missing) = daemon.call_tool("demo", "nothing", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

#[tokio::test]
async fn panicking_tool_returns_error_and_daemon_serves() {
    let demo = std::fs::read(built_library("goose-plugin-demo")).expect("read the demo");
    let daemon = daemon_with(&[("demo.so", demo)], "").await;
    daemon.wait_running("demo").await;

    for _ in 0..3 {
        let (status, body) = daemon.call_tool("demo", "panic", json!({})).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("the tool panicked"), "{message}");
        assert!(message.contains("always panics"), "{message}");
    }
    let echoed = daemon
        .call_text("demo", "echo", json!({"text": "alive"}))
        .await;
    assert_eq!(echoed, "alive");
    let status = daemon.extension("demo").await;
    assert_eq!(status["state"], "running");
}

/// aimock returns a calc call and then the total, or a panic call and then a failure note.
const AGENT_FIXTURES: &str = r#"{"fixtures": [
  {"match": {"toolResultContains": "456"}, "response": {"content": "The total is 456."}},
  {"match": {"userMessage": "add with the plugin"},
   "response": {"toolCalls": [{"name": "calc__evaluate", "arguments": {"expression": "400 + 56"}}]}},
  {"match": {"toolResultContains": "panicked"}, "response": {"content": "The tool failed."}},
  {"match": {"userMessage": "panic in the plugin"},
   "response": {"toolCalls": [{"name": "demo__panic", "arguments": {}}]}}
]}"#;

#[tokio::test]
async fn plugin_tools_work_in_agent_turn() {
    let fixtures_dir = tempfile::tempdir().expect("temporary directory");
    let fixtures = fixtures_dir.path().join("fixtures.json");
    std::fs::write(&fixtures, AGENT_FIXTURES).expect("write fixtures");
    let aimock = Aimock::start(&fixtures);
    let demo = std::fs::read(built_library("goose-plugin-demo")).expect("read the demo");
    let config = format!(
        "provider: openai\nmodel: mock-model\nproviders:\n  openai:\n    base_url: {}/v1\n    \
         api_key: mock-provider-key\nextensions:\n  calc:\n    type: builtin\n",
        aimock.url
    );
    let daemon = daemon_with(&[("demo.so", demo)], &config).await;
    daemon.wait_running("calc").await;
    daemon.wait_running("demo").await;

    for (prompt, answer) in [
        ("add with the plugin", "The total is 456."),
        ("panic in the plugin", "The tool failed."),
    ] {
        let response = daemon
            .post_json("/session/start", ADMIN_KEY, &json!({"prompt": prompt}))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{prompt}");
        let body: Value = response.json().await.expect("session JSON");
        assert_eq!(body["message"], answer, "{prompt}: {body}");
    }
    let echoed = daemon
        .call_text("demo", "echo", json!({"text": "after"}))
        .await;
    assert_eq!(echoed, "after");
}

/// A shared library without any of the plugin symbols.
const NO_SYMBOLS_C: &str = "int unrelated_function(void) { return 42; }\n";

#[tokio::test]
async fn refused_libraries_fail_and_daemon_serves() {
    let build = tempfile::tempdir().expect("temporary directory");
    let c_echo = compile_c(build.path(), "echo", &c_example(), &[]);
    let abi_99 = compile_c(
        build.path(),
        "abi99",
        &c_example(),
        &["-DGOOSE_ABI_VERSION=99"],
    );
    let no_symbols = compile_c(build.path(), "nosymbols", NO_SYMBOLS_C, &[]);
    let mut foreign = c_echo.clone();
    // e_machine, at byte 18 of the ELF header: 62 is x86-64 and 183 is AArch64.
    let other_machine: u16 = if cfg!(target_arch = "aarch64") {
        62
    } else {
        183
    };
    foreign[18..20].copy_from_slice(&other_machine.to_le_bytes());

    let open_dir = tempfile::tempdir().expect("temporary directory");
    write_with_mode(&open_dir.path().join("open.so"), &c_echo, 0o644);
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let config = format!(
        "extensions:\n  opendir:\n    type: plugin\n    path: {:?}\n  missing:\n    type: builtin\n",
        open_dir.path().join("open.so")
    );
    let daemon = daemon_with(
        &[
            ("cecho.so", c_echo.clone()),
            ("text.so", b"this is not a library\n".repeat(10)),
            ("foreign.so", foreign),
            ("nosymbols.so", no_symbols),
            ("abi.so", abi_99),
        ],
        &config,
    )
    .await;
    let writable = daemon.path("extensions/writable.so");
    write_with_mode(&writable, &c_echo, 0o666);

    let cases = [
        ("text", "not a shared library"),
        ("foreign", "another architecture"),
        (
            "nosymbols",
            "missing the plugin symbols goose_plugin_abi_version",
        ),
        ("abi", "ABI version 99"),
        ("writable", "writable by other users"),
        ("opendir", "writable by other users"),
        ("missing", "no builtin plugin named \"missing\""),
    ];
    for (name, expected) in cases {
        let status = daemon
            .wait_extension(name, |status| status["state"] == "failed")
            .await;
        let error = status["last_error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
    }

    daemon.wait_running("cecho").await;
    let echoed = daemon
        .call_text("cecho", "echo", json!({"a": "\"q\""}))
        .await;
    assert_eq!(echoed, r#"{"a":"\"q\""}"#);
    let health = daemon.get("/health", ADMIN_KEY).await;
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test]
async fn swap_by_rename_and_in_place_copy() {
    let daemon = daemon_with(&[("demo.so", demo_version(b'A'))], "").await;
    daemon.wait_running("demo").await;
    wait_marker(&daemon, &marker('A')).await;
    let library = daemon.path("extensions/demo.so");

    // A call in flight keeps the old version loaded while new calls go to the new one.
    let release = daemon.path("release-swap");
    let held = held_call(&daemon, "demo", &release).await;
    install_by_rename(&library, &demo_version(b'B'));
    wait_marker(&daemon, &marker('B')).await;
    let during = daemon.extension("demo").await;
    assert_eq!(during["plugin"]["loaded_versions"], 2, "{during}");

    std::fs::write(&release, "").expect("release the held call");
    let (status, body) = held.await.expect("held call task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("exists"), "{body}");
    daemon
        .wait_extension("demo", |status| status["plugin"]["loaded_versions"] == 1)
        .await;

    // Overwriting the loaded file in place is safe, because the daemon runs a private copy.
    std::fs::write(&library, demo_version(b'C')).expect("overwrite the library in place");
    wait_marker(&daemon, &marker('C')).await;
    let echoed = daemon
        .call_text("demo", "echo", json!({"text": "ok"}))
        .await;
    assert_eq!(echoed, "ok");
}

#[tokio::test]
async fn removal_during_call_lets_it_finish() {
    let daemon = daemon_with(&[("demo.so", demo_version(b'A'))], "").await;
    daemon.wait_running("demo").await;
    let release = daemon.path("release-removal");
    let held = held_call(&daemon, "demo", &release).await;
    std::fs::remove_file(daemon.path("extensions/demo.so")).expect("delete the library");
    daemon.wait_extension("demo", Value::is_null).await;
    std::fs::write(&release, "").expect("release the held call");
    let (status, body) = held.await.expect("held call task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("exists"), "{body}");
    let (status, body) = daemon.call_tool("demo", "echo", json!({"text": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn hung_call_times_out_and_is_counted() {
    let manifest = format!(
        "type: plugin\npath: {:?}\ntimeout: 1\n",
        built_library("goose-plugin-demo")
    );
    let mut launch = Launch::with_config(&config_with_key(""));
    launch
        .files
        .push(("extensions/slowdemo.yaml".to_owned(), manifest));
    let daemon = Daemon::launch(launch).await;
    daemon.wait_running("slowdemo").await;

    let release = daemon.path("release-hung");
    let arguments = json!({"path": release, "max_millis": 60_000});
    let (status, body) = daemon
        .call_tool("slowdemo", "wait_for_file", arguments.clone())
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let during = daemon.extension("slowdemo").await;
    assert_eq!(during["hung_calls"], 1, "{during}");
    let echoed = daemon
        .call_text("slowdemo", "echo", json!({"text": "still serving"}))
        .await;
    assert_eq!(echoed, "still serving");

    // Up to the daemon's limit of 32 hung calls, each keeping a thread; then new calls
    // are rejected until the hung ones return.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 1..32 {
        let request = daemon
            .http
            .post(daemon.url("/extensions/slowdemo/tools/wait_for_file"))
            .header("x-api-key", ADMIN_KEY)
            .json(&arguments);
        calls.spawn(async move { request.send().await.map(|response| response.status()) });
    }
    while let Some(joined) = calls.join_next().await {
        let status = joined.expect("call task").expect("call response");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    }
    let during = daemon.extension("slowdemo").await;
    assert_eq!(during["hung_calls"], 32, "{during}");
    let (status, body) = daemon
        .call_tool("slowdemo", "echo", json!({"text": "one more"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("slowdemo"), "{message}");
    assert!(message.contains("32 of its calls"), "{message}");

    std::fs::write(&release, "").expect("release the hung calls");
    daemon
        .wait_extension("slowdemo", |status| status["hung_calls"] == 0)
        .await;
    let echoed = daemon
        .call_text("slowdemo", "echo", json!({"text": "serving again"}))
        .await;
    assert_eq!(echoed, "serving again");
}

/// Resident memory of process `pid` in KiB, from `/proc`.
fn resident_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Returns the distinct files under a `goose-api-plugins-` directory that `pid` has mapped.
fn mapped_plugin_copies(pid: i32) -> std::collections::BTreeSet<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.contains("goose-api-plugins-"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn hundred_swaps_keep_serving() {
    const CYCLES: usize = 100;
    let versions = [demo_version(b'A'), demo_version(b'B')];
    let daemon = daemon_with(&[("demo.so", versions[0].clone())], "").await;
    daemon.wait_running("demo").await;
    wait_marker(&daemon, &marker('A')).await;
    let library = daemon.path("extensions/demo.so");
    let before = resident_kib(daemon.pid());

    for cycle in 1..=CYCLES {
        let (bytes, letter) = if cycle % 2 == 1 {
            (&versions[1], 'B')
        } else {
            (&versions[0], 'A')
        };
        install_by_rename(&library, bytes);
        wait_marker(&daemon, &marker(letter)).await;
    }

    let after = resident_kib(daemon.pid());
    let status = daemon.extension("demo").await;
    assert_eq!(status["state"], "running");
    assert_eq!(status["plugin"]["loaded_versions"], 1, "{status}");

    // Ten versions with contents of their own, so each gets a private copy of its own: once
    // replaced and idle, a version must be unmapped, not only dropped from the registry.
    for letter in b'C'..=b'L' {
        install_by_rename(&library, &demo_version(letter));
        wait_marker(&daemon, &marker(char::from(letter))).await;
    }
    let mapped = mapped_plugin_copies(daemon.pid());
    assert_eq!(mapped.len(), 1, "copies still mapped: {mapped:?}");
    eprintln!(
        "{CYCLES} plugin swaps: resident memory {before} KiB before, {after} KiB after, growth \
         {} KiB",
        after.saturating_sub(before)
    );
}
