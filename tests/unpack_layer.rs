//! apply_layer: every entry type and its metadata, long names, whiteouts, replacement within
//! a layer, compression by magic, diffID verification and truncated streams.
//! Runs as root (chown, mknod and trusted.* xattrs).

mod unpack_util;

use std::fs;
use std::os::unix::fs::MetadataExt;

use imagecache::unpack::{apply_layer, Compression, UnpackError};
use tar::EntryType;
use unpack_util::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn every_entry_type_with_its_metadata() {
    let mut l = Layer::new();
    l.dir_with("bin", 0o755, 0, 0, 1_000_000_001)
        .file_with("bin/su", b"#!/bin/true\n", 0o4755, 0, 0, 1_000_000_002)
        .file_with("bin/owned", b"data", 0o6750, 1000, 1001, 1_000_000_003)
        .dir_with("tmp", 0o1777, 0, 0, 1_000_000_004)
        .dir_with("shared", 0o2775, 0, 50, 1_000_000_005)
        .symlink_with("bin/sh", "/usr/bin/dash", 7, 8, 1_000_000_006)
        // As docker and buildkit write it: the link's header repeats its target's.
        .hardlink_with("bin/su2", "bin/su", 0o4755, 0, 0, 1_000_000_002)
        .node("dev/null", EntryType::Char, 1, 3, 0o666)
        .node("dev/loop9", EntryType::Block, 7, 9, 0o660)
        .node("run/fifo", EntryType::Fifo, 0, 0, 0o600);
    // PAX: xattrs on a file (incl. a trusted one, dropped), sub-second mtime, a uid beyond
    // ustar.
    l.pax(&[
        ("SCHILY.xattr.user.note", b"hello"),
        ("SCHILY.xattr.trusted.bin", &[0, 1, 2, 255]),
        ("mtime", b"1500000000.25"),
        ("uid", b"3000000"),
    ])
    .file("bin/xattr", b"x");
    l.pax(&[("SCHILY.xattr.trusted.onlink", b"v")])
        .symlink("bin/linkx", "xattr");
    // Children added after their directory: its mtime must still be the tar's.
    l.file("tmp/late", b"late");
    let tar = l.tar();
    let d = tmp();
    let stats = apply(&tar, Compression::Gzip, d.path()).unwrap();
    let p = |s: &str| d.path().join(s);

    assert_eq!(stats.entries, 13);
    assert_eq!(stats.file_bytes, 12 + 4 + 1 + 4);
    assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
    assert_eq!(stats.diff_id, diff_id(&tar));

    assert_eq!(kind(p("bin/su")), S_IFREG);
    assert_eq!(perm(p("bin/su")), 0o4755, "setuid survives chown");
    assert_eq!(fs::read(p("bin/su")).unwrap(), b"#!/bin/true\n");
    let owned = lstat(p("bin/owned"));
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1001, 0o6750)
    );
    assert_eq!(owned.mtime(), 1_000_000_003);

    assert_eq!((kind(p("tmp")), perm(p("tmp"))), (S_IFDIR, 0o1777));
    assert_eq!(
        lstat(p("tmp")).mtime(),
        1_000_000_004,
        "dir mtime set after children"
    );
    assert_eq!(lstat(p("bin")).mtime(), 1_000_000_001);
    assert_eq!(perm(p("shared")), 0o2775);
    assert_eq!(lstat(p("shared")).gid(), 50);

    let sh = lstat(p("bin/sh"));
    assert_eq!(kind(p("bin/sh")), S_IFLNK);
    assert_eq!(
        fs::read_link(p("bin/sh")).unwrap().to_str(),
        Some("/usr/bin/dash")
    );
    assert_eq!((sh.uid(), sh.gid(), sh.mtime()), (7, 8, 1_000_000_006));

    assert_eq!(lstat(p("bin/su2")).ino(), lstat(p("bin/su")).ino());
    assert_eq!(lstat(p("bin/su")).nlink(), 2);

    let null = lstat(p("dev/null"));
    assert_eq!((kind(p("dev/null")), perm(p("dev/null"))), (S_IFCHR, 0o666));
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(kind(p("dev/loop9")), S_IFBLK);
    assert_eq!(lstat(p("dev/loop9")).rdev(), rustix::fs::makedev(7, 9));
    assert_eq!((kind(p("run/fifo")), perm(p("run/fifo"))), (S_IFIFO, 0o600));
    // Parents the tar never listed: 0755 root:root.
    let dev = lstat(p("dev"));
    assert_eq!((dev.mode() & 0o7777, dev.uid(), dev.gid()), (0o755, 0, 0));

    let x = lstat(p("bin/xattr"));
    assert_eq!(
        xattr(p("bin/xattr"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    // containerd 1.6 sets no trusted.* xattr from a layer tar (admin attributes from an
    // archive are refused and skipped), so neither does imagecache.
    assert_eq!(xattr(p("bin/xattr"), "trusted.bin"), None);
    assert_eq!((x.mtime(), x.mtime_nsec()), (1_500_000_000, 250_000_000));
    assert_eq!(x.uid(), 3_000_000);
    assert_eq!(
        xattr(p("bin/linkx"), "trusted.onlink"),
        None,
        "dropped, as containerd does"
    );
}

#[test]
fn long_names_gnu_and_pax() {
    let long_name = "f".repeat(200);
    let deep = format!("{}/{}", "d".repeat(150), "e".repeat(120));
    let long_target = format!("/{}", "t".repeat(300));
    let mut l = Layer::new();
    l.file(&long_name, b"gnu longname")
        .file(&deep, b"deep")
        .symlink("lnk", &long_target);
    // PAX path and linkpath override the (truncated) header names.
    let pax_path = format!("p/{}", "q".repeat(180));
    l.pax(&[("path", pax_path.as_bytes())])
        .file("p/short", b"pax");
    l.pax(&[("linkpath", pax_path.as_bytes())])
        .hardlink("p/hl", "p/x");
    let tar = l.tar();
    let d = tmp();
    apply(&tar, Compression::None, d.path()).unwrap();
    assert_eq!(
        fs::read(d.path().join(&long_name)).unwrap(),
        b"gnu longname"
    );
    assert_eq!(fs::read(d.path().join(&deep)).unwrap(), b"deep");
    assert_eq!(
        fs::read_link(d.path().join("lnk")).unwrap().to_str(),
        Some(&*long_target)
    );
    assert_eq!(fs::read(d.path().join(&pax_path)).unwrap(), b"pax");
    assert!(!d.path().join("p/short").exists());
    assert_eq!(
        lstat(d.path().join("p/hl")).ino(),
        lstat(d.path().join(&pax_path)).ino()
    );
}

#[test]
fn a_hardlink_header_applies_to_the_shared_inode() {
    let mut l = Layer::new();
    l.dir("bin");
    l.pax(&[("SCHILY.xattr.user.first", b"target")]).file_with(
        "bin/tool",
        b"tool",
        0o755,
        0,
        0,
        1_000_000_001,
    );
    // containerd chowns, sets the link's xattrs, chmods and sets the times on the link's
    // path, which is the target's inode: the last entry naming an inode decides.
    l.pax(&[
        ("SCHILY.xattr.user.second", b"link"),
        ("mtime", b"1200000000.5"),
    ])
    .hardlink_with("bin/tool2", "bin/tool", 0o4750, 1000, 1001, 1_200_000_000);
    // A link to a symlink links the symlink itself; its header's mode is not applied
    // through it (nor to the file it points at), its owner and times are.
    l.symlink("bin/sym", "tool")
        .hardlink_with("bin/sym2", "bin/sym", 0o600, 7, 8, 1_300_000_000);
    let tar = l.tar();
    let d = tmp();
    apply(&tar, Compression::None, d.path()).unwrap();
    let p = |s: &str| d.path().join(s);

    for name in ["bin/tool", "bin/tool2"] {
        let m = lstat(p(name));
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o4750, 1000, 1001),
            "{name}: the link's mode and owner, setuid kept"
        );
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_200_000_000, 500_000_000));
        assert_eq!(m.nlink(), 2);
        assert_eq!(
            xattr(p(name), "user.first").as_deref(),
            Some(&b"target"[..])
        );
        assert_eq!(xattr(p(name), "user.second").as_deref(), Some(&b"link"[..]));
    }
    assert_eq!(lstat(p("bin/tool")).ino(), lstat(p("bin/tool2")).ino());
    assert_eq!(fs::read(p("bin/tool2")).unwrap(), b"tool");

    let sym = lstat(p("bin/sym"));
    assert_eq!(kind(p("bin/sym2")), S_IFLNK);
    assert_eq!(sym.ino(), lstat(p("bin/sym2")).ino());
    assert_eq!((sym.uid(), sym.gid(), sym.mtime()), (7, 8, 1_300_000_000));
    assert_eq!(
        perm(p("bin/tool")),
        0o4750,
        "not chmodded through the symlink"
    );
}

