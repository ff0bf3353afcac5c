//! Retries of transient registry failures with exponential backoff.

use std::future::Future;
use std::time::Duration;

use super::error::RegistryError;

const FIRST_DELAY: Duration = Duration::from_millis(100);
/// Keeps a generous `max_retries` (or a registry's long Retry-After) from turning into minutes
/// of silence; the client's deadline bounds the whole anyway.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The delay before retry number `attempt` (0-based): 100 ms, 200 ms, 400 ms, … capped.
pub(crate) fn backoff(attempt: u32) -> Duration {
    FIRST_DELAY
        .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

/// Runs `op` until it succeeds, fails permanently, or `max_retries` retries are used up.
/// Only [`RegistryError::is_transient`] errors are retried: a 404 or a refused password will
/// not change by asking again.
pub(crate) async fn with_retries<T, F, Fut>(
    max_retries: u32,
    what: &str,
    mut op: F,
) -> Result<T, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RegistryError>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < max_retries => {
                // A registry that says when to come back is believed, up to the same cap.
                let delay = e
                    .retry_after()
                    .map_or_else(|| backoff(attempt), |d| d.min(MAX_DELAY));
                tracing::warn!(%what, error = %e, attempt = attempt + 1, ?delay, "transient registry failure; retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> RegistryError {
        RegistryError::Server {
            image: "i".into(),
            registry: "r".into(),
            status: 503,
            detail: "busy".into(),
        }
    }

    #[test]
    fn backoff_doubles_from_100ms_and_caps() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(20), MAX_DELAY);
        assert_eq!(backoff(40), MAX_DELAY);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let result = with_retries(3, "x", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(transient())
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(2, "x", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(transient())
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = with_retries(5, "x", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(RegistryError::NotFound {
                image: "i".into(),
                registry: "r".into(),
            })
        })
        .await;
        assert!(matches!(result, Err(RegistryError::NotFound { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
