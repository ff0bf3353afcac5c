//! Unmounting through the brief EBUSY that a fork elsewhere in the process can cause.

use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;

use super::{Result, Sys};

/// Waits between attempts: about 0.3 s in all before a busy mount is believed busy.
const BUSY_RETRIES: [Duration; 6] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
];

/// How many times [`unmount_settled`] asks before it believes a busy answer.
pub const UNMOUNT_ATTEMPTS: usize = BUSY_RETRIES.len() + 1;

/// Unmount `target` (never lazily), retrying for a moment while the kernel says it is busy.
///
/// When any thread of this process forks (to run mkfs, e2fsck, resize2fs) the child gets a
/// copy of every open descriptor, including files another task has open on some mount, and
/// holds them until it execs. An unmount in that instant fails with EBUSY though nothing
/// really uses the mount. A mount a process truly holds stays busy through every retry and
/// the EBUSY is returned, with nothing changed.
pub fn unmount_settled(sys: &dyn Sys, target: &Path) -> Result<()> {
    settle(|| sys.unmount(target))
}

/// [`unmount_settled`] through `Sys::unmount_nofollow`: for mount points a caller named,
/// where a symlink planted since the mount must not be followed.
pub fn unmount_settled_nofollow(sys: &dyn Sys, target: &Path) -> Result<()> {
    settle(|| sys.unmount_nofollow(target))
}

fn settle(mut unmount: impl FnMut() -> Result<()>) -> Result<()> {
    let mut waits = BUSY_RETRIES.iter();
    loop {
        match unmount() {
            Err(e) if e.raw_os_error() == Some(Errno::BUSY.raw_os_error()) => match waits.next() {
                Some(wait) => std::thread::sleep(*wait),
                None => return Err(e),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{Call, Op};
    use crate::sys::{FakeSys, MountOptions};

    fn mounted(sys: &FakeSys, dir: &Path) {
        let file = dir.join(".img");
        std::fs::write(&file, b"").unwrap();
        let device = sys.attach_loop(&file, Default::default()).unwrap();
        sys.mount(&device.path, dir, "ext4", MountOptions::default(), "")
            .unwrap();
    }

    fn unmount_calls(sys: &FakeSys) -> usize {
        sys.calls()
            .iter()
            .filter(|c| matches!(c, Call::Unmount { .. }))
            .count()
    }

    #[test]
    fn a_passing_busy_is_retried_and_a_lasting_one_returned() {
        let dir = tempfile::tempdir().unwrap();
        let sys = FakeSys::new();
        mounted(&sys, dir.path());
        sys.fail_next(Op::Unmount, Errno::BUSY.raw_os_error());
        unmount_settled(&sys, dir.path()).unwrap();
        assert_eq!(unmount_calls(&sys), 2, "one busy answer, then unmounted");

        // A mount with another mounted beneath it stays busy: every retry, then the error.
        let sys = FakeSys::new();
        let child = dir.path().join("child");
        std::fs::create_dir(&child).unwrap();
        mounted(&sys, dir.path());
        mounted(&sys, &child);
        let err = unmount_settled(&sys, dir.path()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(Errno::BUSY.raw_os_error()));
        assert_eq!(unmount_calls(&sys), UNMOUNT_ATTEMPTS);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let sys = FakeSys::new();
        sys.fail_next(Op::Unmount, Errno::INVAL.raw_os_error());
        assert!(unmount_settled(&sys, dir.path()).is_err());
        assert_eq!(unmount_calls(&sys), 1);
    }
}
