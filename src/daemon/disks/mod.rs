//! The API's per-pod Disk objects (the images, loop devices and mounts beneath them are
//! `crate::disk_image`): pick a cache (matching.rs), clone its snapshot into a disk of the pod's
//! own, and pull what the cache lacked into the disk in the background. A create runs in
//! steps, a module each: select, clone, auto-create a cache, build the object, persist (with
//! the digest of the disk's bind token, token.rs), pull.

pub(crate) mod adopt;
pub(crate) mod adoption;
pub(crate) mod auto_budget;
pub(crate) mod auto_cache;
mod clone;
mod create;
mod grown;
pub(crate) mod named;
mod object;
mod orphans;
mod pull;
mod select;
pub mod token;

use std::path::PathBuf;

use tracing::info;

pub use create::create;
pub use orphans::remove_orphans;

use super::{Daemon, DaemonError, Reply};
use crate::disk_image;
use crate::objects::*;

/// Keeps auto-created caches within their budget (the retention pass calls it, so a
/// cache that turned Ready over the budget goes within a minute); returns how many went.
pub async fn enforce_cache_budget(d: &Daemon) -> usize {
    auto_budget::enforce(d, None).await.len()
}

/// Where a disk's file lives.
pub fn image_path(d: &Daemon, id: &str) -> PathBuf {
    d.inner.config.root.join("disks").join(format!("{id}.img"))
}

/// Where the daemon mounts the disks it names itself (`<root>/disks/<id>/mnt`).
fn own_mount_root(d: &Daemon) -> PathBuf {
    d.inner.config.root.join("disks")
}

/// The roots a recorded mountpoint may lie beneath, to be mounted there again: the
/// caller's `disk_mount_root` and the daemon's own directory.
fn mount_roots(d: &Daemon) -> [PathBuf; 2] {
    [d.inner.config.disk_mount_root(), own_mount_root(d)]
}

fn internal(e: impl Into<crate::failure::BoxError>) -> DaemonError {
    DaemonError::internal(e)
}

/// `disk` as the API shows it: one still waiting to be adopted after a restart reads
/// `Adopting`, whatever its stored phase (which it shows again once adopted).
pub fn shown(d: &Daemon, mut disk: Disk) -> Disk {
    if d.inner.adoption.is_pending(&disk.metadata.name) {
        if let Some(s) = disk.status.as_mut() {
            s.phase = DiskPhase::Adopting;
            s.message = Some(
                "the daemon restarted and has not yet checked that this disk is attached and \
                 mounted as it was; it does so in the background (a delete answers 503 until \
                 then)"
                    .into(),
            );
        }
    }
    disk
}

pub fn get(d: &Daemon, id: &str) -> Result<Disk, DaemonError> {
    d.inner
        .store
        .get_disk(id)
        .map_err(internal)?
        .ok_or_else(|| DaemonError::not_found(KIND_DISK, id))
}

pub fn list(d: &Daemon) -> Result<Reply, DaemonError> {
    Ok(Reply::DiskList(DiskList {
        api_version: API_VERSION.into(),
        kind: KIND_DISK_LIST.into(),
        metadata: ListMeta::default(),
        items: d
            .inner
            .store
            .list_disks()
            .map_err(internal)?
            .into_iter()
            .map(|disk| shown(d, disk))
            .collect(),
    }))
}

pub async fn delete(d: &Daemon, id: &str) -> Result<Reply, DaemonError> {
    let disk = get(d, id)?;
    // Its device and mount are not yet known to be the ones recorded: deleting them now
    // could detach another's.
    if d.inner.adoption.is_pending(id) {
        return Err(DaemonError::Adopting(id.to_owned()));
    }
    // A container's overlay holds the disk's filesystem through a private clone of its
    // mount, so the unmount below would succeed under a running container: the snapshot
    // records are what say the disk is in use.
    let containers = d.inner.store.ctr_snapshots_on_disk(id)?;
    if containers > 0 {
        return Err(DaemonError::Conflict(format!(
            "disk {id} holds the root filesystem of {containers} container(s) in containerd: \
             remove those containers (or their pod) first"
        )));
    }
    // A pull stops at its next chunk or tool exit; one that does not within the wait is
    // stuck, and the caller is told so rather than kept waiting for ever.
    super::stop_wait::cancel_and_wait(
        d,
        &super::owner::Owner::Disk(id.to_owned()),
        &format!("the pull into disk {id}"),
        super::handlers::CANCEL_WAIT,
    )
    .await?;
    let status = disk
        .status
        .clone()
        .unwrap_or_else(|| unreachable!("stored disks have a status"));
    let image = image_path(d, id);
    let sys = d.inner.sys.clone();
    let (device, mountpoint) = (
        status.device.clone().map(PathBuf::from),
        status.mountpoint.clone().map(PathBuf::from),
    );
    let deleted =
        super::background::spawn_at("disk-delete", super::background::DISK_NICE, move || {
            disk_image::delete(
                sys.as_ref(),
                &image,
                device.as_deref(),
                mountpoint.as_deref(),
            )
        })
        .await
        .map_err(DaemonError::internal)?;
    match deleted {
        Ok(()) => {}
        Err(e @ disk_image::DiskError::Busy { .. }) => {
            return Err(DaemonError::Conflict(e.to_string()))
        }
        Err(e) => return Err(internal(e)),
    }
    crate::fault::point("disk.delete");
    // The default mountpoint's directory is ours; a caller-given one is left alone. Removed
    // without following symlinks: one planted at `<id>` must not make us rmdir elsewhere.
    let _ = crate::sys::fsops::remove_empty_dirs_beneath(&own_mount_root(d), &[id, "mnt"]);
    d.inner.store.delete_disk(id).map_err(internal)?;
    d.unrecorded()
        .forget(&super::owner::Owner::Disk(id.to_owned()));
    if let Some(digest) = status.snapshot_digest {
        super::handlers::release_snapshot(d, &digest).map_err(internal)?;
    }
    info!(disk = %id, "disk deleted");
    // Its loop device is free: a build waiting for one may start.
    crate::daemon::build::queue::pump(d);
    Ok(Reply::Deleted(format!("Disk {id:?} deleted")))
}
