//! Caller-given disk mount paths, through the real daemon (root, loop devices, a registry on
//! 127.0.0.1, a scratch XFS state root). A "victim" directory outside the daemon's mount root
//! stands in for `/etc`; after every step the kernel's mount table (/proc/self/mountinfo) is
//! checked for a mount there.
//!
//! - a mountPath outside `disk_mount_root` is refused (422 naming spec.mountPath and the
//!   root), as is one holding `,upperdir=/`, `:`, a space, a newline or `..`: nothing mounted;
//! - a symlink inside the mount root pointing at the victim is never followed (nor is one
//!   planted inside another disk's filesystem, which its pod can write): refused, nothing
//!   mounted, nothing made in the victim;
//! - a symlink swapped in and out of the path (RENAME_EXCHANGE in a tight loop) while disks
//!   are created never moves a mount outside the root;
//! - a symlink planted while the daemon is down is not followed when it mounts the disks
//!   again: they are Failed with an event, nothing lands in the victim, and deleting them
//!   removes nothing there;
//! - a state root or `disk_mount_root` with `,`, whitespace or a symlink stops the daemon at
//!   start, saying what to change.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::TestDaemon;
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

struct Fixture {
    daemon: TestDaemon,
    _registry: TestRegistry,
    image: String,
    cache_id: String,
    /// Outside the mount root, on the scratch filesystem too (so the scratch cleans it up).
    victim: PathBuf,
    scratch: ScratchXfs,
}

impl Fixture {
    fn new() -> Fixture {
        let scratch = ScratchXfs::new(64 << 30);
        let registry = TestRegistry::start();
        let addr = registry.addr();
        let image = feature_set(1).push_all(&addr, None).remove(0);
        let daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);
        let cache_id = daemon.ready_cache_id("c", std::slice::from_ref(&image), "");
        let victim = scratch.path().join("victim-etc");
        std::fs::create_dir(&victim).unwrap();
        Fixture {
            daemon,
            _registry: registry,
            image,
            cache_id,
            victim,
            scratch,
        }
    }

    /// The default `disk_mount_root`.
    fn mount_root(&self) -> PathBuf {
        self.daemon.root.join("disks")
    }

    /// `disk create` with `--mount-path path`: the disk, or the CLI's error text.
    fn create_at(&self, path: &Path) -> Result<Value, String> {
        let out = self.daemon.cli(&[
            "disk",
            "create",
            "--image",
            &self.image,
            "--cache",
            &self.cache_id,
            "--mount-path",
            path.to_str().unwrap(),
            "-o",
            "json",
        ]);
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn create_default(&self) -> Value {
        let out = self.daemon.cli_ok(&[
            "disk",
            "create",
            "--image",
            &self.image,
            "--cache",
            &self.cache_id,
            "-o",
            "json",
        ]);
        serde_json::from_str(&out).unwrap()
    }

    fn get(&self, id: &str) -> Value {
        serde_json::from_str(&self.daemon.cli_ok(&["disk", "get", id, "-o", "json"])).unwrap()
    }

    fn delete(&self, disk: &Value) {
        self.daemon.cli_ok(&["disk", "delete", &id(disk)]);
    }

    /// Nothing is mounted at or under the victim.
    fn assert_victim_untouched(&self) {
        let mounts = mounts_under(&self.victim);
        assert!(
            mounts.is_empty(),
            "mounted outside the mount root: {mounts:?}\n{}",
            self.daemon.log()
        );
    }
}

fn id(disk: &Value) -> String {
    disk["metadata"]["name"].as_str().unwrap().to_owned()
}

fn mountpoint(disk: &Value) -> PathBuf {
    PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap())
}

/// Mount points at or under `prefix`, from the kernel's own table.
fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    support::oracle::held_under(prefix).1
}

/// Mount points on the scratch filesystem (state root and victim alike), to compare before
/// and after a refused request. Other tests' mounts elsewhere on the machine come and go.
fn scratch_mounts(f: &Fixture) -> Vec<PathBuf> {
    let mut mounts = mounts_under(f.scratch.path());
    mounts.retain(|m| m != f.scratch.path());
    mounts
}

fn assert_refused_naming_the_field(result: Result<Value, String>, path: &Path) -> String {
    match result {
        Ok(disk) => panic!("{path:?} was accepted: {disk:#}"),
        Err(e) => {
            assert!(e.contains("HTTP 422"), "{path:?}: {e}");
            assert!(e.contains("spec.mountPath"), "{path:?}: {e}");
            e
        }
    }
}

