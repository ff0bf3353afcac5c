//! Building a cache: resolve the images, pull and unpack every layer of every image in
//! parallel into a fresh loop-mounted ext4 image, write the OCI layout, then freeze the image
//! into a snapshot. Status, progress and events are written to the store as it goes.

mod auto_size;
mod error;
pub(crate) mod fill;
mod freeze;
pub(crate) mod host_space;
mod keyring;
mod layers;
pub(crate) mod plan;
pub(crate) mod queue;
mod reuse;
mod status;
mod workdir;
mod workimage;
mod writeback;

use crate::failure::Failure;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::BuildError;
pub(crate) use keyring::keyring_for;
pub(crate) use workdir::clean_work_dir;

use super::events::{NORMAL, WARNING};
use super::owner::Owner;
use super::share::{self, Shareable};
use super::{ids, record, Daemon};
use crate::block_snapshot::Snapshot;
use crate::objects::Phase;
use crate::registry::ImageReference;
use crate::share::ShareError;
use crate::store::BuildRecord;
use workimage::WorkImage;

/// What to build, from a validated ImageCache.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub name: String,
    pub images: Vec<ImageReference>,
    pub pull_secrets: Vec<String>,
    /// The credentials of the CRI pull whose cold pull asked for this cache: in memory only
    /// (never in the ImageCache object or state.db), so a build restarted after the daemon
    /// restarts goes without them. `Debug` names only their registry.
    pub pulled_with: Option<std::sync::Arc<crate::daemon::pull_auth::PullCredentials>>,
    pub size_gib: u32,
    /// Start from a clone of the best-matching Ready cache (`imc-enable-reuse`).
    pub reuse: bool,
    /// With `reuse`: the cache to clone, when it is eligible ([`REUSE_FROM_ANNOTATION`]).
    pub reuse_from: Option<String>,
    /// An auto-created cache: `size_gib` is a floor, raised to what the images need once
    /// their manifests are resolved (auto_size.rs).
    pub size_from_images: bool,
    /// Import this shared snapshot (`imagecache pull`, [`IMPORT_ANNOTATION`]) rather than
    /// look the content key up in `share_registry`.
    pub import_from: Option<crate::share::SnapshotRef>,
}

/// On an ImageCache: the shared snapshot (`host[:port]/repository@sha256:…`) to import
/// instead of building, used only if it records exactly the images this node resolves;
/// `imagecache pull` sets it.
pub const IMPORT_ANNOTATION: &str = "imagecache.io/import-from";

/// The snapshot an ImageCache's [`IMPORT_ANNOTATION`] names, if any.
pub fn import_asked(
    annotations: &std::collections::BTreeMap<String, String>,
    share: Option<&crate::share::ShareTarget>,
) -> Result<Option<crate::share::SnapshotRef>, String> {
    annotations
        .get(IMPORT_ANNOTATION)
        .map(|r| crate::share::SnapshotRef::parse(r, share))
        .transpose()
}

/// On an ImageCache: build it from a clone of the best-matching Ready cache, pulling only
/// the images that one lacks; the new snapshot shares its unchanged blocks with the parent.
pub const REUSE_ANNOTATION: &str = "k8s.aliyun.com/imc-enable-reuse";

/// On an ImageCache with [`REUSE_ANNOTATION`]: the name of the cache to clone, if it is
/// Ready, no larger and holds no image that needed credentials; otherwise the best-matching
/// one is. A cold pull names the cache holding the layers below the image's first missing
/// one, which matching by image names cannot find.
pub const REUSE_FROM_ANNOTATION: &str = "imagecache.io/reuse-from";

/// On an ImageCache the daemon created for a pod that matched none: sized from its images,
/// retention from `auto_cache_retention_days`, and counted against `max_cache_space_gib`.
pub const AUTO_CREATED_ANNOTATION: &str = "imagecache.io/auto-created";

