//! A container's root filesystem, seen from inside it (`/proc/<pid>/root`), is the same on
//! imagecache's snapshotter (layers from a Ready cache) as on containerd's own overlayfs
//! snapshotter, entry by entry: type, mode, owner, size, content digest, symlink target,
//! device numbers, xattrs, file mtimes and hardlink groups.

mod snapshotter_util;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use snapshotter_util::*;
use support::busybox::{busybox_layer, image_with_cmd};
use support::containerd::{ContainerdOptions, TestContainerd};
use support::cri::{wait_log_line, Cri};
use support::gen::features::feature_set;
use support::oci::Image;
use support::scratch::assert_no_leaks;
use support::tree::{self, Tree};

/// The mount points inside the container (its mount namespace's view), relative to its root:
/// proc, sys, dev, the runtime's /etc files. The root filesystem is what is not under them.
fn mount_points(pid: u32) -> BTreeSet<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.trim_start_matches('/').replace("\\040", " "))
        .filter(|m| !m.is_empty())
        .collect()
}

/// The container's root filesystem as its processes see it, without the filesystems mounted
/// on it: what the snapshotter made. Files of an overlay report their layer's device, so the
/// mount table, not st_dev, tells what to leave out.
fn rootfs(pid: u32) -> (Tree, BTreeSet<BTreeSet<String>>) {
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    let mounted = mount_points(pid);
    let mut tree = Tree::new();
    let mut inodes: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap().flatten() {
            let name = entry.file_name().into_string().expect("UTF-8 name");
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if mounted.contains(&rel) {
                continue;
            }
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_file() && meta.nlink() > 1 {
                inodes.entry(meta.ino()).or_default().insert(rel.clone());
            }
            if meta.is_dir() {
                stack.push(rel.clone());
            }
            tree.insert(rel, tree::read_entry(&path).unwrap());
        }
    }
    (tree, inodes.into_values().collect())
}

/// Runs a container of `image` that sleeps, on containerd with `opts`, and returns what its
/// root filesystem holds.
fn container_rootfs(
    dir: &Path,
    opts: &ContainerdOptions,
    image: &str,
) -> (Tree, BTreeSet<BTreeSet<String>>) {
    let containerd = TestContainerd::start(dir, opts);
    let cri = containerd.cri();
    let pod_config = cri.pod_config("rootfs", "uid-rootfs", "default");
    let pod = cri.run_pod_sandbox_with(&pod_config);
    cri.pull_image(image);
    let log_path = "sleeper/0.log";
    let id = cri.create_container(
        &pod,
        &pod_config,
        "sleeper",
        image,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo up; exec /bin/busybox sleep 600",
        ],
        &[],
        &[],
        log_path,
    );
    cri.start_container(&id);
    wait_log_line(
        &Cri::log_file(&pod_config, log_path),
        Duration::from_secs(30),
    );
    let tasks = containerd.ctr_ok(&["tasks", "ls"]);
    let pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no task for {id}: {tasks}"));
    let seen = rootfs(pid);
    cri.stop_pod_sandbox(&pod);
    cri.remove_pod_sandbox(&pod);
    for image in cri.list_images() {
        for tag in image.repo_tags {
            cri.remove_image(&tag);
        }
    }
    seen
}

/// Every feature the test kit's generator covers (whiteouts, opaque dirs, hardlinks, devices,
/// xattrs, long names, ...) under a layer of busybox, so a container can run in it.
fn feature_image() -> Image {
    let set = feature_set(7);
    let mut layers: Vec<_> = set.images[0].layers.iter().map(|l| l.to_layer()).collect();
    layers.push(busybox_layer().to_layer());
    image_with_cmd(layers, &["/bin/sh"])
}

#[test]
fn a_containers_root_filesystem_is_the_same_on_imagecache_as_on_overlayfs() {
    let image = feature_image();
    let node = node_with_cache(&[("features", &image)]);
    let image_ref = node.image_ref("features");
    let sandbox_image = node.image_ref("pause");

    let overlayfs = ContainerdOptions {
        registry: node.addr(),
        sandbox_image: sandbox_image.clone(),
        proxy_snapshotter: None,
    };
    let (expected, expected_links) = container_rootfs(
        &node.scratch.path().join("ctrd-overlayfs"),
        &overlayfs,
        &image_ref,
    );
    let imagecache = ContainerdOptions {
        proxy_snapshotter: Some(node.daemon.snapshotter_socket()),
        ..overlayfs
    };
    let (got, got_links) = container_rootfs(
        &node.scratch.path().join("ctrd-imagecache"),
        &imagecache,
        &image_ref,
    );

    assert!(
        expected.len() > 50,
        "too few entries to mean much: {}",
        expected.len()
    );
    let differences = tree::diff(&expected, &got);
    assert!(
        differences.is_empty(),
        "the root filesystems differ ({} entries on overlayfs):\n{}",
        expected.len(),
        differences.join("\n")
    );
    assert!(!expected_links.is_empty(), "the image has hardlinks");
    assert_eq!(got_links, expected_links, "hardlink groups differ");

    let dir = node.scratch.path().to_owned();
    drop(node.daemon);
    for sub in ["state", "ctrd-overlayfs", "ctrd-imagecache"] {
        assert_no_leaks(&dir.join(sub));
    }
}
