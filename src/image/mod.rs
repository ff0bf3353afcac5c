//! ext4 cache image files: create a sparse file and format it, attach and mount it through
//! `Sys`, check it, and grow it.
//!
//! A cache image is built once and then frozen, so everything here is tuned for that: the
//! file is sparse and formatted without writing inode tables or the journal, and mounted so
//! the kernel never zeroes them in the background either. What the build did not write stays
//! a hole, which keeps freezing (hashing data extents only) proportional to the content.

mod check;
mod create;
mod densify;
mod error;
mod grow;
mod mount;
pub(crate) mod tool;

pub use check::fsck;
pub use create::{create, create_sparse, mkfs, MAX_LABEL_LEN};
pub use densify::{
    densify, rewrite_if_fragmented, Densified, EXTENT_SLACK, MAX_FILLED_GAP, REWRITE_ABOVE_RUNS,
};
pub use error::{ImageError, Result};
pub use grow::grow;
pub use mount::{mount, MountConfig, MountedImage};

/// ext4 block size, and the loop device's logical block size under direct I/O. Image sizes
/// must be a multiple of it so the device covers the whole file.
pub const BLOCK_SIZE: u64 = 4096;
