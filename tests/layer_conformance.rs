//! Layer conformance: images using every tar feature real layers use are unpacked by
//! containerd 1.6 (overlayfs snapshotter, CRI pull) and by imagecache (a cache built by the
//! daemon), and the two merged trees must agree entry by entry. The expected tree is
//! containerd's, never a model of the test's own.
//!
//! The tars are written byte by byte here (ustar, PAX records of any kind, GNU long names,
//! exact header fields), since no tar library writes all of them.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use imagecache::sys::{LinuxSys, MountOptions, Sys};
use support::busybox::pause_image;
use support::cachefs::{mount_chain, mount_snapshot, Overlay};
use support::containerd::{ContainerdOptions, TestContainerd};
use support::daemon::{cache_yaml, TestDaemon};
use support::oci::{push_image, Compression, Image, Layer, LayerWriter, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::ScratchXfs;

// ---------------------------------------------------------------------------------------
// Writing tars

#[derive(Clone, Copy, PartialEq, Eq)]
enum Names {
    /// Plain fields when they fit, else PAX `path`/`linkpath` (what Go's archive/tar does).
    Auto,
    /// PAX `path`/`linkpath` records even for short names.
    Pax,
    /// GNU `././@LongLink` 'L'/'K' entries and a GNU header.
    Gnu,
}

enum Body {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

struct Entry {
    path: String,
    body: Body,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// PAX records besides path/linkpath/uid/gid, in order (xattrs, fractional mtime ...).
    pax: Vec<(String, Vec<u8>)>,
    names: Names,
}

struct LayerTar {
    entries: Vec<Entry>,
}

const MTIME: u64 = 1_690_000_000;
const MAX_OCTAL_ID: u64 = 0o7777777;

impl LayerTar {
    fn new() -> LayerTar {
        LayerTar {
            entries: Vec::new(),
        }
    }

    fn add(&mut self, path: &str, body: Body) -> &mut Entry {
        let mode = match body {
            Body::Dir => 0o755,
            Body::Symlink(_) => 0o777,
            _ => 0o644,
        };
        self.entries.push(Entry {
            path: path.to_string(),
            body,
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            pax: Vec::new(),
            names: Names::Auto,
        });
        self.entries.last_mut().unwrap()
    }

    fn dir(&mut self, p: &str) -> &mut Entry {
        self.add(&format!("{p}/"), Body::Dir)
    }
    fn file(&mut self, p: &str, data: impl Into<Vec<u8>>) -> &mut Entry {
        self.add(p, Body::File(data.into()))
    }
    fn symlink(&mut self, p: &str, t: &str) -> &mut Entry {
        self.add(p, Body::Symlink(t.into()))
    }
    fn hardlink(&mut self, p: &str, t: &str) -> &mut Entry {
        self.add(p, Body::Hardlink(t.into()))
    }
    fn whiteout(&mut self, p: &str) -> &mut Entry {
        let w = match p.rsplit_once('/') {
            Some((d, n)) => format!("{d}/.wh.{n}"),
            None => format!(".wh.{p}"),
        };
        self.add(&w, Body::File(Vec::new()))
    }
    fn opaque(&mut self, dir: &str) -> &mut Entry {
        self.add(&format!("{dir}/.wh..wh..opq"), Body::File(Vec::new()))
    }

    fn to_layer(&self) -> Layer {
        let mut w = LayerWriter::with_level(Compression::Gzip, Some(1));
        for e in &self.entries {
            write_entry(&mut w, e).unwrap();
        }
        w.write_all(&[0u8; 1024]).unwrap();
        w.finish()
    }
}

impl Entry {
    fn mode(&mut self, m: u32) -> &mut Self {
        self.mode = m;
        self
    }
    fn owner(&mut self, u: u64, g: u64) -> &mut Self {
        self.uid = u;
        self.gid = g;
        self
    }
    fn mtime(&mut self, t: u64) -> &mut Self {
        self.mtime = t;
        self
    }
    fn xattr(&mut self, k: &str, v: &[u8]) -> &mut Self {
        self.pax.push((format!("SCHILY.xattr.{k}"), v.to_vec()));
        self
    }
    fn pax(&mut self, k: &str, v: &str) -> &mut Self {
        self.pax.push((k.into(), v.as_bytes().to_vec()));
        self
    }
    fn names(&mut self, n: Names) -> &mut Self {
        self.names = n;
        self
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{v:0width$o}", width = field.len() - 1);
    assert!(s.len() < field.len(), "{v} too large for an octal field");
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

fn pad(w: &mut impl Write, len: usize) -> std::io::Result<()> {
    let rem = len % 512;
    if rem != 0 {
        w.write_all(&vec![0u8; 512 - rem])?;
    }
    Ok(())
}

fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One header block: raw name and link bytes (truncated to their fields), numbers octal.
#[allow(clippy::too_many_arguments)]
fn header(
    gnu: bool,
    name: &[u8],
    link: &[u8],
    typeflag: u8,
    size: u64,
    e: &Entry,
    dev: (u32, u32),
) -> [u8; 512] {
    let mut h = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    let b = h.as_mut_bytes();
    b[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    b[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    octal(&mut b[100..108], u64::from(e.mode));
    octal(&mut b[108..116], e.uid.min(MAX_OCTAL_ID));
    octal(&mut b[116..124], e.gid.min(MAX_OCTAL_ID));
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], e.mtime);
    b[156] = typeflag;
    octal(&mut b[329..337], u64::from(dev.0));
    octal(&mut b[337..345], u64::from(dev.1));
    h.set_cksum();
    *h.as_bytes()
}

fn write_entry(w: &mut impl Write, e: &Entry) -> std::io::Result<()> {
    let (typeflag, link, dev): (u8, &str, (u32, u32)) = match &e.body {
        Body::Dir => (b'5', "", (0, 0)),
        Body::File(_) => (b'0', "", (0, 0)),
        Body::Symlink(t) => (b'2', t, (0, 0)),
        Body::Hardlink(t) => (b'1', t, (0, 0)),
        Body::Char(a, b) => (b'3', "", (*a, *b)),
        Body::Block(a, b) => (b'4', "", (*a, *b)),
        Body::Fifo => (b'6', "", (0, 0)),
    };
    let name = e.path.as_bytes();
    let link = link.as_bytes();
    let gnu = e.names == Names::Gnu;
    let mut pax = Vec::new();
    match e.names {
        Names::Gnu => {
            for (flag, v) in [(b'L', name), (b'K', link)] {
                if v.len() > 100 {
                    let mut data = v.to_vec();
                    data.push(0);
                    let meta = Entry {
                        path: String::new(),
                        body: Body::Fifo,
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime: 0,
                        pax: Vec::new(),
                        names: Names::Gnu,
                    };
                    let h = header(
                        true,
                        b"././@LongLink",
                        b"",
                        flag,
                        data.len() as u64,
                        &meta,
                        (0, 0),
                    );
                    w.write_all(&h)?;
                    w.write_all(&data)?;
                    pad(w, data.len())?;
                }
            }
        }
        Names::Pax | Names::Auto => {
            if e.names == Names::Pax || name.len() > 100 {
                pax_record(&mut pax, "path", name);
            }
            if !link.is_empty() && (e.names == Names::Pax || link.len() > 100) {
                pax_record(&mut pax, "linkpath", link);
            }
        }
    }
    if e.uid > MAX_OCTAL_ID {
        pax_record(&mut pax, "uid", e.uid.to_string().as_bytes());
    }
    if e.gid > MAX_OCTAL_ID {
        pax_record(&mut pax, "gid", e.gid.to_string().as_bytes());
    }
    for (k, v) in &e.pax {
        pax_record(&mut pax, k, v);
    }
    if !pax.is_empty() {
        let meta = Entry {
            path: String::new(),
            body: Body::Fifo,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            pax: Vec::new(),
            names: Names::Auto,
        };
        let h = header(
            false,
            b"PaxHeaders.0/entry",
            b"",
            b'x',
            pax.len() as u64,
            &meta,
            (0, 0),
        );
        w.write_all(&h)?;
        w.write_all(&pax)?;
        pad(w, pax.len())?;
    }
    match &e.body {
        Body::File(data) => {
            w.write_all(&header(
                gnu,
                name,
                link,
                typeflag,
                data.len() as u64,
                e,
                dev,
            ))?;
            w.write_all(data)?;
            pad(w, data.len())
        }
        _ => w.write_all(&header(gnu, name, link, typeflag, 0, e, dev)),
    }
}

// ---------------------------------------------------------------------------------------
// The images

/// A `vfs_cap_data` revision 2 with CAP_NET_RAW (bit 13) permitted and effective.
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Modes, owners, devices, xattrs, hardlinks, implicit parents, type changes, whiteouts.
fn image_attrs() -> Vec<LayerTar> {
    let mut l1 = LayerTar::new();
    l1.dir("a").mode(0o1777);
    l1.dir("b")
        .mode(0o700)
        .owner(1000, 1000)
        .xattr("user.dirattr", b"blue")
        .xattr("trusted.foo", b"on a directory");
    l1.dir("c");
    l1.dir("c/d").mode(0o2775).owner(0, 50);
    l1.file("c/empty", "").mtime(0);
    l1.file("c/setuid", data(1, 300)).mode(0o4755);
    l1.file("c/setgid", data(2, 200)).mode(0o2755).owner(0, 5);
    l1.file("c/sticky", "s").mode(0o1644);
    l1.file("c/all", "7777").mode(0o7777);
    l1.file("c/none", "0000").mode(0o000);
    l1.file("c/xattrs", "x")
        .xattr("user.text", b"some text")
        .xattr("user.binary", b"\x00\n\xff=\n")
        .xattr("trusted.dropped", b"must not appear")
        .xattr("security.capability", &CAP_NET_RAW);
    l1.file("c/frac-mtime", "f")
        .pax("mtime", "1690000000.123456789");
    l1.file("c/future", "2100").mtime(4_102_444_800);
    l1.symlink("c/rel", "setuid");
    l1.symlink("c/abs", "/c/setuid");
    l1.symlink("c/dangling", "nowhere/at/all")
        .mtime(1_600_000_000);
    l1.file("c/hl-src", data(3, 5000)).mode(0o640).owner(33, 33);
    l1.hardlink("c/hl-1", "c/hl-src").mode(0o640).owner(33, 33);
    l1.hardlink("c/hl-2", "c/hl-src").mode(0o640).owner(33, 33);
    // A hardlink whose own header differs from its target's: the header applies to the inode.
    l1.file("c/own-src", "own header").mode(0o644);
    l1.hardlink("c/hl-own-header", "c/own-src")
        .mode(0o700)
        .owner(7, 8);
    l1.dir("dev");
    l1.add("dev/null", Body::Char(1, 3)).mode(0o666);
    l1.add("dev/blk", Body::Block(7, 200))
        .mode(0o660)
        .owner(0, 6);
    l1.add("dev/fifo", Body::Fifo).mode(0o600);
    l1.dir("t");
    l1.file("t/f2d", "file becoming dir");
    l1.dir("t/d2s");
    l1.file("t/d2s/child", "under a dir becoming a symlink");
    l1.symlink("t/s2f", "d2s");
    l1.file("t/f2s", "file becoming symlink");
    l1.dir("t/d2f");
    l1.file("t/d2f/child", "under a dir becoming a file");
    l1.add("t/fifo2dir", Body::Fifo);
    l1.add("t/dev2file", Body::Char(1, 5));
    l1.symlink("t/s2d", "d2s");
    l1.dir("w");
    l1.file("w/gone-file", "whited out");
    l1.dir("w/gone-dir");
    l1.dir("w/gone-dir/x");
    l1.file("w/gone-dir/x/y", "whited out with its dir");
    l1.file("w/keep", "stays");
    l1.dir("o").mode(0o750).owner(1, 1);
    l1.file("o/old", "hidden by opaque");
    l1.dir("o/sub");
    l1.file("o/sub/old2", "hidden by opaque");

    let mut l2 = LayerTar::new();
    // Implicit parents: no entries for a, b, c/d, c/d/deeper.
    l2.file("a/new-in-sticky", "n1");
    l2.file("b/new-in-private", "n2").owner(1000, 1000);
    l2.file("c/d/deeper/file", "n3");
    // No hardlink to a lower layer's file: containerd 1.6 applies a layer straight into the
    // snapshot's upper directory and refuses such a link ("link ...: no such file").
    // Type changes, without whiteouts (as Docker writes them).
    l2.dir("t/f2d");
    l2.file("t/f2d/inside", "in a dir that was a file");
    l2.symlink("t/d2s", "f2d");
    l2.file("t/s2f", "was a symlink");
    l2.symlink("t/f2s", "s2f");
    l2.file("t/d2f", "was a dir");
    l2.dir("t/fifo2dir").mode(0o711);
    l2.file("t/dev2file", "was a device");
    l2.dir("t/s2d");
    l2.whiteout("w/gone-file");
    l2.whiteout("w/gone-dir");
    l2.opaque("o");
    l2.file("o/new", "after opaque");
    l2.file("c/xattrs", "x2")
        .xattr("user.text", b"changed")
        .xattr("trusted.foo", b"on a file");
    l2.symlink("c/xattr-link", "xattrs")
        .xattr("trusted.foo", b"on a symlink");

    let mut l3 = LayerTar::new();
    l3.dir("w/gone-file").mode(0o700);
    l3.whiteout("t/f2d/inside");
    l3.file("c/hl-1", "no longer a link");
    l3.dir("c").mode(0o750).owner(0, 4);
    l3.file("c/setuid", data(4, 100)).mode(0o4711).owner(0, 0);
    l3.file("c/l3-src", "linked in its own layer").mode(0o600);
    l3.hardlink("c/l3-link", "c/l3-src").mode(0o600);
    l3.dir("a/sub-of-sticky").mode(0o1770);
    // `o` is l2's opaque directory, unlisted here: its marker is not copied up.
    l3.file("o/l3-new", "under an opaque dir of a lower layer");
    vec![l1, l2, l3]
}

/// 200 bytes of name in a 2-level path: too long for the 100-byte field and for ustar.
fn long(prefix: &str, n: usize) -> String {
    let mut s = prefix.to_string();
    while s.len() < n {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

/// Names and records: long names (GNU, PAX, ustar prefix), unicode, PAX mtimes and big ids,
/// empty files.
fn image_names() -> Vec<LayerTar> {
    let gnu_name = format!("names/{}", long("gnu-", 150));
    let pax_name = format!("names/{}", long("pax-", 200));
    let split_dir = format!("names/{}", long("split-dir-", 90));
    let split_name = format!("{split_dir}/{}", long("split-file-", 60));
    let long_target = format!("/{}", long("target-", 160));
    let mut l1 = LayerTar::new();
    l1.dir("names");
    l1.file(&gnu_name, "gnu long name").names(Names::Gnu);
    l1.file(&pax_name, "pax long name");
    l1.dir(&split_dir);
    l1.file(&split_name, "ustar prefix split");
    l1.symlink("names/gnu-long-target", &long_target)
        .names(Names::Gnu);
    l1.symlink("names/pax-long-target", &long_target);
    l1.file("names/pax-short", "pax path record for a short name")
        .names(Names::Pax);
    l1.hardlink(&format!("names/{}", long("gnu-link-", 140)), &gnu_name)
        .names(Names::Gnu);
    l1.dir("names/ünïcödé-目录");
    l1.file("names/ünïcödé-目录/файл-🙂", "unicode").mode(0o600);
    l1.symlink("names/ссылка", "ünïcödé-目录/файл-🙂");
    l1.dir("rec");
    l1.file("rec/frac", "fraction")
        .pax("mtime", "1690000000.987654321")
        .pax("atime", "1690000001.5")
        .pax("ctime", "1690000002.25");
    l1.file("rec/bigid", "big ids").owner(3_000_000, 4_000_000);
    l1.dir("rec/bigid-dir").owner(2_097_152, 2_097_153);
    l1.file("rec/mtime0", "epoch").mtime(0);
    l1.file("rec/empty", "");
    l1.symlink("rec/link-frac", "frac")
        .pax("mtime", "1600000000.5");
    // No GNU sparse entry: containerd 1.6 refuses the whole layer ("unhandled tar header
    // type 83"), so there is no containerd tree to compare with.
    let mut l2 = LayerTar::new();
    l2.whiteout(&pax_name).names(Names::Auto);
    l2.whiteout("names/ссылка");
    l2.file("names/l2-src", "target in l2");
    l2.hardlink(&format!("names/{}", long("pax-link-", 180)), "names/l2-src");
    l2.file(&format!("names/{}", long("new-pax-", 230)), "added in l2")
        .names(Names::Pax);

    let mut l3 = LayerTar::new();
    l3.opaque("names/ünïcödé-目录");
    l3.file("names/ünïcödé-目录/новый", "after opaque");
    l3.file("rec/bigid", "rewritten").owner(5_000_000, 0);
    vec![l1, l2, l3]
}

/// Directories a layer writes into without listing them, under setgid directories: what the
/// kernel gives a mkdir there (the parent's group) and what containerd's chmod after it
/// keeps, one and two levels down, under a parent a lower layer or the layer itself made
/// setgid, and under one a lower layer made implicitly.
fn image_setgid() -> Vec<LayerTar> {
    let mut l1 = LayerTar::new();
    l1.dir("g");
    l1.dir("g/s").mode(0o2775).owner(0, 50);
    l1.dir("g/later").mode(0o2770).owner(0, 80);
    let mut l2 = LayerTar::new();
    l2.file("g/s/one/file", "one level");
    l2.file("g/s/two/levels/file", "two levels");
    let mut l3 = LayerTar::new();
    // g/s/one is l2's implicit directory; under it, and two levels under g/s again.
    l3.file("g/s/one/sub/file", "under l2's implicit dir");
    l3.file("g/s/three/levels/down/file", "three levels");
    // Listed only after a directory was made in it, while it still had l1's attributes.
    l3.file("g/later/sub/file", "before the listing");
    l3.dir("g/later").mode(0o755);
    // A setgid directory of this very layer, then written under.
    l3.dir("h").mode(0o2755).owner(0, 60);
    l3.file("h/i/j/file", "under this layer's setgid dir");
    vec![l1, l2, l3]
}

fn build(layers: &[LayerTar]) -> Image {
    Image::new(
        layers.iter().map(LayerTar::to_layer).collect(),
        ManifestFormat::Oci,
    )
}

// ---------------------------------------------------------------------------------------
// Reading and comparing merged trees

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    sha256: Option<String>,
    target: Option<String>,
    rdev: Option<(u32, u32)>,
    xattrs: BTreeMap<String, String>,
    /// (seconds, nanoseconds) for files and symlinks.
    mtime: Option<(i64, i64)>,
    /// The other paths sharing this inode (files only), sorted.
    links: Vec<String>,
}

fn walk(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    walk_into(root, "", &mut out, &mut inodes);
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            let mut others: Vec<String> = group.iter().filter(|o| *o != p).cloned().collect();
            others.sort();
            out.get_mut(p).unwrap().links = others;
        }
    }
    out
}

fn walk_into(
    dir: &Path,
    prefix: &str,
    out: &mut BTreeMap<String, Node>,
    inodes: &mut HashMap<(u64, u64), Vec<String>>,
) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let name = name.into_string().expect("UTF-8 name");
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = dir.join(&name);
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        if kind == "file" {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        let node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: (kind == "file").then(|| md.size()),
            sha256: (kind == "file").then(|| {
                let mut h = Sha256::new();
                let mut f = fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                hex::encode(h.finalize())
            }),
            target: (kind == "symlink")
                .then(|| fs::read_link(&path).unwrap().to_string_lossy().into_owned()),
            rdev: matches!(kind, "char" | "block")
                .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))),
            xattrs: xattrs(&path),
            mtime: matches!(kind, "file" | "symlink").then(|| (md.mtime(), md.mtime_nsec())),
            links: Vec::new(),
        };
        out.insert(rel.clone(), node);
        if kind == "dir" {
            walk_into(&path, &rel, out, inodes);
        }
    }
}

