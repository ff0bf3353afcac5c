//! Cold pulls through the snapshotter (issue "Every pull on the node goes through
//! imagecache"), containerd 1.6 driven over CRI as the kubelet drives it:
//!
//! - an image no cache holds, pulled by two pods at once: the daemon pulls every layer
//!   itself, once, into one auto-created cache that is Ready afterwards; containerd fetches
//!   no layer blob (the registry's access log, by User-Agent); the container's root
//!   filesystem equals the one containerd's own overlayfs snapshotter makes of the image;
//! - the daemon's build failing (no loop device to be had) falls back to containerd's own
//!   pull: the pod still runs, and the fallback is counted.

mod snapshotter_util;
mod support;

use snapshotter_util::*;
use support::busybox::{busybox_layer, files_layer, image_with_cmd};
use support::containerd::ContainerdOptions;
use support::gen::features::feature_set;
use support::oci::{push_image, Image};
use support::scratch::assert_no_leaks;
use support::tree;

/// Every feature the generator covers under a layer of busybox, so a container runs in it.
fn feature_image() -> Image {
    let set = feature_set(11);
    let mut layers: Vec<_> = set.images[0].layers.iter().map(|l| l.to_layer()).collect();
    layers.push(busybox_layer().to_layer());
    image_with_cmd(layers, &["/bin/sh"])
}

/// Who fetched each of `image`'s layer blobs since `mark`: (daemon, containerd) counts.
fn layer_fetches(node: &Node, mark: support::registry::LogMark, image: &Image) -> (usize, usize) {
    let layers = layer_digests(&[image]);
    let by = node.registry.blobs_fetched_by_since(mark);
    let count = |agent: &str| {
        by.iter()
            .filter(|(digest, who)| layers.contains(digest) && who.starts_with(agent))
            .count()
    };
    (count("imagecache/"), count("containerd/"))
}

