//! The state root's storage, settled before anything is stored: the embedded XFS backing
//! image when configured, and whether clones can be reflinks.

use std::path::Path;

use tracing::{info, warn};

use super::DaemonError;
use crate::config::Config;
use crate::disk_image::{self, CloneMode};
use crate::sys::Sys;

/// Takes back what a state root made by an earlier version (or by systemd's
/// `StateDirectory=` at its default 0755) left reachable by other users: the root and the
/// daemon's directories become 0700, the database and its journal 0600, frozen snapshot
/// files 0400 (a mode is not content: no snapshot digest changes).
pub fn make_private(root: &Path) -> Result<(), DaemonError> {
    use crate::access::{FROZEN_FILE, PRIVATE_DIR, PRIVATE_FILE};
    let failed = |path: &Path, e: std::io::Error| {
        DaemonError::Setup(format!(
            "cannot make {} reachable by root only: {e}",
            path.display()
        ))
    };
    // Only what is not private yet is changed: after the first start with this version, a
    // start reads modes and writes nothing.
    let set_mode = |path: &Path, mode: u32| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path)?.permissions().mode() & 0o7777 == mode {
            return Ok(());
        }
        crate::access::set_mode(path, mode)
    };
    let mut dirs = vec![root.to_owned()];
    for sub in [
        "snapshots",
        "snapshots/sha256",
        "work",
        "disks",
        "snapshotter",
    ] {
        dirs.push(root.join(sub));
    }
    for dir in dirs.iter().filter(|d| d.is_dir()) {
        set_mode(dir, PRIVATE_DIR).map_err(|e| failed(dir, e))?;
    }
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let file = root.join(name);
        if file.exists() {
            set_mode(&file, PRIVATE_FILE).map_err(|e| failed(&file, e))?;
        }
    }
    let frozen = root.join("snapshots/sha256");
    for snapshot in std::fs::read_dir(&frozen).into_iter().flatten().flatten() {
        let dir = snapshot.path();
        if !dir.is_dir() {
            continue;
        }
        set_mode(&dir, PRIVATE_DIR).map_err(|e| failed(&dir, e))?;
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_file() {
                set_mode(&path, FROZEN_FILE).map_err(|e| failed(&path, e))?;
            }
        }
    }
    Ok(())
}

/// Mounts the backing image if configured, then probes reflinks under the root. Returns the
/// clone mode and the root's filesystem type.
pub fn prepare(config: &Config, sys: &dyn Sys) -> Result<(CloneMode, String), DaemonError> {
    if let Some(backing) = &config.backing_image {
        let size = backing_size(backing)?;
        disk_image::mount_backing_image(sys, backing, size, &config.root).map_err(|e| {
            DaemonError::Setup(format!(
                "cannot mount backing_image {} at {}: {e}",
                backing.display(),
                config.root.display()
            ))
        })?;
        info!(backing = %backing.display(), root = %config.root.display(), "state root on the embedded XFS backing image");
    }
    crate::access::create_dir_with_mode(&config.root, crate::access::PRIVATE_DIR)
        .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", config.root.display())))?;
    let probe = disk_image::probe_reflink(sys, &config.root).map_err(|e| {
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
