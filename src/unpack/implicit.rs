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
//! A directory no lower layer has is made in the upper directory after its parent got its
//! attributes, so under a setgid parent (`c/d` 2775 root:50, then `c/d/new/file`) the
//! kernel gives it the parent's group; containerd's chmod 0755 clears the setgid bit the
//! kernel also passes down, so one level further down the group is root's again.
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
    /// The index in the same list of the directory this one was made in, when that one
    /// was itself made for a child and not listed yet. containerd had already given that
    /// parent its lower layer's attributes when it made this one, so if they are setgid,
    /// this directory takes their group, as the kernel gives it.
    pub made_in: Option<usize>,
}

/// Xattrs containerd never copies up from a lower layer (nor takes from a tar): overlayfs's
/// own and other admin attributes.
const TRUSTED: &[u8] = b"trusted.";

/// Give each of `dirs`, made while unpacking the layer at `dest`, the attributes
/// containerd's overlayfs unpack gives it. `lowers` are the layer directories below,
/// topmost first, each already final (its own implicit directories done). `dirs` are in
/// the order made, so a parent comes before the directories made in it. Returns how many
/// directories changed.
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
    // What each directory was given when containerd made it: its lower layer's (mode, gid).
    let mut given: Vec<Option<(u32, u32)>> = vec![None; dirs.len()];
    let mut changed = 0;
    for (i, dir) in dirs.iter().enumerate() {
        let Some(fd) = still_there(root.as_fd(), dir)? else {
            continue;
        };
        let failed = |(action, e): Failed| entry_io(&dir.path, action, e);
        match lower_dir(&lower_fds, &dir.path)? {
            Some(source) => {
                given[i] = Some(copy_attributes(source.as_fd(), fd.as_fd(), dir).map_err(failed)?);
                changed += 1;
            }
            None if !dir.listed => {
                let parent = dir.made_in.and_then(|p| given.get(p).copied().flatten());
                if let Some((_, gid)) = parent.filter(|(mode, _)| mode & SETGID != 0) {
                    group_from_parent(fd.as_fd(), gid).map_err(failed)?;
                    given[i] = Some((0o755, gid));
                    changed += 1;
                }
            }
            None => {}
        }
    }
    Ok(changed)
}

const SETGID: u32 = 0o2000;

/// A directory made in a setgid parent: the kernel gives it the parent's group, and
/// containerd's chmod 0755 after its mkdir clears the setgid bit the kernel passes down too.
fn group_from_parent(target: BorrowedFd<'_>, gid: u32) -> Result<(), Failed> {
    let failed = |action: &'static str| move |e: Errno| (action, io::Error::from(e));
    fsops::fchown(target, 0, gid).map_err(failed("chown it"))?;
    fsops::fchmod(target, 0o755).map_err(failed("chmod it"))
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
/// Returns the lower directory's mode and group, which the directory had when containerd
/// made children in it, even if the layer lists it later.
fn copy_attributes(
    source: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    dir: &ImplicitDir,
) -> Result<(u32, u32), Failed> {
    let failed = |action: &'static str| move |e: Errno| (action, io::Error::from(e));
    let (mode, uid, gid) =
        fsops::owner_and_mode(source).map_err(failed("stat its lower-layer directory"))?;
    if !dir.listed {
        fsops::fchown(target, uid, gid).map_err(failed("chown it"))?;
        fsops::fchmod(target, mode).map_err(failed("chmod it"))?;
    }
    let names = match fsops::flistxattr(source) {
        Ok(names) => names,
        Err(Errno::NOTSUP) => return Ok((mode, gid)),
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
    Ok((mode, gid))
}