/// xattrs but the host's LSM label. overlayfs's own `trusted.overlay.*` never show in a
/// merged view; any other `trusted.*` must be absent from both trees, as containerd sets none
/// from a layer tar.
fn xattrs(path: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let len = rustix::fs::llistxattr_query(path).unwrap_or(0);
    if len == 0 {
        return out;
    }
    let mut list = vec![0u8; len];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap();
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name.starts_with("trusted.overlay.") || name == "security.selinux" {
            continue;
        }
        let vlen = rustix::fs::lgetxattr_query(path, name.as_str()).unwrap();
        let mut v = vec![0u8; vlen];
        let vn = rustix::fs::lgetxattr(path, name.as_str(), &mut v[..]).unwrap();
        v.truncate(vn);
        out.insert(name, format!("0x{}", hex::encode(v)));
    }
    out
}

/// Every `trusted.*` xattr in the layer directory `dir` but the opaque markers of the
/// directories `tar` marks opaque, and every such marker missing. containerd sets no
/// `trusted.*` xattr from a tar and copies none up from a lower layer into a directory
/// a layer writes into without listing it; its own markers are the only ones.
fn admin_xattrs_departures(dir: &Path, tar: &LayerTar) -> Vec<String> {
    let mut want: BTreeSet<String> = tar
        .entries
        .iter()
        .filter_map(|e| e.path.strip_suffix("/.wh..wh..opq"))
        .map(|d| format!("{d}: trusted.overlay.opaque"))
        .collect();
    let mut found = BTreeSet::new();
    admin_xattrs_into(dir, "", &mut found);
    let mut out: Vec<String> = found
        .difference(&want)
        .map(|f| format!("{f}: set, containerd sets no such xattr"))
        .collect();
    want.retain(|w| !found.contains(w));
    out.extend(want.iter().map(|w| format!("{w}: missing")));
    out
}

