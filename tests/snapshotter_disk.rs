//! A container bound to a per-pod disk through the CRI annotations
//! `containerd.io/snapshot/imagecache.io/disk` and `…/disk-token`: containerd 1.6 passes them
//! to the snapshotter as labels, the container's layers come from the disk and its writes
//! land on the disk, bounded by the disk's size; the disk cannot be deleted while the
//! container runs. Only a container that gives the bind token the disk's create returned
//! binds it; any other is refused before it leaves a trace on the disk, and the token is
//! shown by nothing but that create's answer.

mod snapshotter_util;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use snapshotter_util::*;

const DISK_LABEL: &str = "containerd.io/snapshot/imagecache.io/disk";
const DISK_TOKEN_LABEL: &str = "containerd.io/snapshot/imagecache.io/disk-token";

/// A disk as its create answered it.
struct CreatedDisk {
    id: String,
    root: PathBuf,
    bind_token: String,
    size_gib: u64,
}

impl CreatedDisk {
    /// The annotations that bind a container to this disk.
    fn annotations(&self) -> [(&str, &str); 2] {
        [
            (DISK_LABEL, self.id.as_str()),
            (DISK_TOKEN_LABEL, self.bind_token.as_str()),
        ]
    }
}

/// `imagecache disk create ... -o json`, as an operator runs it.
fn create_disk(node: &Node, args: &[&str]) -> CreatedDisk {
    let mut argv = vec!["disk", "create"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["-o", "json"]);
    let disk: serde_json::Value = serde_json::from_str(&node.daemon.cli_ok(&argv)).unwrap();
    let bind_token = disk["status"]["bindToken"]
        .as_str()
        .unwrap_or_else(|| panic!("the create's answer has no status.bindToken: {disk}"))
        .to_owned();
    CreatedDisk {
        id: disk["metadata"]["name"].as_str().unwrap().to_owned(),
        root: PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap()),
        bind_token,
        size_gib: disk["status"]["sizeGiB"].as_u64().unwrap(),
    }
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bavail * st.f_frsize
}

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
    // The disk (the cache's 20 GiB) is smaller than the node's free space, so the disk's
    // bound, not the node's, is what a write past it meets.
    let node = node_with_cache_on(&[("layered", &image)], 64 << 30);
    let image_ref = node.image_ref("layered");
    let state = node.scratch.path().join("state");
    let disk = create_disk(&node, &["--image", &image_ref]);
    let (disk_id, disk_root) = (disk.id.clone(), disk.root.clone());
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("on-disk", "uid-disk", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        let mark = node.registry.log_mark();
        cri.pull_image(&image_ref);
        let fetched = node.registry.blobs_fetched_since(mark);
        let layers = layer_digests(&[&image]);
        for layer in &layers {
            assert!(
                !fetched.contains(layer),
                "layer {layer} fetched: {fetched:?}"
            );
        }
        // The control: the same pull by containerd alone fetches each layer, so the check
        // above reads the registry's log right.
        let cold = node.cold_overlayfs_fetches("ctrd-control", &image_ref);
        for layer in &layers {
            assert!(
                cold.contains(layer),
                "containerd alone did not fetch layer {layer}: {cold:?}"
            );
        }

        // One GiB past the disk's size, which the node's own filesystem has room for: the
        // ENOSPC below can only be the disk's bound.
        let too_big = (disk.size_gib + 1) << 30;
        let node_free = free_bytes(node.scratch.path());
        assert!(
            node_free > too_big,
            "the scratch filesystem ({node_free} bytes free) must hold more than the disk \
             ({} GiB) for the bound to show",
            disk.size_gib
        );
        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "writer",
            &image_ref,
            &format!(
                "cat /etc/greeting; test -e /etc/doomed || echo doomed-absent; \
                 echo kept > /on-disk-file && echo wrote; \
                 fallocate -l {too_big} /too-big 2>&1 | grep -q 'No space left' && echo enospc; \
                 rm -f /too-big; echo after > /after-enospc && echo still-writable"
            ),
            &disk.annotations(),
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
            &disk.annotations(),
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
    let cache_id = node
        .daemon
        .ready_cache_id("pause-only", std::slice::from_ref(&pause_ref), "");
    let disk = create_disk(&node, &["--image", &pause_ref, "--cache", &cache_id]);
    let disk_id = disk.id.clone();
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
                &disk.annotations(),
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

/// Everything below `dir` (empty when it does not exist).
fn tree(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if entry.file_type().unwrap().is_dir() {
                todo.push(entry.path());
            }
            out.push(entry.path());
        }
    }
    out.sort();
    out
}

