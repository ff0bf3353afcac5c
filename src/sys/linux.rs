//! The real `Sys`: loop ioctls, mount(2), FICLONE; and the API socket's peer groups.

mod beneath;
mod fiemap;
mod loopclaim;
mod loopdev;
mod mountinfo;
mod peergroups;

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::{
    FsSpace, FsType, LoopDevice, LoopInfo, LoopOptions, MountOptions, Result, Sys, SysError,
};

pub use mountinfo::{parse_mountinfo, unescape_mountinfo_field};
pub use peergroups::peer_groups;

/// Performs the operations against the running kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSys;

impl Sys for LinuxSys {
    fn attach_loop(&self, file: &Path, opts: LoopOptions) -> Result<LoopDevice> {
        loopdev::attach(file, opts)
    }

    fn detach_loop(&self, device: &Path) -> Result<()> {
        loopdev::detach(device)
    }

    fn loop_devices(&self) -> Result<Vec<LoopInfo>> {
        loopdev::list(Path::new("/sys/block"), Path::new("/proc/partitions"))
    }

    fn bound_loop_count(&self) -> Result<usize> {
        Ok(loopclaim::bound_loops(Path::new("/proc/partitions"))?.len())
    }

    fn mount(
        &self,
        source: &Path,
        target: &Path,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<()> {
        let mut flags = MountFlags::empty();
        if opts.read_only {
            flags |= MountFlags::RDONLY;
        }
        if opts.noatime {
            flags |= MountFlags::NOATIME;
        }
        let data = if data.is_empty() {
            None
        } else {
            Some(
                std::ffi::CString::new(data)
                    .map_err(|_| SysError::Other(format!("mount data {data:?} contains NUL")))?,
            )
        };
        tracing::debug!(?source, ?target, fstype, ?opts, ?data, "mount");
        rustix::mount::mount(source, target, fstype, flags, data.as_deref())
            .map_err(|e| SysError::io("mount", target, e))?;
        crate::fault::point("mount.mounted");
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        tracing::debug!(?target, "unmount");
        rustix::mount::unmount(target, UnmountFlags::empty())
            .map_err(|e| SysError::io("unmount", target, e))
    }

    fn mount_beneath(
        &self,
        source: &Path,
        target: &super::MountTarget,
        fstype: &str,
        opts: MountOptions,
        data: &str,
    ) -> Result<Vec<PathBuf>> {
        beneath::mount(source, target, fstype, opts, data)
    }

    fn unmount_nofollow(&self, target: &Path) -> Result<()> {
        beneath::unmount(target)
    }

    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SysError::io("read", "/proc/self/mountinfo", e))?;
        Ok(mountinfo::under(&parse_mountinfo(&text), prefix))
    }

    fn reflink(&self, src: &Path, dst: &Path) -> Result<()> {
        let reflink_err = |source: std::io::Error| SysError::Reflink {
            src: src.to_owned(),
            dst: dst.to_owned(),
            source,
        };
        let src_file = std::fs::File::open(src).map_err(|e| SysError::io("open", src, e))?;
        let mode = src_file
            .metadata()
            .map_err(|e| SysError::io("stat", src, e))?
            .mode()
            & 0o7777;
        let dst_file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(dst)
            .map_err(|e| SysError::io("create", dst, e))?;
        if let Err(e) = rustix::fs::ioctl_ficlone(&dst_file, &src_file) {
            drop(dst_file);
            // A half-made destination would look like an empty clone to the next caller.
            if let Err(rm) = std::fs::remove_file(dst) {
                tracing::warn!(?dst, error = %rm, "cannot remove failed reflink target");
            }
            return Err(reflink_err(e.into()));
        }
        // create_new applied the umask; the clone must carry exactly the source's mode.
        std::fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| SysError::io("chmod", dst, e))?;
        Ok(())
    }

    fn syncfs(&self, path: &Path) -> Result<()> {
        // Any fd on the filesystem will do; a read-only open works for files and directories.
        let fd = std::fs::File::open(path).map_err(|e| SysError::io("open", path, e))?;
        rustix::fs::syncfs(&fd).map_err(|e| SysError::io("syncfs", path, e))
    }

    fn fsync(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(|e| SysError::io("open", path, e))?;
        rustix::fs::fsync(&file).map_err(|e| SysError::io("fsync", path, e))
    }

    fn mount_source(&self, target: &Path) -> Result<Option<PathBuf>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SysError::io("read", "/proc/self/mountinfo", e))?;
        Ok(mountinfo::source_of(&text, target))
    }

    fn mount_table(&self) -> Result<Vec<(PathBuf, PathBuf)>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SysError::io("read", "/proc/self/mountinfo", e))?;
        Ok(mountinfo::sources(&text))
    }

    fn fs_type(&self, path: &Path) -> Result<FsType> {
        let stat = rustix::fs::statfs(path).map_err(|e| SysError::io("statfs", path, e))?;
        // f_type is signed on some architectures; the magic is its 32-bit pattern.
        Ok(FsType(u64::from(stat.f_type as u32)))
    }

    fn fs_space(&self, path: &Path) -> Result<FsSpace> {
        let st = rustix::fs::statvfs(path).map_err(|e| SysError::io("statvfs", path, e))?;
        Ok(FsSpace {
            total: st.f_blocks.saturating_mul(st.f_frsize),
            available: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }

    fn sparse_copy(&self, src: &Path, dst: &Path) -> Result<u64> {
        super::sparse::sparse_copy(src, dst)
    }

    fn detach_loop_of(&self, device: &Path, file: &Path) -> Result<bool> {
        loopdev::detach_if_backed_by(device, file)
    }

    fn extent_count(&self, file: &Path) -> Result<u64> {
        let handle = std::fs::File::open(file).map_err(|e| SysError::io("open", file, e))?;
        fiemap::extent_count(&handle)
            .map_err(|e| SysError::io("map the extents of", file, std::io::Error::from(e)))
    }

    fn tune_ext4(&self, device: &Path, name: &str, value: u64) -> Result<()> {
        let knob = ext4_tunable_path(device, name).ok_or_else(|| {
            SysError::io(
                "name the ext4 tunable of",
                device,
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        std::fs::write(&knob, value.to_string()).map_err(|e| SysError::io("write", &knob, e))
    }
}

/// /sys/fs/ext4/<device name>/<name>, for a device path such as /dev/loop7, or `None` when
/// either part could climb out of that directory.
fn ext4_tunable_path(device: &Path, name: &str) -> Option<PathBuf> {
    let dev = device.file_name()?.to_str()?;
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    (plain(dev) && plain(name)).then(|| Path::new("/sys/fs/ext4").join(dev).join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunable_paths_stay_in_the_devices_directory() {
        assert_eq!(
            ext4_tunable_path(Path::new("/dev/loop7"), "mb_prefetch"),
            Some(PathBuf::from("/sys/fs/ext4/loop7/mb_prefetch"))
        );
        assert_eq!(ext4_tunable_path(Path::new("/dev/loop7"), "../x"), None);
        assert_eq!(ext4_tunable_path(Path::new("/dev/.."), "mb_prefetch"), None);
        assert_eq!(ext4_tunable_path(Path::new("/"), "mb_prefetch"), None);
        assert_eq!(ext4_tunable_path(Path::new("/dev/loop7"), ""), None);
    }
}
