//! A delete cancels the build or pull that holds the object's loop device and mount, then
//! waits for it to let go, with a deadline: work that does not stop in time is reported on
//! the object (a Warning event) and to the caller (409, try again), never waited on for ever.

use std::time::Duration;

use super::events::WARNING;
use super::owner::Owner;
use super::{Daemon, DaemonError};

/// Cancels the work running for `owner` (if any) and waits up to `wait` for it to end.
/// On time-out the owner gets a `StopTimedOut` event and the caller a Conflict naming `what`.
pub(super) async fn cancel_and_wait(
    d: &Daemon,
    owner: &Owner,
    what: &str,
    wait: Duration,
) -> Result<(), DaemonError> {
    if d.inner.jobs.cancel_and_wait(owner, wait).await {
        return Ok(());
    }
    let message = format!(
        "{what} did not stop within {}s of being cancelled, so its loop device and mount are still held: try the delete again",
        wait.as_secs_f64()
    );
    tracing::warn!(?owner, "{message}");
    owner.event(d, WARNING, "StopTimedOut", message.clone());
    Err(DaemonError::Conflict(message))
}
