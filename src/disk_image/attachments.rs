//! What the kernel has attached and mounted, read once for many disks: a restart adopts every
//! disk against one reading of the loop devices and one of the mount table. Read per disk, as
//! before, both listings made adoption quadratic (21 s for 1,000 disks: each disk walked all
//! 1,000 loop devices and stat'ed their backing files).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sys::{Sys, SysError};

/// The loop devices bound to each file, by the file's identity, and the topmost mount's
/// source at each mount point, as the kernel had them when read.
#[derive(Debug, Default)]
pub struct Attachments {
    /// (st_dev, st_ino) of a backing file -> the devices bound to it, in device order.
    by_file: HashMap<(u64, u64), Vec<PathBuf>>,
    /// Mount point -> the source of its topmost mount.
    mounts: HashMap<PathBuf, PathBuf>,
}

impl Attachments {
    /// One pass over the bound loop devices (their backing files stat'ed once each) and one
    /// read of the mount table.
    pub fn read(sys: &dyn Sys) -> Result<Attachments, SysError> {
        let mut by_file: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
        for l in sys.loop_devices()? {
            // Matched by inode, not by path: sysfs shows the path the file was opened by,
            // which a rename or another mount of the same filesystem makes differ.
            let Ok(m) = std::fs::metadata(&l.backing_file) else {
                continue;
            };
            by_file
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(l.device);
        }
        // In table order, so the last mount at a point (its topmost) is the one kept.
        let mounts = sys.mount_table()?.into_iter().collect();
        Ok(Attachments { by_file, mounts })
    }

    /// The loop devices bound to the file `meta` describes.
    pub fn devices_of(&self, meta: &std::fs::Metadata) -> &[PathBuf] {
        self.by_file
            .get(&(meta.dev(), meta.ino()))
            .map_or(&[], Vec::as_slice)
    }

    /// The source of the topmost mount exactly at `target`, if anything is mounted there.
    pub fn mount_source(&self, target: &Path) -> Option<&Path> {
        self.mounts.get(target).map(PathBuf::as_path)
    }
}
