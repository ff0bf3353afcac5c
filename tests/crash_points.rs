//! Crash at any point (root, loop devices, a scratch XFS state root, a registry on 127.0.0.1,
//! the real daemon). For every fault point in `imagecache::fault::POINTS` the daemon is
//! started with that point armed, driven to it and killed there (SIGKILL, sent by itself);
//! restarted without it, it must leave:
//!
//! - every cache Ready with a snapshot `imagecache verify` passes, or Failed with a Warning
//!   event;
//! - every disk the store knows attached (and mounted) again, or Failed with a Warning event;
//! - no loop device, mount, work file, disk file or snapshot directory the store does not
//!   know, and every snapshot referenced by a cache or disk (so deleting everything leaves
//!   no snapshot behind: no reference leaked);
//! - the snapshotter's directories exactly those of its records.
//!
//! | points | case |
//! |---|---|
//! | build.mkfs, build.layer (2nd layer), build.sync, build.unmount, build.fsck, build.hash, snapshot.staged, snapshot.renamed, build.commit, build.ready | `build_points` |
//! | disk.grow, disk.clone, disk.attach, disk.mount, disk.delete, loop.attached, mount.mounted (the disk's) | `disk_points` |
//! | cache.delete, gc.collect | `delete_and_gc_points` |
//! | snapshotter.prepare, snapshotter.commit, snapshotter.remove | `snapshotter_points` |
//! | import.chunk (2nd chunk), import.commit | `import_points` |
//!
//! The disks that die being made are named (`metadata.name`): the name is free again after
//! the restart, and nothing of the dead create is left under it.
//!
//! `soak` (ignored; `scripts/crash-soak.sh N` runs it) kills a mixed workload N times at
//! random fault points or after random delays and checks the same after each restart. It
//! fails when its time bound (counted from the end of its set-up) ends it before N kills.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imagecache::fault;
use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const BUILD_POINTS: &[&str] = &[
    "build.mkfs",
    "build.layer:2",
    "build.sync",
    "build.unmount",
    "build.fsck",
    "build.hash",
    // Inside the snapshot commit's renames: the image moved into staging, then the staging
    // directory under the digest's name.
    "snapshot.staged",
    "snapshot.renamed",
    "build.commit",
    "build.ready",
];
const DISK_POINTS: &[&str] = &[
    "disk.grow",
    "disk.clone",
    "disk.attach",
    "disk.mount",
    "disk.delete",
    // Inside the loop attach and mount calls of a disk create: the device bound, or the disk
    // mounted, before the call returned.
    "loop.attached",
    "mount.mounted",
];
const DELETE_POINTS: &[&str] = &["cache.delete", "gc.collect"];
const SNAPSHOTTER_POINTS: &[&str] = &[
    "snapshotter.prepare",
    "snapshotter.commit",
    "snapshotter.remove",
];

const IMPORT_POINTS: &[&str] = &["import.chunk:2", "import.commit"];

/// Where nodes share snapshots, in the share registry.
const SHARE_REPO: &str = "imagecache/snapshots";

/// How long a workload may take to reach its point.
const DEATH_WAIT: Duration = Duration::from_secs(120);

#[test]
fn every_fault_point_has_a_case() {
    let covered: BTreeSet<&str> = [
        BUILD_POINTS,
        DISK_POINTS,
        DELETE_POINTS,
        SNAPSHOTTER_POINTS,
        IMPORT_POINTS,
    ]
    .concat()
    .into_iter()
    .map(|p| p.split(':').next().unwrap())
    .collect();
    let all: BTreeSet<&str> = fault::POINTS.iter().copied().collect();
    assert_eq!(
        covered, all,
        "a fault point without a crash case, or a case for none"
    );
}

/// A fresh state root on its own scratch XFS, with a daemon running on it.
struct Node {
    daemon: TestDaemon,
    _scratch: ScratchXfs,
}

impl Node {
    fn new(registry: &str) -> Node {
        let scratch = ScratchXfs::new(64 << 30);
        let daemon = TestDaemon::start(&scratch.path().join("state"), &[registry]);
        Node {
            daemon,
            _scratch: scratch,
        }
    }