fn metric(node: &Node, kind: &str) -> u64 {
    let metrics = node.daemon.metrics();
    let series = format!("imagecache_snapshotter_pulls_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn an_uncached_image_is_pulled_by_the_daemon_once_and_containerd_fetches_no_layer() {
    let image = feature_image();
    let node = node_with_cache(&[]);
    push_image(&node.addr(), "cold", "v1", &image, None);
    let image_ref = node.image_ref("cold");
    let sandbox_image = node.image_ref("pause");

    // The reference: containerd alone, on its overlayfs snapshotter (fetching every layer).
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
    let layers = image.layers.len();
    assert_eq!(
        layer_fetches(&node, mark, &image),
        (0, layers),
        "containerd alone fetches every layer: the access log is read right"
    );

    // On imagecache's snapshotter, two pods pull it at once.
    let imagecache = ContainerdOptions {
        proxy_snapshotter: Some(node.daemon.snapshotter_socket()),
        ..overlayfs
    };
    let dir = node.scratch.path().join("ctrd-imagecache");
    let containerd = support::containerd::TestContainerd::start(&dir, &imagecache);
    let mark = node.registry.log_mark();
    std::thread::scope(|s| {
        for _ in 0..2 {
            let containerd = &containerd;
            let image_ref = &image_ref;
            s.spawn(move || containerd.cri().pull_image(image_ref));
        }
    });
    assert_eq!(
        layer_fetches(&node, mark, &image),
        (layers, 0),
        "the daemon fetches each layer once, containerd none\n{}",
        node.daemon.log()
    );
    let cached = metric(&node, "cached");
    assert!((1..=2).contains(&cached), "{cached}");
    let caches: serde_json::Value =
        serde_json::from_str(&node.daemon.cli_ok(&["get", "-o", "json"])).unwrap();
    let auto: Vec<&serde_json::Value> = caches["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["annotations"]["imagecache.io/auto-created"] == "true")
        .collect();
    assert_eq!(auto.len(), 1, "one cache for both pulls: {caches:#}");
    assert_eq!(auto[0]["status"]["phase"], "Ready", "{:#}", auto[0]);
    let held = auto[0]["spec"]["images"].to_string();
    assert!(held.contains(&image_ref), "{held}");

    let cri = containerd.cri();
    let pod_config = cri.pod_config("rootfs", "uid-rootfs", "default");
    let pod = cri.run_pod_sandbox_with(&pod_config);
    let (got, got_links) = sleeper_rootfs(&containerd, &cri, &pod, &pod_config, &image_ref);
    let differences = tree::diff(&expected, &got);
    assert!(
        expected.len() > 50 && differences.is_empty(),
        "the root filesystems differ ({} entries on overlayfs):\n{}",
        expected.len(),
        differences.join("\n")
    );
    assert_eq!(got_links, expected_links, "hardlink groups differ");
    remove_pod_and_images(&containerd, &cri, &pod, &[image_ref.clone(), sandbox_image]);
    drop(cri);
    drop(containerd);

    let dir = node.scratch.path().to_owned();
    drop(node.daemon);
    for sub in ["state", "ctrd-overlayfs", "ctrd-imagecache"] {
        assert_no_leaks(&dir.join(sub));
    }
}

#[test]
fn a_failed_build_falls_back_to_containerds_own_pull() {
    let mut node = node_with_cache(&[]);
    // busybox (which the pause image shares) and a layer of its own.
    let own = files_layer(&[("etc/fallback", "pulled by containerd\n")]).to_layer();
    let image = image_with_cmd(vec![busybox_layer().to_layer(), own], &["/bin/sh"]);
    push_image(&node.addr(), "fallback", "v1", &image, None);
    let image_ref = node.image_ref("fallback");
    // The kernel has no loop device to give: every build fails at its first attach.
    node.daemon.stop();
    assert!(node
        .daemon
        .spawn_with_env(&[("IMAGECACHE_FAULT_ERRNO", "loop.claim:ENOSPC")]));
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("fallback", "uid-fallback", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        let mark = node.registry.log_mark();
        cri.pull_image(&image_ref);
        let top = &image.layers[1].digest;
        let fetched = node.registry.blobs_fetched_by_since(mark);
        assert!(
            fetched
                .iter()
                .any(|(d, who)| d == top && who.starts_with("containerd/")),
            "{fetched:?}\n{}",
            node.daemon.log()
        );
        assert_eq!(metric(&node, "fallback_build_failed"), 1);
        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "runs",
            &image_ref,
            "cat /etc/fallback",
            &[],
        );
        assert_eq!(lines, vec!["pulled by containerd"]);
        remove_pod_and_images(
            &containerd,
            &cri,
            &pod,
            &[image_ref, node.image_ref("pause")],
        );
    }
    assert_node_clean(node);
}

/// The daemon killed half way through a cold pull's build (a fault point in its second
/// layer): containerd's pull fails as a pull fails when its snapshotter goes away, and the
/// kubelet's retry, once the daemon is back, completes by containerd's own pull (the killed
/// build's cache is Failed, not left half made). Nothing is left: no snapshot, no work file.
#[test]
fn a_daemon_killed_mid_cold_pull_leaves_a_retry_that_completes() {
    let mut node = node_with_cache(&[]);
    let own = files_layer(&[("etc/retried", "pulled on the retry\n")]).to_layer();
    let top = files_layer(&[("etc/top", "second layer\n")]).to_layer();
    let image = image_with_cmd(vec![busybox_layer().to_layer(), own, top], &["/bin/sh"]);
    push_image(&node.addr(), "killed", "v1", &image, None);
    let image_ref = node.image_ref("killed");
    node.daemon.stop();
    assert!(node
        .daemon
        .spawn_with_env(&[("IMAGECACHE_FAULT_POINT", "build.layer:2")]));
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("killed", "uid-killed", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        let first = cri.try_pull_image(&image_ref);
        assert!(
            node.daemon
                .wait_exit(std::time::Duration::from_secs(30))
                .is_some(),
            "the fault point did not fire:\n{}",
            node.daemon.log()
        );
        assert!(first.is_err(), "the pull went on without its snapshotter");
        assert!(node.daemon.log().contains("fault point build.layer"));

        // Back up, unarmed: the interrupted cache is Failed, none is left building.
        node.daemon.spawn();
        let caches: serde_json::Value =
            serde_json::from_str(&node.daemon.cli_ok(&["get", "-o", "json"])).unwrap();
        for cache in caches["items"].as_array().unwrap() {
            let phase = &cache["status"]["phase"];
            assert!(phase == "Ready" || phase == "Failed", "{cache:#}");
        }
        // The kubelet retries; containerd redials the snapshotter within a second or so.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let retried = loop {
            match cri.try_pull_image(&image_ref) {
                Ok(id) => break id,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("retry: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => panic!("the retried pull failed: {e}\n{}", node.daemon.log()),
            }
        };
        assert!(!retried.is_empty());
        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "runs",
            &image_ref,
            "cat /etc/retried",
            &[],
        );
        assert_eq!(lines, vec!["pulled on the retry"]);
        remove_pod_and_images(
            &containerd,
            &cri,
            &pod,
            &[image_ref, node.image_ref("pause")],
        );
    }
    let work = node.daemon.root.join("work");
    let left = std::fs::read_dir(&work).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "work files left under {}", work.display());
    assert_node_clean(node);
}
