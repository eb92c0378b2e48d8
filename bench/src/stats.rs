//! Latency samples and their percentiles.

use std::time::Duration;

/// Latency samples, sorted in ascending order.
#[derive(Debug, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts `samples` once so that percentiles are index look-ups.
    pub fn from_unsorted(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    /// Returns the nearest-rank percentile `p` (0 to 100), or `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let count = self.0.len();
        if count == 0 {
            return None;
        }
        let rank = (p / 100.0 * count as f64).ceil() as usize;
        Some(self.0[rank.clamp(1, count) - 1])
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns the samples, sorted.
    pub fn into_samples(self) -> Vec<Duration> {
        self.0
    }

    /// The samples, in ascending order.
    pub fn samples(&self) -> &[Duration] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Latencies {
        Latencies::from_unsorted(values.iter().copied().map(Duration::from_millis).collect())
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let latencies = millis(&[5, 1, 4, 2, 3, 6, 7, 8, 9, 10]);
        assert_eq!(latencies.percentile(50.0), Some(Duration::from_millis(5)));
        assert_eq!(latencies.percentile(99.0), Some(Duration::from_millis(10)));
        assert_eq!(latencies.percentile(10.0), Some(Duration::from_millis(1)));
        assert_eq!(latencies.percentile(0.0), Some(Duration::from_millis(1)));
    }

    #[test]
    fn percentile_of_no_samples_is_none() {
        assert_eq!(Latencies::default().percentile(50.0), None);
    }
}