#[test]
fn paths_outside_the_root_or_with_option_characters_are_refused() {
    let f = Fixture::new();
    let root = f.mount_root();
    let before = scratch_mounts(&f);

    let outside = f.victim.join("mnt");
    let e = assert_refused_naming_the_field(f.create_at(&outside), &outside);
    assert!(e.contains(root.to_str().unwrap()), "the root is named: {e}");
    assert!(e.contains("disk_mount_root"), "{e}");
    assert!(!outside.exists(), "a directory was made outside the root");
    let etc = Path::new("/etc/imagecache-disk-test");
    assert_refused_naming_the_field(f.create_at(etc), etc);
    assert!(!etc.exists());
    // The root itself is not beneath the root.
    assert_refused_naming_the_field(f.create_at(&root), &root);

    for bad in [
        "p,upperdir=/",
        "p,upperdir=/,lowerdir=/etc",
        "a:b",
        "a b",
        "a\nb",
        "a\tb",
        "pods/../../../victim-etc",
    ] {
        let path = root.join(bad);
        assert_refused_naming_the_field(f.create_at(&path), &path);
    }
    assert_eq!(
        scratch_mounts(&f),
        before,
        "a refused request mounted something"
    );
    f.assert_victim_untouched();
    let made: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        made.is_empty(),
        "refused requests left {made:?} in {root:?}"
    );

    // A plain path beneath the root is fine, and mounted exactly there.
    let good = root.join("pods/web-1/mnt");
    let disk = f.create_at(&good).unwrap();
    assert_eq!(mountpoint(&disk), good);
    assert_eq!(mounts_under(&root), vec![good.clone()]);
    f.delete(&disk);
    drop(f.daemon);
    assert_no_leaks(&f.scratch.path().join("state"));
}

#[test]
fn symlinks_inside_the_root_are_not_followed() {
    let f = Fixture::new();
    let root = f.mount_root();
    let before = scratch_mounts(&f);

    // A directory on the way, and the mount point itself.
    std::os::unix::fs::symlink(&f.victim, root.join("evil")).unwrap();
    for path in [root.join("evil/mnt"), root.join("evil")] {
        let e = assert_refused_naming_the_field(f.create_at(&path), &path);
        assert!(e.contains("symlink"), "{e}");
    }
    // A relative one climbing out.
    std::os::unix::fs::symlink("../../victim-etc", root.join("up")).unwrap();
    let path = root.join("up/mnt");
    assert_refused_naming_the_field(f.create_at(&path), &path);
    assert_eq!(scratch_mounts(&f), before);
    f.assert_victim_untouched();
    assert_eq!(std::fs::read_dir(&f.victim).unwrap().count(), 0);

    // Inside another disk: its pod can write there, so plants a symlink (or renames a
    // directory) at will. Neither a path through its symlink nor one inside its filesystem
    // is used.
    let host = f.create_at(&root.join("pods/host")).unwrap();
    let host_fs = mountpoint(&host);
    std::os::unix::fs::symlink(&f.victim, host_fs.join("x")).unwrap();
    std::fs::create_dir(host_fs.join("plain")).unwrap();
    for path in [host_fs.join("x/mnt"), host_fs.join("plain/mnt")] {
        assert_refused_naming_the_field(f.create_at(&path), &path);
    }
    f.assert_victim_untouched();
    assert_eq!(mounts_under(&root), vec![host_fs.clone()]);
    assert_eq!(std::fs::read_dir(&f.victim).unwrap().count(), 0);

    f.delete(&host);
    drop(f.daemon);
    assert_no_leaks(&f.scratch.path().join("state"));
}

