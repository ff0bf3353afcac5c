//! Mounting on, and unmounting from, a directory reached without following a symlink.
//!
//! mount(2) and umount(2) take a path and resolve it when called, following every symlink in
//! it: whoever can replace a directory on the way with a symlink between our check and the
//! call chooses where the mount lands. Here the target directory is reached from an fd on
//! its root, one component at a time with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_XDEV), and the filesystem is mounted on that very fd with the new mount API
//! (fsopen, fsconfig, fsmount, move_mount with MOVE_MOUNT_T_EMPTY_PATH). A symlink swapped in
//! after the walk changes nothing: the kernel mounts on the directory the fd holds.
//!
//! RESOLVE_NO_XDEV also keeps a disk from being mounted inside another mount beneath the
//! root (another pod's disk, whose contents that pod controls) or stacked on one.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};

use crate::mount_path::MountTarget;
use crate::sys::fsops::openat2_retrying;
use crate::sys::{MountOptions, Result, SysError};

/// Mode of the directories made on the way to a mount point: a disk's mount point holds a
/// pod's files, setuid binaries included, which no other user of the node may reach.
const DIR_MODE: u32 = crate::access::PRIVATE_DIR;

fn errno(op: &'static str, path: &Path, e: Errno) -> SysError {
    SysError::io(op, path, std::io::Error::from(e))
}

/// An O_PATH fd on the directory `path` (absolute), reached without following any symlink.
fn open_dir_nofollow(path: &Path) -> Result<OwnedFd> {
    openat2_retrying(
        CWD,
        path.as_os_str().as_bytes(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| errno("open without following symlinks", path, e))
}

/// The directory `name` in `dir`: never a symlink, never across a mount.
fn open_child(dir: &OwnedFd, name: &[u8]) -> std::result::Result<OwnedFd, Errno> {
    openat2_retrying(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
}

/// Walks to `target`, making missing directories; returns the target's fd and the
/// directories made, outermost first.
fn walk(target: &MountTarget) -> Result<(OwnedFd, Vec<PathBuf>)> {
    let mut dir = open_dir_nofollow(target.root())?;
    let mut at = target.root().to_owned();
    let mut made = Vec::new();
    for name in target.components() {
        at.push(name);
        let name = name.as_bytes();
        let opened = match open_child(&dir, name) {
            Err(Errno::NOENT) => {
                match rfs::mkdirat(&dir, name, Mode::from_raw_mode(DIR_MODE)) {
                    Ok(()) => made.push(at.clone()),
                    // Made by a concurrent create: opened below like any existing directory.
                    Err(Errno::EXIST) => {}
                    Err(e) => return Err(undo_dirs(made, errno("create mountpoint", &at, e))),
                }
                open_child(&dir, name)
            }
            other => other,
        };
        dir = match opened {
            Ok(fd) => fd,
            Err(e) => {
                let op = match e {
                    Errno::LOOP => "refuse a symlink on the way to mountpoint",
                    Errno::XDEV => "refuse a mount point on the way to mountpoint",
                    Errno::NOTDIR => "refuse a non-directory on the way to mountpoint",
                    _ => "open mountpoint",
                };
                return Err(undo_dirs(made, errno(op, &at, e)));
            }
        };
    }
    Ok((dir, made))
}

/// Removes the directories `walk` made (innermost first), each still empty; returns `err`.
fn undo_dirs(made: Vec<PathBuf>, err: SysError) -> SysError {
    for dir in made.iter().rev() {
        if let Err(e) = remove_dir_nofollow(dir) {
            tracing::warn!(?dir, error = %e, "cannot remove a mountpoint directory made for a failed mount");
        }
    }
    err
}

/// rmdir of `dir`, its parent reached without following symlinks.
fn remove_dir_nofollow(dir: &Path) -> Result<()> {
    let (parent, name) = split(dir)?;
    let parent_fd = open_dir_nofollow(parent)?;
    rfs::unlinkat(&parent_fd, name, rfs::AtFlags::REMOVEDIR).map_err(|e| errno("rmdir", dir, e))
}

fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(errno("split into parent and name", path, Errno::INVAL)),
    }
}

/// Mounts `source` (`fstype`, options `data` as mount(2) takes them) on `target`.
pub fn mount(
    source: &Path,
    target: &MountTarget,
    fstype: &str,
    opts: MountOptions,
    data: &str,
) -> Result<Vec<PathBuf>> {
    let (dir, made) = walk(target)?;
    let at = target.path();
    tracing::debug!(?source, target = ?at, fstype, ?opts, data, "mount beneath");
    match mount_on(&dir, source, fstype, opts, data) {
        Ok(()) => {
            crate::fault::point("mount.mounted");
            Ok(made)
        }
        Err(e) => Err(undo_dirs(made, errno("mount", &at, e))),
    }
}

fn mount_on(
    dir: &OwnedFd,
    source: &Path,
    fstype: &str,
    opts: MountOptions,
    data: &str,
) -> std::result::Result<(), Errno> {
    let fs = rustix::mount::fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)?;
    rustix::mount::fsconfig_set_string(&fs, "source", source)?;
    for option in data.split(',').filter(|o| !o.is_empty()) {
        match option.split_once('=') {
            Some((key, value)) => rustix::mount::fsconfig_set_string(&fs, key, value)?,
            None => rustix::mount::fsconfig_set_flag(&fs, option)?,
        }
    }
    if opts.read_only {
        rustix::mount::fsconfig_set_flag(&fs, "ro")?;
    }
    rustix::mount::fsconfig_create(&fs)?;
    // What mount(2) with the same MountOptions gives: rw or ro, relatime unless noatime.
    let mut attrs = MountAttrFlags::empty();
    if opts.read_only {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    if opts.noatime {
        attrs |= MountAttrFlags::MOUNT_ATTR_NOATIME;
    }
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)?;
    rustix::mount::move_mount(
        &mnt,
        "",
        dir,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
}

/// Unmounts the topmost mount on `target`, whose parent is reached without following any
/// symlink and whose last component is not followed either.
pub fn unmount(target: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let (parent, name) = split(target)?;
    let parent_fd = open_dir_nofollow(parent)?;
    // umount2 has no dirfd; /proc/self/fd/<n> lands on exactly the directory the fd holds
    // (it does not pin the mount below it, as an fd on the mount point itself would).
    let mut path = format!("/proc/self/fd/{}/", parent_fd.as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    tracing::debug!(?target, "unmount without following symlinks");
    rustix::mount::unmount(std::ffi::OsStr::from_bytes(&path), UnmountFlags::NOFOLLOW)
        .map_err(|e| errno("unmount", target, e))
}
