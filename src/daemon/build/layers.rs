//! Fetching and unpacking every distinct layer of a build at once, under the daemon-wide
//! download bound. Each layer streams from the registry through a small channel into the
//! unpacker on a blocking thread: bytes are verified on the way and never held whole.

use crate::failure::Failure;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::plan::{Plan, PlannedLayer};
use super::BuildError;
use crate::daemon::events::NORMAL;
use crate::daemon::owner::Owner;
use crate::daemon::progress::Progress;
use crate::daemon::{background, clock, pipe, Daemon};
use crate::layout::layer_dir;
use crate::registry::Keyring;
use crate::retry::{GaveUp, RetryPolicy, Stop, Verdict};
use crate::unpack::{self, Compression, LayerStats, UnpackError};

/// A layer's whole transfer (open, stream, unpack), the one level at which a layer is retried:
/// the registry client does not retry a blob beneath it, so a try is counted once. The first
/// wait, 0.1–0.2 s, lets a dropped connection or a registry restart pass. No try starts later
/// than ten minutes after the first: a layer failing that long is better failed with its
/// error. A transfer under way is never cut; the registry timeout bounds only its silences.
const LAYER_RETRY: RetryPolicy = RetryPolicy {
    immediate: 0,
    first: Duration::from_millis(200),
    // As the registry client's: a long Retry-After does not hold a build for minutes.
    max: Duration::from_secs(10),
    attempts: 4,
    deadline: Duration::from_secs(600),
    log: tracing::Level::WARN,
};
/// How often progress is written to the store while layers stream.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

#[allow(clippy::too_many_arguments)]
pub async fn pull_all(
    d: &Daemon,
    owner: &Owner,
    size_gib: u32,
    plan: &Plan,
    keyring: &Arc<Keyring>,
    root: &Path,
    progress: Arc<Progress>,
    started: Instant,
    cancel: &CancellationToken,
) -> Result<HashMap<String, LayerStats>, BuildError> {
    let mut tasks = JoinSet::new();
    for layer in &plan.layers {
        let (d, layer, keyring, dest) = (
            d.clone(),
            layer.clone(),
            keyring.clone(),
            layer_dir(root, &layer.chain_id),
        );
        let (progress, cancel) = (progress.clone(), cancel.clone());
        tasks.spawn(async move {
            let result = pull_layer(&d, &layer, &keyring, &dest, &progress, &cancel).await;
            (layer.chain_id, result)
        });
    }
    // Layers left to fetch per image, to say when each image is complete. An image whose
    // layers the filesystem already held is complete at once.
    let fetching: std::collections::HashSet<&str> =
        plan.layers.iter().map(|l| l.chain_id.as_str()).collect();
    let mut remaining: Vec<usize> = plan
        .images
        .iter()
        .map(|i| {
            i.chain_ids
                .iter()
                .filter(|c| fetching.contains(c.as_str()))
                .count()
        })
        .collect();
    for (image, _) in plan.images.iter().zip(&remaining).filter(|(_, r)| **r == 0) {
        owner.event(
            d,
            NORMAL,
            "AlreadyPresent",
            format!(
                "Image {} is already present: every layer was held",
                image.resolved.reference
            ),
        );
    }
    let mut stats = HashMap::new();
    let mut no_space_needed: Option<u64> = None;
    let mut first_error = None;
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            _ = ticker.tick() => {
                owner.progress(d, progress.percent());
                continue;
            }
        };
        let Some(joined) = joined else { break };
        let (chain_id, result) =
            joined.map_err(|e| BuildError::Internal(Failure::new("layer task", e)))?;
        match result {
            Ok(layer_stats) => {
                for (i, image) in plan.images.iter().enumerate() {
                    if image.chain_ids.contains(&chain_id) {
                        remaining[i] -= 1;
                        if remaining[i] == 0 {
                            let message = format!(
                                "Pulled image {} in {:.1}s ({})",
                                image.resolved.reference,
                                started.elapsed().as_secs_f64(),
                                clock::human_mb(image.size_bytes)
                            );
                            owner.event(d, NORMAL, "Pulled", message);
                        }
                    }
                }
                if let Some(needed) = no_space_needed.as_mut() {
                    *needed += layer_stats.file_bytes;
                }
                stats.insert(chain_id, layer_stats);
            }
            Err(BuildError::NoSpace { needed_bytes, .. }) => {
                // Every layer measures what it would need; the sum says how big the cache must be.
                let done: u64 = stats.values().map(|s: &LayerStats| s.file_bytes).sum();
                let prev = no_space_needed.take().unwrap_or(done);
                no_space_needed = Some(prev + needed_bytes);
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                    cancel.cancel();
                }
            }
        }
    }
    owner.progress(d, progress.percent());
    if let Some(needed_bytes) = no_space_needed {
        return Err(BuildError::NoSpace {
            needed_bytes,
            size_gib,
        });
    }
    match first_error {
        Some(e) => Err(e),
        None if cancel.is_cancelled() => Err(BuildError::Cancelled),
        None => Ok(stats),
    }
}

