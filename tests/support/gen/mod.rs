//! Deterministic OCI layer and image generators for tests and benchmarks.
//!
//! - [`features`]: three small images sharing a base layer that together exercise every
//!   layer feature (modes, owners, devices, xattrs, long names, whiteouts, opaque dirs, ...),
//!   each with the merged tree the generator itself expects an overlay mount to show.
//! - [`realistic`]: ~400 MB, 4-layer, ~20,000-file images for benchmarks.
//! - [`oversized`]: a small zstd blob whose tar claims a huge file.
//! - [`malicious`]: path-escape layers and tampered blobs.
//!
//! Everything derives from a seed through [`Rng`], so a failing case reproduces exactly.

pub mod features;
pub mod malicious;
pub mod model;
pub mod oversized;
pub mod realistic;
pub mod rng;
pub mod tarw;

#[allow(unused_imports)]
pub use features::{feature_set, FeatureImage, FeatureSet};
#[allow(unused_imports)]
pub use model::{
    apply_layer, expected_tree, Body, ExpectedEntry, Kind, LayerSpec, NameStyle, TarEntry, Tree,
};
#[allow(unused_imports)]
pub use rng::Rng;
