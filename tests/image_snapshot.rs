//! The freeze path end to end (root): a 20 GiB sparse ext4 image on a scratch XFS, built
//! through a real loop device, checked, hashed, committed, verified, corrupted in a clone,
//! grown, with nothing left attached or mounted. Prints how long each step takes.

mod support;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use imagecache::block_snapshot::{hash_file, verify_file, SnapshotStore};
use imagecache::image::{self, ImageError, MountConfig};
use imagecache::sys::{LinuxSys, Sys};
use support::scratch::{assert_no_leaks, ScratchXfs};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    eprintln!("{what:<40} {took:>10.1?}");
    (out, took)
}

/// ~500 MB like an unpacked image: a few large files and many small ones, incompressible
/// enough that nothing hashes to zero.
fn write_content(root: &Path) -> u64 {
    let mut block = vec![0u8; MIB as usize];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in block.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes());
    }
    let mut written = 0;
    std::fs::create_dir_all(root.join("big")).unwrap();
    for i in 0..45u64 {
        let mut f = std::fs::File::create(root.join(format!("big/{i}"))).unwrap();
        for j in 0..10u64 {
            block[..16].copy_from_slice(&[i.to_le_bytes(), j.to_le_bytes()].concat());
            f.write_all(&block).unwrap();
            written += MIB;
        }
    }
    for d in 0..50 {
        let dir = root.join(format!("small/{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..100usize {
            let len = 1000 + (d * 100 + i) * 37 % 16000;
            std::fs::write(dir.join(format!("f{i}")), &block[i..i + len]).unwrap();
            written += len as u64;
        }
    }
    written
}

#[test]
fn build_freeze_verify_grow() {
    let scratch = ScratchXfs::new(8 * GIB);
    let root = scratch.path().parent().unwrap().to_owned();
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let img = work.join("build.img");
    let mnt = work.join("mnt");

    let (_, t_mkfs) = timed("create 20 GiB sparse + mkfs.ext4", || {
        image::create(&img, 20 * GIB, "imc-test").unwrap()
    });
    let (mounted, t_mount) = timed("attach + mount", || {
        image::mount(&LinuxSys, &img, &mnt, &MountConfig::build()).unwrap()
    });
    eprintln!(
        "{:<40} {:>10.1?}",
        "=> mkfs + attach + mount",
        t_mkfs + t_mount
    );
    let dio = std::fs::read_to_string(format!(
        "/sys/block/{}/loop/dio",
        mounted.device().path.file_name().unwrap().to_str().unwrap()
    ))
    .unwrap();
    // The build mount is buffered on purpose (MountConfig::build explains why); what the
    // kernel did must be what was asked for.
    let want = if MountConfig::build().direct_io {
        "1"
    } else {
        "0"
    };
    assert_eq!(
        dio.trim(),
        want,
        "loop device I/O mode differs from MountConfig::build()"
    );
    // Likewise the allocator's tunables: the kernel must hold what the build mount set.
    let device_name = mounted.device().path.file_name().unwrap().to_owned();
    for (name, value) in MountConfig::build().tunables {
        let path = Path::new("/sys/fs/ext4").join(&device_name).join(name);
        let set = std::fs::read_to_string(&path).unwrap();
        assert_eq!(set.trim(), value.to_string(), "{}", path.display());
    }

    let (written, _) = timed("write ~500 MB of files", || write_content(mounted.path()));
    eprintln!("content written: {} MB", written / 1_000_000);
    let device = mounted.device().path.clone();
    timed("sync + unmount + detach", || {
        mounted.unmount_and_detach().unwrap()
    });
    assert!(support::oracle::attached_loops()
        .iter()
        .all(|l| std::path::Path::new(&l.device) != device || l.backing_file != img));
    assert_no_leaks(&work);

    timed("e2fsck -fn", || image::fsck(&img).unwrap());
    let (manifest, _) = timed("freeze: hash data extents", || hash_file(&img).unwrap());
    eprintln!(
        "manifest: {} chunks, {} MB of data in a {} GiB image",
        manifest.chunks.len(),
        manifest.data_bytes() / 1_000_000,
        manifest.size / GIB
    );
    assert!(manifest.data_bytes() >= written, "hashing missed content");
    assert!(
        manifest.data_bytes() < written + 400 * MIB,
        "hashing far more than content"
    );

    let store = SnapshotStore::new(scratch.path().join("snapshots"));
    let (snap, _) = timed("commit", || store.commit(&img, &manifest).unwrap());
    assert_eq!(snap.digest, manifest.digest());
    assert!(!img.exists());
    let (report, _) = timed("verify", || store.verify(&snap.digest).unwrap());
    assert!(report.is_ok(), "{report}");

    // A clone with one byte flipped in the middle of the content.
    let clone = work.join("clone.img");
    timed("reflink clone", || {
        LinuxSys.reflink(&snap.image_path, &clone).unwrap()
    });
    std::fs::set_permissions(&clone, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let target = &manifest.chunks[manifest.chunks.len() / 2];
    let at = target.offset + target.length / 2;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&clone)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0xff], at).unwrap();
    drop(f);
    let report = verify_file(&clone, &manifest).unwrap();
    assert_eq!(report.mismatched.len(), 1, "{report}");
    assert_eq!(report.mismatched[0].offset, target.offset);
    assert_eq!(report.mismatched[0].expected, target.digest);
    assert!(report.appeared.is_empty() && report.vanished.is_empty() && report.size.is_none());
    std::fs::remove_file(&clone).unwrap();

    // Growing a fresh clone into a bigger per-pod disk, and refusing to shrink it.
    let disk = work.join("disk.img");
    LinuxSys.reflink(&snap.image_path, &disk).unwrap();
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    timed("grow 20 -> 40 GiB (resize2fs)", || {
        image::grow(&disk, 40 * GIB).unwrap()
    });
    let err = image::grow(&disk, 30 * GIB).unwrap_err();
    assert!(matches!(err, ImageError::Shrink { .. }), "{err}");
    timed("e2fsck -fn (grown)", || image::fsck(&disk).unwrap());
    let grown = image::mount(
        &LinuxSys,
        &disk,
        &work.join("disk"),
        &MountConfig::writable(),
    )
    .unwrap();
    let stat = rustix::fs::statvfs(grown.path()).unwrap();
    assert!(
        stat.f_blocks * stat.f_frsize > 39 * GIB,
        "filesystem did not grow"
    );
    assert_eq!(
        std::fs::read_dir(grown.path().join("big")).unwrap().count(),
        45
    );
    grown.unmount_and_detach().unwrap();

    // The snapshot is untouched by all of that.
    assert!(store.verify(&snap.digest).unwrap().is_ok());
    drop(scratch);
    assert_no_leaks(&root);
}
