//! The snapshot store: `<root>/sha256/<hex>/{disk.img,manifest.json}`.
//!
//! A snapshot directory appears in one rename, fully written and synced, so anything found
//! under its final name is complete. Commit and remove go through dot-named staging
//! directories next to the snapshots, on the same filesystem.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use super::error::{Result, SnapshotError};
use super::grown::GrownImages;
use super::manifest::{parse_digest, ChunkManifest};
use super::verify::{verify_file, VerifyReport};

const IMAGE_NAME: &str = "disk.img";
const MANIFEST_NAME: &str = "manifest.json";
const STAGING_PREFIX: &str = ".tmp-";
const TRASH_PREFIX: &str = ".trash-";

/// A committed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// "sha256:<hex>" of the manifest.
    pub digest: String,
    pub dir: PathBuf,
    /// The frozen, read-only image; clone it, never open it for writing.
    pub image_path: PathBuf,
    /// Bytes of content (non-zero chunks).
    pub data_bytes: u64,
    /// Length of the image file.
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
    grown: GrownImages,
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'p {
    move |e| SnapshotError::io(op, path, e)
}

pub(super) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

impl SnapshotStore {
    /// `root` is `<state root>/snapshots`; it is created on first commit.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        SnapshotStore {
            grown: GrownImages::new(&root),
            root,
        }
    }

    /// The snapshots' images grown to the sizes disks asked for (see `GrownImages`).
    pub fn grown(&self) -> &GrownImages {
        &self.grown
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn algo_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// The directory a digest lives in (whether or not it exists).
    pub fn dir(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.algo_dir().join(parse_digest(digest)?))
    }

    /// Where a digest's frozen image lives (whether or not it exists).
    pub fn image_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir(digest)?.join(IMAGE_NAME))
    }

    /// Move `image` into the store as the snapshot `manifest` describes, read-only and
    /// synced. `image` must be on the store's filesystem (it is renamed, never copied). If
    /// that digest is already stored, the stored one is kept and `image` is deleted.
    pub fn commit(&self, image: &Path, manifest: &ChunkManifest) -> Result<Snapshot> {
        let digest = manifest.digest();
        let final_dir = self.dir(&digest)?;
        let actual = std::fs::metadata(image).map_err(io("stat", image))?.len();
        if actual != manifest.size {
            return Err(SnapshotError::ManifestMismatch {
                image: image.to_owned(),
                expected: manifest.size,
                actual,
            });
        }
        if final_dir.join(MANIFEST_NAME).exists() {
            tracing::debug!(%digest, "snapshot already stored, dropping the new copy");
            std::fs::remove_file(image).map_err(io("remove", image))?;
            return self.get(&digest);
        }

        let algo_dir = self.algo_dir();
        crate::access::create_dir_with_mode(&algo_dir, crate::access::PRIVATE_DIR)
            .map_err(io("mkdir", &algo_dir))?;
        let staging = algo_dir.join(format!(
            "{STAGING_PREFIX}{}-{}",
            &digest[7..],
            unique_suffix()
        ));
        std::fs::create_dir(&staging)
            .and_then(|()| crate::access::set_mode(&staging, crate::access::PRIVATE_DIR))
            .map_err(io("mkdir", &staging))?;
        let staged = self.stage(image, manifest, &staging);
        if let Err(e) = staged {
            // Put the image back where the caller had it if it got moved already.
            let moved = staging.join(IMAGE_NAME);
            if moved.exists() {
                let _ = std::fs::rename(&moved, image);
            }
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        match std::fs::rename(&staging, &final_dir) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(c) if c == Errno::NOTEMPTY.raw_os_error() || c == Errno::EXIST.raw_os_error()
                ) =>
            {
                // Another commit of the same content won the race; ours is redundant.
                tracing::debug!(%digest, "snapshot committed concurrently, dropping ours");
                std::fs::remove_dir_all(&staging).map_err(io("remove", &staging))?;
                return self.get(&digest);
            }
            Err(e) => {
                let _ = std::fs::rename(staging.join(IMAGE_NAME), image);
                let _ = std::fs::remove_dir_all(&staging);
                return Err(SnapshotError::io("rename", &final_dir, e));
            }
        }
        crate::fault::point("snapshot.renamed");
        fsync_dir(&algo_dir)?;
        tracing::info!(%digest, data_bytes = manifest.data_bytes(), "snapshot committed");
        Ok(self.snapshot_from(&digest, final_dir, manifest))
    }

    fn stage(&self, image: &Path, manifest: &ChunkManifest, staging: &Path) -> Result<()> {
        let staged_image = staging.join(IMAGE_NAME);
        std::fs::rename(image, &staged_image).map_err(|e| {
            if e.raw_os_error() == Some(Errno::XDEV.raw_os_error()) {
                SnapshotError::CrossDevice {
                    image: image.to_owned(),
                    root: self.root.clone(),
                }
            } else {
                SnapshotError::io("rename", image, e)
            }
        })?;
        crate::fault::point("snapshot.staged");
        let manifest_path = staging.join(MANIFEST_NAME);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&manifest_path)
            .map_err(io("create", &manifest_path))?;
        out.write_all(&manifest.canonical_bytes())
            .and_then(|()| out.sync_all())
            .map_err(io("write", &manifest_path))?;
        std::fs::set_permissions(
            &manifest_path,
            std::fs::Permissions::from_mode(crate::access::FROZEN_FILE),
        )
        .map_err(io("chmod", &manifest_path))?;
        // Read-only from here on: clones are reflinks of it, and a write would change what
        // every later clone starts from without changing the digest that names it.
        std::fs::set_permissions(
            &staged_image,
            std::fs::Permissions::from_mode(crate::access::FROZEN_FILE),
        )
        .map_err(io("chmod", &staged_image))?;
        File::open(&staged_image)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", &staged_image))?;
        fsync_dir(staging)
    }

    fn snapshot_from(&self, digest: &str, dir: PathBuf, manifest: &ChunkManifest) -> Snapshot {
        Snapshot {
            digest: digest.to_owned(),
            image_path: dir.join(IMAGE_NAME),
            dir,
            data_bytes: manifest.data_bytes(),
            size: manifest.size,
        }
    }

    /// The stored manifest of `digest`, checked against the digest that names it.
    pub fn manifest(&self, digest: &str) -> Result<ChunkManifest> {
        let dir = self.dir(digest)?;
        let path = dir.join(MANIFEST_NAME);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                return Err(SnapshotError::NotFound {
                    digest: digest.to_owned(),
                    root: self.root.clone(),
                })
            }
            Err(e) => return Err(SnapshotError::io("read", &path, e)),
        };
        let bad = |reason: String| SnapshotError::BadManifest {
            path: path.clone(),
            reason,
        };
        let manifest = ChunkManifest::from_slice(&bytes).map_err(bad)?;
        if manifest.digest() != digest || manifest.canonical_bytes() != bytes {
            return Err(bad(format!("its content does not hash to {digest}")));
        }
        Ok(manifest)
    }

    pub fn get(&self, digest: &str) -> Result<Snapshot> {
        let manifest = self.manifest(digest)?;
        Ok(self.snapshot_from(digest, self.dir(digest)?, &manifest))
    }

    /// Re-hash the stored image and compare it with its manifest.
    pub fn verify(&self, digest: &str) -> Result<VerifyReport> {
        let manifest = self.manifest(digest)?;
        verify_file(&self.image_path(digest)?, &manifest)
    }

    /// Delete a snapshot. Clones already made from it are unaffected (they own their
    /// extents' references). The directory leaves its final name in one rename first.
    pub fn remove(&self, digest: &str) -> Result<()> {
        let dir = self.dir(digest)?;
        let trash = self.algo_dir().join(format!(
            "{TRASH_PREFIX}{}-{}",
            parse_digest(digest)?,
            unique_suffix()
        ));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound {
                    digest: digest.to_owned(),
                    root: self.root.clone(),
                })
            }
            Err(e) => return Err(SnapshotError::io("rename", &dir, e)),
        }
        std::fs::remove_dir_all(&trash).map_err(io("remove", &trash))?;
        // Its grown images were made from it and go with it; one left behind is found and
        // removed at the next start.
        if let Err(e) = self.grown.remove_all(digest) {
            tracing::warn!(%digest, error = %e, "cannot remove the grown images of a removed snapshot");
        }
        tracing::info!(%digest, "snapshot removed");
        Ok(())
    }

    /// Every committed snapshot, by digest. Damaged entries are logged and skipped, so one
    /// bad directory does not hide the rest (`get` on it reports what is wrong).
    pub fn list(&self) -> Result<Vec<Snapshot>> {
        let algo_dir = self.algo_dir();
        let entries = match std::fs::read_dir(&algo_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SnapshotError::io("read_dir", &algo_dir, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io("read_dir", &algo_dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            match self.get(&format!("sha256:{name}")) {
                Ok(s) => found.push(s),
                Err(e) => tracing::warn!(entry = %name, error = %e, "skipping damaged snapshot"),
            }
        }
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }

    /// Remove what interrupted commits and removals left behind. Only call this when no
    /// commit can be running (at daemon start): it cannot tell a live staging dir from a
    /// dead one. Returns how many entries it removed.
    pub fn clean_staging(&self) -> Result<usize> {
        let algo_dir = self.algo_dir();
        let entries = match std::fs::read_dir(&algo_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(SnapshotError::io("read_dir", &algo_dir, e)),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(io("read_dir", &algo_dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(STAGING_PREFIX) || name.starts_with(TRASH_PREFIX) {
                std::fs::remove_dir_all(entry.path()).map_err(io("remove", &entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_snapshot::hash_file;
    use std::os::unix::fs::FileExt;

    fn image(dir: &Path, name: &str, fill: u8) -> PathBuf {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&[fill; 4096], 5 << 20).unwrap();
        path
    }

    #[test]
    fn commit_get_verify_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().join("snapshots"));
        let img = image(dir.path(), "a.img", 1);
        let manifest = hash_file(&img).unwrap();
        let snap = store.commit(&img, &manifest).unwrap();
        assert!(!img.exists());
        assert_eq!(snap.digest, manifest.digest());
        assert_eq!(snap.image_path, store.image_path(&snap.digest).unwrap());
        assert_eq!((snap.size, snap.data_bytes), (16 << 20, 4 << 20));
        let mode = std::fs::metadata(&snap.image_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        let on_disk = std::fs::read(snap.dir.join(MANIFEST_NAME)).unwrap();
        assert_eq!(
            crate::block_snapshot::manifest::sha256_digest(&on_disk),
            snap.digest
        );
        assert_eq!(store.get(&snap.digest).unwrap(), snap);
        assert!(store.verify(&snap.digest).unwrap().is_ok());

        // The same content again: kept once, the newcomer deleted.
        let again = image(dir.path(), "b.img", 1);
        assert_eq!(store.commit(&again, &manifest).unwrap(), snap);
        assert!(!again.exists());

        let other = image(dir.path(), "c.img", 2);
        let other_snap = store.commit(&other, &hash_file(&other).unwrap()).unwrap();
        let mut want = vec![snap.clone(), other_snap];
        want.sort_by(|a, b| a.digest.cmp(&b.digest));
        assert_eq!(store.list().unwrap(), want);

        store.remove(&snap.digest).unwrap();
        assert!(matches!(
            store.get(&snap.digest),
            Err(SnapshotError::NotFound { .. })
        ));
        assert!(matches!(
            store.remove(&snap.digest),
            Err(SnapshotError::NotFound { .. })
        ));
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.clean_staging().unwrap(), 0);
    }

    #[test]
    fn refuses_a_manifest_of_another_file_and_bad_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().join("snapshots"));
        let img = image(dir.path(), "a.img", 1);
        let mut manifest = hash_file(&img).unwrap();
        manifest.size += 4096;
        let err = store.commit(&img, &manifest).unwrap_err();
        assert!(
            matches!(err, SnapshotError::ManifestMismatch { .. }),
            "{err}"
        );
        assert!(img.exists(), "a refused commit must leave the image alone");
        assert!(matches!(
            store.get("sha256:../x"),
            Err(SnapshotError::InvalidDigest(_))
        ));
    }

    #[test]
    fn detects_a_tampered_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(dir.path().join("snapshots"));
        let img = image(dir.path(), "a.img", 1);
        let snap = store.commit(&img, &hash_file(&img).unwrap()).unwrap();
        let path = snap.dir.join(MANIFEST_NAME);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"size\":16777216", "\"size\":16781312");
        std::fs::write(&path, text).unwrap();
        let err = store.get(&snap.digest).unwrap_err();
        assert!(matches!(err, SnapshotError::BadManifest { .. }), "{err}");
        assert!(store.list().unwrap().is_empty());
    }
}
