//! Freezing the filled, unmounted image into a content-addressed snapshot, and taking (or
//! giving back) the cache's reference on it.

use crate::failure::Failure;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use super::BuildError;
use crate::block_snapshot::Snapshot;
use crate::daemon::{background, Daemon};

/// Densifies, checks, hashes and commits the image at `image_path`. A `reused` image shares
/// extents with its parent, so it is not rewritten.
pub(super) async fn freeze(
    d: &Daemon,
    image_path: &Path,
    reused: bool,
) -> Result<Snapshot, BuildError> {
    let snapshots = d.inner.snapshots.clone();
    let freeze_sys = d.inner.sys.clone();
    let image_path: PathBuf = image_path.to_owned();
    background::spawn("freeze", move || -> Result<Snapshot, BuildError> {
        let t0 = Instant::now();
        // Before anything reads it: fewer extents make every clone of the snapshot cheaper.
        // A reused build shares extents with its parent: a rewrite would unshare them.
        let max_gap = crate::image::MAX_FILLED_GAP;
        let mut densified = crate::image::densify(&image_path, max_gap, !reused)?;
        crate::fault::point("build.fsck");
        // Both only read the image: checking and hashing side by side saves the fsck's time.
        // Writeback of the image runs under them too, so commit's fsync finds it done.
        let (checked, hashed) = std::thread::scope(|s| {
            let _writeback =
                s.spawn(|| std::fs::File::open(&image_path).and_then(|f| f.sync_data()));
            crate::block_snapshot::hash_file_beside(&image_path, || crate::image::fsck(&image_path))
        });
        checked?;
        let manifest = hashed?;
        tracing::debug!(elapsed = ?t0.elapsed(), "checked and hashed the image");
        // Now that the data is on disk its extents can be counted; a rewrite keeps the
        // content, so the check and the hashes above still hold.
        if !reused {
            crate::image::rewrite_if_fragmented(
                freeze_sys.as_ref(),
                &image_path,
                max_gap,
                &mut densified,
            )?;
        }
        info!(?densified, elapsed = ?t0.elapsed(), "joined the image's data runs");
        crate::fault::point("build.hash");
        Ok(snapshots.commit(&image_path, &manifest)?)
    })
    .await
    .map_err(|e| BuildError::Internal(Failure::new("the freeze task", e)))?
}

/// A snapshot frozen for a cancelled build: nobody will reference it, so its space goes back
/// unless another cache froze the very same content.
pub(super) fn discard(d: &Daemon, snapshot: &Snapshot) -> Result<(), BuildError> {
    if d.inner.store.snapshot_refs(&snapshot.digest)? == 0 {
        if let Err(e) = d.inner.snapshots.remove(&snapshot.digest) {
            warn!(digest = %snapshot.digest, error = %e, "could not remove the snapshot of a cancelled build");
        }
    }
    Ok(())
}

/// Takes the cache's reference on its snapshot and returns the bytes the frozen file really
/// holds (the manifest's figure is rounded to whole chunks).
pub(super) fn adopt(d: &Daemon, snapshot: &Snapshot) -> Result<u64, BuildError> {
    d.inner.store.snapshot_ref(&snapshot.digest)?;
    Ok(std::fs::metadata(&snapshot.image_path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(snapshot.data_bytes))
}
