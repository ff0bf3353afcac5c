//! The embedded default for hosts whose state root cannot share extents (ext4): an XFS
//! filesystem in a sparse file, loop-mounted where the state root lives.

use std::path::Path;

use crate::image::{self, BLOCK_SIZE};
use crate::sys::attach_mount::{attach_and_mount, AttachMountError, MountAt, MountSpec};
use crate::sys::{LoopOptions, MountOptions, Sys};

use super::error::{DiskError, Result};
use super::tool;

/// Mount the XFS filesystem in `backing_image` at `root`, creating both if missing: a new
/// backing image is a sparse file of `size_bytes` formatted XFS with reflinks and 4 KiB
/// sectors (the loop device runs with direct I/O, whose logical blocks are 4 KiB). An
/// existing, smaller one is grown to `size_bytes`; a larger one is kept as it is.
///
/// Idempotent: if `root` is already this image's mount, nothing is done. A `root` that is
/// not empty, or is another filesystem's mount point, is refused. The mount outlives the
/// calling process (autoclear: unmounting it detaches the loop device).
pub fn mount_backing_image(
    sys: &dyn Sys,
    backing_image: &Path,
    size_bytes: u64,
    root: &Path,
) -> Result<()> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(DiskError::UnalignedSize { size: size_bytes });
    }
    if root.exists() {
        let root = root
            .canonicalize()
            .map_err(|e| DiskError::io("resolve", root, e))?;
        if let Some(source) = sys
            .mount_source(&root)
            .map_err(|e| DiskError::sys("look up the mount at", &root, e))?
        {
            if is_loop_of(sys, &source, backing_image)? {
                tracing::debug!(?backing_image, ?root, "backing image already mounted");
                return Ok(());
            }
            return Err(DiskError::RootMountedElsewhere {
                root,
                backing: backing_image.to_owned(),
            });
        }
        let mut entries = std::fs::read_dir(&root).map_err(|e| DiskError::io("list", &root, e))?;
        if entries.next().is_some() {
            return Err(DiskError::RootNotEmpty {
                root,
                backing: backing_image.to_owned(),
            });
        }
    } else {
        std::fs::create_dir_all(root).map_err(|e| DiskError::io("create", root, e))?;
    }

    let existing_len = match std::fs::metadata(backing_image) {
        Ok(m) => Some(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(DiskError::io("stat", backing_image, e)),
    };
    let grown_from = match existing_len {
        None => {
            format_new(backing_image, size_bytes)?;
            None
        }
        Some(len) if len < size_bytes => {
            set_len(backing_image, size_bytes)?;
            Some(len)
        }
        Some(_) => None,
    };
    // Whatever we did to the file, undone if it cannot be mounted.
    let undo_file = || match (existing_len, grown_from) {
        (None, _) => {
            let _ = std::fs::remove_file(backing_image);
        }
        (Some(_), Some(len)) => {
            let _ = set_len(backing_image, len);
        }
        _ => {}
    };

    let loop_opts = LoopOptions {
        read_only: false,
        direct_io: true,
        autoclear: true,
    };
    let mount = MountSpec {
        at: MountAt::Path(root),
        fstype: "xfs",
        opts: MountOptions::default(),
        data: "",
    };
    let mut device = match attach_and_mount(sys, backing_image, loop_opts, Some(mount), None) {
        Ok(attached) => attached.device,
        Err(AttachMountError::Attach { source, .. }) => {
            undo_file();
            return Err(DiskError::Attach {
                image: backing_image.to_owned(),
                source: Box::new(source),
            });
        }
        Err(AttachMountError::Mount { device, source, .. }) => {
            undo_file();
            return Err(DiskError::Mount {
                image: backing_image.to_owned(),
                device,
                mountpoint: root.to_owned(),
                source: Box::new(source),
            });
        }
    };
    device.release();
    tracing::info!(?backing_image, ?root, device = ?device.path, "backing image mounted");

    if let Some(from) = grown_from {
        // The mount is good at its old size; a failed grow is worth a warning, not an outage.
        match tool::run_ok("xfs_growfs", &["-d"], root) {
            Ok(()) => tracing::info!(?backing_image, from, to = size_bytes, "backing image grown"),
            Err(e) => tracing::warn!(?backing_image, error = %e, "cannot grow backing image"),
        }
    }
    Ok(())
}

fn format_new(backing_image: &Path, size_bytes: u64) -> Result<()> {
    if let Some(parent) = backing_image.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DiskError::io("create", parent, e))?;
    }
    image::create_sparse(backing_image, size_bytes).map_err(|source| DiskError::Image {
        image: backing_image.to_owned(),
        source: Box::new(source),
    })?;
    // -K: discarding a sparse file's blocks would only punch holes it already has.
    let formatted = tool::run_ok(
        "mkfs.xfs",
        &["-q", "-K", "-m", "reflink=1", "-s", "size=4096"],
        backing_image,
    );
    if formatted.is_err() {
        let _ = std::fs::remove_file(backing_image);
    }
    formatted
}

fn set_len(file: &Path, len: u64) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(len))
        .map_err(|e| DiskError::io("resize", file, e))
}

/// Whether `device` is a loop device bound to `backing_image`.
fn is_loop_of(sys: &dyn Sys, device: &Path, backing_image: &Path) -> Result<bool> {
    let Ok(backing) = backing_image.canonicalize() else {
        return Ok(false);
    };
    let loops = sys
        .loop_devices()
        .map_err(|e| DiskError::sys("list loop devices for", backing_image, e))?;
    Ok(loops
        .iter()
        .any(|l| l.device == device && l.backing_file == backing))
}
