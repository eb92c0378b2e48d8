//! Retrying provider calls after rate limits, server errors and connection failures.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::provider::ProviderError;

/// Retries when the provider config sets none.
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// First backoff delay; each retry doubles it.
const BASE_DELAY: Duration = Duration::from_millis(500);
/// Maximum wait between attempts, also for a `retry-after` the provider sends.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// Runs `attempt` until it succeeds, fails with an error that is not retryable, or has
/// been retried `max_retries` times. `on_retry` is called before each retry.
pub async fn with_retries<T, F, Fut>(
    max_retries: u32,
    cancel: &CancellationToken,
    mut on_retry: impl FnMut(u32, &ProviderError, Duration),
    mut attempt: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut retries = 0;
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if !error.is_retryable() || retries >= max_retries {
            return Err(error);
        }
        retries += 1;
        let delay = delay_for(retries, &error);
        on_retry(retries, &error, delay);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => return Err(ProviderError::Cancelled),
        }
    }
}

/// Returns the provider's `retry-after` when it sent one, else exponential backoff with
/// up to 25 % jitter so that parallel sessions do not retry in lockstep.
fn delay_for(retry: u32, error: &ProviderError) -> Duration {
    if let ProviderError::RateLimited {
        retry_after: Some(after),
    } = error
    {
        return (*after).min(MAX_DELAY);
    }
    let exponential = BASE_DELAY.saturating_mul(1 << retry.saturating_sub(1).min(16));
    let jitter = rand::rng().random_range(0.0..0.25);
    exponential.mul_f64(1.0 + jitter).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_honours_retry_after() {
        let calls = AtomicU32::new(0);
        let mut delays = Vec::new();
        let result = with_retries(
            3,
            &CancellationToken::new(),
            |_, _, delay| delays.push(delay),
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Err(ProviderError::RateLimited {
                        retry_after: Some(Duration::from_secs(7)),
                    }),
                    1 => Err(ProviderError::Connection("reset".to_owned())),
                    _ => Ok("done"),
                }
            },
        )
        .await;
        assert_eq!(result, Ok("done"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(delays[0], Duration::from_secs(7));
        // The second retry doubles the base delay, plus up to 25 % jitter.
        let doubled = BASE_DELAY * 2;
        assert!(delays[1] >= doubled, "{:?}", delays[1]);
        assert!(delays[1] <= doubled.mul_f64(1.25), "{:?}", delays[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_retries_and_on_permanent_errors() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(
            2,
            &CancellationToken::new(),
            |_, _, _| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::Server {
                    status: Some(503),
                    message: "overloaded".to_owned(),
                })
            },
        )
        .await;
        assert!(matches!(result, Err(ProviderError::Server { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), _> = with_retries(
            5,
            &CancellationToken::new(),
            |_, _, _| {},
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ProviderError::Authentication { status: 401 })
            },
        )
        .await;
        assert_eq!(result, Err(ProviderError::Authentication { status: 401 }));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
