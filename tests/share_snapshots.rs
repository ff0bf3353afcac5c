//! Frozen snapshots shared through an OCI registry between two nodes (issue "Build once per
//! cluster"), with two real daemons on separate state roots, one image registry and one share
//! registry on 127.0.0.1:
//!
//! - node A builds a cache and pushes its snapshot (`Pushed`, `status.sharedAs`); node B's
//!   create of the same ImageCache imports it: the same snapshot digest, `source: imported`,
//!   `verify` passes, no layer blob fetched from the image registry (A's build fetched them
//!   all: the log parse is shown to see them), and a disk cloned on B shows the image's tree;
//! - a chunk tampered with in the share registry: B's import is refused naming the chunk
//!   (`ImportFailed`), and B builds the cache itself (`source: built`).

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::cachefs::mount_chain;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::oci::Artifact;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

const SHARE_REPO: &str = "imagecache/snapshots";

/// A daemon on `root` sharing through `share`.
fn node(root: &Path, registries: &[&str], share: &str) -> TestDaemon {
    TestDaemon::start_sharing(root, registries, &format!("{share}/{SHARE_REPO}"))
}

fn ready(daemon: &TestDaemon, name: &str, images: &[String]) -> Value {
    let out = daemon.create(&cache_yaml(name, images, "  imageCacheSize: 20\n"), true);
    assert!(
        out.status.success(),
        "create {name}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let cache = daemon.get_json(name);
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    cache
}

fn events(cache: &Value, reason: &str) -> Vec<String> {
    cache["status"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits for the cache's push to end; its `sharedAs`.
fn pushed(daemon: &TestDaemon, name: &str) -> String {
    let cache = daemon.wait_until(name, Duration::from_secs(120), |c| {
        !events(c, "Pushed").is_empty() || !events(c, "PushFailed").is_empty()
    });
    assert!(
        events(&cache, "PushFailed").is_empty(),
        "{cache:#}\n{}",
        daemon.log()
    );
    cache["status"]["sharedAs"]
        .as_str()
        .unwrap_or_else(|| panic!("no sharedAs: {cache:#}"))
        .to_owned()
}

fn layer_digests(artifact: &Artifact) -> Vec<String> {
    artifact
        .host_image()
        .layers
        .iter()
        .map(|l| l.digest.clone())
        .collect()
}

#[test]
fn a_snapshot_built_on_one_node_is_imported_by_another_and_a_tampered_one_is_not() {
    let scratch = ScratchXfs::new(64 << 30);
    let images = TestRegistry::start();
    let share = TestRegistry::start();
    let (img_addr, share_addr) = (images.addr(), share.addr());
    let set = feature_set(7);
    let refs = set.push_all(&img_addr, None);
    let (root_a, root_b) = (scratch.path().join("a"), scratch.path().join("b"));
    let a = node(&root_a, &[&img_addr, &share_addr], &share_addr);
    let b = node(&root_b, &[&img_addr, &share_addr], &share_addr);
    let alpha = set.get("alpha");

    // Node A builds (fetching every layer) and pushes.
    let mark = images.log_mark();
    let built = ready(&a, "app", &refs[..1]);
    assert_eq!(built["status"]["source"], "built", "{built:#}");
    let fetched = images.blobs_fetched_since(mark);
    for layer in layer_digests(&alpha.artifact) {
        assert!(
            fetched.contains(&layer),
            "A's build did not fetch {layer}: {fetched:?}"
        );
    }
    let shared_as = pushed(&a, "app");
    assert!(
        shared_as.starts_with(&format!("{share_addr}/{SHARE_REPO}@sha256:")),
        "{shared_as}"
    );

    // Node B imports it: same snapshot, nothing but manifests and configs from the images'
    // registry.
    let mark = images.log_mark();
    let imported = ready(&b, "app", &refs[..1]);
    assert_eq!(
        imported["status"]["source"],
        "imported",
        "{imported:#}\n{}",
        b.log()
    );
    assert_eq!(
        imported["status"]["snapshotDigest"], built["status"]["snapshotDigest"],
        "{imported:#}"
    );
    assert_eq!(events(&imported, "Imported").len(), 1, "{imported:#}");
    let fetched = images.blobs_fetched_since(mark);
    for layer in layer_digests(&alpha.artifact) {
        assert!(
            !fetched.contains(&layer),
            "B fetched layer {layer}: {fetched:?}"
        );
    }
    let verified = b.cli_ok(&["verify", "app"]);
    assert!(verified.contains("verified"), "{verified}");
    // An imported cache is not pushed again.
    assert!(imported["status"]["sharedAs"].is_null(), "{imported:#}");

    // A disk cloned on B shows the image as the generator made it.
    let disk = b.disk_create(&["--image", &refs[0]]);
    assert_eq!(
        disk["status"]["cacheId"], imported["status"]["imageCacheId"],
        "{disk:#}"
    );
    let mnt = std::path::PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap());
    let merged = mount_chain(
        &mnt,
        &alpha.artifact.host_image().chain_ids(),
        &scratch.path().join("merged"),
    );
    assert_tree_eq("alpha", &alpha.expected, &walk(&merged.path));
    drop(merged);
    b.cli_ok(&["disk", "delete", disk["metadata"]["name"].as_str().unwrap()]);

    // A chunk tampered with in the share registry: refused, naming it; B builds instead.
    ready(&a, "second", &refs[1..2]);
    let shared_as = pushed(&a, "second");
    let manifest_digest = shared_as.rsplit_once('@').unwrap().1;
    let client = support::oci::RegistryClient::new(&share_addr, None);
    let manifest: Value =
        serde_json::from_slice(&client.get_manifest(SHARE_REPO, manifest_digest).unwrap().1)
            .unwrap();
    let chunk = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    share.corrupt_blob(&chunk, 0);
    let second = ready(&b, "second", &refs[1..2]);
    assert_eq!(second["status"]["source"], "built", "{second:#}");
    let refused = events(&second, "ImportFailed");
    assert_eq!(refused.len(), 1, "{second:#}");
    assert!(
        refused[0].contains("chunk 0 at offset") && refused[0].contains(&chunk),
        "{refused:?}"
    );

    drop(a);
    drop(b);
    assert_no_leaks(&root_a);
    assert_no_leaks(&root_b);
}
