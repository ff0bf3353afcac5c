//! Per-pod disks through the CLI against a running daemon, with real loop devices, a real
//! registry and a scratch XFS state root:
//!
//! - a disk cloned from a cache holds the pod's images (overlay of each chain = generator);
//! - an explicit cache lacking an image: the disk is cloned, the missing image pulled into it;
//! - no cache matches: an empty disk, every image pulled, a cache auto-created, and the next
//!   disk for the same pod clones it;
//! - ten disks from one snapshot are isolated, and the snapshot still verifies;
//! - a disk's size bounds what can be written to it, and nothing else;
//! - deleting a cache leaves its live disks readable and writable;
//! - a disk whose mount is busy is not deleted (nor half-deleted);
//! - `--no-mount` attaches only; `disk get -o json` prints exactly what the API returned;
//! - 200 create/delete cycles through the API leave no loop device, mount, file or snapshot
//!   reference behind.
//!
//! Every test deletes its disks, stops the daemon and checks nothing is left attached or
//! mounted under the state root.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::cachefs::mount_chain;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::{feature_set, FeatureSet};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

const ECI_IMC_ID: &str = "k8s.aliyun.com/eci-imc-id";
const DISKS: &str = "/apis/imagecache.io/v1/disks";

/// A daemon on a scratch XFS, the feature images in a registry, and a Ready cache `two` of
/// alpha and bravo. Fields drop in order: daemon, registry, scratch.
struct Fixture {
    daemon: TestDaemon,
    _registry: TestRegistry,
    set: FeatureSet,
    /// alpha, bravo, charlie references as pushed.
    refs: Vec<String>,
    root: PathBuf,
    /// `status.imageCacheId` of cache `two`.
    cache_id: String,
    scratch: ScratchXfs,
}

impl Fixture {
    fn new() -> Fixture {
        let scratch = ScratchXfs::new(128 << 30);
        let registry = TestRegistry::start();
        let addr = registry.addr();
        let set = feature_set(3);
        let refs = set.push_all(&addr, None);
        let root = scratch.path().join("state");
        let daemon = TestDaemon::start(&root, &[&addr]);
        let out = daemon.create(
            &cache_yaml("two", &refs[..2], "  imageCacheSize: 20\n"),
            true,
        );
        assert!(
            out.status.success(),
            "create cache: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            daemon.log()
        );
        let cache = daemon.get_json("two");
        assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
        let cache_id = cache["status"]["imageCacheId"].as_str().unwrap().to_owned();
        Fixture {
            daemon,
            _registry: registry,
            set,
            refs,
            root,
            cache_id,
            scratch,
        }
    }

    fn pod_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.scratch.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// `disk create ARGS -o json` (which waits for pulls), parsed.
    fn create_disk(&self, args: &[&str]) -> Value {
        self.daemon.disk_create(args)
    }

