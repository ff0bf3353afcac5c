//! The one OS seam. Every syscall that attaches loop devices, mounts, clones files or creates
//! device nodes goes through here, so matching, scheduling and state logic can be tested with
//! the recording fake while the real path is tested as root against real loop devices.
//!
//! `Sys` covers the operations the daemon orchestrates (loop devices, mounts, reflinks);
//! `fsops` holds the per-entry filesystem calls the layer unpacker makes beneath a directory
//! fd (openat2 RESOLVE_BENEATH, mknodat, xattrs, ownership, times); `linux::peer_groups`
//! reads an API caller's groups off its connection (SO_PEERGROUPS).

pub mod attach_mount;
pub mod fake;
pub mod fsops;
mod fstype;
pub mod linux;
mod settle;
pub(crate) mod sparse;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use crate::mount_path::MountTarget;
pub use fake::FakeSys;
pub use fstype::FsType;
pub use linux::LinuxSys;
pub use settle::{unmount_settled, unmount_settled_nofollow, UNMOUNT_ATTEMPTS};

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
    /// FICLONE failed. Kept apart from `Io` because both paths matter and the usual causes
    /// (EOPNOTSUPP, EXDEV) have a well-known remedy worth spelling out.
    #[error("reflink {src} -> {dst}: {source}{}", reflink_hint(source))]
    Reflink {
        src: PathBuf,
        dst: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel has no loop device to hand out: LOOP_CTL_GET_FREE or LOOP_CTL_ADD answered
    /// ENOSPC or ENODEV (every device bound and no more may be made). A condition of the
    /// node, not of the request: it passes once devices are freed.
    #[error(
        "no free loop device: {op} answered {} ({source}): the kernel has none left to give; \
         free some with `losetup -d` (`losetup -a` lists them and their files) or raise the \
         loop module's max_loop (`max_loop=` on the kernel command line, or \
         `modprobe loop max_loop=N`), then retry",
        crate::errname::name_of_raw(source.raw_os_error().unwrap_or_default())
    )]
    NoLoopDevice {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Every loop device claimed for `file` was bound by another process before our
    /// LOOP_CONFIGURE (EBUSY), for as many attempts or as long as the retry allows.
    #[error(
        "no loop device could be bound to {}: LOOP_CONFIGURE answered EBUSY {attempts} times \
         in {} ms; another process keeps taking the free loop devices first (`losetup -a` \
         shows what binds them); retry once it stops",
        file.display(),
        elapsed.as_millis()
    )]
    LoopDevicesBusy {
        file: PathBuf,
        attempts: u32,
        elapsed: Duration,
    },
    #[error("{0}")]
    Other(String),
}

fn reflink_hint(err: &std::io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(e) if e == rustix::io::Errno::OPNOTSUPP.raw_os_error() => {
            " (this filesystem cannot share extents: put the state root on XFS or btrfs, \
             or set `backing_image` in the config)"
        }
        Some(e) if e == rustix::io::Errno::XDEV.raw_os_error() => {
            " (source and destination are on different filesystems: keep snapshots/ and \
             disks/ under the same state root)"
        }
        _ => "",
    }
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
            SysError::Io { source, .. } | SysError::Reflink { source, .. } => source.raw_os_error(),
            SysError::NoLoopDevice { source, .. } => source.raw_os_error(),
            SysError::LoopDevicesBusy { .. } => Some(rustix::io::Errno::BUSY.raw_os_error()),
            SysError::Other(_) => None,
        }
    }

    /// No loop device could be had (none left, or every one taken first by another
    /// process): the node lacks a resource, nothing is wrong with the request or the files.
    pub fn is_loop_shortage(&self) -> bool {
        matches!(
            self,
            SysError::NoLoopDevice { .. } | SysError::LoopDevicesBusy { .. }
        )
    }
}

pub type Result<T> = std::result::Result<T, SysError>;

/// How a backing file is attached to a loop device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopOptions {
    pub read_only: bool,
    /// LO_FLAGS_DIRECT_IO: bypass the page cache of the backing file (falls back to buffered
    /// I/O when the backing filesystem refuses it). The device then has 4 KiB logical blocks,
    /// so the filesystem inside must use 4 KiB sectors (ext4 `-b 4096`, XFS `-s size=4096`).
    pub direct_io: bool,
    /// LO_FLAGS_AUTOCLEAR: the kernel detaches the device when its last user (a mount) goes.
    pub autoclear: bool,
}

/// A loop device we attached.
///
/// With `autoclear` the kernel detaches the device as soon as nobody holds it open, which
/// would be right after `attach_loop` returns. So for autoclear devices the real
/// implementation keeps the fd it configured the device through inside this handle (shared
/// by clones): mount while you hold it; once mounted, dropping the handle leaves the mount as
/// the only user. While the handle is alive, `detach_loop` is deferred by the kernel until
/// the handle (and any mount) goes.
#[derive(Debug, Clone)]
pub struct LoopDevice {
    pub number: u32,
    pub path: PathBuf,
    holder: Option<Arc<OwnedFd>>,
}

impl LoopDevice {
    /// A handle for `/dev/loop<number>` that holds nothing open.
    pub fn new(number: u32) -> Self {
        LoopDevice {
            number,
            path: PathBuf::from(format!("/dev/loop{number}")),
            holder: None,
        }
    }