fn admin_xattrs_into(dir: &Path, prefix: &str, found: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().expect("UTF-8 name");
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        let len = rustix::fs::llistxattr_query(&path).unwrap_or(0);
        let mut list = vec![0u8; len];
        let n = rustix::fs::llistxattr(&path, &mut list[..]).unwrap_or(0);
        for x in list[..n]
            .split(|b| *b == 0)
            .filter(|x| x.starts_with(b"trusted."))
        {
            found.insert(format!("{rel}: {}", String::from_utf8_lossy(x)));
        }
        if entry.file_type().unwrap().is_dir() {
            admin_xattrs_into(&path, &rel, found);
        }
    }
}

/// "path: field expected X got Y" for every difference.
fn diff(expected: &BTreeMap<String, Node>, got: &BTreeMap<String, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in expected {
        let Some(g) = got.get(p) else {
            out.push(format!("{p}: missing (expected {})", e.kind));
            continue;
        };
        let mut field = |name: &str, e: String, g: String| {
            if e != g {
                out.push(format!("{p}: {name} expected {e} got {g}"));
            }
        };
        field("type", e.kind.into(), g.kind.into());
        if e.kind != g.kind {
            continue;
        }
        field("mode", format!("{:04o}", e.mode), format!("{:04o}", g.mode));
        field("uid", e.uid.to_string(), g.uid.to_string());
        field("gid", e.gid.to_string(), g.gid.to_string());
        field("size", format!("{:?}", e.size), format!("{:?}", g.size));
        field(
            "content sha256",
            format!("{:?}", e.sha256),
            format!("{:?}", g.sha256),
        );
        field(
            "symlink target",
            format!("{:?}", e.target),
            format!("{:?}", g.target),
        );
        field("device", format!("{:?}", e.rdev), format!("{:?}", g.rdev));
        field(
            "xattrs",
            format!("{:?}", e.xattrs),
            format!("{:?}", g.xattrs),
        );
        field("mtime", format!("{:?}", e.mtime), format!("{:?}", g.mtime));
        field(
            "hardlinked with",
            format!("{:?}", e.links),
            format!("{:?}", g.links),
        );
    }
    for (p, g) in got {
        if !expected.contains_key(p) {
            out.push(format!(
                "{p}: unexpected {} (containerd has no such path)",
                g.kind
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Unpacking with containerd

/// A read-only view of containerd's snapshot `parent` (an image's top chainID) mounted at
/// `at` from the mounts `ctr snapshots mounts` prints.
fn mount_containerd_view(c: &TestContainerd, key: &str, parent: &str, at: &Path) -> Overlay {
    // The mounts are printed by the same call that makes the view: a view holds no lease,
    // so containerd's garbage collection, which the pull just scheduled, may remove it
    // before a second `ctr snapshots mounts` asks. Its lowers are the image's own layers.
    let printed = c.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "overlayfs",
        "view",
        "--target",
        at.to_str().unwrap(),
        key,
        parent,
    ]);
    // "mount -t overlay overlay -o index=off,ro,lowerdir=A:B /target"
    let words: Vec<&str> = printed.split_whitespace().collect();
    let arg = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .map(|i| words[i + 1])
            .unwrap_or_else(|| panic!("no {flag} in {printed:?}"))
    };
    let fstype = arg("-t");
    assert_eq!(fstype, "overlay", "a view of several layers: {printed}");
    let options: Vec<&str> = arg("-o").split(',').filter(|o| *o != "ro").collect();
    fs::create_dir_all(at).unwrap();
    LinuxSys
        .mount(
            Path::new("overlay"),
            at,
            "overlay",
            MountOptions {
                read_only: true,
                ..Default::default()
            },
            &options.join(","),
        )
        .unwrap_or_else(|e| panic!("mount containerd's view {printed}: {e}"));
    Overlay {
        path: at.to_owned(),
    }
}

#[test]
fn imagecache_layers_match_containerd_unpack() {
    let scratch = ScratchXfs::new(16 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    push_image(&addr, "pause", "v1", &pause_image(), None);
    let tars = [image_attrs(), image_names(), image_setgid()];
    let images = [
        ("conformance/attrs", build(&tars[0])),
        ("conformance/names", build(&tars[1])),
        ("conformance/setgid", build(&tars[2])),
    ];
    let mut refs = Vec::new();
    for (repo, image) in &images {
        push_image(&addr, repo, "v1", image, None);
        refs.push(format!("{addr}/{repo}:v1"));
    }

    // containerd's trees.
    let containerd = TestContainerd::start(
        &scratch.path().join("containerd"),
        &ContainerdOptions {
            registry: addr.clone(),
            sandbox_image: format!("{addr}/pause:v1"),
            proxy_snapshotter: None,
        },
    );
    let cri = containerd.cri();
    let mut expected = Vec::new();
    for (i, ((repo, image), r)) in images.iter().zip(&refs).enumerate() {
        cri.pull_image(r);
        let top = image.chain_ids().last().unwrap().clone();
        let view = mount_containerd_view(
            &containerd,
            &format!("conformance-view-{i}"),
            &top,
            &scratch.path().join(format!("ctr-merged-{i}")),
        );
        expected.push((repo, walk(&view.path)));
    }
    containerd_gave_setgid_groups(&expected[2].1);

    // imagecache's trees.
    let root = scratch.path().join("state");
    let daemon = TestDaemon::start(&root, &[&addr]);
    let out = daemon.create(
        &cache_yaml("conformance", &refs, "  imageCacheSize: 20\n"),
        true,
    );
    assert!(
        out.status.success(),
        "create --wait: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let cache = daemon.wait_until("conformance", Duration::from_secs(120), |c| {
        c["status"]["phase"] == "Ready"
    });
    let digest = cache["status"]["snapshotDigest"]
        .as_str()
        .unwrap()
        .to_owned();
    let look = scratch.path().join("look");
    let frozen = mount_snapshot(&root, &digest, &look);
    let mut failures = Vec::new();
    for (i, ((repo, image), (_, want))) in images.iter().zip(&expected).enumerate() {
        let merged = mount_chain(
            &look,
            &image.chain_ids(),
            &scratch.path().join(format!("ic-merged-{i}")),
        );
        let got = walk(&merged.path);
        let d = diff(want, &got);
        eprintln!(
            "{repo}: {} paths from containerd, {} differences",
            want.len(),
            d.len()
        );
        if !d.is_empty() {
            failures.push(format!("{repo}:\n  {}", d.join("\n  ")));
        }
        drop(merged);
        // The layer directories themselves: overlayfs hides its own trusted.overlay.*
        // xattrs from the merged view, so they are checked where they are stored.
        for (layer, (chain, tar)) in image.chain_ids().iter().zip(&tars[i]).enumerate() {
            let d = admin_xattrs_departures(&look.join("snapshots").join(chain).join("fs"), tar);
            if !d.is_empty() {
                failures.push(format!("{repo} layer {layer}:\n  {}", d.join("\n  ")));
            }
        }
    }
    frozen.unmount_and_detach().unwrap();
    drop(daemon);
    drop(cri);
    drop(containerd);
    // Before the scratch goes: its drop unmounts and detaches whatever is left on it, which
    // would hide a leak from a check made afterwards.
    scratch.assert_nothing_left();
    drop(scratch);
    assert!(
        failures.is_empty(),
        "imagecache's layers differ from containerd's unpack (expected = containerd):\n{}",
        failures.join("\n")
    );
}

/// What containerd's own tree of `image_setgid` shows (so the comparison is not between two
/// trees that both ignore the case): a directory made in a setgid one has its group, not its
/// setgid bit, and the group stops one level down.
fn containerd_gave_setgid_groups(tree: &BTreeMap<String, Node>) {
    let attrs = |p: &str| {
        let n = tree
            .get(p)
            .unwrap_or_else(|| panic!("containerd has no {p}"));
        (n.mode, n.uid, n.gid)
    };
    assert_eq!(attrs("g/s"), (0o2775, 0, 50));
    assert_eq!(attrs("g/s/one"), (0o755, 0, 50));
    assert_eq!(attrs("g/s/one/sub"), (0o755, 0, 0));
    assert_eq!(attrs("g/s/two"), (0o755, 0, 50));
    assert_eq!(attrs("g/s/two/levels"), (0o755, 0, 0));
    assert_eq!(attrs("g/later"), (0o755, 0, 0));
    assert_eq!(attrs("g/later/sub"), (0o755, 0, 80));
    assert_eq!(attrs("h/i"), (0o755, 0, 60));
    assert_eq!(attrs("h/i/j"), (0o755, 0, 0));
}

/// The trees compared above are not trivially equal: containerd really applied the features.
#[test]
fn the_tar_writer_produces_what_it_claims() {
    let layers = image_names();
    let tar = layers[0].to_layer().decompressed();
    let mut a = tar::Archive::new(&tar[..]);
    let mut seen = BTreeSet::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        if path.starts_with("rec/bigid") {
            assert!(
                e.header().uid().unwrap() > MAX_OCTAL_ID || e.pax_extensions().unwrap().is_some()
            );
        }
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
        seen.insert(path);
    }
    assert!(seen.iter().any(|p| p.len() > 150), "{seen:?}");
    assert!(seen.contains("rec/frac"), "{seen:?}");
}
