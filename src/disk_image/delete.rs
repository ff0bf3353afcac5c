//! Removing a disk: unmount, detach, remove the file — or, if the mount is busy, nothing.

use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::sys::Sys;

use super::error::{DiskError, Result};

/// Unmount the disk (if mounted), detach its loop device and remove its image file.
///
/// A busy mount (a process has files open or its working directory there) is refused with
/// `DiskError::Busy` and nothing is changed: no lazy unmount, no detach, the file kept.
/// Deleting again after a partial failure, or deleting a disk that is already gone, is fine.
///
/// `device` and `mountpoint` are what `create` returned. Without `device` (state lost in a
/// crash) the loop devices bound to `image` are looked up. A loop device is only detached
/// while it is still bound to `image`, and a mountpoint only unmounted while it holds this
/// disk's device, so stale values never touch another disk. The mountpoint directory stays.
pub fn delete(
    sys: &dyn Sys,
    image: &Path,
    device: Option<&Path>,
    mountpoint: Option<&Path>,
) -> Result<()> {
    let devices: Vec<PathBuf> = match device {
        Some(d) => vec![d.to_owned()],
        None => bound_devices(sys, image)?,
    };
    if let Some(mountpoint) = mountpoint {
        unmount_if_ours(sys, mountpoint, &devices)?;
    }
    if image.exists() {
        for device in &devices {
            // After an unmount autoclear has normally detached it already (not bound: fine).
            sys.detach_loop_of(device, image)
                .map_err(|source| DiskError::Detach {
                    device: device.clone(),
                    image: image.to_owned(),
                    source: Box::new(source),
                })?;
        }
    }
    match std::fs::remove_file(image) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DiskError::io("remove disk image", image, e)),
    }
    tracing::debug!(?image, ?devices, ?mountpoint, "disk deleted");
    Ok(())
}

/// The loop devices bound to `image`, from sysfs (which reports canonical paths).
fn bound_devices(sys: &dyn Sys, image: &Path) -> Result<Vec<PathBuf>> {
    let Ok(canonical) = image.canonicalize() else {
        return Ok(Vec::new());
    };
    let loops = sys
        .loop_devices()
        .map_err(|e| DiskError::sys("list loop devices for", image, e))?;
    Ok(loops
        .into_iter()
        .filter(|l| l.backing_file == canonical)
        .map(|l| l.device)
        .collect())
}

enum MountState {
    /// Nothing mounted there (or no such directory).
    NotMounted,
    /// One of this disk's devices is mounted there.
    Ours,
    /// Something else is.
    Foreign,
}

fn mount_state(sys: &dyn Sys, mountpoint: &Path, devices: &[PathBuf]) -> Result<MountState> {
    // Matched as text against the mount table, which holds the resolved path a disk was
    // mounted at: `create` reached it without symlinks, so it is the recorded path itself.
    // Resolving the recorded path now would follow a symlink planted since.
    let source = sys
        .mount_source(mountpoint)
        .map_err(|e| DiskError::sys("look up the mount at", mountpoint, e))?;
    Ok(match source {
        None => MountState::NotMounted,
        Some(s) if devices.contains(&s) => MountState::Ours,
        Some(_) => MountState::Foreign,
    })
}

fn unmount_if_ours(sys: &dyn Sys, mountpoint: &Path, devices: &[PathBuf]) -> Result<()> {
    match mount_state(sys, mountpoint, devices)? {
        MountState::NotMounted => Ok(()),
        MountState::Foreign => Err(DiskError::ForeignMount {
            mountpoint: mountpoint.to_owned(),
            device: devices
                .first()
                .cloned()
                .unwrap_or_else(|| PathBuf::from("no loop device")),
        }),
        // umount(2) without MNT_DETACH either unmounts or, when busy, changes nothing.
        MountState::Ours => match crate::sys::unmount_settled_nofollow(sys, mountpoint) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::BUSY.raw_os_error()) => {
                Err(DiskError::Busy {
                    mountpoint: mountpoint.to_owned(),
                })
            }
            Err(source) => Err(DiskError::Unmount {
                mountpoint: mountpoint.to_owned(),
                source: Box::new(source),
            }),
        },
    }
}
