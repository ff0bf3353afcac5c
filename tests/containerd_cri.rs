//! The containerd test kit itself: containerd 1.6 with the overlayfs snapshotter, driven over
//! CRI as a kubelet drives it, runs a pod from images in the local registry and leaves
//! nothing behind.

mod support;

use std::time::Duration;

use support::busybox::{busybox_image, files_layer, pause_image};
use support::containerd::{config_toml, ContainerdOptions, TestContainerd};
use support::cri::{container_log, wait_log_line, Cri};
use support::oci::push_image;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

#[test]
fn overlayfs_pod_runs_a_busybox_container_over_cri() {
    let scratch = ScratchXfs::new(8 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let pause = pause_image();
    push_image(&addr, "pause", "v1", &pause, None);
    let image = busybox_image(&[files_layer(&[("etc/greeting", "hello from layer 2\n")])]);
    push_image(&addr, "busybox", "v1", &image, None);
    let sandbox_image = format!("{addr}/pause:v1");
    let image_ref = format!("{addr}/busybox:v1");

    let dir = scratch.path().join("containerd");
    let opts = ContainerdOptions {
        registry: addr.clone(),
        sandbox_image: sandbox_image.clone(),
        proxy_snapshotter: None,
    };
    {
        let containerd = TestContainerd::start(&dir, &opts);
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert_eq!(config, config_toml(&containerd.dir, &opts));
        let cri = containerd.cri();
        let (name, version) = cri.version();
        assert_eq!(name, "containerd");
        assert!(version.starts_with("1.6"), "{version}");

        let mark = registry.log_mark();
        let pod_config = cri.pod_config("selftest", "uid-1", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        let pulled = cri.pull_image(&image_ref);
        assert!(pulled.starts_with("sha256:"), "{pulled}");
        let fetched = registry.blobs_fetched_since(mark);
        for layer in pause.layers.iter().chain(&image.layers) {
            assert!(
                fetched.contains(&layer.digest),
                "layer {} not fetched; fetched: {fetched:?}",
                layer.digest
            );
        }
        assert!(fetched.contains(&image.config_digest), "{fetched:?}");

        let log_path = "reader/0.log";
        let id = cri.create_container(
            &pod,
            &pod_config,
            "reader",
            &image_ref,
            &["/bin/busybox", "cat", "/etc/greeting"],
            &[],
            &[],
            log_path,
        );
        cri.start_container(&id);
        let log_file = Cri::log_file(&pod_config, log_path);
        let line = wait_log_line(&log_file, Duration::from_secs(30));
        assert_eq!(line, "hello from layer 2");
        // The process exits after one line; its status says so.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let st = cri.container_status(&id);
            if st.finished_at != 0 {
                assert_eq!(st.exit_code, 0, "{st:?}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still running: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(container_log(&log_file), vec!["hello from layer 2"]);

        let listed: Vec<String> = cri
            .list_images()
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        assert!(listed.contains(&image_ref), "{listed:?}");
        assert!(listed.contains(&sandbox_image), "{listed:?}");

        cri.stop_pod_sandbox(&pod);
        cri.remove_pod_sandbox(&pod);
        cri.remove_image(&image_ref);
        let listed: Vec<String> = cri
            .list_images()
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        assert!(!listed.contains(&image_ref), "{listed:?}");
        assert!(cri.list_pod_sandboxes().is_empty());
        // Nothing mounted under containerd's dir once the pod is gone, before any cleanup.
        let mounts = support::oracle::held_under(&dir).1;
        assert!(mounts.is_empty(), "{mounts:?}");
    }
    assert_no_leaks(&dir);
}

#[test]
fn dropping_the_kit_with_a_pod_running_cleans_up() {
    let scratch = ScratchXfs::new(8 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    push_image(&addr, "pause", "v1", &pause_image(), None);
    let image_ref = format!("{addr}/busybox:v1");
    push_image(&addr, "busybox", "v1", &busybox_image(&[]), None);
    let dir = scratch.path().join("containerd");
    let opts = ContainerdOptions {
        registry: addr.clone(),
        sandbox_image: format!("{addr}/pause:v1"),
        proxy_snapshotter: None,
    };
    let runc_root;
    {
        let containerd = TestContainerd::start(&dir, &opts);
        runc_root = containerd.runc_root.clone();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("left-running", "uid-2", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        cri.pull_image(&image_ref);
        let id = cri.create_container(
            &pod,
            &pod_config,
            "sleeper",
            &image_ref,
            &["/bin/sh", "-c", "echo up; exec sleep 1000"],
            &[],
            &[],
            "sleeper/0.log",
        );
        cri.start_container(&id);
        let line = wait_log_line(
            &Cri::log_file(&pod_config, "sleeper/0.log"),
            Duration::from_secs(30),
        );
        assert_eq!(line, "up");
        let mounts = support::oracle::held_under(&dir).1;
        assert!(mounts.len() >= 2, "two rootfs mounts and a shm: {mounts:?}");
    }
    assert_no_leaks(&dir);
    // runc knows no container under the kit's root.
    for ns in std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(ns.path())
            .args(["list", "-q"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "runc still lists {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
