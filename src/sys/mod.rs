//! The one OS seam. Every syscall that attaches loop devices, mounts, clones files or creates
//! device nodes goes through here, so matching, scheduling and state logic can be tested with
//! the recording fake while the real path is tested as root against real loop devices.
//!
//! `Sys` covers the operations the daemon orchestrates (loop devices, mounts, reflinks);
//! `fsops` holds the per-entry filesystem calls the layer unpacker makes beneath a directory
//! fd (openat2 RESOLVE_BENEATH, mknodat, xattrs, ownership, times).

pub mod fake;
pub mod fsops;
pub mod linux;

use std::path::{Path, PathBuf};

pub use fake::FakeSys;
pub use linux::LinuxSys;

/// A failed OS operation: what was attempted, on what, and the errno.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl SysError {
    pub fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<std::io::Error>,
    ) -> Self {
        SysError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// The errno behind this error, if it came from the kernel.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            SysError::Io { source, .. } => source.raw_os_error(),
            SysError::Other(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

/// How a backing file is attached to a loop device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopOptions {
    pub read_only: bool,
    /// LO_FLAGS_DIRECT_IO: bypass the page cache of the backing file (falls back to buffered
    /// I/O when the backing filesystem refuses it).
    pub direct_io: bool,
    /// LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its last user (a mount) goes.
    pub autoclear: bool,
}

/// A loop device we attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub number: u32,
    pub path: PathBuf,
}

/// A loop device in use on this machine and the file behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    pub device: PathBuf,
    pub backing_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
}

/// The operations the daemon orchestrates. `LinuxSys` performs them; `FakeSys` records them.
pub trait Sys: Send + Sync + std::fmt::Debug {
    /// Attach `file` to a free loop device (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, retrying when
    /// another process races us to the same device).
    fn attach_loop(&self, file: &Path, opts: LoopOptions) -> Result<LoopDevice>;
    fn detach_loop(&self, device: &Path) -> Result<()>;
    /// Every bound loop device and its backing file (from sysfs).
    fn loop_devices(&self) -> Result<Vec<LoopInfo>>;
    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<()>;
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Mount points at or below `prefix`, deepest first (the order to unmount them in).
    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>>;
    /// FICLONE `src` into a new file `dst`.
    fn reflink(&self, src: &Path, dst: &Path) -> Result<()>;
}