    pub(crate) fn with_holder(number: u32, fd: OwnedFd) -> Self {
        LoopDevice {
            holder: Some(Arc::new(fd)),
            ..LoopDevice::new(number)
        }
    }

    /// Close the fd that keeps an autoclear device alive (a no-op for other handles).
    pub fn release(&mut self) {
        self.holder = None;
    }
}

impl PartialEq for LoopDevice {
    fn eq(&self, other: &Self) -> bool {
        self.number == other.number && self.path == other.path
    }
}

impl Eq for LoopDevice {}

/// The size of a filesystem and what of it is left, in bytes (statvfs(2): blocks times the
/// fragment size; `available` is what an unprivileged writer could still use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub total: u64,
    pub available: u64,
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
    /// MS_NOATIME: reads do not turn into inode writes (a cache being built or served is
    /// read constantly and nobody needs its atimes).
    pub noatime: bool,
}

/// The operations the daemon orchestrates. `LinuxSys` performs them; `FakeSys` records them.
pub trait Sys: Send + Sync + std::fmt::Debug {
    /// Attach `file` to a free loop device (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, retrying when
    /// another process races us to the same device).
    fn attach_loop(&self, file: &Path, opts: LoopOptions) -> Result<LoopDevice>;
    /// Detach a loop device. A device that is already unbound is not an error; one that is
    /// still mounted is detached by the kernel when it is unmounted.
    fn detach_loop(&self, device: &Path) -> Result<()>;
    /// Every bound loop device and its backing file (from sysfs).
    fn loop_devices(&self) -> Result<Vec<LoopInfo>>;
    /// How many loop devices are bound on the node, whoever bound them: one read of
    /// /proc/partitions, where `loop_devices` also reads each device's backing file.
    fn bound_loop_count(&self) -> Result<usize>;
    /// mount(2). `data` is the filesystem's option string, passed through unchanged.
    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<()>;
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Mount `source` on `target`, reached from an fd on its root one component at a time
    /// without following a symlink or crossing into another mount (missing directories are
    /// made, mode 0700), and mounted on that directory's fd: a symlink swapped in at any
    /// moment can neither redirect the mount nor make it land outside the root. The options
    /// are mount(2)'s. Returns the directories it made, outermost first; on failure it
    /// removes them again.
    fn mount_beneath(
        &self,
        source: &Path,
        target: &MountTarget,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<Vec<PathBuf>>;
    /// Unmount the topmost mount on `target` without following a symlink anywhere in the
    /// path: a path that now passes through one is refused (ELOOP), not followed.
    fn unmount_nofollow(&self, target: &Path) -> Result<()>;
    /// Mount points at or below `prefix`, deepest first (the order to unmount them in).
    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>>;
    /// FICLONE `src` into a new file `dst` (which must not exist; it gets `src`'s mode).
    fn reflink(&self, src: &Path, dst: &Path) -> Result<()>;
    /// syncfs(2) on the filesystem holding `path`: surfaces writeback errors, which a later
    /// unmount would write back silently.
    fn syncfs(&self, path: &Path) -> Result<()>;
    /// fsync(2) of the file at `path` (opened read-only, which is enough for fsync).
    fn fsync(&self, path: &Path) -> Result<()>;
    /// The source (for a block filesystem, its device) of the topmost mount exactly at
    /// `target`, or `None` when nothing is mounted there.
    fn mount_source(&self, target: &Path) -> Result<Option<PathBuf>>;
    /// Every mount on the machine as (target, source), in the kernel's order (parents before
    /// children, older before newer over one point: the last entry for a target is its
    /// topmost mount). One read of the table, for callers that look up many targets.
    fn mount_table(&self) -> Result<Vec<(PathBuf, PathBuf)>>;
    /// The type of the filesystem holding `path` (statfs(2) `f_type`).
    fn fs_type(&self, path: &Path) -> Result<FsType>;
    /// The size and free space of the filesystem holding `path` (statvfs(2)).
    fn fs_space(&self, path: &Path) -> Result<FsSpace>;
    /// Copy `src` into a new file `dst` (which must not exist; it gets `src`'s mode), data
    /// extents only (SEEK_DATA/SEEK_HOLE + copy_file_range): holes stay holes. The slow
    /// stand-in for `reflink` where the filesystem cannot share extents. Returns the bytes
    /// copied; a failed copy leaves no `dst`.
    fn sparse_copy(&self, src: &Path, dst: &Path) -> Result<u64>;
    /// Detach `device` only if it is still bound to `file` (the same inode), so a device
    /// number the kernel has meanwhile handed to someone else is never touched. Returns
    /// whether it was bound to `file`. Like `detach_loop`, a device that is still open or
    /// mounted is detached by the kernel when its last user goes.
    fn detach_loop_of(&self, device: &Path, file: &Path) -> Result<bool>;
    /// How many extents map `file` (FIEMAP): what FICLONE walks when it clones the file.
    fn extent_count(&self, file: &Path) -> Result<u64>;
    /// Set the ext4 tunable `name` (a file under /sys/fs/ext4/<device>/) of the filesystem
    /// mounted from `device` to `value`. It lasts as long as that mount.
    fn tune_ext4(&self, device: &Path, name: &str, value: u64) -> Result<()>;
}

/// Sets the process's file mode creation mask (umask(2)); the mask it replaces is of no use
/// to the daemon, which sets it once at start.
pub fn set_umask(mask: u32) {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask));
}
