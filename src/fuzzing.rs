//! Entry points for the fuzz targets (`fuzz/`) and their corpus replay
//! (`tests/fuzz_corpora.rs`): the registry client's document parsers are private to it, so
//! these thin wrappers call them exactly as the client does. Not an API: nothing else may
//! depend on it.

use crate::registry::manifest::{self, Parsed};
use crate::registry::platform::{self, Platform};
use crate::registry::{LayerDescriptor, RegistryError};

/// What a manifest or index document was parsed into, reduced to what can be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestDoc {
    Index {
        media_type: String,
        entries: usize,
        /// The entry this node would pull (the client's platform selection).
        chosen: Option<usize>,
    },
    Image {
        media_type: String,
        config_digest: String,
        layers: usize,
    },
}

/// Parses a manifest or index as the client does after fetching it, and for an index picks
/// the entry for `host` (this node's platform when `None`).
pub fn manifest(bytes: &[u8], host: Option<&Platform>) -> Result<ManifestDoc, RegistryError> {
    match manifest::parse(bytes, "fuzz")? {
        Parsed::Index {
            media_type,
            manifests,
        } => {
            let here = Platform::host();
            let candidates = manifest::platforms(&manifests);
            let chosen = platform::select(
                host.unwrap_or(&here),
                candidates.iter().map(|(i, p)| (*i, p)),
            );
            Ok(ManifestDoc::Index {
                media_type,
                entries: manifests.len(),
                chosen,
            })
        }
        Parsed::Image {
            media_type,
            config,
            layers,
        } => Ok(ManifestDoc::Image {
            media_type,
            config_digest: config.digest,
            layers: layers.len(),
        }),
    }
}

/// An image manifest's layers paired with the config's `rootfs.diff_ids`, as the client
/// pairs them before a build. `Ok(None)` when `manifest_bytes` is an index.
pub fn image_layers(
    manifest_bytes: &[u8],
    config: &[u8],
) -> Result<Option<Vec<LayerDescriptor>>, RegistryError> {
    match manifest::parse(manifest_bytes, "fuzz")? {
        Parsed::Index { .. } => Ok(None),
        Parsed::Image { layers, .. } => {
            manifest::layers_with_diff_ids(config, &layers, "fuzz").map(Some)
        }
    }
}