    /// A node that pushes Ready caches to, and imports them from, `share`.
    fn sharing(registry: &str, share: &str) -> Node {
        let scratch = ScratchXfs::new(64 << 30);
        let daemon = TestDaemon::start_sharing(
            &scratch.path().join("state"),
            &[registry, share],
            &format!("{share}/{SHARE_REPO}"),
        );
        Node {
            daemon,
            _scratch: scratch,
        }
    }

    fn root(&self) -> &Path {
        &self.daemon.root
    }

    /// Restarts the daemon with `point` armed.
    fn arm(&mut self, point: &str) {
        self.daemon.stop();
        // The point may fire while the daemon starts (the first retention pass).
        self.daemon.spawn_with_env(&[(fault::ENV, point)]);
    }

    /// Waits for the daemon to kill itself at `point`, then starts it again unarmed.
    fn dies_at_and_restarts(&mut self, point: &str) {
        let status = self.daemon.wait_exit(DEATH_WAIT).unwrap_or_else(|| {
            panic!(
                "the daemon did not reach fault point {point}:\n{}",
                self.daemon.log()
            )
        });
        let name = point.split(':').next().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}:\n{}", self.daemon.log());
        assert!(
            self.daemon
                .log()
                .contains(&format!("fault point {name} reached")),
            "killed, but not at {point}:\n{}",
            self.daemon.log()
        );
        self.daemon.spawn();
    }
}

/// A Ready cache `name` of `image`; its imageCacheId.
fn build_cache(d: &TestDaemon, name: &str, image: &str) -> String {
    d.ready_cache_id(name, &[image.to_owned()], "")
}

fn disk_create(
    d: &TestDaemon,
    image: &str,
    cache_id: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "disk", "create", "--image", image, "--cache", cache_id, "-o", "json",
    ];
    args.extend_from_slice(extra);
    d.cli(&args)
}

fn items(d: &TestDaemon, args: &[&str]) -> Vec<Value> {
    let list: Value = serde_json::from_str(&d.cli_ok(args)).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"].as_str().unwrap().to_owned()
}

fn has_warning(v: &Value) -> bool {
    v["status"]["events"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["type"] == "Warning"))
}

