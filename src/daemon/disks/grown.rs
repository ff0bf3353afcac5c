//! Which image a disk clones: its snapshot, or the snapshot's image grown to the disk's size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::block_snapshot::{SnapshotError, SnapshotStore};
use crate::disk_image::CloneMode;
use crate::sys::Sys;

/// What a disk of `size` bytes starts from, and how long making a grown image took when
/// this disk is the first of its size. A disk of the snapshot's own size clones the
/// snapshot; so does every disk where clones are copies (a grown image would cost the
/// snapshot's data again, so `disk::create` grows each such disk instead).
pub(super) fn source_for(
    sys: &dyn Sys,
    snapshots: &SnapshotStore,
    digest: &str,
    snapshot_image: &Path,
    size: u64,
    clone_mode: CloneMode,
) -> Result<(PathBuf, Option<Duration>), SnapshotError> {
    let snapshot_size = std::fs::metadata(snapshot_image)
        .map_err(|e| SnapshotError::io("stat", snapshot_image, e))?
        .len();
    if size <= snapshot_size || clone_mode != CloneMode::Reflink {
        return Ok((snapshot_image.to_owned(), None));
    }
    let grown = snapshots
        .grown()
        .get_or_make(sys, digest, snapshot_image, size)?;
    Ok((grown.path, grown.made_in))
}
