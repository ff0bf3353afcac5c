//! OCI layer application: one layer's tar stream into its own directory, in the form
//! containerd's overlayfs snapshotter stores it (whiteouts as 0/0 character devices, opaque
//! directories as `trusted.overlay.opaque=y`), so the overlay of a chain of these
//! directories is the image's root filesystem.
//!
//! - `decompress`: gzip/zstd/plain by magic, and the diffID hash of the tar stream.
//! - `safety`: entry-name normalisation and parent lookups confined beneath the layer dir.
//! - `entry`: creating each node and applying its metadata.
//! - `archive`: the tar stream entry by entry, with PAX, GNU long-name and sparse headers
//!   resolved into the entries they describe.
//! - `pax`: PAX extended header records, split by their length prefix.
//! - `meta`: an entry's ownership, mode, times and xattrs from its header and PAX fields.
//! - `whiteout`: OCI whiteouts to overlayfs form.
//! - `space`: the fail-fast free-space check and the no-space report.
//! - `implicit`: directories a layer writes into without listing them, given the lower
//!   layers' attributes after all layers are unpacked (they unpack in parallel).

mod archive;
mod decompress;
mod entry;
mod error;
mod implicit;
mod meta;
mod pax;
mod safety;
mod space;
mod whiteout;

use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

pub use decompress::Compression;
pub use error::UnpackError;
pub use implicit::{inherit_implicit_dirs, ImplicitDir};

use archive::{ReadError, TarReader};
use decompress::HashingReader;
use entry::{Created, Failure};
use error::{entry_io, entry_name, unsafe_entry};
use meta::{Meta, MetaError};
use safety::Parents;
use space::Space;
use whiteout::Whiteout;

use crate::sys::fsops::{self, NodeKind, Time};

/// What applying one layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries applied (whiteouts included; PAX global headers not).
    pub entries: u64,
    /// Total apparent size of the layer's regular files.
    pub file_bytes: u64,
    /// Length of the uncompressed tar stream.
    pub uncompressed_bytes: u64,
    /// `sha256:<hex>` of the uncompressed tar stream: the layer's verified diffID.
    pub diff_id: String,
    /// Directories the layer wrote into without listing them. They are made 0755
    /// root:root; [`inherit_implicit_dirs`] gives them a lower layer's attributes once the
    /// lower layers are unpacked.
    pub implicit_dirs: Vec<ImplicitDir>,
}

/// Decompress and apply one layer into `dest` (a fresh empty directory).
///
/// The compression is taken from the stream's magic bytes, `compression` only being what
/// the media type claimed. The whole uncompressed stream is read to EOF and its sha256 must
/// equal `expected_diff_id`. Nothing is ever written outside `dest`. Nothing is fsynced:
/// the caller syncs the whole filesystem once. On any error the caller removes `dest`.
pub fn apply_layer<R: Read>(
    compressed: R,
    compression: Compression,
    dest: &Path,
    expected_diff_id: &str,
) -> Result<LayerStats, UnpackError> {
    let expected = decompress::parse_diff_id(expected_diff_id)
        .ok_or_else(|| UnpackError::BadDiffId(expected_diff_id.to_owned()))?;
    let root = fsops::open_root(dest).map_err(|source| UnpackError::Dest {
        path: dest.to_owned(),
        source,
    })?;
    let decoder = decompress::decoder(compressed, compression).map_err(stream_error)?;
    let mut hashed = HashingReader::new(decoder);

    let mut applier = Applier::new(root);
    // Tar reads headers 512 bytes at a time; the buffer turns that into large decoder reads,
    // while file data reads of TAR_BUF or more bypass it.
    let mut archive = TarReader::new(BufReader::with_capacity(TAR_BUF, &mut hashed));
    applier.apply_all(&mut archive)?;
    // The diffID covers everything up to EOF, including the end-of-archive blocks and any
    // record padding after them, which the tar reader never reads.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(stream_error)?;
    let (uncompressed_bytes, diff_id) = hashed.finish();
    if diff_id != expected {
        return Err(UnpackError::DiffIdMismatch {
            expected,
            actual: diff_id,
        });
    }
    applier.finish()?;
    Ok(LayerStats {
        entries: applier.entries,
        file_bytes: applier.file_bytes,
        uncompressed_bytes,
        diff_id,
        implicit_dirs: applier.parents.take_made(),
    })
}

const TAR_BUF: usize = 256 * 1024;
/// File data goes from the decoder straight into this buffer and from it into the file.
const COPY_BUF: usize = 1024 * 1024;

fn stream_error(source: io::Error) -> UnpackError {
    UnpackError::Stream { source }
}