#[test]
fn a_symlink_swapped_in_during_creates_never_moves_a_mount_out() {
    const CREATES: usize = 24;
    let f = Fixture::new();
    let root = f.mount_root();
    // `race` and `race-link` trade places atomically, again and again: at any instant the
    // path `race/...` goes through either the real directory or a symlink to the victim.
    let real = root.join("race");
    let link = root.join("race-link");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&f.victim, &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, real, link) = (stop.clone(), swaps.clone(), real.clone(), link.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &real,
                    rustix::fs::CWD,
                    &link,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut made = Vec::new();
    let mut refusals = Vec::new();
    for n in 0..CREATES {
        match f.create_at(&real.join(format!("d{n}"))) {
            Ok(disk) => made.push(disk),
            Err(e) => refusals.push(e),
        }
        f.assert_victim_untouched();
    }
    let refused = refusals.len();
    for e in &refusals {
        // Refused for the symlink it met, as a request the caller can change.
        assert!(e.contains("HTTP 422") && e.contains("symlink"), "{e}");
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    if std::fs::symlink_metadata(&real)
        .unwrap()
        .file_type()
        .is_symlink()
    {
        std::fs::rename(&real, root.join("tmp-swap")).unwrap();
        std::fs::rename(&link, &real).unwrap();
        std::fs::rename(root.join("tmp-swap"), &link).unwrap();
    }
    eprintln!(
        "{} disks made, {refused} refused, {} swaps",
        made.len(),
        swaps.load(Ordering::Relaxed)
    );
    // Both outcomes happened: the race was really run.
    assert!(
        !made.is_empty() && refused > 0,
        "made {}, refused {refused}",
        made.len()
    );
    f.assert_victim_untouched();
    assert_eq!(std::fs::read_dir(&f.victim).unwrap().count(), 0);
    // Every disk is mounted in the real directory, where its record says.
    let mut want: Vec<PathBuf> = made.iter().map(mountpoint).collect();
    want.sort();
    let mut got = mounts_under(&root);
    got.sort();
    assert_eq!(got, want);
    for disk in &made {
        f.delete(disk);
    }
    drop(f.daemon);
    let state = f.scratch.path().join("state");
    settle_loops(&state);
    assert_no_leaks(&state);
}

/// Waits (up to 5 s) for loop devices backed by files under `prefix` to go. A refused
/// create detaches its device with LOOP_CLR_FD, which the kernel carries out at the last
/// close: when another process has the device open (one probing loop devices), that is when
/// it closes it, a moment after the daemon. A device still bound after that is a leak.
fn settle_loops(prefix: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let bound = support::oracle::held_under(prefix).0;
        if bound.is_empty() || Instant::now() > deadline {
            if !bound.is_empty() {
                eprintln!("still bound after 5 s: {bound:?}");
            }
            return;
        }
        eprintln!("waiting for {bound:?} to be cleared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_symlink_planted_while_the_daemon_is_down_is_not_followed_at_restart() {
    let mut f = Fixture::new();
    let root = f.mount_root();
    let own = f.create_default();
    let given = f.create_at(&root.join("pods/p2/mnt")).unwrap();
    f.daemon.kill9();

    // A reboot takes the mounts; then each disk's mount point's parent becomes a symlink to
    // a victim directory that has a `mnt` of its own.
    let victims = [f.victim.join("one"), f.victim.join("two")];
    for (disk, victim) in [&own, &given].into_iter().zip(&victims) {
        let at = mountpoint(disk);
        let ok = Command::new("umount").arg(&at).status().unwrap().success();
        assert!(ok, "umount {}", at.display());
        std::fs::create_dir_all(victim.join("mnt")).unwrap();
        let parent = at.parent().unwrap();
        std::fs::rename(parent, parent.with_extension("moved")).unwrap();
        std::os::unix::fs::symlink(victim, parent).unwrap();
    }

    f.daemon.spawn();
    for disk in [&own, &given] {
        let now = f.get(&id(disk));
        assert_eq!(now["status"]["phase"], "Failed", "{now:#}");
        let events = now["status"]["events"].as_array().unwrap();
        let broken = events
            .iter()
            .find(|e| e["reason"] == "DiskBroken")
            .unwrap_or_else(|| panic!("no DiskBroken event: {now:#}"));
        assert!(
            broken["message"].as_str().unwrap().contains("symlink"),
            "{now:#}"
        );
    }
    f.assert_victim_untouched();
    assert!(mounts_under(&root).is_empty(), "{:?}", mounts_under(&root));

    // Deleting them neither follows the symlink (to unmount or rmdir there) nor fails.
    for disk in [&own, &given] {
        f.delete(disk);
    }
    for victim in &victims {
        assert!(victim.join("mnt").is_dir(), "{victim:?}/mnt was removed");
    }
    f.assert_victim_untouched();
    f.daemon.stop();
    assert_no_leaks(&f.scratch.path().join("state"));
}

/// Runs the daemon with `config` (plus a socket in `dir`); its exit status and stderr, or
/// `None` if it was still running after 30 s (then it is killed).
fn run_daemon(dir: &Path, config: &str) -> Option<(std::process::ExitStatus, String)> {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "{config}\nsocket = {:?}\nsnapshotter_socket = \"\"\ncri_image_socket = \"\"\n",
            dir.join("api.sock")
        ),
    )
    .unwrap();
    let log = dir.join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagecached"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, std::fs::read_to_string(&log).unwrap()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_root_with_option_characters_or_a_symlink_stops_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // Resolved, so that only the symlinks the cases make are on the way.
    let base = &dir.path().canonicalize().unwrap();
    std::fs::create_dir(base.join("real")).unwrap();
    std::os::unix::fs::symlink(base.join("real"), base.join("link")).unwrap();
    let cases = [
        (
            format!("root = {:?}", base.join("state,upperdir=")),
            "root",
            "','",
        ),
        (
            format!("root = {:?}", base.join("state dir")),
            "root",
            "' '",
        ),
        (format!("root = {:?}", base.join("a:b")), "root", "':'"),
        (
            format!("root = {:?}", base.join("link/state")),
            "root",
            "symlink",
        ),
        (
            format!(
                "root = {:?}\ndisk_mount_root = {:?}",
                base.join("ok"),
                base.join("pods,x")
            ),
            "disk_mount_root",
            "','",
        ),
        (
            format!(
                "root = {:?}\ndisk_mount_root = {:?}",
                base.join("ok"),
                base.join("link/pods")
            ),
            "disk_mount_root",
            "symlink",
        ),
    ];
    for (n, (config, key, says)) in cases.iter().enumerate() {
        let dir = base.join(format!("case-{n}"));
        std::fs::create_dir(&dir).unwrap();
        let Some((status, stderr)) = run_daemon(&dir, config) else {
            panic!("the daemon started with {config:?}");
        };
        assert!(!status.success(), "{config:?}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(says),
            "{config:?}: {stderr}"
        );
        assert!(mounts_under(base).is_empty(), "{config:?}");
    }
    // Nothing was made where the symlink points.
    assert_eq!(std::fs::read_dir(base.join("real")).unwrap().count(), 0);
}
