//! Creates that name their disk (`metadata.name`): idempotent by name, so a client that lost
//! the 201 and sends the same request again gets the disk it made, not a second one.
//!
//! - A create holds its name's lock from the look-up to the store write: concurrent creates
//!   of one name run one after another, and every one after the first finds the disk.
//! - A name that exists answers that disk (200) when the request is the one it was made
//!   from (compared as the daemon reads it: `cacheId: auto` and no cacheId are one request),
//!   and 409 naming the fields that differ when it is not.
//! - That answer carries a new bind token: the store keeps only the digest of the one the
//!   lost 201 held, so the retry could not bind the disk otherwise. The earlier token stops
//!   binding new containers; containers already made keep running.
//! - The name is recorded as being made before anything of it exists (`disk_creates`), so
//!   the start after a crash knows its files are an unfinished disk's, not a caller's
//!   directory under the same `disks/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tracing::{info, warn};

use super::{internal, token};
use crate::daemon::{Daemon, DaemonError, Reply};
use crate::objects::{DiskSpec, ValidDisk};

/// One lock per name being created. Entries are weak: a name nobody holds costs nothing,
/// and is pruned on the next lock.
#[derive(Debug, Default)]
pub(crate) struct NameLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl NameLocks {
    /// Waits until no other create of `name` runs; held until the guard drops.
    pub(super) async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, held| held.strong_count() > 0);
            match map.get(name).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(name.to_owned(), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// The stored disk `name` as the answer to a repeated create, with a new bind token; None
/// when no disk has that name; 409 when the disk was made from another request.
pub(super) fn existing(
    d: &Daemon,
    name: &str,
    req: &ValidDisk,
) -> Result<Option<Reply>, DaemonError> {
    let Some(mut disk) = d.inner.store.get_disk(name).map_err(internal)? else {
        return Ok(None);
    };
    let differ = differences(&disk.spec, &req.spec);
    if !differ.is_empty() {
        return Err(DaemonError::Conflict(format!(
            "disk {name:?} exists, made from a different request: {}; delete it first \
             (`imagecache disk delete {name}`) or give this request another name",
            differ.join("; ")
        )));
    }
    let (bind_token, bind_sha256) = token::issue();
    d.inner
        .store
        .replace_disk_bind_sha256(name, &bind_sha256)
        .map_err(internal)?;
    info!(disk = %name, "disk create repeated: answering the existing disk with a new bind token");
    if let Some(status) = disk.status.as_mut() {
        status.bind_token = Some(bind_token);
    }
    Ok(Some(Reply::ExistingDisk(Box::new(disk))))
}

/// A spec as the daemon reads it: the defaults spelt out or left out are the same request.
fn effective(spec: &DiskSpec) -> DiskSpec {
    let mut spec = spec.clone();
    if matches!(spec.cache_id.as_deref(), None | Some("") | Some("auto")) {
        spec.cache_id = None;
    }
    if spec.mount == Some(true) {
        spec.mount = None;
    }
    spec
}

/// Each field where `asked` differs from the disk's `made`, with both values (a pod only by
/// name: it is too long to repeat).
pub(super) fn differences(made: &DiskSpec, asked: &DiskSpec) -> Vec<String> {
    let (made, asked) = (effective(made), effective(asked));
    let mut differ = Vec::new();
    let mut compare = |field: &str, made: serde_json::Value, asked: serde_json::Value| {
        if made != asked {
            differ.push(format!(
                "spec.{field} is {asked} here but {made} on the disk"
            ));
        }
    };
    compare("images", json(&made.images), json(&asked.images));
    compare(
        "annotations",
        json(&made.annotations),
        json(&asked.annotations),
    );
    compare("cacheId", json(&made.cache_id), json(&asked.cache_id));
    compare("sizeGiB", json(&made.size_gib), json(&asked.size_gib));
    compare("mount", json(&made.mount), json(&asked.mount));
    compare("mountPath", json(&made.mount_path), json(&asked.mount_path));
    if made.pod != asked.pod {
        differ.push("spec.pod is not the pod the disk was made for".into());
    }
    differ
}

/// A field as JSON, as the comparison's message shows it.
fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// The record that disk `name` is being made: ended when the guard drops unless the disk's
/// file is still there (a create whose undo failed), which the next start then removes.
pub(super) struct Pending<'d> {
    d: &'d Daemon,
    name: String,
}

impl<'d> Pending<'d> {
    pub(super) fn begin(d: &'d Daemon, name: &str) -> Result<Self, DaemonError> {
        d.inner.store.begin_disk_create(name).map_err(|e| {
            if !e.is_disk_full() {
                return internal(e);
            }
            d.metrics().error("host_full");
            let root = &d.inner.config.root;
            let state = crate::daemon::build::host_space::nearly_full(root);
            DaemonError::Unavailable(super::clone::host_full_message(root, state, &e))
        })?;
        Ok(Pending {
            d,
            name: name.to_owned(),
        })
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let stored = matches!(self.d.inner.store.get_disk(&self.name), Ok(Some(_)));
        if !stored && super::image_path(self.d, &self.name).exists() {
            warn!(disk = %self.name, "an unfinished disk's file is left: it goes at the next start");
            return;
        }
        if let Err(e) = self.d.inner.store.end_disk_create(&self.name) {
            warn!(disk = %self.name, error = %e, "cannot clear the record of a finished disk create");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DiskSpec {
        DiskSpec {
            images: vec!["nginx:1.27".into()],
            size_gib: Some(20),
            ..Default::default()
        }
    }

    #[test]
    fn the_same_request_spelt_either_way_matches() {
        let mut spelt = spec();
        spelt.cache_id = Some("auto".into());
        spelt.mount = Some(true);
        assert!(differences(&spec(), &spelt).is_empty());
        assert!(differences(&spelt, &spec()).is_empty());
    }

    #[test]
    fn each_difference_is_named_with_both_values() {
        let mut other = spec();
        other.size_gib = Some(30);
        other.mount = Some(false);
        other.pod = Some(serde_json::json!({"kind": "Pod"}));
        let differ = differences(&spec(), &other);
        assert_eq!(differ.len(), 3, "{differ:?}");
        assert_eq!(differ[0], "spec.sizeGiB is 30 here but 20 on the disk");
        assert_eq!(differ[1], "spec.mount is false here but null on the disk");
        assert!(differ[2].starts_with("spec.pod"), "{differ:?}");
    }
}
