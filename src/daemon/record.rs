//! Store writes nobody waits on: events, progress, the outcome of work running in the
//! background. A failure there cannot be answered to a caller, and a lost state change is a
//! bug, so it is logged where an operator looks, never dropped.

use tracing::{debug, error};

use crate::store::StoreError;

/// Logs a failed write of `what` on `object`. An object deleted meanwhile has no state left
/// to keep, so that is only a debug line.
pub fn or_log<T>(result: Result<T, StoreError>, object: &str, what: &str) {
    match result {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => debug!(object, what, "not recorded: the object is gone"),
        Err(e) => {
            error!(object, what, error = %e, "could not record a state change: the stored status is behind what happened")
        }
    }
}
