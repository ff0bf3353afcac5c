//! Putting a disk back after a restart: its image file attached and mounted as `create` left
//! it, unless the kernel still has it so.

use std::path::{Path, PathBuf};

use crate::image::MountConfig;
use crate::sys::attach_mount::{attach_and_mount, AttachMountError};
use crate::sys::{MountTarget, Sys};

use super::Attachments;

use super::attach_spec;
use super::error::{DiskError, Result};

/// What `reattach` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reattached {
    /// The kernel still had the disk attached (and mounted where it should be): nothing done.
    AsItWas { device: PathBuf },
    /// It was attached (and mounted) again, at `device`.
    Again { device: PathBuf },
}

/// Makes sure `image` is attached to a loop device and, if `mountpoint` is given, mounted
/// there, as `create` made it. A disk whose mount or device outlived the daemon is left
/// exactly as it is. On failure nothing new is left attached or mounted.
///
/// What is attached and mounted is looked up in `kernel`, read once for every disk adopted
/// (so adopting N disks reads the kernel's tables once, not N times). It must have been read
/// after anything else last changed this disk's device or mount.
///
/// To mount it again, `mountpoint` must lie beneath one of `mount_roots`, and is reached
/// beneath that root without following symlinks, as at create: a directory on the way
/// replaced by a symlink while the daemon was down makes this fail (and the disk stay
/// unmounted), never mounts the disk where the symlink points.
pub fn reattach(
    sys: &dyn Sys,
    kernel: &Attachments,
    image: &Path,
    mountpoint: Option<&Path>,
    mount_roots: &[&Path],
) -> Result<Reattached> {
    let image_meta = std::fs::metadata(image).map_err(|e| DiskError::io("stat", image, e))?;
    let attached = kernel.devices_of(&image_meta);
    if let Some(at) = mountpoint {
        // The mount table holds resolved paths as text: matching it resolves nothing.
        if let Some(device) = kernel
            .mount_source(at)
            .filter(|s| attached.iter().any(|a| a == s))
        {
            return Ok(Reattached::AsItWas {
                device: device.to_owned(),
            });
        }
    } else if let Some(device) = attached.first() {
        return Ok(Reattached::AsItWas {
            device: device.clone(),
        });
    }

    // Checked before anything is attached: a disk recorded outside every root (made before
    // mount paths were confined) is refused, never mounted there again.
    let target = mountpoint
        .map(|at| MountTarget::beneath_any(mount_roots, at))
        .transpose()?;
    let config = MountConfig::writable();
    let loop_opts = attach_spec::loop_options(&config, target.is_some());
    let mount = target
        .as_ref()
        .map(|target| attach_spec::mount_at(&config, target));
    let mut device = match attach_and_mount(sys, image, loop_opts, mount, None) {
        Ok(attached) => attached.device,
        Err(AttachMountError::Attach { source, .. }) => {
            return Err(DiskError::Attach {
                image: image.to_owned(),
                source: Box::new(source),
            })
        }
        Err(AttachMountError::Mount {
            device, at, source, ..
        }) => return Err(DiskError::mount(image, &device, at, source)),
    };
    device.release();
    Ok(Reattached::Again {
        device: device.path,
    })
}
