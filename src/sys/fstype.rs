//! Filesystem types by statfs(2) magic: whether a state root can share extents, and what to
//! tell the operator when it cannot.

use std::fmt;

/// The `f_type` statfs(2) reports for a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsType(pub u64);

impl FsType {
    pub const XFS: FsType = FsType(0x5846_5342);
    pub const BTRFS: FsType = FsType(0x9123_683e);
    /// ext2, ext3 and ext4 share one magic; ext4 is the one anybody runs today.
    pub const EXT4: FsType = FsType(0xef53);
    pub const TMPFS: FsType = FsType(0x0102_1994);
    pub const OVERLAYFS: FsType = FsType(0x794c_7630);

    const NAMES: &'static [(u64, &'static str)] = &[
        (0x5846_5342, "xfs"),
        (0x9123_683e, "btrfs"),
        (0xef53, "ext4"),
        (0x0102_1994, "tmpfs"),
        (0x794c_7630, "overlayfs"),
        (0x858_458f6, "ramfs"),
        (0x6969, "nfs"),
        (0xff53_4d42, "cifs"),
        (0xfe53_4d42, "smb2"),
        (0x2fc1_2fc1, "zfs"),
        (0xf2f5_2010, "f2fs"),
        (0xca45_1a4e, "bcachefs"),
        (0x6573_5546, "fuse"),
        (0x7371_7368, "squashfs"),
        (0xe0f5_e1e2, "erofs"),
        (0x5346_544e, "ntfs"),
        (0x4d44, "vfat"),
        (0x2011_bab0, "exfat"),
        (0x0000_9fa0, "proc"),
        (0x6265_6572, "sysfs"),
    ];

    /// The filesystem's usual name ("xfs", "btrfs", "ext4", …), or its magic in hex.
    pub fn name(self) -> String {
        Self::NAMES
            .iter()
            .find(|(magic, _)| *magic == self.0)
            .map(|(_, name)| (*name).to_owned())
            .unwrap_or_else(|| format!("unknown (statfs magic {:#x})", self.0))
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown() {
        assert_eq!(FsType::XFS.name(), "xfs");
        assert_eq!(FsType::BTRFS.to_string(), "btrfs");
        assert_eq!(FsType::EXT4.name(), "ext4");
        assert_eq!(FsType::TMPFS.name(), "tmpfs");
        assert_eq!(FsType(0x1234).name(), "unknown (statfs magic 0x1234)");
    }
}
