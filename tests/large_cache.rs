//! Large caches and cheap clones: a 1 TiB cache costs the space of a 20 GiB one (4 KiB
//! blocks, fewer inodes); a cache above 2 TiB is formatted with bigalloc clusters (so its
//! mount time stops growing with its size), still holds exactly the images' files, and
//! clones into a larger disk that the workload can use; frozen images of every size keep few
//! extents (so FICLONE stays cheap), including one of thousands of small files, which leaves
//! a hole in nearly every cluster of the clustered cache until freezing rewrites it.

mod support;

use std::path::Path;
use std::process::Command;

use support::cachefs::{mount_chain, mount_snapshot};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::gen::realistic::realistic_image_sized;
use support::oci::{push_image, Compression};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

/// Extents of `file` as XFS maps them: what FICLONE walks.
fn extents(file: &Path) -> usize {
    let out = Command::new("filefrag").arg(file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "<file>: N extents found" (or "1 extent found").
    let count = text.rsplit(": ").next().unwrap().split_whitespace().next();
    count
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("filefrag said {text:?}"))
}

fn superblock(file: &Path) -> String {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn snapshot_image(root: &Path, digest: &str) -> std::path::PathBuf {
    root.join("snapshots/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
        .join("disk.img")
}

#[test]
fn large_caches_cost_what_small_ones_do_hold_their_images_and_clone_into_bigger_disks() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(5);
    let mut refs = set.push_all(&addr, None);
    // 10,000 small files: more data runs in a clustered image than filling in place is
    // trusted with, so freezing rewrites the image.
    let small_files = realistic_image_sized(9, Compression::Gzip, 60_000_000, 10_000);
    push_image(&addr, "bench/small-files", "v1", &small_files, None);
    refs.push(format!("{addr}/bench/small-files:v1"));
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);

    for (name, size) in [("small", 20), ("large", 1024), ("clustered", 2049)] {
        let yaml = cache_yaml(name, &refs, &format!("  imageCacheSize: {size}\n"));
        let out = daemon.create(&yaml, true);
        assert!(
            out.status.success(),
            "build {name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
    }
    let digest_of = |name: &str| {
        daemon.get_json(name)["status"]["snapshotDigest"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (small, large, clustered) = (
        digest_of("small"),
        digest_of("large"),
        digest_of("clustered"),
    );

    // The 1 TiB image has 4 KiB blocks and 4 Mi inodes, and its frozen data is the 20 GiB
    // one's (within 10%).
    let sb = superblock(&snapshot_image(&root, &large));
    assert!(!sb.contains("bigalloc"), "{sb}");
    assert!(sb.contains("Inode count:              4194304"), "{sb}");
    let data = |name: &str| {
        daemon.get_json(name)["status"]["dataSizeBytes"]
            .as_u64()
            .unwrap()
    };
    let (small_data, large_data) = (data("small"), data("large"));
    assert!(
        large_data as f64 <= small_data as f64 * 1.10,
        "frozen data: 1 TiB cache {large_data} bytes, 20 GiB cache {small_data}"
    );
    assert!(!superblock(&snapshot_image(&root, &small)).contains("bigalloc"));
    // Just above 2 TiB: 8 KiB clusters, 8,196 groups instead of 16,392.
    let sb = superblock(&snapshot_image(&root, &clustered));
    assert!(sb.contains("bigalloc"), "{sb}");
    assert!(sb.contains("Cluster size:             8192"), "{sb}");

    // Narrow holes were filled at freeze: a handful of extents, whatever the size. Without
    // that, the clustered image has a hole in every cluster a small file leaves part-empty,
    // and filled in place it keeps an extent per file; rewritten it has a few.
    for digest in [&small, &large, &clustered] {
        let n = extents(&snapshot_image(&root, digest));
        assert!(n <= 64, "{digest}: {n} extents");
    }

    // The clustered image holds exactly what the generator says each image holds.
    let look = scratch.path().join("look");
    let frozen = mount_snapshot(&root, &clustered, &look);
    for image in &set.images {
        let chain = image.artifact.host_image().chain_ids();
        let merged = mount_chain(
            &look,
            &chain,
            &scratch.path().join(format!("merged-{}", image.name)),
        );
        assert_tree_eq(image.name, &image.expected, &walk(&merged.path));
    }
    let log = daemon.log();
    assert!(
        log.contains("rewritten: true"),
        "the clustered image of many small files was rewritten at freeze:\n{log}"
    );

    // The rewritten image holds what the same image unpacked into the 20 GiB cache holds.
    let chain = small_files.chain_ids();
    let look_small = scratch.path().join("look-small");
    let frozen_small = mount_snapshot(&root, &small, &look_small);
    let in_small = mount_chain(&look_small, &chain, &scratch.path().join("merged-s"));
    let in_large = mount_chain(&look, &chain, &scratch.path().join("merged-l"));
    let tree = walk(&in_small.path);
    assert!(tree.len() > 10_000, "{} entries", tree.len());
    assert_tree_eq("small files", &tree, &walk(&in_large.path));
    drop((in_small, in_large));
    frozen_small.unmount_and_detach().unwrap();
    frozen.unmount_and_detach().unwrap();

    // A disk larger than the cache: grown (resize2fs on a clustered filesystem), mounted,
    // writable, and as big as asked.
    let cache_id = daemon.cache_id("clustered");
    let out = daemon.cli_ok(&[
        "disk", "create", "--image", &refs[0], "--cache", &cache_id, "--size", "2100", "-o", "json",
    ]);
    let disk: serde_json::Value = serde_json::from_str(&out).unwrap();
    let status = &disk["status"];
    assert_eq!(status["phase"], "Ready", "{disk:#}");
    let mnt = Path::new(status["mountpoint"].as_str().unwrap()).to_owned();
    let stat = rustix::fs::statvfs(&mnt).unwrap();
    let size = stat.f_blocks * stat.f_frsize;
    assert!(
        size > 2050 << 30 && size <= 2100 << 30,
        "the disk's filesystem is {size} bytes"
    );
    std::fs::write(mnt.join("written-by-pod"), vec![7u8; 1 << 20]).unwrap();
    assert_eq!(
        std::fs::read(mnt.join("written-by-pod")).unwrap().len(),
        1 << 20
    );
    let id = disk["metadata"]["name"].as_str().unwrap();
    daemon.cli_ok(&["disk", "delete", id]);

    // The snapshot was never touched.
    let verified = daemon.cli_ok(&["verify", "clustered"]);
    assert!(verified.contains("verified"), "{verified}");
    for name in ["small", "large", "clustered"] {
        daemon.cli_ok(&["delete", name]);
    }
    daemon.stop();
    assert_no_leaks(&root);
}
