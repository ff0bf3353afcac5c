//! The host running out of what a build needs, under a real daemon.
//!
//! Room: the state root on a filesystem far smaller than the image being pulled (the cache's
//! own filesystem is large, so only the host's can fill). The build must end Failed saying
//! the state root's filesystem is full, leave no work directory, loop device or mount, and the
//! daemon must keep serving (a small build after it succeeds once the space is given back).
//!
//! Loop devices: the daemon run where none can be had (its own mount namespace, with
//! /dev/loop-control replaced by /dev/null). The build fails naming the attach, nothing is
//! left behind, and the cache built before is untouched.
//!
//! The kernel out of loop devices, and every device taken by another process first: the
//! daemon run with `IMAGECACHE_FAULT_ERRNO` making LOOP_CTL_GET_FREE answer ENOSPC (or
//! ENODEV), or LOOP_CONFIGURE answer EBUSY, at the real call (exhausting the host's devices
//! would take them from everyone else). Builds end Failed with a `NoLoopDevice` Warning, disk
//! creates answer 503 saying what to free, the EBUSY retry gives up within seconds without
//! stalling the API, nothing is left attached, mounted or written, other disks keep working,
//! and once the fault is gone the same requests succeed.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imagecache::fault;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::LayerSpec;
use support::hostile_registry::HostileRegistry;
use support::oci::{Compression, Image, ManifestFormat};
use support::scratch::{assert_no_leaks, ScratchXfs};

/// `n` bytes that neither compress to nothing in ext4 nor are all zeros (which an unpacker
/// may leave as holes), yet gzip well so the blob stays small.
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"imagecache-fills-the-host."[i % 26])
        .collect()
}

#[test]
fn the_host_filesystem_filling_during_a_build_fails_it_cleanly() {
    // XFS's smallest: 300 MiB. The layer holds 512 MiB of file data.
    let scratch = ScratchXfs::new(320 << 20);
    let root = scratch.path().join("state");
    let reg = HostileRegistry::start();
    let addr = reg.addr().to_owned();

    let mut big = LayerSpec::new(Compression::Gzip);
    big.dir("data");
    for i in 0..8 {
        big.file(&format!("data/part{i}"), pattern(64 << 20));
    }
    reg.push(
        "big",
        "v1",
        &Image::new(vec![big.to_layer()], ManifestFormat::Oci),
    );
    let mut small = LayerSpec::new(Compression::Gzip);
    small.file("hello", "still serving\n");
    reg.push(
        "small",
        "v1",
        &Image::new(vec![small.to_layer()], ManifestFormat::Oci),
    );

    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let out = daemon.create(
        &cache_yaml("fills-host", &[format!("{addr}/big:v1")], ""),
        true,
    );
    assert!(
        !out.status.success(),
        "the build cannot fit on the host: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        daemon.log()
    );
    let cache = daemon.get_json("fills-host");
    assert_eq!(cache["status"]["phase"], "Failed", "{cache:#}");
    let message = cache["status"]["message"].as_str().unwrap_or_default();
    eprintln!("fills-host: {message}");
    assert!(
        message.contains("the host filesystem holding the state root")
            && message.contains("is full")
            && message.contains(root.to_str().unwrap()),
        "a no-space error: {message}\n--- daemon log ---\n{}",
        daemon.log()
    );

    // Nothing half-made is left taking the space, and the daemon still builds.
    let left: Vec<_> = std::fs::read_dir(root.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "work/ is not empty: {left:?}");
    let out = daemon.create(
        &cache_yaml("after", &[format!("{addr}/small:v1")], ""),
        true,
    );
    assert!(
        out.status.success(),
        "the daemon builds again once the space is back: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    daemon.wait_until("after", Duration::from_secs(5), |c| {
        c["status"]["phase"] == "Ready"
    });
    daemon.stop();
    assert_no_leaks(&root);
}

