//! Loop devices through the kernel's own interface: a free device claimed through
//! /dev/loop-control (loopclaim.rs), then LOOP_CONFIGURE (one ioctl binding the file, flags
//! and block size). util-linux's losetup and mount's auto-loop scan every device and take
//! ~1 s once a node has ~1,100 of them; this path costs a few syscalls in the usual case.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use linux_raw_sys::loop_device::{
    loop_config, loop_info64, LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_GET_STATUS64, LO_FLAGS_AUTOCLEAR,
    LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY, LO_NAME_SIZE,
};
use rustix::io::Errno;
use rustix::ioctl::{self, Getter, NoArg, Opcode, Setter};

use super::loopclaim;
use crate::retry::{GaveUp, RetryPolicy, Stop, Verdict};

use crate::sys::{LoopDevice, LoopInfo, LoopOptions, Result, SysError};

/// Claiming another device when another process configures the one we claimed before we do
/// (EBUSY). The usual race is lost once and won at the next claim, so the first few retries
/// are immediate; after them each waits a little longer (1 ms doubling up to 50 ms), so
/// something attaching in a tight loop gets room to finish. Whichever bound comes first ends
/// it with an error naming EBUSY: a caller (a disk create the kubelet waits on) is better
/// answered in ~2 s than left spinning.
const CLAIM_RETRY: RetryPolicy = RetryPolicy {
    immediate: 8,
    first: Duration::from_millis(1),
    max: Duration::from_millis(50),
    attempts: 64,
    deadline: Duration::from_secs(2),
    log: tracing::Level::TRACE,
};
/// devtmpfs creates /dev/loopN when the device is added, but a udev running on the node
/// may briefly remove and recreate it: about 0.1 s for it to come back.
const OPEN_RETRY: RetryPolicy = RetryPolicy {
    immediate: 0,
    first: Duration::from_millis(1),
    max: Duration::from_millis(10),
    attempts: 21,
    deadline: Duration::from_millis(250),
    log: tracing::Level::DEBUG,
};
/// LOOP_CLR_FD answers EBUSY while the kernel is still tearing down a recent user: about a
/// second for it to finish.
const DETACH_RETRY: RetryPolicy = RetryPolicy {
    immediate: 0,
    first: Duration::from_millis(5),
    max: Duration::from_millis(40),
    attempts: 50,
    deadline: Duration::from_secs(1),
    log: tracing::Level::DEBUG,
};
/// Matches ext4's block size, so direct I/O never needs read-modify-write on the backing file.
const DIRECT_IO_BLOCK_SIZE: u32 = 4096;

fn configure(device: impl AsFd, config: loop_config) -> rustix::io::Result<()> {
    // A test standing in for another process binding every device first (EBUSY).
    if let Some(e) = crate::fault::errno("loop.attach") {
        return Err(e);
    }
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which is what we pass by pointer.
    unsafe {
        ioctl::ioctl(
            device,
            Setter::<{ LOOP_CONFIGURE as Opcode }, loop_config>::new(config),
        )
    }
}

fn clear_fd(device: impl AsFd) -> rustix::io::Result<()> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { ioctl::ioctl(device, NoArg::<{ LOOP_CLR_FD as Opcode }>::new()) }
}

fn config_for(backing: &File, file: &Path, opts: LoopOptions, direct_io: bool) -> loop_config {
    let mut flags = LO_FLAGS_AUTOCLEAR as u32 * u32::from(opts.autoclear);
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY as u32;
    }
    if direct_io {
        flags |= LO_FLAGS_DIRECT_IO as u32;
    }
    // SAFETY: loop_info64 is plain old data; all-zero is the kernel's "unset" for every field.
    let mut info: loop_info64 = unsafe { std::mem::zeroed() };
    info.lo_flags = flags;
    // Informational only (sysfs shows the full path); keep the tail, which names the image.
    let name = file.as_os_str().as_bytes();
    let room = LO_NAME_SIZE as usize - 1;
    let tail = &name[name.len().saturating_sub(room)..];
    info.lo_file_name[..tail.len()].copy_from_slice(tail);
    loop_config {
        fd: std::os::fd::AsRawFd::as_raw_fd(backing) as u32,
        block_size: if direct_io { DIRECT_IO_BLOCK_SIZE } else { 0 },
        info,
        __reserved: [0; 8],
    }
}

