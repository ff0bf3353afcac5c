//! OCI whiteouts, stored the way overlayfs (and containerd's overlayfs snapshotter) reads them.
//!
//! In the tar, `.wh.<name>` deletes `<name>` from lower layers and `.wh..wh..opq` hides
//! everything below its directory. overlayfs instead wants a 0/0 character device named
//! `<name>`, and `trusted.overlay.opaque=y` on the directory.

use std::os::fd::BorrowedFd;

use rustix::io::Errno;

use crate::sys::fsops::{self, NodeKind};

const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// aufs keeps its own bookkeeping under `.wh..wh.` (`.wh..wh.plnk`, `.wh..wh.aufs`);
/// those are not deletions and have no overlayfs meaning.
const AUFS_META: &[u8] = b".wh..wh.";

pub(crate) const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

pub(crate) const NAMES_NOTHING: &str =
    "is a whiteout that names no file inside its directory (`.wh.`, `.wh..` or `.wh...`)";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    No,
    /// Mark the parent directory opaque.
    Opaque,
    /// Delete `name` in the parent directory.
    Delete(&'a [u8]),
    /// aufs metadata, skipped.
    AufsMeta,
}

/// What a final path component means as a whiteout.
pub(crate) fn classify(name: &[u8]) -> Result<Whiteout<'_>, &'static str> {
    if !name.starts_with(PREFIX) {
        return Ok(Whiteout::No);
    }
    if name == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    if name.starts_with(AUFS_META) {
        return Ok(Whiteout::AufsMeta);
    }
    match &name[PREFIX.len()..] {
        b"" | b"." | b".." => Err(NAMES_NOTHING),
        target => Ok(Whiteout::Delete(target)),
    }
}

pub(crate) fn mark_opaque(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    fsops::fsetxattr(dir, OPAQUE_XATTR, b"y")
}

/// Make the 0/0 character device that hides `name`, owned as the tar entry says. Returns
/// whether something already there had to be removed first.
pub(crate) fn delete(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> Result<bool, Errno> {
    let mknod = || fsops::mknod(dir, name, NodeKind::Char, 0, 0);
    let removed = match mknod() {
        Ok(()) => false,
        // The same layer created `name` and then deleted it: the whiteout wins.
        Err(Errno::EXIST) => {
            match fsops::existing(dir, name)? {
                fsops::Existing::Dir => fsops::remove_tree(dir, name)?,
                fsops::Existing::Other => fsops::unlink(dir, name)?,
            }
            mknod()?;
            true
        }
        Err(e) => return Err(e),
    };
    fsops::chown_nofollow(dir, name, uid, gid)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(b"file"), Ok(Whiteout::No));
        assert_eq!(classify(b".wh..wh..opq"), Ok(Whiteout::Opaque));
        assert_eq!(classify(b".wh..wh.plnk"), Ok(Whiteout::AufsMeta));
        assert_eq!(classify(b".wh.foo"), Ok(Whiteout::Delete(b"foo")));
        assert_eq!(classify(b".wh.."), Err(NAMES_NOTHING));
        assert_eq!(classify(b".wh."), Err(NAMES_NOTHING));
        assert_eq!(classify(b".whfoo"), Ok(Whiteout::No));
    }
}
