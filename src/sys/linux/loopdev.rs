//! Loop devices through the kernel's own interface: a free device claimed through
//! /dev/loop-control (loopclaim.rs), then LOOP_CONFIGURE (one ioctl binding the file, flags
//! and block size). util-linux's losetup and mount's auto-loop scan every device and take
//! ~1 s once a node has ~1,100 of them; this path costs a few syscalls in the usual case.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linux_raw_sys::loop_device::{
    loop_config, loop_info64, LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_GET_STATUS64, LO_FLAGS_AUTOCLEAR,
    LO_FLAGS_DIRECT_IO, LO_FLAGS_READ_ONLY, LO_NAME_SIZE,
};
use rustix::io::Errno;
use rustix::ioctl::{self, Getter, NoArg, Opcode, Setter};

use super::loopclaim;

use crate::sys::{LoopDevice, LoopInfo, LoopOptions, Result, SysError};

/// How often to claim another device when another process configures the one we claimed
/// before we do (EBUSY). The usual race is lost once and won at the next claim, so the first
/// few retries are immediate; after them each waits a little longer (1 ms doubling up to
/// 50 ms), so something attaching in a tight loop gets room to finish. Whichever bound comes
/// first ends it with an error naming EBUSY: a caller (a disk create the kubelet waits on)
/// is better answered in ~2 s than left spinning.
const CLAIM_ATTEMPTS: u32 = 64;
const BUSY_IMMEDIATE_RETRIES: u32 = 8;
const BUSY_MAX_DELAY: Duration = Duration::from_millis(50);
const BUSY_DEADLINE: Duration = Duration::from_secs(2);
/// devtmpfs creates /dev/loopN when the device is added, but a udev running on the node
/// may briefly remove and recreate it.
const OPEN_ATTEMPTS: u32 = 20;
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(5);
/// LOOP_CLR_FD answers EBUSY while the kernel is still tearing down a recent user.
const DETACH_ATTEMPTS: u32 = 50;
const DETACH_RETRY_DELAY: Duration = Duration::from_millis(20);
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
    let mut attempt = 0;
    loop {
        match OpenOptions::new().read(true).write(!read_only).open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < OPEN_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(OPEN_RETRY_DELAY);
            }
            Err(e) => return Err(SysError::io("open", path, e)),
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
    let started = Instant::now();
    let mut busy = 0;
    loop {
        // Held until LOOP_CONFIGURE answers, so no other attach here is handed this number.
        let claim = loopclaim::claim(&control, loopclaim::Sources::kernel())?;
        let number = claim.number();
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = open_device(&path, opts.read_only)?;
        match configure(&device, config_for(&backing, file, opts, direct_io)) {
            Ok(()) => {
                tracing::debug!(?file, device = ?path, ?opts, direct_io, "attached loop device");
                crate::fault::point("loop.attached");
                // Without autoclear the binding outlives any fd; holding one would only
                // turn a later LOOP_CLR_FD into a deferred detach.
                return Ok(if opts.autoclear {
                    LoopDevice::with_holder(number, OwnedFd::from(device))
                } else {
                    LoopDevice::new(number)
                });
            }
            Err(Errno::BUSY) => {
                // Another process configured this device between our claim and our ioctl.
                busy += 1;
                let elapsed = started.elapsed();
                if busy >= CLAIM_ATTEMPTS || elapsed >= BUSY_DEADLINE {
                    tracing::warn!(
                        ?file,
                        attempts = busy,
                        ?elapsed,
                        "every loop device claimed was taken by another process"
                    );
                    return Err(SysError::LoopDevicesBusy {
                        file: file.to_owned(),
                        attempts: busy,
                        elapsed,
                    });
                }
                tracing::trace!(device = ?path, busy, "loop device taken, asking for another");
                if busy > BUSY_IMMEDIATE_RETRIES {
                    // Not holding the number while waiting: it is someone else's anyway.
                    drop((device, claim));
                    std::thread::sleep(busy_delay(busy).min(BUSY_DEADLINE - elapsed));
                }
            }
            Err(Errno::INVAL) if direct_io => {
                // The backing filesystem cannot do O_DIRECT at this block size (tmpfs, some
                // FUSE filesystems): buffered I/O is slower but correct.
                tracing::debug!(
                    ?file,
                    "direct I/O refused for loop backing file, using buffered I/O"
                );
                direct_io = false;
            }
            Err(e) => return Err(SysError::io("LOOP_CONFIGURE", path, e)),
        }
    }
}

/// The wait before the `busy`-th retry past the immediate ones: 1 ms, doubling, at most
/// [`BUSY_MAX_DELAY`].
fn busy_delay(busy: u32) -> Duration {
    let doublings = busy.saturating_sub(BUSY_IMMEDIATE_RETRIES + 1).min(16);
    Duration::from_millis(1 << doublings).min(BUSY_MAX_DELAY)
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
    let mut attempt = 0;
    loop {
        attempt += 1;
        match clear_fd(fd) {
            Ok(()) => {
                tracing::debug!(?device, "detached loop device");
                return Ok(());
            }
            // Already unbound: what the caller wanted.
            Err(Errno::NXIO) => return Ok(()),
            Err(Errno::BUSY) if attempt < DETACH_ATTEMPTS => std::thread::sleep(DETACH_RETRY_DELAY),
            Err(e) => return Err(SysError::io("LOOP_CLR_FD", device, e)),
        }
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
        assert_eq!(
            busy_delay(BUSY_IMMEDIATE_RETRIES + 1),
            Duration::from_millis(1)
        );
        assert_eq!(
            busy_delay(BUSY_IMMEDIATE_RETRIES + 2),
            Duration::from_millis(2)
        );
        assert_eq!(busy_delay(BUSY_IMMEDIATE_RETRIES + 7), BUSY_MAX_DELAY);
        assert_eq!(busy_delay(u32::MAX), BUSY_MAX_DELAY);
        // Waiting through every attempt would take longer than the deadline: the deadline,
        // a few seconds, is what a caller waits at most.
        let all: Duration = (BUSY_IMMEDIATE_RETRIES + 1..CLAIM_ATTEMPTS)
            .map(busy_delay)
            .sum();
        assert!(all >= BUSY_DEADLINE, "{all:?}");
        assert!(BUSY_DEADLINE <= Duration::from_secs(3));
    }
}