#[test]
fn whiteouts_become_overlayfs_markers() {
    let mut l = Layer::new();
    l.dir("etc")
        .file_with("etc/.wh.passwd", b"", 0o644, 12, 34, MTIME)
        .dir("var/cache")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/kept", b"k")
        .file(".wh..wh.plnk", b"")
        .file("a/b/.wh.c", b"")
        .file(".wh..wh..opq", b"");
    let tar = l.tar();
    let d = tmp();
    let p = |s: &str| d.path().join(s);
    apply(&tar, Compression::Zstd, d.path()).unwrap();

    let wh = lstat(p("etc/passwd"));
    assert_eq!(kind(p("etc/passwd")), S_IFCHR);
    assert_eq!((wh.rdev(), wh.uid(), wh.gid()), (0, 12, 34));
    assert!(!p("etc/.wh.passwd").exists());
    assert_eq!(
        xattr(p("var/cache"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!p("var/cache/.wh..wh..opq").exists());
    assert_eq!(fs::read(p("var/cache/kept")).unwrap(), b"k");
    assert!(lstat(p("a/b/c")).rdev() == 0 && kind(p("a/b/c")) == S_IFCHR);
    assert_eq!(perm(p("a/b")), 0o755);
    assert!(
        fs::symlink_metadata(p(".wh..wh.plnk")).is_err(),
        "aufs metadata is skipped"
    );
    assert!(fs::symlink_metadata(p(".wh.plnk")).is_err());
    assert_eq!(
        xattr(d.path(), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(xattr(p("etc"), "trusted.overlay.opaque"), None);
}

#[test]
fn overlay_xattrs_in_the_tar_are_dropped() {
    let mut l = Layer::new();
    l.pax(&[
        ("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere"),
        ("SCHILY.xattr.user.ok", b"1"),
    ])
    .dir("d");
    let tar = l.tar();
    let d = tmp();
    apply(&tar, Compression::None, d.path()).unwrap();
    assert_eq!(xattr(d.path().join("d"), "trusted.overlay.redirect"), None);
    assert_eq!(
        xattr(d.path().join("d"), "user.ok").as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut l = Layer::new();
    l.file("a", b"first file")
        .dir("a")
        .file("a/child", b"c")
        .file("a", b"file again")
        // dir over dir merges: contents stay, metadata updates.
        .dir_with("m", 0o700, 0, 0, MTIME)
        .file("m/keep", b"keep")
        .dir_with("m", 0o750, 5, 6, MTIME + 5)
        // symlink over file, file over symlink, dir over symlink
        .file("s", b"x")
        .symlink("s", "target")
        .symlink("t", "nowhere")
        .file("t", b"t")
        .symlink("u", "m")
        .dir("u")
        .file("u/inside", b"i")
        // whiteout over something created earlier in the same layer
        .file("gone", b"g")
        .file(".wh.gone", b"");
    let tar = l.tar();
    let d = tmp();
    let p = |s: &str| d.path().join(s);
    apply(&tar, Compression::Gzip, d.path()).unwrap();
    assert_eq!(kind(p("a")), S_IFREG);
    assert_eq!(fs::read(p("a")).unwrap(), b"file again");
    let m = lstat(p("m"));
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o750, 5, 6, (MTIME + 5) as i64)
    );
    assert_eq!(fs::read(p("m/keep")).unwrap(), b"keep");
    assert_eq!(kind(p("s")), S_IFLNK);
    assert_eq!(fs::read(p("t")).unwrap(), b"t");
    assert_eq!(kind(p("u")), S_IFDIR);
    assert_eq!(fs::read(p("u/inside")).unwrap(), b"i");
    assert!(
        !p("m/inside").exists(),
        "u/inside must not land in the old symlink's target"
    );
    assert_eq!(kind(p("gone")), S_IFCHR);
}

#[test]
fn all_compressions_and_mislabels_give_the_same_tree() {
    let mut l = Layer::new();
    l.dir("x")
        .file("x/y", &vec![7u8; 300_000])
        .symlink("x/z", "y");
    let tar = l.tar();
    let mut trees = Vec::new();
    for (actual, label) in [
        (Compression::None, Compression::None),
        (Compression::Gzip, Compression::Gzip),
        (Compression::Zstd, Compression::Zstd),
        (Compression::Zstd, Compression::Gzip),
        (Compression::Gzip, Compression::None),
        (Compression::None, Compression::Zstd),
    ] {
        let d = tmp();
        let blob = compress(&tar, actual);
        let stats = apply_layer(&blob[..], label, d.path(), &diff_id(&tar))
            .unwrap_or_else(|e| panic!("{actual:?} labelled {label:?}: {e}"));
        assert_eq!(stats.diff_id, diff_id(&tar));
        trees.push(snapshot(d.path()));
    }
    assert!(trees.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn concatenated_gzip_members_are_one_stream() {
    let mut l = Layer::new();
    l.file("a", b"aaaa").file("b", b"bbbb");
    let tar = l.tar();
    let (one, two) = tar.split_at(700);
    let mut blob = compress(one, Compression::Gzip);
    blob.extend(compress(two, Compression::Gzip));
    let d = tmp();
    apply_layer(&blob[..], Compression::Gzip, d.path(), &diff_id(&tar)).unwrap();
    assert_eq!(fs::read(d.path().join("b")).unwrap(), b"bbbb");
}

#[test]
fn diff_id_covers_padding_after_the_end_blocks() {
    let mut l = Layer::new();
    l.file("a", b"a");
    let mut tar = l.tar();
    tar.extend(std::iter::repeat_n(0u8, 8192)); // record padding, as GNU tar writes
    let d = tmp();
    let stats = apply(&tar, Compression::Gzip, d.path()).unwrap();
    assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
}

#[test]
fn diff_id_mismatch_is_detected() {
    let mut l = Layer::new();
    l.file("a", b"a");
    let tar = l.tar();
    let d = tmp();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = apply_layer(
        &compress(&tar, Compression::Gzip)[..],
        Compression::Gzip,
        d.path(),
        &wrong,
    )
    .unwrap_err();
    match &err {
        UnpackError::DiffIdMismatch { expected, actual } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &diff_id(&tar));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("pull it again"));
    let bad = apply_layer(&tar[..], Compression::None, d.path(), "md5:abc").unwrap_err();
    assert!(matches!(bad, UnpackError::BadDiffId(_)), "{bad}");
}

#[test]
fn truncated_streams_are_detected() {
    let mut l = Layer::new();
    l.file(
        "big",
        &(0..400_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .file("after", b"after");
    let tar = l.tar();
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = compress(&tar, c);
        // Cut in the middle of the big file, and just before the end.
        for cut in [blob.len() / 2, blob.len() - 8] {
            let d = tmp();
            let err = apply_layer(&blob[..cut], c, d.path(), &diff_id(&tar)).unwrap_err();
            assert!(
                matches!(
                    err,
                    UnpackError::Stream { .. } | UnpackError::DiffIdMismatch { .. }
                ),
                "{c:?} cut at {cut}: {err}"
            );
        }
    }
}

#[test]
fn unknown_entry_types_are_refused() {
    let mut l = Layer::new();
    l.raw(EntryType::new(b'V'), b"volume", b"", b"");
    let tar = l.tar();
    let d = tmp();
    let err = apply(&tar, Compression::None, d.path()).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::UnsupportedType {
                type_byte: b'V',
                ..
            }
        ),
        "{err}"
    );
}

/// A tar assembled block by block, for headers `Layer` cannot express.
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    /// A ustar header of type `kind` named `name` with `data` after it, padded to a block.
    /// `size` is what the header claims, which need not be `data.len()`.
    fn entry(&mut self, kind: u8, name: &str, size: u64, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::new(kind));
        h.set_path(name).unwrap();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        h.set_cksum();
        self.header(&h).data(data)
    }

    fn header(&mut self, h: &tar::Header) -> &mut Self {
        self.0.extend_from_slice(h.as_bytes());
        self
    }

    fn data(&mut self, data: &[u8]) -> &mut Self {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().next_multiple_of(512), 0);
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        std::mem::take(&mut self.0)
    }
}

