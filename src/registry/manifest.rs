//! Manifests, indexes and image configs: parsed just enough to find the platform's manifest,
//! the config and the layers, and kept as the exact bytes served (the cache stores them as
//! blobs, and their digests must stay valid).

use super::digest::Hasher;
use super::error::RegistryError;
use super::platform::Platform;
use serde::Deserialize;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What we ask registries for. Schema 1 is accepted on the wire only so that such images get
/// a clear "re-push it" error instead of a confusing 404 or a converted manifest.
pub(crate) const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

const CONFIG_TYPES: &[&str] = &[
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
];

/// Layer encodings the unpacker understands; anything else (encrypted layers, artifacts such
/// as Helm charts or Wasm modules) is refused up front rather than failing mid-build.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
];

/// Configs are small JSON documents; a bigger one is an artifact or an attack.
pub(crate) const MAX_CONFIG_SIZE: u64 = 16 << 20;

/// A manifest or index exactly as the registry served it, digest verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// A small blob (the image config) fetched whole, digest verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBlob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// One layer to stream, with the uncompressed digest the unpacker's output must have.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerDescriptor {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// `rootfs.diff_ids[i]` of the config for layer `i`.
    pub diff_id: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DescriptorPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

/// A manifest document, by kind.
pub(crate) enum Parsed {
    Index {
        media_type: String,
        manifests: Vec<Descriptor>,
    },
    Image {
        media_type: String,
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Parses a manifest or index, refusing schema 1 and anything that is not an image.
pub(crate) fn parse(bytes: &[u8], image: &str) -> Result<Parsed, RegistryError> {
    let invalid = |reason: String| RegistryError::Invalid {
        image: image.to_string(),
        what: "manifest",
        reason,
    };
    let doc: Document =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
    let media_type = doc.media_type.clone().unwrap_or_default();
    if doc.schema_version == Some(1)
        || media_type == DOCKER_SCHEMA1
        || media_type == DOCKER_SCHEMA1_SIGNED
    {
        return Err(RegistryError::Schema1 {
            image: image.to_string(),
        });
    }
    if doc.schema_version != Some(2) {
        return Err(invalid(format!(
            "unsupported schemaVersion {:?}",
            doc.schema_version
        )));
    }
    // OCI allows omitting mediaType; fall back to the document's shape.
    let is_index = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        "" => doc.manifests.is_some(),
        other => {
            return Err(RegistryError::Unsupported {
                image: image.to_string(),
                reason: format!("manifest media type `{other}`"),
            })
        }
    };
    if is_index {
        let manifests = doc
            .manifests
            .ok_or_else(|| invalid("index without `manifests`".into()))?;
        Ok(Parsed::Index {
            media_type: if media_type.is_empty() {
                OCI_INDEX.into()
            } else {
                media_type
            },
            manifests,
        })
    } else {
        let config = doc
            .config
            .ok_or_else(|| invalid("manifest without `config`".into()))?;
        let layers = doc
            .layers
            .ok_or_else(|| invalid("manifest without `layers`".into()))?;
        if !CONFIG_TYPES.contains(&config.media_type.as_str()) {
            return Err(RegistryError::Unsupported {
                image: image.to_string(),
                reason: format!(
                    "config media type `{}` (an artifact, not a container image?)",
                    config.media_type
                ),
            });
        }
        super::reference::validate_digest(&config.digest)
            .map_err(|e| invalid(format!("config digest: {e}")))?;
        if config.size > MAX_CONFIG_SIZE {
            return Err(invalid(format!(
                "config is {} bytes, more than the {MAX_CONFIG_SIZE} allowed",
                config.size
            )));
        }
        for layer in &layers {
            if !LAYER_TYPES.contains(&layer.media_type.as_str()) {
                return Err(RegistryError::Unsupported {
                    image: image.to_string(),
                    reason: format!(
                        "layer {} has media type `{}`",
                        layer.digest, layer.media_type
                    ),
                });
            }
            super::reference::validate_digest(&layer.digest)
                .map_err(|e| invalid(format!("layer digest: {e}")))?;
        }
        Ok(Parsed::Image {
            media_type: if media_type.is_empty() {
                OCI_MANIFEST.into()
            } else {
                media_type
            },
            config,
            layers,
        })
    }
}

/// Index entries that are image manifests with a platform, for platform selection. Entries
/// such as buildkit attestations (`unknown/unknown`) simply never match.
pub(crate) fn platforms(manifests: &[Descriptor]) -> Vec<(usize, Platform)> {
    manifests
        .iter()
        .enumerate()
        .filter(|(_, d)| {
            d.media_type.is_empty()
                || d.media_type == OCI_MANIFEST
                || d.media_type == DOCKER_MANIFEST
        })
        .filter_map(|(i, d)| {
            let p = d.platform.as_ref()?;
            Some((
                i,
                Platform {
                    os: p.os.clone(),
                    architecture: p.architecture.clone(),
                    variant: p.variant.clone(),
                },
            ))
        })
        .collect()
}

#[derive(Deserialize)]
struct ImageConfig {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// Reads `rootfs.diff_ids` from an image config and pairs them with the layers.
pub(crate) fn layers_with_diff_ids(
    config: &[u8],
    layers: &[Descriptor],
    image: &str,
) -> Result<Vec<LayerDescriptor>, RegistryError> {
    let invalid = |reason: String| RegistryError::Invalid {
        image: image.to_string(),
        what: "image config",
        reason,
    };
    let config: ImageConfig =
        serde_json::from_slice(config).map_err(|e| invalid(format!("no usable rootfs: {e}")))?;
    if config.rootfs.kind != "layers" {
        return Err(invalid(format!(
            "rootfs type is `{}`, expected `layers`",
            config.rootfs.kind
        )));
    }
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.len() != layers.len() {
        return Err(invalid(format!(
            "{} diff_ids for {} layers; the image is corrupt",
            diff_ids.len(),
            layers.len()
        )));
    }
    layers
        .iter()
        .zip(diff_ids)
        .map(|(layer, diff_id)| {
            super::reference::validate_digest(&diff_id)
                .map_err(|e| invalid(format!("diff_id: {e}")))?;
            Ok(LayerDescriptor {
                digest: layer.digest.clone(),
                size: layer.size,
                media_type: layer.media_type.clone(),
                diff_id,
            })
        })
        .collect()
}

/// Checks `bytes` against a descriptor's digest and size.
pub(crate) fn verify(
    what: &'static str,
    bytes: &[u8],
    digest: &str,
    size: Option<u64>,
) -> Result<(), RegistryError> {
    let mut hasher = Hasher::for_digest(digest).ok_or_else(|| RegistryError::DigestMismatch {
        what,
        expected: digest.to_string(),
        actual: "(unsupported digest algorithm)".to_string(),
    })?;
    hasher.update(bytes);
    let actual = hasher.finish();
    if actual != digest {
        return Err(RegistryError::DigestMismatch {
            what,
            expected: digest.to_string(),
            actual,
        });
    }
    match size {
        Some(size) if (bytes.len() as u64) < size => Err(RegistryError::Truncated {
            digest: digest.to_string(),
            expected: size,
            actual: bytes.len() as u64,
        }),
        Some(size) if (bytes.len() as u64) > size => Err(RegistryError::Oversized {
            digest: digest.to_string(),
            expected: size,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn schema1_is_refused_clearly() {
        let e = parse(
            br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#,
            "img",
        )
        .err()
        .unwrap();
        assert!(matches!(e, RegistryError::Schema1 { .. }));
        assert!(e.to_string().contains("schema 1"));
    }

    #[test]
    fn oci_manifest_without_media_type_is_recognised() {
        let doc = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D}","size":2}},
                "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D}","size":5}}]}}"#
        );
        match parse(doc.as_bytes(), "img").unwrap() {
            Parsed::Image {
                media_type, layers, ..
            } => {
                assert_eq!(media_type, OCI_MANIFEST);
                assert_eq!(layers.len(), 1);
            }
            Parsed::Index { .. } => panic!("not an index"),
        }
    }

    #[test]
    fn artifacts_are_refused() {
        let doc = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"{D}","size":2}},"layers":[]}}"#
        );
        let e = parse(doc.as_bytes(), "img").err().unwrap();
        assert!(e.to_string().contains("helm"), "{e}");
    }

    #[test]
    fn diff_id_count_must_match_layers() {
        let layers = vec![Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: D.into(),
            size: 1,
            platform: None,
        }];
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D}","{D}"]}}}}"#);
        let e = layers_with_diff_ids(config.as_bytes(), &layers, "img").unwrap_err();
        assert!(e.to_string().contains("2 diff_ids for 1 layers"), "{e}");
        let config = format!(r#"{{"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#);
        let got = layers_with_diff_ids(config.as_bytes(), &layers, "img").unwrap();
        assert_eq!(got[0].diff_id, D);
    }

    #[test]
    fn verify_checks_digest_and_size() {
        let d = sha256_digest(b"abc");
        verify("config", b"abc", &d, Some(3)).unwrap();
        assert!(matches!(
            verify("config", b"abd", &d, Some(3)),
            Err(RegistryError::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify("config", b"abc", &d, Some(4)),
            Err(RegistryError::Truncated { .. })
        ));
        assert!(matches!(
            verify("config", b"abc", &d, Some(2)),
            Err(RegistryError::Oversized { .. })
        ));
    }
}
