//! Putting a disk back after a restart: its image file attached and mounted as `create` left
//! it, unless the kernel still has it so.

use std::path::{Path, PathBuf};

use crate::image::MountConfig;
use crate::sys::{LoopOptions, MountOptions, Sys};

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
pub fn reattach(sys: &dyn Sys, image: &Path, mountpoint: Option<&Path>) -> Result<Reattached> {
    let image_meta = std::fs::metadata(image).map_err(|e| DiskError::io("stat", image, e))?;
    let same_file = |backing: &Path| {
        std::fs::metadata(backing).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.dev() == image_meta.dev() && m.ino() == image_meta.ino()
        })
    };
    let attached: Vec<PathBuf> = sys
        .loop_devices()
        .map_err(|e| DiskError::sys("list loop devices for", image, e))?
        .into_iter()
        .filter(|l| same_file(&l.backing_file))
        .map(|l| l.device)
        .collect();
    if let Some(mountpoint) = mountpoint {
        let source = sys
            .mount_source(mountpoint)
            .map_err(|e| DiskError::sys("look up the mount at", mountpoint, e))?;
        if let Some(device) = source.filter(|s| attached.contains(s)) {
            return Ok(Reattached::AsItWas { device });
        }
    } else if let Some(device) = attached.into_iter().next() {
        return Ok(Reattached::AsItWas { device });
    }

    let config = MountConfig::writable();
    let mut device = sys
        .attach_loop(
            image,
            LoopOptions {
                read_only: config.read_only,
                direct_io: config.direct_io,
                autoclear: mountpoint.is_some(),
            },
        )
        .map_err(|source| DiskError::Attach {
            image: image.to_owned(),
            source: Box::new(source),
        })?;
    let path = device.path.clone();
    if let Some(mountpoint) = mountpoint {
        let mounted = std::fs::create_dir_all(mountpoint)
            .map_err(|e| DiskError::io("create mountpoint", mountpoint, e))
            .and_then(|()| {
                let opts = MountOptions {
                    read_only: config.read_only,
                    noatime: false,
                };
                sys.mount(&path, mountpoint, "ext4", opts, &config.data)
                    .map_err(|source| DiskError::Mount {
                        image: image.to_owned(),
                        device: path.clone(),
                        mountpoint: mountpoint.to_owned(),
                        source: Box::new(source),
                    })
            });
        if let Err(e) = mounted {
            if let Err(d) = sys.detach_loop_of(&path, image) {
                tracing::warn!(device = %path.display(), error = %d, "cannot detach the loop device of a disk that did not mount");
            }
            device.release();
            return Err(e);
        }
    }
    device.release();
    Ok(Reattached::Again { device: path })
}
