//! The plan of a build: the resolved images and the set of distinct layers to fetch, keyed by
//! chainID so that a layer shared by several images is fetched and unpacked once.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use futures_util::future::try_join_all;

use super::BuildError;
use crate::daemon::Daemon;
use crate::layout::{self, Blob, IndexEntry, SnapshotEntry};
use crate::registry::{chain_ids, ImageReference, Keyring, LayerDescriptor, ResolvedImage};
use crate::unpack::LayerStats;

#[derive(Debug)]
pub struct PlannedImage {
    pub resolved: ResolvedImage,
    pub chain_ids: Vec<String>,
    /// Compressed bytes of its layers.
    pub size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct PlannedLayer {
    pub chain_id: String,
    pub parent: Option<String>,
    pub descriptor: LayerDescriptor,
    /// The first image that has it: where it is fetched from.
    pub source: ImageReference,
    /// Normalised references of every image using it.
    pub images: Vec<String>,
}

#[derive(Debug)]
pub struct Plan {
    pub images: Vec<PlannedImage>,
    /// Layers to fetch: those the target filesystem does not hold yet.
    pub layers: Vec<PlannedLayer>,
    /// What the target already held (`snapshots.json`), with the new images' names added to
    /// the layers they share.
    pub existing: BTreeMap<String, SnapshotEntry>,
}

/// Resolves every image at once; the first failure names its image.
pub async fn resolve_all(
    d: &Daemon,
    images: &[ImageReference],
    keyring: &Keyring,
) -> Result<Vec<ResolvedImage>, BuildError> {
    try_join_all(images.iter().map(|image| async move {
        let creds = keyring.credentials_for(image.registry());
        d.inner
            .registry
            .resolve(image, &creds)
            .await
            .map_err(|source| BuildError::Resolve {
                image: image.to_string(),
                source: Box::new(source),
            })
    }))
    .await
}

impl Plan {
    /// Plans fetching `resolved` into a filesystem that already holds `existing` layers
    /// (empty for a new cache; a clone's for a disk or a reused cache).
    pub fn new(
        resolved: Vec<ResolvedImage>,
        mut existing: BTreeMap<String, SnapshotEntry>,
    ) -> Result<Plan, BuildError> {
        let mut images = Vec::with_capacity(resolved.len());
        let mut layers: Vec<PlannedLayer> = Vec::new();
        let mut by_chain: HashMap<String, usize> = HashMap::new();
        for image in resolved {
            let name = image.reference.to_string();
            let diff_ids: Vec<String> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
            let chains = chain_ids(&diff_ids);
            for (i, (layer, chain)) in image.layers.iter().zip(&chains).enumerate() {
                if let Some(held) = existing.get_mut(chain) {
                    if !held.images.contains(&name) {
                        held.images.push(name.clone());
                    }
                    continue;
                }
                match by_chain.get(chain) {
                    Some(&at) => {
                        if !layers[at].images.contains(&name) {
                            layers[at].images.push(name.clone());
                        }
                    }
                    None => {
                        by_chain.insert(chain.clone(), layers.len());
                        layers.push(PlannedLayer {
                            chain_id: chain.clone(),
                            parent: i.checked_sub(1).map(|p| chains[p].clone()),
                            descriptor: layer.clone(),
                            source: image.reference.clone(),
                            images: vec![name.clone()],
                        });
                    }
                }
            }
            let size_bytes = image.layers.iter().map(|l| l.size).sum();
            images.push(PlannedImage {
                resolved: image,
                chain_ids: chains,
                size_bytes,
            });
        }
        Ok(Plan {
            images,
            layers,
            existing,
        })
    }

    /// Compressed bytes to fetch: each distinct layer once.
    pub fn total_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.descriptor.size).sum()
    }

    /// `oci-layout`, `index.json` and the manifests, indexes and configs under `blobs/`.
    pub fn write_layout(&self, root: &Path) -> Result<(), BuildError> {
        // Images already in the filesystem stay listed, unless a new one takes their name.
        let mut entries: Vec<IndexEntry> = match layout::read_index(root) {
            Ok(index) => index.manifests,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(BuildError::io("read index.json in", root, e)),
        };
        let new_names: Vec<String> = self
            .images
            .iter()
            .map(|i| i.resolved.reference.to_string())
            .collect();
        entries.retain(|e| {
            e.annotations
                .get(layout::ANNOTATION_IMAGE_NAME)
                .is_none_or(|n| !new_names.contains(n))
        });
        for image in &self.images {
            let r = &image.resolved;
            let mut blobs = vec![
                Blob {
                    digest: &r.manifest.digest,
                    bytes: &r.manifest.bytes,
                },
                Blob {
                    digest: &r.config.digest,
                    bytes: &r.config.bytes,
                },
            ];
            if let Some(index) = &r.index {
                blobs.push(Blob {
                    digest: &index.digest,
                    bytes: &index.bytes,
                });
            }
            for blob in &blobs {
                layout::write_blob(root, blob)
                    .map_err(|e| BuildError::io("write a blob of", root, e))?;
            }
            entries.push(IndexEntry::for_image(
                &r.reference.to_string(),
                r.reference.tag(),
                &r.manifest.media_type,
                &r.manifest.digest,
                r.manifest.bytes.len() as u64,
            ));
        }
        layout::write_index(root, entries)
            .map_err(|e| BuildError::io("write index.json in", root, e))
    }

    pub fn write_snapshots(
        &self,
        root: &Path,
        stats: &HashMap<String, LayerStats>,
    ) -> Result<(), BuildError> {
        let mut entries = self.existing.clone();
        entries.extend(self.layers.iter().map(|l| {
            let entry = SnapshotEntry {
                diff_id: l.descriptor.diff_id.clone(),
                parent: l.parent.clone(),
                size: stats.get(&l.chain_id).map(|s| s.file_bytes).unwrap_or(0),
                images: l.images.clone(),
            };
            (l.chain_id.clone(), entry)
        }));
        layout::write_snapshots(root, &entries)
            .map_err(|e| BuildError::io("write snapshots.json in", root, e))
    }
}
