//! The disk lifecycle against the recording fake: which calls, in what order, and that every
//! failure leaves nothing behind. The real kernel path is in tests/disk_*.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::*;
use crate::sys::fake::{Call, Op};
use crate::sys::{FakeSys, FsType, Sys};

const MIB: u64 = 1 << 20;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    snapshot: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let snapshot = root.join("disk.img");
    crate::image::create(&snapshot, 64 * MIB, "snap").unwrap();
    std::fs::set_permissions(&snapshot, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::create_dir(root.join("disks")).unwrap();
    Setup {
        _dir: dir,
        root,
        snapshot,
    }
}

fn opts(size: u64, mountpoint: Option<PathBuf>) -> DiskOptions {
    DiskOptions {
        size_bytes: size,
        // Every test's mountpoints lie in its temp dir: that is their root.
        mountpoint: mountpoint.map(|m| {
            let root: PathBuf = m.components().take(3).collect();
            MountTarget::beneath(&root, &m).unwrap()
        }),
        clone_mode: CloneMode::Reflink,
    }
}

/// The calls that change something (queries left out).
fn actions(sys: &FakeSys) -> Vec<Call> {
    sys.calls()
        .into_iter()
        .filter(|c| {
            !matches!(
                c,
                Call::LoopDevices | Call::MountsUnder { .. } | Call::MountSource { .. }
            )
        })
        .collect()
}

fn assert_nothing_left(sys: &FakeSys, s: &Setup) {
    assert!(sys.loop_devices().unwrap().is_empty());
    assert!(sys.mounts_under(Path::new("/")).unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(s.root.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn clone_attach_mount_then_delete() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/disk-a.img");
    let mnt = s.root.join("mnt/disk-a");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, Some(mnt.clone())),
    )
    .unwrap();
    assert_eq!(disk.device, PathBuf::from("/dev/loop0"));
    assert_eq!(disk.mountpoint.as_deref(), Some(mnt.as_path()));
    assert_eq!(disk.timings.grow_ms, 0.0);
    assert!(mnt.is_dir());
    let mode = std::fs::metadata(&image).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let calls = actions(&sys);
    assert!(
        matches!(&calls[..], [
            Call::FsType { .. },
            Call::Reflink { src, dst },
            Call::AttachLoop { opts, .. },
            Call::MountBeneath { fstype, data, opts: mopts, .. },
        ] if src == &s.snapshot && dst == &image
            && opts.direct_io && opts.autoclear && !opts.read_only
            && fstype == "ext4" && data.contains("noinit_itable") && !data.contains("nobarrier")
            && !mopts.read_only),
        "{calls:?}"
    );

    delete(&sys, &image, Some(&disk.device), Some(&mnt)).unwrap();
    assert_nothing_left(&sys, &s);
    // Deleting again finds nothing to do.
    delete(&sys, &image, Some(&disk.device), Some(&mnt)).unwrap();
}

#[test]
fn attach_only_disk_is_not_autoclear_and_delete_detaches_it() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/vm.img");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap();
    assert_eq!(disk.mountpoint, None);
    assert!(sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::AttachLoop { opts, .. } if !opts.autoclear && opts.direct_io)));
    assert!(!sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Mount { .. } | Call::MountBeneath { .. })));
    assert_eq!(sys.loop_devices().unwrap().len(), 1);
    delete(&sys, &image, Some(&disk.device), None).unwrap();
    assert_nothing_left(&sys, &s);
}

#[test]
fn delete_without_device_finds_it() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/lost.img");
    create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap();
    // The fake's loop table holds the path as given; sysfs holds the canonical one.
    let canonical = image.canonicalize().unwrap();
    if canonical != image {
        eprintln!("temp dir is not canonical; lookup by path not exercised");
        return;
    }
    delete(&sys, &image, None, None).unwrap();
    assert_nothing_left(&sys, &s);
}

#[test]
fn grows_when_asked() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/big.img");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(128 * MIB, None),
    )
    .unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 128 * MIB);
    assert!(disk.timings.grow_ms > 0.0);
    crate::image::fsck(&image).unwrap();
    // The snapshot is untouched.
    assert_eq!(std::fs::metadata(&s.snapshot).unwrap().len(), 64 * MIB);
}

