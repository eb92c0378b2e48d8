//! Extensions: MCP servers and native plugins declared in the config or dropped into the
//! extensions directory, kept running by a registry that follows every change, and offered
//! to the agent as tools.

mod changes;
mod client;
mod convert;
pub mod definition;
pub mod env;
mod line_limit;
pub mod manifest;
#[cfg(target_os = "linux")]
pub(crate) mod orphans;
mod plugin;
mod process;
mod registry;
mod slot;
mod sse;
mod stderr;
mod streamable_http;
mod supervisor;
mod tool_source;
mod watch;

pub use changes::ChangeError;
pub use definition::{DefinitionProblem, Source};
pub use registry::Registry;
pub use slot::{ExtensionStatus, PluginStatus, State};
