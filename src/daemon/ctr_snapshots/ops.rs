//! Each snapshotter request, step by step. A check and the record change it guards run
//! under the snapshotter's lock (`State::changing`), so they never interleave with another
//! request's; reads and filesystem work (directory walks, removals, cache mounts) run outside
//! it, beside every other request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use super::filter::Filters;
use super::mounts::{self, MountSpec, Upper};
use super::{bind, cachemount, paths, usage};
use super::{Daemon, Result, SnapshotError, SnapshotInfo, SnapshotReply, SnapshotRequest};
use super::{Usage, LABEL_DISK, LABEL_DISK_TOKEN, LABEL_TARGET};
use crate::access;
use crate::daemon::image_access;
use crate::failure::Failure;
use crate::store::{Backing, NewSnapshot, SnapshotKind, SnapshotRecord};

pub fn handle(d: &Daemon, request: SnapshotRequest) -> Result<SnapshotReply> {
    use SnapshotRequest as R;
    match request {
        R::Prepare {
            key,
            parent,
            labels,
        } => prepare(d, &key, &parent, labels).map(SnapshotReply::Mounts),
        R::View {
            key,
            parent,
            labels,
        } => view(d, &key, &parent, bind::without_token(labels)).map(SnapshotReply::Mounts),
        R::Mounts { key } => mounts_of(d, &existing(d, &key)?).map(SnapshotReply::Mounts),
        R::Commit { name, key, labels } => {
            commit(d, &name, &key, bind::without_token(labels)).map(|()| SnapshotReply::Done)
        }
        R::Remove { key } => remove(d, &key).map(|()| SnapshotReply::Done),
        R::Stat { key } => Ok(SnapshotReply::Info(info_of(existing(d, &key)?))),
        R::Update {
            name,
            labels,
            fields,
        } => update(d, &name, bind::without_token(labels), &fields).map(SnapshotReply::Info),
        R::List { filters } => list(d, &filters).map(SnapshotReply::List),
        R::Usage { key } => usage_of(d, &existing(d, &key)?).map(SnapshotReply::Usage),
        R::Cleanup => cleanup(d).map(|()| SnapshotReply::Done),
    }
}

fn now() -> i64 {
    super::super::clock::now_nanos()
}

fn existing(d: &Daemon, key: &str) -> Result<SnapshotRecord> {
    d.inner
        .store
        .get_ctr_snapshot(key)?
        .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key:?}")))
}

pub(super) fn info_of(r: SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        name: r.key,
        parent: r.parent,
        kind: r.kind,
        created: r.created,
        updated: r.updated,
        labels: r.labels,
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> SnapshotError {
    SnapshotError::Internal(Failure::new(format!("cannot {what} {}", path.display()), e))
}

fn require_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(SnapshotError::InvalidArgument(
            "snapshot key is empty: containerd always names the snapshot it asks for".into(),
        ));
    }
    Ok(())
}

/// The parent's record, which must be committed; `None` for no parent.
fn committed_parent(d: &Daemon, parent: &str) -> Result<Option<SnapshotRecord>> {
    if parent.is_empty() {
        return Ok(None);
    }
    let record = d
        .inner
        .store
        .get_ctr_snapshot(parent)?
        .ok_or_else(|| SnapshotError::NotFound(format!("parent snapshot {parent:?}")))?;
    if record.kind != SnapshotKind::Committed {
        return Err(SnapshotError::InvalidArgument(format!(
            "parent {parent:?} is {}, not committed: only committed snapshots can be parents",
            record.kind.as_str()
        )));
    }
    Ok(Some(record))
}

/// The committed chain below a snapshot, nearest first.
fn chain(d: &Daemon, first: Option<SnapshotRecord>) -> Result<Vec<SnapshotRecord>> {
    let mut out = Vec::new();
    let mut next = first;
    while let Some(r) = next {
        next = match r.parent.as_deref() {
            Some(p) => Some(d.inner.store.get_ctr_snapshot(p)?.ok_or_else(|| {
                SnapshotError::Internal(Failure::msg(format!(
                    "snapshot {:?} names parent {p:?}, which is not recorded",
                    r.key
                )))
            })?),
            None => None,
        };
        out.push(r);
        if out.len() > 4096 {
            return Err(SnapshotError::Internal(Failure::msg(
                "snapshot chain loops",
            )));
        }
    }
    Ok(out)
}

