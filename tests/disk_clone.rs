//! Per-pod disks against the real kernel (root): clones of a real frozen ext4 image on XFS,
//! grown and not, mounted and attach-only; isolation between clones and from the snapshot;
//! the size bound; busy deletes; the sparse-copy fallback on ext4; the reflink probe; the
//! embedded XFS backing image. Each test checks that it left no loop device or mount.

mod disk_util;
mod support;

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use disk_util::{fs_size, loop_attr, loops_backed_by, make_snapshot, ScratchExt4, FILES, GIB, MIB};
use imagecache::block_snapshot::hash_file;
use imagecache::disk_image::{
    self, mount_backing_image, probe_reflink, CloneMode, DiskError, DiskOptions, DiskSource,
    MountTarget,
};
use imagecache::sys::{LinuxSys, Sys};
use support::scratch::{assert_no_leaks, ScratchXfs};

fn reflink(size_bytes: u64, mountpoint: Option<PathBuf>) -> DiskOptions {
    DiskOptions {
        size_bytes,
        mountpoint: mountpoint.map(beneath_grandparent),
        clone_mode: CloneMode::Reflink,
    }
}

/// `m` as a mount target beneath the directory that holds its parent (`<dir>/pods/<name>`).
fn beneath_grandparent(m: PathBuf) -> MountTarget {
    let root = m.parent().and_then(Path::parent).unwrap().to_owned();
    MountTarget::beneath(&root, &m).unwrap()
}

