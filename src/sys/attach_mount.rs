//! The one sequence every image, disk and cache mount goes through: attach a file to a loop
//! device, mount the device, and if the mount fails, detach the device again before saying
//! so. Written out at each caller it had two roll-backs (one detached whatever device the
//! number now named, the other only the device still backed by the file); this one checks
//! the backing file first, so a number reused by someone else is never touched.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{LoopDevice, LoopOptions, MountOptions, MountTarget, Result, Sys, SysError};

/// Where the device is mounted.
pub enum MountAt<'a> {
    /// A path the daemon owns (under its state root).
    Path(&'a Path),
    /// A path beneath a root, reached without following symlinks (`Sys::mount_beneath`):
    /// for mountpoints a caller chose.
    Beneath(&'a MountTarget),
}

impl MountAt<'_> {
    pub fn path(&self) -> PathBuf {
        match self {
            MountAt::Path(p) => p.to_path_buf(),
            MountAt::Beneath(t) => t.path(),
        }
    }
}

/// How to mount the attached device.
pub struct MountSpec<'a> {
    pub at: MountAt<'a>,
    pub fstype: &'a str,
    pub opts: MountOptions,
    /// The filesystem's option string, passed through unchanged.
    pub data: &'a str,
}

/// A file attached and (if asked) mounted. The caller owns the device handle: `release` it
/// once the mount (or a non-autoclear binding) holds the device.
#[derive(Debug)]
pub struct AttachedMount {
    pub device: LoopDevice,
    /// Directories `mount_beneath` created on the way to the mountpoint, for an undo.
    pub created_dirs: Vec<PathBuf>,
    /// Where the device is mounted, if it was.
    pub mountpoint: Option<PathBuf>,
    pub attach_time: Duration,
    pub mount_time: Duration,
}

/// Which step failed. The device of a failed mount is detached, unless `left_attached`
/// says why it could not be: a caller reports that as left behind.
#[derive(Debug, thiserror::Error)]
pub enum AttachMountError {
    #[error("attach {}: {source}", file.display())]
    Attach {
        file: PathBuf,
        #[source]
        source: SysError,
    },
    #[error("mount {} at {}: {source}", device.display(), at.display())]
    Mount {
        device: PathBuf,
        at: PathBuf,
        #[source]
        source: SysError,
        left_attached: Option<Box<SysError>>,
    },
}

/// Attaches `file` with `loop_opts` and mounts it as `mount` says (or only attaches it).
/// `after_attach` names a fault point between the two steps, for the crash tests.
pub fn attach_and_mount(
    sys: &dyn Sys,
    file: &Path,
    loop_opts: LoopOptions,
    mount: Option<MountSpec<'_>>,
    after_attach: Option<&'static str>,
) -> std::result::Result<AttachedMount, AttachMountError> {
    let started = Instant::now();
    let device = sys
        .attach_loop(file, loop_opts)
        .map_err(|source| AttachMountError::Attach {
            file: file.to_owned(),
            source,
        })?;
    let attach_time = started.elapsed();
    if let Some(point) = after_attach {
        crate::fault::point(point);
    }
    let mut attached = AttachedMount {
        device,
        created_dirs: Vec::new(),
        mountpoint: None,
        attach_time,
        mount_time: Duration::ZERO,
    };
    let Some(spec) = mount else {
        return Ok(attached);
    };
    let started = Instant::now();
    match mount_device(sys, &attached.device.path, &spec) {
        Ok(created_dirs) => {
            attached.created_dirs = created_dirs;
            attached.mountpoint = Some(spec.at.path());
            attached.mount_time = started.elapsed();
            Ok(attached)
        }
        Err(source) => {
            let mut device = attached.device;
            let left_attached = sys.detach_loop_of(&device.path, file).err().map(Box::new);
            if let Some(e) = &left_attached {
                tracing::warn!(
                    device = %device.path.display(),
                    error = %e,
                    "cannot detach the loop device of a mount that failed"
                );
            }
            device.release();
            Err(AttachMountError::Mount {
                device: device.path.clone(),
                at: spec.at.path(),
                source,
                left_attached,
            })
        }
    }
}

fn mount_device(sys: &dyn Sys, device: &Path, spec: &MountSpec<'_>) -> Result<Vec<PathBuf>> {
    match spec.at {
        MountAt::Path(at) => sys
            .mount(device, at, spec.fstype, spec.opts, spec.data)
            .map(|()| Vec::new()),
        MountAt::Beneath(target) => {
            sys.mount_beneath(device, target, spec.fstype, spec.opts, spec.data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::{FakeSys, Op};

    fn spec(at: &Path) -> MountSpec<'_> {
        MountSpec {
            at: MountAt::Path(at),
            fstype: "ext4",
            opts: MountOptions::default(),
            data: "",
        }
    }

    #[test]
    fn a_failed_mount_leaves_no_loop_device() {
        let sys = FakeSys::new();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img");
        std::fs::write(&file, b"x").unwrap();
        sys.fail_next(Op::Mount, libc::EBUSY);
        let e = attach_and_mount(
            &sys,
            &file,
            LoopOptions::default(),
            Some(spec(dir.path())),
            None,
        )
        .unwrap_err();
        let left = matches!(
            e,
            AttachMountError::Mount {
                left_attached: None,
                ..
            }
        );
        assert!(left, "{e}");
        assert!(
            sys.loop_devices().unwrap().is_empty(),
            "the device is detached"
        );
    }

    #[test]
    fn attached_and_mounted_it_says_where() {
        let sys = FakeSys::new();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("img");
        std::fs::write(&file, b"x").unwrap();
        let done = attach_and_mount(
            &sys,
            &file,
            LoopOptions::default(),
            Some(spec(dir.path())),
            None,
        )
        .unwrap();
        assert_eq!(done.mountpoint.as_deref(), Some(dir.path()));
        assert_eq!(sys.loop_devices().unwrap().len(), 1);
        assert_eq!(
            sys.mounts_under(dir.path()).unwrap(),
            [dir.path().to_owned()]
        );
    }
}