fn prepare(
    d: &Daemon,
    key: &str,
    parent: &str,
    mut labels: BTreeMap<String, String>,
) -> Result<Vec<MountSpec>> {
    require_key(key)?;
    // A secret: checked here, then gone, so no record, Stat or List can show it.
    let token = labels.remove(LABEL_DISK_TOKEN);
    // Before anything is recorded or made: a container refused leaves nothing behind.
    if let Some(disk_id) = labels.get(LABEL_DISK) {
        bind::authorize(d, key, disk_id, token.as_deref())?;
    }
    if d.inner.store.get_ctr_snapshot(key)?.is_some() {
        return Err(SnapshotError::AlreadyExists(format!("snapshot {key:?}")));
    }
    // The image holding the layer is mounted before the lock is taken, and pinned so that it
    // stays mounted until the record is written.
    let offer = match labels.get(LABEL_TARGET) {
        Some(target) => cached_layer(d, target, committed_parent(d, parent)?.as_ref(), &labels)?,
        None => None,
    };
    let prepared = {
        let _changing = d.inner.snapshotter.changing();
        prepare_locked(d, key, parent, &labels, offer.as_ref())
    };
    if let Some(offer) = offer {
        let digest = offer.pinned.digest.clone();
        drop(offer);
        // A no-op when the layer was recorded on it (the image is in use).
        if let Err(e) = cachemount::release_if_unused(d, &digest) {
            warn!(%digest, error = %e, "cannot unmount a cache image no snapshot uses; Cleanup retries");
        }
    }
    mounts_of(d, &prepared?)
}

/// The steps of a Prepare that check and write records.
fn prepare_locked(
    d: &Daemon,
    key: &str,
    parent: &str,
    labels: &BTreeMap<String, String>,
    offer: Option<&CachedLayer>,
) -> Result<SnapshotRecord> {
    if d.inner.store.get_ctr_snapshot(key)?.is_some() {
        return Err(SnapshotError::AlreadyExists(format!("snapshot {key:?}")));
    }
    let parent_record = committed_parent(d, parent)?;
    if let Some(target) = labels.get(LABEL_TARGET) {
        record_cached_layer(d, target, parent_record.as_ref(), labels, offer)?;
    }
    if let Some(disk_id) = labels.get(LABEL_DISK) {
        return prepare_on_disk(d, key, parent_record, disk_id.clone(), labels);
    }
    let root = &d.inner.config.root;
    let record = record_local(
        d,
        key,
        parent_record.as_ref(),
        SnapshotKind::Active,
        labels,
        |id| {
            vec![
                (paths::fs_dir(root, id), access::LAYER_DIR),
                (paths::work_dir(root, id), access::WORK_DIR),
            ]
        },
    )?;
    debug!(%key, id = record.id, "prepared active snapshot");
    Ok(record)
}

/// Records a snapshot on node storage and makes its directories (`dirs` of its id, each with
/// its mode, in a directory of the snapshot's own that only root may enter); a failure to
/// make them takes the record back.
fn record_local(
    d: &Daemon,
    key: &str,
    parent: Option<&SnapshotRecord>,
    kind: SnapshotKind,
    labels: &BTreeMap<String, String>,
    dirs: impl Fn(i64) -> Vec<(PathBuf, u32)>,
) -> Result<SnapshotRecord> {
    let record = d.inner.store.insert_ctr_snapshot(&NewSnapshot {
        key,
        parent: parent.map(|p| p.key.as_str()),
        kind,
        labels,
        now: now(),
        backing: &Backing::Local,
    })?;
    crate::fault::point("snapshotter.prepare");
    let own = paths::snapshot_dir(&d.inner.config.root, record.id);
    let made = std::iter::once((own, access::PRIVATE_DIR))
        .chain(dirs(record.id))
        .try_for_each(|(dir, mode)| {
            access::create_dir_with_mode(&dir, mode).map_err(|e| io_err("create", &dir, e))
        });
    if let Err(e) = made {
        d.inner.store.delete_ctr_snapshot(key)?;
        return Err(e);
    }
    Ok(record)
}

/// A layer a Ready cache holds, its image mounted and pinned, checked to have been recorded
/// over the chain a Prepare stacks it on.
#[derive(Debug)]
struct CachedLayer {
    pinned: cachemount::Pinned,
    cache_id: String,
    /// The layer's directory in the mounted image.
    dir: PathBuf,
    /// The parent's chainID it was checked against (none: a base layer).
    parent_chain: Option<String>,
}

