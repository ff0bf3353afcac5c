//! The ceiling on loop devices the daemon holds attached at once (`max_loop_devices`).
//!
//! What the daemon holds is read from the kernel at each decision (the count of bound
//! devices in /proc/partitions while it leaves room, else sysfs through
//! `Sys::loop_devices`), not counted along the way: disks' devices detach themselves on
//! unmount (autoclear), survive restarts of the daemon and are re-attached at start, and only
//! the kernel's table sees all of that. A device is the daemon's when its backing file lies
//! beneath the state root; other programs' devices (and the `backing_image`'s, outside the
//! root) are not counted.
//!
//! A lease stands for a device about to be attached, so two creates deciding at once cannot
//! both take the last one. A disk create holds its lease until its device is attached (for a
//! moment it is counted twice: harmless, it errs towards the ceiling). A build holds its lease
//! for its whole run, and the devices of builds' work images (under `work/`) are not counted
//! from the kernel's table: the lease already counts them, from before the attach to after
//! the detach.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sys::{Sys, SysError};

#[derive(Debug)]
pub(crate) struct LoopBudget {
    max: usize,
    root: PathBuf,
    work: PathBuf,
    /// Leases given out and not yet returned.
    leased: Arc<Mutex<usize>>,
}

/// One device the holder may attach; returned when dropped.
#[derive(Debug)]
pub(crate) struct LoopLease {
    leased: Arc<Mutex<usize>>,
}

impl Drop for LoopLease {
    fn drop(&mut self) {
        let mut leased = lock(&self.leased);
        *leased = leased.saturating_sub(1);
    }
}

/// The ceiling is reached: the daemon holds `held` devices of `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AtCeiling {
    pub held: usize,
    pub max: usize,
}

fn lock(m: &Mutex<usize>) -> MutexGuard<'_, usize> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LoopBudget {
    pub fn new(max: usize, root: PathBuf) -> Self {
        LoopBudget {
            max,
            work: root.join("work"),
            root,
            leased: Arc::new(Mutex::new(0)),
        }
    }

    /// A lease on one more device, or how many the daemon holds when that would pass the
    /// ceiling. Errs when the kernel's table cannot be read.
    pub fn lease(&self, sys: &dyn Sys) -> Result<Result<LoopLease, AtCeiling>, SysError> {
        // Held across the read of the table: a lease given meanwhile would not be counted.
        let mut leased = lock(&self.leased);
        // Every bound device on the node bounds the daemon's from above. While that leaves
        // room, the backing files need not be read: one read of /proc/partitions instead of
        // one of sysfs per device, which creates did one at a time under this lock (a create
        // among 1,000 disks took 22 ms at p50 and 69 ms at p99, 6 ms and 11-13 ms without;
        // scripts/bench-restart.sh).
        let bound = sys.bound_loop_count()?;
        let attached = if bound + *leased < self.max {
            bound
        } else {
            sys.loop_devices()?
                .iter()
                .filter(|l| l.backing_file.starts_with(&self.root))
                .filter(|l| !l.backing_file.starts_with(&self.work))
                .count()
        };
        let held = attached + *leased;
        if held >= self.max {
            return Ok(Err(AtCeiling {
                held,
                max: self.max,
            }));
        }
        *leased += 1;
        Ok(Ok(LoopLease {
            leased: self.leased.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sys::fake::Call;
    use crate::sys::{FakeSys, LoopOptions};

    /// A node whose loop devices are bound to `backing_files`.
    fn node_with(backing_files: &[&str]) -> FakeSys {
        let sys = FakeSys::new();
        for file in backing_files {
            sys.attach_loop(Path::new(file), LoopOptions::default())
                .unwrap();
        }
        sys
    }

    #[test]
    fn counts_devices_under_the_root_and_leases_but_not_builds_work_images_or_others() {
        // A build's work image (the third): its build's lease counts it.
        let sys = node_with(&[
            "/state/disks/d-1.img",
            "/elsewhere/x.img",
            "/state/work/b-1/disk.img",
        ]);
        let budget = LoopBudget::new(3, PathBuf::from("/state"));
        let opts = LoopOptions::default();
        let first = budget.lease(&sys).unwrap().expect("1 held + 0 leased < 3");
        let second = budget.lease(&sys).unwrap().expect("1 held + 1 leased < 3");
        assert_eq!(
            budget.lease(&sys).unwrap().unwrap_err(),
            AtCeiling { held: 3, max: 3 }
        );
        drop(first);
        let third = budget
            .lease(&sys)
            .unwrap()
            .expect("a returned lease is free again");
        drop((second, third));
        sys.attach_loop(Path::new("/state/disks/d-2.img"), opts)
            .unwrap();
        sys.attach_loop(Path::new("/state/snapshots/sha256/a/disk.img"), opts)
            .unwrap();
        assert_eq!(
            budget.lease(&sys).unwrap().unwrap_err(),
            AtCeiling { held: 3, max: 3 }
        );
    }

    fn lists(sys: &FakeSys) -> usize {
        sys.calls()
            .iter()
            .filter(|c| matches!(c, Call::LoopDevices))
            .count()
    }

    #[test]
    fn reads_backing_files_only_when_the_node_count_leaves_no_room() {
        let sys = node_with(&["/state/disks/d-1.img", "/elsewhere/x.img"]);
        let budget = LoopBudget::new(4, PathBuf::from("/state"));
        // 2 bound on the node + 0 leased < 4: the daemon's own are fewer still.
        let first = budget.lease(&sys).unwrap().expect("room");
        assert_eq!(lists(&sys), 0, "{:?}", sys.calls());
        // 2 bound + 1 leased < 4.
        let second = budget.lease(&sys).unwrap().expect("room");
        assert_eq!(lists(&sys), 0);
        // 2 bound + 2 leased reaches 4, but one device is another program's: the backing
        // files say the daemon holds 1 + 2 leased, and a third lease fits.
        let third = budget
            .lease(&sys)
            .unwrap()
            .expect("others' devices do not count");
        assert_eq!(lists(&sys), 1);
        assert_eq!(
            budget.lease(&sys).unwrap().unwrap_err(),
            AtCeiling { held: 4, max: 4 }
        );
        drop((first, second, third));
    }
}
