//! Making a disk: clone (or format), grow, attach, mount, each step undone if a later one
//! fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::io::Errno;

use crate::image::{self, ImageError, MountConfig, BLOCK_SIZE};
use crate::sys::attach_mount::{attach_and_mount, AttachMountError};
use crate::sys::{FsType, LoopDevice, MountTarget, Sys, SysError};

use super::attach_spec;
use super::error::{DiskError, Result};
use super::{CloneMode, Disk, DiskOptions, DiskSource, DiskTimings, EMPTY_LABEL, IMAGE_MODE};

/// Clone `source` into `image` (or create an empty ext4 disk there), grow it to
/// `opts.size_bytes` when that is larger, attach it with direct I/O and mount it ext4 at
/// `opts.mountpoint` if one is given. On any failure everything done so far is undone: no
/// file, loop device or mount is left behind.
///
/// `image` must not exist. The disk does not depend on the calling process: a mounted disk
/// stays mounted (and its loop device attached) until `delete`, and so does an attach-only
/// one. A mountpoint directory created here is the caller's to remove after `delete`.
/// The mountpoint is reached beneath its root without following symlinks (`mount_beneath`).
pub fn create(
    sys: &dyn Sys,
    image: &Path,
    source: DiskSource<'_>,
    opts: &DiskOptions,
) -> Result<Disk> {
    if opts.size_bytes == 0 || !opts.size_bytes.is_multiple_of(BLOCK_SIZE) {
        return Err(DiskError::UnalignedSize {
            size: opts.size_bytes,
        });
    }
    if image.symlink_metadata().is_ok() {
        return Err(DiskError::Exists {
            image: image.to_owned(),
        });
    }
    let mut undo = Undo::new(sys, image);
    match build(sys, image, source, opts, &mut undo) {
        Ok(disk) => {
            undo.disarm();
            tracing::debug!(?disk, "disk ready");
            Ok(disk)
        }
        Err(cause) => Err(undo.run(cause)),
    }
}

fn build(
    sys: &dyn Sys,
    image: &Path,
    source: DiskSource<'_>,
    opts: &DiskOptions,
    undo: &mut Undo<'_>,
) -> Result<Disk> {
    let config = MountConfig::writable();
    let mut timings = DiskTimings::default();

    let started = Instant::now();
    let cloned_size = match source {
        DiskSource::Snapshot(src) => clone(sys, src, image, opts, undo)?,
        DiskSource::Empty => {
            format_empty(image, opts.size_bytes, undo)?;
            opts.size_bytes
        }
    };
    timings.clone_ms = ms(started);
    crate::fault::point("disk.clone");

    if opts.size_bytes > cloned_size {
        let started = Instant::now();
        image::grow(image, opts.size_bytes).map_err(|source| DiskError::Image {
            image: image.to_owned(),
            source: Box::new(source),
        })?;
        timings.grow_ms = ms(started);
    }

    let loop_opts = attach_spec::loop_options(&config, opts.mountpoint.is_some());
    let mount = opts
        .mountpoint
        .as_ref()
        .map(|target| attach_spec::mount_at(&config, target));
    let attached = attach_and_mount(sys, image, loop_opts, mount, Some("disk.attach")).map_err(
        |e| match e {
            AttachMountError::Attach { source, .. } => DiskError::Attach {
                image: image.to_owned(),
                source: Box::new(source),
            },
            AttachMountError::Mount {
                device,
                at,
                source,
                left_attached,
            } => {
                if let Some(e) = left_attached {
                    let shown = device.display();
                    undo.left_behind(e.to_string(), format!("loop device {shown}"));
                }
                DiskError::mount(image, &device, at, source)
            }
        },
    )?;
    let device_path = attached.device.path.clone();
    timings.attach_ms = attached.attach_time.as_secs_f64() * 1e3;
    timings.mount_ms = attached.mount_time.as_secs_f64() * 1e3;
    undo.created_dirs = attached.created_dirs;
    undo.mounted = attached.mountpoint;
    undo.device = Some(attached.device);

    Ok(Disk {
        image: image.to_owned(),
        device: device_path,
        mountpoint: opts.mountpoint.as_ref().map(MountTarget::path),
        size_bytes: opts.size_bytes,
        timings,
    })
}

