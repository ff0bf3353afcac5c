//! Large caches and cheap clones: a 1 TiB cache is formatted with bigalloc clusters (so its
//! mount time does not grow with its size), still holds exactly the images' files, and
//! clones into a larger disk that the workload can use; frozen images of every size keep few
//! extents (so FICLONE stays cheap), including one of thousands of small files, which leaves
//! a hole in nearly every 128 KiB cluster of the large cache until freezing rewrites it.

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
fn a_1tib_cache_uses_clusters_holds_its_images_and_clones_into_a_bigger_disk() {
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

    for (name, size) in [("small", 20), ("large", 1024)] {
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
    let (small, large) = (digest_of("small"), digest_of("large"));

    // The 1 TiB image has 128 KiB clusters: 256 groups instead of 8,192.
    let sb = superblock(&snapshot_image(&root, &large));
    assert!(sb.contains("bigalloc"), "{sb}");
    assert!(sb.contains("Cluster size:             131072"), "{sb}");
    assert!(!superblock(&snapshot_image(&root, &small)).contains("bigalloc"));

    // Narrow holes were filled at freeze: a handful of extents, whatever the size. Without
    // that, the 1 TiB image has a hole in every cluster a small file leaves part-empty, and
    // filled in place it keeps an extent per file; rewritten it has a few.
    for digest in [&small, &large] {
        let n = extents(&snapshot_image(&root, digest));
        assert!(n <= 64, "{digest}: {n} extents");
    }

    // The clustered image holds exactly what the generator says each image holds.
    let look = scratch.path().join("look");
    let frozen = mount_snapshot(&root, &large, &look);
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
        "the 1 TiB image of many small files was rewritten at freeze:\n{log}"
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
    let cache_id = daemon.get_json("large")["status"]["imageCacheId"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = daemon.cli_ok(&[
        "disk", "create", "--image", &refs[0], "--cache", &cache_id, "--size", "1100", "-o", "json",
    ]);
    let disk: serde_json::Value = serde_json::from_str(&out).unwrap();
    let status = &disk["status"];
    assert_eq!(status["phase"], "Ready", "{disk:#}");
    let mnt = Path::new(status["mountpoint"].as_str().unwrap()).to_owned();
    let stat = rustix::fs::statvfs(&mnt).unwrap();
    let size = stat.f_blocks * stat.f_frsize;
    assert!(
        size > 1050 << 30 && size <= 1100 << 30,
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
    let verified = daemon.cli_ok(&["verify", "large"]);
    assert!(verified.contains("verified"), "{verified}");
    daemon.cli_ok(&["delete", "small"]);
    daemon.cli_ok(&["delete", "large"]);
    daemon.stop();
    assert_no_leaks(&root);
}
