//! The `imagecache.io/v1` resources in the Kubernetes object shape: what the daemon stores and
//! answers with, and what the HTTP API sends as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const API_GROUP: &str = "imagecache.io";
pub const API_VERSION: &str = "imagecache.io/v1";
/// apiVersions whose ImageCache objects are accepted as they are, so the YAML operators
/// already write for Alibaba ECI and Tencent EKS works unchanged.
pub const ACCEPTED_API_VERSIONS: [&str; 3] = [
    API_VERSION,
    "eci.alibabacloud.com/v1",
    "eks.cloud.tencent.com/v1",
];

pub const KIND_IMAGE_CACHE: &str = "ImageCache";
pub const KIND_IMAGE_CACHE_LIST: &str = "ImageCacheList";

pub const MIN_CACHE_SIZE_GIB: u32 = 20;
pub const MAX_CACHE_SIZE_GIB: u32 = 32768;
pub const MIN_RETENTION_DAYS: u32 = 1;
pub const MAX_RETENTION_DAYS: u32 = 65536;

/// The subset of Kubernetes ObjectMeta an ImageCache uses. Fields Kubernetes itself fills in
/// are accepted (so `kubectl get -o yaml` output can be fed back) but not required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Read-only fields the Kubernetes API server writes: accepted so its `-o yaml` output
    /// can be fed back, and dropped, as the API server drops them on create.
    #[serde(default, skip_serializing)]
    pub self_link: Option<serde::de::IgnoredAny>,
    #[serde(default, skip_serializing)]
    pub managed_fields: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageCache {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ImageCacheSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ImageCacheStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageCacheSpec {
    /// Image references, normalised by the daemon when the cache is created.
    #[serde(default)]
    pub images: Vec<String>,
    /// `namespace:name` of kubernetes.io/dockerconfigjson secrets under the secrets dir.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// GiB, 20..=32768; the daemon's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache_size: Option<u32>,
    /// Days, 1..=65536; absent means the cache never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// `POST /apis/imagecache.io/v1/pulls` (`imagecache pull`): a cache made from the shared
/// snapshot `reference` names, called `name` (by default `shared-` and 12 hex digits of the
/// snapshot's manifest digest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotPull {
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    /// Waiting in the build queue: `max_concurrent_builds` builds run already, or the daemon
    /// holds `max_loop_devices`; a `Queued` event says which.
    Queued,
    Pulling,
    Freezing,
    Ready,
    Failed,
}

impl Phase {
    /// Whether no more work will happen on a cache in this phase.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Ready | Phase::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Pulling => "Pulling",
            Phase::Freezing => "Freezing",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheStatus {
    pub phase: Phase,
    /// Bytes of layer blobs fetched so far over bytes to fetch, as "NN%".
    pub progress: String,
    pub image_cache_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    pub last_updated_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_date_time: Option<String>,
    /// Bytes of data blocks in the frozen image (what a clone shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_size_bytes: Option<u64>,
    /// Human form of `dataSizeBytes`, e.g. "450 MiB".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_size: Option<String>,
    /// Why the cache failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The resolved images, once pulled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<CachedImage>,
    /// How its snapshot came to be, once Ready: `built` here, or `imported` from
    /// `share_registry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where its snapshot is shared, once pushed: `<registry>/<repository>@<digest>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_as: Option<String>,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// An image held by a cache, as resolved for this host's platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedImage {
    /// Normalised reference (`docker.io/library/nginx:latest`).
    pub image: String,
    /// Digest of the platform manifest.
    pub digest: String,
    /// Digest the reference resolved to (the index's when it pointed at one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_digest: Option<String>,
    /// ChainIDs of its layers, bottom first: `snapshots/<chainID>/fs` in the cache.
    pub chain_ids: Vec<String>,
    /// Compressed bytes of its layers.
    pub size_bytes: u64,
    /// Whether its registry refused to serve its manifest without credentials when it was
    /// cached: such an image is served from the cache only to a request whose own credentials
    /// can read it (daemon/image_access.rs). Rows written before this was recorded read as
    /// `true`, so nothing private is served on a guess.
    #[serde(default = "credentials_required_unless_recorded")]
    pub credentials_required: bool,
}

fn credentials_required_unless_recorded() -> bool {
    true
}

/// A Kubernetes Event, as the `events` of an object's status carry them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// "Normal" or "Warning".
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: u32,
    pub first_timestamp: String,
    pub last_timestamp: String,
    /// The object the event is about (filled when the object is served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub involved_object: Option<super::InvolvedObject>,
    /// `imagecached` and this node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<super::EventSource>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheList {
    pub api_version: String,
    pub kind: String,
    pub metadata: ListMeta,
    pub items: Vec<ImageCache>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListMeta {
    /// The store's sequence when the list was read (ImageCache lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// The answer of `verify`: the snapshot re-hashed against its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResult {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub snapshot_digest: String,
    pub ok: bool,
    pub chunks_checked: u64,
    /// One line per chunk or extent that differs.
    pub problems: Vec<String>,
}

pub const KIND_DISK: &str = "Disk";
pub const KIND_DISK_LIST: &str = "DiskList";

/// A per-pod disk: a copy-on-write clone of a cache's snapshot (or an empty disk when no
/// cache matches), with the pod's images in it. `metadata.name` is the disk id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: DiskSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DiskStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSpec {
    /// The Pod the disk is for (metadata and the images of its containers and
    /// initContainers); or leave it out and give `images` and `annotations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Selection annotations, as a Pod would carry them (`k8s.aliyun.com/eci-imc-id`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// A cache id to clone (`imc-…`), or `auto` (the default) for automatic matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_id: Option<String>,
    /// GiB; default the cache's size, never smaller than it.
    #[serde(default, rename = "sizeGiB", skip_serializing_if = "Option::is_none")]
    pub size_gib: Option<u32>,
    /// Mount the disk (default true); false only attaches it, for a microVM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<bool>,
    /// Where to mount it; default `<root>/disks/<id>/mnt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskPhase {
    Pulling,
    Ready,
    Failed,
    /// Shown, never stored: the daemon restarted and has not yet checked that the disk is
    /// attached and mounted as it was (its stored phase comes back once it has).
    Adopting,
}

impl std::fmt::Display for DiskPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskPhase::Pulling => "Pulling",
            DiskPhase::Ready => "Ready",
            DiskPhase::Failed => "Failed",
            DiskPhase::Adopting => "Adopting",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskStatus {
    pub phase: DiskPhase,
    /// The cache cloned, or none for an empty disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_digest: Option<String>,
    pub matched_images: Vec<String>,
    pub missing_images: Vec<String>,
    pub pulled_images: Vec<String>,
    /// The loop device, `/dev/loopN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    #[serde(rename = "sizeGiB")]
    pub size_gib: u32,
    pub timings: DiskTimings,
    /// The cache created in the background from this disk's images, when none matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_created_cache: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub creation_time: String,
    #[serde(default)]
    pub events: Vec<Event>,
    /// The secret a container gives (annotation `containerd.io/snapshot/imagecache.io/disk-token`)
    /// to run on this disk. Only the create's answer carries it: the daemon keeps its sha256
    /// alone, so no get, list or event can show it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_token: Option<BindToken>,
}

/// A disk's bind token. Its Debug shows nothing of it, so a status printed into a log by
/// accident does not give it away.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BindToken(pub String);

impl std::fmt::Debug for BindToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindToken(<redacted>)")
    }
}

/// Milliseconds each step took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskTimings {
    pub clone_ms: f64,
    pub grow_ms: f64,
    pub attach_ms: f64,
    pub mount_ms: f64,
    pub pull_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskList {
    pub api_version: String,
    pub kind: String,
    pub metadata: ListMeta,
    pub items: Vec<Disk>,
}
