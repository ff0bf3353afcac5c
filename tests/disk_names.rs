//! Disk creates that name their disk, and a create on a full host, through the real daemon
//! with real loop devices, a real registry and a scratch XFS state root:
//!
//! - the same named create twice (a client that lost the 201 and retries): 201 then 200, the
//!   same disk, one disk file, one loop device, and a new bind token in the second answer;
//!   `imagecache disk create --name` does the same;
//! - a different request under a taken name: 409 naming the field that differs; nothing made;
//! - a name that is not a DNS-1123 label: 422 naming `metadata.name` and what is allowed;
//! - eight concurrent identical creates of one name: one 201, seven 200, one disk;
//! - the state root's filesystem full (a small scratch XFS filled with fallocate): a create
//!   is 503 with `Retry-After`, saying the host filesystem is full and what to free, and
//!   leaves no record, disk file, loop device or mount; once space is freed the same create
//!   succeeds.

mod support;

use std::path::{Path, PathBuf};

use imagecache::sys::{LinuxSys, Sys};
use serde_json::{json, Value};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::http::{http, Answer};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const DISKS: &str = "/apis/imagecache.io/v1/disks";

/// A daemon on a scratch XFS of `size` bytes with a Ready cache `base` of one image.
/// Fields drop in order: daemon, registry, scratch.
struct Node {
    daemon: TestDaemon,
    _registry: TestRegistry,
    image: String,
    root: PathBuf,
    scratch: ScratchXfs,
}

impl Node {
    fn new(size: u64) -> Node {
        let scratch = ScratchXfs::new(size);
        let registry = TestRegistry::start();
        let addr = registry.addr();
        let image = feature_set(1).push_all(&addr, None).remove(0);
        let root = scratch.path().join("state");
        let daemon = TestDaemon::start(&root, &[&addr]);
        let out = daemon.create(&cache_yaml("base", std::slice::from_ref(&image), ""), true);
        assert!(out.status.success(), "{}", daemon.log());
        Node {
            daemon,
            _registry: registry,
            image,
            root: root.canonicalize().unwrap(),
            scratch,
        }
    }

    fn request(&self, name: &str, size_gib: u32) -> String {
        json!({
            "apiVersion": "imagecache.io/v1", "kind": "Disk",
            "metadata": {"name": name},
            "spec": {"images": [self.image], "cacheId": "base", "sizeGiB": size_gib}
        })
        .to_string()
    }

    fn post(&self, body: &str) -> Answer {
        http(&self.daemon.socket, "POST", DISKS, "application/json", body)
    }