async fn pull_layer(
    d: &Daemon,
    layer: &PlannedLayer,
    keyring: &Keyring,
    dest: &Path,
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<LayerStats, BuildError> {
    let _permit = tokio::select! {
        p = d.inner.downloads.clone().acquire_owned() => p.map_err(|_| BuildError::Cancelled)?,
        _ = cancel.cancelled() => return Err(BuildError::Cancelled),
    };
    let fetched = LAYER_RETRY
        .run(
            format!("layer {}", layer.descriptor.digest),
            Some(cancel),
            || async {
                reset_dir(dest)?;
                let mut counted = 0u64;
                let result =
                    fetch_and_unpack(d, layer, keyring, dest, progress, &mut counted, cancel).await;
                if result.is_err() {
                    progress.sub(counted);
                    // A mismatch or refused layer leaves nothing behind: no partial layer survives.
                    let _ = std::fs::remove_dir_all(dest.parent().unwrap_or(dest));
                }
                result
            },
            |e| {
                if cancel.is_cancelled() {
                    Verdict::Permanent
                } else {
                    e.retry_verdict()
                }
            },
        )
        .await;
    match fetched {
        Ok(stats) => {
            crate::fault::point("build.layer");
            d.inner.metrics.layers_unpacked.inc();
            Ok(stats)
        }
        Err(GaveUp {
            stop: Stop::Cancelled,
            ..
        }) => Err(BuildError::Cancelled),
        Err(GaveUp { error, .. }) => Err(error),
    }
}

fn reset_dir(dest: &Path) -> Result<(), BuildError> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| BuildError::io("clear", dest, e))?;
    }
    // `snapshots/<chainID>/fs`, with the modes containerd gives a layer's directories.
    let mut levels: Vec<&Path> = dest.ancestors().take(3).collect();
    levels.reverse();
    for level in levels {
        crate::access::create_dir_with_mode(level, crate::access::LAYER_DIR)
            .map_err(|e| BuildError::io("create", level, e))?;
    }
    Ok(())
}

