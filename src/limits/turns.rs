//! Counting the turns running now, per key and over the whole daemon.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A turn could not start because a concurrency limit is reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnLimitError {
    /// The key runs as many turns as it may.
    #[error(
        "key {key:?} is already running {max} turns, its maximum; wait for one to finish or \
         raise max_concurrent_turns of this key in api_keys, or \
         limits.max_concurrent_turns_per_key"
    )]
    Key {
        /// Name of the key.
        key: String,
        /// The key's limit.
        max: u32,
    },
    /// The daemon runs as many turns as it may.
    #[error(
        "this replica is already running {max} turns, its maximum; retry shortly or raise \
         limits.max_concurrent_turns"
    )]
    Daemon {
        /// The daemon-wide limit.
        max: u32,
    },
}

/// Turns running now on this replica.
#[derive(Debug, Default)]
pub struct TurnCounter {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: u32,
    per_key: HashMap<String, u32>,
}

/// One running turn, counted until dropped.
#[derive(Debug)]
pub struct TurnPermit {
    counter: Arc<TurnCounter>,
    key: String,
}

impl TurnCounter {
    /// Counts a new turn of `key`, unless it would exceed `key_max` turns of that key or
    /// `daemon_max` turns in all. `None` means no limit.
    pub fn try_acquire(
        self: &Arc<Self>,
        key: &str,
        key_max: Option<u32>,
        daemon_max: Option<u32>,
    ) -> Result<TurnPermit, TurnLimitError> {
        let mut counts = self.lock();
        let of_key = counts.per_key.get(key).copied().unwrap_or(0);
        if let Some(max) = key_max
            && of_key >= max
        {
            return Err(TurnLimitError::Key {
                key: key.to_owned(),
                max,
            });
        }
        if let Some(max) = daemon_max
            && counts.total >= max
        {
            return Err(TurnLimitError::Daemon { max });
        }
        counts.total += 1;
        *counts.per_key.entry(key.to_owned()).or_default() += 1;
        Ok(TurnPermit {
            counter: self.clone(),
            key: key.to_owned(),
        })
    }

    /// Returns the number of turns running now, of `key` and in all.
    pub fn running(&self, key: &str) -> (u32, u32) {
        let counts = self.lock();
        (counts.per_key.get(key).copied().unwrap_or(0), counts.total)
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for TurnPermit {
    fn drop(&mut self) {
        let mut counts = self.counter.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_key.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.per_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limit_rejects_and_frees() {
        let counter = Arc::new(TurnCounter::default());
        let first = counter.try_acquire("alice", Some(1), None);
        assert!(first.is_ok());
        let second = counter.try_acquire("alice", Some(1), None);
        assert!(matches!(second, Err(TurnLimitError::Key { max: 1, .. })));
        assert!(counter.try_acquire("bob", Some(1), None).is_ok());
        drop(first);
        assert_eq!(counter.running("alice"), (0, 0));
        assert!(counter.try_acquire("alice", Some(1), None).is_ok());
    }

    #[test]
    fn daemon_limit_counts_every_key() {
        let counter = Arc::new(TurnCounter::default());
        let _alice = counter.try_acquire("alice", None, Some(2));
        let _bob = counter.try_acquire("bob", None, Some(2));
        assert_eq!(counter.running("alice"), (1, 2));
        let third = counter.try_acquire("carol", None, Some(2));
        assert_eq!(third.err(), Some(TurnLimitError::Daemon { max: 2 }));
    }
}
