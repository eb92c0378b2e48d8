//! The registry as the agent's [`ToolSource`]: the tools of every running extension,
//! filtered by `available_tools`, called with the extension's current `timeout`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::client;
use super::plugin;
use super::registry::Registry;
use super::slot::Endpoint;
use crate::tools::{ToolCallFuture, ToolDefinition, ToolError, ToolSource};

impl ToolSource for Registry {
    fn tools(&self) -> Vec<ToolDefinition> {
        self.shared
            .slots
            .load()
            .values()
            .flat_map(|slot| slot.tools())
            .collect()
    }

    fn call<'a>(
        &'a self,
        extension: &'a str,
        tool: &'a str,
        arguments: serde_json::Value,
        cancel: CancellationToken,
    ) -> ToolCallFuture<'a> {
        Box::pin(async move {
            let not_found = || ToolError::NotFound {
                extension: extension.to_owned(),
                tool: tool.to_owned(),
            };
            let slot = self.slot(extension).ok_or_else(not_found)?;
            let endpoint = slot.endpoint().map_err(|(state, last_error)| {
                let mut reason = format!("it is {}", state.as_str());
                if let Some(error) = last_error {
                    reason.push_str(&format!(" after this error: {error}"));
                }
                ToolError::Unavailable {
                    extension: extension.to_owned(),
                    reason,
                }
            })?;
            if !slot.offers(tool) {
                return Err(not_found());
            }
            // Read at call time, so a reload that changes `timeout` applies to this call.
            let limit = Duration::from_secs(slot.definition().config.timeout);
            let peer = match endpoint {
                Endpoint::Plugin(version) => {
                    let hung = slot.hung_calls.clone();
                    // Each hung call keeps a thread, so their number is capped.
                    let hung_now = hung.load(std::sync::atomic::Ordering::Acquire);
                    if hung_now >= plugin::MAX_HUNG_CALLS {
                        return Err(ToolError::Unavailable {
                            extension: extension.to_owned(),
                            reason: format!(
                                "{hung_now} of its calls still run after their timeout, and \
                                 new calls wait until they return; replace the plugin with a \
                                 fixed version, or restart the daemon"
                            ),
                        });
                    }
                    return plugin::call_tool(version, hung, tool, arguments, limit, cancel).await;
                }
                Endpoint::Mcp(peer) => peer,
            };
            let result = client::call_tool(&peer, tool, arguments, limit, cancel).await;
            match result {
                Err(ToolError::Failed(reason)) if peer.is_transport_closed() => {
                    let reason = slot.stdout_overflow.get().unwrap_or(reason);
                    Err(ToolError::Unavailable {
                        extension: extension.to_owned(),
                        reason,
                    })
                }
                other => other,
            }
        })
    }
}
