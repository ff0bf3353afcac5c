//! Reads a real directory tree (an overlay mount, an unpacked layer) into the same shape as
//! the generator's expectations, and lists the differences readably.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest, Sha256};

pub use super::gen::model::{ExpectedEntry, Kind, Tree};

/// Extended attributes that are the filesystem's business, not the image's: overlayfs's own
/// markers and the LSM label the host may add.
fn ignored_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name == "security.selinux"
}

/// Everything below `root` (not `root` itself), keyed by relative path. Never follows
/// symlinks.
pub fn walk(root: &Path) -> Tree {
    let mut tree = Tree::new();
    walk_into(root, "", &mut tree).unwrap_or_else(|e| panic!("walk {}: {e}", root.display()));
    tree
}

fn walk_into(dir: &Path, prefix: &str, tree: &mut Tree) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let name = name
            .into_string()
            .map_err(|n| io::Error::other(format!("non-UTF-8 name {n:?}")))?;
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = dir.join(&name);
        let entry = read_entry(&path)?;
        let is_dir = entry.kind == Kind::Dir;
        tree.insert(rel.clone(), entry);
        if is_dir {
            walk_into(&path, &rel, tree)?;
        }
    }
    Ok(())
}

/// One path, as `walk` records it.
pub fn read_entry(path: &Path) -> io::Result<ExpectedEntry> {
    let md = fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::Char
    } else if ft.is_block_device() {
        Kind::Block
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        return Err(io::Error::other(format!(
            "{}: socket or unknown type",
            path.display()
        )));
    };
    let (size, sha256) = if kind == Kind::File {
        (md.size(), Some(hash_file(path)?))
    } else {
        (0, None)
    };
    let link_target = if kind == Kind::Symlink {
        Some(
            fs::read_link(path)?
                .into_os_string()
                .into_string()
                .map_err(|_| io::Error::other("non-UTF-8 symlink target"))?,
        )
    } else {
        None
    };
    let rdev = matches!(kind, Kind::Char | Kind::Block)
        .then(|| (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())));
    Ok(ExpectedEntry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size,
        sha256,
        link_target,
        rdev,
        xattrs: read_xattrs(path)?,
        mtime: md.mtime(),
    })
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn read_xattrs(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        // Filesystems without xattr support simply have none.
        Err(rustix::io::Errno::OPNOTSUPP) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    let mut list = vec![0u8; len];
    let n = rustix::fs::llistxattr(path, &mut list[..])?;
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if ignored_xattr(&name) {
            continue;
        }
        let vlen = rustix::fs::lgetxattr_query(path, name.as_str())?;
        let mut value = vec![0u8; vlen];
        let vn = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..])?;
        value.truncate(vn);
        out.insert(name, value);
    }
    Ok(out)
}

/// Readable xattr value: text when it is printable, hex otherwise.
fn show(v: &[u8]) -> String {
    if v.iter().all(|b| (0x20..0x7f).contains(b)) {
        format!("{:?}", String::from_utf8_lossy(v))
    } else {
        format!("0x{}", hex::encode(v))
    }
}

/// Every difference between `expected` and `actual`, one readable line each; empty when
/// they match. mtimes are compared (to the second) for regular files only.
pub fn diff(expected: &Tree, actual: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, e) in expected {
        let Some(a) = actual.get(path) else {
            out.push(format!("{path}: missing (expected {:?})", e.kind));
            continue;
        };
        if e.kind != a.kind {
            out.push(format!("{path}: kind {:?}, expected {:?}", a.kind, e.kind));
            continue;
        }
        if e.mode != a.mode {
            out.push(format!(
                "{path}: mode {:04o}, expected {:04o}",
                a.mode, e.mode
            ));
        }
        if (e.uid, e.gid) != (a.uid, a.gid) {
            out.push(format!(
                "{path}: owner {}:{}, expected {}:{}",
                a.uid, a.gid, e.uid, e.gid
            ));
        }
        if e.kind == Kind::File {
            if e.size != a.size {
                out.push(format!("{path}: size {}, expected {}", a.size, e.size));
            } else if e.sha256 != a.sha256 {
                out.push(format!("{path}: content differs (same size {})", a.size));
            }
            if e.mtime != a.mtime {
                out.push(format!("{path}: mtime {}, expected {}", a.mtime, e.mtime));
            }
        }
        if e.link_target != a.link_target {
            out.push(format!(
                "{path}: symlink target {:?}, expected {:?}",
                a.link_target, e.link_target
            ));
        }
        if e.rdev != a.rdev {
            out.push(format!(
                "{path}: device {:?}, expected {:?}",
                a.rdev, e.rdev
            ));
        }
        for (k, v) in &e.xattrs {
            match a.xattrs.get(k) {
                None => out.push(format!("{path}: xattr {k} missing (expected {})", show(v))),
                Some(av) if av != v => out.push(format!(
                    "{path}: xattr {k} = {}, expected {}",
                    show(av),
                    show(v)
                )),
                _ => {}
            }
        }
        for (k, v) in &a.xattrs {
            if !e.xattrs.contains_key(k) {
                out.push(format!("{path}: unexpected xattr {k} = {}", show(v)));
            }
        }
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            out.push(format!("{path}: unexpected {:?}", a.kind));
        }
    }
    out
}

/// Panics listing every difference, with `context` (e.g. the image name) first.
pub fn assert_tree_eq(context: &str, expected: &Tree, actual: &Tree) {
    let d = diff(expected, actual);
    if !d.is_empty() {
        let shown: Vec<_> = d.iter().take(200).cloned().collect();
        panic!(
            "{context}: {} difference(s) from the expected tree:\n  {}{}",
            d.len(),
            shown.join("\n  "),
            if d.len() > 200 { "\n  ..." } else { "" }
        );
    }
}
