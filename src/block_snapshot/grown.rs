//! A snapshot's image grown to a larger size, kept so every disk of that size is a clone.
//!
//! A disk larger than its cache needs its filesystem grown, and growing ext4 offline
//! (`resize2fs`) walks every block group of the new size: ~60 ms to 40 GiB and ~350 ms to
//! 2 TiB from a 20 GiB image here, where a clone takes ~2 ms. Pods ask for more room than
//! their cache was built with more often than not, so the grown image is made once per
//! (snapshot, size), frozen read-only like the snapshot, and later disks of that size are
//! reflinks of it. Growing adds only the new groups' descriptors and bitmaps (a few MiB even
//! at 2 TiB), so a grown image costs little space beside its snapshot.
//!
//! Layout: `<snapshots root>/grown/<hex>/<size in bytes>.img`, made under a dot-named staging
//! name and renamed into place once synced, so a file under its final name is complete. The
//! directory of a snapshot goes with the snapshot; at most [`KEEP_PER_SNAPSHOT`] sizes are
//! kept for each (the least recently made goes first; disks cloned from it are unaffected).
//!
//! Only where clones share extents: with copies (`CloneMode::SparseCopy`) every grown image
//! would cost the snapshot's whole data again, so the caller grows each disk instead.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::error::{Result, SnapshotError};
use super::manifest::parse_digest;
use crate::sys::Sys;

/// Sizes kept for one snapshot: a node's pods ask for a handful of sizes, and a client that
/// asks for a new size every time must not fill the disk with grown images.
pub const KEEP_PER_SNAPSHOT: usize = 8;

const STAGING_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";

/// The grown image a disk of some size clones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    pub path: PathBuf,
    /// How long making it took, when this call made it; `None` when it was there already.
    pub made_in: Option<Duration>,
}

/// One lock per (snapshot digest, size in bytes).
type MakingLocks = HashMap<(String, u64), Arc<Mutex<()>>>;

/// The grown images of every snapshot, under `<snapshots root>/grown`.
#[derive(Debug, Clone)]
pub struct GrownImages {
    root: PathBuf,
    /// One lock per (snapshot, size): concurrent disks of a new size wait for one grow rather
    /// than each doing its own.
    making: Arc<Mutex<MakingLocks>>,
}

impl GrownImages {
    pub fn new(snapshots_root: &Path) -> Self {
        GrownImages {
            root: snapshots_root.join("grown"),
            making: Arc::default(),
        }
    }

