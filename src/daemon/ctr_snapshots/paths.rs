//! Where the snapshotter keeps things under the state root:
//!
//! ```text
//! snapshotter/snapshots/<id>/fs       a layer containerd applied, or an active snapshot's upper
//!                                     (a symlink into a cache's image for cache-backed layers)
//! snapshotter/snapshots/<id>/work     overlayfs work directory of an active snapshot
//! snapshotter/snapshots/<id>/lower/N  symlinks to a disk's layer directories (disk-bound)
//! snapshotter/caches/<digest hex>/    a frozen cache image, mounted read-only
//! ```
//!
//! Directories are named by the record's number, never by containerd's key (keys hold any
//! character), and the chainIDs inside a cache (`sha256:...`) are reached through symlinks
//! because overlayfs splits its `lowerdir` option on ':'.

use std::path::{Path, PathBuf};

pub fn root(state_root: &Path) -> PathBuf {
    state_root.join("snapshotter")
}

pub fn snapshots_dir(state_root: &Path) -> PathBuf {
    root(state_root).join("snapshots")
}

pub fn snapshot_dir(state_root: &Path, id: i64) -> PathBuf {
    snapshots_dir(state_root).join(id.to_string())
}

pub fn fs_dir(state_root: &Path, id: i64) -> PathBuf {
    snapshot_dir(state_root, id).join("fs")
}

pub fn work_dir(state_root: &Path, id: i64) -> PathBuf {
    snapshot_dir(state_root, id).join("work")
}

pub fn lower_link(state_root: &Path, id: i64, n: usize) -> PathBuf {
    snapshot_dir(state_root, id)
        .join("lower")
        .join(n.to_string())
}

pub fn caches_dir(state_root: &Path) -> PathBuf {
    root(state_root).join("caches")
}

/// Where the frozen image of snapshot `digest` is mounted.
pub fn cache_mount(state_root: &Path, digest: &str) -> PathBuf {
    caches_dir(state_root).join(digest.strip_prefix("sha256:").unwrap_or(digest))
}

/// A layer's directory inside a cache's (or a disk's) filesystem.
pub fn layer_in(fs_root: &Path, chain_id: &str) -> PathBuf {
    fs_root
        .join(crate::layout::SNAPSHOTS_DIR)
        .join(chain_id)
        .join("fs")
}

/// Where a disk-bound container's upper and work directories live on the disk.
pub fn disk_container_dir(disk_root: &Path, id: i64) -> PathBuf {
    disk_root.join("containers").join(id.to_string())
}