fn mount_points() -> BTreeSet<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// What the invariants found wrong, one line each (empty: all hold).
fn violations(d: &TestDaemon) -> Vec<String> {
    let root = d.root.canonicalize().unwrap();
    let mut bad = Vec::new();
    let caches = items(d, &["get", "-o", "json"]);
    let disks = items(d, &["disk", "get", "-o", "json"]);
    let mut referenced = BTreeSet::new();
    for c in &caches {
        let name = name_of(c);
        if let Some(digest) = c["status"]["snapshotDigest"].as_str() {
            referenced.insert(digest.trim_start_matches("sha256:").to_owned());
        }
        match c["status"]["phase"].as_str() {
            Some("Ready") => {
                let out = d.cli(&["verify", &name]);
                if !out.status.success() {
                    bad.push(format!(
                        "cache {name} is Ready but does not verify: {}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
            Some("Failed") if has_warning(c) => {}
            other => bad.push(format!(
                "cache {name} is {other:?} after the restart, not Ready or Failed with an event: {c}"
            )),
        }
    }
    let mut allowed_loops = BTreeSet::new();
    let mut allowed_mounts = BTreeSet::new();
    let mut disk_entries = BTreeSet::new();
    for disk in &disks {
        let id = name_of(disk);
        let status = &disk["status"];
        if let Some(digest) = status["snapshotDigest"].as_str() {
            referenced.insert(digest.trim_start_matches("sha256:").to_owned());
        }
        disk_entries.insert(format!("{id}.img"));
        disk_entries.insert(id.clone());
        let image = root.join("disks").join(format!("{id}.img"));
        match status["phase"].as_str() {
            Some("Ready") => {
                let device = status["device"].as_str().unwrap_or_default();
                let backing = std::fs::read_to_string(format!(
                    "/sys/block/{}/loop/backing_file",
                    device.trim_start_matches("/dev/")
                ))
                .unwrap_or_default();
                if Path::new(backing.trim()) != image {
                    bad.push(format!(
                        "disk {id} is Ready but {device} is not attached to its image ({backing:?})"
                    ));
                }
                if let Some(m) = status["mountpoint"].as_str() {
                    if !mount_points().contains(Path::new(m)) {
                        bad.push(format!("disk {id} is Ready but not mounted at {m}"));
                    }
                    allowed_mounts.insert(PathBuf::from(m));
                }
                allowed_loops.insert(image);
            }
            Some("Failed") if has_warning(disk) => {
                // A broken disk may still hold what could be put back.
                allowed_loops.insert(image);
                if let Some(m) = status["mountpoint"].as_str() {
                    allowed_mounts.insert(PathBuf::from(m));
                }
            }
            other => bad.push(format!(
                "disk {id} is {other:?} after the restart, not Ready or Failed with an event: {disk}"
            )),
        }
    }
    let (loops, mounts) = support::oracle::held_under(&root);
    for l in loops {
        if !allowed_loops.contains(&l.backing_file) {
            bad.push(format!(
                "loop device {} on {} that no disk owns",
                l.device,
                l.backing_file.display()
            ));
        }
    }
    for m in mounts {
        if !allowed_mounts.contains(&m) {
            bad.push(format!("mount {} that no disk owns", m.display()));
        }
    }
    let work = entries(&root.join("work"));
    if !work.is_empty() {
        bad.push(format!("work files left with no build running: {work:?}"));
    }
    for e in entries(&root.join("disks")) {
        if !disk_entries.contains(&e) {
            bad.push(format!("disks/{e} that no stored disk names"));
        }
    }
    for e in entries(&root.join("snapshots/sha256")) {
        if !referenced.contains(&e) {
            bad.push(format!("snapshot {e} that no cache or disk references"));
        }
    }
    bad
}

fn assert_invariants(d: &TestDaemon, after: &str) {
    let bad = violations(d);
    assert!(
        bad.is_empty(),
        "after a kill at {after}:\n{}\n--- daemon log ---\n{}",
        bad.join("\n"),
        d.log()
    );
}

/// Deletes every disk and cache, checks no snapshot is left (no reference leaked), stops the
/// daemon and checks no loop device or mount is left under the state root.
fn empty_and_stop(mut node: Node, snapshotter_keys: &[&str]) {
    let d = &node.daemon;
    for disk in items(d, &["disk", "get", "-o", "json"]) {
        d.cli_ok(&["disk", "delete", &name_of(&disk)]);
    }
    for cache in items(d, &["get", "-o", "json"]) {
        d.cli_ok(&["delete", &name_of(&cache)]);
    }
    if !snapshotter_keys.is_empty() {
        let client = Snapshots::connect(&d.snapshotter_socket());
        for key in snapshotter_keys {
            client.remove(key);
        }
    }
    let left = entries(&node.root().join("snapshots/sha256"));
    assert!(
        left.is_empty(),
        "snapshots left after every cache and disk went: {left:?}\n{}",
        d.log()
    );
    node.daemon.stop();
    let snapshot_dirs = entries(&node.root().join("snapshotter/snapshots"));
    assert!(
        snapshot_dirs.is_empty(),
        "snapshotter directories left: {snapshot_dirs:?}"
    );
    assert_no_leaks(node.root());
}

fn one_image() -> (TestRegistry, String) {
    let registry = TestRegistry::start();
    let image = feature_set(1).push_all(&registry.addr(), None).remove(0);
    (registry, image)
}

#[test]
fn build_points() {
    let (registry, image) = one_image();
    for point in BUILD_POINTS {
        let mut node = Node::new(&registry.addr());
        node.arm(point);
        // The cache is recorded before its build starts, but the answer can be lost: the
        // build runs on the work runtime and may reach an early point (mkfs) before the API
        // runtime has written the 201. Whether the daemon died at the point, and left the
        // cache, is what the lines below check.
        let _answer = node
            .daemon
            .create(&cache_yaml("c", std::slice::from_ref(&image), ""), false);
        node.dies_at_and_restarts(point);
        assert_invariants(&node.daemon, point);
        let c = node.daemon.get_json("c");
        assert_eq!(c["status"]["phase"], "Failed", "{point}: {c:#}");
        // The node still builds: the same images again, into a new cache.
        build_cache(&node.daemon, "again", &image);
        assert_invariants(&node.daemon, point);
        empty_and_stop(node, &[]);
    }
}

/// Waits until cache `name` on `d` has been pushed.
fn wait_pushed(d: &TestDaemon, name: &str) {
    let c = d.wait_until(name, DEATH_WAIT, |c| {
        c["status"]["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["reason"] == "Pushed" || e["reason"] == "PushFailed")
        })
    });
    assert!(c["status"]["sharedAs"].is_string(), "{c:#}\n{}", d.log());
}

#[test]
fn import_points() {
    let (registry, image) = one_image();
    let share = TestRegistry::start();
    let builder = Node::sharing(&registry.addr(), &share.addr());
    build_cache(&builder.daemon, "c", &image);
    wait_pushed(&builder.daemon, "c");
    for point in IMPORT_POINTS {
        let mut node = Node::sharing(&registry.addr(), &share.addr());
        node.arm(point);
        let _answer = node
            .daemon
            .create(&cache_yaml("c", std::slice::from_ref(&image), ""), false);
        node.dies_at_and_restarts(point);
        assert_invariants(&node.daemon, point);
        let c = node.daemon.get_json("c");
        assert_eq!(c["status"]["phase"], "Failed", "{point}: {c:#}");
        // The node still imports it, taking what the killed import wrote.
        build_cache(&node.daemon, "again", &image);
        let again = node.daemon.get_json("again");
        assert_eq!(again["status"]["source"], "imported", "{point}: {again:#}");
        if point.starts_with("import.chunk") {
            let imported = again["status"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["reason"] == "Imported")
                .map(|e| e["message"].as_str().unwrap().to_owned())
                .unwrap();
            assert!(
                !imported.contains(", 0 from an interrupted import"),
                "{point}: nothing resumed: {imported}"
            );
        }
        assert_invariants(&node.daemon, point);
        empty_and_stop(node, &[]);
    }
    empty_and_stop(builder, &[]);
}

#[test]
fn disk_points() {
    let (registry, image) = one_image();
    for point in DISK_POINTS {
        let mut node = Node::new(&registry.addr());
        let cache_id = build_cache(&node.daemon, "base", &image);
        let kept = disk_create(&node.daemon, &image, &cache_id, &[]);
        assert!(kept.status.success(), "{}", node.daemon.log());
        let kept: Value = serde_json::from_str(&String::from_utf8_lossy(&kept.stdout)).unwrap();
        let mountpoint = PathBuf::from(kept["status"]["mountpoint"].as_str().unwrap());
        std::fs::write(mountpoint.join("pod-data"), "kept").unwrap();
        node.arm(point);
        if *point == "disk.delete" {
            // The CLI sees the connection drop.
            node.daemon.cli(&["disk", "delete", &name_of(&kept)]);
        } else {
            // Larger than the cache: the grown image is made first.
            let size = if *point == "disk.grow" { "30" } else { "20" };
            let extra: &[&str] = if *point == "disk.attach" {
                &["--size", size, "--no-mount", "--name", "crashed"]
            } else {
                &["--size", size, "--name", "crashed"]
            };
            disk_create(&node.daemon, &image, &cache_id, extra);
        }
        node.dies_at_and_restarts(point);
        assert_invariants(&node.daemon, point);
        let now: Value = serde_json::from_str(&node.daemon.cli_ok(&[
            "disk",
            "get",
            &name_of(&kept),
            "-o",
            "json",
        ]))
        .unwrap();
        if *point == "disk.delete" {
            assert_eq!(now["status"]["phase"], "Failed", "{now:#}");
        } else {
            assert_eq!(now["status"]["phase"], "Ready", "{now:#}");
            assert_eq!(
                std::fs::read_to_string(mountpoint.join("pod-data")).unwrap(),
                "kept"
            );
        }
        // Disks are still made after the restart, under the dead create's name too: it was
        // never stored, so nothing of it is left to answer.
        let again = disk_create(&node.daemon, &image, &cache_id, &["--name", "crashed"]);
        assert!(again.status.success(), "{}", node.daemon.log());
        let again: Value = serde_json::from_slice(&again.stdout).unwrap();
        assert_eq!(name_of(&again), "crashed", "{again:#}");
        assert_invariants(&node.daemon, point);
        empty_and_stop(node, &[]);
    }
}

#[test]
fn delete_and_gc_points() {
    let (registry, image) = one_image();
    for point in DELETE_POINTS {
        let mut node = Node::new(&registry.addr());
        build_cache(&node.daemon, "c", &image);
        if *point == "gc.collect" {
            // Expired while the daemon was down: the first retention pass takes it at start.
            node.daemon.stop();
            let store = imagecache::store::Store::open(&node.root().join("state.db")).unwrap();
            store
                .update_cache("c", |c| {
                    c.status.as_mut().unwrap().expire_date_time =
                        Some("2000-01-01T00:00:00Z".into())
                })
                .unwrap();
            drop(store);
            node.daemon.spawn_with_env(&[(fault::ENV, point)]);
        } else {
            node.arm(point);
            node.daemon.cli(&["delete", "c"]);
        }
        node.dies_at_and_restarts(point);
        if *point == "gc.collect" {
            // The restarted daemon's own first pass deletes it.
            let deadline = Instant::now() + Duration::from_secs(30);
            while node.daemon.list_names().contains(&"c".to_owned()) {
                assert!(Instant::now() < deadline, "{}", node.daemon.log());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        assert_invariants(&node.daemon, point);
        assert!(!node.daemon.list_names().contains(&"c".to_owned()));
        empty_and_stop(node, &[]);
    }
}

/// A gRPC client of the daemon's containerd snapshotter socket, as containerd's proxy is.
struct Snapshots {
    rt: tokio::runtime::Runtime,
    client: containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient<
        tonic::transport::Channel,
    >,
}

struct UnixConnector(PathBuf);

impl tonic::codegen::Service<tonic::transport::Uri> for UnixConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut tonic::codegen::Context<'_>,
    ) -> tonic::codegen::Poll<Result<(), Self::Error>> {
        tonic::codegen::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move {
            Ok(hyper_util::rt::TokioIo::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    }
}

const SNAPSHOTTER: &str = "imagecache";

impl Snapshots {
    fn connect(socket: &Path) -> Snapshots {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = rt
            .block_on(
                tonic::transport::Endpoint::from_static("http://[::]:50051")
                    .connect_with_connector(UnixConnector(socket.to_owned())),
            )
            .unwrap();
        Snapshots {
            rt,
            client:
                containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient::new(
                    channel,
                ),
        }
    }

    fn prepare(&self, key: &str) -> Result<(), tonic::Status> {
        use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
        let mut c = self.client.clone();
        self.rt
            .block_on(c.prepare(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: String::new(),
                labels: Default::default(),
            }))
            .map(|_| ())
    }

    fn commit(&self, name: &str, key: &str) -> Result<(), tonic::Status> {
        use containerd_client::services::v1::snapshots::CommitSnapshotRequest;
        let mut c = self.client.clone();
        self.rt
            .block_on(c.commit(CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.into(),
                key: key.into(),
                labels: Default::default(),
            }))
            .map(|_| ())
    }

    fn try_remove(&self, key: &str) -> Result<(), tonic::Status> {
        use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
        let mut c = self.client.clone();
        self.rt
            .block_on(c.remove(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .map(|_| ())
    }

    /// Removes `key`; one already gone is fine.
    fn remove(&self, key: &str) {
        if let Err(e) = self.try_remove(key) {
            assert_eq!(e.code(), tonic::Code::NotFound, "remove {key}: {e}");
        }
    }
}

/// The snapshotter's records (by id) and directories, read with the daemon stopped.
fn snapshotter_state(root: &Path) -> (BTreeMap<i64, String>, BTreeSet<String>) {
    let store = imagecache::store::Store::open(&root.join("state.db")).unwrap();
    let records = store
        .list_ctr_snapshots()
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.kind.as_str().to_owned()))
        .collect();
    (records, entries(&root.join("snapshotter/snapshots")))
}

#[test]
fn snapshotter_points() {
    let (registry, _) = one_image();
    for point in SNAPSHOTTER_POINTS {
        let mut node = Node::new(&registry.addr());
        {
            let s = Snapshots::connect(&node.daemon.snapshotter_socket());
            s.prepare("kept-active").unwrap();
            if *point != "snapshotter.prepare" {
                s.prepare("active").unwrap();
            }
            if *point == "snapshotter.remove" {
                s.commit("layer", "active").unwrap();
            }
        }
        node.arm(point);
        {
            let s = Snapshots::connect(&node.daemon.snapshotter_socket());
            let answer = match *point {
                "snapshotter.prepare" => s.prepare("active"),
                "snapshotter.commit" => s.commit("layer", "active"),
                _ => s.try_remove("layer"),
            };
            assert!(answer.is_err(), "{point}: the daemon answered before dying");
        }
        node.dies_at_and_restarts(point);
        assert_invariants(&node.daemon, point);
        node.daemon.stop();
        let (records, dirs) = snapshotter_state(node.root());
        let named: BTreeSet<String> = records.keys().map(|id| id.to_string()).collect();
        assert_eq!(
            dirs, named,
            "{point}: directories against records {records:?}"
        );
        for (id, kind) in &records {
            let dir = node
                .root()
                .join("snapshotter/snapshots")
                .join(id.to_string());
            if kind == "committed" {
                assert!(
                    !dir.join("work").exists(),
                    "{point}: committed snapshot {id} keeps an overlay work directory"
                );
            } else {
                assert!(
                    dir.join("fs").is_dir(),
                    "{point}: {id} lacks its fs directory"
                );
            }
        }
        node.daemon.spawn();
        empty_and_stop(node, &["kept-active", "active", "layer"]);
    }
}

/// A small xorshift generator: the soak's choices replay from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Default, Debug)]
struct Tally {
    runs: usize,
    kills: usize,
    at_points: usize,
    after_delays: usize,
    points_missed: usize,
    leaks: usize,
    corrupt_ready: usize,
    lost_disks: usize,
    other: usize,
}

/// One step of the mixed workload; errors are expected (the daemon dies under it).
fn soak_op(
    d: &TestDaemon,
    rng: &mut Rng,
    kind: &str,
    images: &[String],
    seq: &mut usize,
    deleted_disks: &mut BTreeSet<String>,
) {
    *seq += 1;
    let caches: Vec<Value> = serde_json::from_slice(&d.cli(&["get", "-o", "json"]).stdout)
        .ok()
        .and_then(|v: Value| v["items"].as_array().cloned())
        .unwrap_or_default();
    let disks: Vec<Value> = serde_json::from_slice(&d.cli(&["disk", "get", "-o", "json"]).stdout)
        .ok()
        .and_then(|v: Value| v["items"].as_array().cloned())
        .unwrap_or_default();
    let ready: Vec<&Value> = caches
        .iter()
        .filter(|c| c["status"]["phase"] == "Ready")
        .collect();
    match kind {
        "build" => {
            let image = &images[rng.below(images.len())];
            d.create(
                &cache_yaml(&format!("c{seq}"), std::slice::from_ref(image), ""),
                true,
            );
        }
        "cache" => {
            if let Some(c) = caches.get(rng.below(caches.len())) {
                d.cli(&["delete", &name_of(c)]);
            }
        }
        "disk" | "disk.delete" if kind == "disk.delete" || disks.len() >= 4 => {
            if let Some(disk) = disks.get(rng.below(disks.len())) {
                deleted_disks.insert(name_of(disk));
                d.cli(&["disk", "delete", &name_of(disk)]);
            }
        }
        "disk" => match ready.get(rng.below(ready.len())) {
            Some(c) => {
                let image = c["spec"]["images"][0].as_str().unwrap_or_default();
                let id = c["status"]["imageCacheId"].as_str().unwrap_or_default();
                let size = ["20", "30"][rng.below(2)];
                let mount: &[&str] = [&[][..], &["--no-mount"][..]][rng.below(4) / 3];
                let mut args = vec!["--size", size];
                args.extend_from_slice(mount);
                // Half of them named, as a pod's UID would name them.
                let name = format!("pod-{seq}");
                if rng.below(2) == 0 {
                    args.extend_from_slice(&["--name", &name]);
                }
                disk_create(d, image, id, &args);
            }
            None => {
                d.create(
                    &cache_yaml(&format!("c{seq}"), &[images[0].clone()], ""),
                    true,
                );
            }
        },
        _ => {
            // The snapshotter: an active snapshot, committed as a layer, or one removed.
            let Ok(stream) = std::os::unix::net::UnixStream::connect(d.snapshotter_socket()) else {
                return;
            };
            drop(stream);
            let s = Snapshots::connect(&d.snapshotter_socket());
            match rng.below(3) {
                0 => {
                    let _ = s.prepare(&format!("a{seq}"));
                }
                1 => {
                    let _ = s.prepare(&format!("a{seq}"));
                    let _ = s.commit(&format!("l{seq}"), &format!("a{seq}"));
                }
                _ => {
                    for n in (1..*seq).rev().take(4) {
                        let _ = s.try_remove(&format!("a{n}"));
                        let _ = s.try_remove(&format!("l{n}"));
                    }
                }
            }
        }
    }
}

fn op_for(point: &str) -> &'static str {
    match point.split(['.', ':']).next().unwrap() {
        "build" => "build",
        "disk" if point.starts_with("disk.delete") => "disk.delete",
        // Disk creates attach and mount (builds too, later in the workload).
        "disk" | "loop" | "mount" => "disk",
        // Snapshot commits are a build's.
        "snapshot" => "build",
        "cache" | "gc" => "cache",
        // A build imports what another build of the same images pushed.
        "import" => "build",
        _ => "snapshotter",
    }
}

/// `scripts/crash-soak.sh N`: N kills of a mixed workload (builds, cache deletes, disk
/// creates and deletes, snapshotter requests) at random fault points or after random
/// delays, the invariants checked after each restart; a tally at the end.
#[test]
#[ignore = "the crash soak: run by scripts/crash-soak.sh"]
fn soak() {
    let runs: usize = std::env::var("IMAGECACHE_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let max = Duration::from_secs(
        std::env::var("IMAGECACHE_SOAK_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(600),
    );
    let seed = std::env::var("IMAGECACHE_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash soak: {runs} runs, at most {max:?}, seed {seed}");
    let mut rng = Rng(seed);
    let setup_started = Instant::now();
    let registry = TestRegistry::start();
    let images: Vec<String> = feature_set(2)
        .push_all(&registry.addr(), None)
        .into_iter()
        .take(3)
        .collect();
    // Sharing on: every Ready build pushes, and a later build of the same images imports
    // it, so the import points are reached too.
    let share = TestRegistry::start();
    let mut node = Node::sharing(&registry.addr(), &share.addr());
    // The bound is the soak's own: registries, images and the first daemon start (slow on
    // a busy host) are not part of it.
    let setup = setup_started.elapsed();
    eprintln!("crash soak: set up in {:.0} s", setup.as_secs_f64());
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut seq = 0;
    let mut failures = Vec::new();
    while tally.kills < runs && started.elapsed() < max {
        tally.runs += 1;
        let at_point = rng.below(10) < 7;
        let mut point = String::new();
        if at_point {
            point = fault::POINTS[rng.below(fault::POINTS.len())].to_owned();
            if point == "build.layer" {
                point = format!("build.layer:{}", 1 + rng.below(3));
            }
            if point == "import.chunk" {
                point = format!("import.chunk:{}", 1 + rng.below(3));
            }
        }
        // What the store knows before the run: none of it may vanish but by a delete.
        let before: BTreeSet<String> = items(&node.daemon, &["disk", "get", "-o", "json"])
            .iter()
            .map(name_of)
            .collect();
        node.daemon.stop();
        if point == "gc.collect" {
            let store = imagecache::store::Store::open(&node.root().join("state.db")).unwrap();
            let ready: Vec<String> = store
                .list_caches()
                .unwrap()
                .into_iter()
                .filter(|c| c.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
                .map(|c| c.metadata.name)
                .collect();
            if let Some(name) = ready.get(rng.below(ready.len())) {
                store
                    .update_cache(name, |c| {
                        c.status.as_mut().unwrap().expire_date_time =
                            Some("2000-01-01T00:00:00Z".into())
                    })
                    .unwrap();
            }
        }
        let env: Vec<(&str, &str)> = if at_point {
            vec![(fault::ENV, point.as_str())]
        } else {
            Vec::new()
        };
        node.daemon.spawn_with_env(&env);
        let killer = (!at_point).then(|| {
            let pid = node.daemon.pid();
            let delay = Duration::from_millis(200 + rng.next() % 4800);
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            })
        });
        let mut deleted = BTreeSet::new();
        let first = if at_point { op_for(&point) } else { "" };
        eprintln!(
            "run {}: {}",
            tally.runs,
            if at_point {
                format!("armed {point}")
            } else {
                "killed after a random delay".into()
            }
        );
        for step in 0..8 {
            if !node.daemon.running() {
                break;
            }
            let kind = if step == 0 && !first.is_empty() {
                first
            } else {
                [
                    "build",
                    "cache",
                    "disk",
                    "disk",
                    "disk.delete",
                    "snapshotter",
                ][rng.below(6)]
            };
            soak_op(
                &node.daemon,
                &mut rng,
                kind,
                &images,
                &mut seq,
                &mut deleted,
            );
        }
        if let Some(k) = killer {
            k.join().unwrap();
        }
        let status = match node
            .daemon
            .wait_exit(Duration::from_secs(if at_point { 1 } else { 10 }))
        {
            Some(s) => s,
            None => {
                // The workload did not reach the armed point: kill it now instead.
                tally.points_missed += 1;
                node.daemon.kill9();
                tally.kills += 1;
                tally.after_delays += 1;
                node.daemon.spawn();
                check_soak_run(&node, &before, &deleted, &mut tally, &mut failures, &point);
                continue;
            }
        };
        tally.kills += 1;
        assert_eq!(status.signal(), Some(9), "{status}:\n{}", node.daemon.log());
        if at_point {
            tally.at_points += 1;
        } else {
            tally.after_delays += 1;
        }
        node.daemon.spawn();
        check_soak_run(&node, &before, &deleted, &mut tally, &mut failures, &point);
    }
    let elapsed = started.elapsed();
    empty_and_stop_soak(node, &mut tally, &mut failures);
    eprintln!(
        "crash soak tally: runs {} kills {} (at fault points {}, after random delays {}; armed points not reached {}) leaks {} corrupt_ready {} lost_disks {} other {} in {:.0} s (seed {seed})",
        tally.runs,
        tally.kills,
        tally.at_points,
        tally.after_delays,
        tally.points_missed,
        tally.leaks,
        tally.corrupt_ready,
        tally.lost_disks,
        tally.other,
        elapsed.as_secs_f64()
    );
    // A soak cut short by its time bound proved less than it was asked to: that is a
    // failure, not a smaller pass.
    if tally.kills < runs {
        failures.push(format!(
            "the time bound ({max:?}) ended the soak after {} of the {runs} kills asked for: give more time (--max-seconds) or ask for fewer kills",
            tally.kills
        ));
    }
    assert!(
        failures.is_empty(),
        "crash soak failures:\n{}",
        failures.join("\n")
    );
}

fn check_soak_run(
    node: &Node,
    before: &BTreeSet<String>,
    deleted: &BTreeSet<String>,
    tally: &mut Tally,
    failures: &mut Vec<String>,
    point: &str,
) {
    let d = &node.daemon;
    let after: BTreeSet<String> = items(d, &["disk", "get", "-o", "json"])
        .iter()
        .map(name_of)
        .collect();
    for id in before.difference(&after) {
        if !deleted.contains(id) {
            tally.lost_disks += 1;
            failures.push(format!("run {}: disk {id} vanished ({point})", tally.runs));
        }
    }
    for line in violations(d) {
        if line.contains("does not verify") {
            tally.corrupt_ready += 1;
        } else if line.contains("Ready but") {
            tally.lost_disks += 1;
        } else if line.contains("no disk owns")
            || line.contains("left")
            || line.contains("no stored disk")
            || line.contains("no cache or disk")
        {
            tally.leaks += 1;
        } else {
            tally.other += 1;
        }
        failures.push(format!("run {} ({point}): {line}", tally.runs));
    }
}

fn empty_and_stop_soak(mut node: Node, tally: &mut Tally, failures: &mut Vec<String>) {
    let d = &node.daemon;
    for disk in items(d, &["disk", "get", "-o", "json"]) {
        d.cli_ok(&["disk", "delete", &name_of(&disk)]);
    }
    for cache in items(d, &["get", "-o", "json"]) {
        d.cli_ok(&["delete", &name_of(&cache)]);
    }
    let left = entries(&node.root().join("snapshots/sha256"));
    if !left.is_empty() {
        tally.leaks += left.len();
        failures.push(format!(
            "snapshots left after every cache and disk went: {left:?}"
        ));
    }
    node.daemon.stop();
    let root = node.root().canonicalize().unwrap();
    let (loops, mounts) = support::oracle::held_under(&root);
    let (loops, mounts) = (loops.len(), mounts.len());
    if loops + mounts > 0 {
        tally.leaks += loops + mounts;
        failures.push(format!(
            "after the end: {loops} loop devices, {mounts} mounts under the state root"
        ));
    }
}
