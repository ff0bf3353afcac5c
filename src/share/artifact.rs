//! The shared snapshot's OCI artifact: an image manifest whose `artifactType` names the
//! format, whose config is [`ShareConfig`] and whose layers are the data chunks, each
//! zstd-compressed, in the chunk manifest's order.

use serde::{Deserialize, Serialize};

use super::error::ShareError;
use crate::block_snapshot::ChunkManifest;

pub const FORMAT_VERSION: u32 = 1;
pub const ARTIFACT_TYPE: &str = "application/vnd.imagecache.snapshot.v1";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.imagecache.snapshot.config.v1+json";
pub const CHUNK_MEDIA_TYPE: &str = "application/vnd.imagecache.snapshot.chunk.v1+zstd";
pub(crate) const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// A config or manifest this large is not one this format writes (a few hundred bytes per
/// chunk; 4 MiB chunks): refused before it is read whole.
pub(super) const MAX_METADATA: usize = 16 << 20;

/// What the snapshot was built from and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareConfig {
    pub format_version: u32,
    /// The content key it is tagged by.
    pub key: String,
    pub platform: String,
    pub size_gib: u32,
    pub images: Vec<SharedImage>,
    /// "sha256:…" of the chunk manifest: the snapshot's identity.
    pub snapshot_digest: String,
    pub chunk_manifest: ChunkManifest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedImage {
    pub image: String,
    /// The digest the reference resolved to.
    pub digest: String,
    /// ChainIDs of its layers, bottom first.
    pub chain_ids: Vec<String>,
}

/// One chunk's blob: the layer descriptor's digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkBlob {
    pub digest: String,
    pub size: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    artifact_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

impl ShareConfig {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serialises")
    }

    /// Parses a config blob and checks it holds together: this format, a chunk manifest
    /// whose digest is the one recorded.
    pub fn from_bytes(bytes: &[u8]) -> Result<ShareConfig, ShareError> {
        let config: ShareConfig = serde_json::from_slice(bytes)
            .map_err(|e| ShareError::Invalid(format!("config: {e}")))?;
        if config.format_version != FORMAT_VERSION {
            return Err(ShareError::Invalid(format!(
                "format version {} (this daemon reads {FORMAT_VERSION})",
                config.format_version
            )));
        }
        let canonical = config.chunk_manifest.canonical_bytes();
        ChunkManifest::from_slice(&canonical)
            .map_err(|e| ShareError::Invalid(format!("chunk manifest: {e}")))?;
        if config.chunk_manifest.digest() != config.snapshot_digest {
            return Err(ShareError::Invalid(format!(
                "the chunk manifest's digest is {}, the config says {}",
                config.chunk_manifest.digest(),
                config.snapshot_digest
            )));
        }
        Ok(config)
    }
}

/// The artifact's manifest bytes for a config blob and the chunks' blobs, in order.
pub(crate) fn manifest_bytes(
    config_digest: &str,
    config_size: u64,
    chunks: &[ChunkBlob],
) -> Vec<u8> {
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: config_digest.into(),
            size: config_size,
        },
        layers: chunks
            .iter()
            .map(|c| Descriptor {
                media_type: CHUNK_MEDIA_TYPE.into(),
                digest: c.digest.clone(),
                size: c.size,
            })
            .collect(),
    };
    serde_json::to_vec(&manifest).expect("plain data serialises")
}

/// The config's descriptor and the chunks' blobs of an artifact manifest of this format.
pub(crate) fn parse_manifest(bytes: &[u8]) -> Result<(ChunkBlob, Vec<ChunkBlob>), ShareError> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| ShareError::Invalid(format!("manifest: {e}")))?;
    if m.artifact_type != ARTIFACT_TYPE || m.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(ShareError::Invalid(format!(
            "artifact type {:?} with config {:?} is not a shared snapshot ({ARTIFACT_TYPE})",
            m.artifact_type, m.config.media_type
        )));
    }
    if let Some(l) = m.layers.iter().find(|l| l.media_type != CHUNK_MEDIA_TYPE) {
        return Err(ShareError::Invalid(format!(
            "layer of media type {:?}",
            l.media_type
        )));
    }
    for digest in std::iter::once(&m.config.digest).chain(m.layers.iter().map(|l| &l.digest)) {
        crate::block_snapshot::parse_digest(digest)
            .map_err(|_| ShareError::Invalid(format!("digest {digest:?}")))?;
    }
    let blob = |d: &Descriptor| ChunkBlob {
        digest: d.digest.clone(),
        size: d.size,
    };
    Ok((blob(&m.config), m.layers.iter().map(blob).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back_and_anything_else_is_refused() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let chunks = vec![
            ChunkBlob {
                digest: d('a'),
                size: 10,
            },
            ChunkBlob {
                digest: d('b'),
                size: 20,
            },
        ];
        let bytes = manifest_bytes(&d('c'), 5, &chunks);
        let (config, layers) = parse_manifest(&bytes).unwrap();
        assert_eq!(
            config,
            ChunkBlob {
                digest: d('c'),
                size: 5
            }
        );
        assert_eq!(layers, chunks);
        let other = String::from_utf8(bytes)
            .unwrap()
            .replace(ARTIFACT_TYPE, "application/x");
        assert!(parse_manifest(other.as_bytes()).is_err());
        let bad = String::from_utf8(manifest_bytes("sha256:../x", 5, &chunks)).unwrap();
        assert!(parse_manifest(bad.as_bytes()).is_err());
    }
}
