//! Pushing a Ready cache's snapshot to `share_registry`, in the background: Ready is recorded
//! before a push starts, and a push that fails leaves the cache as it is (a `PushFailed`
//! event says why). Blobs the registry already holds are not uploaded again.

use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use tracing::{info, warn};

use super::Shareable;
use crate::block_snapshot::{sha256_digest, Chunk, Snapshot};
use crate::daemon::events::{NORMAL, WARNING};
use crate::daemon::owner::Owner;
use crate::daemon::{record, Daemon};
use crate::share::{tag_for_key, ChunkBlob, ShareConfig, ShareError, ShareRemote, FORMAT_VERSION};

/// zstd's default level: chunks compress fast enough to keep up with an upload, and the
/// same bytes always give the same blob, so nodes pushing the same chunk make one blob.
const ZSTD_LEVEL: i32 = 3;

/// What one push did.
#[derive(Debug, Default)]
struct Pushed {
    uploaded_bytes: u64,
    uploaded: usize,
    /// Mounted from the repository the snapshot came from, not uploaded.
    mounted: usize,
    present: usize,
}

/// How one chunk got into the registry.
enum ChunkPush {
    Uploaded(u64),
    Mounted,
    Present,
}

/// Another repository of the share registry that holds this cache's blobs already: the one
/// it was pulled from (`imagecache pull`) or last pushed to (before `share_registry` named
/// another repository). Blobs missing from the target are mounted from there.
fn mount_source(d: &Daemon, name: &str, remote: &ShareRemote) -> Option<String> {
    let cache = d.inner.store.get_cache(name).ok().flatten()?;
    let pulled = cache
        .metadata
        .annotations
        .get(crate::daemon::build::IMPORT_ANNOTATION)
        .cloned();
    let pushed = cache.status.and_then(|s| s.shared_as);
    [pulled, pushed]
        .into_iter()
        .flatten()
        .filter_map(|r| crate::share::SnapshotRef::parse(&r, None).ok())
        .map(|r| r.target)
        .find(|t| t.registry == remote.target.registry && t.repository != remote.target.repository)
        .map(|t| t.repository)
}

/// The images of cache `name` whose registry served them only with credentials. A snapshot
/// holding one is never pushed: whoever reads the share registry would get files that image's
/// own registry refuses them.
pub(crate) fn private_images(d: &Daemon, name: &str) -> Vec<String> {
    let Ok(Some(cache)) = d.inner.store.get_cache(name) else {
        return Vec::new();
    };
    cache
        .status
        .map(|s| s.images)
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.credentials_required)
        .map(|i| i.image)
        .collect()
}

/// Pushes `snapshot` of cache `name` in the background; its outcome is an event.
pub(crate) fn spawn(d: &Daemon, name: &str, snapshot: Snapshot, shareable: Shareable) {
    if d.inner.share.is_none() {
        return;
    }
    let private = private_images(d, name);
    if !private.is_empty() {
        info!(cache = %name, images = ?private, "not pushed: it holds images that needed credentials");
        Owner::Cache(name.to_owned()).event(
            d,
            NORMAL,
            "NotShared",
            format!(
                "Not pushed to the share registry: {} needed credentials, and the share registry's readers may not have them",
                private.join(", ")
            ),
        );
        return;
    }
    let d2 = d.clone();
    let name = name.to_owned();
    let stop = d.inner.shutdown.clone();
    d.inner.tasks.spawn(async move {
        tokio::select! {
            _ = push_and_record(&d2, &name, &snapshot, &shareable) => {}
            () = stop.cancelled() => {}
        }
    });
}

/// Pushes `snapshot` of cache `name` now, recording the outcome on the cache (`sharedAs`,
/// `Pushed` or `PushFailed`, metrics); where it is shared, or why not.
pub(crate) async fn push_and_record(
    d: &Daemon,
    name: &str,
    snapshot: &Snapshot,
    shareable: &Shareable,
) -> Result<String, ShareError> {
    let Some(remote) = d.inner.share.clone() else {
        return Err(ShareError::Invalid(
            "share_registry is not set in the daemon's config".into(),
        ));
    };
    let started = Instant::now();
    let owner = Owner::Cache(name.to_owned());
    let mount_from = mount_source(d, name, &remote);
    let result = push(d, &remote, snapshot, shareable, mount_from.as_deref()).await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok((shared_as, done)) => {
            let m = d.metrics();
            m.share_pushed_chunks.inc_by(done.uploaded as u64);
            m.share_pushed_bytes.inc_by(done.uploaded_bytes);
            m.share_push_seconds.observe(secs);
            info!(cache = %name, %shared_as, uploaded = done.uploaded, mounted = done.mounted, present = done.present, bytes = done.uploaded_bytes, secs, "snapshot pushed");
            let written = d.inner.store.update_cache(name, |c| {
                if let Some(s) = c.status.as_mut() {
                    s.shared_as = Some(shared_as.clone());
                }
            });
            record::or_log(d, written, &owner, "where the snapshot is shared");
            owner.event(
                d,
                NORMAL,
                "Pushed",
                format!(
                    "Pushed snapshot {} as {shared_as} in {secs:.1}s: {} chunk(s) uploaded ({} bytes compressed), {} mounted from {}, {} already there",
                    snapshot.digest,
                    done.uploaded,
                    done.uploaded_bytes,
                    done.mounted,
                    mount_from.as_deref().unwrap_or("no other repository"),
                    done.present
                ),
            );
            Ok(shared_as)
        }
        Err(e) => {
            warn!(cache = %name, error = %e, "snapshot push failed");
            owner.event(
                d,
                WARNING,
                "PushFailed",
                format!(
                    "Could not push snapshot {} to {} after {secs:.1}s: {e}",
                    snapshot.digest, remote.target
                ),
            );
            Err(e)
        }
    }
}

