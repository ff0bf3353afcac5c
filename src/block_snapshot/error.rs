//! Errors from freezing, storing and verifying snapshots.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a snapshot digest: expected \"sha256:\" and 64 lowercase hex digits")]
    InvalidDigest(String),
    #[error("no snapshot {digest} under {root}: list the snapshots to see which exist")]
    NotFound { digest: String, root: PathBuf },
    #[error(
        "{image} is on a different filesystem from the snapshot store {root}: build images \
         under the same state root (its work/ directory) so freezing is a rename, not a copy"
    )]
    CrossDevice { image: PathBuf, root: PathBuf },
    #[error(
        "{path} changed while it was being hashed (it is {actual} bytes, expected {expected}): \
         make sure nothing has the image attached or open for writing, then freeze again"
    )]
    ChangedWhileHashing {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "manifest {path} is damaged ({reason}): remove snapshot and rebuild the cache it \
         came from"
    )]
    BadManifest { path: PathBuf, reason: String },
    #[error(
        "the manifest describes a {expected}-byte file but {image} is {actual} bytes: hash \
         the image again before committing it"
    )]
    ManifestMismatch {
        image: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "cannot make the snapshot's image grown to {size} bytes at {path}: {reason}; the disk \
         was not made: check the state root's free space and try again"
    )]
    Grow {
        path: PathBuf,
        size: u64,
        reason: String,
    },
    #[error("chunk size {0} is not a positive multiple of 4096")]
    BadChunkSize(u64),
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SnapshotError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, SnapshotError>;
