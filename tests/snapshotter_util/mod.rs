//! Shared by the snapshotter tests: a node with a registry, a daemon whose Ready cache holds
//! the pause image and the test's images, containerd on imagecache's snapshotter, and ways to
//! run a container and look at what is left.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::busybox::{busybox_image, files_layer, pause_image};
use crate::support::containerd::{ContainerdOptions, TestContainerd};
use crate::support::cri::{wait_log_match, Cri};
use crate::support::daemon::{cache_yaml, TestDaemon};
use crate::support::gen::model::LayerSpec;
use crate::support::oci::{push_image, Compression, Image};
use crate::support::registry::TestRegistry;
use crate::support::scratch::ScratchXfs;
use crate::support::tree::Tree;

/// A registry with the pause image, and a daemon whose Ready cache holds it and `cached`.
pub struct Node {
    pub registry: TestRegistry,
    pub daemon: TestDaemon,
    pub scratch: ScratchXfs,
    pub pause: Image,
}

impl Node {
    pub fn addr(&self) -> String {
        self.registry.addr()
    }

    pub fn image_ref(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.addr())
    }

    /// The positive control of a "no layer fetched" check: the layer blobs containerd alone
    /// (overlayfs, its own containerd under `dir` in the scratch) fetches for a CRI pull of
    /// `image`, read from the registry's log the same way the check reads it.
    pub fn cold_overlayfs_fetches(&self, dir: &str, image: &str) -> Vec<String> {
        let mark = self.registry.log_mark();
        {
            let containerd = TestContainerd::start(
                &self.scratch.path().join(dir),
                &ContainerdOptions {
                    registry: self.addr(),
                    sandbox_image: self.image_ref("pause"),
                    proxy_snapshotter: None,
                },
            );
            containerd.cri().pull_image(image);
        }
        crate::support::scratch::assert_no_leaks(&self.scratch.path().join(dir));
        self.registry.blobs_fetched_since(mark)
    }

    pub fn containerd(&self) -> TestContainerd {
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

pub fn node_with_cache(cached: &[(&str, &Image)]) -> Node {
    node_with_cache_on(cached, 16 << 30)
}

/// As `node_with_cache`, on a scratch filesystem of `scratch_bytes` (sparse).
pub fn node_with_cache_on(cached: &[(&str, &Image)], scratch_bytes: u64) -> Node {
    let scratch = ScratchXfs::new(scratch_bytes);
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
pub fn layered_image() -> Image {
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

pub fn layer_digests(images: &[&Image]) -> Vec<String> {
    images
        .iter()
        .flat_map(|i| i.layers.iter().map(|l| l.digest.clone()))
        .collect()
}

/// Runs `script` in a new container of `image` in `pod` and returns its output lines.
pub fn run(
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
    crate::support::cri::container_log(&log)
        .into_iter()
        .take_while(|l| l != "END")
        .collect()
}

pub fn snapshot_names(containerd: &TestContainerd) -> Vec<String> {
    let out = containerd.ctr_ok(&["snapshots", "--snapshotter", "imagecache", "ls"]);
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    crate::support::oracle::held_under(dir).1
}

/// containerd's garbage collector removes snapshots in the background after an image goes.
pub fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the kubelet does when a pod and its images go: stop and remove the pod, remove the
/// images; then waits for containerd's garbage collector to remove every snapshot.
pub fn remove_pod_and_images(containerd: &TestContainerd, cri: &Cri, pod: &str, images: &[String]) {
    cri.stop_pod_sandbox(pod);
    cri.remove_pod_sandbox(pod);
    for image in images {
        cri.remove_image(image);
    }
    wait_for(
        "containerd to remove every snapshot",
        Duration::from_secs(30),
        || snapshot_names(containerd).is_empty(),
    );
}

/// The entries of `dir`.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Stops the daemon and checks that nothing of the node's is left mounted or attached.
pub fn assert_node_clean(node: Node) {
    let dir = node.scratch.path().to_owned();
    drop(node.daemon);
    crate::support::scratch::assert_no_leaks(&dir.join("state"));
    crate::support::scratch::assert_no_leaks(&dir.join("containerd"));
    drop(node.scratch);
}

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
/// on it: what the snapshotter made, and its hardlink groups. Files of an overlay report
/// their layer's device, so the mount table, not st_dev, tells what to leave out.
pub fn rootfs(pid: u32) -> (Tree, BTreeSet<BTreeSet<String>>) {
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
            tree.insert(rel, crate::support::tree::read_entry(&path).unwrap());
        }
    }
    (tree, inodes.into_values().collect())
}

/// Starts a container of `image` (already pulled) in `pod` that sleeps, and returns what its
/// root filesystem holds while it runs.
pub fn sleeper_rootfs(
    containerd: &TestContainerd,
    cri: &Cri,
    pod: &str,
    pod_config: &k8s_cri::v1::PodSandboxConfig,
    image: &str,
) -> (Tree, BTreeSet<BTreeSet<String>>) {
    let seen = sleeper_rootfs_seen(containerd, cri, pod, pod_config, image);
    (seen.tree, seen.links)
}

/// As `sleeper_rootfs`, and also where the container's layers were read from.
pub fn sleeper_rootfs_seen(
    containerd: &TestContainerd,
    cri: &Cri,
    pod: &str,
    pod_config: &k8s_cri::v1::PodSandboxConfig,
    image: &str,
) -> RootfsSeen {
    let log_path = "sleeper/0.log";
    let id = cri.create_container(
        pod,
        pod_config,
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
    crate::support::cri::wait_log_line(
        &Cri::log_file(pod_config, log_path),
        Duration::from_secs(30),
    );
    let pid = task_pid(containerd, &id);
    let (tree, links) = rootfs(pid);
    RootfsSeen {
        tree,
        links,
        lowerdirs: root_lowerdirs(pid),
    }
}

/// The resolved `lowerdir`s of the overlay at `/` in process `pid`'s mount namespace.
pub fn root_lowerdirs(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = text
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no root mount in pid {pid}'s mountinfo:\n{text}"));
    let (_, fs) = root.split_once(" - ").expect("mountinfo separator");
    let super_options = fs.split(' ').nth(2).unwrap_or_default();
    let lowers = super_options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("the container's root is no overlay with lowers: {root}"));
    lowers
        .split(':')
        .map(|l| std::fs::canonicalize(l).unwrap_or_else(|e| panic!("resolve {l}: {e}")))
        .collect()
}

/// The host pid of container `id`'s task.
pub fn task_pid(containerd: &TestContainerd, id: &str) -> u32 {
    let tasks = containerd.ctr_ok(&["tasks", "ls"]);
    tasks
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no task for {id}: {tasks}"))
}

/// Runs a container of `image` that sleeps, on containerd with `opts`, and returns what its
/// root filesystem holds.
pub fn container_rootfs(
    dir: &Path,
    opts: &ContainerdOptions,
    image: &str,
) -> (Tree, BTreeSet<BTreeSet<String>>) {
    let seen = container_rootfs_seen(dir, opts, image);
    (seen.tree, seen.links)
}

/// What a running container's root filesystem holds, and where its layers came from.
pub struct RootfsSeen {
    pub tree: Tree,
    pub links: BTreeSet<BTreeSet<String>>,
    /// The `lowerdir`s of the overlay mounted at the container's `/`, top first, resolved
    /// through symlinks: the directories its image layers were read from.
    pub lowerdirs: Vec<PathBuf>,
}

/// As `container_rootfs`, and also where the container's layers were read from.
pub fn container_rootfs_seen(dir: &Path, opts: &ContainerdOptions, image: &str) -> RootfsSeen {
    let containerd = TestContainerd::start(dir, opts);
    let cri = containerd.cri();
    let pod_config = cri.pod_config("rootfs", "uid-rootfs", "default");
    let pod = cri.run_pod_sandbox_with(&pod_config);
    cri.pull_image(image);
    let seen = sleeper_rootfs_seen(&containerd, &cri, &pod, &pod_config, image);
    cri.stop_pod_sandbox(&pod);
    cri.remove_pod_sandbox(&pod);
    for image in cri.list_images() {
        for tag in image.repo_tags {
            cri.remove_image(&tag);
        }
    }
    seen
}
