//! The feature set: three images on one shared base layer that together use every layer
//! feature an unpacker must get right.
//!
//! | image     | manifest            | layers (compression)                         |
//! |-----------|---------------------|----------------------------------------------|
//! | `alpha`   | OCI                 | base (gzip), a1 (zstd), a2 (gzip)            |
//! | `bravo`   | Docker schema 2     | base (gzip), b1 (gzip)                       |
//! | `charlie` | OCI index, 2 arches | base (gzip), c1 (none, "./" names), c2 (gzip)|
//!
//! `charlie`'s index lists a decoy for the other architecture first; the decoy's tree has
//! `WRONG-PLATFORM` at the root, so a client that does not pick the host's entry is caught.
//!
//! Features by layer:
//! - base: regular files of edge sizes (0, 1, 511–513, 4095–4097, 1.1 MiB, 1 MiB+7), odd dir
//!   modes (0500, 0700, 02775, 01777), files 0000/04755/02755/06755/07777, numeric owners
//!   (1000, 65534, 100000), mtimes (0, 2^31, 2100), relative/absolute/dangling symlinks,
//!   hardlinks (short and GNU-long), char/block devices, a fifo, xattrs (`user.*` text, binary
//!   with NUL and newline, on a directory too; a `trusted.*` one, which containerd drops), a
//!   200-byte file name (PAX), >100-byte paths (ustar prefix, GNU longname, PAX), a >100-byte
//!   symlink target (PAX linkpath and GNU 'K').
//! - a1: whiteout of a file and of a directory tree, opaque dir with a new file, file →
//!   directory, a file rewritten with new mode/owner, a dir's mode changed, hardlink in an
//!   upper layer.
//! - a2: that directory → file again, whiteout of a file a1 added, re-creation of a name a1
//!   whited out (as a symlink), whiteout of a symlink, a fifo.
//! - b1: whiteout of a directory (`usr/share/doc/pkg`), file → symlink, opaque dir, new
//!   subtree owned by uid 100000, xattrs changed on a lower file.
//! - c1 (uncompressed, "./"-prefixed names): dir → file without a whiteout, devices,
//!   whiteouts in a layer that also rewrites a sibling.
//! - c2: that file → dir again, whiteout of a whole top-level subtree (`opt/app`), rewrite
//!   of the 200-byte-named file.

use super::super::oci::{
    Artifact, BasicAuth, Compression, Image, ImageIndex, Layer, ManifestFormat, Platform,
};
use super::model::{apply_layer, expected_tree, LayerSpec, NameStyle, Tree};
use super::rng::Rng;

pub struct FeatureImage {
    /// "alpha", "bravo", "charlie".
    pub name: &'static str,
    /// Suggested repository, e.g. "features/alpha".
    pub repo: String,
    pub tag: &'static str,
    pub artifact: Artifact,
    /// The host image's layers, bottom first (`layers[0]` is the shared base).
    pub layers: Vec<LayerSpec>,
    /// What an overlay mount of the host image's chain must show.
    pub expected: Tree,
}

pub struct FeatureSet {
    pub images: Vec<FeatureImage>,
}

impl FeatureSet {
    /// Pushes every image under its `repo:tag`; returns the references pushed
    /// ("ADDR/features/alpha:v1", ...).
    pub fn push_all(&self, addr: &str, auth: BasicAuth<'_>) -> Vec<String> {
        self.images
            .iter()
            .map(|img| {
                super::super::oci::push(addr, &img.repo, img.tag, &img.artifact, auth);
                format!("{addr}/{}:{}", img.repo, img.tag)
            })
            .collect()
    }

    pub fn get(&self, name: &str) -> &FeatureImage {
        self.images
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no feature image {name}"))
    }
}

/// A 200-byte single file name: the longest names real filesystems allow are 255.
pub fn long_file_name() -> String {
    let mut n = "long-name-".to_string();
    while n.len() < 200 {
        n.push(char::from(b'a' + (n.len() % 26) as u8));
    }
    n
}

pub const DEEP_DIR_1: &str = "usr/share/long/directory-with-a-rather-long-name-0123456789";
pub const DEEP_DIR_2: &str =
    "usr/share/long/directory-with-a-rather-long-name-0123456789/another-directory-whose-name-is-also-long-abcdef";

