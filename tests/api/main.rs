//! Integration tests: the real daemon binary on port 0, real files, real signals.

#[path = "../agent/aimock.rs"]
mod aimock;
mod auth;
mod edge;
mod extension_processes;
mod extensions;
mod helpers;
mod lifecycle;
mod peers;
mod plugins;
mod reload;
mod sessions;
