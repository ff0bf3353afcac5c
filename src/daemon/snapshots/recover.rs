//! At start-up: the snapshotter's records are the truth. Running containers keep their
//! overlay mounts across a restart of the daemon (nothing here touches them); cache images
//! their layers need are mounted again if the node rebooted; what no record names goes.

use std::collections::BTreeSet;

use tracing::{error, info};

use super::{cachemount, ops, paths, Daemon, Result, SnapshotError};
use crate::store::Backing;

pub fn recover(d: &Daemon) -> Result<()> {
    let root = &d.inner.config.root;
    for dir in [paths::snapshots_dir(root), paths::caches_dir(root)] {
        std::fs::create_dir_all(&dir).map_err(|e| {
            SnapshotError::Internal(format!("cannot create {}: {e}", dir.display()))
        })?;
    }
    let records = d.inner.store.list_ctr_snapshots()?;
    let digests: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| match &r.backing {
            Backing::Cache { digest, .. } => Some(digest.as_str()),
            _ => None,
        })
        .collect();
    for digest in &digests {
        if let Err(e) = cachemount::ensure_mounted(d, digest) {
            // The layers stay recorded: containerd sees them and its containers fail to
            // mount with this error, rather than the snapshots vanishing under it.
            error!(%digest, error = %e, "cannot mount a cache image containerd's snapshots use");
        }
    }
    ops::handle(d, super::SnapshotRequest::Cleanup)?;
    info!(
        snapshots = records.len(),
        cache_images = digests.len(),
        "snapshotter state recovered"
    );
    Ok(())
}
