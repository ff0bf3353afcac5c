//! containerd 1.6 on imagecache's snapshotter, driven over CRI as the kubelet drives it:
//! an image a Ready cache holds is pulled with no layer blob fetched and its containers run
//! from the cache's layers; images the caches hold in part or not at all are pulled by the
//! daemon (cold pulls, snapshotter_pulls), fetching only what no cache holds; removing the pod and the image leaves no snapshot, mount or loop device.

mod snapshotter_util;
mod support;

use std::time::{Duration, Instant};

use snapshotter_util::*;
use support::busybox::{busybox_layer, files_layer, image_with_cmd};
use support::oci::push_image;

#[test]
fn a_cached_image_is_pulled_without_a_layer_and_runs_from_the_cache() {
    let image = layered_image();
    let node = node_with_cache(&[("layered", &image)]);
    let image_ref = node.image_ref("layered");
    let state = node.scratch.path().join("state");
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let mark = node.registry.log_mark();
        let pod_config = cri.pod_config("cached", "uid-cached", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        let started = Instant::now();
        cri.pull_image(&image_ref);
        let pull = started.elapsed();
        let fetched = node.registry.blobs_fetched_since(mark);
        for layer in layer_digests(&[&image, &node.pause]) {
            assert!(
                !fetched.contains(&layer),
                "layer {layer} was fetched: {fetched:?}"
            );
        }
        assert!(
            fetched.contains(&image.config_digest),
            "config not fetched: {fetched:?}"
        );
        eprintln!("PullImage of a cached image: {pull:?}");
        // 150 ms with other tests and builds on the machine: the manifest, the config and
        // one snapshotter round trip per layer. A pull that waited on a build, a lock or a
        // retry takes seconds.
        assert!(
            pull < Duration::from_secs(1),
            "PullImage of a cached image took {pull:?}"
        );

        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "reader",
            &image_ref,
            "/bin/busybox cat /etc/greeting /etc/top; test -e /etc/doomed && echo doomed-present || echo doomed-absent",
            &[],
        );
        assert_eq!(
            lines,
            vec!["hello from layer 2", "from the top layer", "doomed-absent"]
        );
        // One read-only mount of the cache image serves every layer.
        let caches = state.join("snapshotter/caches");
        assert_eq!(
            mounts_under(&caches).len(),
            1,
            "{:?}",
            mounts_under(&caches)
        );
        let names = snapshot_names(&containerd);
        for chain in image.chain_ids() {
            assert!(names.contains(&chain), "{chain} not listed: {names:?}");
        }

        // What an operator sees: the config to give containerd, and the snapshots by kind
        // (the image's three layers, the pause image's one shared with it).
        assert_eq!(
            node.daemon.cli_ok(&["containerd-config"]),
            imagecache::snapshotter_grpc::containerd_config(
                &node.daemon.snapshotter_socket(),
                Some(&node.daemon.cri_image_socket())
            )
        );
        let info: serde_json::Value =
            serde_json::from_str(&node.daemon.cli_ok(&["info", "-o", "json"])).unwrap();
        assert_eq!(info["containerdSnapshots"]["committed"], 3, "{info:#}");
        assert!(
            info["containerdSnapshots"]["active"].as_u64().unwrap() >= 1,
            "{info:#}"
        );
        let text = node.daemon.cli_ok(&["info"]);
        assert!(text.contains("3 committed"), "{text}");

        remove_pod_and_images(
            &containerd,
            &cri,
            &pod,
            &[image_ref.clone(), node.image_ref("pause")],
        );
        assert!(
            mounts_under(&caches).is_empty(),
            "{:?}",
            mounts_under(&caches)
        );
        let left = entries(&state.join("snapshotter/snapshots"));
        assert!(left.is_empty(), "snapshot directories left: {left:?}");
    }
    assert_node_clean(node);
}

#[test]
fn partly_cached_and_uncached_images_fetch_only_what_no_cache_holds() {
    let base = layered_image();
    let node = node_with_cache(&[("base", &base)]);
    // The cached image's layers and one more on top.
    let mut extra = base.layers.clone();
    extra.push(files_layer(&[("etc/extra", "only in the registry\n")]).to_layer());
    let partial = image_with_cmd(extra, &["/bin/sh"]);
    push_image(&node.addr(), "partial", "v1", &partial, None);
    // Nothing in common with any cache (its base layer differs in one file).
    let mut own_base = busybox_layer();
    own_base.file("etc/own", "uncached\n".as_bytes().to_vec());
    let uncached = image_with_cmd(vec![own_base.to_layer()], &["/bin/sh"]);
    push_image(&node.addr(), "uncached", "v1", &uncached, None);
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("mixed", "uid-mixed", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);

        // Each pull goes through the daemon (snapshotter_pulls): its auto-created cache
        // starts from a clone of the cache holding the base, so only the layer no cache holds
        // is fetched, by the daemon; containerd fetches none.
        let mark = node.registry.log_mark();
        cri.pull_image(&node.image_ref("partial"));
        let fetched = node.registry.blobs_fetched_since(mark);
        let layers = layer_digests(&[&partial, &uncached]);
        let by_containerd = |mark| {
            node.registry
                .blobs_fetched_by_since(mark)
                .into_iter()
                .filter(|(digest, who)| layers.contains(digest) && who.starts_with("containerd/"))
                .count()
        };
        assert_eq!(by_containerd(mark), 0, "{fetched:?}");
        let top = &partial.layers.last().unwrap().digest;
        assert!(
            fetched.contains(top),
            "the missing layer was not fetched: {fetched:?}"
        );
        for layer in &base.layers {
            assert!(
                !fetched.contains(&layer.digest),
                "cached layer {} fetched",
                layer.digest
            );
        }

        let mark = node.registry.log_mark();
        cri.pull_image(&node.image_ref("uncached"));
        let fetched = node.registry.blobs_fetched_since(mark);
        assert!(fetched.contains(&uncached.layers[0].digest), "{fetched:?}");
        assert_eq!(by_containerd(mark), 0, "{fetched:?}");

        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "partial",
            &node.image_ref("partial"),
            "cat /etc/greeting /etc/extra; test -e /etc/doomed || echo doomed-absent",
            &[],
        );
        assert_eq!(
            lines,
            vec![
                "hello from layer 2",
                "only in the registry",
                "doomed-absent"
            ]
        );
        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "uncached",
            &node.image_ref("uncached"),
            "cat /etc/own",
            &[],
        );
        assert_eq!(lines, vec!["uncached"]);

        let images = ["partial", "uncached", "pause"].map(|r| node.image_ref(r));
        remove_pod_and_images(&containerd, &cri, &pod, &images);
    }
    assert_node_clean(node);
}