async fn fetch_and_unpack(
    d: &Daemon,
    layer: &PlannedLayer,
    keyring: &Keyring,
    dest: &Path,
    progress: &Progress,
    counted: &mut u64,
    cancel: &CancellationToken,
) -> Result<LayerStats, BuildError> {
    let desc = &layer.descriptor;
    let creds = keyring.credentials_for(layer.source.registry());
    let layer_error = |source| BuildError::Layer {
        image: layer.source.to_string(),
        digest: desc.digest.clone(),
        source: Box::new(source),
    };
    let mut stream = d
        .inner
        .registry
        .open_blob(&layer.source, desc, &creds)
        .await
        .map_err(|source| BuildError::Fetch {
            image: layer.source.to_string(),
            digest: desc.digest.clone(),
            source: Box::new(source),
        })?;
    let compression = Compression::from_media_type(&desc.media_type).unwrap_or(Compression::None);
    let (tx, mut reader) = pipe::channel();
    let (dest_owned, diff_id): (PathBuf, String) = (dest.to_owned(), desc.diff_id.clone());
    let unpacker = background::spawn("unpack", move || -> Result<LayerStats, UnpackError> {
        let stats = unpack::apply_layer(&mut reader, compression, &dest_owned, &diff_id)?;
        // The blob's digest is checked when its last byte has passed: read to the end so a
        // mismatch after the tar's end is still seen.
        io::copy(&mut reader, &mut io::sink()).map_err(|source| UnpackError::Stream { source })?;
        Ok(stats)
    });

    let mut fetch_error = None;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = cancel.cancelled() => {
                let _ = tx.send(Err(io::Error::other("build cancelled"))).await;
                fetch_error = Some(BuildError::Cancelled);
                break;
            }
        };
        match item {
            None => break,
            Some(Ok(chunk)) => {
                let n = chunk.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    break; // the unpacker stopped; its error says why
                }
                progress.add(n);
                d.inner.metrics.pulled_bytes.inc_by(n);
                *counted += n;
            }
            Some(Err(e)) => {
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                fetch_error = Some(BuildError::Fetch {
                    image: layer.source.to_string(),
                    digest: desc.digest.clone(),
                    source: Box::new(e),
                });
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| BuildError::Internal(Failure::new("unpack task", e)))?;
    if let Some(e) = fetch_error {
        return Err(e);
    }
    unpacked.map_err(|e| match e {
        UnpackError::NoSpace { needed_bytes, .. } => BuildError::NoSpace {
            needed_bytes,
            size_gib: 0,
        },
        other => layer_error(other),
    })
}

/// Once every layer of `plan` is unpacked: the directories each new layer made without
/// listing them take their lower layers' attributes, as containerd's unpack gives them
/// (see `unpack::inherit_implicit_dirs`). Layers run from the bottom of their chain up, so
/// a directory a lower layer made the same way is final before a layer above copies it.
/// Only those directories are touched; most layers have none.
pub async fn inherit_implicit_dirs(
    plan: &Plan,
    stats: &HashMap<String, LayerStats>,
    root: &Path,
) -> Result<(), BuildError> {
    let parents: HashMap<&str, Option<&str>> = plan
        .existing
        .iter()
        .map(|(chain, e)| (chain.as_str(), e.parent.as_deref()))
        .chain(
            plan.layers
                .iter()
                .map(|l| (l.chain_id.as_str(), l.parent.as_deref())),
        )
        .collect();
    let mut jobs = Vec::new();
    for layer in &plan.layers {
        let Some(dirs) = stats
            .get(&layer.chain_id)
            .map(|s| &s.implicit_dirs)
            .filter(|d| !d.is_empty())
        else {
            continue;
        };
        let mut lowers = Vec::new();
        let mut below = layer.parent.as_deref();
        while let Some(chain) = below {
            lowers.push(layer_dir(root, chain));
            below = parents.get(chain).copied().flatten();
        }
        jobs.push((layer.clone(), lowers, dirs.clone()));
    }
    if jobs.is_empty() {
        return Ok(());
    }
    jobs.sort_by_key(|(_, lowers, _)| lowers.len());
    let root = root.to_owned();
    background::spawn("implicit-dirs", move || {
        for (layer, lowers, dirs) in jobs {
            let dest = layer_dir(&root, &layer.chain_id);
            let n = unpack::inherit_implicit_dirs(&dest, &lowers, &dirs).map_err(|e| {
                BuildError::Layer {
                    image: layer.source.to_string(),
                    digest: layer.descriptor.digest.clone(),
                    source: Box::new(e),
                }
            })?;
            tracing::debug!(layer = %layer.descriptor.digest, made = dirs.len(), inherited = n,
                "directories the layer did not list took their lower layers' attributes");
        }
        Ok(())
    })
    .await
    .map_err(|e| BuildError::Internal(Failure::new("implicit directories task", e)))?
}
