//! scratch: a throwaway XFS filesystem (reflink on) on a loop device in a temp dir, and a
//! check that a test left no loop device or mount behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use imagecache::sys::{LinuxSys, LoopDevice, LoopOptions, MountOptions, Sys};

/// A sparse file formatted XFS, attached and mounted at `<tempdir>/mnt`. Dropping it undoes
/// everything beneath the temp dir, including mounts and loop devices a failed test left
/// on top of it, so one failure does not leak into the next test or the machine.
pub struct ScratchXfs {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    mnt: PathBuf,
    device: Option<LoopDevice>,
}

impl ScratchXfs {
    pub fn new(size_bytes: u64) -> ScratchXfs {
        let dir = tempfile::Builder::new()
            .prefix("imagecache-scratch-")
            .tempdir()
            .expect("create scratch temp dir");
        // sysfs and mountinfo report resolved paths; compare like with like.
        let root = dir.path().canonicalize().expect("canonicalize scratch dir");
        let backing = root.join("xfs.img");
        let mnt = root.join("mnt");
        std::fs::File::create(&backing)
            .and_then(|f| f.set_len(size_bytes))
            .expect("create scratch backing file");
        std::fs::create_dir(&mnt).expect("create scratch mount point");
        let mut scratch = ScratchXfs {
            dir: Some(dir),
            root,
            mnt,
            device: None,
        };
        // mkfs.xfs turns reflink on by default; say it anyway, the tests depend on it.
        // 4 KiB sectors: a direct-I/O loop device has 4 KiB logical blocks, and XFS refuses
        // to mount a 512-byte-sector filesystem on it.
        let out = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1", "-s", "size=4096"])
            .arg(&backing)
            .output()
            .expect("run mkfs.xfs");
        assert!(
            out.status.success(),
            "mkfs.xfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let opts = LoopOptions {
            direct_io: true,
            autoclear: true,
            ..LoopOptions::default()
        };
        let device = LinuxSys
            .attach_loop(&backing, opts)
            .expect("attach scratch loop device");
        scratch.device = Some(device.clone());
        LinuxSys
            .mount(
                &device.path,
                &scratch.mnt,
                "xfs",
                MountOptions::default(),
                "",
            )
            .expect("mount scratch XFS");
        scratch
    }

    /// Where the scratch XFS is mounted.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Panics if anything made on the scratch filesystem is still mounted or attached: a
    /// loop device backed by a file in it, or a mount below it. Call it before dropping the
    /// scratch, whose drop would otherwise clean the leak up before anyone saw it.
    pub fn assert_nothing_left(&self) {
        let (loops, mounts) = super::oracle::held_under(&self.mnt);
        let mounts: Vec<_> = mounts.into_iter().filter(|m| *m != self.mnt).collect();
        assert!(
            loops.is_empty() && mounts.is_empty(),
            "left on the scratch filesystem {}: loop devices {loops:?}, mounts {mounts:?}",
            self.mnt.display()
        );
    }
}

impl Drop for ScratchXfs {
    fn drop(&mut self) {
        let sys = LinuxSys;
        // Children first (a test's own mounts on top of the scratch filesystem), then the
        // loop devices they sat on, and only then the scratch filesystem itself.
        let mounts = sys.mounts_under(&self.root).unwrap_or_default();
        for m in mounts.iter().filter(|m| **m != self.mnt) {
            if let Err(e) = imagecache::sys::unmount_settled(&sys, m) {
                eprintln!("scratch cleanup: {e}");
            }
        }
        let own = self.device.take();
        for l in sys.loop_devices().unwrap_or_default() {
            let ours = own.as_ref().is_some_and(|d| d.path == l.device);
            if l.backing_file.starts_with(&self.root) && !ours {
                if let Err(e) = sys.detach_loop(&l.device) {
                    eprintln!("scratch cleanup: {e}");
                }
            }
        }
        for m in mounts.iter().filter(|m| **m == self.mnt) {
            if let Err(e) = imagecache::sys::unmount_settled(&sys, m) {
                // Still busy: something of the test's process holds a file on it (a leaked
                // handle, a broken test). Detached lazily, the filesystem and its autoclear
                // loop device go once that is closed, at the latest when the process exits,
                // instead of staying on the machine for good.
                eprintln!("scratch cleanup: {e}; unmounting lazily");
                let lazy = Command::new("umount").arg("--lazy").arg(m).status();
                if !lazy.is_ok_and(|s| s.success()) {
                    eprintln!("scratch cleanup: umount --lazy {} failed", m.display());
                }
            }
        }
        if let Some(dev) = own {
            if let Err(e) = sys.detach_loop(&dev.path) {
                eprintln!("scratch cleanup: {e}");
            }
        }
        drop(self.dir.take());
    }
}

/// Panics if any loop device's backing file or any mount point lies under `prefix`. Judged
/// by the test kit's own oracle, not by imagecache's code.
pub fn assert_no_leaks(prefix: &Path) {
    let prefix = prefix.canonicalize().unwrap_or_else(|_| prefix.to_owned());
    let (loops, mounts) = super::oracle::held_under(&prefix);
    assert!(
        loops.is_empty() && mounts.is_empty(),
        "leaked under {}: loop devices {loops:?}, mounts {mounts:?}",
        prefix.display()
    );
}
