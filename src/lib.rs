//! imagecache: a node-local OCI image cache.
//!
//! Images are pulled in parallel into a loop-mounted ext4 image, frozen into a read-only,
//! content-addressed snapshot, and cloned copy-on-write into per-pod disks. See
//! `docs/` and the module docs for how the pieces fit.

pub mod access;
pub mod api;
pub mod block_snapshot;
pub mod cli;
pub mod config;
pub mod cri;
pub mod daemon;
pub mod disk_image;
pub mod errname;
pub mod failure;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod image;
pub mod layout;
pub mod matching;
pub mod mount_path;
pub mod objects;
pub mod registry;
pub mod retry;
pub mod root_socket;
pub mod share;
pub mod snapshotter_grpc;
pub mod store;
pub mod sys;
pub mod unix_grpc;
pub mod unpack;
