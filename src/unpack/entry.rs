//! Creating one entry's node beneath its parent directory fd and giving it its metadata.
//!
//! Order matters: data first, then chown (which clears setuid/setgid and file
//! capabilities), then chmod, then xattrs (so `security.capability` survives the chown),
//! then times (everything before may bump them).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::meta::Meta;
use crate::sys::fsops::{self, Existing, NodeKind};

/// How creating an entry failed; the caller turns it into an [`super::UnpackError`] naming
/// the entry, or into the no-space path.
#[derive(Debug)]
pub(crate) enum Failure {
    Fs {
        action: &'static str,
        err: io::Error,
    },
    /// Reading the entry's data from the stream failed.
    Stream(io::Error),
    Unsafe(&'static str),
}

impl Failure {
    pub(crate) fn fs(action: &'static str) -> impl FnOnce(Errno) -> Failure {
        move |e| Failure::Fs {
            action,
            err: e.into(),
        }
    }

    pub(crate) fn is_no_space(&self) -> bool {
        match self {
            Failure::Fs { err, .. } => err
                .raw_os_error()
                .is_some_and(|n| fsops::is_no_space(Errno::from_raw_os_error(n))),
            _ => false,
        }
    }
}

/// What creating an entry did that the caller must know about.
#[derive(Default)]
pub(crate) struct Created {
    /// Something was removed to make room: cached parent fds may be stale.
    pub removed: bool,
    /// A directory's fd, worth caching as the next entries' parent, and its inode.
    pub dir: Option<(OwnedFd, u64)>,
}

/// Run `make`; if the name is taken, remove what is there and run it once more. A directory
/// meeting a directory is the one case kept (tar semantics merge them): then `Ok(None)`.
fn make_replacing<T>(
    dir: BorrowedFd<'_>,
    name: &[u8],
    want_dir: bool,
    removed: &mut bool,
    mut make: impl FnMut() -> Result<T, Errno>,
) -> Result<Option<T>, Errno> {
    match make() {
        Ok(t) => return Ok(Some(t)),
        Err(Errno::EXIST) => {}
        Err(e) => return Err(e),
    }
    match fsops::existing(dir, name)? {
        Existing::Dir if want_dir => return Ok(None),
        Existing::Dir => fsops::remove_tree(dir, name)?,
        Existing::Other => fsops::unlink(dir, name)?,
    }
    *removed = true;
    make().map(Some)
}

const CREATE: &str = "create it";

fn replace_failure(e: Errno) -> Failure {
    Failure::fs(CREATE)(e)
}

pub(crate) fn regular_file<R: Read>(
    dir: BorrowedFd<'_>,
    name: &[u8],
    data: &mut R,
    size: u64,
    buf: &mut [u8],
    meta: &Meta,
) -> Result<Created, Failure> {
    let mut created = Created::default();
    let fd = make_replacing(dir, name, false, &mut created.removed, || {
        fsops::create_file(dir, name)
    })
    .map_err(replace_failure)?
    .expect("a file never merges");
    let mut file = fsops::into_file(fd);
    let mut written = 0u64;
    loop {
        let n = match data.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Stream(e)),
        };
        file.write_all(&buf[..n]).map_err(|err| Failure::Fs {
            action: "write its data",
            err,
        })?;
        written += n as u64;
    }
    if written < size {
        return Err(Failure::Stream(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file data ended after {written} of {size} bytes"),
        )));
    }
    fd_metadata(file.as_fd(), meta)?;
    fsops::futimens(file.as_fd(), meta.atime, meta.mtime).map_err(Failure::fs("set its times"))?;
    Ok(created)
}

/// A directory; an existing one is merged (only its metadata changes). Its times are the
/// caller's to set once all its children exist.
pub(crate) fn directory(dir: BorrowedFd<'_>, name: &[u8], meta: &Meta) -> Result<Created, Failure> {
    let mut created = Created::default();
    // 0700 until chmod: nobody else should see it half-made.
    make_replacing(dir, name, true, &mut created.removed, || {
        fsops::mkdir(dir, name, 0o700)
    })
    .map_err(replace_failure)?;
    let fd = fsops::open_child_dir(dir, name).map_err(Failure::fs("open it"))?;
    fd_metadata(fd.as_fd(), meta)?;
    let inode = fsops::inode(fd.as_fd()).map_err(Failure::fs("stat it"))?;
    created.dir = Some((fd, inode));
    Ok(created)
}

