//! Building a cache: resolve the images, pull and unpack every layer of every image in
//! parallel into a fresh loop-mounted ext4 image, write the OCI layout, then freeze the image
//! into a snapshot. Status, progress and events are written to the store as it goes.

mod error;
pub(crate) mod fill;
mod layers;
pub(crate) mod plan;
mod reuse;
mod workdir;
mod writeback;

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use error::BuildError;
pub(crate) use workdir::clean_work_dir;

use super::events::{NORMAL, WARNING};
use super::owner::Owner;
use super::{clock, ids, Daemon};
use crate::objects::{CachedImage, Phase};
use crate::image::MountConfig;
use crate::registry::{ImageReference, Keyring};
use crate::snapshot::Snapshot;
use crate::store::BuildRecord;

/// What to build, from a validated ImageCache.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub name: String,
    pub images: Vec<ImageReference>,
    pub pull_secrets: Vec<String>,
    pub size_gib: u32,
    /// Start from a clone of the best-matching Ready cache (`imc-enable-reuse`).
    pub reuse: bool,
}

/// On an ImageCache: build it from a clone of the best-matching Ready cache, pulling only
/// the images that one lacks; the new snapshot shares its unchanged blocks with the parent.
pub const REUSE_ANNOTATION: &str = "k8s.aliyun.com/imc-enable-reuse";

/// Starts the build of `spec` in the background. Its token cancels it (cache deleted, daemon
/// stopping); the build then cleans up and leaves the record alone.
pub fn spawn(daemon: &Daemon, spec: BuildSpec) {
    let cancel = daemon.inner.shutdown.child_token();
    daemon
        .inner
        .builds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(spec.name.clone(), cancel.clone());
    let d = daemon.clone();
    daemon.inner.tasks.spawn(async move {
        run(&d, &spec, &cancel).await;
        d.inner
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.name);
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
        fail(d, spec, &BuildError::Internal(e.to_string()));
        return;
    }
    let started = Instant::now();
    let result = build(d, spec, &work_dir, cancel).await;
    if let Err(e) = clean_work_dir(d.inner.sys.as_ref(), &work_dir) {
        warn!(cache = %spec.name, error = %e, "could not clean the build's work directory");
    }
    let _ = d.inner.store.delete_build(&build_id);
    match result {
        Ok(built) => {
            info!(cache = %spec.name, digest = %built.snapshot.digest, secs = started.elapsed().as_secs_f64(), "cache ready");
        }
        Err(BuildError::Cancelled) if d.inner.shutdown.is_cancelled() => {
            info!(cache = %spec.name, "build interrupted: the daemon is stopping");
            fail(d, spec, &BuildError::Interrupted);
        }
        Err(BuildError::Cancelled) => info!(cache = %spec.name, "build cancelled"),
        Err(e) => {
            warn!(cache = %spec.name, error = %e, "build failed");
            fail(d, spec, &e);
        }
    }
}

/// The result of a successful build.
struct Built {
    snapshot: Snapshot,
}

