//! Running containers survive what happens to imagecached and its caches: restarting the
//! daemon (SIGTERM or SIGKILL) keeps their mounts and every snapshot containerd knows, and
//! deleting the cache their layers come from leaves them running; the cache's read-only
//! mount and its frozen files go with the last snapshot that uses them.

mod snapshotter_util;
mod support;

use std::time::Duration;

use snapshotter_util::*;
use support::cri::{container_log, wait_log_line, Cri};

/// Reads a file of the image every 50 ms and says so; says FAILED when a read fails.
const READER: &str = "i=0; while true; do \
     if cat /etc/greeting /etc/top > /dev/null; then echo ok $i; else echo FAILED $i; fi; \
     i=$((i+1)); sleep 0.05; done";

/// containerd's proxy client redials a restarted snapshotter with a backoff of about a
/// second; calls in between fail as unavailable, and succeed after.
fn snapshot_names_after_restart(containerd: &support::containerd::TestContainerd) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = containerd.ctr(&["snapshots", "--snapshotter", "imagecache", "ls"]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containerd did not reach the restarted snapshotter: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lines_now(log: &std::path::Path) -> usize {
    container_log(log).len()
}

/// Waits until the container has logged `more` reads beyond what it had, and none failed.
fn keeps_reading(log: &std::path::Path, more: usize) {
    let start = lines_now(log);
    wait_for(
        "the container to keep reading",
        Duration::from_secs(30),
        || lines_now(log) >= start + more,
    );
    let lines = container_log(log);
    assert!(
        lines.iter().all(|l| l.starts_with("ok ")),
        "a read failed: {:?}",
        lines
            .iter()
            .filter(|l| !l.starts_with("ok "))
            .collect::<Vec<_>>()
    );
}

#[test]
fn restarts_and_cache_deletion_leave_running_containers_alone() {
    let image = layered_image();
    let mut node = node_with_cache(&[("layered", &image)]);
    let image_ref = node.image_ref("layered");
    let state = node.scratch.path().join("state");
    let caches = state.join("snapshotter/caches");
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("long", "uid-long", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        cri.pull_image(&image_ref);
        let log_path = "reader/0.log";
        let id = cri.create_container(
            &pod,
            &pod_config,
            "reader",
            &image_ref,
            &["/bin/sh", "-c", READER],
            &[],
            &[],
            log_path,
        );
        cri.start_container(&id);
        let log = Cri::log_file(&pod_config, log_path);
        wait_log_line(&log, Duration::from_secs(30));
        let before = snapshot_names(&containerd);
        assert!(!before.is_empty());

        // A graceful restart, then a crash: the snapshots and the container stay.
        node.daemon.stop();
        keeps_reading(&log, 5);
        node.daemon.spawn();
        assert_eq!(snapshot_names_after_restart(&containerd), before);
        node.daemon.kill9();
        keeps_reading(&log, 5);
        node.daemon.spawn();
        assert_eq!(snapshot_names_after_restart(&containerd), before);
        assert_eq!(
            mounts_under(&caches).len(),
            1,
            "{:?}",
            mounts_under(&caches)
        );
        keeps_reading(&log, 5);

        // Deleting the cache: the container reads on from the cache's layers.
        node.daemon.cli_ok(&["delete", "node-images"]);
        keeps_reading(&log, 10);
        assert_eq!(
            mounts_under(&caches).len(),
            1,
            "the cache image went under a container"
        );
        // A new pull of the image finds no cache: the layers containerd holds serve it.
        assert_eq!(snapshot_names(&containerd), before);

        remove_pod_and_images(
            &containerd,
            &cri,
            &pod,
            &[image_ref.clone(), node.image_ref("pause")],
        );
        // The last snapshot took the cache's mount and, the cache being gone, its files.
        assert!(
            mounts_under(&caches).is_empty(),
            "{:?}",
            mounts_under(&caches)
        );
        let frozen = entries(&state.join("snapshots/sha256"));
        assert!(frozen.is_empty(), "frozen snapshot left: {frozen:?}");
    }
    assert_node_clean(node);
}