    fn dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join(parse_digest(digest)?))
    }

    /// The image of snapshot `digest` (at `source`) grown to `size` bytes, made now if it is
    /// not there yet. The caller holds a reference on the snapshot for the duration.
    pub fn get_or_make(
        &self,
        sys: &dyn Sys,
        digest: &str,
        source: &Path,
        size: u64,
    ) -> Result<Grown> {
        let dir = self.dir(digest)?;
        let path = dir.join(format!("{size}.img"));
        if path.exists() {
            return Ok(Grown {
                path,
                made_in: None,
            });
        }
        let lock = self.lock_for(digest, size);
        let _making = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Made by whoever held the lock before us.
        if path.exists() {
            return Ok(Grown {
                path,
                made_in: None,
            });
        }
        let started = Instant::now();
        crate::access::create_dir_with_mode(&dir, crate::access::PRIVATE_DIR)
            .map_err(|e| SnapshotError::io("mkdir", &dir, e))?;
        self.evict(&dir)?;
        let staging = dir.join(format!(
            "{STAGING_PREFIX}{size}-{}",
            super::store::unique_suffix()
        ));
        if let Err(e) = make(sys, source, &staging, size) {
            if let Err(r) = std::fs::remove_file(&staging) {
                if r.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %staging.display(), error = %r, "cannot remove a half-made grown image");
                }
            }
            return Err(e);
        }
        std::fs::rename(&staging, &path).map_err(|e| SnapshotError::io("rename", &staging, e))?;
        super::store::fsync_dir(&dir)?;
        let made_in = started.elapsed();
        tracing::info!(%digest, size, ms = made_in.as_secs_f64() * 1e3, "made a grown image: later disks of this size clone it");
        drop(_making);
        self.forget_lock(digest, size);
        Ok(Grown {
            path,
            made_in: Some(made_in),
        })
    }

    fn lock_for(&self, digest: &str, size: u64) -> Arc<Mutex<()>> {
        let mut locks = self.making.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry((digest.to_owned(), size)).or_default().clone()
    }

    fn forget_lock(&self, digest: &str, size: u64) {
        let mut locks = self.making.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(&(digest.to_owned(), size));
    }

    /// Makes room for one more size in `dir`: removes the least recently made beyond
    /// `KEEP_PER_SNAPSHOT - 1`.
    fn evict(&self, dir: &Path) -> Result<()> {
        let mut kept: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| SnapshotError::io("read_dir", dir, e))? {
            let entry = entry.map_err(|e| SnapshotError::io("read_dir", dir, e))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let made = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| SnapshotError::io("stat", entry.path(), e))?;
            kept.push((made, entry.path()));
        }
        kept.sort();
        let excess = (kept.len() + 1).saturating_sub(KEEP_PER_SNAPSHOT);
        for (_, path) in kept.into_iter().take(excess) {
            std::fs::remove_file(&path).map_err(|e| SnapshotError::io("remove", &path, e))?;
            tracing::info!(path = %path.display(), "removed the least recently made grown image");
        }
        Ok(())
    }

    /// Removes every grown image of `digest` (its snapshot is going).
    pub fn remove_all(&self, digest: &str) -> Result<()> {
        let dir = self.dir(digest)?;
        let trash = self.root.join(format!(
            "{TRASH_PREFIX}{}-{}",
            parse_digest(digest)?,
            super::store::unique_suffix()
        ));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SnapshotError::io("rename", &dir, e)),
        }
        std::fs::remove_dir_all(&trash).map_err(|e| SnapshotError::io("remove", &trash, e))
    }

    /// After a restart: removes half-made images, half-removed directories, and the grown
    /// images of snapshots that no longer exist (`exists` says which do). Returns what went.
    pub fn clean(&self, exists: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
            Err(e) => return Err(SnapshotError::io("read_dir", &self.root, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io("read_dir", &self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !exists(&format!("sha256:{name}")) {
                std::fs::remove_dir_all(&path)
                    .map_err(|e| SnapshotError::io("remove", &path, e))?;
                removed.push(path);
                continue;
            }
            for file in
                std::fs::read_dir(&path).map_err(|e| SnapshotError::io("read_dir", &path, e))?
            {
                let file = file.map_err(|e| SnapshotError::io("read_dir", &path, e))?;
                if file
                    .file_name()
                    .to_string_lossy()
                    .starts_with(STAGING_PREFIX)
                {
                    std::fs::remove_file(file.path())
                        .map_err(|e| SnapshotError::io("remove", file.path(), e))?;
                    removed.push(file.path());
                }
            }
        }
        Ok(removed)
    }
}

/// Clone `source` to `staging`, grow it to `size`, and freeze it: read-only and synced.
fn make(sys: &dyn Sys, source: &Path, staging: &Path, size: u64) -> Result<()> {
    sys.reflink(source, staging)
        .map_err(|e| SnapshotError::Grow {
            path: staging.to_owned(),
            size,
            reason: format!("cannot clone {}: {e}", source.display()),
        })?;
    // The clone keeps the snapshot's read-only mode; resize2fs opens it for writing.
    std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| SnapshotError::io("chmod", staging, e))?;
    crate::image::grow(staging, size).map_err(|e| SnapshotError::Grow {
        path: staging.to_owned(),
        size,
        reason: e.to_string(),
    })?;
    // Read-only from here on, as the snapshot: every disk of this size starts from it.
    std::fs::set_permissions(
        staging,
        std::fs::Permissions::from_mode(crate::access::FROZEN_FILE),
    )
    .map_err(|e| SnapshotError::io("chmod", staging, e))?;
    sys.fsync(staging).map_err(|e| SnapshotError::Grow {
        path: staging.to_owned(),
        size,
        reason: format!("cannot sync: {e}"),
    })
}
