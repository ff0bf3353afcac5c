//! Which loop device an attach configures.
//!
//! LOOP_CTL_GET_FREE answers with the lowest unbound device, and keeps answering with it
//! until someone binds it. Attaches running at once in this process were all handed the
//! same device: all opened it (queueing on its open mutex, which also stalled the winner's
//! mount), all but one lost LOOP_CONFIGURE and asked again, ~500 opens for 32 attaches.
//! Serialising the whole attach instead made the slowest step (LOOP_CONFIGURE, 0.5–1.3 ms
//! under load) a queue. So the choice alone is serialised: each attach claims a number no
//! other attach in this process holds, then configures it in parallel with the others.
//! Other processes can still take a claimed device first; the caller's EBUSY retry covers
//! them.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use linux_raw_sys::loop_device::{LOOP_CTL_ADD, LOOP_CTL_GET_FREE};
use rustix::io::Errno;
use rustix::ioctl::{self, IntegerSetter, Ioctl, IoctlOutput, Opcode};

use crate::sys::{Result, SysError};

/// Past this many bound devices in one walk, a single read of /proc/partitions (which lists
/// every loop device with a size, i.e. bound to a non-empty file) replaces a stat per device.
const STATS_BEFORE_LISTING: u32 = 16;

/// Device numbers this process is configuring right now.
static CLAIMED: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// A loop device number no other attach in this process is handed until this is dropped.
/// Drop it once LOOP_CONFIGURE has answered: bound, the kernel stops offering the device;
/// refused, it is free for the next caller.
#[derive(Debug)]
pub(super) struct Claim(u32);

impl Claim {
    pub(super) fn number(&self) -> u32 {
        self.0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        claimed().remove(&self.0);
    }
}

fn claimed() -> MutexGuard<'static, BTreeSet<u32>> {
    // The set is updated in single calls that cannot panic half-way: a poisoned lock still
    // holds a consistent set.
    CLAIMED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the kernel tells which loop devices exist and which are bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sources<'a> {
    /// sysfs's block devices: `/sys/block`.
    pub sys_block: &'a Path,
    /// The kernel's list of block devices with a size: `/proc/partitions`.
    pub partitions: &'a Path,
}

impl Sources<'static> {
    pub(super) fn kernel() -> Self {
        Sources {
            sys_block: Path::new("/sys/block"),
            partitions: Path::new("/proc/partitions"),
        }
    }
}

/// Claim an unbound loop device that no other attach in this process holds, creating one
/// when every existing device is bound or claimed.
pub(super) fn claim(control: &File, sources: Sources<'_>) -> Result<Claim> {
    let mut claimed = claimed();
    let free = get_free(control).map_err(|e| match e {
        Errno::NOSPC | Errno::NODEV => SysError::NoLoopDevice {
            op: "LOOP_CTL_GET_FREE",
            source: e.into(),
        },
        e => SysError::io("LOOP_CTL_GET_FREE", "/dev/loop-control", e),
    })?;
    // GET_FREE's answer is unbound unless another attach here holds it. Then walk up from
    // above the highest number held: what lies between is held too, or was bound by an
    // attach that held it. Starting at `free + 1` instead made every attach of a burst
    // stat its way past the node's whole stretch of bound devices (32 attaches beside
    // 1,000 bound devices: 11–28 ms each). A free device skipped this way is not lost:
    // GET_FREE offers the lowest one first.
    let mut number = match claimed.last() {
        Some(&highest) if claimed.contains(&free) => free.max(highest).saturating_add(1),
        _ => free,
    };
    // Past GET_FREE's answer, sysfs tells which devices are bound, one stat each; a long
    // stretch of bound devices is skipped by the kernel's list instead. The list is only a
    // shortcut: a device it leaves out is still checked in sysfs, and one bound since it
    // was read is refused by LOOP_CONFIGURE (EBUSY) and the caller claims again.
    let mut bound_seen = 0;
    let mut listed = BTreeSet::new();
    let missing = loop {
        if !claimed.contains(&number) && !listed.contains(&number) {
            match state(sources.sys_block, number) {
                State::Unbound => break false,
                State::Missing => break true,
                State::Bound => {
                    bound_seen += 1;
                    if bound_seen == STATS_BEFORE_LISTING {
                        listed = bound_loops(sources.partitions)?;
                    }
                }
            }
        }
        number = number.checked_add(1).ok_or_else(|| {
            SysError::Other("no loop device number left to claim: every one is in use".into())
        })?;
    };
    claimed.insert(number);
    drop(claimed);
    let claim = Claim(number);
    if missing {
        // Adding a device (a new gendisk, ~1 ms) outside the lock: the first burst of
        // attaches on a node with 8 devices waited 8.5 ms (p50) while they were added in
        // turn. The number is claimed, so no one here adds or takes it meanwhile.
        add(control, number)?;
    }
    Ok(claim)
}