fn open_device(path: &Path, read_only: bool) -> Result<File> {
    OPEN_RETRY
        .run_blocking(
            format_args!("open {}", path.display()),
            || OpenOptions::new().read(true).write(!read_only).open(path),
            |e| Verdict::retry_if(e.kind() == std::io::ErrorKind::NotFound),
        )
        .map_err(|gave_up| SysError::io("open", path, gave_up.error))
}

/// Why one try at attaching failed.
enum AttachFailure {
    /// Another process configured the claimed device first: claim another.
    Busy(PathBuf),
    Failed(SysError),
}

impl std::fmt::Display for AttachFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachFailure::Busy(device) => {
                write!(f, "{} taken by another process", device.display())
            }
            AttachFailure::Failed(e) => std::fmt::Display::fmt(e, f),
        }
    }
}

pub(super) fn attach(file: &Path, opts: LoopOptions) -> Result<LoopDevice> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .open(file)
        .map_err(|e| SysError::io("open backing file", file, e))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| SysError::io("open", "/dev/loop-control", e))?;

    let mut direct_io = opts.direct_io;
    let attached = CLAIM_RETRY.run_blocking(
        format_args!("attach {}", file.display()),
        || {
            // Held until LOOP_CONFIGURE answers, so no other attach here is handed this
            // number; dropped before any wait, as the number is someone else's by then.
            let claim = loopclaim::claim(&control, loopclaim::Sources::kernel())
                .map_err(AttachFailure::Failed)?;
            let number = claim.number();
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = open_device(&path, opts.read_only).map_err(AttachFailure::Failed)?;
            let mut configured = configure(&device, config_for(&backing, file, opts, direct_io));
            if configured == Err(Errno::INVAL) && direct_io {
                // The backing filesystem cannot do O_DIRECT at this block size (tmpfs, some
                // FUSE filesystems): buffered I/O is slower but correct.
                tracing::debug!(
                    ?file,
                    "direct I/O refused for loop backing file, using buffered I/O"
                );
                direct_io = false;
                configured = configure(&device, config_for(&backing, file, opts, direct_io));
            }
            match configured {
                Ok(()) => Ok((number, device, path)),
                // Another process configured this device between our claim and our ioctl.
                Err(Errno::BUSY) => Err(AttachFailure::Busy(path)),
                Err(e) => Err(AttachFailure::Failed(SysError::io(
                    "LOOP_CONFIGURE",
                    path,
                    e,
                ))),
            }
        },
        |e| match e {
            AttachFailure::Busy(_) => Verdict::Retry,
            AttachFailure::Failed(_) => Verdict::Permanent,
        },
    );
    match attached {
        Ok((number, device, path)) => {
            tracing::debug!(?file, device = ?path, ?opts, direct_io, "attached loop device");
            crate::fault::point("loop.attached");
            // Without autoclear the binding outlives any fd; holding one would only turn a
            // later LOOP_CLR_FD into a deferred detach.
            Ok(if opts.autoclear {
                LoopDevice::with_holder(number, OwnedFd::from(device))
            } else {
                LoopDevice::new(number)
            })
        }
        Err(GaveUp {
            error: AttachFailure::Failed(e),
            ..
        }) => Err(e),
        Err(GaveUp {
            error: AttachFailure::Busy(_),
            stop,
            tries,
            elapsed,
        }) => {
            tracing::warn!(
                ?file,
                attempts = tries,
                ?elapsed,
                deadline_reached = stop == Stop::Deadline,
                "every loop device claimed was taken by another process"
            );
            Err(SysError::LoopDevicesBusy {
                file: file.to_owned(),
                attempts: tries,
                elapsed,
            })
        }
    }
}