/// Starts `imagecached` with `daemon`'s config in a mount namespace of its own where
/// /dev/loop-control is /dev/null: no loop device can be had, as when the kernel has none to
/// give. Only that process sees it; the host's loop devices are untouched.
fn spawn_without_loop_devices(daemon: &TestDaemon, log: &std::path::Path) -> std::process::Child {
    let log = std::fs::File::create(log).unwrap();
    let child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation=private", "sh", "-c"])
        .arg("mount --bind /dev/null /dev/loop-control && exec \"$0\" --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_imagecached"))
        .arg(&daemon.config_path)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&daemon.socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "imagecached did not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn no_loop_device_to_be_had_fails_the_build_clearly_and_loses_nothing() {
    let scratch = ScratchXfs::new(8 << 30);
    let root = scratch.path().join("state");
    let reg = HostileRegistry::start();
    let addr = reg.addr().to_owned();
    for repo in ["first", "second"] {
        let mut l = LayerSpec::new(Compression::Gzip);
        l.file("hello", format!("{repo}\n"));
        reg.push(
            repo,
            "v1",
            &Image::new(vec![l.to_layer()], ManifestFormat::Oci),
        );
    }

    // A cache built while loop devices were there.
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let out = daemon.create(
        &cache_yaml("first", &[format!("{addr}/first:v1")], ""),
        true,
    );
    assert!(out.status.success(), "{}", daemon.log());
    daemon.stop();

    let log = scratch.path().join("no-loop.log");
    let mut child = spawn_without_loop_devices(&daemon, &log);
    let out = daemon.create(
        &cache_yaml("second", &[format!("{addr}/second:v1")], ""),
        true,
    );
    let daemon_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !out.status.success(),
        "no loop device, no build:\n{daemon_log}"
    );
    let second = daemon.get_json("second");
    assert_eq!(second["status"]["phase"], "Failed", "{second:#}");
    let message = second["status"]["message"].as_str().unwrap_or_default();
    eprintln!("second: {message}");
    assert!(
        message.contains("loop"),
        "the error names the loop device: {message}\n{daemon_log}"
    );
    // Nothing half-made, and the cache made before is as it was.
    let left: Vec<_> = std::fs::read_dir(root.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "work/ is not empty: {left:?}");
    assert_eq!(daemon.get_json("first")["status"]["phase"], "Ready");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert_no_leaks(&root);

    // With loop devices back, the failed cache is rebuilt by creating it again.
    daemon.spawn();
    assert_eq!(daemon.get_json("first")["status"]["phase"], "Ready");
    daemon.cli_ok(&["delete", "second"]);
    let out = daemon.create(
        &cache_yaml("second", &[format!("{addr}/second:v1")], ""),
        true,
    );
    assert!(out.status.success(), "{}", daemon.log());
    daemon.stop();
    assert_no_leaks(&root);
}

/// `losetup -a` lines of devices whose backing file lies under `dir`.
fn losetup_under(dir: &Path) -> BTreeSet<String> {
    let out = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .expect("losetup runs");
    assert!(out.status.success(), "losetup -a: {out:?}");
    let dir = dir.to_str().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(dir))
        .map(str::to_owned)
        .collect()
}

/// Mount points under `dir` (not `dir` itself) in /proc/self/mountinfo.
fn mounts_under(dir: &Path) -> BTreeSet<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect()
}

/// Every file and directory under `dir`, relative to it (not below mount points other than
/// `dir`'s own filesystem: a disk's contents are its own).
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mounts = mounts_under(dir);
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            found.insert(path.strip_prefix(dir).unwrap().to_owned());
            if path.is_dir() && !path.is_symlink() && !mounts.contains(&path) {
                todo.push(path);
            }
        }
    }
    found
}

/// What a failed loop attach may not change: the loop devices and mounts under the scratch
/// filesystem, and the files of the state root apart from the store's own database and the
/// daemon's bookkeeping that a request moves anyway.
#[derive(Debug, PartialEq, Eq)]
struct Host {
    loops: BTreeSet<String>,
    mounts: BTreeSet<PathBuf>,
    disks: BTreeSet<PathBuf>,
    work: BTreeSet<PathBuf>,
}

impl Host {
    fn now(scratch: &Path, root: &Path) -> Host {
        Host {
            loops: losetup_under(scratch),
            mounts: mounts_under(scratch),
            disks: tree(&root.join("disks")),
            work: tree(&root.join("work")),
        }
    }
}

fn one_layer_image(reg: &HostileRegistry, repo: &str) {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.file("hello", format!("{repo}\n"));
    reg.push(
        repo,
        "v1",
        &Image::new(vec![l.to_layer()], ManifestFormat::Oci),
    );
}

fn disk_create(d: &TestDaemon, image: &str, cache_id: &str) -> std::process::Output {
    d.cli(&[
        "disk", "create", "--image", image, "--cache", cache_id, "-o", "json",
    ])
}

