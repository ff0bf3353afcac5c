//! Importing a shared snapshot instead of building: the artifact tagged by the cache's
//! content key, used only when it records exactly the images this node resolved (digests and
//! chainIDs). Each chunk comes from the first of: the partial image an earlier import of the
//! same snapshot left (killed, or failed half way: what it wrote is re-hashed, not trusted), a
//! snapshot already on this node holding a chunk of that digest (copied with
//! copy_file_range, which reflinks on XFS), or the share registry (fetched in parallel,
//! bounded by `max_concurrent_downloads`). Every chunk is checked against its digest before
//! it counts, and the image is committed under the snapshot digest the artifact names.
//!
//! The partial image lives in `<root>/imports/<snapshot hex>.img` so that a daemon killed
//! half way resumes where it was; one left untouched for a day is removed at start.

use std::collections::HashMap;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt as _};
use tokio_util::sync::CancellationToken;

use super::Shareable;
use crate::block_snapshot::{parse_digest, Chunk, Snapshot, DEFAULT_CHUNK_SIZE};
use crate::daemon::Daemon;
use crate::share::{Artifact, ChunkBlob, ShareConfig, ShareError, ShareRemote};

/// Where partial imports live, beside `snapshots/` on the same filesystem.
pub(crate) const IMPORTS_DIR: &str = "imports";
/// A partial import nobody resumed for this long is removed at start.
const PARTIAL_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What an import did, for the cache's `Imported` event.
#[derive(Debug)]
pub(crate) struct Imported {
    pub snapshot: Snapshot,
    pub from: String,
    /// Chunks fetched from the share registry.
    pub chunks: usize,
    /// Chunks copied from a snapshot already on this node.
    pub reused: usize,
    /// Chunks an earlier, interrupted import of the same snapshot had written.
    pub resumed: usize,
    pub fetched_bytes: u64,
    pub secs: f64,
}

/// The shared snapshot `tag_or_digest` names in `remote` (the content key's tag of
/// `shareable`, or what `imagecache pull` named), imported if it records exactly
/// `shareable`'s images; `None` when the registry has no such tag.
pub(crate) async fn import(
    d: &Daemon,
    remote: &ShareRemote,
    tag_or_digest: &str,
    shareable: &Shareable,
    cancel: &CancellationToken,
) -> Result<Option<Imported>, ShareError> {
    tokio::select! {
        r = import_inner(d, remote, tag_or_digest, shareable) => r,
        () = cancel.cancelled() => Err(ShareError::Cancelled),
    }
}

/// Where a chunk comes from.
enum Source {
    /// Already in the partial image.
    Resumed,
    /// A snapshot on this node: its image and the chunk's offset there.
    Local(PathBuf, u64),
    Fetch(ChunkBlob),
}

/// Each chunk digest held by a snapshot on this node, with where.
fn local_chunks(d: &Daemon) -> HashMap<String, (PathBuf, u64)> {
    let mut held = HashMap::new();
    let snapshots = match d.inner.snapshots.list() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the snapshots to reuse their chunks: fetching every chunk");
            return held;
        }
    };
    for snapshot in snapshots {
        if let Ok(manifest) = d.inner.snapshots.manifest(&snapshot.digest) {
            for c in manifest.chunks {
                held.entry(c.digest)
                    .or_insert_with(|| (snapshot.image_path.clone(), c.offset));
            }
        }
    }
    held
}

/// Removes partial imports nobody resumed within `PARTIAL_KEPT` (at start).
pub(crate) fn remove_stale_partials(root: &Path) {
    let dir = root.join(IMPORTS_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > PARTIAL_KEPT);
        if stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(path = %entry.path().display(), "removed a partial import nobody resumed for a day")
                }
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale partial import")
                }
            }
        }
    }
}

