//! How a disk's image is attached and mounted: the same when it is made (create.rs) and when
//! it is attached again after a reboot (reattach.rs), so a disk comes back as it was.

use crate::image::MountConfig;
use crate::sys::attach_mount::{MountAt, MountSpec};
use crate::sys::{LoopOptions, MountOptions, MountTarget};

/// The loop device's options for a disk with a mountpoint (`mounted`) or attached only.
pub(super) fn loop_options(config: &MountConfig, mounted: bool) -> LoopOptions {
    LoopOptions {
        read_only: config.read_only,
        direct_io: config.direct_io,
        // A mounted disk's device goes when its mount does. An attach-only disk has no mount
        // to hold it, so autoclear would detach it as soon as our fd closed.
        autoclear: mounted,
    }
}

/// The disk's mount at `target`, never through a symlink: it lands on the directory the walk
/// opened beneath the target's root, whatever is renamed or swapped meanwhile.
pub(super) fn mount_at<'a>(config: &'a MountConfig, target: &'a MountTarget) -> MountSpec<'a> {
    MountSpec {
        at: MountAt::Beneath(target),
        fstype: "ext4",
        opts: MountOptions {
            read_only: config.read_only,
            // Pod data behaves like any disk's: relatime, barriers on.
            noatime: false,
        },
        data: &config.data,
    }
}
