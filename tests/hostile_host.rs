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

mod support;

use std::time::Duration;

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