fn get_status(device: impl AsFd) -> rustix::io::Result<loop_info64> {
    // SAFETY: LOOP_GET_STATUS64 writes a `struct loop_info64`, which is what Getter provides.
    unsafe {
        ioctl::ioctl(
            device,
            Getter::<{ LOOP_GET_STATUS64 as Opcode }, loop_info64>::new(),
        )
    }
}

pub(super) fn detach(device: &Path) -> Result<()> {
    let fd = OpenOptions::new()
        .read(true)
        .open(device)
        .map_err(|e| SysError::io("open", device, e))?;
    clear_with_retries(&fd, device)
}

/// Detach `device` only while it is bound to the very inode `file` names. The fd we check
/// through is the one we clear through, and holding it open keeps an autoclear device from
/// being unbound (and its number handed to someone else) between the check and the clear.
pub(super) fn detach_if_backed_by(device: &Path, file: &Path) -> Result<bool> {
    let want = rustix::fs::stat(file).map_err(|e| SysError::io("stat", file, e))?;
    let fd = match OpenOptions::new().read(true).open(device) {
        Ok(fd) => fd,
        // Loop devices made on demand can be removed again (LOOP_CTL_REMOVE).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(SysError::io("open", device, e)),
    };
    let info = match get_status(&fd) {
        Ok(info) => info,
        Err(Errno::NXIO) => return Ok(false),
        Err(e) => return Err(SysError::io("LOOP_GET_STATUS64", device, e)),
    };
    // The kernel encodes lo_device the way stat encodes st_dev for every real device number.
    if info.lo_device != want.st_dev || info.lo_inode != want.st_ino {
        tracing::debug!(
            ?device,
            ?file,
            "loop device is bound to another file, leaving it"
        );
        return Ok(false);
    }
    clear_with_retries(&fd, device)?;
    Ok(true)
}

fn clear_with_retries(fd: &File, device: &Path) -> Result<()> {
    let cleared = DETACH_RETRY.run_blocking(
        format_args!("detach {}", device.display()),
        || clear_fd(fd),
        |e| Verdict::retry_if(*e == Errno::BUSY),
    );
    match cleared {
        Ok(()) => {
            tracing::debug!(?device, "detached loop device");
            Ok(())
        }
        // Already unbound: what the caller wanted.
        Err(GaveUp {
            error: Errno::NXIO, ..
        }) => Ok(()),
        Err(GaveUp { error, .. }) => Err(SysError::io("LOOP_CLR_FD", device, error)),
    }
}

/// Bound loop devices and their backing files. The candidates come from `partitions`
/// (/proc/partitions lists every loop device with a size, i.e. bound to a non-empty file;
/// the daemon binds nothing empty), and each one's backing file from sysfs, where
/// `loop/backing_file` exists only while bound. Walking /sys/block instead cost a failed open
/// per device node, and nodes stay after their devices are detached: a node that once had
/// 1,000 disks paid ~2 ms per listing, and every disk create lists once, one at a time.
pub(super) fn list(sys_block: &Path, partitions: &Path) -> Result<Vec<LoopInfo>> {
    let mut found = Vec::new();
    for number in super::loopclaim::bound_loops(partitions)? {
        let name = format!("loop{number}");
        let path = sys_block.join(&name).join("loop/backing_file");
        let backing = match std::fs::read(&path) {
            Ok(b) => b,
            // Detached since /proc/partitions was read (ENODEV: mid-detach).
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(Errno::NODEV.raw_os_error()) =>
            {
                continue
            }
            Err(e) => return Err(SysError::io("read", &path, e)),
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        found.push(LoopInfo {
            device: PathBuf::from("/dev").join(name),
            backing_file: PathBuf::from(std::ffi::OsStr::from_bytes(backing)),
        });
    }
    found.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_retries_back_off_and_stay_within_the_deadline() {
        // Waiting through every attempt would take longer than the deadline: the deadline,
        // a few seconds, is what a caller waits at most.
        let all = CLAIM_RETRY.longest_total_wait();
        assert!(all >= CLAIM_RETRY.deadline, "{all:?}");
        assert!(CLAIM_RETRY.deadline <= Duration::from_secs(3));
    }
}
