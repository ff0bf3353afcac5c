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

/// Claim an unbound loop device that no other attach in this process holds, creating one
/// when every existing device is bound or claimed. `sys_block` is where sysfs lists block
/// devices (`/sys/block`).
pub(super) fn claim(control: &File, sys_block: &Path) -> Result<Claim> {
    let mut claimed = claimed();
    let mut number =
        get_free(control).map_err(|e| SysError::io("LOOP_CTL_GET_FREE", "/dev/loop-control", e))?;
    // GET_FREE's answer is unbound; past it, sysfs tells which devices are. Each claimed
    // number costs one step, each bound device one stat, so the walk is as long as the
    // stretch of busy devices above the lowest free one.
    loop {
        if !claimed.contains(&number) {
            match state(sys_block, number) {
                State::Unbound => break,
                State::Missing => {
                    add(control, number)?;
                    break;
                }
                State::Bound => {}
            }
        }
        number = number.checked_add(1).ok_or_else(|| {
            SysError::Other("no loop device number left to claim: every one is in use".into())
        })?;
    }
    claimed.insert(number);
    Ok(Claim(number))
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

    /// A fake /sys/block: `bound` devices have a backing file, `unbound` ones do not.
    fn sys_block(bound: &[u32], unbound: &[u32]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for n in unbound {
            std::fs::create_dir_all(dir.path().join(format!("loop{n}/loop"))).unwrap();
        }
        for n in bound {
            std::fs::create_dir_all(dir.path().join(format!("loop{n}/loop"))).unwrap();
            std::fs::write(
                dir.path().join(format!("loop{n}/loop/backing_file")),
                "/x\n",
            )
            .unwrap();
        }
        dir
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
        let sysfs = sys_block(&[], &[]);
        let first = claim(&control, Path::new("/sys/block")).unwrap();
        // Whatever GET_FREE answers, the held number is skipped.
        let second = claim(&control, sysfs.path()).unwrap();
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
        let sysfs = sys_block(&[free, free + 1, free + 2], &[]);
        let got = claim(&control, sysfs.path()).unwrap();
        assert!(!(free..free + 3).contains(&got.number()), "claimed {got:?}");
        assert!(Path::new(&format!("/dev/loop{}", got.number())).exists());
    }

    #[test]
    fn state_follows_sysfs() {
        let dir = sys_block(&[1], &[0]);
        assert_eq!(state(dir.path(), 0), State::Unbound);
        assert_eq!(state(dir.path(), 1), State::Bound);
        assert_eq!(state(dir.path(), 2), State::Missing);
    }
}
