//! A container bound to a per-pod disk through the CRI annotation
//! `containerd.io/snapshot/imagecache.io/disk`: containerd 1.6 passes it to the snapshotter
//! as a label, the container's layers come from the disk and its writes land on the disk,
//! bounded by the disk's size; the disk cannot be deleted while the container runs.

mod snapshotter_util;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use snapshotter_util::*;
use support::daemon::cache_yaml;

const DISK_LABEL: &str = "containerd.io/snapshot/imagecache.io/disk";

/// Files called `name` under `dir/*/fs/`.
fn written_under(dir: &std::path::Path, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join("fs").join(name))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn a_disk_bound_container_runs_from_the_disk_and_its_writes_stay_there() {
    let image = layered_image();
    let node = node_with_cache(&[("layered", &image)]);
    let image_ref = node.image_ref("layered");
    let state = node.scratch.path().join("state");
    let disk: serde_json::Value = serde_json::from_str(
        &node
            .daemon
            .cli_ok(&["disk", "create", "--image", &image_ref, "-o", "json"]),
    )
    .unwrap();
    let disk_id = disk["metadata"]["name"].as_str().unwrap().to_owned();
    let disk_root = PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap());
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("on-disk", "uid-disk", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        let mark = node.registry.log_mark();
        cri.pull_image(&image_ref);
        let fetched = node.registry.blobs_fetched_since(mark);
        for layer in layer_digests(&[&image]) {
            assert!(
                !fetched.contains(&layer),
                "layer {layer} fetched: {fetched:?}"
            );
        }

        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "writer",
            &image_ref,
            "cat /etc/greeting; test -e /etc/doomed || echo doomed-absent; \
             echo kept > /on-disk-file && echo wrote; \
             fallocate -l 40G /too-big 2>&1 | grep -q 'No space left' && echo enospc; \
             rm -f /too-big; echo after > /after-enospc && echo still-writable",
            &[(DISK_LABEL, disk_id.as_str())],
        );
        assert_eq!(
            lines,
            vec![
                "hello from layer 2",
                "doomed-absent",
                "wrote",
                "enospc",
                "still-writable"
            ]
        );
        // The write is in the disk's filesystem, not in node storage.
        let on_disk = written_under(&disk_root.join("containers"), "on-disk-file");
        assert_eq!(on_disk.len(), 1, "{on_disk:?}");
        assert_eq!(std::fs::read_to_string(&on_disk[0]).unwrap(), "kept\n");
        let on_node = written_under(&state.join("snapshotter/snapshots"), "on-disk-file");
        assert!(on_node.is_empty(), "written to node storage: {on_node:?}");

        // Another container, not bound, writes to node storage as usual: the disk's full
        // moment touched nothing else.
        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "plain",
            &image_ref,
            "echo node > /node-file && echo ok",
            &[],
        );
        assert_eq!(lines, vec!["ok"]);
        assert_eq!(
            written_under(&state.join("snapshotter/snapshots"), "node-file").len(),
            1
        );

        // A running container holds the disk: deleting it is refused and changes nothing.
        let log_path = "sleeper/0.log";
        let sleeper = cri.create_container(
            &pod,
            &pod_config,
            "sleeper",
            &image_ref,
            &["/bin/sh", "-c", "echo up; exec sleep 600"],
            &[],
            &[(DISK_LABEL, disk_id.as_str())],
            log_path,
        );
        cri.start_container(&sleeper);
        support::cri::wait_log_line(
            &support::cri::Cri::log_file(&pod_config, log_path),
            Duration::from_secs(30),
        );
        let refused = node.daemon.cli(&["disk", "delete", &disk_id]);
        assert!(
            !refused.status.success(),
            "deleted a disk in use: {}\n{}",
            String::from_utf8_lossy(&refused.stdout),
            node.daemon.log()
        );
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(
            said.contains("remove those containers"),
            "unclear refusal: {said}"
        );
        assert!(disk_root.join("containers").exists());

        cri.stop_pod_sandbox(&pod);
        cri.remove_pod_sandbox(&pod);
        // The containers' directories on the disk go with their snapshots, which
        // containerd's garbage collector removes in the background.
        wait_for(
            "the containers' directories on the disk to go",
            Duration::from_secs(30),
            || {
                std::fs::read_dir(disk_root.join("containers"))
                    .unwrap()
                    .next()
                    .is_none()
            },
        );
        node.daemon.cli_ok(&["disk", "delete", &disk_id]);
        for image in [image_ref.clone(), node.image_ref("pause")] {
            cri.remove_image(&image);
        }
        wait_for(
            "containerd to remove every snapshot",
            Duration::from_secs(30),
            || snapshot_names(&containerd).is_empty(),
        );
    }
    assert_node_clean(node);
}

#[test]
fn a_disk_that_lacks_the_image_is_refused_with_the_reason() {
    let image = layered_image();
    let node = node_with_cache(&[("layered", &image)]);
    // A disk cloned from a cache of the pause image alone holds the busybox base layer but
    // not the image's own layers.
    let pause_ref = node.image_ref("pause");
    let out = node.daemon.create(
        &cache_yaml("pause-only", std::slice::from_ref(&pause_ref), ""),
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache_id = node.daemon.get_json("pause-only")["status"]["imageCacheId"]
        .as_str()
        .unwrap()
        .to_owned();
    let disk: serde_json::Value = serde_json::from_str(&node.daemon.cli_ok(&[
        "disk", "create", "--image", &pause_ref, "--cache", &cache_id, "-o", "json",
    ]))
    .unwrap();
    let disk_id = disk["metadata"]["name"].as_str().unwrap().to_owned();
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("wrong-disk", "uid-wrong", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        cri.pull_image(&node.image_ref("layered"));
        let err = cri
            .try_create_container(
                &pod,
                &pod_config,
                "refused",
                &node.image_ref("layered"),
                &["/bin/true"],
                &[],
                &[(DISK_LABEL, disk_id.as_str())],
                "refused/0.log",
            )
            .expect_err("a disk without the image's layers must be refused");
        assert!(
            err.message().contains("does not hold layer"),
            "unclear error: {err:?}"
        );
        remove_pod_and_images(
            &containerd,
            &cri,
            &pod,
            &[node.image_ref("layered"), pause_ref.clone()],
        );
    }
    node.daemon.cli_ok(&["disk", "delete", &disk_id]);
    assert_node_clean(node);
}