/// The Ready cache holding layer `target` over the very chain the request stacks it on, its
/// image mounted (outside the lock: a mount takes tens of milliseconds); `None` when no
/// cache holds it so (containerd applies the layer itself), or a snapshot of that name is
/// recorded already.
///
/// The label is tenant input: CRI copies a pod's `containerd.io/snapshot.ref` annotation
/// into its sandbox's Prepare, and containerd's metadata layer later answers a pull of the
/// real image "already exists" by that name alone, whatever the parent. So a layer is
/// offered only when the parent's chainID is the one the cache recorded below it and the
/// chainID recomputes from that parent and the layer's diffID; a record of that name must
/// never exist over any other chain.
fn cached_layer(
    d: &Daemon,
    target: &str,
    parent: Option<&SnapshotRecord>,
    labels: &BTreeMap<String, String>,
) -> Result<Option<CachedLayer>> {
    if d.inner.store.get_ctr_snapshot(target)?.is_some() {
        return Ok(None);
    }
    let parent_key = parent.map_or("", |p| p.key.as_str());
    let parent_chain = match parent {
        None => None,
        Some(p) => match chain_id_of(p) {
            Some(chain) => Some(chain),
            // A parent whose chain is unknown (committed without containerd's label) cannot
            // be matched against what a cache recorded.
            None => {
                debug!(layer = %target, parent = %p.key, "parent has no chainID: layer not offered");
                return Ok(None);
            }
        },
    };
    for layer in d.inner.store.caches_with_layer(target)? {
        let images = d
            .inner
            .store
            .cache_by_id(&layer.cache_id)?
            .and_then(|c| c.status)
            .map(|s| s.images)
            .unwrap_or_default();
        if !image_access::layer_offer_allowed(&images, target, labels) {
            info!(layer = %target, cache = %layer.cache_id, "cached layer not offered: only images that needed credentials hold it, and this pull is not for one of them; containerd fetches it");
            d.metrics().credentials_refused.inc();
            continue;
        }
        let pinned = match cachemount::pin(d, &layer.digest) {
            Ok(p) => p,
            Err(e) => {
                warn!(cache = %layer.cache_id, error = %e, "cannot mount cache image; trying the next");
                continue;
            }
        };
        let dir = paths::layer_in(&pinned.mountpoint, target);
        let unusable = if !dir.is_dir() {
            warn!(cache = %layer.cache_id, layer = %target, "indexed layer missing from the cache image");
            Some(false)
        } else if let Err(why) = recorded_over(&pinned.mountpoint, target, parent_chain) {
            info!(layer = %target, parent = %parent_key, cache = %layer.cache_id, reason = %why, "cached layer not offered: containerd applies it");
            Some(true)
        } else {
            None
        };
        if let Some(give_up) = unusable {
            drop(pinned);
            cachemount::release_if_unused(d, &layer.digest)?;
            if give_up {
                return Ok(None);
            }
            continue;
        }
        return Ok(Some(CachedLayer {
            pinned,
            cache_id: layer.cache_id,
            dir,
            parent_chain: parent_chain.map(str::to_owned),
        }));
    }
    Ok(None)
}