#[test]
fn btrfs_source_is_fsynced_first_and_xfs_is_not() {
    let s = setup();
    let sys = FakeSys::new();
    create(
        &sys,
        &s.root.join("disks/x.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap();
    assert!(!sys.calls().iter().any(|c| matches!(c, Call::Fsync { .. })));

    let sys = FakeSys::new();
    sys.set_fs_type(&s.root, FsType::BTRFS);
    create(
        &sys,
        &s.root.join("disks/b.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap();
    let calls = actions(&sys);
    assert!(
        matches!(&calls[..3], [Call::FsType { .. }, Call::Fsync { path }, Call::Reflink { .. }] if path == &s.snapshot),
        "{calls:?}"
    );
}

#[test]
fn reflink_refused_is_loud_and_leaves_nothing() {
    let s = setup();
    let sys = FakeSys::new();
    sys.set_fs_type(&s.root, FsType::EXT4);
    sys.fail_next(Op::Reflink, Errno::OPNOTSUPP.raw_os_error());
    let err = create(
        &sys,
        &s.root.join("disks/a.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, Some(s.root.join("m"))),
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::ReflinkUnsupported { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("ext4") && msg.contains("backing_image"),
        "{msg}"
    );
    assert!(!sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::SparseCopy { .. })));
    assert_nothing_left(&sys, &s);
    assert!(!s.root.join("m").exists());
}

#[test]
fn sparse_copy_mode_copies() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/c.img");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &DiskOptions {
            clone_mode: CloneMode::SparseCopy,
            ..opts(64 * MIB, None)
        },
    )
    .unwrap();
    assert!(sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::SparseCopy { .. })));
    assert!(!sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Reflink { .. })));
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&s.snapshot).unwrap()
    );
    let mode = std::fs::metadata(&image).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    delete(&sys, &image, Some(&disk.device), None).unwrap();
    assert_nothing_left(&sys, &s);
}

#[test]
fn failed_mount_undoes_everything() {
    let s = setup();
    let sys = FakeSys::new();
    let mnt = s.root.join("pods/a/disk");
    sys.fail_next(Op::Mount, Errno::INVAL.raw_os_error());
    let err = create(
        &sys,
        &s.root.join("disks/a.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(128 * MIB, Some(mnt)),
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::Mount { .. }), "{err}");
    assert_nothing_left(&sys, &s);
    assert!(!s.root.join("pods").exists(), "mountpoint dirs left behind");
}

#[test]
fn failed_attach_undoes_the_clone_and_failed_undo_is_reported() {
    let s = setup();
    let sys = FakeSys::new();
    sys.fail_next(Op::AttachLoop, Errno::NOSPC.raw_os_error());
    let err = create(
        &sys,
        &s.root.join("disks/a.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::Attach { .. }), "{err}");
    assert_nothing_left(&sys, &s);

    sys.fail_next(Op::Mount, Errno::INVAL.raw_os_error());
    sys.fail_next(Op::DetachLoopOf, Errno::IO.raw_os_error());
    let err = create(
        &sys,
        &s.root.join("disks/b.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, Some(s.root.join("m"))),
    )
    .unwrap_err();
    let DiskError::Leftover {
        cause, leftover, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(matches!(**cause, DiskError::Mount { .. }));
    assert!(leftover.contains("/dev/loop"), "{leftover}");
}

#[test]
fn refuses_bad_sizes_and_existing_images() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/a.img");
    let err = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(32 * MIB, None),
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::TooSmall { .. }), "{err}");
    assert!(err.to_string().contains("at least"));
    let err = create(&sys, &image, DiskSource::Empty, &opts(MIB + 1, None)).unwrap_err();
    assert!(matches!(err, DiskError::UnalignedSize { .. }), "{err}");
    std::fs::write(&image, b"someone else's").unwrap();
    let err = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&image).unwrap(), b"someone else's");
    assert!(sys.calls().is_empty(), "{:?}", sys.calls());
}

#[test]
fn empty_disk_is_formatted_at_its_size() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/empty.img");
    let disk = create(
        &sys,
        &image,
        DiskSource::Empty,
        &opts(96 * MIB, Some(s.root.join("m"))),
    )
    .unwrap();
    assert_eq!(disk.timings.grow_ms, 0.0);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 96 * MIB);
    let mode = std::fs::metadata(&image).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    crate::image::fsck(&image).unwrap();
    assert!(!sys
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Reflink { .. })));
}

#[test]
fn busy_delete_changes_nothing() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/a.img");
    let mnt = s.root.join("m");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, Some(mnt.clone())),
    )
    .unwrap();
    // Busy through every attempt: a process really holds the mount.
    for _ in 0..crate::sys::UNMOUNT_ATTEMPTS {
        sys.fail_next(Op::Unmount, Errno::BUSY.raw_os_error());
    }
    let before = actions(&sys).len();
    let err = delete(&sys, &image, Some(&disk.device), Some(&mnt)).unwrap_err();
    assert!(matches!(err, DiskError::Busy { .. }), "{err}");
    assert!(err.to_string().contains(mnt.to_str().unwrap()));
    let after = actions(&sys);
    assert!(
        after[before..]
            .iter()
            .all(|c| matches!(c, Call::UnmountNofollow { .. })),
        "only unmount attempts: {:?}",
        &after[before..]
    );
    assert!(image.exists());
    assert_eq!(sys.loop_devices().unwrap().len(), 1);
    assert_eq!(sys.mounts_under(&mnt).unwrap(), std::slice::from_ref(&mnt));
    delete(&sys, &image, Some(&disk.device), Some(&mnt)).unwrap();
    assert_nothing_left(&sys, &s);
}

