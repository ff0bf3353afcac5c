//! Creating an image: a sparse file, formatted ext4 for a build-once, freeze-later life.

use std::fs::OpenOptions;
use std::path::Path;

use super::error::{ImageError, Result};
use super::{tool, BLOCK_SIZE};

/// Images at least this large get the packed metadata layout (see `mkfs`).
pub const PACKED_METADATA_FROM: u64 = 128 << 30;

/// ext4 volume labels hold at most 16 bytes.
pub const MAX_LABEL_LEN: usize = 16;

/// Create `path` as a sparse file of `size_bytes` and format it ext4 with `label`.
/// Refuses to touch an existing file.
pub fn create(path: &Path, size_bytes: u64, label: &str) -> Result<()> {
    create_sparse(path, size_bytes)?;
    if let Err(e) = mkfs(path, label) {
        // A file that is not a filesystem is only a trap for whoever finds it next.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// A new, all-hole file of `size_bytes`: it costs no space until the filesystem writes.
pub fn create_sparse(path: &Path, size_bytes: u64) -> Result<()> {
    check_size(size_bytes)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| ImageError::io("create", path, e))?;
    file.set_len(size_bytes)
        .map_err(|e| ImageError::io("truncate", path, e))
}

/// Format `path` (an existing, freshly created sparse file) as ext4.
///
/// - 4 KiB blocks: the loop device runs with direct I/O and 4 KiB logical blocks, and a
///   small image would otherwise get 1 KiB blocks it could not be mounted with.
/// - `-m 0`: nobody needs root-reserved blocks on a cache image.
/// - `lazy_itable_init`, `lazy_journal_init`, `nodiscard`, `assume_storage_prezeroed`: the
///   file is all holes, which read as zeros, so writing (or discarding) inode tables and the
///   journal would only turn holes into data that freezing then has to hash. The last one
///   also marks the inode tables as zeroed, so neither the kernel nor e2fsck go back to them.
/// - `-G 1024` (one flex group up to 128 GiB) and `sparse_super2` (two
///   backup superblocks, not one in every group numbered a power of 3, 5 or 7): the bitmaps
///   and inode tables of every group sit in one run at the start, and few backups are spread
///   through the image, so the frozen image has few extents. FICLONE walks extents and
///   clones of one snapshot serialise on its refcount records: a 420 MB cache went from 26–28
///   joined data spans to 6–8 and its clone from ~0.5 ms to 0.26 ms, and its build was no
///   slower (2.01–2.07 s). Not larger: when the group of a file's directory has no free
///   inode, ext4 looks through the rest of its flex group for one, and in a 1 TiB image
///   with one flex group of 4,096 groups that search made unpacking ~40% slower than in a
///   20 GiB one; with 1,024 it is as fast.
/// - `inline_data`: a directory or file small enough lives in its inode, as XFS keeps its
///   short directories. A pod started from a published cache walks each layer's root and the
///   directories above it through the image's loop device; with their own blocks that walk
///   was ~20 single-block reads of ~0.1 ms each that wait one behind the other, and the
///   image's reads per pod start went from 43–55 to 24–37 (docs/BENCHMARKS.md).
/// - From `PACKED_METADATA_FROM` up, also `packed_meta_blocks`: the journal joins that run,
///   and a 1 TiB image clones in ~0.8 ms instead of ~13 ms here.
/// - Up to `MAX_GROUPS` block groups of 4 KiB blocks (2 TiB), plain 4 KiB blocks. Mounting
///   ext4 costs time per block group (descriptor checks, free counts, the allocator's
///   per-group state: ~0.7 µs each here), so a 1 TiB image (8,192 groups) mounts in ~6 ms
///   against ~1 ms for 20 GiB; that is within the disk-ready budget, and blocks keep a
///   file's footprint what it is in a small cache. Above, `bigalloc` clusters ([`cluster_size`])
///   hold the groups to `MAX_GROUPS`, at the price of a cluster per file (docs/OPERATIONS.md).
/// - Above `FULL_INODE_RATIO_UP_TO` (64 GiB), [`inode_count`] inodes rather than one per
///   16 KiB: e2fsck's checks before freezing walk every inode, and a 1 TiB image's default
///   67 million took ~1 s of a ~2 s build where 4 million take ~0.1 s.
/// - The journal stays: per-pod disks cloned from this image are written by workloads and
///   want crash consistency; an unwritten journal is a hole and costs nothing to freeze.
pub fn mkfs(path: &Path, label: &str) -> Result<()> {
    if label.len() > MAX_LABEL_LEN {
        return Err(ImageError::LabelTooLong {
            label: label.to_owned(),
            max: MAX_LABEL_LEN,
        });
    }
    let size = std::fs::metadata(path)
        .map_err(|e| ImageError::io("stat", path, e))?
        .len();
    let mut args: Vec<String> = ["-q", "-F", "-b", "4096", "-m", "0", "-L", label]
        .map(String::from)
        .into();
    if let Some(cluster) = cluster_size(size) {
        args.extend([
            "-O".into(),
            "bigalloc".into(),
            "-C".into(),
            cluster.to_string(),
        ]);
    }
    if let Some(inodes) = inode_count(size) {
        args.extend(["-N".into(), inodes.to_string()]);
    }
    let mut extended =
        String::from("lazy_itable_init=1,lazy_journal_init=1,nodiscard,assume_storage_prezeroed=1");
    args.extend([
        "-G".into(),
        "1024".into(),
        "-O".into(),
        "sparse_super2,inline_data".into(),
    ]);
    if size >= PACKED_METADATA_FROM {
        extended.push_str(",packed_meta_blocks=1");
    }
    args.extend(["-E".into(), extended]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool::run_ok("mkfs.ext4", &args, path)
}

/// Block groups an image may have before it gets bigalloc clusters: a 2 TiB filesystem of
/// 4 KiB blocks, whose ~10 ms mount still makes a disk ready within the 25 ms a disk of 100×
/// a default cache is allowed.
pub const MAX_GROUPS: u64 = 16_384;

/// The largest cluster: 32 blocks. A file's smallest footprint grows with the cluster, so
/// images above 64 TiB have more groups rather than a coarser grain.
pub const MAX_CLUSTER: u64 = 128 << 10;

/// The bigalloc cluster size for an image of `size` bytes: the smallest power of two that
/// keeps it within `MAX_GROUPS` groups (up to `MAX_CLUSTER`), or `None` for 4 KiB blocks.
pub fn cluster_size(size: u64) -> Option<u64> {
    // A group's block bitmap is one block: 8 bits per byte, one bit per cluster.
    let clusters_per_group = BLOCK_SIZE * 8;
    let mut cluster = BLOCK_SIZE;
    while size.div_ceil(cluster * clusters_per_group) > MAX_GROUPS && cluster < MAX_CLUSTER {
        cluster *= 2;
    }
    (cluster > BLOCK_SIZE).then_some(cluster)
}

/// Images up to this size keep mke2fs's one inode per 16 KiB (4,194,304 at 64 GiB).
pub const FULL_INODE_RATIO_UP_TO: u64 = 64 << 30;

/// Above `FULL_INODE_RATIO_UP_TO`, one inode per this many bytes, and never fewer than the
/// 64 GiB image has: a 1 TiB cache holds 4 million files (a quarter MiB each to fill it);
/// images that size hold models and datasets, not millions of tiny files.
pub const LARGE_INODE_RATIO: u64 = 256 << 10;

/// The inode count to format an image of `size` bytes with, or `None` for mke2fs's default
/// of one per 16 KiB.
pub fn inode_count(size: u64) -> Option<u64> {
    const DEFAULT_RATIO: u64 = 16 << 10;
    (size > FULL_INODE_RATIO_UP_TO)
        .then(|| (FULL_INODE_RATIO_UP_TO / DEFAULT_RATIO).max(size / LARGE_INODE_RATIO))
}

pub(super) fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(ImageError::UnalignedSize {
            size,
            block: BLOCK_SIZE,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_has_size_but_no_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        create_sparse(&path, 1 << 30).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert_eq!(std::os::unix::fs::MetadataExt::blocks(&meta), 0);
        // Never clobbers.
        assert!(matches!(
            create_sparse(&path, 1 << 30),
            Err(ImageError::Io { op: "create", .. })
        ));
    }

    #[test]
    fn rejects_unaligned_sizes_and_long_labels() {
        let dir = tempfile::tempdir().unwrap();
        let err = create(&dir.path().join("a"), 1000, "x").unwrap_err();
        assert!(matches!(err, ImageError::UnalignedSize { .. }), "{err}");
        let err = mkfs(&dir.path().join("a"), "imc-0123456789abcdef").unwrap_err();
        assert!(matches!(err, ImageError::LabelTooLong { .. }), "{err}");
    }

    #[test]
    fn only_images_above_2tib_get_clusters() {
        const GIB: u64 = 1 << 30;
        assert_eq!(cluster_size(20 * GIB), None);
        assert_eq!(cluster_size(1024 * GIB), None, "8,192 groups of 128 MiB");
        assert_eq!(cluster_size(2048 * GIB), None, "16,384 groups");
        assert_eq!(cluster_size(2049 * GIB), Some(8 << 10));
        assert_eq!(cluster_size(16384 * GIB), Some(32 << 10));
        assert_eq!(cluster_size(1 << 50), Some(MAX_CLUSTER), "capped");
    }

    #[test]
    fn large_images_get_fewer_inodes_but_never_fewer_than_64gib_has() {
        const GIB: u64 = 1 << 30;
        assert_eq!(inode_count(20 * GIB), None);
        assert_eq!(inode_count(64 * GIB), None);
        assert_eq!(inode_count(65 * GIB), Some(4 << 20));
        assert_eq!(inode_count(1024 * GIB), Some(4 << 20));
        assert_eq!(inode_count(4096 * GIB), Some(16 << 20));
    }

    /// `dumpe2fs -h`: the superblock's fields, features among them.
    fn superblock_header(path: &Path) -> String {
        let out = std::process::Command::new("dumpe2fs")
            .arg("-h")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn formats_ext4_that_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        create(&path, 256 << 20, "unit").unwrap();
        crate::image::fsck(&path).unwrap();
        let blocks = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&path).unwrap());
        // Superblocks, bitmaps and the root directory only: a few MiB at most.
        assert!(blocks * 512 < 16 << 20, "mkfs wrote {} bytes", blocks * 512);
        // Small directories in their inodes: a pod's walk to its layers reads no more blocks.
        let header = superblock_header(&path);
        assert!(header.contains("inline_data"), "{header}");
    }

    #[test]
    fn formats_a_large_image_with_clusters_that_checks_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        create(&path, (2 << 40) + (1 << 30), "unit").unwrap();
        crate::image::fsck(&path).unwrap();
        let header = superblock_header(&path);
        assert!(header.contains("bigalloc"), "{header}");
        assert!(
            header.contains("Cluster size:             8192"),
            "{header}"
        );
    }
}