/// Under the lock: answers AlreadyExists when layer `target` is recorded over `parent`
/// already, or records it as committed snapshot `target` backed by `offer`'s cache and
/// answers the same: containerd then looks it up by that label and parent, and fetches and
/// applies nothing. Returns Ok when the layer is not offered (containerd applies it itself).
fn record_cached_layer(
    d: &Daemon,
    target: &str,
    parent: Option<&SnapshotRecord>,
    labels: &BTreeMap<String, String>,
    offer: Option<&CachedLayer>,
) -> Result<()> {
    let parent_key = parent.map_or("", |p| p.key.as_str());
    if let Some(have) = d.inner.store.get_ctr_snapshot(target)? {
        if have.kind == SnapshotKind::Committed
            && have.parent.as_deref().unwrap_or("") == parent_key
        {
            return Err(SnapshotError::AlreadyExists(format!(
                "snapshot {target:?} (layer already present)"
            )));
        }
        // A snapshot of that name over another parent: let containerd apply this layer
        // under its own key rather than hand it a chain that is not its own.
        return Ok(());
    }
    let Some(offer) = offer else {
        return Ok(());
    };
    // The parent was read again under the lock: it must still be the chain checked.
    if parent.and_then(chain_id_of) != offer.parent_chain.as_deref() {
        return Ok(());
    }
    let digest = &offer.pinned.digest;
    let record = d.inner.store.insert_ctr_snapshot(&NewSnapshot {
        key: target,
        parent: parent.map(|p| p.key.as_str()),
        kind: SnapshotKind::Committed,
        labels,
        now: now(),
        backing: &Backing::Cache {
            digest: digest.clone(),
            chain_id: target.to_owned(),
        },
    })?;
    let root = &d.inner.config.root;
    let linked =
        access::create_dir_with_mode(&paths::snapshot_dir(root, record.id), access::PRIVATE_DIR)
            .and_then(|()| std::os::unix::fs::symlink(&offer.dir, paths::fs_dir(root, record.id)));
    if let Err(e) = linked {
        d.inner.store.delete_ctr_snapshot(target)?;
        return Err(io_err("link", &paths::fs_dir(root, record.id), e));
    }
    info!(layer = %target, cache = %offer.cache_id, "layer served from cache: containerd fetches nothing");
    Err(SnapshotError::AlreadyExists(format!(
        "snapshot {target:?} (layer held by cache {})",
        offer.cache_id
    )))
}

/// Whether the cache mounted at `cache_root` recorded layer `target` over the chain
/// `parent_chain` (none: as a base layer), with a chainID that recomputes from that parent
/// and the layer's diffID; otherwise what differs.
pub(super) fn recorded_over(
    cache_root: &Path,
    target: &str,
    parent_chain: Option<&str>,
) -> std::result::Result<(), String> {
    let recorded = crate::layout::read_snapshots(cache_root)
        .map_err(|e| format!("cannot read the cache's snapshots.json: {e}"))?;
    let entry = recorded
        .get(target)
        .ok_or_else(|| "the cache's snapshots.json does not list it".to_owned())?;
    if entry.parent.as_deref() != parent_chain {
        return Err(format!(
            "asked over chain {}, recorded over {}",
            parent_chain.unwrap_or("(none)"),
            entry.parent.as_deref().unwrap_or("(none)")
        ));
    }
    let computed = crate::registry::chain_id_over(parent_chain, &entry.diff_id);
    if computed != target {
        return Err(format!(
            "its parent and diffID {} make chainID {computed}",
            entry.diff_id
        ));
    }
    Ok(())
}

/// The chainID of a committed snapshot: the label containerd's unpacker put on it, or the
/// name a cache-backed layer carries.
pub(super) fn chain_id_of(r: &SnapshotRecord) -> Option<&str> {
    if let Backing::Cache { chain_id, .. } = &r.backing {
        return Some(chain_id);
    }
    r.labels.get(LABEL_TARGET).map(String::as_str)
}

/// A container bound to a per-pod disk: every layer below it from the disk's own layer
/// directories, its upper and work directories on the disk, so its writes are bounded by the
/// disk and go with it.
fn prepare_on_disk(
    d: &Daemon,
    key: &str,
    parent: Option<SnapshotRecord>,
    disk_id: String,
    labels: &BTreeMap<String, String>,
) -> Result<SnapshotRecord> {
    let disk_root = disk_mountpoint(d, &disk_id)?;
    let mut lowers = Vec::new();
    for layer in chain(d, parent.clone())? {
        let chain_id = chain_id_of(&layer).ok_or_else(|| {
            SnapshotError::FailedPrecondition(format!(
                "layer snapshot {:?} has no chainID label, so disk {disk_id} cannot supply it",
                layer.key
            ))
        })?;
        let dir = paths::layer_in(&disk_root, chain_id);
        if !dir.is_dir() {
            return Err(SnapshotError::FailedPrecondition(format!(
                "disk {disk_id} does not hold layer {chain_id} of this image: create the disk \
                 from a cache that holds the image (imagecache disk create --image ...)"
            )));
        }
        lowers.push(dir);
    }
    let record = d.inner.store.insert_ctr_snapshot(&NewSnapshot {
        key,
        parent: parent.as_ref().map(|p| p.key.as_str()),
        kind: SnapshotKind::Active,
        labels,
        now: now(),
        backing: &Backing::Disk {
            disk_id: disk_id.clone(),
        },
    })?;
    if let Err(e) = lay_out_disk_snapshot(d, record.id, &disk_root, &lowers) {
        d.inner.store.delete_ctr_snapshot(key)?;
        if let Err(cleanup) = remove_dirs(d, &record, Some(&disk_root)) {
            // The next Cleanup removes what this left: the record is already gone.
            warn!(%key, error = %cleanup, "cannot remove a half-made disk snapshot's directories");
        }
        return Err(e);
    }
    info!(%key, disk = %disk_id, "container snapshot on disk");
    Ok(record)
}