#[test]
fn delete_leaves_foreign_mounts_and_devices_alone() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/a.img");
    let mnt = s.root.join("m");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, None),
    )
    .unwrap();
    // Something else is mounted where the caller thinks this disk is.
    std::fs::create_dir(&mnt).unwrap();
    sys.mount(Path::new("tmpfs"), &mnt, "tmpfs", Default::default(), "")
        .unwrap();
    let err = delete(&sys, &image, Some(&disk.device), Some(&mnt)).unwrap_err();
    assert!(matches!(err, DiskError::ForeignMount { .. }), "{err}");
    assert!(image.exists());
    sys.unmount(&mnt).unwrap();

    // A stale device number now bound to another file is not detached.
    let other = sys
        .attach_loop(Path::new("/other.img"), Default::default())
        .unwrap();
    delete(&sys, &image, Some(&other.path), None).unwrap();
    assert!(sys
        .loop_devices()
        .unwrap()
        .iter()
        .any(|l| l.backing_file == Path::new("/other.img")));
}

#[test]
fn probe_answers_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let sys = FakeSys::new();
    let got = probe_reflink(&sys, dir.path()).unwrap();
    assert_eq!(
        got,
        ReflinkSupport {
            supported: true,
            fs_type: "xfs".into()
        }
    );
    sys.set_fs_type(dir.path(), FsType::EXT4);
    sys.fail_next(Op::Reflink, Errno::OPNOTSUPP.raw_os_error());
    let got = probe_reflink(&sys, dir.path()).unwrap();
    assert_eq!(
        got,
        ReflinkSupport {
            supported: false,
            fs_type: "ext4".into()
        }
    );
    sys.fail_next(Op::Reflink, Errno::IO.raw_os_error());
    assert!(probe_reflink(&sys, dir.path()).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_symlink_on_the_way_to_the_mountpoint_is_refused_at_create() {
    let s = setup();
    let sys = FakeSys::new();
    // A directory beneath the mount root that now points elsewhere (at /etc, say).
    let victim = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(victim.path(), s.root.join("pods")).unwrap();
    let err = create(
        &sys,
        &s.root.join("disks/a.img"),
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, Some(s.root.join("pods/a/mnt"))),
    )
    .unwrap_err();
    assert!(err.is_refused_mount_path(), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert_nothing_left(&sys, &s);
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
}

#[test]
fn a_symlink_planted_while_down_is_refused_at_reattach() {
    let s = setup();
    let sys = FakeSys::new();
    let image = s.root.join("disks/a.img");
    let mnt = s.root.join("pods/a/mnt");
    let disk = create(
        &sys,
        &image,
        DiskSource::Snapshot(&s.snapshot),
        &opts(64 * MIB, Some(mnt.clone())),
    )
    .unwrap();
    // A reboot: the mount (and with it the autoclear loop device) is gone; then the pod's
    // directory is swapped for a symlink.
    sys.unmount(&mnt).unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(victim.path().join("mnt")).unwrap();
    std::fs::rename(s.root.join("pods/a"), s.root.join("pods/a-moved")).unwrap();
    std::os::unix::fs::symlink(victim.path(), s.root.join("pods/a")).unwrap();

    let kernel = Attachments::read(&sys).unwrap();
    let err = reattach(&sys, &kernel, &image, Some(&mnt), &[&s.root]).unwrap_err();
    assert!(err.is_refused_mount_path(), "{err}");
    assert!(sys.mounts_under(Path::new("/")).unwrap().is_empty());
    assert!(
        sys.loop_devices().unwrap().is_empty(),
        "the device was not detached"
    );

    // Outside every root: refused before anything is attached.
    let kernel = Attachments::read(&sys).unwrap();
    let err = reattach(&sys, &kernel, &image, Some(Path::new("/etc/x")), &[&s.root]).unwrap_err();
    assert!(err.is_refused_mount_path(), "{err}");
    assert!(sys.loop_devices().unwrap().is_empty());

    // Delete neither follows the symlink nor minds it.
    delete(&sys, &image, Some(&disk.device), Some(&mnt)).unwrap();
    assert!(!image.exists());
}