fn disks_dir(scratch: &ScratchXfs) -> PathBuf {
    let d = scratch.path().join("disks");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_snapshot_files(mnt: &Path) {
    for (path, content) in FILES {
        assert_eq!(
            std::fs::read_to_string(mnt.join(path)).unwrap(),
            *content,
            "{path} in {}",
            mnt.display()
        );
    }
}

/// Nothing of ours is left on the scratch filesystem: no mount on it but its own, no loop
/// device backed by a file in it. (`assert_no_leaks` on the scratch's parent after drop
/// checks the scratch itself went too.)
fn assert_clean(scratch: &ScratchXfs) {
    scratch.assert_nothing_left();
}

fn root_of(scratch: &ScratchXfs) -> PathBuf {
    scratch.path().parent().unwrap().to_owned()
}

#[test]
fn clones_grown_or_not_mounted_or_attached() {
    let scratch = ScratchXfs::new(64 * GIB);
    let snap = make_snapshot(scratch.path(), "snap.img", 20 * GIB, 0);
    let disks = disks_dir(&scratch);
    let sys = LinuxSys;

    // Same size, mounted.
    let mnt_a = scratch.path().join("pods/a");
    let a = disk_image::create(
        &sys,
        &disks.join("disk-a.img"),
        DiskSource::Snapshot(&snap),
        &reflink(20 * GIB, Some(mnt_a.clone())),
    )
    .unwrap();
    eprintln!("20 GiB clone, mounted: {:?}", a.timings);
    assert!(a.timings.clone_ms > 0.0 && a.timings.attach_ms > 0.0 && a.timings.mount_ms > 0.0);
    assert_eq!(a.timings.grow_ms, 0.0);
    assert_eq!(loops_backed_by(&a.image), std::slice::from_ref(&a.device));
    assert_eq!(loop_attr(&a.device, "loop/autoclear"), "1");
    assert_eq!(loop_attr(&a.device, "loop/dio"), "1");
    assert_eq!(
        LinuxSys.mount_source(&mnt_a).unwrap(),
        Some(a.device.clone())
    );
    assert_snapshot_files(&mnt_a);
    let size_a = fs_size(&mnt_a);
    assert!(size_a > 19 * GIB && size_a <= 20 * GIB, "{size_a}");
    std::fs::write(mnt_a.join("new.txt"), "a's own").unwrap();
    // Nothing in this process holds the disk: it stays after create returned.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(loops_backed_by(&a.image), std::slice::from_ref(&a.device));

    // Grown 20 -> 40 GiB, mounted: df inside shows the new size, files are all there.
    let mnt_b = scratch.path().join("pods/b");
    let b = disk_image::create(
        &sys,
        &disks.join("disk-b.img"),
        DiskSource::Snapshot(&snap),
        &reflink(40 * GIB, Some(mnt_b.clone())),
    )
    .unwrap();
    eprintln!("20 -> 40 GiB clone, mounted: {:?}", b.timings);
    assert!(b.timings.grow_ms > 0.0);
    assert_eq!(std::fs::metadata(&b.image).unwrap().len(), 40 * GIB);
    let size_b = fs_size(&mnt_b);
    assert!(size_b > 39 * GIB && size_b <= 40 * GIB, "{size_b}");
    let df = std::process::Command::new("df")
        .args(["-B1", "--output=size"])
        .arg(&mnt_b)
        .output()
        .unwrap();
    let df_size: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(df_size, size_b);
    assert_snapshot_files(&mnt_b);
    assert!(!mnt_b.join("new.txt").exists());

    // Attach only (for a microVM): no autoclear, else it would vanish with our fd.
    let c = disk_image::create(
        &sys,
        &disks.join("disk-c.img"),
        DiskSource::Snapshot(&snap),
        &reflink(24 * GIB, None),
    )
    .unwrap();
    eprintln!("20 -> 24 GiB clone, attach only: {:?}", c.timings);
    assert_eq!(c.mountpoint, None);
    assert_eq!(c.timings.mount_ms, 0.0);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(loops_backed_by(&c.image), std::slice::from_ref(&c.device));
    assert_eq!(loop_attr(&c.device, "loop/autoclear"), "0");
    assert_eq!(loop_attr(&c.device, "loop/dio"), "1");
    assert_eq!(loop_attr(&c.device, "size"), (24 * GIB / 512).to_string());

    for d in [&a, &b, &c] {
        disk_image::delete(&sys, &d.image, Some(&d.device), d.mountpoint.as_deref()).unwrap();
        assert!(!d.image.exists());
        assert!(loops_backed_by(&d.image).is_empty());
    }
    assert!(LinuxSys
        .mounts_under(&scratch.path().join("pods"))
        .unwrap()
        .is_empty());
    assert_eq!(std::fs::read_dir(&disks).unwrap().count(), 0);
    let root = root_of(&scratch);
    assert_clean(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

#[test]
fn ten_clones_are_isolated_from_each_other_and_the_snapshot() {
    let scratch = ScratchXfs::new(64 * GIB);
    let snap = make_snapshot(scratch.path(), "snap.img", 20 * GIB, 8 * MIB);
    let before = hash_file(&snap).unwrap().digest();
    let disks = disks_dir(&scratch);
    let sys = LinuxSys;
    let made: Vec<_> = (0..10)
        .map(|i| {
            disk_image::create(
                &sys,
                &disks.join(format!("disk-{i}.img")),
                DiskSource::Snapshot(&snap),
                &reflink(20 * GIB, Some(scratch.path().join(format!("pods/{i}")))),
            )
            .unwrap()
        })
        .collect();
    for (i, d) in made.iter().enumerate() {
        let m = d.mountpoint.as_ref().unwrap();
        std::fs::write(m.join(format!("only-{i}.txt")), format!("disk {i}")).unwrap();
        // Overwrite a file every clone shares with the snapshot, and some of the payload.
        std::fs::write(m.join("shared.txt"), format!("changed by {i}")).unwrap();
        let mut payload = OpenOptions::new()
            .write(true)
            .open(m.join("payload.bin"))
            .unwrap();
        payload.write_all(&[i as u8; 1 << 20]).unwrap();
        payload.sync_all().unwrap();
        LinuxSys.syncfs(m).unwrap();
    }
    for (i, d) in made.iter().enumerate() {
        let m = d.mountpoint.as_ref().unwrap();
        assert_eq!(
            std::fs::read_to_string(m.join(format!("only-{i}.txt"))).unwrap(),
            format!("disk {i}")
        );
        assert_eq!(
            std::fs::read_to_string(m.join("shared.txt")).unwrap(),
            format!("changed by {i}")
        );
        let head = std::fs::read(m.join("payload.bin")).unwrap();
        assert!(head[..1 << 20].iter().all(|b| *b == i as u8), "disk {i}");
        for j in (0..10).filter(|j| *j != i) {
            assert!(
                !m.join(format!("only-{j}.txt")).exists(),
                "disk {i} sees {j}"
            );
        }
    }
    for d in &made {
        disk_image::delete(&sys, &d.image, Some(&d.device), d.mountpoint.as_deref()).unwrap();
    }
    assert_eq!(
        hash_file(&snap).unwrap().digest(),
        before,
        "snapshot changed"
    );
    // And the snapshot's filesystem still says what it said.
    let fresh = disk_image::create(
        &sys,
        &disks.join("fresh.img"),
        DiskSource::Snapshot(&snap),
        &reflink(20 * GIB, Some(scratch.path().join("pods/fresh"))),
    )
    .unwrap();
    let m = fresh.mountpoint.as_ref().unwrap();
    assert_snapshot_files(m);
    assert!(!m.join("only-0.txt").exists());
    disk_image::delete(&sys, &fresh.image, Some(&fresh.device), Some(m)).unwrap();
    assert_clean(&scratch);
    let root = root_of(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

#[test]
fn writing_past_the_size_fails_inside_that_disk_only() {
    let scratch = ScratchXfs::new(8 * GIB);
    let snap = make_snapshot(scratch.path(), "tiny.img", 64 * MIB, 0);
    let before = hash_file(&snap).unwrap().digest();
    let disks = disks_dir(&scratch);
    let sys = LinuxSys;
    let full = disk_image::create(
        &sys,
        &disks.join("full.img"),
        DiskSource::Snapshot(&snap),
        &reflink(64 * MIB, Some(scratch.path().join("pods/full"))),
    )
    .unwrap();
    let other = disk_image::create(
        &sys,
        &disks.join("other.img"),
        DiskSource::Snapshot(&snap),
        &reflink(64 * MIB, Some(scratch.path().join("pods/other"))),
    )
    .unwrap();
    let fm = full.mountpoint.as_ref().unwrap();
    let mut f = std::fs::File::create(fm.join("fill")).unwrap();
    let chunk = vec![0xabu8; MIB as usize];
    let mut written = 0u64;
    let err = loop {
        match f.write_all(&chunk).and_then(|_| f.sync_data()) {
            Ok(()) => written += MIB,
            Err(e) => break e,
        }
        assert!(
            written <= 128 * MIB,
            "wrote {written} bytes into a 64 MiB disk"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc_enospc()), "{err}");
    eprintln!("ENOSPC after {} MiB", written / MIB);
    drop(f);
    // The disk's file did not grow, the other disk and the scratch filesystem still take
    // writes, and the snapshot is unchanged.
    assert_eq!(std::fs::metadata(&full.image).unwrap().len(), 64 * MIB);
    let om = other.mountpoint.as_ref().unwrap();
    std::fs::write(om.join("fine"), vec![1u8; 8 * MIB as usize]).unwrap();
    std::fs::write(scratch.path().join("outside"), vec![1u8; 8 * MIB as usize]).unwrap();
    assert_snapshot_files(om);
    assert_snapshot_files(fm);
    for d in [&full, &other] {
        disk_image::delete(&sys, &d.image, Some(&d.device), d.mountpoint.as_deref()).unwrap();
    }
    assert_eq!(hash_file(&snap).unwrap().digest(), before);
    assert_clean(&scratch);
    let root = root_of(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

fn libc_enospc() -> i32 {
    rustix::io::Errno::NOSPC.raw_os_error()
}

#[test]
fn busy_disk_is_not_deleted_until_released() {
    let scratch = ScratchXfs::new(8 * GIB);
    let snap = make_snapshot(scratch.path(), "tiny.img", 64 * MIB, 0);
    let disks = disks_dir(&scratch);
    let sys = LinuxSys;
    let mnt = scratch.path().join("pods/busy");
    let d = disk_image::create(
        &sys,
        &disks.join("busy.img"),
        DiskSource::Snapshot(&snap),
        &reflink(64 * MIB, Some(mnt.clone())),
    )
    .unwrap();
    let mut open = std::fs::File::create(mnt.join("held-open")).unwrap();
    open.write_all(b"still writing").unwrap();
    // A process with its working directory there counts too.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(&mnt)
        .spawn()
        .unwrap();

    let err = disk_image::delete(&sys, &d.image, Some(&d.device), Some(&mnt)).unwrap_err();
    assert!(matches!(err, DiskError::Busy { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(mnt.to_str().unwrap()) && msg.contains("busy"),
        "{msg}"
    );
    // Nothing changed: still mounted, attached, file there, and usable.
    assert_eq!(LinuxSys.mount_source(&mnt).unwrap(), Some(d.device.clone()));
    assert_eq!(loops_backed_by(&d.image), std::slice::from_ref(&d.device));
    assert!(d.image.exists());
    open.write_all(b", and more").unwrap();
    open.sync_all().unwrap();
    assert_snapshot_files(&mnt);

    drop(open);
    let err = disk_image::delete(&sys, &d.image, Some(&d.device), Some(&mnt)).unwrap_err();
    assert!(matches!(err, DiskError::Busy { .. }), "cwd holder: {err}");
    child.kill().unwrap();
    child.wait().unwrap();
    disk_image::delete(&sys, &d.image, Some(&d.device), Some(&mnt)).unwrap();
    assert!(!d.image.exists());
    assert!(loops_backed_by(&d.image).is_empty());
    assert_clean(&scratch);
    let root = root_of(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

#[test]
fn sparse_copy_matches_a_reflink_clone() {
    let scratch = ScratchXfs::new(64 * GIB);
    let snap = make_snapshot(scratch.path(), "snap.img", 20 * GIB, 16 * MIB);
    let disks = disks_dir(&scratch);
    let sys = LinuxSys;
    let mk = |name: &str, mode| {
        disk_image::create(
            &sys,
            &disks.join(format!("{name}.img")),
            DiskSource::Snapshot(&snap),
            &DiskOptions {
                size_bytes: 20 * GIB,
                mountpoint: Some(beneath_grandparent(scratch.path().join("pods").join(name))),
                clone_mode: mode,
            },
        )
        .unwrap()
    };
    let copied = mk("copied", CloneMode::SparseCopy);
    let cloned = mk("cloned", CloneMode::Reflink);
    eprintln!("sparse copy on XFS: {:?}", copied.timings);
    let want = support::tree::walk(cloned.mountpoint.as_ref().unwrap());
    let got = support::tree::walk(copied.mountpoint.as_ref().unwrap());
    support::tree::assert_tree_eq("sparse copy vs reflink", &want, &got);
    for d in [&copied, &cloned] {
        disk_image::delete(&sys, &d.image, Some(&d.device), d.mountpoint.as_deref()).unwrap();
    }
    assert_clean(&scratch);
    let root = root_of(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

#[test]
fn ext4_root_refuses_reflink_and_sparse_copy_works_there() {
    let scratch = ScratchXfs::new(8 * GIB);
    let ext4 = ScratchExt4::new(scratch.path(), 2 * GIB);
    let snap = make_snapshot(&ext4.path, "snap.img", 256 * MIB, 16 * MIB);
    let disks = ext4.path.join("disks");
    std::fs::create_dir(&disks).unwrap();
    let sys = LinuxSys;

    let probe = probe_reflink(&sys, &disks).unwrap();
    assert!(!probe.supported);
    assert_eq!(probe.fs_type, "ext4");
    let probe = probe_reflink(&sys, scratch.path()).unwrap();
    assert!(probe.supported);
    assert_eq!(probe.fs_type, "xfs");
    let tmp = probe_reflink(&sys, Path::new("/dev/shm"));
    if let Ok(tmp) = tmp {
        assert_eq!(tmp.fs_type, "tmpfs");
    }
    // The probe leaves nothing behind.
    assert_eq!(std::fs::read_dir(&disks).unwrap().count(), 0);

    let err = disk_image::create(
        &sys,
        &disks.join("a.img"),
        DiskSource::Snapshot(&snap),
        &reflink(256 * MIB, Some(ext4.path.join("pods/a"))),
    )
    .unwrap_err();
    assert!(matches!(err, DiskError::ReflinkUnsupported { .. }), "{err}");
    assert!(err.to_string().contains("ext4"), "{err}");
    assert_eq!(std::fs::read_dir(&disks).unwrap().count(), 0);
    assert!(!ext4.path.join("pods").exists());

    // The fallback: a real copy of the data extents, holes kept.
    let image = disks.join("b.img");
    let d = disk_image::create(
        &sys,
        &image,
        DiskSource::Snapshot(&snap),
        &DiskOptions {
            size_bytes: 512 * MIB,
            mountpoint: None,
            clone_mode: CloneMode::SparseCopy,
        },
    )
    .unwrap();
    eprintln!(
        "sparse copy on ext4 (16 MiB of data, grown 256 -> 512 MiB): {:?}",
        d.timings
    );
    let snap_blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&snap).unwrap());
    let copy_blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).unwrap());
    // Growing writes a little metadata; filling the holes would be 32x more.
    assert!(
        copy_blocks < snap_blocks * 2,
        "copy holds {copy_blocks} blocks, snapshot {snap_blocks}"
    );
    disk_image::delete(&sys, &image, Some(&d.device), None).unwrap();

    // Attach-only copy compared byte for byte with its source.
    let same = disks.join("c.img");
    let d = disk_image::create(
        &sys,
        &same,
        DiskSource::Snapshot(&snap),
        &DiskOptions {
            size_bytes: 256 * MIB,
            mountpoint: None,
            clone_mode: CloneMode::SparseCopy,
        },
    )
    .unwrap();
    assert!(std::fs::read(&same).unwrap() == std::fs::read(&snap).unwrap());
    disk_image::delete(&sys, &same, Some(&d.device), None).unwrap();

    assert_eq!(std::fs::read_dir(&disks).unwrap().count(), 0);
    drop(ext4);
    assert_clean(&scratch);
    let root = root_of(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

#[test]
fn backing_image_mounts_once_and_shares_extents() {
    let scratch = ScratchXfs::new(64 * GIB);
    let sys = LinuxSys;
    let backing = scratch.path().join("var/lib/imagecache.xfs");
    let root = scratch.path().join("var/lib/imagecache");
    mount_backing_image(&sys, &backing, 4 * GIB, &root).unwrap();
    let devices = loops_backed_by(&backing);
    assert_eq!(devices.len(), 1);
    assert_eq!(
        LinuxSys.mount_source(&root).unwrap(),
        Some(devices[0].clone())
    );
    assert_eq!(loop_attr(&devices[0], "loop/dio"), "1");
    let probe = probe_reflink(&sys, &root).unwrap();
    assert!(probe.supported && probe.fs_type == "xfs", "{probe:?}");
    let size = fs_size(&root);
    assert!(size > 3 * GIB && size <= 4 * GIB, "{size}");

    // Idempotent.
    mount_backing_image(&sys, &backing, 4 * GIB, &root).unwrap();
    assert_eq!(loops_backed_by(&backing), devices);

    // Disks made under it work.
    std::fs::create_dir_all(root.join("snapshots")).unwrap();
    let snap = make_snapshot(&root.join("snapshots"), "disk.img", 256 * MIB, 0);
    std::fs::create_dir_all(root.join("disks")).unwrap();
    let d = disk_image::create(
        &sys,
        &root.join("disks/x.img"),
        DiskSource::Snapshot(&snap),
        &reflink(512 * MIB, Some(root.join("mnt/x"))),
    )
    .unwrap();
    assert_snapshot_files(d.mountpoint.as_ref().unwrap());
    disk_image::delete(&sys, &d.image, Some(&d.device), d.mountpoint.as_deref()).unwrap();

    // Refusals: a non-empty directory, another filesystem's mount point.
    let busy_root = scratch.path().join("other");
    std::fs::create_dir_all(busy_root.join("stuff")).unwrap();
    let err =
        mount_backing_image(&sys, &scratch.path().join("b2.xfs"), GIB, &busy_root).unwrap_err();
    assert!(matches!(err, DiskError::RootNotEmpty { .. }), "{err}");
    assert!(!scratch.path().join("b2.xfs").exists());
    let err = mount_backing_image(&sys, &scratch.path().join("b2.xfs"), GIB, &root).unwrap_err();
    assert!(
        matches!(err, DiskError::RootMountedElsewhere { .. }),
        "{err}"
    );

    // Remounted bigger: grown, contents kept.
    imagecache::sys::unmount_settled(&LinuxSys, &root).unwrap();
    wait_unbound(&backing);
    mount_backing_image(&sys, &backing, 8 * GIB, &root).unwrap();
    let size = fs_size(&root);
    assert!(size > 7 * GIB && size <= 8 * GIB, "{size}");
    assert!(snap.exists());
    imagecache::sys::unmount_settled(&LinuxSys, &root).unwrap();
    wait_unbound(&backing);

    assert_clean(&scratch);
    let root = root_of(&scratch);
    drop(scratch);
    assert_no_leaks(&root);
}

fn wait_unbound(file: &Path) {
    for _ in 0..100 {
        if loops_backed_by(file).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} still attached after unmount", file.display());
}
