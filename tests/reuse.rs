//! Cache reuse (`k8s.aliyun.com/imc-enable-reuse: "true"`): a new cache is built from a
//! reflink clone of the best-matching Ready cache, only the images that one lacks are pulled,
//! and the new snapshot shares the parent's unchanged blocks on disk.

mod support;

use std::process::Command;

use support::cachefs::{mount_chain, mount_snapshot};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

/// Extents of `file` that XFS reports as shared with another file (reflinked).
fn shared_extents(file: &std::path::Path) -> usize {
    let out = Command::new("filefrag")
        .arg("-v")
        .arg(file)
        .output()
        .expect("filefrag runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("shared"))
        .count()
}

#[test]
fn a_reused_cache_pulls_only_what_its_parent_lacks_and_shares_its_blocks() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(11);
    let refs = set.push_all(&addr, None);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);

    let parent_id = daemon.ready_cache_id("parent", &refs[..2], "");

    let child_images = vec![refs[0].clone(), refs[2].clone()];
    let yaml = cache_yaml("child", &child_images, "").replace(
        "metadata:\n  name: child\n",
        "metadata:\n  name: child\n  annotations:\n    k8s.aliyun.com/imc-enable-reuse: \"true\"\n",
    );
    let out = daemon.create(&yaml, true);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let child = daemon.get_json("child");
    let events = child["status"]["events"].as_array().unwrap();
    let reusing = events
        .iter()
        .find(|e| e["reason"] == "Reusing")
        .unwrap_or_else(|| panic!("no Reusing event: {events:#?}"));
    let message = reusing["message"].as_str().unwrap();
    assert!(message.contains(&parent_id), "{message}");
    assert!(
        message.contains(&refs[2]) && !message.contains(&refs[1]),
        "only charlie is pulled: {message}"
    );
    // alpha came with the parent: the child pulled exactly one image.
    assert_eq!(
        events.iter().filter(|e| e["reason"] == "Pulled").count(),
        1,
        "{events:#?}"
    );

    let digest = child["status"]["snapshotDigest"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = root
        .join("snapshots/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
        .join("disk.img");
    assert!(
        shared_extents(&image) > 0,
        "the child's image shares blocks with its parent"
    );

    // Both requested images are complete in the child.
    let look = scratch.path().join("look");
    let frozen = mount_snapshot(&root, &digest, &look);
    for name in ["alpha", "charlie"] {
        let image = set.get(name);
        let merged = mount_chain(
            &look,
            &image.artifact.host_image().chain_ids(),
            &scratch.path().join(format!("m-{name}")),
        );
        assert_tree_eq(name, &image.expected, &walk(&merged.path));
    }
    frozen.unmount_and_detach().unwrap();
    assert!(daemon.cli_ok(&["verify", "child"]).contains("verified"));

    daemon.cli_ok(&["delete", "child"]);
    daemon.cli_ok(&["delete", "parent"]);
    daemon.stop();
    assert_no_leaks(&root);
}
