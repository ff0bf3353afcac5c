//! The disks a restart has not yet put back. The daemon serves while it adopts them (a node
//! with 1,000 disks would otherwise keep the kubelet and containerd waiting for seconds), so
//! until its turn comes a disk reads `Adopting` and nothing may act on it: its device and
//! mount are not yet known to be what the store says. A request that would act on one is
//! answered "unavailable, retry" (503 with Retry-After; gRPC Unavailable), not held: a
//! node's whole adoption takes about as long as a client's first retry.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
pub(crate) struct Adoption {
    pending: Mutex<HashSet<String>>,
}

impl Adoption {
    fn pending(&self) -> MutexGuard<'_, HashSet<String>> {
        // Nothing panics while holding it; a poisoned set is still the truth.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every disk in `ids` waits for adoption from now on.
    pub fn begin(&self, ids: impl IntoIterator<Item = String>) {
        self.pending().extend(ids);
    }

    pub fn is_pending(&self, id: &str) -> bool {
        self.pending().contains(id)
    }

    pub fn count(&self) -> usize {
        self.pending().len()
    }

    /// `id` is adopted (or found broken and marked so): it may be acted on.
    pub fn done(&self, id: &str) {
        self.pending().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_waits_from_begin_until_done() {
        let a = Adoption::default();
        a.begin(["disk-a".to_owned(), "disk-b".to_owned()]);
        assert!(a.is_pending("disk-a") && a.is_pending("disk-b"));
        a.done("disk-b");
        assert!(a.is_pending("disk-a") && !a.is_pending("disk-b"));
        assert_eq!(a.count(), 1);
        a.done("disk-a");
        assert_eq!(a.count(), 0);
    }
}