fn lay_out_disk_snapshot(d: &Daemon, id: i64, disk_root: &Path, lowers: &[PathBuf]) -> Result<()> {
    let root = &d.inner.config.root;
    let on_disk = paths::disk_container_dir(disk_root, id);
    for (dir, mode) in [
        (on_disk.join("fs"), access::LAYER_DIR),
        (on_disk.join("work"), access::WORK_DIR),
        (paths::snapshot_dir(root, id), access::PRIVATE_DIR),
        (paths::fs_dir(root, id), access::LAYER_DIR),
    ] {
        access::create_dir_with_mode(&dir, mode).map_err(|e| io_err("create", &dir, e))?;
    }
    for (n, lower) in lowers.iter().enumerate() {
        let link = paths::lower_link(root, id, n);
        if let Some(dir) = link.parent() {
            access::create_dir_with_mode(dir, access::PRIVATE_DIR)
                .map_err(|e| io_err("create", dir, e))?;
        }
        std::os::unix::fs::symlink(lower, &link).map_err(|e| io_err("link", &link, e))?;
    }
    Ok(())
}

fn disk_mountpoint(d: &Daemon, disk_id: &str) -> Result<PathBuf> {
    // Its mount is not yet known to be the disk's: containerd retries an Unavailable.
    if d.inner.adoption.is_pending(disk_id) {
        return Err(SnapshotError::Unavailable(
            crate::daemon::DaemonError::Adopting(disk_id.to_owned()).to_string(),
        ));
    }
    let disk = d.inner.store.get_disk(disk_id)?.ok_or_else(|| {
        SnapshotError::NotFound(format!(
            "disk {disk_id:?} (named by the container's {LABEL_DISK} annotation)"
        ))
    })?;
    let mountpoint = disk.status.and_then(|s| s.mountpoint).ok_or_else(|| {
        SnapshotError::FailedPrecondition(format!(
            "disk {disk_id} is not mounted: create it with a mountpoint (the default) to \
                 run containers from it"
        ))
    })?;
    let mountpoint = PathBuf::from(mountpoint);
    if d.inner.sys.mount_source(&mountpoint)?.is_none() {
        return Err(SnapshotError::FailedPrecondition(format!(
            "disk {disk_id} is not mounted at {}",
            mountpoint.display()
        )));
    }
    Ok(mountpoint)
}

fn view(
    d: &Daemon,
    key: &str,
    parent: &str,
    labels: BTreeMap<String, String>,
) -> Result<Vec<MountSpec>> {
    require_key(key)?;
    let root = &d.inner.config.root;
    let record = {
        let _changing = d.inner.snapshotter.changing();
        let parent_record = committed_parent(d, parent)?;
        record_local(
            d,
            key,
            parent_record.as_ref(),
            SnapshotKind::View,
            &labels,
            |id| vec![(paths::fs_dir(root, id), access::LAYER_DIR)],
        )?
    };
    mounts_of(d, &record)
}

/// The directory a committed layer's contents are reached through.
fn layer_dir(d: &Daemon, r: &SnapshotRecord) -> PathBuf {
    paths::fs_dir(&d.inner.config.root, r.id)
}

