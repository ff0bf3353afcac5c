//! LinuxSys against the real kernel (root): loop attach/detach in every mode, attaching
//! from many threads at once, FICLONE on XFS and ext4, and nothing left behind.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imagecache::sys::{LinuxSys, LoopDevice, LoopOptions, Sys};
use support::scratch::{assert_no_leaks, ScratchXfs};

/// Detaches on drop, so a failing assertion does not leak the device. Only while the
/// device is still bound to this file: tests in other processes attach at the same time,
/// and a number freed here may already be theirs.
struct Attached {
    device: Option<LoopDevice>,
    file: PathBuf,
}

impl Attached {
    fn new(file: &Path, opts: LoopOptions) -> Attached {
        Attached {
            device: Some(LinuxSys.attach_loop(file, opts).expect("attach loop")),
            file: file.to_owned(),
        }
    }

    fn device(&self) -> &LoopDevice {
        self.device.as_ref().unwrap()
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(dev) = self.device.take() {
            let _ = LinuxSys.detach_loop_of(&dev.path, &self.file);
        }
    }
}

fn sparse_file(dir: &Path, name: &str, len: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(len).unwrap();
    path
}

fn sysfs_flag(dev: &LoopDevice, attr: &str) -> String {
    let name = dev.path.file_name().unwrap().to_str().unwrap();
    std::fs::read_to_string(format!("/sys/block/{name}/{attr}"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Judged by the test kit's oracle (losetup), not by the code under test.
fn bound_to(file: &Path) -> Vec<PathBuf> {
    support::oracle::attached_loops()
        .into_iter()
        .filter(|l| l.backing_file == file)
        .map(|l| PathBuf::from(l.device))
        .collect()
}

#[test]
fn attach_modes_and_detach() {
    let scratch = ScratchXfs::new(1 << 30);
    let file = sparse_file(scratch.path(), "disk.img", 64 << 20);
    let cases = [(false, false), (true, false), (false, true), (true, true)];
    for (read_only, direct_io) in cases {
        let opts = LoopOptions {
            read_only,
            direct_io,
            autoclear: false,
        };
        let attached = Attached::new(&file, opts);
        let dev = attached.device();
        assert_eq!(bound_to(&file), std::slice::from_ref(&dev.path), "{opts:?}");
        assert_eq!(sysfs_flag(dev, "ro"), if read_only { "1" } else { "0" });
        assert_eq!(
            sysfs_flag(dev, "loop/dio"),
            if direct_io { "1" } else { "0" }
        );
        if direct_io {
            assert_eq!(sysfs_flag(dev, "queue/logical_block_size"), "4096");
        }
        // Still bound to our file, so the number is ours to detach by.
        LinuxSys.detach_loop(&dev.path).unwrap();
        // LOOP_CLR_FD unbinds when the last opener closes the device: udev probing the
        // device after the attach can hold it open a moment longer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !bound_to(&file).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(bound_to(&file).is_empty(), "{opts:?} still bound after 5 s");
        // Detaching again is not an error: the device is unbound (ENXIO), or already bound
        // to another test's file, which is left alone.
        assert!(!LinuxSys.detach_loop_of(&dev.path, &file).unwrap());
    }
    drop(scratch);
}

#[test]
fn autoclear_device_lives_while_handle_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let file = sparse_file(dir.path(), "disk.img", 16 << 20);
    let file = file.canonicalize().unwrap();
    let opts = LoopOptions {
        autoclear: true,
        ..LoopOptions::default()
    };
    let mut dev = LinuxSys.attach_loop(&file, opts).unwrap();
    assert_eq!(bound_to(&file).len(), 1);
    dev.release();
    // The kernel clears an autoclear device on last close; give its work item a moment.
    for _ in 0..100 {
        if bound_to(&file).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        bound_to(&file).is_empty(),
        "autoclear device outlived its handle"
    );
    assert_no_leaks(dir.path());
}

#[test]
fn concurrent_attach_gets_distinct_devices() {
    const THREADS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    let files: Vec<PathBuf> = (0..THREADS)
        .map(|i| sparse_file(&root, &format!("disk{i}.img"), 8 << 20))
        .collect();
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let attached: Vec<Attached> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    barrier.wait();
                    let opts = LoopOptions {
                        direct_io: true,
                        ..LoopOptions::default()
                    };
                    Attached::new(f, opts)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut numbers: Vec<u32> = attached.iter().map(|a| a.device().number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), THREADS, "two threads got the same device");
    for (f, a) in files.iter().zip(&attached) {
        assert_eq!(bound_to(f), std::slice::from_ref(&a.device().path));
    }
    drop(attached);
    assert_no_leaks(&root);
}

#[test]
fn reflink_on_xfs_shares_extents_and_keeps_mode() {
    let scratch = ScratchXfs::new(1 << 30);
    let src = scratch.path().join("src.img");
    std::fs::write(&src, vec![7u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o444)).unwrap();
    let dst = scratch.path().join("dst.img");
    let started = std::time::Instant::now();
    LinuxSys.reflink(&src, &dst).unwrap();
    eprintln!("FICLONE of 1 MiB on XFS: {:?}", started.elapsed());
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    let mode = std::fs::metadata(&dst).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o444);
    // O_EXCL: an existing target is never overwritten.
    let err = LinuxSys.reflink(&src, &dst).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::EXIST.raw_os_error())
    );
    let root = scratch.path().parent().unwrap().to_owned();
    drop(scratch);
    assert_no_leaks(&root);
}

#[test]
fn reflink_on_ext4_and_across_filesystems_fail_cleanly() {
    let scratch = ScratchXfs::new(1 << 30);
    // The temp dir outside the scratch mount is on the root filesystem, ext4 on CI.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, b"data").unwrap();
    let dst = dir.path().join("dst");
    let root_is_ext4 = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir.path())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "ext2/ext3")
        .unwrap_or(false);
    if root_is_ext4 {
        let err = LinuxSys.reflink(&src, &dst).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()),
            "{err}"
        );
        assert!(err.to_string().contains("XFS or btrfs"), "{err}");
        assert!(!dst.exists(), "failed reflink left its target behind");
    } else {
        eprintln!("temp dir is not on ext4: EOPNOTSUPP case not exercised");
    }
    let across = scratch.path().join("across");
    let err = LinuxSys.reflink(&src, &across).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::XDEV.raw_os_error()),
        "{err}"
    );
    assert!(!across.exists());
    let root = scratch.path().parent().unwrap().to_owned();
    drop(scratch);
    assert_no_leaks(&root);
}
