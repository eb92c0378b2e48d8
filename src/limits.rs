//! Per-key request rates and concurrent turns, read from the current config on every
//! request so that edits apply live.

mod rate;
mod turns;

pub use rate::{RateDecision, RateLimits};
pub use turns::{TurnCounter, TurnLimitError, TurnPermit};
