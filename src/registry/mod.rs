//! Registry access: image references, credentials, manifest resolution for this node's
//! platform, and layer blobs streamed with their size and digest verified.
//!
//! Built on `oci-client`, but never its `pull()`, which buffers whole layers in memory: each
//! layer is a [`BlobStream`] the caller writes to disk as it arrives, discarding it if the
//! stream's last item is an error.

mod auth;
pub(crate) mod bounded;
mod chain;
mod client;
mod digest;
mod error;
// Visible to the crate for `crate::fuzzing`, which fuzzes the parsers the client calls.
pub(crate) mod manifest;
pub(crate) mod platform;
mod reference;
mod stream;

pub use auth::{decode_basic_auth, split_secret_ref, Credentials, Keyring};
pub use chain::{chain_id_over, chain_ids};
pub use client::{
    RegistryClient, RegistryConfig, ResolvedImage, DEFAULT_TIMEOUT as DEFAULT_REGISTRY_TIMEOUT,
};
pub use error::RegistryError;
pub use manifest::{
    LayerDescriptor, RawBlob, RawManifest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX,
    OCI_MANIFEST,
};
pub use platform::Platform;
pub use reference::ImageReference;
pub use stream::BlobStream;
