//! Per-entry filesystem calls made beneath a directory fd.
//!
//! The layer unpacker never touches a path string relative to the process's cwd or `/`: every
//! call here takes a directory fd that was itself opened beneath the layer directory, and a
//! single final component that is never followed if it is a symlink. Keeping the raw calls in
//! one place makes that property reviewable in one file.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps,
    Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::retry::{RetryPolicy, Verdict};

/// The kinds of node `mknod` makes for a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// What already sits at a name, as far as replacing it is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    Dir,
    Other,
}

/// A point in time for `utimensat`, seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    fn timespec(self) -> Timespec {
        Timespec {
            tv_sec: self.secs,
            tv_nsec: i64::from(self.nanos),
        }
    }
}

fn timestamps(atime: Time, mtime: Time) -> Timestamps {
    Timestamps {
        last_access: atime.timespec(),
        last_modification: mtime.timespec(),
    }
}

/// Open the layer's root directory. It is the anchor every later lookup is confined beneath.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Open directory `rel` (a relative path, several components) strictly beneath `root`.
///
/// `RESOLVE_BENEATH` makes the kernel refuse with EXDEV any resolution that would leave
/// `root` (`..`, absolute symlinks, relative symlinks climbing out), and
/// `RESOLVE_NO_MAGICLINKS` refuses `/proc/self/fd`-style jumps. Symlinks that stay inside are
/// followed, as an overlay mount of the chain would follow them.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> Result<OwnedFd, Errno> {
    open_dir_resolving(root, rel, ResolveFlags::BENEATH)
}

/// openat2 of directory `rel` under `root` with `how` (and never through magic links).
fn open_dir_resolving(
    root: BorrowedFd<'_>,
    rel: &[u8],
    how: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    openat2_retrying(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        how | ResolveFlags::NO_MAGICLINKS,
    )
}

/// The kernel answers EAGAIN when a rename elsewhere on the system raced a `..` step of an
/// openat2 resolution (a symlink target may contain `..`): the lookup is safe to repeat, at
/// once, as the race is over; only a system renaming without pause loses it every time.
const RESOLVE_RACE_RETRY: RetryPolicy = RetryPolicy {
    immediate: 16,
    first: Duration::ZERO,
    max: Duration::ZERO,
    attempts: 17,
    deadline: Duration::from_secs(1),
    log: tracing::Level::TRACE,
};

/// openat2 of `name` under `dir`, with EAGAIN retried by [`RESOLVE_RACE_RETRY`].
pub(crate) fn openat2_retrying(
    dir: impl AsFd,
    name: &[u8],
    flags: OFlags,
    how: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let dir = dir.as_fd();
    RESOLVE_RACE_RETRY
        .run_blocking(
            "openat2",
            || rfs::openat2(dir, name, flags, Mode::empty(), how),
            |e| Verdict::retry_if(*e == Errno::AGAIN),
        )
        .map_err(|gave_up| gave_up.error)
}

/// Open directory `rel` in a lower layer the way containerd 1.6 looks a path up there
/// (continuity's `fs.RootPath`): symlinks, the final one included, resolve with `root` as
/// `/`, and `..` stops at it. Only ever read from, never written.
pub fn open_dir_in_root(root: BorrowedFd<'_>, rel: &[u8]) -> Result<OwnedFd, Errno> {
    open_dir_resolving(root, rel, ResolveFlags::IN_ROOT)
}

/// Open the directory `name` in `dir`, refusing a symlink at `name`.
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Create a new regular file for writing. `O_EXCL` guarantees we made it (never opening
/// something planted there, symlink or not); the final mode is set later with [`fchmod`]
/// because the process umask would otherwise mask it.
pub fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

pub fn mkdir(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), Errno> {
    rfs::mkdirat(dir, name, Mode::from_raw_mode(mode))
}

pub fn symlink(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    rfs::symlinkat(target, dir, name)
}

/// Hard-link `old_name` in `old_dir` as `new_name` in `new_dir`. Flags 0: a symlink at
/// `old_name` is linked itself, not followed.
pub fn hardlink(
    old_dir: BorrowedFd<'_>,
    old_name: &[u8],
    new_dir: BorrowedFd<'_>,
    new_name: &[u8],
) -> Result<(), Errno> {
    rfs::linkat(old_dir, old_name, new_dir, new_name, AtFlags::empty())
}

pub fn mknod(
    dir: BorrowedFd<'_>,
    name: &[u8],
    kind: NodeKind,
    major: u32,
    minor: u32,
) -> Result<(), Errno> {
    let file_type = match kind {
        NodeKind::Char => FileType::CharacterDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::Fifo,
    };
    // Created with no permissions; the caller sets the exact mode after chown.
    rfs::mknodat(
        dir,
        name,
        file_type,
        Mode::empty(),
        rfs::makedev(major, minor),
    )
}

/// What is at `name` in `dir` (not following a symlink there).
pub fn existing(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Existing, Errno> {
    let st = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            Existing::Dir
        } else {
            Existing::Other
        },
    )
}

/// The inode number of an open file, to recognise it again later.
pub fn inode(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    Ok(rfs::fstat(fd)?.st_ino)
}

pub fn unlink(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    rfs::unlinkat(dir, name, AtFlags::empty())
}

/// Remove the directory `name` in `dir` and everything in it, never following symlinks
/// (a symlink inside is unlinked, not descended into).
pub fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let fd = open_child_dir(dir, name)?;
    empty_dir(fd.as_fd())?;
    drop(fd);
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

