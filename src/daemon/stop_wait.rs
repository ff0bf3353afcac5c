//! A delete cancels the build or pull that holds the object's loop device and mount, then
//! waits for it to let go, with a deadline: work that does not stop in time is reported on
//! the object (a Warning event) and to the caller (409, try again), never waited on for ever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::events::WARNING;
use super::owner::Owner;
use super::{Daemon, DaemonError};

/// How often the running-work map is looked at while waiting.
const POLL: Duration = Duration::from_millis(20);

/// Cancels the work running under `key` (if any) and waits up to `wait` for it to end.
/// On time-out the owner gets a `StopTimedOut` event and the caller a Conflict naming `what`.
pub(super) async fn cancel_and_wait(
    d: &Daemon,
    key: &str,
    owner: &Owner,
    what: &str,
    wait: Duration,
) -> Result<(), DaemonError> {
    let running = lock(&d.inner.builds).get(key).cloned();
    let Some(token) = running else {
        return Ok(());
    };
    token.cancel();
    if until_gone(&d.inner.builds, key, wait).await {
        return Ok(());
    }
    let message = format!(
        "{what} did not stop within {}s of being cancelled, so its loop device and mount are still held: try the delete again",
        wait.as_secs_f64()
    );
    tracing::warn!(%key, "{message}");
    owner.event(d, WARNING, "StopTimedOut", message.clone());
    Err(DaemonError::Conflict(message))
}

/// Whether `key` left `running` within `wait`.
async fn until_gone(
    running: &Mutex<HashMap<String, CancellationToken>>,
    key: &str,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while lock(running).contains_key(key) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL.min(wait)).await;
    }
    true
}

fn lock(
    m: &Mutex<HashMap<String, CancellationToken>>,
) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    fn running(key: &str) -> Arc<Mutex<HashMap<String, CancellationToken>>> {
        Arc::new(Mutex::new(HashMap::from([(
            key.to_owned(),
            CancellationToken::new(),
        )])))
    }

    #[tokio::test]
    async fn work_that_never_stops_is_given_up_on_at_the_deadline() {
        let map = running("disk/d-1");
        let t = Instant::now();
        assert!(!until_gone(&map, "disk/d-1", Duration::from_millis(200)).await);
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn work_that_stops_ends_the_wait_early() {
        let map = running("disk/d-2");
        let m = map.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            m.lock().unwrap().remove("disk/d-2");
        });
        let t = Instant::now();
        assert!(until_gone(&map, "disk/d-2", Duration::from_secs(60)).await);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn nothing_running_needs_no_wait() {
        let map = running("other");
        assert!(until_gone(&map, "disk/d-3", Duration::ZERO).await);
    }
}
