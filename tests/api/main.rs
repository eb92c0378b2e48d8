//! Integration tests: the real daemon binary on port 0, real files, real signals.

mod auth;
mod edge;
mod helpers;
mod lifecycle;
mod reload;
