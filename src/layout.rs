//! What a cache's filesystem holds besides the unpacked layers (design.md §5): an OCI image
//! layout whose index names every image, the manifests/indexes/configs as blobs, and
//! `snapshots.json` mapping each chainID to its layer and the images that use it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const OCI_LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";
pub const SNAPSHOTS_FILE: &str = "snapshots.json";
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The annotation containerd reads an image's full name from.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One layer of `snapshots.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEntry {
    #[serde(rename = "diffID")]
    pub diff_id: String,
    /// The chainID below this one, null for a base layer.
    pub parent: Option<String>,
    /// Bytes of regular-file content in the unpacked layer.
    pub size: u64,
    /// Normalised references of the images using this layer.
    pub images: Vec<String>,
}

/// A blob to keep in `blobs/` (a manifest, an index or a config).
#[derive(Debug, Clone)]
pub struct Blob<'a> {
    pub digest: &'a str,
    pub bytes: &'a [u8],
}

/// An image entry of `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub media_type: String,
    pub manifests: Vec<IndexEntry>,
}

impl IndexEntry {
    /// The index entry of one image: its platform manifest, named by its full reference.
    pub fn for_image(
        reference: &str,
        tag: Option<&str>,
        media_type: &str,
        digest: &str,
        size: u64,
    ) -> Self {
        let mut annotations =
            BTreeMap::from([(ANNOTATION_IMAGE_NAME.to_owned(), reference.to_owned())]);
        if let Some(tag) = tag {
            annotations.insert(ANNOTATION_REF_NAME.to_owned(), tag.to_owned());
        }
        IndexEntry {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
            annotations,
        }
    }
}

pub fn layer_dir(root: &Path, chain_id: &str) -> PathBuf {
    root.join(SNAPSHOTS_DIR).join(chain_id).join("fs")
}

pub fn blob_path(root: &Path, digest: &str) -> PathBuf {
    let (algo, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    root.join("blobs").join(algo).join(hex)
}

pub fn write_blob(root: &Path, blob: &Blob<'_>) -> std::io::Result<()> {
    let path = blob_path(root, blob.digest);
    if path.exists() {
        return Ok(());
    }
    let algo_dir = path.parent().expect("blob paths have a parent");
    for dir in [root.join("blobs"), algo_dir.to_owned()] {
        crate::access::create_dir_with_mode(&dir, crate::access::LAYER_DIR)?;
    }
    crate::access::write_with_mode(&path, blob.bytes, crate::access::LAYOUT_FILE)
}

/// Writes `oci-layout` and `index.json`.
pub fn write_index(root: &Path, entries: Vec<IndexEntry>) -> std::io::Result<()> {
    write_json(
        &root.join(OCI_LAYOUT_FILE),
        &serde_json::json!({"imageLayoutVersion": "1.0.0"}),
    )?;
    let index = Index {
        schema_version: 2,
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        manifests: entries,
    };
    write_json(&root.join(INDEX_FILE), &index)
}

pub fn write_snapshots(
    root: &Path,
    entries: &BTreeMap<String, SnapshotEntry>,
) -> std::io::Result<()> {
    write_json(&root.join(SNAPSHOTS_FILE), entries)
}

pub fn read_snapshots(root: &Path) -> std::io::Result<BTreeMap<String, SnapshotEntry>> {
    let bytes = std::fs::read(root.join(SNAPSHOTS_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

pub fn read_index(root: &Path) -> std::io::Result<Index> {
    let bytes = std::fs::read(root.join(INDEX_FILE))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

fn write_json(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(&mut file, value).map_err(std::io::Error::other)?;
    file.write_all(b"\n")?;
    crate::access::set_mode(path, crate::access::LAYOUT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_blob(
            root,
            &Blob {
                digest: "sha256:abc",
                bytes: b"{}",
            },
        )
        .unwrap();
        assert_eq!(std::fs::read(root.join("blobs/sha256/abc")).unwrap(), b"{}");
        let entry = IndexEntry::for_image("docker.io/library/a:1", Some("1"), "m", "sha256:abc", 2);
        write_index(root, vec![entry.clone()]).unwrap();
        assert_eq!(read_index(root).unwrap().manifests, vec![entry]);
        let snaps = BTreeMap::from([(
            "sha256:c1".to_string(),
            SnapshotEntry {
                diff_id: "sha256:d1".into(),
                parent: None,
                size: 3,
                images: vec!["a".into()],
            },
        )]);
        write_snapshots(root, &snaps).unwrap();
        let text = std::fs::read_to_string(root.join(SNAPSHOTS_FILE)).unwrap();
        assert!(
            text.contains("\"diffID\"") && text.contains("\"parent\": null"),
            "{text}"
        );
        assert_eq!(read_snapshots(root).unwrap(), snaps);
        assert_eq!(
            layer_dir(root, "sha256:c1"),
            root.join("snapshots/sha256:c1/fs")
        );
    }
}