    fn disk_names(&self) -> Vec<String> {
        let list: Value =
            serde_json::from_str(&self.daemon.cli_ok(&["disk", "get", "-o", "json"])).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Deletes every disk and the cache, stops the daemon, checks nothing is left.
    fn finish(mut self) {
        for name in self.disk_names() {
            self.daemon.cli_ok(&["disk", "delete", &name]);
        }
        self.daemon.cli_ok(&["delete", "base"]);
        self.daemon.stop();
        assert_no_leaks(&self.root);
    }
}

fn loops_under(root: &Path) -> usize {
    LinuxSys
        .loop_devices()
        .unwrap()
        .iter()
        .filter(|l| l.backing_file.starts_with(root))
        .count()
}

fn disk_files(root: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root.join("disks"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".img"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn token(disk: &Value) -> String {
    disk["status"]["bindToken"]
        .as_str()
        .unwrap_or_else(|| panic!("no bind token in {disk:#}"))
        .to_owned()
}

#[test]
fn a_named_create_sent_again_answers_the_disk_it_made() {
    let node = Node::new(64 << 30);
    let body = node.request("pod-7f3a9c2e", 20);
    let first = node.post(&body);
    assert_eq!(first.code, 201, "{}", first.body);
    // The client never read that answer and sends the request again.
    let again = node.post(&body);
    assert_eq!(again.code, 200, "{}", again.body);
    let (first, again) = (first.json(), again.json());
    assert_eq!(first["metadata"]["name"], "pod-7f3a9c2e");
    assert_eq!(again["metadata"]["name"], "pod-7f3a9c2e");
    assert_eq!(again["status"]["device"], first["status"]["device"]);
    assert_eq!(again["status"]["mountpoint"], first["status"]["mountpoint"]);
    assert_eq!(
        again["metadata"]["creationTimestamp"],
        first["metadata"]["creationTimestamp"]
    );
    // The retry can bind the disk: it has a token of its own.
    assert_ne!(token(&again), token(&first));
    assert_eq!(node.disk_names(), vec!["pod-7f3a9c2e"]);
    assert_eq!(disk_files(&node.root), vec!["pod-7f3a9c2e.img"]);
    assert_eq!(loops_under(&node.root), 1);

    // The CLI names disks the same way, and says when the disk was there already.
    let cli = |extra: &[&str]| {
        let mut args = vec![
            "disk",
            "create",
            "--image",
            &node.image,
            "--cache",
            "base",
            "--name",
            "by-cli",
        ];
        args.extend_from_slice(extra);
        node.daemon.cli_ok(&args)
    };
    let made = cli(&[]);
    assert!(
        made.starts_with("disk.imagecache.io/by-cli Ready"),
        "{made}"
    );
    let existing = cli(&[]);
    assert!(
        existing.starts_with("disk.imagecache.io/by-cli (existing) Ready"),
        "{existing}"
    );
    let mut names = node.disk_names();
    names.sort();
    assert_eq!(names, vec!["by-cli", "pod-7f3a9c2e"]);
    assert_eq!(loops_under(&node.root), 2);
    node.finish();
}

#[test]
fn a_taken_name_with_another_request_or_a_bad_name_is_refused() {
    let node = Node::new(64 << 30);
    let made = node.post(&node.request("pod-a", 20));
    assert_eq!(made.code, 201, "{}", made.body);
    let device = made.json()["status"]["device"].clone();

    let other = node.post(&node.request("pod-a", 30));
    assert_eq!(other.code, 409, "{}", other.body);
    let status = other.json();
    assert_eq!(status["reason"], "Conflict", "{status:#}");
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("disk \"pod-a\" exists")
            && message.contains("spec.sizeGiB is 30 here but 20 on the disk")
            && message.contains("imagecache disk delete pod-a"),
        "{message}"
    );
    // The disk is as it was, and nothing else was made.
    let now: Value =
        serde_json::from_str(&node.daemon.cli_ok(&["disk", "get", "pod-a", "-o", "json"])).unwrap();
    assert_eq!(now["status"]["device"], device);
    assert_eq!(now["spec"]["sizeGiB"], 20);
    assert_eq!(disk_files(&node.root), vec!["pod-a.img"]);
    assert_eq!(loops_under(&node.root), 1);

    for bad in ["Pod-A", "pod_a", "pod.a", "-pod", &"p".repeat(64)] {
        let refused = node.post(&node.request(bad, 20));
        assert_eq!(refused.code, 422, "{bad}: {}", refused.body);
        let status = refused.json();
        let cause = &status["details"]["causes"][0];
        assert_eq!(cause["field"], "metadata.name", "{status:#}");
        assert!(
            cause["message"]
                .as_str()
                .unwrap()
                .contains("DNS-1123 label: use 1 to 63 lowercase letters, digits and '-'"),
            "{status:#}"
        );
    }
    assert_eq!(node.disk_names(), vec!["pod-a"]);
    node.finish();
}

#[test]
fn concurrent_identical_named_creates_make_one_disk() {
    const AT_ONCE: usize = 8;
    let node = Node::new(64 << 30);
    let body = node.request("pod-race", 20);
    let codes: Vec<(u16, Value)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                s.spawn(|| {
                    let a = node.post(&body);
                    (a.code, a.json())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let created = codes.iter().filter(|(c, _)| *c == 201).count();
    let existing = codes.iter().filter(|(c, _)| *c == 200).count();
    assert_eq!(
        (created, existing),
        (1, AT_ONCE - 1),
        "{:?}",
        codes.iter().map(|(c, _)| c).collect::<Vec<_>>()
    );
    for (_, disk) in &codes {
        assert_eq!(disk["metadata"]["name"], "pod-race", "{disk:#}");
        assert_eq!(disk["status"]["device"], codes[0].1["status"]["device"]);
    }
    assert_eq!(node.disk_names(), vec!["pod-race"]);
    assert_eq!(disk_files(&node.root), vec!["pod-race.img"]);
    assert_eq!(loops_under(&node.root), 1);
    node.finish();
}

/// Takes every free block of the filesystem at `dir` with fallocated files; returns them.
fn fill(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let free = |dir: &Path| {
        let st = rustix::fs::statvfs(dir).unwrap();
        st.f_bavail * st.f_frsize
    };
    // One large file, then ever smaller ones: the allocator's metadata needs blocks too.
    for chunk in [free(dir).saturating_sub(16 << 20), 1 << 20, 4096] {
        loop {
            let path = dir.join(format!("filler-{}", files.len()));
            let file = std::fs::File::create(&path);
            let Ok(file) = file else { break };
            files.push(path);
            if chunk == 0
                || rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, chunk)
                    .is_err()
            {
                break;
            }
        }
    }
    files
}

#[test]
fn a_full_host_answers_503_with_retry_after_and_leaves_nothing() {
    let node = Node::new(4 << 30);
    let disks_before = disk_files(&node.root);
    let fillers = fill(node.scratch.path());
    let st = rustix::fs::statvfs(node.scratch.path()).unwrap();
    assert!(
        st.f_bavail * st.f_frsize < 1 << 20,
        "the scratch filesystem is not full"
    );
    for body in [
        // Unnamed, and named (whose create is recorded before anything is made).
        json!({
            "apiVersion": "imagecache.io/v1", "kind": "Disk",
            "spec": {"images": [node.image], "cacheId": "base"}
        })
        .to_string(),
        node.request("pod-full", 20),
    ] {
        let refused = node.post(&body);
        assert_eq!(refused.code, 503, "{}\n{}", refused.body, node.daemon.log());
        let retry: u64 = refused
            .headers
            .get("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {:?}", refused.headers))
            .parse()
            .unwrap();
        assert!(retry > 0);
        let status = refused.json();
        assert_eq!(status["reason"], "ServiceUnavailable", "{status:#}");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("no disk was created")
                && message.contains("host filesystem holding the state root")
                && message.contains("is full")
                && message.contains("free space there"),
            "{message}"
        );
        // Nothing half made: no record, no disk file, no loop device, no mount.
        assert!(node.disk_names().is_empty());
        assert_eq!(disk_files(&node.root), disks_before);
        assert_eq!(loops_under(&node.root), 0);
        assert!(LinuxSys.mounts_under(&node.root).unwrap().is_empty());
    }
    for f in &fillers {
        std::fs::remove_file(f).unwrap();
    }
    // With room again, the same named create makes the disk.
    let made = node.post(&node.request("pod-full", 20));
    assert_eq!(made.code, 201, "{}", made.body);
    assert_eq!(node.disk_names(), vec!["pod-full"]);
    node.finish();
}
