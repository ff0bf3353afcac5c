//! Step 2 of a disk create: hold the chosen snapshot and clone it (or make an empty disk),
//! attached and mounted.

use std::path::PathBuf;

use tracing::{error, warn};

use super::internal;
use super::select::{ChosenCache, Plan};
use crate::daemon::{Daemon, DaemonError};
use crate::disk::{self, DiskOptions, DiskSource};

/// A snapshot with a reference taken for the disk: a concurrent delete of its cache cannot
/// remove the file from under the clone. The finished disk keeps the reference.
pub(super) struct HeldSnapshot {
    digest: String,
    path: PathBuf,
}

pub(super) fn hold_snapshot(d: &Daemon, cache: &ChosenCache) -> Result<HeldSnapshot, DaemonError> {
    let digest = cache.snapshot_digest.clone();
    d.inner.store.snapshot_ref(&digest).map_err(internal)?;
    match d.inner.snapshots.image_path(&digest) {
        Ok(path) => Ok(HeldSnapshot { digest, path }),
        Err(e) => Err(give_back(d, &digest, e.to_string())),
    }
}

/// Clones `held` (or creates an empty disk) at the disk's image path, attached and mounted
/// where the request asks. On failure the reference is given back.
pub(super) async fn clone_disk(
    d: &Daemon,
    id: &str,
    mountpoint: Option<PathBuf>,
    plan: &Plan,
    held: Option<&HeldSnapshot>,
) -> Result<disk::Disk, DaemonError> {
    let opts = DiskOptions {
        size_bytes: u64::from(plan.size_gib) << 30,
        mountpoint,
        clone_mode: d.inner.clone_mode,
    };
    let sys = d.inner.sys.clone();
    let image = super::image_path(d, id);
    let snapshots = d.inner.snapshots.clone();
    let source = held.map(|h| (h.digest.clone(), h.path.clone()));
    let created = tokio::task::spawn_blocking(move || -> Result<disk::Disk, String> {
        let Some((digest, snapshot_image)) = &source else {
            return disk::create(sys.as_ref(), &image, DiskSource::Empty, &opts)
                .map_err(|e| e.to_string());
        };
        let (from, grown_in) = super::grown::source_for(
            sys.as_ref(),
            &snapshots,
            digest,
            snapshot_image,
            opts.size_bytes,
            opts.clone_mode,
        )
        .map_err(|e| e.to_string())?;
        crate::fault::point("disk.grow");
        let mut made = disk::create(sys.as_ref(), &image, DiskSource::Snapshot(&from), &opts)
            .map_err(|e| e.to_string())?;
        if let Some(took) = grown_in {
            // This disk waited for its size's grown image; the next ones will not.
            made.timings.grow_ms += took.as_secs_f64() * 1e3;
        }
        Ok(made)
    })
    .await
    .map_err(internal)?;
    created.map_err(|e| {
        warn!(disk = %id, error = %e, "disk creation failed");
        let message = format!("cannot create the disk: {e}");
        match held {
            Some(h) => give_back(d, &h.digest, message),
            None => DaemonError::Internal(message),
        }
    })
}

/// Drops the reference taken for a disk that was not made, and returns the error `message`
/// describes. Should the release fail too, the snapshot keeps a reference nothing holds and
/// its space is not reclaimed: that is logged and named in the error, never dropped.
fn give_back(d: &Daemon, digest: &str, message: String) -> DaemonError {
    match crate::daemon::handlers::release_snapshot(d, digest) {
        Ok(()) => DaemonError::Internal(message),
        Err(e) => {
            error!(%digest, error = %e, "could not release the snapshot reference of a disk that was not created");
            DaemonError::Internal(format!(
                "{message}; releasing the disk's reference on snapshot {digest} failed too ({e}): the snapshot's space is not reclaimed until that reference is removed"
            ))
        }
    }
}
