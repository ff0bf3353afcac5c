//! What a snapshot's directory uses, counted as containerd's overlayfs snapshotter counts it:
//! allocated bytes (st_blocks) and distinct inodes, each hardlinked inode once.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{Result, SnapshotError, Usage};
use crate::failure::Failure;

/// Walks `dir` without following symlinks below it (the top may be one: cache-backed
/// layers are reached through a symlink into the cache's image).
pub fn measure(dir: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    let walk_err = |p: &Path, e: std::io::Error| {
        SnapshotError::Internal(Failure::new(format!("cannot measure {}", p.display()), e))
    };
    let top = std::fs::metadata(dir).map_err(|e| walk_err(dir, e))?;
    count(&mut seen, &mut usage, &top);
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).map_err(|e| walk_err(&path, e))? {
            let entry = entry.map_err(|e| walk_err(&path, e))?;
            let meta = entry.metadata().map_err(|e| walk_err(&entry.path(), e))?;
            count(&mut seen, &mut usage, &meta);
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

fn count(seen: &mut HashSet<(u64, u64)>, usage: &mut Usage, meta: &std::fs::Metadata) {
    if seen.insert((meta.dev(), meta.ino())) {
        usage.inodes += 1;
        usage.size += (meta.blocks() * 512) as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_count_once_and_the_top_may_be_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("d");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(dir.join("sub/a"), dir.join("b")).unwrap();
        std::os::unix::fs::symlink(&dir, t.path().join("link")).unwrap();
        let direct = measure(&dir).unwrap();
        // d, sub and one inode for a and b.
        assert_eq!(direct.inodes, 3);
        assert!(direct.size >= 10_000, "{direct:?}");
        assert_eq!(measure(&t.path().join("link")).unwrap(), direct);
    }
}
