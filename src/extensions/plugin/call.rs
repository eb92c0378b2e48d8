//! Calling a plugin's tool on a thread of its own, with the extension's timeout. A call
//! that outlives its timeout cannot be stopped, so its thread is left running, counted in
//! the extension's status, and keeps the library version it runs loaded until it returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::load::PluginVersion;
use crate::tools::{ToolError, ToolOutput};

/// States of a call shared by the caller and the calling thread.
const RUNNING: u8 = 0;
const ABANDONED: u8 = 1;
const FINISHED: u8 = 2;

/// Reply of a plugin's call function: a result, or an error instead of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Reply {
    Failed { error: ReplyError },
    Output(ToolOutput),
}

#[derive(Debug, Deserialize)]
struct ReplyError {
    code: String,
    message: String,
}

/// Calls that outlived their timeout and still run, per plugin extension, above which new
/// calls are rejected. Each keeps a thread that cannot be stopped.
pub const MAX_HUNG_CALLS: u64 = 32;

/// Calls `tool` of `version`, waiting at most `limit`. `hung` counts the calls that
/// timed out or were cancelled and whose thread still runs.
pub async fn call_tool(
    version: Arc<PluginVersion>,
    hung: Arc<AtomicU64>,
    tool: &str,
    arguments: serde_json::Value,
    limit: Duration,
    cancel: CancellationToken,
) -> Result<ToolOutput, ToolError> {
    let arguments = match arguments {
        serde_json::Value::Null => "{}".to_owned(),
        serde_json::Value::Object(map) => serde_json::Value::Object(map).to_string(),
        other => {
            return Err(ToolError::InvalidArguments(format!(
                "arguments must be a JSON object, found {}",
                crate::extensions::convert::kind_of(&other)
            )));
        }
    };
    let state = Arc::new(AtomicU8::new(RUNNING));
    let (reply_tx, reply_rx) = oneshot::channel();
    let thread_state = state.clone();
    let thread_hung = hung.clone();
    let owned_tool = tool.to_owned();
    let thread_name = format!("plugin {}", version.manifest.name);
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let reply = version.library.call(&owned_tool, &arguments);
            // The version, and with it the library, is released before the count drops.
            drop(version);
            if thread_state.swap(FINISHED, Ordering::AcqRel) == ABANDONED {
                thread_hung.fetch_sub(1, Ordering::AcqRel);
            }
            // The caller is gone after a timeout or a cancel; the reply is not needed then.
            let _ = reply_tx.send(reply);
        })
        .map_err(|error| {
            ToolError::Failed(format!("cannot start a thread for the call: {error}"))
        })?;
    let abandon = || {
        if state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            hung.fetch_add(1, Ordering::AcqRel);
        }
    };
    let reply = tokio::select! {
        reply = tokio::time::timeout(limit, reply_rx) => reply,
        () = cancel.cancelled() => {
            abandon();
            return Err(ToolError::Cancelled);
        }
    };
    match reply {
        Ok(Ok(reply)) => parse_reply(tool, reply),
        Ok(Err(_)) => Err(ToolError::Failed(
            "the plugin's calling thread ended without a reply".to_owned(),
        )),
        Err(_) => {
            abandon();
            Err(ToolError::TimedOut {
                secs: limit.as_secs(),
            })
        }
    }
}

fn parse_reply(tool: &str, reply: Result<String, String>) -> Result<ToolOutput, ToolError> {
    let text = reply.map_err(|error| ToolError::Failed(format!("the plugin failed: {error}")))?;
    let reply: Reply = serde_json::from_str(&text).map_err(|error| {
        ToolError::Failed(format!(
            "the plugin returned a reply that is neither a result nor an error: {error}"
        ))
    })?;
    match reply {
        Reply::Output(output) => Ok(output),
        Reply::Failed { error } => Err(match error.code.as_str() {
            "invalid_arguments" => ToolError::InvalidArguments(error.message),
            "unknown_tool" => ToolError::Failed(format!(
                "the plugin has no tool {tool}, though its manifest lists it: {}",
                error.message
            )),
            "panicked" => ToolError::Failed(error.message),
            code => ToolError::Failed(format!("the plugin reported {code}: {}", error.message)),
        }),
    }
}
