//! A Ready cache's frozen image, mounted read-only once however many snapshots use its
//! layers, and unmounted with the last of them.
//!
//! The mount holds a reference on the snapshot (the store's count that caches and disks
//! hold too), so deleting the cache while containers run from its layers keeps the frozen
//! file until the last snapshot using it goes. The loop device is autoclear: it goes with the
//! mount, and both outlive a restart of the daemon, which finds the mount and adopts it.
//!
//! Mounting and unmounting take tens of milliseconds, so they happen outside the
//! snapshotter's lock, under a lock of their digest's own. A Prepare about to record a layer
//! on an image pins it first: the image stays mounted until the record that keeps it so is
//! written, even if the last other snapshot on it goes meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::info;

use super::{paths, Daemon, Result, SnapshotError};
use crate::failure::Failure;
use crate::sys::attach_mount::{attach_and_mount, AttachMountError, MountAt, MountSpec};
use crate::sys::{LoopOptions, MountOptions};

/// Each cache image's mount lock, holding the count of Prepares that pinned it.
#[derive(Debug, Default)]
pub struct CacheMounts {
    by_digest: Mutex<HashMap<String, Arc<Mutex<u32>>>>,
}

impl CacheMounts {
    fn of(&self, digest: &str) -> Arc<Mutex<u32>> {
        let mut map = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(digest.to_owned()).or_default().clone()
    }
}

/// A cache image kept mounted while a Prepare records a layer on it.
#[derive(Debug)]
pub struct Pinned {
    pub mountpoint: PathBuf,
    pub digest: String,
    pins: Arc<Mutex<u32>>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        *pins = pins.saturating_sub(1);
    }
}

/// The image of `digest` mounted (now, or already) and pinned until the guard drops.
pub fn pin(d: &Daemon, digest: &str) -> Result<Pinned> {
    let pins = d.inner.snapshotter.cache_mounts.of(digest);
    let mut count = pins.lock().unwrap_or_else(|p| p.into_inner());
    let mountpoint = mount_unlocked(d, digest)?;
    *count += 1;
    drop(count);
    Ok(Pinned {
        mountpoint,
        digest: digest.to_owned(),
        pins,
    })
}

/// Mounts the image of `digest` unless it is mounted already (at start-up, for the layers
/// recorded on it).
pub fn ensure_mounted(d: &Daemon, digest: &str) -> Result<PathBuf> {
    let pins = d.inner.snapshotter.cache_mounts.of(digest);
    let _locked = pins.lock().unwrap_or_else(|p| p.into_inner());
    mount_unlocked(d, digest)
}

/// Mounts the frozen image of `digest` unless it is mounted already; returns the mountpoint.
/// The first mount takes the snapshotter's reference on the snapshot. The caller holds the
/// digest's mount lock.
fn mount_unlocked(d: &Daemon, digest: &str) -> Result<PathBuf> {
    let sys = d.inner.sys.as_ref();
    let at = paths::cache_mount(&d.inner.config.root, digest);
    if sys.mount_source(&at)?.is_some() {
        return Ok(at);
    }
    let file = d
        .inner
        .snapshots
        .image_path(digest)
        .map_err(|e| SnapshotError::Internal(Failure::of(e)))?;
    crate::access::create_dir_with_mode(&at, crate::access::PRIVATE_DIR).map_err(|e| {
        SnapshotError::Internal(Failure::new(format!("cannot create {}", at.display()), e))
    })?;
    let opts = LoopOptions {
        read_only: true,
        direct_io: true,
        autoclear: true,
    };
    let mount = MountSpec {
        at: MountAt::Path(&at),
        fstype: "ext4",
        opts: MountOptions {
            read_only: true,
            noatime: true,
        },
        // A frozen image is never written, not even by a journal replay.
        data: "noload",
    };
    let mut device = match attach_and_mount(sys, &file, opts, Some(mount), None) {
        Ok(attached) => attached.device,
        Err(AttachMountError::Attach { source, .. }) => return Err(source.into()),
        Err(e @ AttachMountError::Mount { .. }) => {
            return Err(SnapshotError::Internal(Failure::new(
                format!("cannot mount cache image {}", file.display()),
                e,
            )))
        }
    };
    // The mount now holds the autoclear device.
    device.release();
    d.inner.store.ctr_hold_snapshot(digest)?;
    info!(%digest, mountpoint = %at.display(), "cache image mounted for containerd");
    Ok(at)
}

/// Unmounts the image of `digest` once no snapshot uses it and no Prepare pinned it, and
/// drops the snapshotter's reference (removing the frozen files if nothing else holds them).
/// Also how Cleanup and recovery drop a mountpoint no snapshot needs.
pub fn release_if_unused(d: &Daemon, digest: &str) -> Result<()> {
    let pins = d.inner.snapshotter.cache_mounts.of(digest);
    let pinned = pins.lock().unwrap_or_else(|p| p.into_inner());
    if *pinned > 0 || d.inner.store.ctr_snapshots_on_digest(digest)? > 0 {
        return Ok(());
    }
    let at = paths::cache_mount(&d.inner.config.root, digest);
    let was_mounted = unmount(d, &at)?;
    release_hold(d, digest)?;
    if was_mounted {
        info!(%digest, "cache image unmounted: no containerd snapshot uses it");
    }
    Ok(())
}

/// Unmounts `at` if mounted and removes the directory; whether it was mounted.
fn unmount(d: &Daemon, at: &Path) -> Result<bool> {
    let sys = d.inner.sys.as_ref();
    let mounted = sys.mount_source(at)?.is_some();
    if mounted {
        crate::sys::unmount_settled(sys, at).map_err(|e| {
            SnapshotError::FailedPrecondition(format!(
                "cannot unmount cache image at {}: {e} (a process still uses it)",
                at.display()
            ))
        })?;
    }
    match std::fs::remove_dir(at) {
        Ok(()) => Ok(mounted),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(mounted),
        Err(e) => Err(SnapshotError::Internal(Failure::new(
            format!("cannot remove {}", at.display()),
            e,
        ))),
    }
}

/// Every cache image mounted for the snapshotter, by digest (from its mountpoint's name).
pub fn mounted_digests(d: &Daemon) -> Result<Vec<String>> {
    let dir = paths::caches_dir(&d.inner.config.root);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(SnapshotError::Internal(Failure::new(
                format!("cannot list {}", dir.display()),
                e,
            )))
        }
    };
    let mut digests = Vec::new();
    for entry in entries.flatten() {
        if let Some(hex) = entry.file_name().to_str() {
            digests.push(format!("sha256:{hex}"));
        }
    }
    Ok(digests)
}

/// Drops the snapshotter's reference; the frozen files go with the last reference (the
/// cache that made them may have been deleted while containers ran from its layers).
fn release_hold(d: &Daemon, digest: &str) -> Result<()> {
    if d.inner.store.ctr_release_snapshot(digest)? == Some(0) {
        d.inner
            .snapshots
            .remove(digest)
            .map_err(|e| SnapshotError::Internal(Failure::of(e)))?;
        d.inner.store.forget_snapshot(digest)?;
        info!(%digest, "snapshot removed: no cache, disk or container uses it");
    }
    Ok(())
}
