//! Importing a shared snapshot instead of building: the artifact tagged by the cache's
//! content key, used only when it records exactly the images this node resolved (digests and
//! chainIDs). Its chunks are fetched in parallel (bounded by `max_concurrent_downloads`),
//! each checked against its digest and written at its offset into a sparse image in the
//! build's work directory, which is then committed under the snapshot digest the artifact
//! names. Anything half made stays in the work directory, which the build removes whatever
//! happens (and a start after a crash removes with the build's record).

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::Shareable;
use crate::daemon::Daemon;
use crate::share::{parse_manifest, tag_for_key, ChunkBlob, ShareConfig, ShareError, ShareRemote};
use crate::snapshot::{Chunk, Snapshot};

/// What an import did, for the cache's `Imported` event.
#[derive(Debug)]
pub(crate) struct Imported {
    pub snapshot: Snapshot,
    pub from: String,
    pub chunks: usize,
    pub fetched_bytes: u64,
    pub secs: f64,
}

/// The shared snapshot of `shareable`, imported into `work_dir`; `None` when the share
/// registry has none.
pub(crate) async fn import(
    d: &Daemon,
    remote: &ShareRemote,
    shareable: &Shareable,
    work_dir: &Path,
    cancel: &CancellationToken,
) -> Result<Option<Imported>, ShareError> {
    tokio::select! {
        r = import_inner(d, remote, shareable, work_dir) => r,
        () = cancel.cancelled() => Err(ShareError::Cancelled),
    }
}

async fn import_inner(
    d: &Daemon,
    remote: &ShareRemote,
    shareable: &Shareable,
    work_dir: &Path,
) -> Result<Option<Imported>, ShareError> {
    let started = Instant::now();
    let tag = tag_for_key(&shareable.key);
    let Some((manifest, manifest_digest)) = remote.pull_manifest(&tag).await? else {
        return Ok(None);
    };
    let (config_blob, blobs) = parse_manifest(&manifest)?;
    let config = ShareConfig::from_bytes(
        &remote
            .pull_blob(&config_blob.digest, config_blob.size.min(16 << 20))
            .await?,
    )?;
    same_build(&config, shareable)?;
    let chunks = config.chunk_manifest.chunks.clone();
    if chunks.len() != blobs.len() {
        return Err(ShareError::Invalid(format!(
            "{} layers for {} chunks",
            blobs.len(),
            chunks.len()
        )));
    }
    crate::access::create_dir_with_mode(work_dir, crate::access::PRIVATE_DIR).map_err(
        |source| ShareError::Io {
            what: "mkdir",
            path: work_dir.display().to_string(),
            source,
        },
    )?;
    let image = Arc::new(work_dir.join("imported.img"));
    let io = |what, source| ShareError::Io {
        what,
        path: image.display().to_string(),
        source,
    };
    let file = std::fs::File::create(image.as_path()).map_err(|e| io("create", e))?;
    file.set_len(config.chunk_manifest.size)
        .map_err(|e| io("truncate", e))?;
    let file = Arc::new(file);
    let width = d.inner.config.max_concurrent_downloads;
    let fetched: Vec<u64> = stream::iter(chunks.into_iter().zip(blobs).enumerate())
        .map(|(index, (chunk, blob))| {
            let file = file.clone();
            async move { fetch_chunk(remote, file, index, chunk, blob).await }
        })
        .buffer_unordered(width)
        .try_collect()
        .await?;
    let synced = file.clone();
    tokio::task::spawn_blocking(move || synced.sync_all())
        .await
        .map_err(|e| ShareError::Invalid(format!("syncing the image: {e}")))?
        .map_err(|e| io("fsync", e))?;
    drop(file);
    let path: PathBuf = image.as_ref().clone();
    let snapshots = d.inner.snapshots.clone();
    let manifest_of = config.chunk_manifest.clone();
    let snapshot = tokio::task::spawn_blocking(move || snapshots.commit(&path, &manifest_of))
        .await
        .map_err(|e| ShareError::Invalid(format!("committing the snapshot: {e}")))??;
    if snapshot.digest != config.snapshot_digest {
        return Err(ShareError::Invalid(format!(
            "committed as {}, the artifact says {}",
            snapshot.digest, config.snapshot_digest
        )));
    }
    Ok(Some(Imported {
        snapshot,
        from: format!("{}@{manifest_digest}", remote.target),
        chunks: fetched.len(),
        fetched_bytes: fetched.iter().sum(),
        secs: started.elapsed().as_secs_f64(),
    }))
}

/// The artifact must record exactly what this node resolved: the same images at the same
/// digests with the same layers, the same platform and size. Anyone who can push to the share
/// registry could otherwise change what this node runs.
fn same_build(config: &ShareConfig, shareable: &Shareable) -> Result<(), ShareError> {
    if config.key != shareable.key
        || config.platform != shareable.platform
        || config.size_gib != shareable.size_gib
    {
        return Err(ShareError::OtherImages(format!(
            "it records key {} for {} at {} GiB; this node wants {} for {} at {} GiB",
            config.key,
            config.platform,
            config.size_gib,
            shareable.key,
            shareable.platform,
            shareable.size_gib
        )));
    }
    if config.images != shareable.images {
        let show = |images: &[crate::share::SharedImage]| {
            images
                .iter()
                .map(|i| format!("{}@{} ({} layers)", i.image, i.digest, i.chain_ids.len()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(ShareError::OtherImages(format!(
            "it records {}; this node resolved {}",
            show(&config.images),
            show(&shareable.images)
        )));
    }
    Ok(())
}

/// Fetches, decompresses, checks and writes chunk `index`; the compressed bytes fetched.
async fn fetch_chunk(
    remote: &ShareRemote,
    file: Arc<std::fs::File>,
    index: usize,
    chunk: Chunk,
    blob: ChunkBlob,
) -> Result<u64, ShareError> {
    let failed = |detail: String| ShareError::Chunk {
        index,
        offset: chunk.offset,
        blob: blob.digest.clone(),
        detail,
    };
    let compressed = remote
        .pull_blob(&blob.digest, blob.size)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let fetched = compressed.len() as u64;
    let expected = chunk.clone();
    tokio::task::spawn_blocking(move || -> Result<(), String> {
        let length = usize::try_from(expected.length).map_err(|e| e.to_string())?;
        let raw = zstd::bulk::decompress(&compressed, length)
            .map_err(|e| format!("does not decompress to at most {length} bytes: {e}"))?;
        if raw.len() != length {
            return Err(format!("decompresses to {} bytes, not {length}", raw.len()));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
        if digest != expected.digest {
            return Err(format!(
                "its content hashes to {digest}, the chunk manifest says {}",
                expected.digest
            ));
        }
        file.write_all_at(&raw, expected.offset)
            .map_err(|e| format!("cannot write it: {e}"))
    })
    .await
    .map_err(|e| failed(e.to_string()))?
    .map_err(failed)?;
    Ok(fetched)
}
