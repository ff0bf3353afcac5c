//! The state root's storage, settled before anything is stored: the embedded XFS backing
//! image when configured, and whether clones can be reflinks.

use tracing::{info, warn};

use super::DaemonError;
use crate::config::Config;
use crate::disk::{self, CloneMode};
use crate::sys::Sys;

/// Mounts the backing image if configured, then probes reflinks under the root. Returns the
/// clone mode and the root's filesystem type.
pub fn prepare(config: &Config, sys: &dyn Sys) -> Result<(CloneMode, String), DaemonError> {
    if let Some(backing) = &config.backing_image {
        let size = backing_size(backing)?;
        disk::mount_backing_image(sys, backing, size, &config.root).map_err(|e| {
            DaemonError::Setup(format!(
                "cannot mount backing_image {} at {}: {e}",
                backing.display(),
                config.root.display()
            ))
        })?;
        info!(backing = %backing.display(), root = %config.root.display(), "state root on the embedded XFS backing image");
    }
    std::fs::create_dir_all(&config.root)
        .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", config.root.display())))?;
    let probe = disk::probe_reflink(sys, &config.root).map_err(|e| {
        DaemonError::Setup(format!(
            "cannot probe reflink support in {}: {e}",
            config.root.display()
        ))
    })?;
    if probe.supported {
        info!(fs = %probe.fs_type, root = %config.root.display(), "state root supports reflinks: disks are O(1) clones");
        Ok((CloneMode::Reflink, probe.fs_type))
    } else {
        warn!(
            fs = %probe.fs_type,
            root = %config.root.display(),
            "STATE ROOT CANNOT REFLINK: every disk will be a full sparse copy of its snapshot (slow, and it takes space); \
             set backing_image = \"/var/lib/imagecache.xfs\" in the config, or put the state root on XFS or btrfs"
        );
        Ok((CloneMode::SparseCopy, probe.fs_type))
    }
}

/// A new backing image is as large as the filesystem it lives on: sparse, it takes only what
/// is written, and it can never promise more than the host has.
fn backing_size(backing: &std::path::Path) -> Result<u64, DaemonError> {
    if let Ok(meta) = std::fs::metadata(backing) {
        return Ok(meta.len());
    }
    let parent = backing.parent().unwrap_or(std::path::Path::new("/"));
    std::fs::create_dir_all(parent)
        .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", parent.display())))?;
    let stat = rustix::fs::statvfs(parent)
        .map_err(|e| DaemonError::Setup(format!("statvfs {}: {e}", parent.display())))?;
    let bytes = stat.f_blocks * stat.f_frsize;
    Ok(bytes / 4096 * 4096)
}
