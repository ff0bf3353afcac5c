//! Copying a sparse file without filling its holes: the fallback for per-pod disks when the
//! state root cannot share extents. Only data extents (SEEK_DATA/SEEK_HOLE) are copied, with
//! copy_file_range so the kernel moves the bytes (and shares them, where it can).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::{Result, SysError};

/// The data runs of `file` as `[start, end)` byte ranges, ascending (SEEK_DATA/SEEK_HOLE).
/// A filesystem without SEEK_DATA reports the whole file as one run.
pub(crate) fn data_runs(file: &File) -> std::result::Result<Vec<(u64, u64)>, Errno> {
    let size = file.metadata().map_err(|_| Errno::IO)?.len();
    let mut runs = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break, // no data after `at`
            Err(e) => return Err(e),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?;
        runs.push((start, end));
        at = end;
    }
    Ok(runs)
}

/// copy_file_range moves at most this much per call; smaller calls keep a cancelled or
/// failing copy from sitting in one long syscall.
const CHUNK: u64 = 64 << 20;
/// Buffer for the read/write fallback when copy_file_range refuses the pair of files.
const FALLBACK_BUF: usize = 1 << 20;

/// Copy `src` into the new file `dst` (which must not exist; it gets `src`'s mode), data
/// extents only: what is a hole in `src` stays a hole in `dst`. Returns the bytes copied.
/// A failed copy removes `dst`.
pub(crate) fn sparse_copy(src: &Path, dst: &Path) -> Result<u64> {
    let input = File::open(src).map_err(|e| SysError::io("open", src, e))?;
    let meta = input.metadata().map_err(|e| SysError::io("stat", src, e))?;
    let mode = meta.mode() & 0o7777;
    let output = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dst)
        .map_err(|e| SysError::io("create", dst, e))?;
    match copy_extents(&input, src, &output, dst, meta.len()) {
        Ok(copied) => {
            // create_new applied the umask; the copy carries exactly the source's mode.
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
                .map_err(|e| SysError::io("chmod", dst, e))?;
            Ok(copied)
        }
        Err(e) => {
            drop(output);
            if let Err(rm) = std::fs::remove_file(dst) {
                tracing::warn!(?dst, error = %rm, "cannot remove failed sparse copy");
            }
            Err(e)
        }
    }
}

fn copy_extents(input: &File, src: &Path, output: &File, dst: &Path, size: u64) -> Result<u64> {
    output
        .set_len(size)
        .map_err(|e| SysError::io("truncate", dst, e))?;
    let mut copied = 0;
    let mut pos = 0;
    let mut kernel_copy = true;
    while pos < size {
        let start = match rustix::fs::seek(input, SeekFrom::Data(pos)) {
            Ok(start) => start,
            // No data past `pos`: the rest is one hole, which set_len already made.
            Err(Errno::NXIO) => break,
            Err(e) => return Err(SysError::io("seek data", src, e)),
        };
        let end = rustix::fs::seek(input, SeekFrom::Hole(start))
            .map_err(|e| SysError::io("seek hole", src, e))?
            .min(size);
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(CHUNK);
            let n = if kernel_copy {
                let (mut off_in, mut off_out) = (offset, offset);
                match rustix::fs::copy_file_range(
                    input,
                    Some(&mut off_in),
                    output,
                    Some(&mut off_out),
                    len as usize,
                ) {
                    Ok(n) => n as u64,
                    // Across filesystems of different kinds, or a filesystem that
                    // cannot: plain reads and writes do the same job.
                    Err(Errno::XDEV | Errno::OPNOTSUPP | Errno::INVAL | Errno::NOSYS) => {
                        kernel_copy = false;
                        continue;
                    }
                    Err(e) => return Err(SysError::io("copy_file_range", dst, e)),
                }
            } else {
                copy_by_hand(input, src, output, dst, offset, len)?
            };
            if n == 0 {
                return Err(SysError::Other(format!(
                    "copy {} -> {}: source ended at {offset} bytes while it is {size} bytes \
                     long; something is writing to it, and a snapshot must not change",
                    src.display(),
                    dst.display()
                )));
            }
            offset += n;
        }
        copied += end - start;
        pos = end;
    }
    Ok(copied)
}

fn copy_by_hand(
    input: &File,
    src: &Path,
    output: &File,
    dst: &Path,
    offset: u64,
    len: u64,
) -> Result<u64> {
    let mut buf = vec![0u8; FALLBACK_BUF.min(len as usize)];
    let n = input
        .read_at(&mut buf, offset)
        .map_err(|e| SysError::io("read", src, e))?;
    output
        .write_all_at(&buf[..n], offset)
        .map_err(|e| SysError::io("write", dst, e))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_data_and_keeps_holes_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let file = File::create(&src).unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[1u8; 8192], 4096).unwrap();
        file.write_all_at(&[2u8; 4096], 32 << 20).unwrap();
        drop(file);
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o440)).unwrap();
        let dst = dir.path().join("dst");
        let copied = sparse_copy(&src, &dst).unwrap();
        assert!(copied >= 12288, "copied {copied}");
        assert!(copied < 1 << 20, "holes were copied: {copied}");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        let meta = std::fs::metadata(&dst).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o440);
        assert!(meta.blocks() * 512 < 1 << 20, "{} blocks", meta.blocks());
        let again = sparse_copy(&src, &dst).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(Errno::EXIST.raw_os_error()));
    }

    #[test]
    fn all_hole_source_copies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        File::create(&src).unwrap().set_len(1 << 30).unwrap();
        let dst = dir.path().join("dst");
        assert_eq!(sparse_copy(&src, &dst).unwrap(), 0);
        assert_eq!(std::fs::metadata(&dst).unwrap().len(), 1 << 30);
    }
}