fn empty_dir(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    // Names are collected first: unlinking while a getdents stream is open may skip entries.
    let mut children: Vec<(std::ffi::CString, bool)> = Vec::new();
    for ent in Dir::read_from(fd)? {
        let ent = ent?;
        let name = ent.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let is_dir = match ent.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                let st = rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(st.st_mode) == FileType::Directory
            }
            _ => false,
        };
        children.push((name.to_owned(), is_dir));
    }
    for (name, is_dir) in children {
        let name: &CStr = &name;
        if is_dir {
            remove_tree(fd, name.to_bytes())?;
        } else {
            rfs::unlinkat(fd, name, AtFlags::empty())?;
        }
    }
    Ok(())
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), Errno> {
    rfs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
}

/// `mode` carries the permission bits and setuid/setgid/sticky.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), Errno> {
    rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))
}

pub fn fsetxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> Result<(), Errno> {
    rfs::fsetxattr(fd, name, value, XattrFlags::empty())
}

/// Set an xattr only if the node does not have it yet: `Ok(false)` if it already did.
pub fn fsetxattr_create(fd: BorrowedFd<'_>, name: &[u8], value: &[u8]) -> Result<bool, Errno> {
    match rfs::fsetxattr(fd, name, value, XattrFlags::CREATE) {
        Ok(()) => Ok(true),
        Err(Errno::EXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The names of every xattr of an open file, each without its NUL.
pub fn flistxattr(fd: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 1024];
    loop {
        match rfs::flistxattr(fd, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break;
            }
            // The list grew or did not fit: ask for its size and try again.
            Err(Errno::RANGE) => buf.resize(rfs::flistxattr_query(fd)?.max(buf.len() * 2), 0),
            Err(e) => return Err(e),
        }
    }
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// An xattr's value, `None` if the file no longer has it.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; 256];
    loop {
        match rfs::fgetxattr(fd, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) => {
                let want = rfs::fgetxattr_query(fd, name)?;
                buf.resize(want.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// An open file's permission bits (with setuid/setgid/sticky), uid and gid.
pub fn owner_and_mode(fd: BorrowedFd<'_>) -> Result<(u32, u32, u32), Errno> {
    let st = rfs::fstat(fd)?;
    Ok((st.st_mode & 0o7777, st.st_uid, st.st_gid))
}

/// chmod the node `name` in `dir` unless it is a symlink (whose mode Linux ignores and
/// chmod would follow). The node is pinned with `O_PATH | O_NOFOLLOW` first, so what is
/// checked is what is changed.
pub fn chmod_unless_symlink(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let fd = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if FileType::from_raw_mode(rfs::fstat(&fd)?.st_mode) == FileType::Symlink {
        return Ok(());
    }
    // fchmod refuses an O_PATH fd; its /proc link reaches the very inode it holds.
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rfs::chmodat(
        rfs::CWD,
        path.as_str(),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
}

pub fn futimens(fd: BorrowedFd<'_>, atime: Time, mtime: Time) -> Result<(), Errno> {
    rfs::futimens(fd, &timestamps(atime, mtime))
}

/// chown the node `name` itself (a symlink is not followed).
pub fn chown_nofollow(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> Result<(), Errno> {
    rfs::chownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// chmod a device node or fifo we just created in `dir`. fchmodat cannot refuse a symlink at
/// `name`, but the caller only uses this right after mknod made the node in a directory that
/// only this unpacker writes, and symlinks (the one type chmod would follow) never get here.
pub fn chmod_node(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), Errno> {
    rfs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )
}

pub fn utimens_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    atime: Time,
    mtime: Time,
) -> Result<(), Errno> {
    rfs::utimensat(
        dir,
        name,
        &timestamps(atime, mtime),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Set an xattr on `name` in `dir` without opening it (symlinks, devices and fifos cannot be
/// opened for fsetxattr). `/proc/self/fd/<dir>` jumps straight to the directory we hold, and
/// `lsetxattr` does not follow the final component, so this stays as confined as the *at
/// calls; rustix has no setxattrat (Linux 6.13).
pub fn setxattr_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &[u8],
    value: &[u8],
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    rfs::lsetxattr(
        std::ffi::OsStr::from_bytes(&path),
        key,
        value,
        XattrFlags::empty(),
    )
}

/// Bytes this process may still write on the filesystem holding `fd`. Root may use the
/// blocks ext4 reserves for it, so count those too when we are root.
pub fn free_bytes(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    let st = rfs::fstatvfs(fd)?;
    let blocks = if rustix::process::geteuid().is_root() {
        st.f_bfree
    } else {
        st.f_bavail
    };
    Ok(blocks.saturating_mul(st.f_frsize))
}

/// Whether an errno means the filesystem (or quota) is full.
pub fn is_no_space(errno: Errno) -> bool {
    errno == Errno::NOSPC || errno == Errno::DQUOT
}

/// Hand a created file's fd to std, whose `write_all` writes straight to it (unbuffered:
/// the caller already writes in large chunks).
pub fn into_file(fd: OwnedFd) -> std::fs::File {
    std::fs::File::from(fd)
}

/// Removes the empty directories `root/names[0]/names[1]/...`, innermost first, each reached
/// without following a symlink (a symlink planted on the way is left, never followed). A
/// missing one is skipped; a non-empty one (or a symlink) ends the removal with its errno.
pub fn remove_empty_dirs_beneath(root: &Path, names: &[&str]) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    let mut dirs = vec![rfs::openat2(
        rfs::CWD,
        root.as_os_str().as_bytes(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?];
    for name in &names[..names.len().saturating_sub(1)] {
        let parent = dirs.last().expect("starts with the root");
        match open_dir_resolving(
            parent.as_fd(),
            name.as_bytes(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        ) {
            Ok(child) => dirs.push(child),
            Err(Errno::NOENT) => break,
            Err(e) => return Err(e),
        }
    }
    for (dir, name) in dirs.iter().zip(names).rev() {
        match rfs::unlinkat(dir, *name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
