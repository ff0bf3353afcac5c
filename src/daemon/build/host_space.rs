//! Telling a full host from a broken layer. When the filesystem holding the state root fills
//! up, writes to the cache image's loop device fail, ext4 turns read-only, and the error that
//! reaches the build names a layer entry and "Read-only file system": true, but it sends the
//! operator looking at the image. Checked before the work directory is removed, since
//! removing it gives the space back.

use std::path::Path;

use super::error::BuildError;

/// Free space below which the host's filesystem counts as full: a loop device's writes fail
/// before the last block is used (metadata, reservations), so "zero free" is never seen.
const NEARLY_FULL_BYTES: u64 = 32 << 20;

/// The free and total bytes of the filesystem holding `path` when it is (nearly) full; None
/// when it is not, or cannot be asked.
pub(crate) fn nearly_full(path: &Path) -> Option<(u64, u64)> {
    let st = rustix::fs::statvfs(path).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let total = st.f_blocks.saturating_mul(st.f_frsize);
    (free < NEARLY_FULL_BYTES.max(total / 200)).then_some((free, total))
}

/// `error`, or a [`BuildError::HostFull`] wrapping it when the filesystem holding `work_dir`
/// (under the state root `root`) is full.
pub fn explain(work_dir: &Path, root: &Path, error: BuildError) -> BuildError {
    // Cancellations say nothing about space; NoSpace is the cache's own filesystem, already
    // worded with the size to ask for.
    if matches!(
        error,
        BuildError::Cancelled | BuildError::Interrupted | BuildError::NoSpace { .. }
    ) {
        return error;
    }
    let Some((free, total)) = nearly_full(work_dir) else {
        return error;
    };
    BuildError::HostFull {
        root: root.to_owned(),
        free,
        total,
        cause: Box::new(error),
    }
}
