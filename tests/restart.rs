//! The daemon stopping in the middle of a build: killed with SIGKILL (a crash, the OOM
//! killer), or stopped with SIGTERM (systemd). Either way the next start leaves no loop
//! device, mount or work file of the interrupted build, the cache says what happened, and
//! the same image builds again.

mod support;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::realistic::realistic_image_sized;
use support::oci::{push_image, Compression, Image};
use support::proxy::throttled_proxy;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

/// A realistic image; with the throttle below its ~50 MB of gzip take a few seconds to pull
/// however fast the build itself is (a release build unpacks it in well under a second).
const IMAGE_BYTES: u64 = 150_000_000;
const IMAGE_FILES: u64 = 7_500;
/// Bytes per second the proxy lets through from the registry, across all connections.
const THROTTLE: u64 = 20_000_000;
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// Generated once per test binary: both tests push the same image.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| realistic_image_sized(11, Compression::Gzip, IMAGE_BYTES, IMAGE_FILES))
}

fn progress(cache: &Value) -> u32 {
    cache["status"]["progress"]
        .as_str()
        .and_then(|p| p.trim_end_matches('%').parse().ok())
        .unwrap_or(0)
}

fn phase(cache: &Value) -> &str {
    cache["status"]["phase"].as_str().unwrap_or("")
}

/// Waits until the build is pulling layers (so its image is attached and mounted) and has
/// fetched something. Panics if it ended first: then the image is too small to interrupt.
fn wait_mid_build(daemon: &TestDaemon, name: &str) -> Value {
    let cache = daemon.wait_until(name, BUILD_TIMEOUT, |c| {
        (phase(c) == "Pulling" && progress(c) > 0) || matches!(phase(c), "Ready" | "Failed")
    });
    assert_eq!(
        phase(&cache),
        "Pulling",
        "the build ended before it could be interrupted: {cache:#}"
    );
    eprintln!("{name}: interrupting at {}", cache["status"]["progress"]);
    cache
}

/// Lines of `losetup -a` and of this mount namespace's mountinfo that name `root`.
fn ours(root: &Path) -> Vec<String> {
    let root = root.to_string_lossy().into_owned();
    let losetup = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .expect("run losetup -a");
    assert!(losetup.status.success(), "losetup -a failed");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    String::from_utf8_lossy(&losetup.stdout)
        .lines()
        .chain(mountinfo.lines())
        .filter(|l| l.contains(&root))
        .map(str::to_owned)
        .collect()
}

