//! Growing an image (a per-pod disk bigger than the cache it was cloned from).

use std::fs::OpenOptions;
use std::path::Path;

use super::create::check_size;
use super::error::{ImageError, Result};
use super::tool;

/// Extend `file` to `new_size` bytes and grow its ext4 filesystem to fill it, offline.
/// The new space is a hole, so growing costs no disk space. Shrinking is refused.
pub fn grow(file: &Path, new_size: u64) -> Result<()> {
    check_size(new_size)?;
    let handle = OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(|e| ImageError::io("open", file, e))?;
    let current = handle
        .metadata()
        .map_err(|e| ImageError::io("stat", file, e))?
        .len();
    if new_size < current {
        return Err(ImageError::Shrink {
            path: file.to_owned(),
            current,
            requested: new_size,
        });
    }
    if new_size == current {
        return Ok(());
    }
    handle
        .set_len(new_size)
        .map_err(|e| ImageError::io("truncate", file, e))?;
    // -f: resize2fs otherwise insists on a fresh e2fsck whenever the image was mounted since
    // its last check, which is always true for a built cache. Images reach here from frozen
    // snapshots, which were checked (`fsck`) before freezing and never written since.
    if let Err(e) = tool::run_ok("resize2fs", &["-f"], file) {
        // resize2fs fails before it changes anything it cannot undo; give the file back its
        // size so it still matches its filesystem.
        if let Err(t) = handle.set_len(current) {
            tracing::warn!(?file, error = %t, "cannot restore image size after failed resize");
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_refuses_to_shrink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        crate::image::create(&path, 64 << 20, "grow").unwrap();
        grow(&path, 128 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 128 << 20);
        crate::image::fsck(&path).unwrap();
        grow(&path, 128 << 20).unwrap();
        let err = grow(&path, 64 << 20).unwrap_err();
        assert!(matches!(err, ImageError::Shrink { .. }), "{err}");
        assert!(err.to_string().contains("only grow"));
    }
}
