//! The generator's own model of layers (tar entries) and of the merged tree an overlay mount
//! of a layer chain shows. Expected trees are computed here from the entries, never from
//! the output of the code under test.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::super::oci::{Compression, Layer, LayerWriter};
use super::tarw::TarWriter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// One path of a merged tree as a comparison sees it. Hardlinks are plain files with their
/// target's content and attributes (they share its inode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedEntry {
    pub kind: Kind,
    /// Permission bits plus setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Files only; 0 for everything else.
    pub size: u64,
    /// Hex sha256 of a file's content; `None` for everything else.
    pub sha256: Option<String>,
    pub link_target: Option<String>,
    /// (major, minor) of char and block devices.
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Seconds since the epoch. Compared by `tree::diff` for files only: directory mtimes
    /// move whenever a child is created, and symlink mtimes are rarely preserved.
    pub mtime: i64,
}

/// Relative path ("usr/bin/sh", no leading "/" or "./", no trailing "/") to entry. The root
/// directory itself is not in the tree.
pub type Tree = BTreeMap<String, ExpectedEntry>;

/// How an entry's long path or link target is encoded in the tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameStyle {
    /// What Go's archive/tar (so docker/buildkit) does: the plain 100-byte field when it
    /// fits, else a ustar prefix/name split, else a PAX `path`/`linkpath` record.
    Auto,
    /// Force a PAX extended header for the path and link target.
    Pax,
    /// GNU `././@LongLink` entries ('L' for the path, 'K' for the link target).
    Gnu,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Target path as written in the tar (relative to the layer root).
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
    /// Deletes `path` from lower layers: written as `<parent>/.wh.<name>`.
    Whiteout,
    /// Hides everything lower layers have below the directory `path`: written as
    /// `<path>/.wh..wh..opq`.
    Opaque,
}