fn assert_nothing_of_ours(root: &Path) {
    let left = ours(root);
    assert!(
        left.is_empty(),
        "loop devices or mounts left under {}:\n{}",
        root.display(),
        left.join("\n")
    );
    assert_no_leaks(root);
    let work: Vec<_> = std::fs::read_dir(root.join("work"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(work.is_empty(), "work/ is not empty: {work:?}");
}

fn reasons(cache: &Value) -> Vec<String> {
    cache["status"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// A Failed cache that says the build was interrupted, with a Warning event.
fn assert_interrupted(cache: &Value) {
    let status = &cache["status"];
    assert_eq!(status["phase"], "Failed", "{cache:#}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains("daemon stopped"), "{message}");
    let events = status["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["type"] == "Warning"
            && e["reason"] == "BuildInterrupted"
            && e["message"] == message),
        "{events:#?}"
    );
    assert!(
        status.get("snapshotDigest").is_none_or(Value::is_null),
        "{cache:#}"
    );
}

fn build_ready(daemon: &TestDaemon, name: &str, reference: &str) -> Value {
    daemon.ready_cache(name, &[reference.to_owned()], "")
}

/// A daemon on a scratch XFS whose build of cache `name` is caught mid-pull: the registry sits
/// behind a throttling proxy. Fields drop in order: daemon first, scratch last.
struct Setup {
    daemon: TestDaemon,
    _registry: TestRegistry,
    reference: String,
    root: std::path::PathBuf,
    scratch: ScratchXfs,
}

fn mid_build(name: &str) -> Setup {
    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let registry = TestRegistry::start();
    push_image(&registry.addr(), "realistic/app", "v1", image(), None);
    let addr = throttled_proxy(registry.addr(), Arc::new(AtomicU64::new(THROTTLE)));
    let reference = format!("{addr}/realistic/app:v1");
    let daemon = TestDaemon::start(&root, &[&addr]);
    let out = daemon.create(
        &cache_yaml(name, std::slice::from_ref(&reference), ""),
        false,
    );
    assert!(out.status.success(), "{out:?}");
    wait_mid_build(&daemon, name);
    Setup {
        daemon,
        _registry: registry,
        reference,
        root,
        scratch,
    }
}

#[test]
fn kill_9_mid_build_then_restart_cleans_up_and_builds_again() {
    let Setup {
        scratch: _scratch,
        root,
        _registry,
        reference,
        mut daemon,
    } = mid_build("crashed");
    daemon.kill9();

    // The killed daemon could not clean up: its cache image is still attached and mounted.
    // (This is what the restart has to deal with.)
    let left = ours(&root);
    assert!(
        !left.is_empty(),
        "a build in Pulling has its image mounted; nothing found under {}",
        root.display()
    );

    daemon.spawn();
    // Recovery runs before the socket answers.
    assert_nothing_of_ours(&root);
    let cache = daemon.get_json("crashed");
    eprintln!(
        "crashed after the restart: {} {:?}",
        phase(&cache),
        reasons(&cache)
    );
    match phase(&cache) {
        "Failed" => assert_interrupted(&cache),
        // A build the daemon chose to finish after the restart is fine too.
        "Ready" => {}
        other => {
            // Rebuilding: it must get to Ready.
            assert!(
                matches!(other, "Pending" | "Pulling" | "Freezing"),
                "{cache:#}"
            );
            let done = daemon.wait_until("crashed", BUILD_TIMEOUT, |c| {
                matches!(phase(c), "Ready" | "Failed")
            });
            assert_eq!(phase(&done), "Ready", "{done:#}");
        }
    }
    assert!(
        reasons(&cache).iter().any(|r| r == "Pulling"),
        "the events from before the kill survive it: {:?}",
        reasons(&cache)
    );

    // The same image builds after the restart, and the interrupted build left no snapshot.
    let ready = build_ready(&daemon, "after-restart", &reference);
    let snapshots: Vec<_> = std::fs::read_dir(root.join("snapshots/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let digest = ready["status"]["snapshotDigest"].as_str().unwrap();
    if phase(&cache) == "Failed" {
        assert_eq!(
            snapshots,
            vec![std::ffi::OsString::from(
                digest.strip_prefix("sha256:").unwrap()
            )],
            "only the new cache's snapshot is stored"
        );
    }
    let verified = daemon.cli_ok(&["verify", "after-restart"]);
    assert!(verified.contains("verified"), "{verified}");

    daemon.stop();
    assert_nothing_of_ours(&root);
}

#[test]
fn sigterm_mid_build_stops_cleanly_and_the_cache_says_so() {
    let Setup {
        scratch: _scratch,
        root,
        _registry,
        reference,
        mut daemon,
    } = mid_build("stopped");

    let started = Instant::now();
    daemon.stop();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?} to stop the daemon\n--- daemon log ---\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    // It cleaned up after itself before exiting: no restart needed for that.
    assert!(
        !daemon.socket.exists(),
        "the socket file is removed on a clean stop"
    );
    assert_nothing_of_ours(&root);

    daemon.spawn();
    let cache = daemon.get_json("stopped");
    assert_interrupted(&cache);
    assert!(
        cache["status"]["expireDateTime"].is_string(),
        "a failed cache expires: {cache:#}"
    );
    assert_nothing_of_ours(&root);

    // What the message tells the operator to do works: delete, create again, Ready.
    daemon.cli_ok(&["delete", "stopped"]);
    build_ready(&daemon, "stopped", &reference);

    daemon.stop();
    assert_nothing_of_ours(&root);
}
