//! Creating a disk, step by step; each step returns what the next needs.

use tracing::{error, info};

use super::clone::{clone_disk, hold_snapshot};
use super::object::{disk_object, Made};
use super::pull::PullJob;
use super::{auto_cache, internal, named, pull, select, token};
use crate::daemon::loop_budget::{AtCeiling, LoopLease};
use crate::daemon::{clock, ids, Daemon, DaemonError, Reply};
use crate::mount_path::MountTarget;
use crate::objects::{ValidDisk, KIND_DISK};

/// Where the disk is mounted: the caller's path, only beneath `disk_mount_root`, or the
/// daemon's own `<root>/disks/<id>/mnt`.
fn mount_target(
    d: &Daemon,
    id: &str,
    given: Option<std::path::PathBuf>,
) -> Result<MountTarget, DaemonError> {
    let config = &d.inner.config;
    match given {
        Some(path) => MountTarget::beneath(&config.disk_mount_root(), &path).map_err(|e| {
            DaemonError::invalid_field(KIND_DISK, "", "spec.mountPath", e.to_string())
        }),
        None => {
            let own = super::own_mount_root(d);
            MountTarget::beneath(&own, &own.join(id).join("mnt")).map_err(internal)
        }
    }
}

/// The `Retry-After` of a disk create refused at `max_loop_devices`: pods come and go within
/// seconds on a busy node, and the kubelet side retries anyway.
const LOOP_CEILING_RETRY_AFTER_SECS: u64 = 10;

/// A lease on the loop device the disk will take, or 503 at the daemon's ceiling.
fn loop_lease(d: &Daemon) -> Result<LoopLease, DaemonError> {
    match d.inner.loops.lease(d.inner.sys.as_ref()) {
        Ok(Ok(lease)) => Ok(lease),
        Ok(Err(AtCeiling { held, max })) => {
            d.metrics().error("loop_ceiling");
            Err(DaemonError::AtLimit {
                message: format!(
                    "no disk was created: the daemon holds {held} loop devices, its ceiling (max_loop_devices = {max}); delete disks that are no longer used (`imagecache disk get` lists them), or raise max_loop_devices in the daemon's config if the node can take more, then retry"
                ),
                retry_after_secs: LOOP_CEILING_RETRY_AFTER_SECS,
            })
        }
        Err(e) => Err(DaemonError::internal_because(
            "cannot count the loop devices the daemon holds (max_loop_devices)",
            e,
        )),
    }
}

/// A disk for `req`: made under a generated `disk-…` id, or under the request's own name,
/// where a disk of that name already there is answered instead (named.rs).
pub async fn create(d: &Daemon, req: ValidDisk) -> Result<Reply, DaemonError> {
    let Some(name) = req.name.clone() else {
        return make(d, req, ids::new_disk_id()).await;
    };
    let _one_at_a_time = d.inner.disk_names.lock(&name).await;
    if let Some(reply) = named::existing(d, &name, &req)? {
        return Ok(reply);
    }
    let _pending = named::Pending::begin(d, &name)?;
    make(d, req, name).await
}

async fn make(d: &Daemon, req: ValidDisk, id: String) -> Result<Reply, DaemonError> {
    let plan = select::check_credentials(d, &req, select::plan(d, &req)?).await;
    let mountpoint = req
        .mountpoint
        .clone()
        .map(|given| mount_target(d, &id, given))
        .transpose()?;
    // Before anything is made: at the ceiling the create leaves nothing behind. Held until
    // the disk's device is attached (and counted from the kernel's table).
    let lease = loop_lease(d)?;
    // The reference is taken before cloning, so a concurrent delete of the cache cannot
    // remove the snapshot file from under the clone.
    let held = plan
        .cache
        .as_ref()
        .map(|cache| hold_snapshot(d, cache))
        .transpose()?;
    let created = clone_disk(d, &id, mountpoint, &plan, held.as_ref())
        .await
        .inspect_err(|_| d.metrics().error("disk_create"))?;
    drop(lease);
    crate::fault::point("disk.mount");
    d.metrics()
        .disk_ready_seconds
        .observe(created.timings.total_ms() / 1e3);
    let now = clock::now_string();
    let (auto_created, notes) = auto_cache::on_create(d, &req, &plan).await;
    let mut object = disk_object(
        d,
        Made {
            id: &id,
            req: &req,
            plan: &plan,
            created: &created,
            auto_created,
            now: &now,
        },
    );
    auto_cache::add_notes(&mut object, notes, &now);
    let (bind_token, bind_sha256) = token::issue();
    if let Err(e) = d.inner.store.insert_disk(&object, &bind_sha256) {
        error!(disk = %id, device = %created.device.display(), error = %e, "could not record a created disk: it stays attached until removed by hand");
        return Err(internal(e));
    }
    info!(disk = %id, cache = ?plan.cache.as_ref().map(|c| &c.id), ms = created.timings.total_ms(), missing = plan.missing.len(), "disk created");
    if plan.pull_needed() {
        pull::spawn(
            d,
            PullJob {
                id,
                images: plan.missing,
                pull_secrets: req.pull_secrets,
                size_gib: plan.size_gib,
                device: created.device,
                mountpoint: created.mountpoint,
            },
        );
    }
    // Stored without it: this answer is the only place the token ever appears.
    if let Some(status) = object.status.as_mut() {
        status.bind_token = Some(bind_token);
    }
    Ok(Reply::Disk(Box::new(object)))
}
