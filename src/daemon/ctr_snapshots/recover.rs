//! At start-up: the snapshotter's records are the truth. Running containers keep their
//! overlay mounts across a restart of the daemon (nothing here touches them); cache images
//! their layers need are mounted again if the node rebooted; what no record names goes.

use std::collections::BTreeSet;

use tracing::{error, info, warn};

use super::{cachemount, ops, paths, Daemon, Result, SnapshotError};
use crate::failure::Failure;
use crate::store::Backing;

pub fn recover(d: &Daemon) -> Result<()> {
    let root = &d.inner.config.root;
    for dir in [
        paths::root(root),
        paths::snapshots_dir(root),
        paths::caches_dir(root),
    ] {
        crate::access::create_dir_with_mode(&dir, crate::access::PRIVATE_DIR).map_err(|e| {
            SnapshotError::Internal(Failure::new(format!("cannot create {}", dir.display()), e))
        })?;
    }
    finish_interrupted(d)?;
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

/// A Prepare that died between writing its record and making its directories was never
/// answered: containerd does not know the snapshot, and without its directories it cannot be
/// mounted, so its record goes. A Commit that died before removing the overlay work
/// directory (only an active snapshot needs one) leaves it: it goes too.
fn finish_interrupted(d: &Daemon) -> Result<()> {
    let root = &d.inner.config.root;
    for r in d.inner.store.list_ctr_snapshots()? {
        if r.backing != Backing::Local {
            continue;
        }
        let fs = paths::fs_dir(root, r.id);
        if !fs.exists() && d.inner.store.ctr_children(&r.key)? == 0 {
            warn!(key = %r.key, "removing a snapshot whose Prepare was interrupted");
            d.inner.store.delete_ctr_snapshot(&r.key)?;
            continue;
        }
        let work = paths::work_dir(root, r.id);
        if r.kind == crate::store::SnapshotKind::Committed && work.exists() {
            info!(key = %r.key, "removing the work directory an interrupted Commit left");
            std::fs::remove_dir_all(&work).map_err(|e| {
                SnapshotError::Internal(Failure::new(
                    format!("cannot remove {}", work.display()),
                    e,
                ))
            })?;
        }
    }
    Ok(())
}