fn disk_names(d: &TestDaemon) -> BTreeSet<String> {
    let list: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["disk", "get", "-o", "json"])).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["metadata"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A node with a Ready cache `first` and a mounted disk holding pod data, before any fault.
struct Node {
    daemon: TestDaemon,
    reg: HostileRegistry,
    addr: String,
    cache_id: String,
    kept: String,
    kept_mount: PathBuf,
    scratch: ScratchXfs,
}

impl Node {
    fn new() -> Node {
        // Sparse: the disks are 20 GiB each and hold a few KiB.
        let scratch = ScratchXfs::new(64 << 30);
        let reg = HostileRegistry::start();
        let addr = reg.addr().to_owned();
        one_layer_image(&reg, "first");
        one_layer_image(&reg, "second");
        let daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);
        let cache_id = daemon.ready_cache_id("first", &[format!("{addr}/first:v1")], "");
        let out = disk_create(&daemon, &format!("{addr}/first:v1"), &cache_id);
        assert!(out.status.success(), "{}", daemon.log());
        let kept: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kept_mount = PathBuf::from(kept["status"]["mountpoint"].as_str().unwrap());
        std::fs::write(kept_mount.join("pod-data"), "kept").unwrap();
        Node {
            daemon,
            reg,
            addr,
            cache_id,
            kept: kept["metadata"]["name"].as_str().unwrap().to_owned(),
            kept_mount,
            scratch,
        }
    }

    fn image(&self, repo: &str) -> String {
        format!("{}/{repo}:v1", self.addr)
    }

    fn host(&self) -> Host {
        Host::now(self.scratch.path(), &self.daemon.root)
    }

    /// Restarts the daemon with `IMAGECACHE_FAULT_ERRNO=spec` (empty: unarmed).
    fn restart_with(&mut self, spec: &str) {
        self.daemon.stop();
        let env: &[(&str, &str)] = if spec.is_empty() {
            &[]
        } else {
            &[(fault::ERRNO_ENV, spec)]
        };
        assert!(self.daemon.spawn_with_env(env), "{}", self.daemon.log());
    }

    /// The build of cache `name` fails for want of a loop device, leaving nothing: its
    /// message, after the checks every such failure must pass.
    fn build_fails(&self, name: &str) -> String {
        let before = self.host();
        let out = self
            .daemon
            .create(&cache_yaml(name, &[self.image("second")], ""), true);
        assert!(
            !out.status.success(),
            "no loop device, no build:\n{}",
            self.daemon.log()
        );
        let cache = self.daemon.get_json(name);
        assert_eq!(cache["status"]["phase"], "Failed", "{cache:#}");
        let message = cache["status"]["message"].as_str().unwrap().to_owned();
        let events = cache["status"]["events"].as_array().unwrap();
        assert!(
            events.iter().any(|e| e["type"] == "Warning"
                && e["reason"] == "NoLoopDevice"
                && e["message"] == message),
            "a NoLoopDevice Warning with the message: {cache:#}"
        );
        assert_eq!(self.host(), before, "a failed build leaves nothing");
        assert!(self.host().work.is_empty());
        message
    }

    /// A disk create fails for want of a loop device, leaving nothing and touching no other
    /// disk: the CLI's error, and how long the create took.
    fn disk_create_fails(&self) -> (String, Duration) {
        let before = self.host();
        let disks = disk_names(&self.daemon);
        let started = Instant::now();
        let out = disk_create(&self.daemon, &self.image("first"), &self.cache_id);
        let took = started.elapsed();
        assert!(
            !out.status.success(),
            "no loop device, no disk:\n{}",
            self.daemon.log()
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.contains("(HTTP 503)") && stderr.contains("cannot create the disk"),
            "503 saying the disk could not be made: {stderr}"
        );
        assert!(
            !stderr.contains("check that /dev/loop-control exists"),
            "no misleading hint: {stderr}"
        );
        assert_eq!(self.host(), before, "a failed disk create leaves nothing");
        assert_eq!(disk_names(&self.daemon), disks, "no record of the disk");
        self.kept_is_untouched();
        (stderr, took)
    }

    fn kept_is_untouched(&self) {
        let kept: serde_json::Value = serde_json::from_str(
            &self
                .daemon
                .cli_ok(&["disk", "get", &self.kept, "-o", "json"]),
        )
        .unwrap();
        assert_eq!(kept["status"]["phase"], "Ready", "{kept:#}");
        assert_eq!(
            std::fs::read_to_string(self.kept_mount.join("pod-data")).unwrap(),
            "kept"
        );
        std::fs::write(self.kept_mount.join("still-writable"), "yes").unwrap();
    }

    /// With the fault gone, the failed build succeeds when created again, and disks are made.
    fn recovers(&mut self, failed_caches: &[&str]) {
        self.restart_with("");
        self.kept_is_untouched();
        for name in failed_caches {
            self.daemon.cli_ok(&["delete", name]);
            let out = self
                .daemon
                .create(&cache_yaml(name, &[self.image("second")], ""), true);
            assert!(out.status.success(), "{}", self.daemon.log());
            assert_eq!(self.daemon.get_json(name)["status"]["phase"], "Ready");
        }
        let out = disk_create(&self.daemon, &self.image("first"), &self.cache_id);
        assert!(out.status.success(), "{}", self.daemon.log());
        let disk: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(disk["status"]["phase"], "Ready", "{disk:#}");
    }

    /// Deletes every disk, stops the daemon, and checks nothing is left attached or mounted
    /// and nothing was written beside the state root.
    fn finish(mut self) {
        for name in disk_names(&self.daemon) {
            self.daemon.cli_ok(&["disk", "delete", &name]);
        }
        self.daemon.stop();
        assert_no_leaks(&self.daemon.root);
        assert!(losetup_under(self.scratch.path()).is_empty());
        assert!(mounts_under(self.scratch.path()).is_empty());
        let beside: Vec<_> = std::fs::read_dir(self.scratch.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, ["state"], "nothing outside the state root");
        drop(self.reg);
    }
}

