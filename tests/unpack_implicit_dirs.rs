//! Directories a layer writes into without listing them: after `inherit_implicit_dirs`, each
//! has the attributes containerd 1.6's overlayfs unpack gives it (the topmost lower layer's
//! directory at that path: owner, mode, xattrs other than trusted.*), else 0755 root:root.
//! The upper layer's directory is what the overlay shows, so its attributes are asserted.
//! Runs as root (chown, xattrs, whiteout devices).

mod unpack_util;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use imagecache::unpack::{inherit_implicit_dirs, Compression, LayerStats};
use unpack_util::*;

/// Unpack `layers` bottom first, each into its own directory, then run the pass bottom
/// first as a build does.
fn unpack_chain(base: &Path, layers: Vec<Vec<u8>>) -> (Vec<PathBuf>, Vec<LayerStats>) {
    let mut dirs = Vec::new();
    let mut stats = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let dir = base.join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap();
        stats.push(apply(tar, Compression::None, &dir).unwrap());
        dirs.push(dir);
    }
    for i in 0..dirs.len() {
        let lowers: Vec<PathBuf> = dirs[..i].iter().rev().cloned().collect();
        inherit_implicit_dirs(&dirs[i], &lowers, &stats[i].implicit_dirs).unwrap();
    }
    (dirs, stats)
}

