//! Who may run on a disk. Any pod can annotate a container with any disk's id (ids show in
//! the mount table, under `disks/`, in pods' annotations), so the id alone binds nothing:
//! the container must also give the bind token that only the disk's create returned. The
//! check runs before a Prepare records anything or makes any directory, so a refused
//! container leaves no trace on the disk.

use std::collections::BTreeMap;

use tracing::warn;

use super::{Daemon, Result, SnapshotError, LABEL_DISK, LABEL_DISK_TOKEN};
use crate::daemon::disks::token;

/// What was wrong with the token a container gave for a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Wrong,
    /// The disk was made before disks had tokens: nothing can prove a container is its pod's.
    NeverIssued,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "no token",
            Refusal::Wrong => "wrong token",
            Refusal::NeverIssued => "disk has no token",
        }
    }

    fn message(self, disk_id: &str) -> String {
        match self {
            Refusal::Missing => format!(
                "disk {disk_id} refused: the container gives no bind token; add the annotation \
                 {LABEL_DISK_TOKEN} with the status.bindToken that the disk's create returned"
            ),
            Refusal::Wrong => format!(
                "disk {disk_id} refused: the container's {LABEL_DISK_TOKEN} annotation is not \
                 this disk's bind token; give the status.bindToken that the disk's create \
                 returned (a disk runs only the containers of the pod it was made for)"
            ),
            Refusal::NeverIssued => format!(
                "disk {disk_id} refused: it was created before disks had bind tokens, so no \
                 container can show it is the disk's; delete the disk, create it again, and \
                 give the status.bindToken that create returns in the {LABEL_DISK_TOKEN} \
                 annotation"
            ),
        }
    }
}

/// Lets snapshot `key` bind disk `disk_id` only with the disk's token (`given`, from
/// [`LABEL_DISK_TOKEN`]). Neither the token nor anything derived from it is logged.
pub(super) fn authorize(d: &Daemon, key: &str, disk_id: &str, given: Option<&str>) -> Result<()> {
    let stored = d.inner.store.disk_bind_sha256(disk_id)?;
    let refusal = match (stored, given) {
        (Some(stored), Some(given)) if token::matches(&stored, given) => return Ok(()),
        (Some(_), Some(_)) => Refusal::Wrong,
        (Some(_), None) => Refusal::Missing,
        (None, _) => {
            if d.inner.store.get_disk(disk_id)?.is_none() {
                return Err(SnapshotError::NotFound(format!(
                    "disk {disk_id:?} (named by the container's {LABEL_DISK} annotation)"
                )));
            }
            Refusal::NeverIssued
        }
    };
    warn!(disk = %disk_id, snapshot = %key, reason = refusal.as_str(), "refused to bind a container to a disk");
    Err(SnapshotError::PermissionDenied(refusal.message(disk_id)))
}

/// `labels` without a bind token. Only a Prepare uses one; given to any other request, the
/// token is a secret all the same and is not recorded (containerd passes every
/// `containerd.io/snapshot/` label on, with `ctr snapshots label` among others).
pub(super) fn without_token(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.remove(LABEL_DISK_TOKEN);
    labels
}
