//! containerd 1.6 on imagecache's snapshotter, driven over CRI as the kubelet drives it:
//! an image a Ready cache holds is pulled with no layer blob fetched and its containers run
//! from the cache's layers; images the caches hold in part or not at all pull only what is
//! missing; removing the pod and the image leaves no snapshot, mount or loop device.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::busybox::{busybox_image, files_layer, pause_image};
use support::containerd::{ContainerdOptions, TestContainerd};
use support::cri::{wait_log_match, Cri};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::model::LayerSpec;
use support::oci::{push_image, Compression, Image};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

/// A registry with the pause image, and a daemon whose Ready cache holds it and `cached`.
struct Node {
    registry: TestRegistry,
    daemon: TestDaemon,
    scratch: ScratchXfs,
    pause: Image,
}

impl Node {
    fn addr(&self) -> String {
        self.registry.addr()
    }

    fn image_ref(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.addr())
    }

    fn containerd(&self) -> TestContainerd {
        TestContainerd::start(
            &self.scratch.path().join("containerd"),
            &ContainerdOptions {
                registry: self.addr(),
                sandbox_image: self.image_ref("pause"),
                proxy_snapshotter: Some(self.daemon.snapshotter_socket()),
            },
        )
    }
}

fn node_with_cache(cached: &[(&str, &Image)]) -> Node {
    let scratch = ScratchXfs::new(16 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let pause = pause_image();
    push_image(&addr, "pause", "v1", &pause, None);
    let mut refs = vec![format!("{addr}/pause:v1")];
    for (repo, image) in cached {
        push_image(&addr, repo, "v1", image, None);
        refs.push(format!("{addr}/{repo}:v1"));
    }
    let daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);
    let out = daemon.create(&cache_yaml("node-images", &refs, ""), true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Node {
        registry,
        daemon,
        scratch,
        pause,
    }
}

/// busybox, a layer of files, and a layer that deletes one of them and adds another.
fn layered_image() -> Image {
    let mut top = LayerSpec::new(Compression::Gzip);
    top.whiteout("etc/doomed");
    top.file("etc/top", "from the top layer\n".as_bytes().to_vec());
    busybox_image(&[
        files_layer(&[
            ("etc/greeting", "hello from layer 2\n"),
            ("etc/doomed", "deleted above\n"),
        ]),
        top,
    ])
}

fn layer_digests(images: &[&Image]) -> Vec<String> {
    images
        .iter()
        .flat_map(|i| i.layers.iter().map(|l| l.digest.clone()))
        .collect()
}

/// Runs `script` in a new container of `image` in `pod` and returns its output lines.
fn run(
    cri: &Cri,
    pod: &str,
    pod_config: &k8s_cri::v1::PodSandboxConfig,
    name: &str,
    image: &str,
    script: &str,
    annotations: &[(&str, &str)],
) -> Vec<String> {
    let log_path = format!("{name}/0.log");
    let id = cri.create_container(
        pod,
        pod_config,
        name,
        image,
        &["/bin/sh", "-c", &format!("{script}; echo END")],
        &[],
        annotations,
        &log_path,
    );
    cri.start_container(&id);
    let log = Cri::log_file(pod_config, &log_path);
    wait_log_match(&log, Duration::from_secs(60), |l| l == "END");
    // Stopping a pod while a container's shim is still exiting fails in containerd 1.6
    // ("ttrpc: closed"); the kubelet would retry, a test waits for the exit instead.
    wait_for("the container to exit", Duration::from_secs(30), || {
        cri.container_status(&id).finished_at != 0
    });
    support::cri::container_log(&log)
        .into_iter()
        .take_while(|l| l != "END")
        .collect()
}

fn snapshot_names(containerd: &TestContainerd) -> Vec<String> {
    let out = containerd.ctr_ok(&["snapshots", "--snapshotter", "imagecache", "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    imagecache::sys::Sys::mounts_under(&imagecache::sys::LinuxSys, dir).expect("mountinfo")
}

/// containerd's garbage collector removes snapshots in the background after an image goes.
fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

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

        cri.stop_pod_sandbox(&pod);
        cri.remove_pod_sandbox(&pod);
        cri.remove_image(&image_ref);
        cri.remove_image(&node.image_ref("pause"));
        wait_for(
            "containerd to remove every snapshot",
            Duration::from_secs(30),
            || snapshot_names(&containerd).is_empty(),
        );
        assert!(
            mounts_under(&caches).is_empty(),
            "{:?}",
            mounts_under(&caches)
        );
        let left: Vec<_> = std::fs::read_dir(state.join("snapshotter/snapshots"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "snapshot directories left: {left:?}");
    }
    let dir = node.scratch.path().to_owned();
    drop(node.daemon);
    assert_no_leaks(&dir.join("state"));
    assert_no_leaks(&dir.join("containerd"));
}

#[test]
fn partly_cached_and_uncached_images_fetch_only_what_no_cache_holds() {
    let base = layered_image();
    let node = node_with_cache(&[("base", &base)]);
    // The cached image's layers and one more on top.
    let mut extra = base.layers.clone();
    extra.push(files_layer(&[("etc/extra", "only in the registry\n")]).to_layer());
    let partial = support::busybox::image_with_cmd(extra, &["/bin/sh"]);
    push_image(&node.addr(), "partial", "v1", &partial, None);
    // Nothing in common with any cache (its base layer differs in one file).
    let mut own_base = support::busybox::busybox_layer();
    own_base.file("etc/own", "uncached\n".as_bytes().to_vec());
    let uncached = support::busybox::image_with_cmd(vec![own_base.to_layer()], &["/bin/sh"]);
    push_image(&node.addr(), "uncached", "v1", &uncached, None);
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("mixed", "uid-mixed", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);

        let mark = node.registry.log_mark();
        cri.pull_image(&node.image_ref("partial"));
        let fetched = node.registry.blobs_fetched_since(mark);
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

        cri.stop_pod_sandbox(&pod);
        cri.remove_pod_sandbox(&pod);
        for repo in ["partial", "uncached", "pause"] {
            cri.remove_image(&node.image_ref(repo));
        }
        wait_for(
            "containerd to remove every snapshot",
            Duration::from_secs(30),
            || snapshot_names(&containerd).is_empty(),
        );
    }
    let dir = node.scratch.path().to_owned();
    drop(node.daemon);
    assert_no_leaks(&dir.join("state"));
    assert_no_leaks(&dir.join("containerd"));
}