/// Bytes that compress like text.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "layer",
        "image",
        "cache",
        "snapshot",
        "overlay",
        "whiteout",
        "opaque",
        "kernel",
        "ext4",
        "registry",
        "digest",
        "manifest",
        "config",
        "node",
        "pod",
        "container",
        "lorem",
        "ipsum",
        "dolor",
    ];
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(rng.pick(WORDS).as_bytes());
        out.push(if rng.chance(0.1) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// A `vfs_cap_data` v2 blob (magic 0x02000002, CAP_NET_RAW permitted) as raw bytes, stored
/// under a `trusted.` name in the tars. containerd 1.6 sets no `trusted.*` xattr from a layer
/// tar, so the expected trees do not have it (see `model::apply_layer`).
const CAP_LIKE: [u8; 20] = [
    0x02, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// The shared base layer: most features live here.
fn base_layer(rng: &mut Rng, libfeat: Vec<u8>) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    for d in [
        "bin", "dev", "etc", "home", "opt", "run", "srv", "usr", "var",
    ] {
        l.dir(d);
    }
    l.dir("tmp").mode(0o1777);
    l.file("etc/hostname", "featurehost\n");
    l.file("etc/remove-me", "deleted by a1\n");
    l.file("etc/keep.conf", text(rng, 300));
    l.file("etc/shadow-like", "root:*:19000:0:99999:7:::\n")
        .mode(0o640)
        .owner(0, 42);
    l.dir("home/user").mode(0o700).owner(1000, 1000);
    l.file("home/user/.profile", text(rng, 120))
        .owner(1000, 1000)
        .mode(0o600);
    l.dir("opt/app");
    l.file("opt/app/a.txt", text(rng, 50));
    l.dir("opt/app/lib");
    l.file("opt/app/lib/b.so", rng.bytes(5000)).mode(0o755);
    l.fifo("run/fifo").mode(0o600);
    l.file("srv/thing", "a file that becomes a directory in a1\n");

    l.dir("usr/bin");
    l.dir("usr/lib");
    l.dir("usr/share");
    l.file("usr/bin/su-like", rng.bytes(3000)).mode(0o4755);
    l.file("usr/bin/wall-like", rng.bytes(2000))
        .mode(0o2755)
        .owner(0, 5);
    l.file("usr/bin/tool", rng.bytes(7000)).mode(0o755);
    // A link's header repeats its target's, as docker and buildkit write it; containerd
    // applies it to the shared inode (tests/unpack_layer.rs covers a differing one, which
    // umoci, the model's oracle, would ignore).
    l.hardlink("usr/bin/tool-hardlink", "usr/bin/tool")
        .mode(0o755);
    l.file("usr/bin/ping-like", rng.bytes(1200))
        .mode(0o755)
        .xattr("trusted.capability-like", &CAP_LIKE)
        .xattr("user.comment", b"needs raw sockets");
    l.file("usr/lib/libfeat.so.1.2.3", libfeat).mode(0o644);
    l.symlink("usr/lib/libfeat.so.1", "libfeat.so.1.2.3");
    l.symlink("usr/lib/libfeat.so", "libfeat.so.1");
    l.symlink("usr/bin/abs-link", "/usr/lib/libfeat.so.1.2.3");
    l.symlink("usr/bin/dangling", "../nonexistent/target");
    l.symlink("usr/bin/dot", ".");

    l.dir("usr/share/doc");
    l.dir("usr/share/doc/pkg");
    l.file("usr/share/doc/pkg/copyright", text(rng, 1500));
    l.dir("usr/share/doc/pkg/examples");
    l.file("usr/share/doc/pkg/examples/ex1", text(rng, 100));

    l.dir("usr/share/sizes");
    for size in [0usize, 1, 511, 512, 513, 4095, 4096, 4097, 65536] {
        l.file(&format!("usr/share/sizes/size-{size}"), rng.bytes(size));
    }
    l.file("usr/share/sizes/size-1m", text(rng, 1024 * 1024 + 7));

    l.dir("usr/share/modes");
    for mode in [0o000, 0o400, 0o777, 0o1755, 0o2755, 0o4711, 0o6755, 0o7777] {
        l.file(&format!("usr/share/modes/f{mode:04o}"), format!("{mode:o}"))
            .mode(mode);
    }
    l.dir("usr/share/modes/d0500").mode(0o500);
    l.file("usr/share/modes/d0500/inside", "a file in a read-only dir");
    l.dir("usr/share/modes/d2775")
        .mode(0o2775)
        .owner(1000, 1001);
    l.file("usr/share/modes/d2775/inside", "setgid dir")
        .owner(1000, 1001);
    l.dir("usr/share/modes/d1777").mode(0o1777);
    l.dir("usr/share/modes/d0000").mode(0o000);

    l.dir("usr/share/owners");
    for (uid, gid) in [
        (1000, 1000),
        (65534, 65534),
        (100000, 100000),
        (0, 1234),
        (4242, 0),
    ] {
        l.file(&format!("usr/share/owners/u{uid}-g{gid}"), "owned")
            .owner(uid, gid);
    }

    l.dir("usr/share/mtimes");
    for mtime in [0u64, 1, 2_147_483_648, 4_102_444_800] {
        l.file(&format!("usr/share/mtimes/t{mtime}"), "timed")
            .mtime(mtime);
    }

    l.dir("usr/share/xattr")
        .xattr("user.dir-attr", b"on a directory");
    l.file("usr/share/xattr/text", "xattrs")
        .xattr("user.mime_type", b"text/plain");
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    l.file("usr/share/xattr/binary", "xattrs")
        .xattr("user.binary", &all_bytes)
        .xattr("trusted.capability-like", &CAP_LIKE);

    l.dir("usr/share/long");
    let long = long_file_name();
    l.file(&format!("usr/share/long/{long}"), "200-byte name, PAX path")
        .names(NameStyle::Pax);
    l.dir(DEEP_DIR_1);
    l.dir(DEEP_DIR_2);
    l.file(&format!("{DEEP_DIR_2}/gnu-longname-file"), "GNU longname")
        .names(NameStyle::Gnu);
    l.file(&format!("{DEEP_DIR_2}/ustar-prefix-file"), "ustar prefix");
    l.file(&format!("{DEEP_DIR_2}/pax-path-file"), "PAX path")
        .names(NameStyle::Pax);
    l.symlink(
        "usr/share/long/link-pax",
        &format!("/{DEEP_DIR_2}/pax-path-file"),
    );
    l.symlink("usr/share/long/link-gnu", &format!("{long}/../{long}"))
        .names(NameStyle::Gnu);
    l.hardlink(
        &format!("{DEEP_DIR_2}/hardlink-gnu"),
        &format!("{DEEP_DIR_2}/gnu-longname-file"),
    )
    .names(NameStyle::Gnu);

    l.char_dev("dev/null", 1, 3).mode(0o666);
    l.char_dev("dev/zero", 1, 5).mode(0o666);
    l.block_dev("dev/loop7", 7, 7).mode(0o660).owner(0, 6);
    l.block_dev("dev/sda1", 8, 1);

    l.dir("var/cache");
    l.dir("var/cache/olddir");
    l.file("var/cache/olddir/x", "x");
    l.dir("var/cache/olddir/sub");
    l.file("var/cache/olddir/sub/y", "y");
    l.dir("var/lib");
    l.dir("var/lib/state");
    l.file("var/lib/state/old.db", rng.bytes(100));
    l
}

fn layer_a1(rng: &mut Rng) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Zstd);
    l.dir("etc");
    l.whiteout("etc/remove-me");
    l.dir("var");
    l.dir("var/cache");
    l.whiteout("var/cache/olddir");
    l.dir("opt");
    l.dir("opt/app");
    l.opaque("opt/app");
    l.file("opt/app/new.txt", "only file left after the opaque marker");
    l.dir("srv");
    l.dir("srv/thing").mode(0o750).owner(33, 33);
    l.file("srv/thing/inner", "file → dir");
    l.dir("usr");
    l.dir("usr/bin");
    l.file("usr/bin/tool", rng.bytes(9000))
        .mode(0o750)
        .owner(0, 10);
    l.hardlink("usr/bin/tool2", "usr/bin/tool")
        .mode(0o750)
        .owner(0, 10);
    l.dir("usr/share");
    l.dir("usr/share/modes");
    l.dir("usr/share/modes/d0500").mode(0o555);
    l
}