#[test]
fn binary_xattr_values_with_newlines_land_byte_exact() {
    // What Go's archive/tar writes for `setcap`-style binary xattrs: records sorted by key
    // (so the xattrs come before `gid`/`uid`), values verbatim, each record found only by
    // its length. Each value holds `\n`, and `=`, and a string that looks like a record.
    let cap_like: &[u8] = b"\x01\x00\x00\x02\x00\x0a\x00\x00\n=\n9 k=v\n\x00\xff";
    let text: &[u8] = b"line one\nline two\n=\n";
    let mut pax = Vec::new();
    pax.extend_from_slice(b"57 SCHILY.xattr.user.capability-like=");
    pax.extend_from_slice(cap_like);
    pax.extend_from_slice(b"\n");
    assert_eq!(pax.len(), 57, "first record's length prefix");
    pax.extend_from_slice(b"46 SCHILY.xattr.user.bin=line one\nline two\n=\n\n");
    assert_eq!(pax.len(), 57 + 46, "second record's length prefix");
    pax.extend_from_slice(b"12 gid=4242\n21 mtime=1.000000002\n12 uid=4243\n");
    assert_eq!(
        pax.len(),
        57 + 46 + 12 + 21 + 12,
        "last records' length prefixes"
    );
    let mut t = RawTar::default();
    t.entry(b'x', "PaxHeaders/binary", pax.len() as u64, &pax)
        .entry(b'0', "usr/share/xattr/binary", 6, b"xattrs")
        .entry(b'0', "usr/share/xattr/after", 5, b"after");
    let tar = t.finish();

    let d = tmp();
    let stats = apply(&tar, Compression::Gzip, d.path()).unwrap();
    assert_eq!(stats.entries, 2);
    let p = d.path().join("usr/share/xattr/binary");
    assert_eq!(xattr(&p, "user.capability-like").as_deref(), Some(cap_like));
    assert_eq!(xattr(&p, "user.bin").as_deref(), Some(text));
    let m = lstat(&p);
    assert_eq!(
        (m.uid(), m.gid()),
        (4243, 4242),
        "records after the binary ones apply"
    );
    assert_eq!((m.mtime(), m.mtime_nsec()), (1, 2));
    assert_eq!(fs::read(&p).unwrap(), b"xattrs");
    // The PAX header described only its own entry.
    let after = d.path().join("usr/share/xattr/after");
    assert_eq!(xattr(&after, "user.bin"), None);
    assert_eq!(lstat(&after).uid(), 0);
    assert_eq!(fs::read(after).unwrap(), b"after");
}