/// Clone the snapshot into `image`; returns the snapshot's size.
fn clone(
    sys: &dyn Sys,
    src: &Path,
    image: &Path,
    opts: &DiskOptions,
    undo: &mut Undo<'_>,
) -> Result<u64> {
    let source_size = std::fs::metadata(src)
        .map_err(|e| DiskError::io("stat snapshot image", src, e))?
        .len();
    if opts.size_bytes < source_size {
        return Err(DiskError::TooSmall {
            requested: opts.size_bytes,
            source_image: src.to_owned(),
            source_size,
        });
    }
    let clone_err = |source: SysError| {
        if source.raw_os_error() == Some(Errno::EXIST.raw_os_error()) {
            DiskError::Exists {
                image: image.to_owned(),
            }
        } else {
            DiskError::Clone {
                source_image: src.to_owned(),
                image: image.to_owned(),
                source: Box::new(source),
            }
        }
    };
    match opts.clone_mode {
        CloneMode::Reflink => {
            let fs = sys
                .fs_type(src)
                .map_err(|e| DiskError::sys("probe filesystem of", src, e))?;
            if fs == FsType::BTRFS {
                // btrfs clones a file with unflushed delalloc by flushing it inside FICLONE
                // (0.6 s for a fresh snapshot). Once synced, fsync is a no-op on a frozen
                // file, so doing it every time costs nothing after the first.
                sys.fsync(src)
                    .map_err(|e| DiskError::sys("fsync snapshot image", src, e))?;
            }
            if let Err(e) = sys.reflink(src, image) {
                let unsupported = [Errno::OPNOTSUPP, Errno::XDEV, Errno::INVAL]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(n.raw_os_error()));
                return Err(if unsupported {
                    DiskError::ReflinkUnsupported {
                        source_image: src.to_owned(),
                        image: image.to_owned(),
                        fs_type: fs.name(),
                        source: Box::new(e),
                    }
                } else {
                    clone_err(e)
                });
            }
        }
        CloneMode::SparseCopy => {
            let started = Instant::now();
            let copied = sys.sparse_copy(src, image).map_err(clone_err)?;
            tracing::warn!(
                ?src,
                ?image,
                copied_bytes = copied,
                elapsed = ?started.elapsed(),
                "disk made by copying its snapshot's data, not by reflink: slow, and it takes \
                 space; put the state root on XFS or btrfs (or set `backing_image`)"
            );
        }
    }
    undo.file = true;
    set_mode(image)?;
    Ok(source_size)
}

fn format_empty(image: &Path, size: u64, undo: &mut Undo<'_>) -> Result<()> {
    let image_err = |source: ImageError| match &source {
        ImageError::Io { source: io, .. } if io.kind() == std::io::ErrorKind::AlreadyExists => {
            DiskError::Exists {
                image: image.to_owned(),
            }
        }
        _ => DiskError::Image {
            image: image.to_owned(),
            source: Box::new(source),
        },
    };
    image::create_sparse(image, size).map_err(image_err)?;
    undo.file = true;
    set_mode(image)?;
    image::mkfs(image, EMPTY_LABEL).map_err(image_err)
}

fn set_mode(image: &Path) -> Result<()> {
    std::fs::set_permissions(image, std::fs::Permissions::from_mode(IMAGE_MODE))
        .map_err(|e| DiskError::io("chmod", image, e))
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// What a half-made disk holds, undone in reverse order unless disarmed.
struct Undo<'s> {
    sys: &'s dyn Sys,
    image: PathBuf,
    file: bool,
    device: Option<LoopDevice>,
    created_dirs: Vec<PathBuf>,
    mounted: Option<PathBuf>,
    /// What a step already failed to undo itself: (the problem, what is left).
    left: Vec<(String, String)>,
}

impl<'s> Undo<'s> {
    fn new(sys: &'s dyn Sys, image: &Path) -> Self {
        Undo {
            sys,
            image: image.to_owned(),
            file: false,
            device: None,
            created_dirs: Vec::new(),
            mounted: None,
            left: Vec::new(),
        }
    }

    /// Something a failed step could not undo itself, for the report.
    fn left_behind(&mut self, problem: String, leftover: String) {
        self.left.push((problem, leftover));
    }

    /// The disk is complete: let go of the loop device handle (the mount, or the
    /// non-autoclear binding, now keeps the device) and undo nothing.
    fn disarm(mut self) {
        if let Some(mut device) = self.device.take() {
            device.release();
        }
        self.file = false;
        self.created_dirs.clear();
        self.mounted = None;
    }

    fn run(mut self, cause: DiskError) -> DiskError {
        let (mut problems, mut leftovers): (Vec<_>, Vec<_>) = self.left.drain(..).unzip();
        if let Some(mountpoint) = self.mounted.take() {
            if let Err(e) = crate::sys::unmount_settled_nofollow(self.sys, &mountpoint) {
                problems.push(e.to_string());
                leftovers.push(format!("the mount at {}", mountpoint.display()));
            }
        }
        if let Some(mut device) = self.device.take() {
            // Never mounted, or just unmounted: detach now; holding the handle meanwhile
            // means the number cannot have been handed to anyone else.
            if let Err(e) = self.sys.detach_loop_of(&device.path, &self.image) {
                problems.push(e.to_string());
                leftovers.push(format!("loop device {}", device.path.display()));
            }
            device.release();
        }
        if self.file {
            if let Err(e) = std::fs::remove_file(&self.image) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    problems.push(format!("remove {}: {e}", self.image.display()));
                    leftovers.push(format!("file {}", self.image.display()));
                }
            }
        }
        for dir in self.created_dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(?dir, error = %e, "cannot remove mountpoint made for a failed disk");
            }
        }
        if problems.is_empty() {
            tracing::debug!(image = ?self.image, error = %cause, "disk creation undone");
            return cause;
        }
        DiskError::Leftover {
            cause: Box::new(cause),
            cleanup: problems.join("; "),
            leftover: leftovers.join(", "),
        }
    }
}
