//! Integration tests: the real daemon binary on port 0, real files, real signals.

mod agent_tools;
#[path = "../agent/aimock.rs"]
mod aimock;
mod auth;
mod edge;
mod extension_changes;
mod extension_processes;
mod extensions;
mod faults;
mod helpers;
mod lifecycle;
mod limits;
mod peers;
mod plugins;
mod postgres;
mod reload;
mod replicas;
mod sessions;
mod tls;
mod unresponsive_servers;
