//! Retention: caches past their `expireDateTime` (retentionDays after creation; a Failed
//! cache 24 h after failing) are deleted the way `DELETE` deletes them. Disks cloned from an
//! expired cache are not touched: they hold their snapshot until they go. Each pass also keeps
//! auto-created caches within their budget (disks/auto_budget.rs).

use std::time::Duration;

use time::OffsetDateTime;
use tracing::{info, warn};

use super::{clock, handlers, Daemon};

/// How often expiry is checked: retention is counted in days, a minute late is nothing.
const EVERY: Duration = Duration::from_secs(60);

impl Daemon {
    /// Starts the periodic retention pass; it stops with the daemon. The first pass runs at
    /// once: what expired while the daemon was down goes now, not a minute later.
    pub fn start_gc(&self) {
        let d = self.clone();
        self.inner.tasks.spawn(async move {
            loop {
                collect(&d, clock::now()).await;
                tokio::select! {
                    _ = d.inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(EVERY) => {}
                }
            }
        });
    }
}

/// Deletes every cache that expired at or before `now`; returns their names.
pub async fn collect(d: &Daemon, now: OffsetDateTime) -> Vec<String> {
    let Ok(caches) = d.inner.store.list_caches() else {
        return Vec::new();
    };
    let mut deleted = Vec::new();
    for cache in caches {
        let Some(status) = &cache.status else {
            continue;
        };
        let expired = status
            .expire_date_time
            .as_deref()
            .and_then(clock::parse)
            .is_some_and(|t| t <= now);
        // A build in progress is never collected: its expiry counts from when it is done.
        if !expired || !status.phase.is_terminal() {
            continue;
        }
        let name = cache.metadata.name.clone();
        crate::fault::point("gc.collect");
        match handlers::delete_cache(d, &name).await {
            Ok(_) => {
                info!(cache = %name, expired = ?status.expire_date_time, "expired cache deleted");
                deleted.push(name);
            }
            Err(e) => warn!(cache = %name, error = %e, "could not delete an expired cache"),
        }
    }
    // Auto-created caches beyond the node's budget go too (each deletion logged).
    super::disks::enforce_cache_budget(d).await;
    // A safety net under the queue's own triggers (a build's end, a disk's delete, a timer
    // while builds wait for loop devices): nothing waits longer than a pass.
    super::build::queue::pump(d);
    deleted
}