    fn create_from_pod(&self, pod: &Path, extra: &[&str]) -> Value {
        let mut args = vec!["--pod", pod.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.create_disk(&args)
    }

    fn delete_disk(&self, disk: &Value) {
        let id = disk["metadata"]["name"].as_str().unwrap();
        self.daemon.cli_ok(&["disk", "delete", id]);
    }

    /// Overlay-mounts `image`'s chain from the disk and compares it with the generator.
    fn assert_holds(&self, disk: &Value, image: &str) {
        let mnt = mountpoint(disk);
        let img = self.set.get(image);
        let chain = img.artifact.host_image().chain_ids();
        let at = self.scratch.path().join(format!(
            "merged-{}-{image}",
            disk["metadata"]["name"].as_str().unwrap()
        ));
        let merged = mount_chain(&mnt, &chain, &at);
        assert_tree_eq(image, &img.expected, &walk(&merged.path));
        drop(merged);
        let _ = std::fs::remove_dir(&at);
    }

    /// No disk left, daemon stopped, nothing attached or mounted under the state root, no
    /// disk file left.
    fn finish(mut self) {
        let list: Value =
            serde_json::from_str(&self.daemon.cli_ok(&["disk", "get", "-o", "json"])).unwrap();
        assert_eq!(
            list["items"].as_array().map(Vec::len),
            Some(0),
            "disks left: {list:#}"
        );
        self.daemon.stop();
        assert_no_leaks(&self.root);
        let left: Vec<_> = std::fs::read_dir(self.root.join("disks"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "files left in disks/: {left:?}");
    }
}

fn status(disk: &Value) -> &Value {
    &disk["status"]
}

fn mountpoint(disk: &Value) -> PathBuf {
    PathBuf::from(
        status(disk)["mountpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("disk has no mountpoint: {disk:#}")),
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

fn event_reasons(disk: &Value) -> Vec<String> {
    status(disk)["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect()
}

fn event_message(disk: &Value, reason: &str) -> String {
    status(disk)["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == reason)
        .unwrap_or_else(|| panic!("no {reason} event: {disk:#}"))["message"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn pod_yaml(
    name: &str,
    annotations: &[(&str, &str)],
    containers: &[&str],
    init: &[&str],
) -> String {
    let mut y = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  uid: uid-{name}\n");
    if !annotations.is_empty() {
        y.push_str("  annotations:\n");
        for (k, v) in annotations {
            y.push_str(&format!("    {k}: {v:?}\n"));
        }
    }
    y.push_str("spec:\n  containers:\n");
    for (i, c) in containers.iter().enumerate() {
        y.push_str(&format!("  - name: c{i}\n    image: {c:?}\n"));
    }
    if !init.is_empty() {
        y.push_str("  initContainers:\n");
        for (i, c) in init.iter().enumerate() {
            y.push_str(&format!("  - name: i{i}\n    image: {c:?}\n"));
        }
    }
    y
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want))
}

/// Chain IDs that `snapshots.json` of a mounted disk lists, with the images using each.
fn snapshots_json(mnt: &Path) -> BTreeMap<String, Value> {
    serde_json::from_slice(&std::fs::read(mnt.join("snapshots.json")).unwrap()).unwrap()
}

fn index_names(mnt: &Path) -> Vec<String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(mnt.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[test]
fn a_disk_cloned_from_a_cache_holds_the_pods_images() {
    let f = Fixture::new();
    let pod = f.pod_file("web", &pod_yaml("web", &[], &[&f.refs[0]], &[&f.refs[1]]));
    let disk = f.create_from_pod(&pod, &[]);
    let s = status(&disk);
    assert_eq!(s["phase"], "Ready", "{disk:#}");
    assert_eq!(s["cacheId"], f.cache_id.as_str());
    assert_eq!(strings(&s["matchedImages"]), f.refs[..2].to_vec());
    assert!(strings(&s["missingImages"]).is_empty());
    assert!(strings(&s["pulledImages"]).is_empty());
    assert_eq!(s["sizeGiB"], 20);
    assert!(s["device"].as_str().unwrap().starts_with("/dev/loop"));
    assert_eq!(disk["metadata"]["labels"]["pod.imagecache.io/name"], "web");
    assert!(
        event_reasons(&disk).contains(&"Cloned".to_owned()),
        "{disk:#}"
    );
    let mnt = mountpoint(&disk);
    assert!(is_mounted(&mnt), "{} is not a mount", mnt.display());
    f.assert_holds(&disk, "alpha");
    f.assert_holds(&disk, "bravo");
    f.delete_disk(&disk);
    assert!(!is_mounted(&mnt));
    f.finish();
}

#[test]
fn an_explicit_cache_lacking_an_image_is_cloned_and_the_image_pulled_into_the_disk() {
    let f = Fixture::new();
    let pod = f.pod_file(
        "partial",
        &pod_yaml(
            "partial",
            &[(ECI_IMC_ID, &f.cache_id)],
            &[&f.refs[0], &f.refs[2]],
            &[&f.refs[1]],
        ),
    );
    let disk = f.create_from_pod(&pod, &[]);
    let s = status(&disk);
    assert_eq!(s["phase"], "Ready", "the CLI waits for the pull: {disk:#}");
    // The gets it waited with lack the bind token; the create's is kept.
    assert_eq!(
        s["bindToken"].as_str().map(str::len),
        Some(64),
        "the CLI lost the create's bind token while waiting: {disk:#}"
    );
    assert_eq!(s["cacheId"], f.cache_id.as_str());
    let mut matched = strings(&s["matchedImages"]);
    matched.sort();
    assert_eq!(matched, f.refs[..2].to_vec());
    assert_eq!(strings(&s["missingImages"]), vec![f.refs[2].clone()]);
    assert_eq!(strings(&s["pulledImages"]), vec![f.refs[2].clone()]);
    let msg = event_message(&disk, "PullingMissing");
    assert!(msg.contains(&f.refs[2]), "{msg}");
    assert!(
        event_reasons(&disk).contains(&"Pulled".to_owned()),
        "{disk:#}"
    );
    assert!(s["timings"]["pullMs"].as_f64().unwrap() > 0.0);

    let mnt = mountpoint(&disk);
    for image in ["alpha", "bravo", "charlie"] {
        f.assert_holds(&disk, image);
    }
    let snapshots = snapshots_json(&mnt);
    for (img, reference) in f.set.images.iter().zip(&f.refs) {
        for c in img.artifact.host_image().chain_ids() {
            let entry = snapshots
                .get(&c)
                .unwrap_or_else(|| panic!("snapshots.json of the disk lacks {c} of {reference}"));
            assert!(
                strings(&entry["images"]).contains(reference),
                "{c} lists {reference}: {entry}"
            );
        }
    }
    let names = index_names(&mnt);
    for r in &f.refs {
        assert!(names.contains(r), "index.json names {names:?}, not {r}");
    }
    f.delete_disk(&disk);
    f.finish();
}

#[test]
fn no_match_pulls_into_an_empty_disk_and_auto_creates_a_cache_the_next_pod_clones() {
    let f = Fixture::new();
    let pod = f.pod_file("cold", &pod_yaml("cold", &[], &[&f.refs[2]], &[]));
    let first = f.create_from_pod(&pod, &[]);
    let s = status(&first);
    assert_eq!(s["phase"], "Ready", "{first:#}");
    assert!(s["cacheId"].is_null(), "{first:#}");
    assert!(strings(&s["matchedImages"]).is_empty());
    assert_eq!(strings(&s["missingImages"]), vec![f.refs[2].clone()]);
    assert_eq!(strings(&s["pulledImages"]), vec![f.refs[2].clone()]);
    let auto = s["autoCreatedCache"]
        .as_str()
        .unwrap_or_else(|| panic!("no autoCreatedCache: {first:#}"))
        .to_owned();
    assert!(auto.starts_with("auto-"), "{auto}");
    let reasons = event_reasons(&first);
    assert!(
        reasons.contains(&"NoCacheMatched".to_owned()),
        "{reasons:?}"
    );
    assert!(event_message(&first, "AutoCreatedCache").contains(&auto));
    f.assert_holds(&first, "charlie");
    let names = index_names(&mountpoint(&first));
    assert_eq!(names, vec![f.refs[2].clone()]);

    let cache = f.daemon.wait_until(&auto, Duration::from_secs(300), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    assert_eq!(
        cache["metadata"]["annotations"]["imagecache.io/auto-created"],
        "true"
    );
    let auto_id = cache["status"]["imageCacheId"].as_str().unwrap();

    let second = f.create_from_pod(&pod, &[]);
    let s = status(&second);
    assert_eq!(s["phase"], "Ready", "{second:#}");
    assert_eq!(s["cacheId"], auto_id, "{second:#}");
    assert_eq!(strings(&s["matchedImages"]), vec![f.refs[2].clone()]);
    assert!(strings(&s["missingImages"]).is_empty(), "{second:#}");
    assert!(strings(&s["pulledImages"]).is_empty(), "{second:#}");
    assert!(s["autoCreatedCache"].is_null(), "{second:#}");
    assert_eq!(s["timings"]["pullMs"].as_f64(), Some(0.0));
    f.assert_holds(&second, "charlie");

    f.delete_disk(&first);
    f.delete_disk(&second);
    f.finish();
}

/// Different data for each disk.
fn pod_data(i: usize) -> Vec<u8> {
    (0..(1usize << 20) + i)
        .map(|n| (n.wrapping_mul(31) ^ (i * 97)) as u8)
        .collect()
}

#[test]
fn ten_disks_from_one_snapshot_each_see_only_their_own_writes() {
    let f = Fixture::new();
    let disks: Vec<Value> = (0..10)
        .map(|_| f.create_disk(&["--image", &f.refs[0], "--cache", "two"]))
        .collect();
    let digest = status(&disks[0])["snapshotDigest"]
        .as_str()
        .unwrap()
        .to_owned();
    // The largest regular file of the shared base layer: disks 0..9 overwrite it in place
    // (copy-on-write of blocks every clone shares); disk 9 leaves the image alone.
    let base = format!(
        "snapshots/{}/fs",
        f.set.get("alpha").artifact.host_image().chain_ids()[0]
    );
    let victim = walk(&mountpoint(&disks[0]).join(&base))
        .into_iter()
        .filter(|(_, e)| e.kind == support::tree::Kind::File)
        .max_by_key(|(_, e)| e.size)
        .map(|(p, _)| format!("{base}/{p}"))
        .unwrap();
    let original = std::fs::read(mountpoint(&disks[0]).join(&victim)).unwrap();
    assert!(
        original.len() > 1 << 20,
        "{victim}: {} bytes",
        original.len()
    );
    for (i, d) in disks.iter().enumerate() {
        assert_eq!(status(d)["snapshotDigest"], digest.as_str());
        let mnt = mountpoint(d);
        std::fs::write(mnt.join(format!("pod-{i}.bin")), pod_data(i)).unwrap();
        if i < 9 {
            let w = std::fs::OpenOptions::new()
                .write(true)
                .open(mnt.join(&victim))
                .unwrap();
            std::os::unix::fs::FileExt::write_all_at(&w, &pod_data(i)[..64 << 10], 4096).unwrap();
            w.sync_all().unwrap();
        }
        let mut sj = std::fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("snapshots.json"))
            .unwrap();
        writeln!(sj, "disk {i}").unwrap();
        sj.sync_all().unwrap();
    }
    for (i, d) in disks.iter().enumerate() {
        let mnt = mountpoint(d);
        let mine: Vec<String> = std::fs::read_dir(&mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("pod-"))
            .collect();
        assert_eq!(mine, vec![format!("pod-{i}.bin")], "disk {i}");
        assert!(
            std::fs::read(mnt.join(&mine[0])).unwrap() == pod_data(i),
            "disk {i}"
        );
        let now = std::fs::read(mnt.join(&victim)).unwrap();
        let mut expected = original.clone();
        if i < 9 {
            expected[4096..4096 + (64 << 10)].copy_from_slice(&pod_data(i)[..64 << 10]);
        }
        assert!(
            now == expected,
            "disk {i} sees other disks' writes to {victim}"
        );
        let sj = std::fs::read_to_string(mnt.join("snapshots.json")).unwrap();
        let marks: Vec<&str> = sj.lines().filter(|l| l.starts_with("disk ")).collect();
        assert_eq!(marks, vec![format!("disk {i}")], "disk {i}");
    }
    // The disk that left the image alone still holds it exactly, whatever the others wrote.
    f.assert_holds(&disks[9], "alpha");
    f.assert_holds(&disks[9], "bravo");
    let verified = f.daemon.cli_ok(&["verify", "two"]);
    assert!(verified.contains("verified"), "{verified}");
    for d in &disks {
        f.delete_disk(d);
    }
    f.finish();
}

#[test]
fn writing_past_a_disks_size_fails_with_enospc_in_that_disk_only() {
    let f = Fixture::new();
    let full = f.create_disk(&["--image", &f.refs[0], "--size", "20"]);
    let other = f.create_disk(&["--image", &f.refs[0]]);
    assert_eq!(status(&full)["sizeGiB"], 20);
    let mnt = mountpoint(&full);
    // Root may use the reserved blocks too: f_bfree, not f_bavail.
    let vfs = rustix::fs::statvfs(&mnt).unwrap();
    let free = vfs.f_bfree * vfs.f_frsize;
    assert!(
        free > 19 << 30 && free < 20 << 30,
        "a 20 GiB disk with {free} bytes free"
    );
    // Reserve most of it without writing (unwritten extents), then write the rest for real.
    let big = std::fs::File::create(mnt.join("reserved")).unwrap();
    rustix::fs::fallocate(
        &big,
        rustix::fs::FallocateFlags::empty(),
        0,
        free - (48 << 20),
    )
    .unwrap();
    drop(big);
    let mut fill = std::fs::File::create(mnt.join("fill")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let err = loop {
        match fill.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(
            written < 1 << 30,
            "wrote {written} bytes past the reservation, no ENOSPC"
        );
    };
    let err = match err.raw_os_error() {
        Some(_) => err,
        None => fill.sync_all().unwrap_err(),
    };
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::NOSPC.raw_os_error()),
        "{err}"
    );
    assert!(written < 64 << 20, "{written}");
    drop(fill);
    // The other disk and the scratch filesystem under them are fine.
    let other_mnt = mountpoint(&other);
    let mut g = std::fs::File::create(other_mnt.join("still-room")).unwrap();
    for _ in 0..32 {
        g.write_all(&chunk).unwrap();
    }
    g.sync_all().unwrap();
    drop(g);
    let scratch = rustix::fs::statvfs(f.scratch.path()).unwrap();
    assert!(
        scratch.f_bavail * scratch.f_frsize > 8 << 30,
        "the scratch filesystem filled up: {} bytes left",
        scratch.f_bavail * scratch.f_frsize
    );
    // The full disk itself still works once something is removed.
    std::fs::remove_file(mnt.join("fill")).unwrap();
    std::fs::write(mnt.join("after"), b"ok").unwrap();
    f.delete_disk(&full);
    f.delete_disk(&other);
    f.finish();
}

#[test]
fn deleting_a_cache_leaves_its_disks_readable_and_writable() {
    let f = Fixture::new();
    let disk = f.create_disk(&["--image", &f.refs[1]]);
    assert_eq!(status(&disk)["cacheId"], f.cache_id.as_str());
    let digest = status(&disk)["snapshotDigest"].as_str().unwrap().to_owned();
    let snap_dir = f
        .root
        .join("snapshots/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    f.daemon.cli_ok(&["delete", "two"]);
    assert!(!f.daemon.cli(&["get", "two"]).status.success());
    assert!(
        snap_dir.join("disk.img").is_file(),
        "the snapshot stays while a disk uses it"
    );

    let mnt = mountpoint(&disk);
    f.assert_holds(&disk, "bravo");
    f.assert_holds(&disk, "alpha");
    let data: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let mut w = std::fs::File::create(mnt.join("new-file")).unwrap();
    w.write_all(&data).unwrap();
    w.sync_all().unwrap();
    drop(w);
    assert_eq!(std::fs::read(mnt.join("new-file")).unwrap(), data);
    let fetched = f
        .daemon
        .cli_ok(&["disk", "get", disk["metadata"]["name"].as_str().unwrap()]);
    assert!(fetched.contains("Ready"), "{fetched}");

    f.delete_disk(&disk);
    assert!(
        !snap_dir.exists(),
        "the snapshot goes with its last user: {}",
        snap_dir.display()
    );
    f.finish();
}

#[test]
fn a_busy_disk_is_not_deleted_until_its_user_goes() {
    let f = Fixture::new();
    let disk = f.create_disk(&["--image", &f.refs[0]]);
    let id = disk["metadata"]["name"].as_str().unwrap();
    let mnt = mountpoint(&disk);
    let image = f.root.join("disks").join(format!("{id}.img"));
    let mut child = Command::new("sleep")
        .arg("30")
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    let out = f.daemon.cli(&["disk", "delete", id]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let refused = !out.status.success();
    let still_mounted = is_mounted(&mnt);
    // Check before asserting, so a failure does not leave `sleep` holding the mount.
    let readable = std::fs::read(mnt.join("snapshots.json")).is_ok();
    let listed = f.daemon.cli(&["disk", "get", id]).status.success();
    let _ = child.kill();
    let _ = child.wait();
    assert!(refused, "delete of a busy disk succeeded: {stderr}");
    assert!(stderr.to_lowercase().contains("busy"), "{stderr}");
    assert!(still_mounted, "the busy disk was unmounted anyway");
    assert!(
        readable && image.is_file() && listed,
        "the busy disk was half-deleted"
    );
    f.assert_holds(&disk, "alpha");

    f.delete_disk(&disk);
    assert!(!image.exists());
    assert!(!is_mounted(&mnt));
    f.finish();
}

/// GET of `path` on the daemon's socket: the body, exactly as sent.
fn api_get(socket: &Path, path: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(imagecache::cli::Client::new(socket).get(path))
        .unwrap()
        .body
}

#[test]
fn no_mount_attaches_only_and_get_prints_what_the_api_returned() {
    let f = Fixture::new();
    let disk = f.create_disk(&["--image", &f.refs[0], "--no-mount"]);
    let id = disk["metadata"]["name"].as_str().unwrap();
    let s = status(&disk);
    assert_eq!(s["phase"], "Ready", "{disk:#}");
    assert!(s["mountpoint"].is_null(), "{disk:#}");
    assert_eq!(disk["spec"]["mount"], false);
    let device = s["device"].as_str().unwrap();
    assert!(
        std::fs::metadata(device)
            .unwrap()
            .file_type()
            .is_block_device(),
        "{device}"
    );
    let dev_name = Path::new(device).file_name().unwrap().to_str().unwrap();
    let backing =
        std::fs::read_to_string(format!("/sys/block/{dev_name}/loop/backing_file")).unwrap();
    let image = f.root.join("disks").join(format!("{id}.img"));
    assert_eq!(
        Path::new(backing.trim()),
        image.canonicalize().unwrap(),
        "{device} is backed by the disk's file"
    );
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(9) == Some(device)),
        "{device} is mounted somewhere"
    );

    let one = f.daemon.cli_ok(&["disk", "get", id, "-o", "json"]);
    let api_one = api_get(
        &f.daemon.socket,
        &format!("/apis/imagecache.io/v1/disks/{id}"),
    );
    assert_eq!(
        one,
        format!("{}\n", String::from_utf8(api_one.clone()).unwrap())
    );
    let parsed: Value = serde_json::from_slice(&api_one).unwrap();
    // They agree but for the bind token, which the create's answer alone carries.
    let mut created = disk.clone();
    let token = created["status"]
        .as_object_mut()
        .unwrap()
        .remove("bindToken");
    assert!(
        token.is_some(),
        "no status.bindToken in the create: {disk:#}"
    );
    assert_eq!(
        parsed, created,
        "create -o json and get -o json agree but for the bind token"
    );
    let list = f.daemon.cli_ok(&["disk", "get", "-o", "json"]);
    let api_list = api_get(&f.daemon.socket, "/apis/imagecache.io/v1/disks");
    assert_eq!(list, format!("{}\n", String::from_utf8(api_list).unwrap()));
    let table = f.daemon.cli_ok(&["disk", "get"]);
    assert!(
        table.starts_with("ID") && table.contains(id) && table.contains(device),
        "{table}"
    );

    f.delete_disk(&disk);
    assert!(
        !Path::new(&format!("/sys/block/{dev_name}/loop/backing_file")).exists()
            || std::fs::read_to_string(format!("/sys/block/{dev_name}/loop/backing_file"))
                .map(|b| Path::new(b.trim()) != image)
                .unwrap_or(true),
        "{device} still attached to the deleted disk"
    );
    f.finish();
}

#[test]
fn two_hundred_create_delete_cycles_through_the_api_leave_nothing_behind() {
    let f = Fixture::new();
    let client = imagecache::cli::Client::new(&f.daemon.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = alpha_from_two(&f);
    let digest = rt.block_on(async {
        let mut digest = String::new();
        for i in 0..200 {
            let answer = client
                .post(DISKS, body.clone(), "application/json")
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: create: {e}"));
            let disk: Value = serde_json::from_slice(&answer.body).unwrap();
            assert_eq!(status(&disk)["phase"], "Ready", "cycle {i}: {disk:#}");
            digest = status(&disk)["snapshotDigest"].as_str().unwrap().to_owned();
            let id = disk["metadata"]["name"].as_str().unwrap();
            client
                .delete(&format!("{DISKS}/{id}"))
                .await
                .unwrap_or_else(|e| panic!("cycle {i}: delete {id}: {e}"));
        }
        digest
    });
    assert_all_disks_gone(f, &digest);
}

#[test]
fn thirty_two_concurrent_creates_and_deletes_get_distinct_devices_and_leave_nothing() {
    const AT_ONCE: usize = 32;
    let f = Fixture::new();
    let client = imagecache::cli::Client::new(&f.daemon.socket);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let body = alpha_from_two(&f);
    let disks: Vec<Value> = rt.block_on(async {
        let tasks: Vec<_> = (0..AT_ONCE)
            .map(|i| {
                let (client, body) = (client.clone(), body.clone());
                tokio::spawn(async move {
                    let answer = client
                        .post(DISKS, body, "application/json")
                        .await
                        .unwrap_or_else(|e| panic!("create {i}: {e}"));
                    serde_json::from_slice::<Value>(&answer.body).unwrap()
                })
            })
            .collect();
        let mut disks = Vec::new();
        for t in tasks {
            disks.push(t.await.unwrap());
        }
        disks
    });
    let mut devices = Vec::new();
    for disk in &disks {
        assert_eq!(status(disk)["phase"], "Ready", "{disk:#}");
        let mnt = mountpoint(disk);
        assert!(is_mounted(&mnt), "{} not mounted", mnt.display());
        // The cache's images, the pod's among them.
        let mut names = index_names(&mnt);
        names.sort();
        assert_eq!(names, f.refs[..2], "{}", mnt.display());
        devices.push(status(disk)["device"].as_str().unwrap().to_owned());
    }
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), AT_ONCE, "two disks share a loop device");
    let digest = status(&disks[0])["snapshotDigest"]
        .as_str()
        .unwrap()
        .to_owned();
    rt.block_on(async {
        let tasks: Vec<_> = disks
            .iter()
            .map(|d| {
                let client = client.clone();
                let id = d["metadata"]["name"].as_str().unwrap().to_owned();
                tokio::spawn(async move {
                    client
                        .delete(&format!("{DISKS}/{id}"))
                        .await
                        .unwrap_or_else(|e| panic!("delete {id}: {e}"));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_all_disks_gone(f, &digest);
}

/// After every disk of cache `two` was deleted: no loop device, mount or file is left, and
/// every disk released its snapshot reference, so deleting the cache removes the snapshot.
fn assert_all_disks_gone(f: Fixture, digest: &str) {
    assert_no_leaks(&f.root);
    let left: Vec<_> = std::fs::read_dir(f.root.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in disks/: {left:?}");
    f.daemon.cli_ok(&["delete", "two"]);
    let snap = f
        .root
        .join("snapshots/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    assert!(!snap.exists(), "{} outlived its cache", snap.display());
    f.finish();
}

/// The JSON of a Disk request for image alpha from cache `two`.
fn alpha_from_two(f: &Fixture) -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "imagecache.io/v1", "kind": "Disk",
        "spec": {"images": [f.refs[0]], "cacheId": "two"}
    })
    .to_string()
    .into_bytes()
}
