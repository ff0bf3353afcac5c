//! Directories a layer writes into without listing them (`a/b` with no entry for `a`, as ko,
//! jib, crane and Bazel write layers).
//!
//! containerd 1.6 applies a layer into the overlay snapshot's upper directory with the
//! lower directories at hand (`archive.WithParents`): a missing parent is made 0755 and,
//! if a lower layer has that path, given that directory's owner, mode and xattrs (trusted.*
//! excepted). It looks at the lowers topmost first, resolving symlinks inside each one on
//! its own (continuity's `RootPath`): the first that has the path decides; one where it is
//! missing is skipped; one where it is not a directory (a whiteout device, a file) ends the
//! search with 0755 root:root. Opaque directories in between are not consulted. The upper
//! copy wins in the overlay, so `/tmp` stays 1777 and a 0700 home stays private.
//!
//! Here every layer of a cache unpacks in parallel into its own directory, so the lower
//! layers may not exist yet while a layer unpacks. The unpacker records the directories it
//! made this way ([`ImplicitDir`]); once every layer is unpacked, this pass runs layer by
//! layer from the bottom of each chain up (a lower layer's own implicit directories are
//! final before a layer above looks at them) and touches only those directories.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::error::{entry_io, entry_name};
use super::UnpackError;
use crate::sys::fsops;

/// A directory made while unpacking a layer because an entry needed it as a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImplicitDir {
    /// Normalised path relative to the layer directory.
    pub path: Vec<u8>,
    /// Its inode, to recognise it again: the layer may have replaced it afterwards.
    pub inode: u64,
    /// A directory entry of the layer named it after it was made. containerd then applies
    /// that entry's header after the copied attributes, so its owner and mode win and a
    /// lower layer only adds the xattrs the entry did not set.
    pub listed: bool,
}

/// Xattrs containerd never copies up from a lower layer (nor takes from a tar): overlayfs's
/// own and other admin attributes.
const TRUSTED: &[u8] = b"trusted.";

/// Give each of `dirs`, made while unpacking the layer at `dest`, the attributes
/// containerd's overlayfs unpack gives it. `lowers` are the layer directories below,
/// topmost first, each already final (its own implicit directories done). Returns how many
/// directories took a lower layer's attributes.
pub fn inherit_implicit_dirs(
    dest: &Path,
    lowers: &[PathBuf],
    dirs: &[ImplicitDir],
) -> Result<usize, UnpackError> {
    if dirs.is_empty() || lowers.is_empty() {
        return Ok(0);
    }
    let open = |path: &Path| {
        fsops::open_root(path).map_err(|source| UnpackError::Dest {
            path: path.to_owned(),
            source,
        })
    };
    let root = open(dest)?;
    let lower_fds = lowers
        .iter()
        .map(|l| open(l))
        .collect::<Result<Vec<OwnedFd>, _>>()?;
    let mut inherited = 0;
    for dir in dirs {
        let Some(fd) = still_there(root.as_fd(), dir)? else {
            continue;
        };
        let Some(source) = lower_dir(&lower_fds, &dir.path)? else {
            continue;
        };
        copy_attributes(source.as_fd(), fd.as_fd(), dir)
            .map_err(|(action, e)| entry_io(&dir.path, action, e))?;
        inherited += 1;
    }
    Ok(inherited)
}

/// The directory the unpacker made, if the layer did not replace or remove it later.
fn still_there(root: BorrowedFd<'_>, dir: &ImplicitDir) -> Result<Option<OwnedFd>, UnpackError> {
    match fsops::open_dir_beneath(root, &dir.path) {
        Ok(fd) => match fsops::inode(fd.as_fd()) {
            Ok(inode) if inode == dir.inode => Ok(Some(fd)),
            Ok(_) => Ok(None),
            Err(e) => Err(entry_io(&dir.path, "stat it", e)),
        },
        // Gone, or its path now leads through something else: not the directory made.
        Err(Errno::NOENT | Errno::NOTDIR | Errno::XDEV | Errno::LOOP) => Ok(None),
        Err(e) => Err(entry_io(&dir.path, "open it", e)),
    }
}

/// The topmost lower layer's directory at `path`, as containerd's search finds it.
fn lower_dir(lowers: &[OwnedFd], path: &[u8]) -> Result<Option<OwnedFd>, UnpackError> {
    for lower in lowers {
        match fsops::open_dir_in_root(lower.as_fd(), path) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) => continue,
            // Something other than a directory: a whiteout, a file, a symlink to one. A
            // non-directory in the middle of the path (ENOTDIR) makes containerd 1.6 fail
            // the whole layer; keeping 0755 root:root is the outcome of every other case
            // where the path stops being a directory.
            Err(Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => return Ok(None),
            Err(e) => {
                return Err(UnpackError::Entry {
                    entry: entry_name(path),
                    action: "look it up in a lower layer",
                    source: e.into(),
                })
            }
        }
    }
    Ok(None)
}

type Failed = (&'static str, io::Error);

/// Owner then mode (chown may clear setgid), then the xattrs the directory does not have.
fn copy_attributes(
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    dir: &ImplicitDir,
) -> Result<(), Failed> {
    let failed = |action: &'static str| move |e: Errno| (action, io::Error::from(e));
    if !dir.listed {
        let (mode, uid, gid) =
            fsops::owner_and_mode(source).map_err(failed("stat its lower-layer directory"))?;
        fsops::fchown(target, uid, gid).map_err(failed("chown it"))?;
        fsops::fchmod(target, mode).map_err(failed("chmod it"))?;
    }
    let names = match fsops::flistxattr(source) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(failed("list its lower-layer directory's xattrs")(e)),
    };
    for name in names.iter().filter(|n| !n.starts_with(TRUSTED)) {
        let value = match fsops::fgetxattr(source, name) {
            Ok(Some(value)) => value,
            Ok(None) | Err(Errno::NOTSUP) => continue,
            Err(e) => return Err(failed("read its lower-layer directory's xattrs")(e)),
        };
        match fsops::fsetxattr_create(target, name, &value) {
            // Already set: by the layer's own entry for it, whose value wins.
            Ok(_) => {}
            Err(Errno::NOTSUP | Errno::PERM) => {
                tracing::warn!(
                    dir = %entry_name(&dir.path),
                    xattr = %entry_name(name),
                    "skipping an xattr this filesystem refuses"
                );
            }
            Err(e) => return Err(failed("set its xattrs")(e)),
        }
    }
    Ok(())
}