/// Whether `needle` is anywhere in the state database's files (the WAL included).
fn in_state_db(state: &std::path::Path, needle: &str) -> bool {
    ["state.db", "state.db-wal"].iter().any(|name| {
        let bytes = std::fs::read(state.join(name)).unwrap_or_default();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

fn scrape_metrics(socket: &std::path::Path) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "30", "--unix-socket"])
        .arg(socket)
        .arg("http://localhost/metrics")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn only_the_disks_own_token_binds_it_and_the_token_is_shown_once() {
    let image = layered_image();
    let mut node = node_with_cache(&[("layered", &image)]);
    let image_ref = node.image_ref("layered");
    let state = node.scratch.path().join("state");
    // Every level the daemon and its libraries (tonic, h2, hyper) log at, for the check below
    // that the token is in none of it.
    const EVERYTHING: &[(&str, &str)] = &[("IMAGECACHE_LOG", "trace")];
    node.daemon.stop();
    assert!(node.daemon.spawn_with_env(EVERYTHING));
    let mine = create_disk(&node, &["--image", &image_ref]);
    let other = create_disk(&node, &["--image", &image_ref]);
    assert_ne!(mine.bind_token, other.bind_token);
    assert_eq!(mine.bind_token.len(), 64, "256 bits in hex");

    // Shown by the create alone: not by a get, a list (JSON or YAML) or an event.
    let shown = [
        node.daemon.cli_ok(&["disk", "get", &mine.id, "-o", "json"]),
        node.daemon.cli_ok(&["disk", "get", &mine.id, "-o", "yaml"]),
        node.daemon.cli_ok(&["disk", "get", "-o", "json"]),
        node.daemon.cli_ok(&["disk", "get"]),
    ];
    for text in &shown {
        for token in [&mine.bind_token, &other.bind_token] {
            assert!(!text.contains(token.as_str()), "token shown: {text}");
        }
        assert!(!text.contains("bindToken"), "{text}");
    }
    // Kept as its digest only.
    assert!(!in_state_db(&state, &mine.bind_token));

    // A restart keeps the tokens (their digests are in the store).
    node.daemon.stop();
    assert!(node.daemon.spawn_with_env(EVERYTHING));
    {
        let containerd = node.containerd();
        let cri = containerd.cri();
        let pod_config = cri.pod_config("token", "uid-token", "default");
        let pod = cri.run_pod_sandbox_with(&pod_config);
        cri.pull_image(&image_ref);
        let on_disk_before = tree(&mine.root.join("containers"));
        let refused: [(&str, Vec<(&str, &str)>); 3] = [
            ("no token", vec![(DISK_LABEL, mine.id.as_str())]),
            (
                "a wrong token",
                vec![
                    (DISK_LABEL, mine.id.as_str()),
                    (DISK_TOKEN_LABEL, "00000000000000000000000000000000"),
                ],
            ),
            (
                "another disk's token",
                vec![
                    (DISK_LABEL, mine.id.as_str()),
                    (DISK_TOKEN_LABEL, other.bind_token.as_str()),
                ],
            ),
        ];
        for (n, (what, annotations)) in refused.iter().enumerate() {
            let name = format!("refused-{n}");
            let err = cri
                .try_create_container(
                    &pod,
                    &pod_config,
                    &name,
                    &image_ref,
                    &["/bin/sh", "-c", "echo ran > /trespass"],
                    &[],
                    annotations,
                    &format!("{name}/0.log"),
                )
                .expect_err(&format!("a container with {what} bound the disk"));
            let said = err.message();
            assert!(
                said.contains(&mine.id) && said.contains(DISK_TOKEN_LABEL),
                "{what}: the refusal does not name the disk and the annotation: {err:?}"
            );
            assert!(!said.contains(&other.bind_token), "{what}: {said}");
            assert_eq!(
                tree(&mine.root.join("containers")),
                on_disk_before,
                "{what}: the refused container left something on the disk"
            );
        }

        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "owner",
            &image_ref,
            "cat /etc/greeting; echo mine > /owner-file && echo wrote",
            &mine.annotations(),
        );
        assert_eq!(lines, vec!["hello from layer 2", "wrote"]);
        let written = written_under(&mine.root.join("containers"), "owner-file");
        assert_eq!(written.len(), 1, "{written:?}");
        // The other disk binds with its own token, and nothing of the first went there.
        let lines = run(
            &cri,
            &pod,
            &pod_config,
            "other",
            &image_ref,
            "echo ok",
            &other.annotations(),
        );
        assert_eq!(lines, vec!["ok"]);
        assert!(written_under(&other.root.join("containers"), "owner-file").is_empty());

        // After the binds, still nowhere but in the create's answer.
        let disk = node.daemon.cli_ok(&["disk", "get", &mine.id, "-o", "json"]);
        let metrics = scrape_metrics(&node.daemon.socket);
        let log = node.daemon.log();
        for token in [&mine.bind_token, &other.bind_token] {
            assert!(!disk.contains(token.as_str()), "{disk}");
            assert!(!metrics.contains(token.as_str()), "token in the metrics");
            assert!(!in_state_db(&state, token), "token in state.db");
            assert!(!log.contains(token.as_str()), "token in the daemon's log");
        }
        // The log did run at every level, and tells the operator of each refusal.
        assert!(log.contains("TRACE"), "the daemon did not log at trace");
        let refusals = log.matches("refused to bind a container to a disk").count();
        assert!(refusals >= 3, "{refusals} refusals logged");

        remove_pod_and_images(
            &containerd,
            &cri,
            &pod,
            &[image_ref.clone(), node.image_ref("pause")],
        );
    }
    for disk in [&mine, &other] {
        wait_for(
            "the containers' directories on the disk to go",
            Duration::from_secs(30),
            || tree(&disk.root.join("containers")).is_empty(),
        );
        node.daemon.cli_ok(&["disk", "delete", &disk.id]);
    }
    assert_node_clean(node);
}
