//! A small plugin for goose-api's tests: it echoes, sleeps, waits for a file, reports a
//! failure, panics and names its build.

use std::time::Duration;

use goose_plugin::{NoArguments, export_plugin};

/// Text that identifies this build. The hot swap tests patch these bytes in a copy of the
/// library to make a different version of it, so keep the text unique in the file and keep
/// its length.
static BUILD_MARKER: &str = "goose-plugin-demo-build-marker-A";

/// Arguments of `echo`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct EchoInput {
    /// Text to return.
    pub text: String,
}

/// Returns the text unchanged.
pub fn echo(input: EchoInput) -> String {
    input.text
}

/// Arguments of `sleep`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SleepInput {
    /// Milliseconds to block the calling thread.
    pub millis: u64,
}

/// Blocks the calling thread, then reports how long it slept.
pub fn sleep(input: SleepInput) -> String {
    std::thread::sleep(Duration::from_millis(input.millis));
    format!("slept {} ms", input.millis)
}

/// Arguments of `wait_for_file`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct WaitInput {
    /// File whose existence ends the wait.
    pub path: String,
    /// Milliseconds after which the wait gives up.
    pub max_millis: u64,
    /// File created when the wait begins, so a test knows the call has arrived.
    #[serde(default)]
    pub started: Option<String>,
}

/// Blocks the calling thread until a file exists, so tests can hold a call in flight for
/// exactly as long as they need.
pub fn wait_for_file(input: WaitInput) -> Result<String, String> {
    if let Some(started) = &input.started {
        std::fs::write(started, "").map_err(|error| format!("cannot create {started}: {error}"))?;
    }
    let deadline = std::time::Instant::now() + Duration::from_millis(input.max_millis);
    while !std::path::Path::new(&input.path).exists() {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "{} did not appear in {} ms",
                input.path, input.max_millis
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(format!("{} exists", input.path))
}

/// Arguments of `fail`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct FailInput {
    /// Error message to report.
    pub message: String,
}

/// Reports a failure, which the caller receives as a result with `is_error` set.
pub fn fail(input: FailInput) -> Result<String, String> {
    Err(input.message)
}

/// Panics, to show that the panic becomes an error result.
pub fn panic(_input: NoArguments) -> String {
    panic!("the panic tool always panics")
}

/// Returns the build marker, so a test can tell which version of the library answered.
pub fn build_marker(_input: NoArguments) -> String {
    std::hint::black_box(BUILD_MARKER).to_owned()
}

export_plugin! {
    name: "demo",
    version: env!("CARGO_PKG_VERSION"),
    tools: [
        echo: "Returns the given text unchanged",
        sleep: "Blocks for the given number of milliseconds",
        wait_for_file: "Blocks until the given file exists or the time limit passes",
        fail: "Reports the given message as a failed result",
        panic: "Panics; for testing how the daemon contains panics",
        build_marker: "Returns the text that identifies this build of the plugin",
    ],
}
