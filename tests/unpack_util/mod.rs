//! Building layer tars in memory and inspecting what `apply_layer` made of them.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use imagecache::unpack::{apply_layer, Compression, LayerStats, UnpackError};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

pub const MTIME: u64 = 1_600_000_000;

/// A layer tar under construction. Headers are GNU so long names use GNU longname records;
/// PAX records and hostile names are written by hand (tar::Builder refuses both).
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

fn header(kind: EntryType, mode: u32, uid: u64, gid: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, 0o644, 0, 0, MTIME)
    }

    pub fn file_with(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = header(EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(path, 0o755, 0, 0, MTIME)
    }

    pub fn dir_with(&mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> &mut Self {
        let mut h = header(EntryType::Directory, mode, uid, gid);
        h.set_mtime(mtime);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.symlink_with(path, target, 0, 0, MTIME)
    }

    pub fn symlink_with(
        &mut self,
        path: &str,
        target: &str,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = header(EntryType::Symlink, 0o777, uid, gid);
        h.set_mtime(mtime);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.hardlink_with(path, target, 0o644, 0, 0, MTIME)
    }

    /// A hard link whose own header carries `mode`, owner and `mtime` (which the unpacker
    /// applies to the inode it shares with `target`).
    pub fn hardlink_with(
        &mut self,
        path: &str,
        target: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> &mut Self {
        let mut h = header(EntryType::Link, mode, uid, gid);
        h.set_mtime(mtime);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn node(
        &mut self,
        path: &str,
        kind: EntryType,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let mut h = header(kind, mode, 0, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// A PAX extended header applying to the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "LEN key=value\n", where LEN counts its own digits.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_path("PaxHeaders/x").unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, &data[..]).unwrap();
        self
    }

    /// An entry with a name and link name written verbatim into the header, however hostile.
    pub fn raw(&mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = header(kind, 0o644, 0, 0);
        h.set_size(data.len() as u64);
        {
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    /// The finished uncompressed tar.
    pub fn tar(&mut self) -> Vec<u8> {
        self.b.finish().unwrap();
        std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

pub fn diff_id(tar: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(tar)))
}

pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

/// Apply `tar` (compressed with `c`) into `dest`, verifying against its true diffID.
pub fn apply(tar: &[u8], c: Compression, dest: &Path) -> Result<LayerStats, UnpackError> {
    let blob = compress(tar, c);
    apply_layer(&blob[..], c, dest, &diff_id(tar))
}

pub fn lstat(p: impl AsRef<Path>) -> fs::Metadata {
    fs::symlink_metadata(p.as_ref())
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.as_ref().display()))
}

pub fn kind(p: impl AsRef<Path>) -> u32 {
    lstat(p).mode() & 0o170000
}

pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;

pub fn perm(p: impl AsRef<Path>) -> u32 {
    lstat(p).mode() & 0o7777
}

/// An xattr of the node itself (not following a symlink), if set.
pub fn xattr(p: impl AsRef<Path>, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::lgetxattr(p.as_ref(), name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Some(buf)
        }
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("lgetxattr {} {name}: {e}", p.as_ref().display()),
    }
}

/// Every path below `dir` with its type, size and mode, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> Vec<(String, u32, u64, u64)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u32, u64, u64)>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = lstat(&p);
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            out.push((rel, m.mode(), m.size(), m.nlink()));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}
