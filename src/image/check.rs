//! Checking an image before it is frozen.

use std::path::Path;

use super::error::{ImageError, Result};
use super::tool;

/// `e2fsck -fn`: a forced, read-only check of an unmounted image. `-n` opens the file read
/// only and answers "no" to every repair, so a damaged image is reported, never patched up
/// behind the caller's back (a repaired cache could silently miss files).
pub fn fsck(file: &Path) -> Result<()> {
    let output = tool::run("e2fsck", &["-f", "-n"], file)?;
    if output.status.success() {
        return Ok(());
    }
    Err(ImageError::Damaged {
        path: file.to_owned(),
        status: output.status,
        output: tool::combined_output(&output),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_reported_with_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![0xa5u8; 1 << 20]).unwrap();
        let err = fsck(&path).unwrap_err();
        let ImageError::Damaged { output, .. } = &err else {
            panic!("unexpected {err}");
        };
        assert!(!output.is_empty());
        assert!(err.to_string().contains("rebuild the cache"));
    }
}
