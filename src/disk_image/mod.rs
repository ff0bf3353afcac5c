//! Per-pod disk images, on the node: the files, loop devices and mounts (the API's Disk
//! objects, their requests and records, are `daemon::disks`). A snapshot's frozen ext4
//! image cloned copy-on-write (FICLONE) into `disks/<id>.img`, grown when the pod asks for
//! more room, attached to a loop device with direct I/O and mounted. Cloning shares every extent with the snapshot, so a disk is ready
//! in milliseconds whatever the cache's size, and neither the snapshot nor another disk ever
//! sees its writes; the disk's size bounds what the pod can write.
//!
//! A disk outlives the daemon that made it: loop devices and mounts are kernel state, and
//! nothing here keeps an fd that the disk depends on. A mounted disk's loop device is
//! attached with autoclear, so unmounting it is what detaches it; an attach-only disk (for a
//! microVM) is attached without autoclear and stays until `delete`.
//!
//! Where the state root cannot share extents (ext4), `mount_backing_image` puts it on an
//! XFS filesystem in a sparse file, and `CloneMode::SparseCopy` is the slow, loud fallback.

mod attach_spec;
mod attachments;
mod backing;
mod create;
mod delete;
mod error;
mod probe;
mod reattach;
mod tool;

use std::path::{Path, PathBuf};

pub use crate::mount_path::MountTarget;

pub use attachments::Attachments;
pub use backing::mount_backing_image;
pub use create::create;
pub use delete::delete;
pub use error::{DiskError, Result};
pub use probe::{probe_reflink, ReflinkSupport};
pub use reattach::{reattach, Reattached};

/// How a disk gets its copy of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneMode {
    /// FICLONE: O(1) in the image's size, blocks shared until written. Fails (never falls
    /// back silently) where the filesystem cannot share extents.
    Reflink,
    /// Copy the data extents, keep the holes: for a state root without reflinks. Costs time
    /// and space proportional to the snapshot's data on every disk.
    SparseCopy,
}

/// What a new disk starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskSource<'a> {
    /// A snapshot's frozen ext4 image (`snapshots/sha256/<digest>/disk.img`).
    Snapshot(&'a Path),
    /// Nothing: a new sparse file formatted ext4 (the cold path, when no cache matches).
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// At least the snapshot's size, a multiple of 4 KiB; larger grows the filesystem.
    pub size_bytes: u64,
    /// Where to mount the disk (created if missing, never reached through a symlink).
    /// `None` attaches it only, for a microVM that takes the block device.
    pub mountpoint: Option<MountTarget>,
    pub clone_mode: CloneMode,
}

/// Wall-clock milliseconds of each step of `create`; a step that did not run is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskTimings {
    /// Reflink, sparse copy, or (for an empty disk) creating and formatting the file.
    pub clone_ms: f64,
    pub grow_ms: f64,
    pub attach_ms: f64,
    pub mount_ms: f64,
}

impl DiskTimings {
    /// Clone + grow + attach + mount: how long the disk took to be ready.
    pub fn total_ms(&self) -> f64 {
        self.clone_ms + self.grow_ms + self.attach_ms + self.mount_ms
    }
}

/// A disk that exists: its file, the loop device it is attached to, and where it is mounted.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub image: PathBuf,
    /// `/dev/loopN`.
    pub device: PathBuf,
    pub mountpoint: Option<PathBuf>,
    pub size_bytes: u64,
    pub timings: DiskTimings,
}

/// Mode of a disk's image file: the pod's data, readable by root alone.
const IMAGE_MODE: u32 = 0o600;
/// Volume label of an empty disk (ext4 labels hold 16 bytes, disk ids are longer).
const EMPTY_LABEL: &str = "imagecache-disk";

#[cfg(test)]
mod tests;