pub fn is_auto_created(annotations: &std::collections::BTreeMap<String, String>) -> bool {
    annotations
        .get(AUTO_CREATED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Whether an ImageCache asks for reuse; a value other than `"true"`/`"false"` is refused as a
/// bad pod annotation is, never read as "no".
pub fn reuse_asked(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<bool, crate::matching::MatchError> {
    match annotations.get(REUSE_ANNOTATION).map(|v| v.trim()) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(crate::matching::MatchError::BadAnnotation {
            key: REUSE_ANNOTATION,
            value: v.to_owned(),
            allowed: "\"true\" or \"false\"",
        }),
    }
}

/// Starts the build of `spec` in the background, in the queue's `slot` (given back when the
/// build ends, however it ends). Its token cancels it (cache deleted, daemon stopping); the
/// build then cleans up and leaves the record alone.
fn spawn(daemon: &Daemon, spec: BuildSpec, slot: queue::Slot) {
    let cancel = daemon.inner.shutdown.child_token();
    let running = daemon
        .inner
        .jobs
        .start(Owner::Cache(spec.name.clone()), cancel.clone());
    let d = daemon.clone();
    daemon.inner.tasks.spawn(async move {
        // Dropped in this order however the task ends, a panic included: the build leaves
        // the running jobs, then gives its slot to the next.
        let _slot = slot;
        let _running = running;
        queue::left_queue(&d, &spec.name);
        run(&d, &spec, &cancel).await;
    });
}

async fn run(d: &Daemon, spec: &BuildSpec, cancel: &CancellationToken) {
    let build_id = ids::new_build_id();
    let work_dir = d.work_root().join(&build_id);
    let record = BuildRecord {
        id: build_id.clone(),
        cache_name: spec.name.clone(),
        work_dir: work_dir.to_string_lossy().into_owned(),
    };
    if let Err(e) = d.inner.store.insert_build(&record) {
        let e = BuildError::Internal(Failure::new("cannot record the build", e));
        status::fail(d, spec, &e);
        return;
    }
    let started = Instant::now();
    let result = build(d, spec, &work_dir, cancel).await;
    let result = result.map_err(|e| host_space::explain(&work_dir, &d.inner.config.root, e));
    if let Err(e) = clean_work_dir(d.inner.sys.as_ref(), &work_dir) {
        warn!(cache = %spec.name, error = %e, "could not clean the build's work directory");
    }
    // Left behind, the record only makes the next start clean a directory already gone.
    record::or_log(
        d,
        d.inner.store.delete_build(&build_id),
        &Owner::Cache(spec.name.clone()),
        &format!("the end of build {build_id}"),
    );
    match result {
        Ok(built) => {
            let secs = started.elapsed().as_secs_f64();
            d.inner.metrics.build_seconds.observe(secs);
            info!(cache = %spec.name, digest = %built.snapshot.digest, secs, "cache ready");
            // After Ready is recorded: a push never delays it, nor fails the cache.
            crate::daemon::publish::spawn(d, &spec.name, built.images);
            if let Some(shareable) = built.share {
                share::push::spawn(d, &spec.name, built.snapshot, shareable);
            }
        }
        Err(BuildError::Cancelled) if d.inner.shutdown.is_cancelled() => {
            info!(cache = %spec.name, "build interrupted: the daemon is stopping");
            status::fail(d, spec, &BuildError::Interrupted);
        }
        Err(BuildError::Cancelled) => info!(cache = %spec.name, "build cancelled"),
        Err(e) => {
            warn!(cache = %spec.name, error = %e, "build failed");
            status::fail(d, spec, &e);
        }
    }
}

/// The result of a successful build.
struct Built {
    snapshot: Snapshot,
    /// What to push it as, when it was built here and sharing is on.
    share: Option<Shareable>,
    /// The images this build resolved, to publish into containerd's image store.
    images: Vec<crate::registry::ResolvedImage>,
}

/// The cache from a snapshot another node shared, when `share_registry` has one for it;
/// `None` (after an `ImportFailed` event when one was found but could not be used) to build.
async fn import_shared(
    d: &Daemon,
    spec: &BuildSpec,
    (remote, tag): (&crate::share::ShareRemote, &str),
    shareable: &Shareable,
    resolved: &[crate::registry::ResolvedImage],
    keyring: &crate::registry::Keyring,
    cancel: &CancellationToken,
) -> Result<Option<Built>, BuildError> {
    let owner = Owner::Cache(spec.name.clone());
    match share::import::import(d, remote, tag, shareable, cancel).await {
        Ok(None) if spec.import_from.is_some() => {
            let named = spec
                .import_from
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            warn!(cache = %spec.name, snapshot = %named, "the snapshot to import is gone: building instead");
            owner.event(
                d,
                WARNING,
                "ImportFailed",
                format!("{named} is not in its registry any more; building this cache instead"),
            );
            Ok(None)
        }
        Ok(None) => {
            info!(cache = %spec.name, key = %shareable.key, share = %remote.target, "no shared snapshot of this cache: building it");
            Ok(None)
        }
        Ok(Some(imported)) => {
            let m = d.metrics();
            m.share_fetched_chunks.inc_by(imported.chunks as u64);
            m.share_fetched_bytes.inc_by(imported.fetched_bytes);
            m.share_reused_chunks.inc_by(imported.reused as u64);
            m.share_import_seconds.observe(imported.secs);
            let needed =
                crate::daemon::image_access::needed_credentials(d, resolved, keyring).await;
            crate::fault::point("import.commit");
            let plan = plan::Plan::new(resolved.to_vec(), Default::default())?;
            status::record_images(d, &spec.name, &plan, &needed)?;
            let data_bytes = freeze::adopt(d, &imported.snapshot)?;
            status::mark_imported(d, spec, &imported, data_bytes)?;
            info!(cache = %spec.name, digest = %imported.snapshot.digest, from = %imported.from, secs = imported.secs, "cache imported");
            Ok(Some(Built {
                snapshot: imported.snapshot,
                share: None,
                images: resolved.to_vec(),
            }))
        }
        Err(ShareError::Cancelled) => Err(BuildError::Cancelled),
        Err(e) => {
            warn!(cache = %spec.name, error = %e, "shared snapshot not imported: building instead");
            d.inner.metrics.error("import");
            owner.event(
                d,
                WARNING,
                "ImportFailed",
                format!("Could not import the shared snapshot of this cache from {}: {e}; building it instead", remote.target),
            );
            Ok(None)
        }
    }
}

/// The steps of a build, each handing the next what it needs.
async fn build(
    d: &Daemon,
    spec: &BuildSpec,
    work_dir: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<Built, BuildError> {
    let started = Instant::now();
    let keyring = keyring::keyring_for_build(d, spec)?;
    status::set_phase(d, &spec.name, Phase::Pulling, None)?;

    // mkfs while the manifests resolve: both take a few hundred ms.
    let parent = if spec.reuse {
        reuse::parent(d, spec)
    } else {
        None
    };
    // An auto-created cache's size comes from its manifests, and a shared snapshot is found
    // by them, so then they resolve before mkfs.
    let sized = match spec.size_from_images || d.inner.share.is_some() || spec.import_from.is_some()
    {
        true => {
            let resolved =
                cancellable(cancel, plan::resolve_all(d, &spec.images, &keyring)).await?;
            let size_gib = match spec.size_from_images {
                true => auto_size::record(d, &spec.name, &resolved, spec.size_gib)?,
                false => spec.size_gib,
            };
            Some((resolved, size_gib))
        }
        false => None,
    };
    let resized;
    let spec = match &sized {
        Some((_, size_gib)) => {
            resized = BuildSpec {
                size_gib: *size_gib,
                ..spec.clone()
            };
            &resized
        }
        None => spec,
    };
    if let Some((resolved, _)) = &sized {
        let shareable = Shareable::of(
            &d.inner.registry.platform().to_string(),
            spec.size_gib,
            resolved,
        );
        let named;
        let lookup = match (&spec.import_from, d.inner.share.as_deref()) {
            (Some(r), _) => {
                named = share::remote_of(&d.inner.config, r.target.clone());
                Some((&named, r.tag_or_digest.clone()))
            }
            (None, Some(remote)) => Some((remote, crate::share::tag_for_key(&shareable.key))),
            (None, None) => None,
        };
        if let Some((remote, tag)) = lookup {
            let found = import_shared(
                d,
                spec,
                (remote, &tag),
                &shareable,
                resolved,
                &keyring,
                cancel,
            )
            .await?;
            if let Some(built) = found {
                return Ok(built);
            }
        }
    }
    let (work, made) = WorkImage::start(d, work_dir, spec.size_gib, parent.as_ref())?;
    let owner = Owner::Cache(spec.name.clone());
    announce(d, &owner, spec, parent.as_ref());
    let resolved = match sized {
        Some((resolved, _)) => Ok(resolved),
        None => cancellable(cancel, plan::resolve_all(d, &spec.images, &keyring)).await,
    };
    let t_resolved = started.elapsed();
    made.await
        .map_err(|e| BuildError::Internal(Failure::new("the image file's task", e)))??;
    let resolved = resolved?;
    let needed_credentials =
        crate::daemon::image_access::needed_credentials(d, &resolved, &keyring).await;
    let share = d.inner.share.is_some().then(|| {
        Shareable::of(
            &d.inner.registry.platform().to_string(),
            spec.size_gib,
            &resolved,
        )
    });

    // Attaching and mounting can take 100+ ms while other builds write: not on a worker.
    let mounted = tokio::task::block_in_place(|| work.mount(d))?;
    let root = mounted.path().to_owned();
    // The filesystem's root is root's alone, in the frozen image and so in every disk cloned
    // from it: a disk mounted outside the state root shows no layer to other users.
    crate::access::set_mode(&root, crate::access::PRIVATE_DIR)
        .map_err(|e| BuildError::io("chmod", &root, e))?;
    let filled = fill::fill(
        d,
        &owner,
        resolved,
        &keyring,
        &root,
        spec.size_gib,
        started,
        cancel,
    )
    .await?;
    let t_layers = started.elapsed();
    status::record_images(d, &spec.name, &filled, &needed_credentials)?;
    let images: Vec<_> = filled.images.iter().map(|p| p.resolved.clone()).collect();
    status::set_phase(d, &spec.name, Phase::Freezing, Some("100%".into()))?;
    // syncfs writes back what the layers left dirty, then unmount and detach.
    crate::fault::point("build.sync");
    tokio::task::block_in_place(|| mounted.unmount_and_detach())?;
    crate::fault::point("build.unmount");
    let t_synced = started.elapsed();

    let snapshot = freeze::freeze(d, &work.path, parent.is_some()).await?;
    info!(
        cache = %spec.name,
        resolve = ?t_resolved,
        layers = ?(t_layers - t_resolved),
        sync_unmount = ?(t_synced - t_layers),
        freeze = ?(started.elapsed() - t_synced),
        "build steps"
    );
    if cancel.is_cancelled() {
        freeze::discard(d, &snapshot)?;
        return Err(BuildError::Cancelled);
    }
    crate::fault::point("build.commit");
    let data_bytes = freeze::adopt(d, &snapshot)?;
    crate::fault::point("build.ready");
    status::mark_ready(
        d,
        spec,
        &snapshot,
        data_bytes,
        started.elapsed().as_secs_f64(),
    )?;
    Ok(Built {
        snapshot,
        share,
        images,
    })
}

/// The Reusing and Pulling events that open a build.
fn announce(d: &Daemon, owner: &Owner, spec: &BuildSpec, parent: Option<&reuse::Parent>) {
    if let Some(p) = parent {
        owner.event(d, NORMAL, "Reusing", p.message.clone());
    }
    for image in &spec.images {
        owner.event(d, NORMAL, "Pulling", format!("Pulling image {image}"));
    }
}

/// Runs `fut` unless the build is cancelled first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T, BuildError>>,
) -> Result<T, BuildError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(BuildError::Cancelled),
        r = fut => r,
    }
}