fn layer_a2(rng: &mut Rng) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.dir("srv");
    l.file("srv/thing", "dir → file again\n").mode(0o600);
    l.dir("opt");
    l.dir("opt/app");
    l.whiteout("opt/app/new.txt");
    l.dir("etc");
    l.symlink("etc/remove-me", "keep.conf");
    l.dir("usr");
    l.dir("usr/lib");
    l.whiteout("usr/lib/libfeat.so");
    l.file("usr/lib/added-by-a2", rng.bytes(777))
        .xattr("user.layer", b"a2");
    l.dir("dev");
    l.fifo("dev/fifo2").mode(0o620).owner(0, 5);
    l
}

fn layer_b1(rng: &mut Rng, libfeat: Vec<u8>) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.dir("usr");
    l.dir("usr/share");
    l.dir("usr/share/doc");
    l.whiteout("usr/share/doc/pkg");
    l.dir("usr/bin");
    l.symlink("usr/bin/tool", "tool-hardlink");
    l.dir("usr/lib");
    // Same content, new xattrs: what a metadata-only change (chattr/setcap) produces.
    l.file("usr/lib/libfeat.so.1.2.3", libfeat)
        .xattr("user.changed", b"b1");
    l.dir("home");
    l.dir("home/user").mode(0o700).owner(1000, 1000);
    l.dir("home/user/data").mode(0o750).owner(100000, 100000);
    l.file("home/user/data/big-uid", text(rng, 2048))
        .owner(100000, 100000);
    l.dir("var");
    l.dir("var/lib");
    l.dir("var/lib/state");
    l.opaque("var/lib/state");
    l.file("var/lib/state/new.db", rng.bytes(200));
    l
}

