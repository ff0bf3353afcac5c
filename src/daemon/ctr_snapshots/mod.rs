//! The core of the containerd snapshotter: containerd's snapshot model (active, view and
//! committed snapshots chained by parent) kept in the store, with each snapshot's directory
//! on node storage, in a Ready cache's frozen image, or on a per-pod disk.
//!
//! It knows no gRPC: the front door in `crate::snapshotter_grpc` turns containerd's requests
//! into a [`SnapshotRequest`] and maps a [`SnapshotError`] to its status codes.
//!
//! | request | what happens |
//! |---|---|
//! | Prepare with `containerd.io/snapshot.ref=<chainID>` held by a Ready cache | a committed snapshot named `<chainID>` backed by the cache's layer directory (the frozen image mounted read-only once); answers AlreadyExists so containerd fetches nothing |
//! | Prepare of a layer no Ready cache holds, with CRI's `cri.image-ref` and `cri.manifest-digest` labels | first the whole image into an auto-created cache (imported or built; cold_pull.rs), then as above; containerd's own pull when that fails |
//! | Prepare with `containerd.io/snapshot/imagecache.io/disk=<disk id>` and `…/disk-token=<the disk's bindToken>` | lowers from the disk's own layer directories, upper and work on the disk; without the right token, refused before anything is recorded or made (bind.rs) |
//! | any other Prepare | an active snapshot on node storage, an overlay of its parents' directories, as containerd's overlayfs snapshotter makes it |
//! | Remove | refused while children exist; the last snapshot on a cache unmounts its image |

mod bind;
mod cachemount;
mod cold_pull;
mod filter;
mod mounts;
mod ops;
mod paths;
mod recover;
mod usage;

use std::collections::BTreeMap;
use std::sync::Mutex;

pub use mounts::MountSpec;
pub use recover::recover;

use super::Daemon;
use crate::failure::Failure;
use crate::store::{SnapshotKind, StoreError};

/// The label containerd's unpacker puts on the snapshot of each layer it prepares: the
/// layer's chainID, the name it commits it under.
pub const LABEL_TARGET: &str = "containerd.io/snapshot.ref";
/// The label (passed by CRI from the container annotation of the same key) that binds a
/// container's root filesystem to a per-pod disk.
pub const LABEL_DISK: &str = "containerd.io/snapshot/imagecache.io/disk";
/// The label (from the container annotation of the same key) that carries the bind token the
/// disk's create returned: the proof that the container is the disk's pod's. A secret: it is
/// checked and dropped, never recorded with the snapshot nor logged.
pub const LABEL_DISK_TOKEN: &str = "containerd.io/snapshot/imagecache.io/disk-token";

/// A snapshot as containerd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: Option<String>,
    pub kind: SnapshotKind,
    /// Unix nanoseconds.
    pub created: i64,
    pub updated: i64,
    pub labels: BTreeMap<String, String>,
}

/// Bytes and inodes a snapshot's own directory uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub size: i64,
    pub inodes: i64,
}

/// One snapshotter request, as containerd's snapshots service defines them.
#[derive(Debug, Clone)]
pub enum SnapshotRequest {
    /// A new active snapshot over `parent` (committed, or empty for a base layer).
    Prepare {
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    },
    /// A new read-only view of `parent`.
    View {
        key: String,
        parent: String,
        labels: BTreeMap<String, String>,
    },
    /// The mounts of an active snapshot or a view.
    Mounts {
        key: String,
    },
    /// Turn active snapshot `key` into committed snapshot `name`.
    Commit {
        name: String,
        key: String,
        labels: BTreeMap<String, String>,
    },
    /// Remove a snapshot that has no children.
    Remove {
        key: String,
    },
    Stat {
        key: String,
    },
    /// Change a snapshot's labels (the only mutable field); `fields` as containerd's update
    /// mask: empty or `labels` replaces them all, `labels.<key>` sets or drops one.
    Update {
        name: String,
        labels: BTreeMap<String, String>,
        fields: Vec<String>,
    },
    /// Every snapshot matching any of `filters` (containerd's filter syntax; none: all).
    List {
        filters: Vec<String>,
    },
    Usage {
        key: String,
    },
    /// Remove directories and cache mounts that no snapshot uses.
    Cleanup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotReply {
    Mounts(Vec<MountSpec>),
    Info(SnapshotInfo),
    List(Vec<SnapshotInfo>),
    Usage(Usage),
    Done,
}

/// What went wrong, in the kinds containerd tells apart.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not have what it asked for (a disk without its bind token).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Internal(#[source] Failure),
    /// Not possible yet, soon (a disk still being adopted after a restart): retry.
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for SnapshotError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => SnapshotError::NotFound(what),
            StoreError::AlreadyExists(what) => SnapshotError::AlreadyExists(what),
            other => SnapshotError::Internal(Failure::of(other)),
        }
    }
}

impl From<crate::sys::SysError> for SnapshotError {
    fn from(e: crate::sys::SysError) -> Self {
        SnapshotError::Internal(Failure::of(e))
    }
}

pub type Result<T> = std::result::Result<T, SnapshotError>;

/// The snapshotter's shared state. `changes` serialises the short steps that check and
/// write its records (containerd unpacks and starts containers concurrently, and a check must
/// not interleave with the change it guards); reads (Stat, Mounts, List, Usage) never take it,
/// and no directory walk, removal or mount happens while it is held, so one request's
/// filesystem work never stalls another's.
#[derive(Debug, Default)]
pub struct State {
    changes: Mutex<()>,
    cache_mounts: cachemount::CacheMounts,
}

impl State {
    /// Held for a check and the record change it guards, never across filesystem work.
    fn changing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Daemon {
    /// Carries out one snapshotter request on a blocking thread (it mounts and walks
    /// directories).
    pub async fn snapshot(&self, request: SnapshotRequest) -> Result<SnapshotReply> {
        if let SnapshotRequest::Prepare { parent, labels, .. } = &request {
            cold_pull::before_prepare(self, parent, labels).await;
        }
        let d = self.clone();
        tokio::task::spawn_blocking(move || ops::handle(&d, request))
            .await
            .map_err(|e| SnapshotError::Internal(Failure::new("snapshotter task failed", e)))?
    }

    /// Counts of the snapshotter's snapshots by kind (for `info`).
    pub fn snapshot_counts(&self) -> Result<BTreeMap<&'static str, u64>> {
        let mut counts = BTreeMap::from([("active", 0), ("committed", 0), ("view", 0)]);
        for r in self.inner.store.list_ctr_snapshots()? {
            *counts.entry(r.kind.as_str()).or_default() += 1;
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod tests;
