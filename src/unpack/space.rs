//! Failing fast, and usefully, when the cache filesystem fills up.
//!
//! All layers of a cache unpack in parallel into one filesystem, so free space is a moving
//! target: the estimate here only decides when to ask the kernel again, and only a fresh
//! statvfs (or a real ENOSPC from a write) ever declares the filesystem full.

use std::os::fd::BorrowedFd;

use crate::sys::fsops;

pub(crate) struct Space {
    /// Free bytes as last seen, minus what this layer wrote since.
    estimate: u64,
    /// Set once space ran out: the entry it happened at and the free bytes then.
    exhausted: Option<(String, u64)>,
}

/// ext4's block size; a file occupies whole blocks.
const BLOCK: u64 = 4096;

impl Space {
    pub(crate) fn new() -> Self {
        // Zero forces a statvfs before the first file with data.
        Space {
            estimate: 0,
            exhausted: None,
        }
    }

    /// Whether a file of `size` bytes can still be written.
    pub(crate) fn fits(&mut self, root: BorrowedFd<'_>, size: u64) -> bool {
        let blocks = size.div_ceil(BLOCK) * BLOCK;
        if blocks > self.estimate {
            // Cannot measure: let the writes find out.
            self.estimate = fsops::free_bytes(root).unwrap_or(u64::MAX);
            if size > self.estimate {
                return false;
            }
        }
        self.estimate = self.estimate.saturating_sub(blocks);
        true
    }

    /// Stop writing from here on; later entries are only measured.
    pub(crate) fn exhaust(&mut self, root: BorrowedFd<'_>, entry: String) {
        if self.exhausted.is_none() {
            let free = fsops::free_bytes(root).unwrap_or(0);
            self.exhausted = Some((entry, free));
        }
    }

    pub(crate) fn is_exhausted(&self) -> bool {
        self.exhausted.is_some()
    }

    pub(crate) fn take_exhausted(&mut self) -> Option<(String, u64)> {
        self.exhausted.take()
    }
}
