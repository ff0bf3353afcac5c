//! Byte counters of a build, shared between its layer tasks and the status writer.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
}

impl Progress {
    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes back when a layer is retried, so the percentage never counts a byte twice.
    pub fn sub(&self, n: u64) {
        self.done.fetch_sub(n, Ordering::Relaxed);
    }

    /// "NN%", never 100% before every byte is in.
    pub fn percent(&self) -> String {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed).min(total);
        if total == 0 {
            return "0%".into();
        }
        let pct = if done == total {
            100
        } else {
            (done * 100 / total).min(99)
        };
        format!("{pct}%")
    }
}