/// Loop devices the kernel lists with a size: bound ones (an unbound device has none).
pub(super) fn bound_loops(partitions: &Path) -> Result<BTreeSet<u32>> {
    let text =
        std::fs::read_to_string(partitions).map_err(|e| SysError::io("read", partitions, e))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .nth(3)?
                .strip_prefix("loop")?
                .parse()
                .ok()
        })
        .collect())
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Missing,
    Unbound,
    Bound,
}

fn state(sys_block: &Path, number: u32) -> State {
    let dir: PathBuf = sys_block.join(format!("loop{number}"));
    // `loop/backing_file` exists only while a file is bound.
    if dir.join("loop/backing_file").symlink_metadata().is_ok() {
        State::Bound
    } else if dir.symlink_metadata().is_ok() {
        State::Unbound
    } else {
        State::Missing
    }
}

/// LOOP_CTL_GET_FREE returns the device number as the ioctl's return value, which none of
/// rustix's ready-made patterns expose.
struct GetFree;

// SAFETY: the ioctl takes no argument and its output is the syscall's return value.
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE as Opcode
    }

    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut core::ffi::c_void,
    ) -> rustix::io::Result<u32> {
        Ok(out as u32)
    }
}

fn get_free(control: &File) -> rustix::io::Result<u32> {
    // A test standing in for a kernel out of devices (ENOSPC, ENODEV).
    if let Some(e) = crate::fault::errno("loop.claim") {
        return Err(e);
    }
    // SAFETY: GetFree matches LOOP_CTL_GET_FREE's calling convention.
    unsafe { ioctl::ioctl(control, GetFree) }
}