/// A directory whose times wait until all of its children exist.
struct DirTimes {
    path: Vec<u8>,
    inode: u64,
    atime: Time,
    mtime: Time,
}

struct Applier {
    root: OwnedFd,
    entry: archive::Entry,
    parents: Parents,
    space: Space,
    meta: Meta,
    /// The entry's name as in the tar, for messages.
    raw: Vec<u8>,
    /// Normalised entry path and hard-link target.
    path: Vec<u8>,
    link: Vec<u8>,
    buf: Vec<u8>,
    dir_times: Vec<DirTimes>,
    entries: u64,
    file_bytes: u64,
}

/// How an entry is to be materialised, decided before any fd is borrowed.
#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Node(NodeKind),
}

impl Applier {
    fn new(root: OwnedFd) -> Self {
        Applier {
            root,
            entry: archive::Entry::default(),
            parents: Parents::new(),
            space: Space::new(),
            meta: Meta::default(),
            raw: Vec::new(),
            path: Vec::new(),
            link: Vec::new(),
            buf: vec![0; COPY_BUF],
            dir_times: Vec::new(),
            entries: 0,
            file_bytes: 0,
        }
    }

    fn apply_all<R: BufRead>(&mut self, archive: &mut TarReader<R>) -> Result<(), UnpackError> {
        loop {
            match archive.next(&mut self.entry) {
                Ok(true) => self.apply(archive)?,
                Ok(false) => return Ok(()),
                Err(ReadError::Stream(e)) => return Err(stream_error(e)),
                Err(ReadError::Malformed { entry, reason }) => {
                    return Err(UnpackError::Malformed {
                        entry: entry_name(&entry),
                        reason,
                    })
                }
            }
        }
    }

    /// Apply `self.entry`, the archive's current entry.
    fn apply<R: BufRead>(&mut self, archive: &mut TarReader<R>) -> Result<(), UnpackError> {
        let type_byte = self.entry.type_byte;
        self.raw.clear();
        self.raw.extend_from_slice(&self.entry.name);
        let kind = match type_byte {
            // A pre-POSIX regular file whose name ends in `/` is a directory (as Go reads it).
            b'\0' if self.raw.ends_with(b"/") => Kind::Dir,
            b'0' | b'\0' | b'7' | b'S' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Node(NodeKind::Char),
            b'4' => Kind::Node(NodeKind::Block),
            b'5' => Kind::Dir,
            b'6' => Kind::Node(NodeKind::Fifo),
            other => {
                return Err(UnpackError::UnsupportedType {
                    entry: entry_name(&self.raw),
                    type_byte: other,
                })
            }
        };
        self.entries += 1;
        // The file's apparent size: for a GNU sparse file more than its bytes in the stream
        // (holes are written as zeros).
        let apparent = if matches!(kind, Kind::File) {
            self.entry.apparent
        } else {
            0
        };
        self.file_bytes += apparent;

        safety::normalise(&self.raw, &mut self.path)
            .map_err(|reason| unsafe_entry(&self.raw, reason))?;
        if self.path.is_empty() {
            // The layer root itself: its directory is the snapshot's, not the layer's.
            return Ok(());
        }
        if matches!(kind, Kind::Hardlink) {
            let target = &self.entry.link;
            safety::normalise(target, &mut self.link).map_err(|_| {
                unsafe_entry(
                    &self.raw,
                    format!(
                        "hard-links to `{}` outside the layer directory",
                        entry_name(target)
                    ),
                )
            })?;
            if self.link.is_empty() {
                return Err(unsafe_entry(&self.raw, "hard-links to the layer root"));
            }
        } else if matches!(kind, Kind::Symlink) {
            // A symlink's target is data: it is stored as is, wherever it points.
            self.link.clear();
            self.link.extend_from_slice(&self.entry.link);
        }
        let (parent, name) = safety::split(&self.path);
        let whiteout = whiteout::classify(name).map_err(|r| unsafe_entry(&self.raw, r))?;

        if self.space.is_exhausted() {
            // Only measuring now; the reader skips the data on the next header read.
            return Ok(());
        }
        let device = matches!(kind, Kind::Node(NodeKind::Char | NodeKind::Block));
        match self
            .meta
            .read_from(&self.entry.header, &mut self.entry.pax, device)
        {
            Ok(()) => {}
            Err(MetaError::Io(e)) => return Err(entry_io(&self.raw, "read its header", e)),
            Err(MetaError::Invalid(r)) => return Err(unsafe_entry(&self.raw, r)),
        }
        if matches!(kind, Kind::File) && whiteout == Whiteout::No {
            let root = self.root.as_fd();
            if !self.space.fits(root, apparent) {
                self.space.exhaust(root, entry_name(&self.raw));
                return Ok(());
            }
        }

        let root = self.root.as_fd();
        let result = match self.parents.get(root, parent) {
            Err(e) => Err(match safety::refusal(e) {
                Some(reason) => Failure::Unsafe(reason),
                None => Failure::fs("open its parent directory")(e),
            }),
            Ok(dir) => match whiteout {
                Whiteout::AufsMeta => Ok(Created::default()),
                Whiteout::Opaque => whiteout::mark_opaque(dir)
                    .map(|()| Created::default())
                    .map_err(Failure::fs("mark its directory opaque")),
                Whiteout::Delete(target) => {
                    whiteout::delete(dir, target, self.meta.uid, self.meta.gid)
                        .map(|removed| Created { removed, dir: None })
                        .map_err(Failure::fs("create its whiteout device"))
                }
                Whiteout::No => match kind {
                    Kind::File => {
                        let data = &mut archive.data();
                        entry::regular_file(dir, name, data, apparent, &mut self.buf, &self.meta)
                    }
                    Kind::Dir => entry::directory(dir, name, &self.meta),
                    Kind::Symlink => entry::symlink(dir, name, &self.link, &self.meta),
                    Kind::Node(node) => entry::node(dir, name, node, &self.meta),
                    Kind::Hardlink => hardlink(root, dir, parent, name, &self.link, &self.meta),
                },
            },
        };
        match result {
            Ok(created) => {
                if created.removed {
                    self.parents.forget();
                }
                if let Some((fd, inode)) = created.dir {
                    self.parents.listed(inode);
                    self.dir_times.push(DirTimes {
                        path: self.path.clone(),
                        inode,
                        atime: self.meta.atime,
                        mtime: self.meta.mtime,
                    });
                    self.parents.remember(&self.path, fd);
                }
                Ok(())
            }
            Err(f) if f.is_no_space() => {
                self.space.exhaust(root, entry_name(&self.raw));
                Ok(())
            }
            Err(Failure::Fs { action, err }) => Err(entry_io(&self.raw, action, err)),
            Err(Failure::Stream(e)) => Err(stream_error(e)),
            Err(Failure::Unsafe(reason)) => Err(unsafe_entry(&self.raw, reason)),
        }
    }

