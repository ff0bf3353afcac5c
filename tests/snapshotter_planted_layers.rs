//! A pod cannot plant a cached layer under another image's name (containerd 1.6 over CRI,
//! as the kubelet drives it). CRI copies a pod's `containerd.io/snapshot.ref` annotation into
//! its sandbox's Prepare, and containerd's metadata later answers a pull of the real image
//! "already exists" by that name alone. So a pod annotated with the chainID of a cached image's
//! top layer, stacked over its own image, must not get that layer recorded there: the pod runs
//! as any other, no snapshot of that name exists afterwards, and a later pull and run of the
//! victim image shows exactly the tree containerd's own overlayfs snapshotter makes of it.

mod snapshotter_util;
mod support;

use snapshotter_util::*;
use support::containerd::{ContainerdOptions, TestContainerd};
use support::scratch::assert_no_leaks;
use support::tree;

const LABEL_TARGET: &str = "containerd.io/snapshot.ref";

#[test]
fn a_pod_annotated_with_a_cached_chain_id_plants_nothing() {
    // busybox, a layer of files, a layer on top; the pause image is busybox alone, so the
    // attacker's sandbox stacks on busybox while the cache recorded the top layer over the
    // files layer.
    let victim = layered_image();
    let chain = victim.chain_ids();
    let planted = chain[2].clone();
    let node = node_with_cache(&[("victim", &victim)]);
    let victim_ref = node.image_ref("victim");
    let overlayfs = ContainerdOptions {
        registry: node.addr(),
        sandbox_image: node.image_ref("pause"),
        proxy_snapshotter: None,
    };
    let (expected, expected_links) = container_rootfs(
        &node.scratch.path().join("ctrd-ref"),
        &overlayfs,
        &victim_ref,
    );
    assert!(
        expected.contains_key("etc/greeting"),
        "the reference run has the victim's middle layer"
    );

    let imagecache = ContainerdOptions {
        proxy_snapshotter: Some(node.daemon.snapshotter_socket()),
        ..overlayfs
    };
    {
        let containerd =
            TestContainerd::start(&node.scratch.path().join("ctrd-imagecache"), &imagecache);
        let cri = containerd.cri();
        let mut attacker = cri.pod_config("attacker", "uid-attacker", "tenant-a");
        attacker
            .annotations
            .insert(LABEL_TARGET.into(), planted.clone());
        let attacker_pod = cri
            .try_run_pod_sandbox_with(&attacker)
            .unwrap_or_else(|e| panic!("the annotated pod is refused: {e}"));
        assert!(
            !snapshot_names(&containerd).contains(&planted),
            "the pod planted {planted}: {:?}",
            snapshot_names(&containerd)
        );

        let pod_config = cri.pod_config("victim", "uid-victim", "tenant-b");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        cri.pull_image(&victim_ref);
        let info =
            containerd.ctr_ok(&["snapshots", "--snapshotter", "imagecache", "info", &planted]);
        let parent = serde_json::from_str::<serde_json::Value>(&info).unwrap()["Parent"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(
            parent.as_deref(),
            Some(chain[1].as_str()),
            "the victim's top layer sits on another chain: {info}"
        );
        let (got, got_links) = sleeper_rootfs(&containerd, &cri, &pod, &pod_config, &victim_ref);
        let differences = tree::diff(&expected, &got);
        assert!(
            differences.is_empty(),
            "the victim's root filesystem is not its own:\n{}",
            differences.join("\n")
        );
        assert_eq!(got_links, expected_links, "hardlink groups differ");

        cri.stop_pod_sandbox(&attacker_pod);
        cri.remove_pod_sandbox(&attacker_pod);
        let images = [victim_ref.clone(), node.image_ref("pause")];
        remove_pod_and_images(&containerd, &cri, &pod, &images);
    }
    let dir = node.scratch.path().to_owned();
    drop(node.daemon);
    for sub in ["state", "ctrd-ref", "ctrd-imagecache"] {
        assert_no_leaks(&dir.join(sub));
    }
}
