//! A cache build of an image whose upper layers write into directories they do not list (as
//! ko, jib, crane and Bazel layers do): in the image's merged view those directories keep
//! the attributes the lower layers gave them, as containerd's own unpack leaves them, even
//! though every layer unpacked in parallel into its own directory.

mod support;
mod unpack_util;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use support::cachefs::{mount_chain, mount_snapshot};
use support::daemon::{cache_yaml, TestDaemon};
use support::oci::{push_image, Compression, Image, Layer, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use unpack_util::{xattr, Layer as Tar, MTIME};

/// (mode with setuid/setgid/sticky, uid, gid) of a directory.
fn attrs(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(m.is_dir(), "{} is a directory", p.display());
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn unlisted_directories_keep_their_lower_layers_attributes_in_a_built_cache() {
    let mut base = Tar::new();
    base.dir_with("tmp", 0o1777, 0, 0, MTIME)
        .dir("home")
        .pax(&[("SCHILY.xattr.user.who", b"u")])
        .dir_with("home/u", 0o700, 1000, 1000, MTIME)
        .dir("srv")
        .dir_with("srv/data", 0o2770, 0, 50, MTIME);
    // Neither upper layer lists a directory. The middle one makes srv/data the same way,
    // so the top one's copy is right only if the middle one's was finished first.
    let mut middle = Tar::new();
    middle.file("srv/data/f", b"f");
    let mut top = Tar::new();
    top.file("tmp/f", b"")
        .file("home/u/.profile", b"")
        .file("srv/data/g", b"")
        .file("srv/data/sub/h", b"")
        .file("new/dir/file", b"");
    let image = Image::new(
        vec![
            Layer::from_tar(&base.tar(), Compression::Gzip),
            Layer::from_tar(&middle.tar(), Compression::Gzip),
            Layer::from_tar(&top.tar(), Compression::Zstd),
        ],
        ManifestFormat::Oci,
    );

    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    push_image(&addr, "implicit/dirs", "v1", &image, None);
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    let yaml = cache_yaml(
        "implicit",
        &[format!("{addr}/implicit/dirs:v1")],
        "  imageCacheSize: 20\n",
    );
    let out = daemon.create(&yaml, true);
    assert!(
        out.status.success(),
        "create --wait failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let cache = daemon.get_json("implicit");
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    let digest = cache["status"]["snapshotDigest"]
        .as_str()
        .unwrap()
        .to_owned();

    let look = scratch.path().join("look");
    let frozen = mount_snapshot(&root, &digest, &look);
    {
        let merged = mount_chain(&look, &image.chain_ids(), &scratch.path().join("merged"));
        let m = |s: &str| merged.path.join(s);
        assert_eq!(attrs(&m("tmp")), (0o1777, 0, 0), "/tmp stays 1777");
        assert_eq!(attrs(&m("home/u")), (0o700, 1000, 1000));
        assert_eq!(xattr(m("home/u"), "user.who").as_deref(), Some(&b"u"[..]));
        assert_eq!(attrs(&m("srv/data")), (0o2770, 0, 50));
        // Made in the setgid srv/data once that had its attributes: its group, not setgid.
        assert_eq!(attrs(&m("srv/data/sub")), (0o755, 0, 50));
        assert_eq!(attrs(&m("new/dir")), (0o755, 0, 0));
        assert!(m("srv/data/f").is_file() && m("srv/data/g").is_file());
    }
    frozen.unmount_and_detach().unwrap();

    daemon.cli_ok(&["delete", "implicit"]);
    daemon.stop();
    assert_no_leaks(&root);
}
