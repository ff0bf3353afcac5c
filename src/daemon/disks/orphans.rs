//! At start: a disk made but never recorded (the daemon died between the clone, attach or
//! mount and the store write) is nobody's: no request ever answered with its id. Its mount,
//! loop device, file and directory go, so nothing is left that the store does not know.
//! A disk is one the daemon made when its name has the shape of a generated id, or when a
//! create of that name was recorded as begun (`disk_creates`, named.rs) and never finished:
//! anything else under `disks/` may be a caller's mount directory and is left alone.

use std::collections::HashSet;
use std::path::Path;

use tracing::{error, warn};

use crate::daemon::{Daemon, DaemonError};

/// Removes every disk file and directory under `disks/` that no stored disk names; returns
/// how many disks went.
pub fn remove_orphans(d: &Daemon) -> Result<usize, DaemonError> {
    let known: HashSet<String> = d
        .inner
        .store
        .list_disks()?
        .into_iter()
        .map(|disk| disk.metadata.name)
        .collect();
    let begun: HashSet<String> = d.inner.store.disk_creates()?.into_iter().collect();
    let dir = d.inner.config.root.join("disks");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        end_creates(d, &begun, &known, &HashSet::new());
        return Ok(0);
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .map(|name| name.strip_suffix(".img").unwrap_or(&name).to_owned())
        // `disks/` is also where callers' mount paths go by default (`disk_mount_root`):
        // only what has the shape of a disk id can be a disk the daemon made.
        .filter(|id| {
            (crate::daemon::ids::is_disk_id(id) || begun.contains(id)) && !known.contains(id)
        })
        .collect();
    ids.sort();
    ids.dedup();
    let mut stayed = HashSet::new();
    for id in &ids {
        warn!(disk = %id, "removing a disk the daemon made but never recorded");
        // One that cannot go (a busy mount) must not keep the daemon from serving the rest.
        if let Err(e) = remove_one(d, &dir, id) {
            error!(disk = %id, error = %e, "an unrecorded disk stays behind");
            stayed.insert(id.clone());
        }
    }
    end_creates(d, &begun, &known, &stayed);
    Ok(ids.len())
}

/// Ends the records of creates that are finished (the disk is stored) or whose leftovers
/// are gone; one whose leftovers stayed is tried again at the next start.
fn end_creates(
    d: &Daemon,
    begun: &HashSet<String>,
    known: &HashSet<String>,
    stayed: &HashSet<String>,
) {
    for name in begun
        .iter()
        .filter(|n| !stayed.contains(*n) || known.contains(*n))
    {
        if let Err(e) = d.inner.store.end_disk_create(name) {
            error!(disk = %name, error = %e, "cannot clear the record of an unfinished disk create");
        }
    }
}

fn remove_one(d: &Daemon, dir: &Path, id: &str) -> Result<(), DaemonError> {
    let image = super::image_path(d, id);
    let own_dir = dir.join(id);
    let mountpoint = own_dir.join("mnt");
    // Without a device, delete finds the loop devices bound to the file itself.
    crate::disk_image::delete(d.inner.sys.as_ref(), &image, None, Some(&mountpoint))
        .map_err(|e| DaemonError::Setup(format!("cannot remove unrecorded disk {id}: {e}")))?;
    // Without following symlinks: one planted at `<id>` must not make us rmdir elsewhere.
    match crate::sys::fsops::remove_empty_dirs_beneath(dir, &[id, "mnt"]) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(DaemonError::Setup(format!(
            "cannot remove {} of unrecorded disk {id}: {e}",
            own_dir.display()
        ))),
    }
}