    /// After the stream verified: report running out of space, or give directories their
    /// times, deepest first so setting a child's does not disturb its parent's.
    fn finish(&mut self) -> Result<(), UnpackError> {
        if let Some((entry, available_bytes)) = self.space.take_exhausted() {
            return Err(UnpackError::NoSpace {
                entry,
                needed_bytes: self.file_bytes,
                available_bytes,
            });
        }
        // Stable sort: for a directory listed twice, the later entry is applied last and wins.
        self.dir_times
            .sort_by_key(|d| std::cmp::Reverse(d.path.iter().filter(|&&b| b == b'/').count()));
        let root = self.root.as_fd();
        for d in &self.dir_times {
            // The path may since have been replaced (by a file, or by a symlink leading
            // elsewhere or outside); only the very directory the entry made gets its times.
            let Ok(fd) = fsops::open_dir_beneath(root, &d.path) else {
                continue;
            };
            if fsops::inode(fd.as_fd()) != Ok(d.inode) {
                continue;
            }
            fsops::futimens(fd.as_fd(), d.atime, d.mtime)
                .map_err(|e| entry_io(&d.path, "set its times", e))?;
        }
        Ok(())
    }
}

/// Resolve a hard link's target parent the same confined way as any parent, then link.
fn hardlink(
    root: std::os::fd::BorrowedFd<'_>,
    dir: std::os::fd::BorrowedFd<'_>,
    parent: &[u8],
    name: &[u8],
    target: &[u8],
    meta: &Meta,
) -> Result<Created, Failure> {
    let (target_parent, target_name) = safety::split(target);
    if target_parent == parent && target_name == name {
        // A link to itself: the file is already there.
        return Ok(Created::default());
    }
    let opened;
    let target_dir = if target_parent == parent {
        dir
    } else if target_parent.is_empty() {
        root
    } else {
        opened =
            fsops::open_dir_beneath(root, target_parent).map_err(|e| match safety::refusal(e) {
                Some(_) => Failure::Unsafe("hard-links to a target outside the layer directory"),
                None => Failure::fs("open its hard-link target's directory")(e),
            })?;
        opened.as_fd()
    };
    entry::hardlink(target_dir, target_name, dir, name, meta)
}
