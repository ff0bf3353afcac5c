//! The one way into the daemon: each front door (the HTTP API, the containerd snapshotter)
//! turns every request into an `Action` and the `Reply` into its own protocol's answer.

use super::ctr_snapshots::{SnapshotReply, SnapshotRequest};
use crate::objects::{
    Disk, DiskList, ImageCache, ImageCacheList, ValidDisk, ValidImageCache, VerifyResult,
};

#[derive(Debug)]
pub enum Action {
    /// Record a validated ImageCache as Pending and schedule its build. Fails with
    /// AlreadyExists when the name is taken.
    CreateImageCache(Box<ValidImageCache>),
    /// One cache with its current status and events.
    GetImageCache(String),
    /// Every cache, oldest first.
    ListImageCaches,
    /// Stop the cache's build if one runs, remove the cache, and drop its snapshot when nothing
    /// else references it.
    DeleteImageCache(String),
    /// Re-hash a Ready cache's snapshot against its manifest.
    VerifyImageCache(String),
    /// Push a Ready cache's snapshot to `share_registry` now, and answer the cache.
    PushImageCache(String),
    /// Read the shared snapshot a reference names and create a cache of its images that
    /// imports it (`imagecache pull`); answers the cache as created.
    PullSnapshot(crate::objects::SnapshotPull),
    /// Select a cache for a pod (matching.rs), clone it into a new disk, attach and mount it;
    /// images the cache lacks are pulled into the disk in the background. A request that
    /// names a disk that exists answers it (`Reply::ExistingDisk`) when it is the request
    /// the disk was made from, and fails with Conflict when it is not.
    CreateDisk(Box<ValidDisk>),
    GetDisk(String),
    ListDisks,
    /// Unmount, detach and remove a disk; refused, changing nothing, while its mount is busy.
    DeleteDisk(String),
    /// The state root's filesystem, reflink support, loop devices, caches, disks, versions.
    Info,
    /// One request of containerd's snapshots API (`daemon::ctr_snapshots` documents each); the
    /// snapshotter front door sends these.
    Snapshot(SnapshotRequest),
}

impl Action {
    /// A read of what the store holds: answered wherever the request arrived. Everything
    /// else changes state or does heavy work (verify's hashing) and runs on the daemon's work
    /// runtime (`Daemon::dispatch`).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Action::GetImageCache(_)
                | Action::ListImageCaches
                | Action::GetDisk(_)
                | Action::ListDisks
                | Action::Info
        )
    }
}

#[derive(Debug)]
pub enum Reply {
    ImageCache(Box<ImageCache>),
    ImageCacheList(ImageCacheList),
    /// The object is gone; the message says which.
    Deleted(String),
    Verify(VerifyResult),
    Disk(Box<Disk>),
    /// A create named a disk that exists and asked for what it is: that disk, nothing made.
    ExistingDisk(Box<Disk>),
    DiskList(DiskList),
    Info(serde_json::Value),
    Snapshot(SnapshotReply),
}
