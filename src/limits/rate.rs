//! Request rate per key: a GCRA limiter from governor for each key name, rebuilt when the
//! key's configured rate or burst changes.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The outcome of one request against its key's rate, with the values of the
/// `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The key's requests per minute.
    pub limit: u32,
    /// Requests the key may send at once after a pause.
    pub burst: u32,
    /// Requests the key may send right now.
    pub remaining: u32,
    /// Seconds until the key may send a full burst again.
    pub reset_secs: u64,
    /// For a rejected request: seconds until the next request is accepted, at least 1.
    pub retry_after_secs: u64,
}

/// The rate limiters of every key that has sent a request.
#[derive(Debug, Default)]
pub struct RateLimits {
    limiters: Mutex<HashMap<String, (Quota, Arc<Limiter>)>>,
}

impl RateLimits {
    /// Counts one request of `key` against `requests_per_minute` with `burst`. Values of 0
    /// are treated as 1, because validation rejects them.
    pub fn check(&self, key: &str, requests_per_minute: u32, burst: u32) -> RateDecision {
        let rate = NonZeroU32::new(requests_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(rate).allow_burst(burst);
        let limiter = self.limiter(key, quota);
        let interval = quota.replenish_interval();
        match limiter.check() {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                RateDecision {
                    allowed: true,
                    limit: rate.get(),
                    burst: burst.get(),
                    remaining,
                    reset_secs: ceil_secs(interval * (burst.get() - remaining)),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                RateDecision {
                    allowed: false,
                    limit: rate.get(),
                    burst: burst.get(),
                    remaining: 0,
                    reset_secs: ceil_secs(wait + interval * (burst.get() - 1)),
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }

    /// Returns the limiter of `key`, replacing it when its quota changed in the config. A
    /// replaced limiter starts with a full burst.
    fn limiter(&self, key: &str, quota: Quota) -> Arc<Limiter> {
        let mut limiters = self
            .limiters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((current, limiter)) = limiters.get(key)
            && *current == quota
        {
            return limiter.clone();
        }
        let limiter = Arc::new(RateLimiter::direct(quota).with_middleware());
        limiters.insert(key.to_owned(), (quota, limiter.clone()));
        limiter
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rejection_with_headers() {
        let limits = RateLimits::default();
        let first = limits.check("alice", 60, 2);
        assert!(first.allowed);
        assert_eq!(first.limit, 60);
        assert_eq!(first.remaining, 1);
        let second = limits.check("alice", 60, 2);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        let third = limits.check("alice", 60, 2);
        assert!(!third.allowed);
        assert_eq!(third.remaining, 0);
        assert_eq!(third.retry_after_secs, 1);
        assert!(third.reset_secs >= 1, "reset {}", third.reset_secs);
        assert!(third.reset_secs <= 2, "reset {}", third.reset_secs);
        assert!(limits.check("bob", 60, 2).allowed, "keys are separate");
    }

    #[test]
    fn changed_quota_starts_a_new_limiter() {
        let limits = RateLimits::default();
        assert!(limits.check("alice", 1, 1).allowed);
        assert!(!limits.check("alice", 1, 1).allowed);
        assert!(limits.check("alice", 1, 3).allowed);
    }
}
