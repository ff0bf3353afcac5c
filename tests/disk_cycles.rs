//! 1,000 create/delete cycles of a mounted disk from one 20 GiB snapshot on XFS (root):
//! afterwards no loop device, mount or file is left, and create stays fast throughout.

mod disk_util;
mod support;

use std::time::Instant;

use disk_util::{make_snapshot, percentile, GIB};
use imagecache::disk_image::{self, CloneMode, DiskOptions, DiskSource};
use imagecache::sys::LinuxSys;
use support::scratch::{assert_no_leaks, ScratchXfs};

const CYCLES: usize = 1000;

#[test]
fn thousand_create_delete_cycles_leave_nothing() {
    let scratch = ScratchXfs::new(64 * GIB);
    let snap = make_snapshot(scratch.path(), "snap.img", 20 * GIB, 0);
    let disks = scratch.path().join("disks");
    std::fs::create_dir(&disks).unwrap();
    let mountpoint = scratch.path().join("pods/disk");
    let loops_before = support::oracle::attached_loops().len();
    let sys = LinuxSys;
    let opts = DiskOptions {
        size_bytes: 20 * GIB,
        mountpoint: Some(disk_image::MountTarget::beneath(scratch.path(), &mountpoint).unwrap()),
        clone_mode: CloneMode::Reflink,
    };

    let started = Instant::now();
    let mut create_ms = Vec::with_capacity(CYCLES);
    let mut delete_ms = Vec::with_capacity(CYCLES);
    for i in 0..CYCLES {
        let image = disks.join(format!("disk-{i:04}.img"));
        let t = Instant::now();
        let d = disk_image::create(&sys, &image, DiskSource::Snapshot(&snap), &opts)
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        create_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        std::fs::write(mountpoint.join("pod-data"), i.to_string()).unwrap();
        let t = Instant::now();
        disk_image::delete(&sys, &d.image, Some(&d.device), d.mountpoint.as_deref())
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        delete_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if (i + 1) % 100 == 0 {
            let mut c = create_ms.clone();
            c.sort_by(f64::total_cmp);
            let mut d = delete_ms.clone();
            d.sort_by(f64::total_cmp);
            eprintln!(
                "{:4} cycles, {:5.1} s: create p50 {:.2} ms p99 {:.2} ms; delete p50 {:.2} ms p99 {:.2} ms",
                i + 1,
                started.elapsed().as_secs_f64(),
                percentile(&c, 0.5),
                percentile(&c, 0.99),
                percentile(&d, 0.5),
                percentile(&d, 0.99),
            );
        }
    }

    // Autoclear runs when the unmount drops the device's last user; nothing should linger.
    let (left, _) = support::oracle::held_under(&disks);
    assert!(left.is_empty(), "loop devices left: {left:?}");
    let loops_after = support::oracle::attached_loops().len();
    eprintln!("bound loop devices: {loops_before} before, {loops_after} after");
    // Only ours are checked (above): other work on the machine may attach devices meanwhile.
    assert!(support::oracle::held_under(&mountpoint).1.is_empty());
    assert_eq!(std::fs::read_dir(&disks).unwrap().count(), 0, "files left");
    create_ms.sort_by(f64::total_cmp);
    assert!(
        percentile(&create_ms, 0.5) <= 15.0,
        "create p50 {:.2} ms",
        percentile(&create_ms, 0.5)
    );

    let root = scratch.path().parent().unwrap().to_owned();
    drop(scratch);
    assert_no_leaks(&root);
}