fn mounts_of(d: &Daemon, r: &SnapshotRecord) -> Result<Vec<MountSpec>> {
    if r.kind == SnapshotKind::Committed {
        return Err(SnapshotError::FailedPrecondition(format!(
            "snapshot {:?} is committed: only active snapshots and views have mounts",
            r.key
        )));
    }
    let root = &d.inner.config.root;
    let parent = match r.parent.as_deref() {
        Some(p) => Some(existing(d, p)?),
        None => None,
    };
    let below = chain(d, parent)?;
    let (lowers, upper) = match &r.backing {
        Backing::Disk { disk_id } => {
            let disk_root = disk_mountpoint(d, disk_id)?;
            let on_disk = paths::disk_container_dir(&disk_root, r.id);
            let lowers = (0..below.len())
                .map(|n| paths::lower_link(root, r.id, n))
                .collect();
            let upper = Upper {
                upper: on_disk.join("fs"),
                work: on_disk.join("work"),
            };
            (lowers, Some(upper))
        }
        _ => {
            let lowers: Vec<PathBuf> = below.iter().map(|p| layer_dir(d, p)).collect();
            let upper = (r.kind == SnapshotKind::Active).then(|| Upper {
                upper: paths::fs_dir(root, r.id),
                work: paths::work_dir(root, r.id),
            });
            (lowers, upper)
        }
    };
    // A bind mount is not resolved the way an overlay's lowerdir is: give it the real
    // directory behind a cache-backed layer's symlink.
    let lowers = if upper.is_none() && lowers.len() == 1 {
        vec![std::fs::canonicalize(&lowers[0]).map_err(|e| io_err("resolve", &lowers[0], e))?]
    } else {
        lowers
    };
    mounts::for_snapshot(&lowers, upper.as_ref(), &paths::fs_dir(root, r.id))
        .map_err(|e| SnapshotError::Internal(Failure::of(e)))
}

fn commit(d: &Daemon, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
    require_key(name)?;
    let r = existing(d, key)?;
    if r.kind != SnapshotKind::Active {
        return Err(SnapshotError::FailedPrecondition(format!(
            "snapshot {key:?} is {}: only an active snapshot can be committed",
            r.kind.as_str()
        )));
    }
    if let Backing::Disk { disk_id } = &r.backing {
        return Err(SnapshotError::FailedPrecondition(format!(
            "snapshot {key:?} lives on disk {disk_id}, which goes with its pod: it cannot \
             become a layer"
        )));
    }
    let root = &d.inner.config.root;
    // Walked before the lock: an active snapshot is its caller's alone until committed, and
    // a large tree takes long enough to stall every other request.
    let measured = usage::measure(&paths::fs_dir(root, r.id))?;
    {
        let _changing = d.inner.snapshotter.changing();
        let now_r = existing(d, key)?;
        if now_r.id != r.id || now_r.kind != SnapshotKind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} was removed or committed while this Commit measured it"
            )));
        }
        d.inner.store.commit_ctr_snapshot(
            key,
            name,
            &labels,
            (measured.size, measured.inodes),
            now(),
        )?;
    }
    crate::fault::point("snapshotter.commit");
    // The work directory is only for overlayfs while the snapshot is active.
    let work = paths::work_dir(root, r.id);
    if let Err(e) = std::fs::remove_dir_all(&work) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %work.display(), error = %e, "cannot remove work directory");
        }
    }
    debug!(%key, %name, "committed");
    Ok(())
}

fn remove(d: &Daemon, key: &str) -> Result<()> {
    let r = existing(d, key)?;
    let disk_root = match &r.backing {
        Backing::Disk { disk_id } => disk_mountpoint(d, disk_id).ok(),
        _ => None,
    };
    {
        let _changing = d.inner.snapshotter.changing();
        if existing(d, key)?.id != r.id {
            return Err(SnapshotError::NotFound(format!("snapshot {key:?}")));
        }
        let children = d.inner.store.ctr_children(key)?;
        if children > 0 {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key:?} has {children} child snapshot(s): remove them first"
            )));
        }
        d.inner.store.delete_ctr_snapshot(key)?;
    }
    crate::fault::point("snapshotter.remove");
    // containerd's rule: once its record is gone the snapshot is gone. What its directories
    // or its cache image's mount leave behind, Cleanup removes later; an error here would
    // only make containerd retry a Remove of a snapshot that no longer exists.
    if let Err(e) = remove_dirs(d, &r, disk_root.as_deref()) {
        warn!(%key, error = %e, "cannot remove a removed snapshot's directories; Cleanup retries");
    }
    if let Backing::Cache { digest, .. } = &r.backing {
        if let Err(e) = cachemount::release_if_unused(d, digest) {
            warn!(%key, %digest, error = %e, "cannot unmount a cache image no snapshot uses; Cleanup retries");
        }
    }
    debug!(%key, "removed");
    Ok(())
}