/// (mode with setuid/setgid/sticky, uid, gid)
fn attrs(p: impl AsRef<Path>) -> (u32, u32, u32) {
    let m = lstat(p);
    assert!(m.is_dir());
    (m.mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn unlisted_parents_take_the_lower_layers_directory() {
    let mut base = Layer::new();
    base.dir_with("tmp", 0o1777, 0, 0, MTIME)
        .dir("home")
        .pax(&[("SCHILY.xattr.user.who", b"u")])
        .dir_with("home/u", 0o700, 1000, 1000, MTIME)
        .dir("srv")
        .pax(&[
            ("SCHILY.xattr.user.a", b"1"),
            ("SCHILY.xattr.trusted.t", b"admin"),
        ])
        .dir_with("srv/data", 0o2770, 0, 50, MTIME)
        .dir("opt")
        .dir_with("opt/gone", 0o750, 5, 5, MTIME)
        .dir("etc")
        .pax(&[
            ("SCHILY.xattr.user.low", b"1"),
            ("SCHILY.xattr.user.mine", b"lower"),
        ])
        .dir_with("etc/x", 0o711, 0, 0, MTIME)
        .dir("usr")
        .dir_with("usr/lib", 0o705, 0, 2, MTIME)
        .symlink("lib", "/usr/lib")
        .dir("data")
        .dir_with("data/keep", 0o700, 9, 9, MTIME);

    // Layer 1 lists none of the directories it writes into.
    let mut l1 = Layer::new();
    l1.file("srv/data/f", b"f")
        .file("opt/.wh.gone", b"")
        .dir("data")
        .file("data/.wh..wh..opq", b"");

    let mut l2 = Layer::new();
    l2.file("tmp/f", b"")
        .file("home/u/.profile", b"")
        .file("srv/data/g", b"")
        .file("opt/gone/new", b"")
        .file("new/dir/file", b"")
        .file("lib/x", b"")
        .file("data/keep/f", b"")
        .file("etc/x/conf", b"")
        // The layer lists etc/x after writing into it: its header wins, the lower layer's
        // xattrs it does not set are added.
        .pax(&[("SCHILY.xattr.user.mine", b"upper")])
        .dir_with("etc/x", 0o750, 3, 4, MTIME);

    let t = tempfile::tempdir().unwrap();
    let (dirs, stats) = unpack_chain(t.path(), vec![base.tar(), l1.tar(), l2.tar()]);
    let l1 = |s: &str| dirs[1].join(s);
    let l2 = |s: &str| dirs[2].join(s);

    assert_eq!(attrs(l2("tmp")), (0o1777, 0, 0), "/tmp stays 1777");
    assert_eq!(attrs(l2("home")), (0o755, 0, 0));
    assert_eq!(attrs(l2("home/u")), (0o700, 1000, 1000));
    assert_eq!(xattr(l2("home/u"), "user.who").as_deref(), Some(&b"u"[..]));

    // Layer 1 made srv/data implicitly too; layer 2 copies it only once it is final.
    assert_eq!(attrs(l1("srv/data")), (0o2770, 0, 50));
    assert_eq!(attrs(l2("srv/data")), (0o2770, 0, 50), "setgid kept");
    assert_eq!(xattr(l2("srv/data"), "user.a").as_deref(), Some(&b"1"[..]));
    // containerd sets no trusted.* xattr from a tar, nor copies one up from a lower layer.
    assert_eq!(xattr(dirs[0].join("srv/data"), "trusted.t"), None);
    assert_eq!(xattr(l2("srv/data"), "trusted.t"), None);

    // Whited out in layer 1: layer 0's directory does not count.
    assert_eq!(attrs(l1("opt")), (0o755, 0, 0));
    assert_eq!(attrs(l2("opt/gone")), (0o755, 0, 0));

    // Nowhere below: what containerd makes, 0755 root:root.
    assert_eq!(attrs(l2("new")), (0o755, 0, 0));
    assert_eq!(attrs(l2("new/dir")), (0o755, 0, 0));

    // containerd looks a path up in each lower directory on its own, following symlinks
    // inside it as if it were `/`: `lib` is the symlink's target's directory.
    assert_eq!(attrs(l2("lib")), (0o705, 0, 2));

    // containerd does not consult opaque markers: layer 1 hid data/keep, yet layer 0's
    // directory is the one found.
    assert_eq!(
        xattr(l1("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(attrs(l2("data/keep")), (0o700, 9, 9));
    assert_eq!(
        xattr(l2("data"), "trusted.overlay.opaque"),
        None,
        "a lower layer's opaque marker is trusted.*, never copied up"
    );

    assert_eq!(attrs(l2("etc/x")), (0o750, 3, 4));
    assert_eq!(
        xattr(l2("etc/x"), "user.mine").as_deref(),
        Some(&b"upper"[..])
    );
    assert_eq!(xattr(l2("etc/x"), "user.low").as_deref(), Some(&b"1"[..]));

    // Only the directories made implicitly are recorded, listed ones marked.
    let mut made: Vec<(String, bool)> = stats[2]
        .implicit_dirs
        .iter()
        .map(|d| (String::from_utf8(d.path.clone()).unwrap(), d.listed))
        .collect();
    made.sort();
    let expected: Vec<(String, bool)> = [
        ("data", false),
        ("data/keep", false),
        ("etc", false),
        ("etc/x", true),
        ("home", false),
        ("home/u", false),
        ("lib", false),
        ("new", false),
        ("new/dir", false),
        ("opt", false),
        ("opt/gone", false),
        ("srv", false),
        ("srv/data", false),
        ("tmp", false),
    ]
    .iter()
    .map(|(p, l)| (p.to_string(), *l))
    .collect();
    assert_eq!(made, expected);
    assert!(
        stats[0].implicit_dirs.is_empty(),
        "the base lists all its dirs"
    );
}

#[test]
fn a_directory_the_layer_replaced_is_left_alone() {
    let mut base = Layer::new();
    base.dir_with("a", 0o700, 1, 1, MTIME);
    let mut upper = Layer::new();
    // `a` is made for `a/f`, then the layer replaces it with a file.
    upper.file("a/f", b"").file("a", b"now a file");
    let t = tempfile::tempdir().unwrap();
    let (dirs, stats) = unpack_chain(t.path(), vec![base.tar(), upper.tar()]);
    assert_eq!(stats[1].implicit_dirs.len(), 1);
    let m = lstat(dirs[1].join("a"));
    assert!(m.is_file());
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o644, 0));
}

/// containerd makes a directory no lower layer has with mkdir then chmod 0755, in an upper
/// directory whose parents already have their attributes: under a setgid parent the kernel
/// gives it the parent's group, and the chmod drops the setgid bit it passed down, so one
/// level further the group is root's again.
#[test]
fn directories_made_under_a_setgid_parent_take_its_group() {
    let mut base = Layer::new();
    base.dir("c")
        .dir_with("c/d", 0o2775, 0, 50, MTIME)
        .dir("l")
        .dir_with("l/d", 0o2775, 0, 80, MTIME);
    // The middle layer makes c/d/mid in c/d, itself implicit: mid takes group 50.
    let mut middle = Layer::new();
    middle.file("c/d/mid/file", b"");
    let mut top = Layer::new();
    top.file("c/d/deeper/file", b"")
        .file("c/d/x/y/file", b"")
        // mid comes from the middle layer, not setgid: deep's group is root's.
        .file("c/d/mid/deep/file", b"")
        // A setgid parent the layer lists itself, before writing under it.
        .dir_with("e", 0o2775, 0, 60, MTIME)
        .file("e/f/g/file", b"")
        // l/d is listed only after sub was made in it, when it was still layer 0's.
        .file("l/d/sub/file", b"")
        .dir_with("l/d", 0o755, 0, 0, MTIME);

    let t = tempfile::tempdir().unwrap();
    let (dirs, stats) = unpack_chain(t.path(), vec![base.tar(), middle.tar(), top.tar()]);
    let middle = |s: &str| dirs[1].join(s);
    let top = |s: &str| dirs[2].join(s);

    assert_eq!(attrs(middle("c/d")), (0o2775, 0, 50));
    assert_eq!(attrs(middle("c/d/mid")), (0o755, 0, 50));
    assert_eq!(attrs(top("c/d")), (0o2775, 0, 50));
    assert_eq!(attrs(top("c/d/deeper")), (0o755, 0, 50));
    assert_eq!(attrs(top("c/d/x")), (0o755, 0, 50));
    assert_eq!(attrs(top("c/d/x/y")), (0o755, 0, 0), "x is not setgid");
    assert_eq!(
        attrs(top("c/d/mid")),
        (0o755, 0, 50),
        "copied from the middle"
    );
    assert_eq!(attrs(top("c/d/mid/deep")), (0o755, 0, 0));
    assert_eq!(attrs(top("e")), (0o2775, 0, 60));
    assert_eq!(attrs(top("e/f")), (0o755, 0, 60));
    assert_eq!(attrs(top("e/f/g")), (0o755, 0, 0));
    assert_eq!(attrs(top("l/d")), (0o755, 0, 0), "its own header last");
    assert_eq!(attrs(top("l/d/sub")), (0o755, 0, 80));

    let made_in = |p: &str| {
        let ds = &stats[2].implicit_dirs;
        let d = ds.iter().find(|d| d.path == p.as_bytes()).unwrap();
        d.made_in
            .map(|i| String::from_utf8(ds[i].path.clone()).unwrap())
    };
    assert_eq!(made_in("c/d/deeper").as_deref(), Some("c/d"));
    assert_eq!(made_in("c/d/x/y").as_deref(), Some("c/d/x"));
    assert_eq!(made_in("e/f").as_deref(), None, "e was listed");
    assert_eq!(made_in("c").as_deref(), None, "made in the layer root");
}