#[test]
fn pax_size_overrides_the_header_size() {
    // Go leaves the header's size 0 when only PAX can hold it (8 GiB and more); the data
    // and the next header's position follow the PAX size.
    let data: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
    let mut t = RawTar::default();
    t.entry(b'x', "PaxHeaders/big", 13, b"13 size=1300\n")
        .entry(b'0', "big", 0, &data)
        .entry(b'0', "next", 4, b"next");
    let tar = t.finish();
    let d = tmp();
    let stats = apply(&tar, Compression::None, d.path()).unwrap();
    assert_eq!(stats.file_bytes, 1304);
    assert_eq!(fs::read(d.path().join("big")).unwrap(), data);
    assert_eq!(fs::read(d.path().join("next")).unwrap(), b"next");
}

#[test]
fn malformed_pax_records_are_refused_naming_the_entry() {
    // The second record claims 30 bytes where 13 are left.
    let pax = b"6 k=v\n30 key=value\n";
    let mut t = RawTar::default();
    t.entry(b'x', "PaxHeaders/victim", pax.len() as u64, pax)
        .entry(b'0', "usr/bin/victim", 0, b"");
    let tar = t.finish();
    let d = tmp();
    let err = apply(&tar, Compression::None, d.path()).unwrap_err();
    match &err {
        UnpackError::Malformed { entry, reason } => {
            assert_eq!(entry, "usr/bin/victim");
            assert!(
                reason.contains("byte 6") && reason.contains("30"),
                "{reason}"
            );
        }
        other => panic!("not Malformed: {other}"),
    }
    assert!(err.to_string().contains("rebuild the image"), "{err}");
}

