//! A container's root filesystem, seen from inside it (`/proc/<pid>/root`), is the same on
//! imagecache's snapshotter (layers from a Ready cache) as on containerd's own overlayfs
//! snapshotter, entry by entry: type, mode, owner, size, content digest, symlink target,
//! device numbers, xattrs, file mtimes and hardlink groups. The imagecache run is also shown
//! to be served from the cache: no layer fetched (where containerd alone fetched each one)
//! and every lower directory of the container's overlay inside the cache's mounted image.

mod snapshotter_util;
mod support;

use snapshotter_util::*;
use support::busybox::{busybox_layer, image_with_cmd};
use support::containerd::ContainerdOptions;
use support::gen::features::feature_set;
use support::oci::Image;
use support::scratch::assert_no_leaks;
use support::tree;

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

    let layers = layer_digests(&[&image]);
    let overlayfs = ContainerdOptions {
        registry: node.addr(),
        sandbox_image: sandbox_image.clone(),
        proxy_snapshotter: None,
    };
    let mark = node.registry.log_mark();
    let (expected, expected_links) = container_rootfs(
        &node.scratch.path().join("ctrd-overlayfs"),
        &overlayfs,
        &image_ref,
    );
    // The control: containerd alone fetches every layer, so the registry's log is read
    // right and the check below of the imagecache run means something.
    let fetched = node.registry.blobs_fetched_since(mark);
    for layer in &layers {
        assert!(
            fetched.contains(layer),
            "containerd alone did not fetch layer {layer}: {fetched:?}"
        );
    }
    let imagecache = ContainerdOptions {
        proxy_snapshotter: Some(node.daemon.snapshotter_socket()),
        ..overlayfs
    };
    let mark = node.registry.log_mark();
    let seen = container_rootfs_seen(
        &node.scratch.path().join("ctrd-imagecache"),
        &imagecache,
        &image_ref,
    );
    let (got, got_links) = (seen.tree, seen.links);

    // Served from the cache: no layer fetched, and every layer the container reads lies in
    // the cache's mounted image.
    let fetched = node.registry.blobs_fetched_since(mark);
    let refetched: Vec<_> = layers.iter().filter(|l| fetched.contains(l)).collect();
    assert!(
        refetched.is_empty(),
        "layers fetched with the cache Ready: {refetched:?}"
    );
    let caches = node
        .scratch
        .path()
        .join("state/snapshotter/caches")
        .canonicalize()
        .unwrap();
    assert_eq!(
        seen.lowerdirs.len(),
        layers.len(),
        "one lower per layer: {:?}",
        seen.lowerdirs
    );
    for lower in &seen.lowerdirs {
        assert!(
            lower.starts_with(&caches),
            "layer read from {}, not from a cache under {}",
            lower.display(),
            caches.display()
        );
    }

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