pub(crate) fn symlink(
    dir: BorrowedFd<'_>,
    name: &[u8],
    target: &[u8],
    meta: &Meta,
) -> Result<Created, Failure> {
    let mut created = Created::default();
    make_replacing(dir, name, false, &mut created.removed, || {
        fsops::symlink(target, dir, name)
    })
    .map_err(replace_failure)?;
    fsops::chown_nofollow(dir, name, meta.uid, meta.gid).map_err(Failure::fs("chown it"))?;
    // A symlink's own mode is meaningless on Linux, so no chmod.
    path_xattrs(dir, name, meta)?;
    fsops::utimens_nofollow(dir, name, meta.atime, meta.mtime)
        .map_err(Failure::fs("set its times"))?;
    Ok(created)
}

pub(crate) fn node(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: NodeKind,
    meta: &Meta,
) -> Result<Created, Failure> {
    let mut created = Created::default();
    make_replacing(dir, name, false, &mut created.removed, || {
        fsops::mknod(dir, name, kind, meta.dev_major, meta.dev_minor)
    })
    .map_err(replace_failure)?;
    fsops::chown_nofollow(dir, name, meta.uid, meta.gid).map_err(Failure::fs("chown it"))?;
    fsops::chmod_node(dir, name, meta.mode).map_err(Failure::fs("chmod it"))?;
    path_xattrs(dir, name, meta)?;
    fsops::utimens_nofollow(dir, name, meta.atime, meta.mtime)
        .map_err(Failure::fs("set its times"))?;
    Ok(created)
}

/// Hard-link `target_name` in `target_dir` (an entry earlier in this layer) as `name`.
/// The link's own header then applies to the inode it shares with its target (owner, mode,
/// xattrs, times), as containerd's and moby's unpack apply it: the last entry naming an
/// inode decides its metadata.
pub(crate) fn hardlink(
    target_dir: BorrowedFd<'_>,
    target_name: &[u8],
    dir: BorrowedFd<'_>,
    name: &[u8],
    meta: &Meta,
) -> Result<Created, Failure> {
    let mut created = Created::default();
    make_replacing(dir, name, false, &mut created.removed, || {
        fsops::hardlink(target_dir, target_name, dir, name)
    })
    .map_err(|e| Failure::Fs {
        action: "hard-link it to its target (which must be an earlier entry of this layer)",
        err: e.into(),
    })?;
    fsops::chown_nofollow(dir, name, meta.uid, meta.gid).map_err(Failure::fs("chown it"))?;
    // The target may be a symlink (linkat links it, not what it points to): no chmod then.
    fsops::chmod_unless_symlink(dir, name, meta.mode).map_err(Failure::fs("chmod it"))?;
    path_xattrs(dir, name, meta)?;
    fsops::utimens_nofollow(dir, name, meta.atime, meta.mtime)
        .map_err(Failure::fs("set its times"))?;
    Ok(created)
}

fn fd_metadata(fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), Failure> {
    fsops::fchown(fd, meta.uid, meta.gid).map_err(Failure::fs("chown it"))?;
    fsops::fchmod(fd, meta.mode).map_err(Failure::fs("chmod it"))?;
    for (key, value) in &meta.xattrs {
        tolerate_unsupported(key, fsops::fsetxattr(fd, key, value))?;
    }
    Ok(())
}

fn path_xattrs(dir: BorrowedFd<'_>, name: &[u8], meta: &Meta) -> Result<(), Failure> {
    for (key, value) in &meta.xattrs {
        tolerate_unsupported(key, fsops::setxattr_nofollow(dir, name, key, value))?;
    }
    Ok(())
}

/// Like containerd, an xattr the filesystem or node type cannot hold (`user.*` on a symlink,
/// an unknown namespace) is logged and skipped rather than failing the layer.
fn tolerate_unsupported(key: &[u8], res: Result<(), Errno>) -> Result<(), Failure> {
    match res {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::NOTSUP || e == Errno::PERM => {
            tracing::warn!(
                xattr = %String::from_utf8_lossy(key),
                error = %e,
                "skipping an xattr this filesystem refuses"
            );
            Ok(())
        }
        Err(e) => Err(Failure::Fs {
            action: "set its xattrs",
            err: e.into(),
        }),
    }
}