fn layer_c1(rng: &mut Rng) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::None);
    // buildkit-style "./" names: the unpacker must normalise them.
    l.dir("./");
    l.dir("./var");
    l.dir("./var/cache");
    l.file("./var/cache/olddir", "dir → file, no whiteout needed");
    l.dir("./dev");
    l.char_dev("./dev/tty", 5, 0).mode(0o666).owner(0, 5);
    l.block_dev("./dev/sdb", 8, 16);
    l.dir("./etc");
    l.whiteout("./etc/keep.conf");
    l.file("./etc/hostname", "charlie\n");
    l.dir("./usr");
    l.dir("./usr/share");
    l.dir("./usr/share/sizes");
    l.whiteout("./usr/share/sizes/size-4096");
    l.file("./usr/share/sizes/size-4097", rng.bytes(4097));
    l
}

fn layer_c2(rng: &mut Rng) -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.dir("var");
    l.dir("var/cache");
    l.dir("var/cache/olddir").mode(0o711);
    l.file("var/cache/olddir/again", "file → dir again");
    l.dir("opt");
    l.whiteout("opt/app");
    l.dir("usr");
    l.dir("usr/share");
    l.dir("usr/share/long");
    l.file(
        &format!("usr/share/long/{}", long_file_name()),
        text(rng, 999),
    )
    .names(NameStyle::Gnu);
    l
}

fn decoy_layer() -> LayerSpec {
    let mut l = LayerSpec::new(Compression::Gzip);
    l.file("WRONG-PLATFORM", "this image is for another architecture\n");
    l.dir("etc");
    l.whiteout("etc/hostname");
    l
}

/// The image built from `specs`, and the merged tree its chain must show. The base layer
/// is shared, so its blob and tree are computed once (debug builds hash and gzip slowly).
fn build(
    base: &(Layer, Tree),
    uppers: &[LayerSpec],
    format: ManifestFormat,
    platform: Platform,
) -> (Image, Tree) {
    let mut layers = vec![base.0.clone()];
    layers.extend(uppers.iter().map(|s| s.to_layer()));
    let mut tree = base.1.clone();
    for u in uppers {
        apply_layer(&mut tree, &u.entries);
    }
    (Image::for_platform(layers, format, platform), tree)
}

/// The feature set for `seed` (the seed changes file contents, not the structure).
pub fn feature_set(seed: u64) -> FeatureSet {
    // Shared by base and b1, which re-adds it with new xattrs.
    let libfeat = Rng::fork(seed, 100).bytes(1100 * 1024);
    let base = base_layer(&mut Rng::fork(seed, 0), libfeat.clone());
    let base_built = (base.to_layer(), expected_tree(std::slice::from_ref(&base)));
    let a = vec![
        layer_a1(&mut Rng::fork(seed, 1)),
        layer_a2(&mut Rng::fork(seed, 2)),
    ];
    let b = vec![layer_b1(&mut Rng::fork(seed, 3), libfeat)];
    let c = vec![
        layer_c1(&mut Rng::fork(seed, 4)),
        layer_c2(&mut Rng::fork(seed, 5)),
    ];

    let (alpha, alpha_tree) = build(&base_built, &a, ManifestFormat::Oci, Platform::host());
    let (bravo, bravo_tree) = build(&base_built, &b, ManifestFormat::DockerV2, Platform::host());
    let (charlie, charlie_tree) = build(&base_built, &c, ManifestFormat::Oci, Platform::host());
    let (decoy_img, _) = build(
        &base_built,
        &[decoy_layer()],
        ManifestFormat::Oci,
        Platform::foreign(),
    );
    let with_base = |uppers: Vec<LayerSpec>| {
        let mut v = vec![base.clone()];
        v.extend(uppers);
        v
    };
    let (a, b, c) = (with_base(a), with_base(b), with_base(c));
    // Decoy first: clients that take manifests[0] get the wrong tree.
    let index = ImageIndex::new(vec![decoy_img, charlie], ManifestFormat::Oci);

    FeatureSet {
        images: vec![
            FeatureImage {
                name: "alpha",
                repo: "features/alpha".into(),
                tag: "v1",
                artifact: alpha.into(),
                layers: a,
                expected: alpha_tree,
            },
            FeatureImage {
                name: "bravo",
                repo: "features/bravo".into(),
                tag: "v1",
                artifact: bravo.into(),
                layers: b,
                expected: bravo_tree,
            },
            FeatureImage {
                name: "charlie",
                repo: "features/charlie".into(),
                tag: "v1",
                artifact: index.into(),
                layers: c,
                expected: charlie_tree,
            },
        ],
    }
}
