//! Disks larger than their cache, through the real daemon (root, loop devices, a registry on
//! 127.0.0.1, a scratch XFS state root): the first disk of a size makes the snapshot's grown
//! image, later ones clone it without growing; concurrent first disks of one size make it
//! once; a grown image is read-only and never sees a disk's writes; only a few sizes are
//! kept per snapshot; grown images go with their snapshot, and a restart removes half-made
//! ones and those of snapshots that are gone.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const GIB: u64 = 1 << 30;

struct Fixture {
    daemon: TestDaemon,
    _registry: TestRegistry,
    image: String,
    cache_id: String,
    digest_hex: String,
    root: PathBuf,
    _scratch: ScratchXfs,
}

impl Fixture {
    fn new() -> Fixture {
        let scratch = ScratchXfs::new(64 << 30);
        let registry = TestRegistry::start();
        let addr = registry.addr();
        let image = feature_set(1).push_all(&addr, None).remove(0);
        let root = scratch.path().join("state");
        let daemon = TestDaemon::start(&root, &[&addr]);
        let out = daemon.create(
            &cache_yaml("c", std::slice::from_ref(&image), "  imageCacheSize: 20\n"),
            true,
        );
        assert!(
            out.status.success(),
            "create cache: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
        let status = &daemon.get_json("c")["status"];
        Fixture {
            cache_id: status["imageCacheId"].as_str().unwrap().to_owned(),
            digest_hex: status["snapshotDigest"].as_str().unwrap()[7..].to_owned(),
            daemon,
            _registry: registry,
            image,
            root,
            _scratch: scratch,
        }
    }

    fn grown_dir(&self) -> PathBuf {
        self.root.join("snapshots/grown").join(&self.digest_hex)
    }

    /// The grown images' file names, sorted; no staging file may be among them.
    fn grown_files(&self) -> Vec<String> {
        let mut names: Vec<String> = match std::fs::read_dir(self.grown_dir()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    fn create(&self, size_gib: u64) -> Value {
        let out = self.daemon.cli_ok(&[
            "disk",
            "create",
            "--image",
            &self.image,
            "--cache",
            &self.cache_id,
            "--size",
            &size_gib.to_string(),
            "-o",
            "json",
        ]);
        let disk: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(disk["status"]["phase"], "Ready", "{disk:#}");
        disk
    }

    fn delete(&self, disk: &Value) {
        self.daemon
            .cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);
    }
}

fn grow_ms(disk: &Value) -> f64 {
    disk["status"]["timings"]["growMs"].as_f64().unwrap()
}

fn mountpoint(disk: &Value) -> PathBuf {
    PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap())
}

fn fs_bytes(mnt: &Path) -> u64 {
    let stat = rustix::fs::statvfs(mnt).unwrap();
    stat.f_blocks * stat.f_frsize
}

#[test]
fn the_first_disk_of_a_size_grows_once_and_later_ones_clone_the_grown_image() {
    let mut f = Fixture::new();
    let first = f.create(40);
    assert!(
        grow_ms(&first) > 0.0,
        "the first 40 GiB disk grew: {first:#}"
    );
    let name = format!("{}.img", 40 * GIB);
    assert_eq!(f.grown_files(), std::slice::from_ref(&name));
    let grown = f.grown_dir().join(&name);
    let meta = std::fs::metadata(&grown).unwrap();
    assert_eq!(meta.len(), 40 * GIB);
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o400,
        "read-only, root's alone"
    );

    // The first disk is the size asked for and holds the image; a write stays in it.
    let mnt = mountpoint(&first);
    let size = fs_bytes(&mnt);
    assert!(size > 39 * GIB && size <= 40 * GIB, "{size} bytes");
    assert!(std::fs::read_dir(mnt.join("snapshots")).unwrap().count() > 0);
    std::fs::write(mnt.join("written-by-pod"), b"first").unwrap();

    // The next disk of that size clones the grown image: no grow, the same size, none of the
    // first disk's writes.
    let second = f.create(40);
    assert_eq!(grow_ms(&second), 0.0, "{second:#}");
    let mnt2 = mountpoint(&second);
    assert_eq!(fs_bytes(&mnt2), size);
    assert!(!mnt2.join("written-by-pod").exists());
    std::fs::write(mnt2.join("written-by-pod"), vec![1u8; 1 << 20]).unwrap();
    f.delete(&first);
    f.delete(&second);

    // A disk of the cache's own size clones the snapshot, as before.
    let own = f.create(20);
    assert_eq!(grow_ms(&own), 0.0);
    assert!(fs_bytes(&mountpoint(&own)) <= 20 * GIB);
    f.delete(&own);
    assert_eq!(f.grown_files(), [name]);

    // The grown image is checked clean by e2fsck, and the snapshot still verifies.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&grown)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let verified = f.daemon.cli_ok(&["verify", "c"]);
    assert!(verified.contains("verified"), "{verified}");

    // A disk keeps working after its cache and snapshot go; the grown images go with the
    // snapshot once the last disk has.
    let kept = f.create(40);
    f.daemon.cli_ok(&["delete", "c"]);
    assert!(f.grown_dir().exists(), "the disk still holds the snapshot");
    std::fs::write(mountpoint(&kept).join("after-delete"), b"ok").unwrap();
    f.delete(&kept);
    assert!(!f.grown_dir().exists(), "grown images left behind");
    f.daemon.stop();
    assert_no_leaks(&f.root);
}

#[test]
fn concurrent_first_disks_of_a_size_make_one_grown_image_and_few_sizes_are_kept() {
    let mut f = Fixture::new();
    let disks: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| f.create(60))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let grew = disks.iter().filter(|d| grow_ms(d) > 0.0).count();
    assert_eq!(grew, 1, "exactly one disk made the grown image");
    assert_eq!(f.grown_files(), [format!("{}.img", 60 * GIB)]);
    for d in &disks {
        f.delete(d);
    }

    // Nine sizes: the least recently made goes, eight stay.
    let sizes: Vec<u64> = (0..9).map(|i| 21 + i).collect();
    for &gib in &sizes {
        let d = f.create(gib);
        f.delete(&d);
    }
    let kept = f.grown_files();
    assert_eq!(
        kept.len(),
        imagecache::block_snapshot::KEEP_PER_SNAPSHOT,
        "{kept:?}"
    );
    assert!(!kept.contains(&format!("{}.img", 60 * GIB)), "{kept:?}");
    assert!(kept.contains(&format!("{}.img", 29 * GIB)), "{kept:?}");

    // A restart removes what a crash could leave: a half-made image and the grown images of
    // a snapshot that no longer exists.
    let staging = f.grown_dir().join(".tmp-1-2-3");
    std::fs::write(&staging, b"half-made").unwrap();
    let orphan = f.root.join("snapshots/grown").join("ab".repeat(32));
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("1.img"), b"").unwrap();
    f.daemon.stop();
    f.daemon.spawn();
    assert!(!staging.exists() && !orphan.exists());
    assert_eq!(
        f.grown_files(),
        kept,
        "the grown images of a live snapshot stay"
    );
    let again = f.create(29);
    assert_eq!(grow_ms(&again), 0.0, "kept across the restart");
    f.delete(&again);
    f.daemon.stop();
    assert_no_leaks(&f.root);
}
