//! The build path end to end: generated feature images pushed to a real registry, a cache
//! built through the CLI against a running daemon, the frozen image checked entry by entry
//! against what the generator says each image holds, then verified, corrupted and deleted.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use support::cachefs::{mount_chain, mount_snapshot};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

#[test]
fn feature_images_build_into_a_frozen_cache_that_matches_the_generator() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(7);
    let refs = set.push_all(&addr, None);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);

    let yaml = cache_yaml(
        "features",
        &refs,
        "  imageCacheSize: 20\n  retentionDays: 3\n",
    );
    let out = daemon.create(&yaml, true);
    assert!(
        out.status.success(),
        "create --wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let cache = daemon.get_json("features");
    let status = &cache["status"];
    assert_eq!(status["phase"], "Ready", "{cache:#}");
    assert_eq!(status["progress"], "100%");
    assert!(status["imageCacheId"].as_str().unwrap().starts_with("imc-"));
    assert!(
        status["expireDateTime"].is_string(),
        "retention sets an expiry"
    );
    let digest = status["snapshotDigest"].as_str().unwrap().to_owned();
    let reasons: Vec<&str> = status["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "Pulled").count(),
        3,
        "one Pulled event per image: {reasons:?}"
    );
    assert!(reasons.contains(&"Frozen"), "{reasons:?}");

    // The table an operator sees.
    let table = daemon.cli_ok(&["get"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("features") && table.contains("Ready") && table.contains("100%"),
        "{table}"
    );
    let described = daemon.cli_ok(&["describe", "features"]);
    assert!(described.contains("Froze snapshot sha256:"), "{described}");
    let yaml_out = daemon.cli_ok(&["get", "features", "-o", "yaml"]);
    assert!(yaml_out.contains("snapshotDigest:"), "{yaml_out}");

    // The frozen image, mounted read-only, holds the documented layout.
    let look = scratch.path().join("look");
    let frozen = mount_snapshot(&root, &digest, &look);
    assert_eq!(
        std::fs::read_to_string(look.join("oci-layout"))
            .unwrap()
            .replace(char::is_whitespace, ""),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(look.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    for r in &refs {
        assert!(
            names.contains(&r.as_str()),
            "index.json names {names:?}, missing {r}"
        );
    }
    for m in index["manifests"].as_array().unwrap() {
        let hex = m["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        assert!(
            look.join("blobs/sha256").join(hex).is_file(),
            "manifest blob {hex} kept"
        );
    }
    let snapshots: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(look.join("snapshots.json")).unwrap()).unwrap();

    for image in &set.images {
        let host = image.artifact.host_image();
        let chain = host.chain_ids();
        let diff_ids = host.diff_ids();
        let reference = format!("{addr}/{}:{}", image.repo, image.tag);
        for (i, c) in chain.iter().enumerate() {
            let entry = snapshots
                .get(c)
                .unwrap_or_else(|| panic!("snapshots.json lacks {c}"));
            assert_eq!(entry["diffID"], diff_ids[i].as_str());
            let parent = if i == 0 {
                serde_json::Value::Null
            } else {
                chain[i - 1].clone().into()
            };
            assert_eq!(entry["parent"], parent, "parent of {c}");
            assert!(
                entry["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == reference.as_str()),
                "{c} lists {reference}"
            );
        }
        // The config blob of each image is kept too.
        let config_hex = host.config_digest.strip_prefix("sha256:").unwrap();
        assert!(
            look.join("blobs/sha256").join(config_hex).is_file(),
            "config of {}",
            image.name
        );

        let merged = mount_chain(
            &look,
            &chain,
            &scratch.path().join(format!("merged-{}", image.name)),
        );
        assert_tree_eq(image.name, &image.expected, &walk(&merged.path));
    }
    // The shared base layer was unpacked once, for all three images.
    let base = set.images[0].artifact.host_image().chain_ids()[0].clone();
    assert_eq!(
        snapshots[&base]["images"].as_array().unwrap().len(),
        3,
        "{:#}",
        snapshots[&base]
    );
    frozen.unmount_and_detach().unwrap();

    // verify passes on the fresh snapshot ...
    let verified = daemon.cli_ok(&["verify", "features"]);
    assert!(verified.contains("verified"), "{verified}");
    // ... and a copy with one byte flipped is caught at exactly that chunk.
    let hex = digest.strip_prefix("sha256:").unwrap();
    let snap_dir = root.join("snapshots/sha256").join(hex);
    let manifest = imagecache::block_snapshot::ChunkManifest::from_slice(
        &std::fs::read(snap_dir.join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest.digest(),
        digest,
        "the snapshot is named by its manifest's digest"
    );
    let copy = scratch.path().join("copy.img");
    imagecache::sys::LinuxSys.reflink_or_copy(&snap_dir.join("disk.img"), &copy);
    let chunk = &manifest.chunks[manifest.chunks.len() / 2];
    let at = chunk.offset + chunk.length / 2;
    flip_byte(&copy, at);
    let report = imagecache::block_snapshot::verify_file(&copy, &manifest).unwrap();
    assert_eq!(report.mismatched.len(), 1, "{report}");
    assert_eq!(report.mismatched[0].offset, chunk.offset);
    // Through the CLI as well, on the stored image itself.
    flip_byte(&snap_dir.join("disk.img"), at);
    let out = daemon.cli(&["verify", "features"]);
    assert!(
        !out.status.success(),
        "verify must fail on a corrupted snapshot"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("chunk at offset {}", chunk.offset)),
        "{stderr}"
    );

    // Delete: the cache and its snapshot go, and nothing is left mounted or attached.
    daemon.cli_ok(&["delete", "features"]);
    assert!(!snap_dir.exists(), "the snapshot went with its only cache");
    let out = daemon.cli(&["get", "features"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"));
    daemon.stop();
    assert_no_leaks(&root);
    assert_eq!(
        std::fs::read_dir(root.join("work")).unwrap().count(),
        0,
        "work dir is empty"
    );
}

fn flip_byte(path: &std::path::Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

trait CopyExt {
    fn reflink_or_copy(&self, src: &std::path::Path, dst: &std::path::Path);
}

impl CopyExt for imagecache::sys::LinuxSys {
    fn reflink_or_copy(&self, src: &std::path::Path, dst: &std::path::Path) {
        use imagecache::sys::Sys;
        if self.reflink(src, dst).is_err() {
            std::fs::copy(src, dst).unwrap();
        }
        // The copy is ours to corrupt; the reflinked source stays read-only.
        let mut perms = std::fs::metadata(dst).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(dst, perms).unwrap();
    }
}
