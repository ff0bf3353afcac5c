//! Errors from handling image files, each saying what went wrong and what to do about it.

use std::path::PathBuf;
use std::process::ExitStatus;

use crate::sys::SysError;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {tool}: {source} (is e2fsprogs installed and on PATH?)")]
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
        "e2fsck found problems in {path} ({status}): the image is damaged and must not be \
         frozen or cloned; delete it and rebuild the cache. e2fsck said:\n{output}"
    )]
    Damaged {
        path: PathBuf,
        status: ExitStatus,
        output: String,
    },
    #[error(
        "image size {size} bytes is not a multiple of {block} bytes: ask for a whole number \
         of 4 KiB blocks (sizes in GiB always are)"
    )]
    UnalignedSize { size: u64, block: u64 },
    #[error(
        "refusing to shrink {path} from {current} to {requested} bytes: images only grow; \
         ask for at least the current size"
    )]
    Shrink {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("ext4 label {label:?} is longer than {max} bytes: pick a shorter one")]
    LabelTooLong { label: String, max: usize },
    #[error("attach {file} to a loop device: {source}")]
    Attach {
        file: PathBuf,
        #[source]
        source: SysError,
    },
    #[error("mount {file} at {mountpoint}: {source}")]
    Mount {
        file: PathBuf,
        mountpoint: PathBuf,
        #[source]
        source: SysError,
    },
    #[error(
        "release {file} mounted at {mountpoint}: {source} (if the mount is busy, stop what \
         is using it and retry)"
    )]
    Release {
        file: PathBuf,
        mountpoint: PathBuf,
        #[source]
        source: SysError,
    },
    /// A file operation through `Sys` that names its own file (counting extents).
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl ImageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// No loop device could be had for the image: the node lacks one.
    pub fn is_loop_shortage(&self) -> bool {
        matches!(self, ImageError::Attach { source, .. } if source.is_loop_shortage())
    }
}

pub type Result<T> = std::result::Result<T, ImageError>;