async fn build(
    d: &Daemon,
    spec: &BuildSpec,
    work_dir: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<Built, BuildError> {
    let started = Instant::now();
    let cfg = &d.inner.config;
    let mut keyring = Keyring::from_pull_secrets(&cfg.secrets_dir, &spec.pull_secrets)?;
    if let Some(path) = &cfg.docker_config {
        keyring = keyring.with_docker_config(path)?;
    }
    let keyring = Arc::new(keyring);
    set_phase(d, &spec.name, Phase::Pulling, None);

    // mkfs while the manifests resolve: both take a few hundred ms.
    std::fs::create_dir_all(work_dir)
        .map_err(|e| BuildError::io("create the work directory", work_dir, e))?;
    let image_path = work_dir.join("disk.img");
    let mountpoint = work_dir.join("mnt");
    let size_bytes = u64::from(spec.size_gib) << 30;
    let parent = if spec.reuse {
        reuse::parent(d, spec)
    } else {
        None
    };
    let prepare = {
        let image_path = image_path.clone();
        let sys = d.inner.sys.clone();
        let parent_image = parent.as_ref().map(|p| p.image.clone());
        tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
            match parent_image {
                Some(from) => reuse::clone_parent(sys.as_ref(), &from, &image_path, size_bytes),
                None => {
                    crate::image::create_sparse(&image_path, size_bytes)?;
                    Ok(crate::image::mkfs(&image_path, "imagecache")?)
                }
            }
        })
    };
    if let Some(p) = &parent {
        event(d, &spec.name, NORMAL, "Reusing", p.message.clone());
    }
    for image in &spec.images {
        event(
            d,
            &spec.name,
            NORMAL,
            "Pulling",
            format!("Pulling image {image}"),
        );
    }
    let resolved = cancellable(cancel, plan::resolve_all(d, &spec.images, &keyring)).await;
    let t_resolved = started.elapsed();
    prepare
        .await
        .map_err(|e| BuildError::Internal(e.to_string()))??;
    let resolved = resolved?;
    // Attaching and mounting is a handful of syscalls: fine on the async thread.
    let sys = d.inner.sys.clone();
    let mounted = crate::image::mount(
        sys.as_ref(),
        &image_path,
        &mountpoint,
        &MountConfig::build(),
    )?;
    let root = mounted.path().to_owned();
    let owner = Owner::Cache(spec.name.clone());
    let plan = fill::fill(
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
    d.inner.store.update_cache(&spec.name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.images = plan
                .images
                .iter()
                .map(|i| CachedImage {
                    image: i.resolved.reference.to_string(),
                    digest: i.resolved.manifest.digest.clone(),
                    resolved_digest: i.resolved.index.as_ref().map(|x| x.digest.clone()),
                    chain_ids: i.chain_ids.clone(),
                    size_bytes: i.size_bytes,
                })
                .collect();
        }
    })?;

    set_phase(d, &spec.name, Phase::Freezing, Some("100%".into()));
    // syncfs writes back what the layers left dirty, then unmount and detach.
    tokio::task::block_in_place(|| mounted.unmount_and_detach())?;
    let t_synced = started.elapsed();
    let snapshots = d.inner.snapshots.clone();
    let reused = parent.is_some();
    let freeze_sys = d.inner.sys.clone();
    let snapshot = tokio::task::spawn_blocking(move || -> Result<Snapshot, BuildError> {
        let t0 = Instant::now();
        // Before anything reads it: fewer extents make every clone of the snapshot cheaper.
        // A reused build shares extents with its parent: a rewrite would unshare them.
        let max_gap = crate::image::MAX_FILLED_GAP;
        let mut densified = crate::image::densify(&image_path, max_gap, !reused)?;
        // Both only read the image: checking and hashing side by side saves the fsck's time.
        // Writeback of the image runs under them too, so commit's fsync finds it done.
        let (checked, hashed) = std::thread::scope(|s| {
            let _writeback =
                s.spawn(|| std::fs::File::open(&image_path).and_then(|f| f.sync_data()));
            let fsck = s.spawn(|| crate::image::fsck(&image_path));
            let hashed = crate::snapshot::hash_file(&image_path);
            (fsck.join().expect("fsck thread panicked"), hashed)
        });
        checked?;
        let manifest = hashed?;
        tracing::debug!(elapsed = ?t0.elapsed(), "checked and hashed the image");
        // Now that the data is on disk its extents can be counted; a rewrite keeps the
        // content, so the check and the hashes above still hold.
        if !reused {
            crate::image::rewrite_if_fragmented(
                freeze_sys.as_ref(),
                &image_path,
                max_gap,
                &mut densified,
            )?;
        }
        info!(?densified, elapsed = ?t0.elapsed(), "joined the image's data runs");
        Ok(snapshots.commit(&image_path, &manifest)?)
    })
    .await
    .map_err(|e| BuildError::Internal(e.to_string()))??;
    info!(
        cache = %spec.name,
        resolve = ?t_resolved,
        layers = ?(t_layers - t_resolved),
        sync_unmount = ?(t_synced - t_layers),
        freeze = ?(started.elapsed() - t_synced),
        "build steps"
    );
    if cancel.is_cancelled() {
        // Nobody will reference this snapshot: give its space back unless another cache
        // froze the very same content.
        if d.inner.store.snapshot_refs(&snapshot.digest)? == 0 {
            let _ = d.inner.snapshots.remove(&snapshot.digest);
        }
        return Err(BuildError::Cancelled);
    }
    d.inner.store.snapshot_ref(&snapshot.digest)?;
    // Blocks the frozen file really holds: the manifest's figure is rounded to whole chunks.
    let data_bytes = std::fs::metadata(&snapshot.image_path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .unwrap_or(snapshot.data_bytes);
    let now = clock::now_string();
    let message = format!(
        "Froze snapshot {} ({} of {} GiB) in {:.1}s",
        snapshot.digest,
        clock::human_bytes(data_bytes),
        spec.size_gib,
        started.elapsed().as_secs_f64()
    );
    d.inner.store.update_cache(&spec.name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.phase = Phase::Ready;
            s.progress = "100%".into();
            s.snapshot_digest = Some(snapshot.digest.clone());
            s.data_size_bytes = Some(data_bytes);
            s.data_size = Some(clock::human_bytes(data_bytes));
            s.last_updated_time = now.clone();
            super::events::record(&mut s.events, NORMAL, "Frozen", message, &now);
        }
    })?;
    Ok(Built { snapshot })
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

pub(super) fn event(d: &Daemon, name: &str, type_: &str, reason: &str, message: String) {
    let now = clock::now_string();
    let _ = d.inner.store.update_cache(name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.last_updated_time = now.clone();
            super::events::record(&mut s.events, type_, reason, message, &now);
        }
    });
}

fn set_phase(d: &Daemon, name: &str, phase: Phase, progress: Option<String>) {
    let now = clock::now_string();
    let _ = d.inner.store.update_cache(name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.phase = phase;
            if s.start_time.is_none() {
                s.start_time = Some(now.clone());
            }
            if let Some(p) = progress {
                s.progress = p;
            }
            s.last_updated_time = now.clone();
        }
    });
}

/// Marks the cache Failed with the cause; a failed cache expires 24 h after failing.
fn fail(d: &Daemon, spec: &BuildSpec, error: &BuildError) {
    let now = clock::now();
    let now_s = clock::format(now);
    let expire = clock::format(now + time::Duration::hours(24));
    let _ = d.inner.store.update_cache(&spec.name, |c| {
        if let Some(s) = c.status.as_mut() {
            s.phase = Phase::Failed;
            s.message = Some(error.to_string());
            s.expire_date_time = Some(expire);
            s.last_updated_time = now_s.clone();
            super::events::record(
                &mut s.events,
                WARNING,
                error.reason(),
                error.to_string(),
                &now_s,
            );
        }
    });
}
