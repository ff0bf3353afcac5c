//! Counting a file's extents with FS_IOC_FIEMAP.

use std::fs::File;

use linux_raw_sys::ioctl::{FIEMAP_FLAG_SYNC, FS_IOC_FIEMAP};
use rustix::ioctl::{self, Opcode, Updater};

/// `struct fiemap` without its trailing array: asking for no extents makes the kernel only
/// count them, in `mapped_extents`.
#[repr(C)]
struct FiemapHeader {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
}

/// How many extents (written or unwritten) map `file`, after flushing its dirty pages so
/// delayed allocations are counted as they will land.
pub fn extent_count(file: &File) -> rustix::io::Result<u64> {
    let mut header = FiemapHeader {
        start: 0,
        length: u64::MAX,
        flags: FIEMAP_FLAG_SYNC,
        mapped_extents: 0,
        extent_count: 0,
        reserved: 0,
    };
    // SAFETY: FS_IOC_FIEMAP reads and writes a `struct fiemap`; with `extent_count` 0 the
    // kernel touches only the header, whose layout `FiemapHeader` reproduces.
    unsafe {
        ioctl::ioctl(
            file,
            Updater::<{ FS_IOC_FIEMAP as Opcode }, FiemapHeader>::new(&mut header),
        )
    }?;
    Ok(u64::from(header.mapped_extents))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn counts_the_extents_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        file.set_len(64 << 20).unwrap();
        assert_eq!(extent_count(&file).unwrap(), 0, "all hole");
        for at in [0u64, 16 << 20, 48 << 20] {
            file.write_all_at(&[1u8; 4096], at).unwrap();
        }
        // Dirty pages are flushed first (FIEMAP_FLAG_SYNC): the three runs are counted.
        assert_eq!(extent_count(&file).unwrap(), 3);
    }
}