async fn import_inner(
    d: &Daemon,
    remote: &ShareRemote,
    tag_or_digest: &str,
    shareable: &Shareable,
) -> Result<Option<Imported>, ShareError> {
    let started = Instant::now();
    let Some(Artifact {
        manifest_digest,
        config,
        chunks: blobs,
    }) = remote.pull_artifact(tag_or_digest).await?
    else {
        return Ok(None);
    };
    same_build(&config, shareable)?;
    let m = &config.chunk_manifest;
    if m.chunk_size != DEFAULT_CHUNK_SIZE || m.size != u64::from(config.size_gib) << 30 {
        return Err(ShareError::Invalid(format!(
            "its image is {} bytes in chunks of {}; a {} GiB cache's is {} bytes in chunks of {DEFAULT_CHUNK_SIZE}",
            m.size,
            m.chunk_size,
            config.size_gib,
            u64::from(config.size_gib) << 30
        )));
    }
    // A compressed chunk is never larger than zstd's bound for its length: anything larger is
    // refused before it is fetched, so an artifact cannot make the daemon buffer more.
    let bound = zstd::zstd_safe::compress_bound(DEFAULT_CHUNK_SIZE as usize) as u64;
    if let Some((i, b)) = blobs.iter().enumerate().find(|(_, b)| b.size > bound) {
        return Err(ShareError::Invalid(format!(
            "layer {i} is {} bytes, more than a compressed chunk can be ({bound})",
            b.size
        )));
    }
    let chunks = config.chunk_manifest.chunks.clone();
    if chunks.len() != blobs.len() {
        return Err(ShareError::Invalid(format!(
            "{} layers for {} chunks",
            blobs.len(),
            chunks.len()
        )));
    }
    let imports = d.inner.config.root.join(IMPORTS_DIR);
    crate::access::create_dir_with_mode(&imports, crate::access::PRIVATE_DIR).map_err(
        |source| ShareError::Io {
            what: "mkdir",
            path: imports.display().to_string(),
            source,
        },
    )?;
    let image = Arc::new(imports.join(format!("{}.img", parse_digest(&config.snapshot_digest)?)));
    let io = |what, source| ShareError::Io {
        what,
        path: image.display().to_string(),
        source,
    };
    let resuming = image.exists();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(image.as_path())
        .map_err(|e| io("open", e))?;
    file.set_len(config.chunk_manifest.size)
        .map_err(|e| io("truncate", e))?;
    let file = Arc::new(file);
    let local = local_chunks(d);
    let width = d.inner.config.max_concurrent_downloads;
    let sourced: Vec<(usize, Chunk, Source)> = chunks
        .into_iter()
        .zip(blobs)
        .enumerate()
        .map(|(i, (chunk, blob))| {
            let source = match local.get(&chunk.digest) {
                Some((path, offset)) => Source::Local(path.clone(), *offset),
                None => Source::Fetch(blob),
            };
            (i, chunk, source)
        })
        .collect();
    // Writeback runs while chunks still arrive, as a build's runs under its fsck: left to
    // the final fsync, hundreds of MB would be written with both cores idle. Every 10 ms, so
    // the final fsync finds little left (7 ms in the share benchmark).
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writeback = {
        let (file, writing) = (file.clone(), writing.clone());
        tokio::task::spawn_blocking(move || {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(10));
                let _ = file.sync_data();
            }
        })
    };
    // The first failure stops chunks from starting, but those already under way finish and
    // stay in the image: cancelling them would throw away fetched bytes that the next import
    // (resuming this image) would only fetch again.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let placed: Vec<Result<Option<(Source, u64)>, ShareError>> = stream::iter(sourced)
        .map(|(index, chunk, source)| {
            let (file, image, failed) = (file.clone(), image.clone(), &failed);
            async move {
                if failed.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(None);
                }
                let placed = place_chunk(remote, file, image, resuming, index, chunk, source).await;
                if placed.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                placed.map(Some)
            }
        })
        .buffer_unordered(width)
        .collect()
        .await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = writeback.await;
    let outcomes: Vec<(Source, u64)> = placed
        .into_iter()
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    let t_chunks = started.elapsed();
    let (mut fetched, mut reused, mut resumed, mut fetched_bytes) = (0, 0, 0, 0);
    for (source, bytes) in &outcomes {
        match source {
            Source::Resumed => resumed += 1,
            Source::Local(..) => reused += 1,
            Source::Fetch(_) => {
                fetched += 1;
                fetched_bytes += bytes;
            }
        }
    }
    let synced = file.clone();
    tokio::task::spawn_blocking(move || synced.sync_all())
        .await
        .map_err(|e| ShareError::Invalid(format!("syncing the image: {e}")))?
        .map_err(|e| io("fsync", e))?;
    drop(file);
    let t_synced = started.elapsed();
    let path: PathBuf = image.as_ref().clone();
    let snapshots = d.inner.snapshots.clone();
    let manifest_of = config.chunk_manifest.clone();
    let snapshot = tokio::task::spawn_blocking(move || snapshots.commit(&path, &manifest_of))
        .await
        .map_err(|e| ShareError::Invalid(format!("committing the snapshot: {e}")))??;
    tracing::info!(chunks = ?t_chunks, sync = ?(t_synced - t_chunks), commit = ?(started.elapsed() - t_synced), "import steps");
    if snapshot.digest != config.snapshot_digest {
        return Err(ShareError::Invalid(format!(
            "committed as {}, the artifact says {}",
            snapshot.digest, config.snapshot_digest
        )));
    }
    Ok(Some(Imported {
        snapshot,
        from: format!("{}@{manifest_digest}", remote.target),
        chunks: fetched,
        reused,
        resumed,
        fetched_bytes,
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

/// Puts chunk `index` into the image from `source` (or finds it already there when
/// `resuming`), checked against its digest; where it came from, and the compressed bytes
/// fetched.
async fn place_chunk(
    remote: &ShareRemote,
    file: Arc<std::fs::File>,
    image: Arc<PathBuf>,
    resuming: bool,
    index: usize,
    chunk: Chunk,
    source: Source,
) -> Result<(Source, u64), ShareError> {
    let failed = |blob: &str, detail: String| ShareError::Chunk {
        index,
        offset: chunk.offset,
        blob: blob.to_owned(),
        detail,
    };
    if resuming {
        let (f, c) = (file.clone(), chunk.clone());
        let held = tokio::task::spawn_blocking(move || read_checked(&f, &c).is_ok())
            .await
            .unwrap_or(false);
        if held {
            return Ok((Source::Resumed, 0));
        }
    }
    match source {
        Source::Resumed => Ok((Source::Resumed, 0)),
        Source::Local(from, offset) => {
            let (f, c, img) = (file.clone(), chunk.clone(), image.clone());
            let from2 = from.clone();
            let copied = tokio::task::spawn_blocking(move || -> Result<(), String> {
                copy_range(&from2, offset, &img, c.offset, c.length)
                    .map_err(|e| format!("cannot copy it from {}: {e}", from2.display()))?;
                read_checked(&f, &c)
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match copied {
                Ok(()) => Ok((Source::Local(from, offset), 0)),
                Err(e) => Err(failed(&format!("local {}", from.display()), e)),
            }
        }
        Source::Fetch(blob) => {
            // Unchecked: the chunk's content is checked below, which is what matters, and
            // hashing the compressed bytes too would cost a third of an import's CPU.
            let compressed = remote
                .pull_blob_unchecked(&blob.digest, blob.size)
                .await
                .map_err(|e| failed(&blob.digest, e.to_string()))?;
            let fetched = compressed.len() as u64;
            let expected = chunk.clone();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let length = usize::try_from(expected.length).map_err(|e| e.to_string())?;
                let raw = decompress(&compressed, length)
                    .map_err(|e| format!("does not decompress to at most {length} bytes: {e}"))?;
                check(&raw, &expected)?;
                file.write_all_at(&raw, expected.offset)
                    .map_err(|e| format!("cannot write it: {e}"))?;
                crate::fault::point("import.chunk");
                Ok(())
            })
            .await
            .map_err(|e| failed(&blob.digest, e.to_string()))?
            .map_err(|e| failed(&blob.digest, e))?;
            Ok((Source::Fetch(blob), fetched))
        }
    }
}

/// `compressed` decompressed into at most `length` bytes, with this thread's decompression
/// context: one per chunk would be set up and torn down a hundred times per import.
fn decompress(compressed: &[u8], length: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CONTEXT: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        c.as_mut()
            .expect("made just above")
            .decompress(compressed, length)
    })
}

/// Whether `raw` is the chunk `expected` describes.
fn check(raw: &[u8], expected: &Chunk) -> Result<(), String> {
    if raw.len() as u64 != expected.length {
        return Err(format!("{} bytes, not {}", raw.len(), expected.length));
    }
    let digest = crate::block_snapshot::sha256_digest(raw);
    if digest != expected.digest {
        return Err(format!(
            "its content hashes to {digest}, the chunk manifest says {}",
            expected.digest
        ));
    }
    Ok(())
}

/// Reads chunk `c` back from the image and checks it.
fn read_checked(file: &std::fs::File, c: &Chunk) -> Result<(), String> {
    let mut raw = vec![0u8; usize::try_from(c.length).map_err(|e| e.to_string())?];
    file.read_exact_at(&mut raw, c.offset)
        .map_err(|e| format!("cannot read it back: {e}"))?;
    check(&raw, c)
}

/// Copies `len` bytes at `from_offset` of `from` to `to_offset` of `to` with
/// copy_file_range (std's copy between files), which shares the blocks where the
/// filesystem can (XFS, btrfs) instead of copying them.
fn copy_range(
    from: &Path,
    from_offset: u64,
    to: &Path,
    to_offset: u64,
    len: u64,
) -> std::io::Result<()> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut src = std::fs::File::open(from)?;
    src.seek(SeekFrom::Start(from_offset))?;
    let mut dst = std::fs::OpenOptions::new().write(true).open(to)?;
    dst.seek(SeekFrom::Start(to_offset))?;
    let copied = std::io::copy(&mut src.take(len), &mut dst)?;
    if copied != len {
        return Err(std::io::Error::other(format!(
            "copied {copied} of {len} bytes"
        )));
    }
    Ok(())
}
