//! Unmounting through the brief EBUSY that a fork elsewhere in the process can cause.

use std::path::Path;
use std::time::Duration;

use rustix::io::Errno;

use super::{Result, Sys};
use crate::retry::{RetryPolicy, Verdict};

/// Waits of 6 ms doubling (jittered, 0.2–0.4 s in all) before a busy mount is believed busy:
/// a forked child holds the copied descriptors only until it execs. The deadline is above
/// every wait, so a truly busy mount is asked exactly `attempts` times.
const UNMOUNT_RETRY: RetryPolicy = RetryPolicy {
    immediate: 0,
    first: Duration::from_millis(6),
    max: Duration::from_millis(192),
    attempts: 7,
    deadline: Duration::from_secs(1),
    log: tracing::Level::DEBUG,
};

/// How many times [`unmount_settled`] asks before it believes a busy answer.
pub const UNMOUNT_ATTEMPTS: usize = UNMOUNT_RETRY.attempts as usize;

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

fn settle(unmount: impl FnMut() -> Result<()>) -> Result<()> {
    UNMOUNT_RETRY
        .run_blocking("unmount", unmount, |e| {
            Verdict::retry_if(e.raw_os_error() == Some(Errno::BUSY.raw_os_error()))
        })
        .map_err(|gave_up| gave_up.error)
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
    fn a_lasting_busy_is_asked_every_attempt_within_the_deadline() {
        let all = UNMOUNT_RETRY.longest_total_wait();
        assert!(all < UNMOUNT_RETRY.deadline, "{all:?}");
        assert!(all >= Duration::from_millis(300), "{all:?}");
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
