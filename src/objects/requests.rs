//! Requests that passed a front door's validation, in the form the daemon acts on.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::resources::{DiskSpec, ImageCache};
use crate::registry::ImageReference;

/// An ImageCache create request that passed validation, with its references normalised and
/// the size defaulted.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidImageCache {
    pub object: ImageCache,
    pub images: Vec<ImageReference>,
    pub size_gib: u32,
}

/// A Disk create request that passed validation: the images and selection annotations
/// matching needs, and what the Disk object keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidDisk {
    /// The disk's `metadata.name` when the request gave one (a DNS-1123 label): a create of
    /// a name that exists answers that disk instead of making another. `None`: the daemon
    /// names it `disk-<16 hex>`.
    pub name: Option<String>,
    pub images: Vec<ImageReference>,
    pub annotations: BTreeMap<String, String>,
    /// `--cache ID`; `None` for automatic matching.
    pub cache: Option<String>,
    pub size_gib: Option<u32>,
    /// None: attach only.
    pub mountpoint: Option<Option<PathBuf>>,
    /// `namespace:name` pull secrets from the Pod's imagePullSecrets.
    pub pull_secrets: Vec<String>,
    /// The spec as given, kept on the Disk object.
    pub spec: DiskSpec,
    /// The Pod's namespace/name/uid, as labels on the Disk.
    pub labels: BTreeMap<String, String>,
}
