//! Step 2 of a disk create: hold the chosen snapshot and clone it (or make an empty disk),
//! attached and mounted.

use std::path::PathBuf;

use tracing::{error, warn};

use super::internal;
use super::select::{ChosenCache, Plan};
use crate::daemon::{background, Daemon, DaemonError};
use crate::disk_image::{self, DiskOptions, DiskSource, MountTarget};

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
        Err(e) => Err(give_back(
            d,
            &digest,
            format!("cannot find snapshot {digest}'s image"),
            |m| DaemonError::internal_because(m, e),
        )),
    }
}

/// Clones `held` (or creates an empty disk) at the disk's image path, attached and mounted
/// where the request asks. On failure the reference is given back.
pub(super) async fn clone_disk(
    d: &Daemon,
    id: &str,
    mountpoint: Option<MountTarget>,
    plan: &Plan,
    held: Option<&HeldSnapshot>,
) -> Result<disk_image::Disk, DaemonError> {
    let opts = DiskOptions {
        size_bytes: u64::from(plan.size_gib) << 30,
        mountpoint,
        clone_mode: d.inner.clone_mode,
    };
    let sys = d.inner.sys.clone();
    let image = super::image_path(d, id);
    let snapshots = d.inner.snapshots.clone();
    let source = held.map(|h| (h.digest.clone(), h.path.clone()));
    let created = background::spawn_at(
        "disk-create",
        background::DISK_NICE,
        move || -> Result<disk_image::Disk, CreateFailure> {
            let Some((digest, snapshot_image)) = &source else {
                return disk_image::create(sys.as_ref(), &image, DiskSource::Empty, &opts)
                    .map_err(CreateFailure::from);
            };
            let (from, grown_in) = super::grown::source_for(
                sys.as_ref(),
                &snapshots,
                digest,
                snapshot_image,
                opts.size_bytes,
                opts.clone_mode,
            )
            .map_err(CreateFailure::other)?;
            crate::fault::point("disk.grow");
            let mut made =
                disk_image::create(sys.as_ref(), &image, DiskSource::Snapshot(&from), &opts)?;
            if let Some(took) = grown_in {
                // This disk waited for its size's grown image; the next ones will not.
                made.timings.grow_ms += took.as_secs_f64() * 1e3;
            }
            Ok(made)
        },
    )
    .await
    .map_err(DaemonError::internal)?;
    created.map_err(|e| {
        warn!(disk = %id, error = %e, "disk creation failed");
        let root = &d.inner.config.root;
        // The errno says so, or (a tool's failure, a grown image's) the filesystem does.
        let full = (!e.loop_shortage && !e.refused_mount_path)
            .then(|| {
                let state = crate::daemon::build::host_space::nearly_full(root);
                (e.no_space || state.is_some()).then_some(state)
            })
            .flatten();
        let message = match full {
            Some(state) => {
                d.metrics().error("host_full");
                host_full_message(root, state, &e)
            }
            None => format!("cannot create the disk: {e}"),
        };
        // No loop device or no room to be had is the node's shortage, not a fault in the
        // daemon: the caller is told it may try again (503) once some is freed.
        let kind: Box<dyn FnOnce(String) -> DaemonError> = if e.loop_shortage || full.is_some() {
            Box::new(DaemonError::Unavailable)
        } else if e.refused_mount_path {
            // The path the request named cannot be mounted on safely: the caller's to change.
            Box::new(refused_mount_path)
        } else {
            // The message says the error; the error itself is kept as its source.
            Box::new(move |m| DaemonError::internal_because(m, e))
        };
        match held {
            Some(h) => give_back(d, &h.digest, message, kind),
            None => kind(message),
        }
    })
}

/// What a create refused for a full host says: which filesystem, how full, what to free.
pub(super) fn host_full_message(
    root: &std::path::Path,
    state: Option<(u64, u64)>,
    e: &dyn std::fmt::Display,
) -> String {
    use crate::daemon::clock::human_bytes;
    let how_full = match state {
        Some((free, total)) => format!(" ({} free of {})", human_bytes(free), human_bytes(total)),
        None => String::new(),
    };
    format!(
        "no disk was created: the host filesystem holding the state root {} is full{how_full}, \
         so the disk's file could not be made ({e}); free space there (delete disks no longer \
         used, `imagecache disk get`, or caches nothing needs, `imagecache get`) or give the \
         state root a larger filesystem, then retry",
        root.display()
    )
}

fn refused_mount_path(message: String) -> DaemonError {
    DaemonError::invalid_field(crate::objects::KIND_DISK, "", "spec.mountPath", message)
}

/// Why the blocking part of a disk create failed (kept whole, as the error's source), and
/// whether for want of a loop device or of room on the host, or for its mount path.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
struct CreateFailure {
    #[source]
    cause: crate::failure::BoxError,
    loop_shortage: bool,
    refused_mount_path: bool,
    /// ENOSPC or EDQUOT from the host's filesystem.
    no_space: bool,
}

impl CreateFailure {
    fn other(e: impl Into<crate::failure::BoxError>) -> Self {
        CreateFailure {
            cause: e.into(),
            loop_shortage: false,
            refused_mount_path: false,
            no_space: false,
        }
    }
}

impl From<disk_image::DiskError> for CreateFailure {
    fn from(e: disk_image::DiskError) -> Self {
        CreateFailure {
            loop_shortage: e.is_loop_shortage(),
            refused_mount_path: e.is_refused_mount_path(),
            no_space: e.is_no_space(),
            cause: e.into(),
        }
    }
}

/// Drops the reference taken for a disk that was not made, and returns the error `message`
/// describes, of `kind`. Should the release fail too, the snapshot keeps a reference nothing
/// holds and its space is not reclaimed: that is logged and named in the error, never
/// dropped.
fn give_back(
    d: &Daemon,
    digest: &str,
    message: String,
    kind: impl FnOnce(String) -> DaemonError,
) -> DaemonError {
    match crate::daemon::handlers::release_snapshot(d, digest) {
        Ok(()) => kind(message),
        Err(e) => {
            error!(%digest, error = %e, "could not release the snapshot reference of a disk that was not created");
            DaemonError::internal_because(
                format!(
                    "{message}; releasing the disk's reference on snapshot {digest} failed too (the snapshot's space is not reclaimed until that reference is removed)"
                ),
                e,
            )
        }
    }
}
