//! Can the state root share extents? Asked once at startup, answered by trying.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::io::Errno;

use crate::sys::Sys;

use super::error::{DiskError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflinkSupport {
    /// FICLONE worked between two files in the directory.
    pub supported: bool,
    /// The filesystem there: "xfs", "btrfs", "ext4", "tmpfs", …
    pub fs_type: String,
}

static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Whether FICLONE works in `dir` (tried with two temporary files, removed afterwards), and
/// the type of the filesystem there. The filesystem type alone would not do: XFS made with
/// `reflink=0` cannot clone, and a filesystem we do not know might.
pub fn probe_reflink(sys: &dyn Sys, dir: &Path) -> Result<ReflinkSupport> {
    let fs_type = sys
        .fs_type(dir)
        .map_err(|e| DiskError::sys("probe filesystem of", dir, e))?
        .name();
    let seq = PROBE_SEQ.fetch_add(1, Ordering::Relaxed);
    let name = |what: &str| -> PathBuf {
        dir.join(format!(
            ".imagecache-reflink-probe-{}-{seq}.{what}",
            std::process::id()
        ))
    };
    let (src, dst) = (name("src"), name("dst"));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&src)
        .and_then(|f| std::io::Write::write_all(&mut &f, &[0x5a; 4096]));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&src);
        return Err(DiskError::io("create reflink probe file", &src, e));
    }
    let cloned = sys.reflink(&src, &dst);
    for f in [&src, &dst] {
        if let Err(e) = std::fs::remove_file(f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = ?f, error = %e, "cannot remove reflink probe file");
            }
        }
    }
    let supported = match cloned {
        Ok(()) => true,
        Err(e)
            if [Errno::OPNOTSUPP, Errno::XDEV, Errno::INVAL, Errno::NOTTY]
                .iter()
                .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
        {
            false
        }
        Err(e) => return Err(DiskError::sys("probe reflink in", dir, e)),
    };
    Ok(ReflinkSupport { supported, fs_type })
}
