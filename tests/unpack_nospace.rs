//! apply_layer on a full filesystem: a small tmpfs mounted for the test. Running out of
//! space mid-layer, or meeting one file larger than the free space, both end in NoSpace
//! carrying the whole layer's file size (the rest of the stream is still read to measure).

mod unpack_util;

use std::path::{Path, PathBuf};

use imagecache::unpack::{apply_layer, Compression, UnpackError};
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
use unpack_util::*;

/// A tmpfs of `size` mounted on a temp dir, unmounted on drop.
struct SmallFs {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallFs {
    fn new(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        mount(
            "imagecache-test",
            &path,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(
                std::ffi::CString::new(format!("size={size},mode=0755"))
                    .unwrap()
                    .as_c_str(),
            ),
        )
        .expect("mounting a tmpfs needs root");
        SmallFs { _dir: dir, path }
    }

    fn dest(&self) -> PathBuf {
        self.dest_named("layer")
    }

    fn dest_named(&self, name: &str) -> PathBuf {
        let d = self.path.join(name);
        std::fs::create_dir(&d).unwrap();
        d
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = unmount(&self.path, UnmountFlags::DETACH);
    }
}

/// Incompressible-enough bytes, deterministic.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn expect_no_space(tar: &[u8], dest: &Path) -> (String, u64, u64) {
    let blob = compress(tar, Compression::Gzip);
    let err = apply_layer(&blob[..], Compression::Gzip, dest, &diff_id(tar)).unwrap_err();
    let msg = err.to_string();
    match err {
        UnpackError::NoSpace {
            entry,
            needed_bytes,
            available_bytes,
        } => {
            assert!(msg.contains("larger size"), "{msg}");
            assert!(msg.contains(&needed_bytes.to_string()), "{msg}");
            (entry, needed_bytes, available_bytes)
        }
        other => panic!("expected NoSpace, got: {other}"),
    }
}

#[test]
fn running_out_midway_reports_the_whole_layer_size() {
    let fs = SmallFs::new("4m");
    let mut l = Layer::new();
    l.dir("data");
    let mut total = 0u64;
    for i in 0..12 {
        let data = noise(512 * 1024, i);
        total += data.len() as u64;
        l.file(&format!("data/f{i:02}"), &data);
    }
    let tar = l.tar();
    let (entry, needed, available) = expect_no_space(&tar, &fs.dest());
    assert_eq!(needed, total);
    assert!(entry.starts_with("data/f"), "{entry}");
    assert!(available < 1024 * 1024, "{available}");
}

#[test]
fn one_file_larger_than_free_space_fails_before_writing_it() {
    let fs = SmallFs::new("4m");
    let dest = fs.dest();
    let big = noise(6 * 1024 * 1024, 9);
    let tar = Layer::new()
        .file("small", b"small")
        .file("huge.bin", &big)
        .file("after", b"after")
        .tar();
    let (entry, needed, available) = expect_no_space(&tar, &dest);
    assert_eq!(entry, "huge.bin");
    assert_eq!(needed, big.len() as u64 + 10);
    assert!(
        available > 3 * 1024 * 1024,
        "nothing of the huge file was written: {available}"
    );
    assert!(!dest.join("huge.bin").exists());
    assert!(
        !dest.join("after").exists(),
        "nothing is written after space ran out"
    );
}

#[test]
fn a_corrupt_layer_is_reported_as_corrupt_even_when_space_ran_out() {
    let fs = SmallFs::new("4m");
    let tar = Layer::new()
        .file("huge.bin", &noise(5 * 1024 * 1024, 3))
        .tar();
    let wrong = format!("sha256:{}", "1".repeat(64));
    let blob = compress(&tar, Compression::Zstd);
    let err = apply_layer(&blob[..], Compression::Zstd, &fs.dest(), &wrong).unwrap_err();
    assert!(matches!(err, UnpackError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn running_out_of_inodes_is_no_space_too() {
    let fs = SmallFs::new("4m,nr_inodes=8");
    let mut l = Layer::new();
    for i in 0..30 {
        l.file(&format!("f{i}"), b"tiny");
    }
    let tar = l.tar();
    let (_, needed, _) = expect_no_space(&tar, &fs.dest());
    assert_eq!(needed, 30 * 4);
}

#[test]
fn layers_racing_for_the_same_space() {
    // Both may pass the free-space check before either writes; then a real ENOSPC meets one
    // or both mid-write (interleaved writes can starve both). Whatever the interleaving, at
    // least one fails, and every failure is NoSpace with that layer's size.
    let fs = SmallFs::new("4m");
    let tars: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            Layer::new()
                .file("part", &noise(3 * 1024 * 1024, i + 20))
                .tar()
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = tars
            .iter()
            .enumerate()
            .map(|(i, tar)| {
                let dest = fs.dest_named(&format!("l{i}"));
                s.spawn(move || apply_layer(&tar[..], Compression::None, &dest, &diff_id(tar)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let no_space = results
        .iter()
        .filter(|r| matches!(r, Err(UnpackError::NoSpace { needed_bytes, .. }) if *needed_bytes == 3 * 1024 * 1024))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(no_space >= 1 && no_space + ok == 2, "{results:?}");
}
