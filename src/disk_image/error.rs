//! Errors from making and removing per-pod disks, each saying what to do about it.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use rustix::io::Errno;

use crate::image::ImageError;
use crate::sys::SysError;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "disk image {image} already exists: another disk has this id; pick a new id, or \
         delete the old disk first"
    )]
    Exists { image: PathBuf },
    #[error(
        "disk size {requested} bytes is smaller than its snapshot {source_image} \
         ({source_size} bytes): ask for at least the snapshot's size"
    )]
    TooSmall {
        requested: u64,
        source_image: PathBuf,
        source_size: u64,
    },
    #[error(
        "disk size {size} bytes is not a multiple of 4096 bytes: ask for a whole number of \
         4 KiB blocks (sizes in GiB always are)"
    )]
    UnalignedSize { size: u64 },
    #[error(
        "cannot reflink {source_image} into {image}: the {fs_type} filesystem there cannot \
         share extents ({source}); put the state root on XFS or btrfs, set `backing_image` in \
         the config, or accept the slow sparse-copy fallback"
    )]
    ReflinkUnsupported {
        source_image: PathBuf,
        image: PathBuf,
        fs_type: String,
        #[source]
        source: Box<SysError>,
    },
    #[error("clone {source_image} into {image}: {source}")]
    Clone {
        source_image: PathBuf,
        image: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    #[error("prepare disk image {image}: {source}")]
    Image {
        image: PathBuf,
        #[source]
        source: Box<ImageError>,
    },
    #[error("attach {image} to a loop device: {source}{}", attach_hint(source))]
    Attach {
        image: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    /// A mountpoint that may not be used at all (outside every mount root, say).
    #[error("the disk's mountpoint is refused: {0}")]
    MountPath(#[from] crate::mount_path::MountPathError),
    /// The way to the mountpoint holds a symlink, a mount, or something not a directory:
    /// it is never followed, into or across.
    #[error(
        "{mountpoint} cannot be used as the disk's mountpoint: {source}; a disk is mounted \
         only on plain directories beneath its mount root, reached without following a \
         symlink or entering another mount: give a path of plain directories (or none, for \
         the default)"
    )]
    MountPathRefused {
        mountpoint: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    #[error(
        "mount {image} ({device}) at {mountpoint}: {source} (the kernel log, `dmesg`, says \
         why ext4 refused it)"
    )]
    Mount {
        image: PathBuf,
        device: PathBuf,
        mountpoint: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    #[error(
        "disk mounted at {mountpoint} is busy: a process still has files open or its working \
         directory there (see `fuser -vm {mountpoint}`); stop the pod's processes and delete \
         again. Nothing was changed"
    )]
    Busy { mountpoint: PathBuf },
    #[error(
        "{mountpoint} holds a filesystem that is not this disk's ({device}): refusing to \
         unmount it; check which disk is mounted there"
    )]
    ForeignMount {
        mountpoint: PathBuf,
        device: PathBuf,
    },
    #[error("unmount {mountpoint}: {source}")]
    Unmount {
        mountpoint: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    #[error("detach {device} from {image}: {source}")]
    Detach {
        device: PathBuf,
        image: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    #[error("{what} {path}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Box<SysError>,
    },
    #[error("cannot run {tool}: {source} (is xfsprogs installed and on PATH?)")]
    ToolMissing {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed on {path} ({status}); its output follows:\n{output}")]
    ToolFailed {
        tool: &'static str,
        path: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error(
        "{root} is not empty and is not the backing image's mount: refusing to mount {backing} \
         over it (that would hide what is there); move its contents away or pick another root"
    )]
    RootNotEmpty { root: PathBuf, backing: PathBuf },
    #[error(
        "{root} is already a mount point, but not of {backing}: unmount it, or point \
         `backing_image` at the image mounted there"
    )]
    RootMountedElsewhere { root: PathBuf, backing: PathBuf },
    #[error(
        "{cause}; undoing the half-made disk also failed ({cleanup}): remove {leftover} by \
         hand"
    )]
    Leftover {
        cause: Box<DiskError>,
        cleanup: String,
        leftover: String,
    },
}

/// Where to look when an attach failed for a reason the error itself does not explain (a
/// shortage of loop devices says what to do already).
fn attach_hint(source: &SysError) -> &'static str {
    if source.is_loop_shortage() {
        ""
    } else {
        " (check that /dev/loop-control exists and the loop module is loaded)"
    }
}

impl DiskError {
    /// No loop device could be had for the disk: the node lacks one, the request is fine.
    /// A mount refused for its path (`MountPathRefused`), which the caller can change.
    pub fn is_refused_mount_path(&self) -> bool {
        match self {
            DiskError::MountPathRefused { .. } | DiskError::MountPath(_) => true,
            DiskError::Leftover { cause, .. } => cause.is_refused_mount_path(),
            _ => false,
        }
    }

    /// What a failed `mount_beneath` means: the path refused (a symlink, a mount or a
    /// non-directory on the way), or the mount itself failed.
    pub(crate) fn mount(
        image: &Path,
        device: &Path,
        mountpoint: PathBuf,
        source: SysError,
    ) -> Self {
        let refused = [Errno::LOOP, Errno::XDEV, Errno::NOTDIR]
            .iter()
            .any(|e| source.raw_os_error() == Some(e.raw_os_error()));
        if refused {
            DiskError::MountPathRefused {
                mountpoint,
                source: Box::new(source),
            }
        } else {
            DiskError::Mount {
                image: image.to_owned(),
                device: device.to_owned(),
                mountpoint,
                source: Box::new(source),
            }
        }
    }

    /// The host's filesystem (or the quota on it) had no room for the disk's file: ENOSPC or
    /// EDQUOT while creating, cloning, copying, growing or formatting it. The same errno from
    /// the loop driver means no device is left, which `is_loop_shortage` answers.
    pub fn is_no_space(&self) -> bool {
        match self {
            DiskError::Attach { .. } => false,
            DiskError::Leftover { cause, .. } => cause.is_no_space(),
            // The tools print strerror; their exit status says only "failed".
            DiskError::ToolFailed { output, .. } => {
                output.contains("No space left on device") || output.contains("Disk quota exceeded")
            }
            _ => {
                let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
                while let Some(e) = next {
                    let errno = e
                        .downcast_ref::<std::io::Error>()
                        .and_then(std::io::Error::raw_os_error)
                        .or_else(|| {
                            e.downcast_ref::<SysError>()
                                .and_then(SysError::raw_os_error)
                        });
                    if errno.is_some_and(|n| {
                        crate::sys::fsops::is_no_space(Errno::from_raw_os_error(n))
                    }) {
                        return true;
                    }
                    next = e.source();
                }
                false
            }
        }
    }

    pub fn is_loop_shortage(&self) -> bool {
        match self {
            DiskError::Attach { source, .. } => source.is_loop_shortage(),
            DiskError::Leftover { cause, .. } => cause.is_loop_shortage(),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DiskError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(what: &'static str, path: impl Into<PathBuf>, source: SysError) -> Self {
        DiskError::Sys {
            what,
            path: path.into(),
            source: Box::new(source),
        }
    }
}

pub type Result<T> = std::result::Result<T, DiskError>;