/// Removes a snapshot's directories: its own under the state root, and on its disk when the
/// disk is still there (a deleted disk took them with it).
fn remove_dirs(d: &Daemon, r: &SnapshotRecord, disk_root: Option<&Path>) -> Result<()> {
    if let Some(disk_root) = disk_root {
        let dir = paths::disk_container_dir(disk_root, r.id);
        remove_tree(&dir)?;
    }
    remove_tree(&paths::snapshot_dir(&d.inner.config.root, r.id))
}

fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir, e)),
    }
}

fn update(
    d: &Daemon,
    name: &str,
    labels: BTreeMap<String, String>,
    fields: &[String],
) -> Result<SnapshotInfo> {
    let _changing = d.inner.snapshotter.changing();
    let r = existing(d, name)?;
    let mut new_labels = r.labels.clone();
    if fields.is_empty() {
        new_labels = labels;
    } else {
        for field in fields {
            if field == "labels" {
                new_labels = labels.clone();
            } else if let Some(k) = field.strip_prefix("labels.") {
                match labels.get(k) {
                    Some(v) => new_labels.insert(k.to_owned(), v.clone()),
                    None => new_labels.remove(k),
                };
            } else {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot update field {field:?} of snapshot {name:?}: only labels change"
                )));
            }
        }
    }
    d.inner.store.set_ctr_labels(name, &new_labels, now())?;
    Ok(info_of(existing(d, name)?))
}

fn list(d: &Daemon, filters: &[String]) -> Result<Vec<SnapshotInfo>> {
    let filters = Filters::parse(filters)?;
    Ok(d.inner
        .store
        .list_ctr_snapshots()?
        .into_iter()
        .map(info_of)
        .filter(|i| filters.matches(i))
        .collect())
}

fn usage_of(d: &Daemon, r: &SnapshotRecord) -> Result<Usage> {
    let root = &d.inner.config.root;
    match (r.kind, &r.backing) {
        (SnapshotKind::Committed, _) => {
            if let Some((size, inodes)) = r.usage {
                return Ok(Usage { size, inodes });
            }
            // A cache-backed layer is measured once, the first time it is asked for.
            let measured = usage::measure(&paths::fs_dir(root, r.id))?;
            d.inner
                .store
                .set_ctr_usage(&r.key, (measured.size, measured.inodes))?;
            Ok(measured)
        }
        (SnapshotKind::Active, Backing::Disk { disk_id }) => {
            let disk_root = disk_mountpoint(d, disk_id)?;
            usage::measure(&paths::disk_container_dir(&disk_root, r.id).join("fs"))
        }
        (SnapshotKind::Active, _) => usage::measure(&paths::fs_dir(root, r.id)),
        (SnapshotKind::View, _) => Ok(Usage::default()),
    }
}

/// Removes snapshot directories no record names and cache mounts no snapshot uses: what a
/// crash between a store write and the filesystem change it records can leave, or a Remove
/// whose filesystem work failed. Failures are logged and retried by the next Cleanup.
fn cleanup(d: &Daemon) -> Result<()> {
    let root = &d.inner.config.root;
    // Listed under the lock, as a Prepare records and makes its directory under it; removed
    // outside it. Record ids are never reused, so a directory found unnamed stays so.
    let unnamed: Vec<PathBuf> = {
        let _changing = d.inner.snapshotter.changing();
        let known: std::collections::HashSet<i64> = d
            .inner
            .store
            .list_ctr_snapshots()?
            .iter()
            .map(|r| r.id)
            .collect();
        match std::fs::read_dir(paths::snapshots_dir(root)) {
            Ok(entries) => entries
                .flatten()
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<i64>().ok())
                        .is_some_and(|id| !known.contains(&id))
                })
                .map(|entry| entry.path())
                .collect(),
            Err(_) => Vec::new(),
        }
    };
    for dir in unnamed {
        info!(dir = %dir.display(), "removing snapshot directory no record names");
        if let Err(e) = remove_tree(&dir) {
            warn!(error = %e, "cannot remove a snapshot directory no record names");
        }
    }
    for digest in cachemount::mounted_digests(d)? {
        if let Err(e) = cachemount::release_if_unused(d, &digest) {
            warn!(%digest, error = %e, "cannot unmount a cache image no snapshot uses");
        }
    }
    Ok(())
}
