//! Native plugins: shared libraries that export tools through the C ABI described in
//! `plugins/README.md`, loaded with libloading, swapped while they run, and called on
//! threads of their own with the extension's timeout.

mod call;
mod elf;
// The daemon's only unsafe code: the dynamic loader and the calls into plugins.
#[allow(unsafe_code)]
mod library;
mod load;
mod supervisor;

pub use call::{MAX_HUNG_CALLS, call_tool};
pub use load::PluginVersion;
pub use supervisor::supervise;