#[test]
fn the_kernel_out_of_loop_devices_fails_builds_and_disk_creates_clearly() {
    let mut node = Node::new();

    node.restart_with("loop.claim:ENOSPC");
    let message = node.build_fails("second");
    eprintln!("build, ENOSPC: {message}");
    for said in [
        "no free loop device",
        "LOOP_CTL_GET_FREE answered ENOSPC",
        "losetup -d",
        "max_loop",
    ] {
        assert!(message.contains(said), "{said:?} in {message}");
    }
    let (stderr, _) = node.disk_create_fails();
    eprintln!("disk create, ENOSPC: {stderr}");
    for said in ["no free loop device", "ENOSPC", "losetup -d", "max_loop"] {
        assert!(stderr.contains(said), "{said:?} in {stderr}");
    }
    // The API still answers everything else.
    assert_eq!(node.daemon.get_json("first")["status"]["phase"], "Ready");

    node.restart_with("loop.claim:ENODEV");
    let (stderr, _) = node.disk_create_fails();
    eprintln!("disk create, ENODEV: {stderr}");
    assert!(
        stderr.contains("LOOP_CTL_GET_FREE answered ENODEV") && stderr.contains("losetup -d"),
        "{stderr}"
    );

    node.recovers(&["second"]);
    node.finish();
}

#[test]
fn loop_devices_busy_on_every_attach_give_up_within_seconds() {
    let mut node = Node::new();

    node.restart_with("loop.attach:EBUSY");
    let message = node.build_fails("second");
    eprintln!("build, EBUSY: {message}");
    for said in [
        "LOOP_CONFIGURE answered EBUSY",
        "another process keeps taking",
    ] {
        assert!(message.contains(said), "{said:?} in {message}");
    }

    // While a disk create retries, the API keeps answering.
    let socket = node.daemon.socket.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = Instant::now();
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagecache"))
                    .arg("--socket")
                    .arg(&socket)
                    .args(["get", "-o", "json"])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
                slowest = slowest.max(started.elapsed());
                reads += 1;
            }
            (reads, slowest)
        })
    };
    let (stderr, took) = node.disk_create_fails();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, slowest) = reader.join().unwrap();
    eprintln!(
        "disk create, EBUSY: gave up after {took:?}; {reads} list requests meanwhile, the slowest {slowest:?}: {stderr}"
    );
    assert!(
        stderr.contains("LOOP_CONFIGURE answered EBUSY")
            && stderr.contains("another process keeps taking"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(6), "gave up after {took:?}");
    assert!(reads >= 5, "the API answered {reads} times meanwhile");
    assert!(slowest < Duration::from_secs(1), "a list took {slowest:?}");

    node.recovers(&["second"]);
    node.finish();
}
