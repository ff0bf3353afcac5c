//! Shared test support: a scratch XFS filesystem, a real registry on 127.0.0.1, a
//! deterministic OCI image generator and a tree walker to compare results with.
#![allow(dead_code)]

pub mod busybox;
pub mod cachefs;
pub mod containerd;
pub mod cri;
pub mod daemon;
pub mod gen;
pub mod hostile_registry;
pub mod http;
pub mod oci;
pub mod oracle;
pub mod proxy;
pub mod registry;
pub mod scratch;
pub mod stats;
pub mod tree;