async fn push(
    d: &Daemon,
    remote: &ShareRemote,
    snapshot: &Snapshot,
    shareable: &Shareable,
    mount_from: Option<&str>,
) -> Result<(String, Pushed), ShareError> {
    let manifest = d.inner.snapshots.manifest(&snapshot.digest)?;
    let image = Arc::new(snapshot.image_path.clone());
    let width = d.inner.config.max_concurrent_downloads;
    let outcomes: Vec<(ChunkBlob, ChunkPush)> = stream::iter(manifest.chunks.iter().cloned())
        .map(|chunk| {
            let image = image.clone();
            async move { push_chunk(remote, image, chunk, mount_from).await }
        })
        .buffered(width)
        .try_collect()
        .await?;
    let mut done = Pushed::default();
    for (_, how) in &outcomes {
        match how {
            ChunkPush::Uploaded(bytes) => {
                done.uploaded += 1;
                done.uploaded_bytes += bytes;
            }
            ChunkPush::Mounted => done.mounted += 1,
            ChunkPush::Present => done.present += 1,
        }
    }
    let config = ShareConfig {
        format_version: FORMAT_VERSION,
        key: shareable.key.clone(),
        platform: shareable.platform.clone(),
        size_gib: shareable.size_gib,
        images: shareable.images.clone(),
        snapshot_digest: snapshot.digest.clone(),
        chunk_manifest: manifest,
    };
    let config_bytes = config.to_bytes();
    let config_blob = ChunkBlob {
        digest: sha256_digest(&config_bytes),
        size: config_bytes.len() as u64,
    };
    if !remote.has_blob(&config_blob.digest).await? {
        remote.push_blob(config_bytes, &config_blob.digest).await?;
    }
    let chunks: Vec<ChunkBlob> = outcomes.into_iter().map(|(b, _)| b).collect();
    let manifest_bytes =
        crate::share::manifest_bytes(&config_blob.digest, config_blob.size, &chunks);
    // Builds are not bit-reproducible, so two nodes building the same cache make different
    // snapshots: the first one tagged stays the one every node imports, and a later one is
    // pushed by digest only.
    let tag = tag_for_key(&shareable.key);
    let target = match remote.pull_manifest(&tag).await? {
        Some((_, tagged)) if tagged != sha256_digest(&manifest_bytes) => {
            sha256_digest(&manifest_bytes)
        }
        _ => tag,
    };
    let digest = remote
        .push_manifest(&target, manifest_bytes.clone())
        .await?;
    // Each image's tag points at the first snapshot pushed that holds it.
    for image in &shareable.images {
        let image_tag = crate::share::tag_for_image(&shareable.platform, &image.digest);
        if remote.pull_manifest(&image_tag).await?.is_none() {
            remote
                .push_manifest(&image_tag, manifest_bytes.clone())
                .await?;
        }
    }
    Ok((format!("{}@{digest}", remote.target), done))
}

/// Compresses one chunk and, unless the registry has it, mounts it from `mount_from` or
/// uploads it; the blob, and how it got there.
async fn push_chunk(
    remote: &ShareRemote,
    image: Arc<PathBuf>,
    chunk: Chunk,
    mount_from: Option<&str>,
) -> Result<(ChunkBlob, ChunkPush), ShareError> {
    let (bytes, digest) = tokio::task::spawn_blocking(move || -> Result<_, ShareError> {
        let io = |source| ShareError::Io {
            what: "read",
            path: image.display().to_string(),
            source,
        };
        let file = std::fs::File::open(image.as_path()).map_err(io)?;
        let mut raw = vec![0u8; usize::try_from(chunk.length).unwrap_or(0)];
        file.read_exact_at(&mut raw, chunk.offset).map_err(io)?;
        let compressed = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(io)?;
        let digest = sha256_digest(&compressed);
        Ok((compressed, digest))
    })
    .await
    .map_err(|e| ShareError::Invalid(format!("compressing a chunk: {e}")))??;
    let blob = ChunkBlob {
        digest: digest.clone(),
        size: bytes.len() as u64,
    };
    if remote.has_blob(&digest).await? {
        return Ok((blob, ChunkPush::Present));
    }
    if let Some(from) = mount_from {
        if remote.mount_blob(&digest, from).await? {
            return Ok((blob, ChunkPush::Mounted));
        }
    }
    let size = blob.size;
    remote.push_blob(bytes, &digest).await?;
    Ok((blob, ChunkPush::Uploaded(size)))
}
