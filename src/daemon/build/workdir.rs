//! Removing a build's work directory together with any mount or loop device still on it —
//! after a failed build, a cancelled one, or one a crash interrupted.

use std::path::Path;

use crate::sys::{Sys, SysError};

pub fn clean_work_dir(sys: &dyn Sys, dir: &Path) -> Result<(), SysError> {
    for mountpoint in sys.mounts_under(dir)? {
        crate::sys::unmount_settled(sys, &mountpoint)?;
    }
    for lo in sys.loop_devices()? {
        if lo.backing_file.starts_with(dir) {
            sys.detach_loop(&lo.device)?;
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SysError::io("remove", dir, e)),
        _ => Ok(()),
    }
}
