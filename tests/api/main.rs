//! Integration tests: the real daemon binary on port 0, real files, real signals.

#[path = "../agent/aimock.rs"]
mod aimock;
mod auth;
mod edge;
mod helpers;
mod lifecycle;
mod reload;
mod sessions;