/// One tar entry. `path` is written verbatim (a "./" prefix is kept, a trailing "/" is added
/// for directories), so malicious names like "../evil" pass through untouched.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: String,
    pub body: Body,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.<name>` records, in this order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub names: NameStyle,
}

/// A mid-2023 timestamp: plausible, and far from the epoch so 0 stays a distinct case.
pub const DEFAULT_MTIME: u64 = 1_690_000_000;

impl TarEntry {
    pub fn new(path: &str, body: Body) -> TarEntry {
        let mode = match body {
            Body::Dir => 0o755,
            Body::Symlink(_) => 0o777,
            Body::Char(..) | Body::Block(..) => 0o660,
            Body::Fifo => 0o644,
            _ => 0o644,
        };
        TarEntry {
            path: path.to_string(),
            body,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
            names: NameStyle::Auto,
        }
    }

    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    pub fn owner(&mut self, uid: u32, gid: u32) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    pub fn xattr(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }

    pub fn names(&mut self, style: NameStyle) -> &mut Self {
        self.names = style;
        self
    }

    /// The name as it appears in the tar.
    pub fn tar_name(&self) -> String {
        match &self.body {
            Body::Dir if !self.path.ends_with('/') => format!("{}/", self.path),
            Body::Whiteout => match self.path.rsplit_once('/') {
                Some((parent, name)) => format!("{parent}/.wh.{name}"),
                None => format!(".wh.{}", self.path),
            },
            Body::Opaque => format!("{}/.wh..wh..opq", self.path.trim_end_matches('/')),
            _ => self.path.clone(),
        }
    }
}

/// A layer as a list of tar entries plus how its blob is compressed.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub entries: Vec<TarEntry>,
    pub compression: Compression,
}

impl LayerSpec {
    pub fn new(compression: Compression) -> LayerSpec {
        LayerSpec {
            entries: Vec::new(),
            compression,
        }
    }

    pub fn push(&mut self, path: &str, body: Body) -> &mut TarEntry {
        self.entries.push(TarEntry::new(path, body));
        self.entries.last_mut().unwrap()
    }

    pub fn dir(&mut self, path: &str) -> &mut TarEntry {
        self.push(path, Body::Dir)
    }

    pub fn file(&mut self, path: &str, content: impl Into<Vec<u8>>) -> &mut TarEntry {
        self.push(path, Body::File(content.into()))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut TarEntry {
        self.push(path, Body::Symlink(target.to_string()))
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut TarEntry {
        self.push(path, Body::Hardlink(target.to_string()))
    }

    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut TarEntry {
        self.push(path, Body::Char(major, minor))
    }

    pub fn block_dev(&mut self, path: &str, major: u32, minor: u32) -> &mut TarEntry {
        self.push(path, Body::Block(major, minor))
    }

    pub fn fifo(&mut self, path: &str) -> &mut TarEntry {
        self.push(path, Body::Fifo)
    }

    pub fn whiteout(&mut self, path: &str) -> &mut TarEntry {
        self.push(path, Body::Whiteout)
    }

    pub fn opaque(&mut self, dir: &str) -> &mut TarEntry {
        self.push(dir, Body::Opaque)
    }

    /// The uncompressed tar.
    pub fn tar(&self) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new());
        for e in &self.entries {
            w.entry(e).unwrap();
        }
        w.finish().unwrap()
    }

    /// The layer blob, compressed as specified. gzip at level 1: these layers test
    /// features, not ratios, and debug builds of the compressor are slow.
    pub fn to_layer(&self) -> Layer {
        let mut w = TarWriter::new(LayerWriter::with_level(self.compression, Some(1)));
        for e in &self.entries {
            w.entry(e).unwrap();
        }
        w.finish().unwrap().finish()
    }
}

/// Key of a tar path in a `Tree`.
pub fn normalize(path: &str) -> String {
    let p = path.strip_prefix("./").unwrap_or(path);
    p.trim_start_matches('/').trim_end_matches('/').to_string()
}

fn remove_subtree(tree: &mut Tree, key: &str, keep_root: bool) {
    if !keep_root {
        tree.remove(key);
    }
    // '0' sorts right after '/', so this range is exactly the paths below `key`.
    let below: Vec<String> = tree
        .range(format!("{key}/")..format!("{key}0"))
        .map(|(k, _)| k.clone())
        .collect();
    for k in below {
        tree.remove(&k);
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Applies one layer to the merged tree of the layers below it, as an overlay mount of the
/// layer's own directory over the lower ones shows it.
///
/// Whiteouts and opaque markers act on the lower layers only, wherever they sit in the tar,
/// so they are applied first; then entries are added in tar order. An entry replaces a
/// lower entry of the same path, dropping its subtree, unless both are directories: then
/// the directories merge and the upper one's attributes win.
///
/// Panics on a generator bug (missing parent directory, hardlink to nothing), because a
/// wrong expectation would make every comparison meaningless.
pub fn apply_layer(tree: &mut Tree, entries: &[TarEntry]) {
    for e in entries {
        match e.body {
            Body::Whiteout => remove_subtree(tree, &normalize(&e.path), false),
            Body::Opaque => remove_subtree(tree, &normalize(&e.path), true),
            _ => {}
        }
    }
    for e in entries {
        let key = normalize(&e.path);
        if key.is_empty() {
            // A "./" entry describes the layer root, which the tree does not track.
            continue;
        }
        // containerd 1.6 sets no `trusted.*` xattr from a layer tar.
        let xattrs: BTreeMap<String, Vec<u8>> = e
            .xattrs
            .iter()
            .filter(|(name, _)| !name.starts_with("trusted."))
            .cloned()
            .collect();
        let base = |kind| ExpectedEntry {
            kind,
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            size: 0,
            sha256: None,
            link_target: None,
            rdev: None,
            xattrs: xattrs.clone(),
            mtime: e.mtime as i64,
        };
        let new = match &e.body {
            Body::Whiteout => continue,
            Body::Opaque => {
                assert!(
                    tree.get(&key).is_some_and(|d| d.kind == Kind::Dir),
                    "generator bug: opaque marker in {key}, which is not a directory"
                );
                continue;
            }
            Body::Dir => base(Kind::Dir),
            Body::File(data) => ExpectedEntry {
                size: data.len() as u64,
                sha256: Some(sha256_hex(data)),
                ..base(Kind::File)
            },
            Body::Symlink(t) => ExpectedEntry {
                link_target: Some(t.clone()),
                ..base(Kind::Symlink)
            },
            Body::Char(ma, mi) => ExpectedEntry {
                rdev: Some((*ma, *mi)),
                ..base(Kind::Char)
            },
            Body::Block(ma, mi) => ExpectedEntry {
                rdev: Some((*ma, *mi)),
                ..base(Kind::Block)
            },
            Body::Fifo => base(Kind::Fifo),
            Body::Hardlink(t) => {
                let target_key = normalize(t);
                let target = tree.get_mut(&target_key).unwrap_or_else(|| {
                    panic!("generator bug: hardlink {key} -> {t}, which does not exist")
                });
                assert_eq!(
                    target.kind,
                    Kind::File,
                    "generator bug: hardlink to non-file"
                );
                // containerd applies the link entry's own header to the inode it shares
                // with its target: owner, mode and times replace the target's, its xattrs
                // are set over the target's.
                target.mode = e.mode & 0o7777;
                target.uid = e.uid;
                target.gid = e.gid;
                target.mtime = e.mtime as i64;
                target.xattrs.extend(xattrs.clone());
                target.clone()
            }
        };
        if let Some((parent, _)) = key.rsplit_once('/') {
            assert!(
                tree.get(parent).is_some_and(|p| p.kind == Kind::Dir),
                "generator bug: {key} added before its parent directory"
            );
        }
        match tree.get_mut(&key) {
            Some(old) if old.kind == Kind::Dir && new.kind == Kind::Dir => *old = new,
            Some(_) => {
                remove_subtree(tree, &key, false);
                tree.insert(key, new);
            }
            None => {
                tree.insert(key, new);
            }
        }
        // A hardlink shares its target's inode: later metadata of either is the other's.
        // Only the target and the new link are updated here, so the feature set never
        // links one file twice or changes a linked file afterwards in the same layer.
    }
}

/// The merged tree of a chain of layers, bottom first.
pub fn expected_tree(layers: &[LayerSpec]) -> Tree {
    let mut tree = Tree::new();
    for l in layers {
        apply_layer(&mut tree, &l.entries);
    }
    tree
}