#[test]
fn gnu_sparse_files_get_their_holes_back() {
    // Old GNU sparse: 600 bytes stored for a 5000-byte file, data at 1024 and 4000 and a
    // hole at the end that only the real size shows.
    let first = [b'a'; 512];
    let second = [b'b'; 88];
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::GNUSparse);
    h.set_path("sparse").unwrap();
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(600);
    let gnu = h.as_gnu_mut().unwrap();
    gnu.sparse[0].set_offset(1024);
    gnu.sparse[0].set_length(512);
    gnu.sparse[1].set_offset(4000);
    gnu.sparse[1].set_length(88);
    gnu.set_real_size(5000);
    h.set_cksum();
    let mut t = RawTar::default();
    t.header(&h).data(&[&first[..], &second[..]].concat());
    t.entry(b'0', "after", 2, b"ok");
    let tar = t.finish();
    let d = tmp();
    let stats = apply(&tar, Compression::None, d.path()).unwrap();
    assert_eq!(stats.file_bytes, 5000 + 2);
    let mut want = vec![0u8; 5000];
    want[1024..1536].copy_from_slice(&first);
    want[4000..4088].copy_from_slice(&second);
    assert_eq!(fs::read(d.path().join("sparse")).unwrap(), want);
    assert_eq!(fs::read(d.path().join("after")).unwrap(), b"ok");
}