/// Create /dev/loop`number`; someone else creating it first is as good.
fn add(control: &File, number: u32) -> Result<()> {
    // SAFETY: LOOP_CTL_ADD takes the device number as its integer argument.
    let add = unsafe { IntegerSetter::<{ LOOP_CTL_ADD as Opcode }>::new_usize(number as usize) };
    // SAFETY: the request matches LOOP_CTL_ADD's calling convention.
    match unsafe { ioctl::ioctl(control, add) } {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        // Past max_loop, or out of device numbers.
        Err(e @ (Errno::NOSPC | Errno::NODEV)) => Err(SysError::NoLoopDevice {
            op: "LOOP_CTL_ADD",
            source: e.into(),
        }),
        Err(e) => Err(SysError::io(
            "LOOP_CTL_ADD",
            format!("/dev/loop{number}"),
            e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/block and /proc/partitions: `bound` devices have a backing file,
    /// `unbound` ones do not, and the partitions file lists `listed`.
    struct FakeKernel {
        _dir: tempfile::TempDir,
        block: PathBuf,
        partitions: PathBuf,
    }

    impl FakeKernel {
        fn new(bound: &[u32], unbound: &[u32], listed: &[u32]) -> FakeKernel {
            let dir = tempfile::tempdir().unwrap();
            let block = dir.path().join("block");
            for n in unbound.iter().chain(bound) {
                std::fs::create_dir_all(block.join(format!("loop{n}/loop"))).unwrap();
            }
            for n in bound {
                std::fs::write(block.join(format!("loop{n}/loop/backing_file")), "/x\n").unwrap();
            }
            let mut text =
                String::from("major minor  #blocks  name\n\n 254        0  264241152 vda\n");
            for n in listed {
                text.push_str(&format!("   7     {n:>4}       1024 loop{n}\n"));
            }
            let partitions = dir.path().join("partitions");
            std::fs::write(&partitions, text).unwrap();
            FakeKernel {
                _dir: dir,
                block,
                partitions,
            }
        }

        fn sources(&self) -> Sources<'_> {
            Sources {
                sys_block: &self.block,
                partitions: &self.partitions,
            }
        }
    }

    fn control() -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .expect("open /dev/loop-control (root)")
    }

    #[test]
    fn held_claims_are_distinct_and_released_on_drop() {
        let control = control();
        let empty = FakeKernel::new(&[], &[], &[]);
        let first = claim(&control, Sources::kernel()).unwrap();
        // Whatever GET_FREE answers, the held number is skipped.
        let second = claim(&control, empty.sources()).unwrap();
        assert_ne!(first.number(), second.number());
        assert!(Path::new(&format!("/dev/loop{}", second.number())).exists());
        let (a, b) = (first.number(), second.number());
        drop(first);
        drop(second);
        let held = claimed();
        assert!(!held.contains(&a) && !held.contains(&b));
    }

    #[test]
    fn walks_past_bound_devices_and_adds_one_past_the_end() {
        let control = control();
        let free = get_free(&control).unwrap();
        // Pretend the kernel's answer and the two after it are bound and nothing exists
        // beyond: the claim must pass them and create the next device. (Another process
        // can move GET_FREE's answer meanwhile; a bound device is never the claim.)
        let fake = FakeKernel::new(&[free, free + 1, free + 2], &[], &[]);
        let got = claim(&control, fake.sources()).unwrap();
        assert!(!(free..free + 3).contains(&got.number()), "claimed {got:?}");
        assert!(Path::new(&format!("/dev/loop{}", got.number())).exists());
    }

    #[test]
    fn a_long_bound_stretch_is_skipped_by_the_kernels_list() {
        let control = control();
        let free = get_free(&control).unwrap();
        let stretch: Vec<u32> = (free..free + 40).collect();
        // sysfs says free+30 is unbound, but the list (read after 16 bound devices) names
        // it: the walk trusts the list for skipping and goes on past the stretch.
        let bound: Vec<u32> = stretch
            .iter()
            .copied()
            .filter(|&n| n != free + 30)
            .collect();
        let fake = FakeKernel::new(&bound, &[free + 30], &stretch);
        let got = claim(&control, fake.sources()).unwrap();
        assert!(!stretch.contains(&got.number()), "claimed {got:?}");
        // Before the list is read, sysfs decides: an unbound device early in the stretch
        // is claimed even though the list names it.
        let bound: Vec<u32> = stretch.iter().copied().filter(|&n| n != free + 5).collect();
        let fake = FakeKernel::new(&bound, &[free + 5], &stretch);
        drop(got);
        let got = claim(&control, fake.sources()).unwrap();
        if get_free(&control).unwrap() == free {
            assert_eq!(got.number(), free + 5);
        }
    }

    #[test]
    fn the_kernels_list_names_loop_devices_only() {
        let fake = FakeKernel::new(&[], &[], &[0, 7, 1031]);
        let text = std::fs::read_to_string(&fake.partitions).unwrap();
        let with_others = text + "   7       12       2048 loop12p1\n 259 0 1000 nvme0n1\n";
        std::fs::write(&fake.partitions, with_others).unwrap();
        let listed = bound_loops(&fake.partitions).unwrap();
        assert_eq!(listed.into_iter().collect::<Vec<_>>(), [0, 7, 1031]);
    }

    #[test]
    fn state_follows_sysfs() {
        let fake = FakeKernel::new(&[1], &[0], &[]);
        assert_eq!(state(&fake.block, 0), State::Unbound);
        assert_eq!(state(&fake.block, 1), State::Bound);
        assert_eq!(state(&fake.block, 2), State::Missing);
    }
}
