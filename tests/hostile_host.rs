//! The host running out of room under a build: the state root on a filesystem far smaller
//! than the image being pulled (the cache's own filesystem is large, so only the host's can
//! fill). The build must end Failed saying the state root's filesystem is full, leave no work
//! directory, loop device or mount, and the daemon must keep serving (a small build after it
//! succeeds once the space is given back).

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
