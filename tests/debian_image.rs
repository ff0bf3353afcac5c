//! A real distribution image: a Debian minbase root filesystem made by debootstrap, pushed as
//! a one-layer image, cached, and run from the cache — `/bin/sh -c true` in a chroot of the
//! overlay of its layers.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::cachefs::{mount_chain, mount_snapshot};
use support::daemon::{cache_yaml, TestDaemon};
use support::oci::{push_image, Compression, Image, Layer, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

/// Built once per machine: debootstrap takes minutes, the tar does not change.
fn minbase_tar() -> PathBuf {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("debian-minbase.tar");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/build-debian-minbase.sh"
    );
    let status = Command::new("bash")
        .arg(script)
        .arg(&out)
        .status()
        .expect("run build-debian-minbase.sh");
    assert!(
        status.success(),
        "build-debian-minbase.sh failed: is Debian's archive reachable?"
    );
    out
}

#[test]
fn debian_minbase_runs_from_the_cache() {
    let tar = std::fs::read(minbase_tar()).unwrap();
    let image = Image::new(
        vec![Layer::from_tar(&tar, Compression::Gzip)],
        ManifestFormat::DockerV2,
    );
    drop(tar);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    push_image(&addr, "debian/minbase", "bookworm", &image, None);
    let reference = format!("{addr}/debian/minbase:bookworm");

    let scratch = ScratchXfs::new(64 << 30);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let out = daemon.create(&cache_yaml("debian", &[reference], ""), true);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let digest = daemon.get_json("debian")["status"]["snapshotDigest"]
        .as_str()
        .unwrap()
        .to_owned();

    let frozen = mount_snapshot(&root, &digest, &scratch.path().join("look"));
    {
        let merged = mount_chain(
            frozen.path(),
            &image.chain_ids(),
            &scratch.path().join("rootfs"),
        );
        let run = Command::new("chroot")
            .arg(&merged.path)
            .args(["/bin/sh", "-c", "true"])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "/bin/sh -c true in the chroot: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        let run = Command::new("chroot")
            .arg(&merged.path)
            .args(["/usr/bin/dpkg-query", "-W", "-f", "${Package}\n", "bash"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&run.stdout).trim(),
            "bash",
            "dpkg's database came through"
        );
    }
    frozen.unmount_and_detach().unwrap();
    daemon.cli_ok(&["delete", "debian"]);
    daemon.stop();
    assert_no_leaks(&root);
}
