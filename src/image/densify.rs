//! Filling the small holes of a frozen image so its clones are cheap.
//!
//! FICLONE's cost grows with the number of extents in the source file: XFS remaps each one in
//! its own transaction (~10 µs each here). A built image has a data run per cluster of ext4
//! allocations, separated by holes that are mostly a few blocks wide: a 2 GB cache measured
//! 355 runs, with a median gap of 8 blocks. Writing zeros into the gaps of up to
//! [`MAX_FILLED_GAP`] joins them: the same image came down to 38 extents for 12 MiB of zeros,
//! and its clone from 4.0 ms to 0.65 ms. A hole reads as zeros, so the content (and every
//! chunk hash, which covers whole chunks holes included) is unchanged.
//!
//! Filling in place only joins extents where XFS left the matching physical room, which
//! depends on how writeback interleaved with other allocations: the same 2 GB image came out
//! with 30 to ~100 extents from build to build. An image of many small files in bigalloc
//! clusters has a run per file (the rest of each cluster is a hole) packed tightly on disk:
//! filled in place, a 1 TiB cache of a 2 GB, 60,000-file image kept 56,962 extents and
//! cloned in 0.8–2 s. So the result is counted (FIEMAP) and, when it has more than
//! [`EXTENT_SLACK`] extents over what joining the runs can reach, the image is rewritten:
//! its data, gaps filled, copied in offset order into a new file, which XFS allocates in long
//! extents. Above [`REWRITE_ABOVE_RUNS`] runs it is rewritten without trying in place first.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{ImageError, Result};
use crate::sys::sparse::data_runs;
use crate::sys::Sys;

/// The widest hole filled: 1 MiB. Wider gaps separate block groups' metadata (128 MiB
/// apart), where filling would cost real space for a handful of extents.
pub const MAX_FILLED_GAP: u64 = 1 << 20;

/// Data runs above which filling in place is not tried: it would not join the extents.
pub const REWRITE_ABOVE_RUNS: usize = 1024;

/// Extents tolerated beyond the joined spans before the image is rewritten (a rewrite copies
/// every data byte, so it is kept for images that clearly need it).
pub const EXTENT_SLACK: u64 = 16;

/// What [`densify`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Densified {
    /// Data runs (extents as the file's holes see them) before filling.
    pub runs_before: usize,
    /// Data runs after filling.
    pub runs_after: usize,
    /// Zero bytes written into holes.
    pub filled_bytes: u64,
    /// Extents mapping the image after filling (FIEMAP), before any rewrite.
    pub extents_in_place: Option<u64>,
    /// Whether the image was rewritten into a new file.
    pub rewritten: bool,
    /// Extents mapping the image in the end.
    pub extents: u64,
}

/// Join the data runs of `path` that are at most `max_gap` apart, writing zeros between
/// them; holes before the first run and after the last are left alone. With `may_rewrite`
/// and more than [`REWRITE_ABOVE_RUNS`] runs the image is rewritten at once (same content,
/// new inode, renamed over `path`); otherwise it is filled in place, and
/// [`rewrite_if_fragmented`] can check the result once it is on disk. Without `may_rewrite`
/// (an image sharing extents with a parent, which a rewrite would unshare) it is only ever
/// filled in place. The file must not be in use: it is an unmounted, detached image about to
/// be frozen.
pub fn densify(path: &Path, max_gap: u64, may_rewrite: bool) -> Result<Densified> {
    let file = open(path)?;
    let runs = data_runs(&file).map_err(|e| ImageError::io("seek data", path, e.into()))?;
    let spans = join(&runs, max_gap);
    let data: u64 = runs.iter().map(|(a, b)| b - a).sum();
    let spanned: u64 = spans.iter().map(|(a, b)| b - a).sum();
    let mut done = Densified {
        runs_before: runs.len(),
        runs_after: spans.len(),
        filled_bytes: spanned - data,
        ..Densified::default()
    };
    if may_rewrite && runs.len() > REWRITE_ABOVE_RUNS {
        rewrite(&file, path, &spans)?;
        done.rewritten = true;
    } else {
        fill_in_place(&file, path, &runs, max_gap)?;
    }
    Ok(done)
}

/// After [`densify`] filled `path` in place and its data reached the disk (counting earlier
/// would see delayed allocations, or wait for them): count its extents and, if joining the
/// runs left more than [`EXTENT_SLACK`] extents over the spans, rewrite it. The content is
/// unchanged, so checks and hashes made in between still hold. Records the counts in `done`.
pub fn rewrite_if_fragmented(
    sys: &dyn Sys,
    path: &Path,
    max_gap: u64,
    done: &mut Densified,
) -> Result<()> {
    let extents = sys.extent_count(path)?;
    done.extents = extents;
    if done.rewritten {
        return Ok(());
    }
    done.extents_in_place = Some(extents);
    if extents <= done.runs_after as u64 + EXTENT_SLACK {
        return Ok(());
    }
    let file = open(path)?;
    let runs = data_runs(&file).map_err(|e| ImageError::io("seek data", path, e.into()))?;
    rewrite(&file, path, &join(&runs, max_gap))?;
    done.rewritten = true;
    done.extents = sys.extent_count(path)?;
    Ok(())
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .map_err(|e| ImageError::io("open", path, e))
}

/// Runs no more than `max_gap` apart merged into spans.
fn join(runs: &[(u64, u64)], max_gap: u64) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for &(start, end) in runs {
        match spans.last_mut() {
            Some(last) if start - last.1 <= max_gap => last.1 = end,
            _ => spans.push((start, end)),
        }
    }
    spans
}

fn fill_in_place(file: &File, path: &Path, runs: &[(u64, u64)], max_gap: u64) -> Result<()> {
    let zeros = vec![0u8; MAX_FILLED_GAP as usize];
    for pair in runs.windows(2) {
        let (hole_start, hole_end) = (pair[0].1, pair[1].0);
        if hole_end - hole_start > max_gap {
            continue;
        }
        let mut at = hole_start;
        while at < hole_end {
            let n = (hole_end - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)
                .map_err(|e| ImageError::io("fill hole", path, e))?;
            at += n as u64;
        }
    }
    Ok(())
}

/// Copy `spans` of `source` (holes inside them read as zeros) in offset order into a new
/// sparse file of the same size, then rename it over `path`.
fn rewrite(source: &File, path: &Path, spans: &[(u64, u64)]) -> Result<()> {
    let mut staged = path.as_os_str().to_owned();
    staged.push(".rewrite");
    let staged = std::path::PathBuf::from(staged);
    let size = source
        .metadata()
        .map_err(|e| ImageError::io("stat", path, e))?
        .len();
    let copied = (|| -> Result<()> {
        let target = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
            .map_err(|e| ImageError::io("create", &staged, e))?;
        target
            .set_len(size)
            .map_err(|e| ImageError::io("truncate", &staged, e))?;
        let mut buf = vec![0u8; REWRITE_BUFFER];
        for &(start, end) in spans {
            let mut at = start;
            while at < end {
                let n = (end - at).min(REWRITE_BUFFER as u64) as usize;
                source
                    .read_exact_at(&mut buf[..n], at)
                    .map_err(|e| ImageError::io("read", path, e))?;
                target
                    .write_all_at(&buf[..n], at)
                    .map_err(|e| ImageError::io("write", &staged, e))?;
                at += n as u64;
            }
        }
        // Durable before it replaces the image: a crash must not leave holes where data was.
        target
            .sync_data()
            .map_err(|e| ImageError::io("sync", &staged, e))?;
        std::fs::rename(&staged, path).map_err(|e| ImageError::io("rename", &staged, e))
    })();
    if copied.is_err() {
        let _ = std::fs::remove_file(&staged);
    }
    copied
}

/// 4 MiB: large writes in offset order, which XFS's delayed allocation turns into long
/// extents, for a small and fixed amount of memory.
const REWRITE_BUFFER: usize = 4 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::FakeSys;

    const MIB: u64 = 1 << 20;

    fn write_at(file: &File, at: u64, len: u64, byte: u8) {
        file.write_all_at(&vec![byte; len as usize], at).unwrap();
    }

    #[test]
    fn fills_narrow_holes_and_keeps_wide_ones_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = File::create(&path).unwrap();
        file.set_len(64 * MIB).unwrap();
        // Runs at 1 MiB, 1 MiB + 64 KiB (narrow gap), 10 MiB (wide gap); a hole to the end.
        write_at(&file, MIB, 16 << 10, 0xaa);
        write_at(&file, MIB + (80 << 10), 16 << 10, 0xbb);
        write_at(&file, 10 * MIB, 16 << 10, 0xcc);
        file.sync_all().unwrap();
        let before = std::fs::read(&path).unwrap();
        let runs = data_runs(&file).unwrap();
        if runs.len() != 3 {
            // A filesystem without SEEK_DATA reports one run: nothing to test here.
            assert_eq!(runs.len(), 1, "{runs:?}");
            return;
        }

        let done = densify(&path, MAX_FILLED_GAP, true).unwrap();
        assert_eq!(done.runs_before, 3);
        assert_eq!(done.runs_after, 2);
        assert_eq!(done.filled_bytes, 64 << 10);
        assert_eq!(std::fs::read(&path).unwrap(), before, "content unchanged");
        let runs = data_runs(&file).unwrap();
        assert_eq!(
            runs,
            vec![(MIB, MIB + (96 << 10)), (10 * MIB, 10 * MIB + (16 << 10))],
            "the narrow hole is data now, the wide one and the tail are still holes"
        );
    }

    #[test]
    fn empty_and_dense_files_need_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        let file = File::create(&path).unwrap();
        file.set_len(8 * MIB).unwrap();
        let done = densify(&path, MAX_FILLED_GAP, true).unwrap();
        assert_eq!(
            (done.runs_before, done.extents, done.rewritten),
            (0, 0, false)
        );
        write_at(&file, 0, 8 * MIB, 1);
        let done = densify(&path, MAX_FILLED_GAP, true).unwrap();
        assert_eq!(
            (done.runs_before, done.runs_after, done.filled_bytes),
            (1, 1, 0)
        );
    }

    /// A run of 4 KiB every 64 KiB, like small files in 64 KiB clusters: `runs` runs.
    fn clustered(dir: &Path, runs: u64) -> (std::path::PathBuf, Vec<u8>) {
        let path = dir.join("img");
        let file = File::create(&path).unwrap();
        file.set_len(runs * (64 << 10) + 16 * MIB).unwrap();
        for i in 0..runs {
            write_at(&file, i * (64 << 10), 4096, (i % 251) as u8 + 1);
        }
        file.sync_all().unwrap();
        let content = std::fs::read(&path).unwrap();
        (path, content)
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn many_runs_are_rewritten_into_one_span_with_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let runs = REWRITE_ABOVE_RUNS as u64 + 100;
        let (path, before) = clustered(dir.path(), runs);
        if data_runs(&File::open(&path).unwrap()).unwrap().len() == 1 {
            return; // no SEEK_DATA here
        }
        let old_inode = inode(&path);
        let done = densify(&path, MAX_FILLED_GAP, true).unwrap();
        assert!(done.rewritten);
        assert_eq!((done.runs_before, done.runs_after), (runs as usize, 1));
        assert_eq!(done.filled_bytes, (runs - 1) * (60 << 10));
        assert_ne!(inode(&path), old_inode, "a new file took its place");
        assert_eq!(std::fs::read(&path).unwrap(), before, "content unchanged");
        let file = File::open(&path).unwrap();
        assert_eq!(
            data_runs(&file).unwrap(),
            vec![(0, (runs - 1) * (64 << 10) + 4096)],
            "one span; the 16 MiB tail is still a hole"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no staging file left"
        );
    }

    #[test]
    fn filled_in_place_but_still_fragmented_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (path, before) = clustered(dir.path(), 8);
        if data_runs(&File::open(&path).unwrap()).unwrap().len() == 1 {
            return; // no SEEK_DATA here
        }
        let mut done = densify(&path, MAX_FILLED_GAP, true).unwrap();
        assert!(!done.rewritten, "8 runs are filled in place");
        let old_inode = inode(&path);

        // Joined into one span, as the fake counts; nothing to do.
        let sys = FakeSys::new();
        rewrite_if_fragmented(&sys, &path, MAX_FILLED_GAP, &mut done).unwrap();
        assert_eq!((done.extents_in_place, done.rewritten), (Some(1), false));
        assert_eq!(inode(&path), old_inode);

        // The disk says 100 extents: rewritten, and counted again.
        sys.report_extents(100);
        rewrite_if_fragmented(&sys, &path, MAX_FILLED_GAP, &mut done).unwrap();
        assert_eq!(done.extents_in_place, Some(100));
        assert!(done.rewritten);
        assert_eq!(done.extents, 1);
        assert_ne!(inode(&path), old_inode);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn without_rewrite_many_runs_are_filled_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let runs = REWRITE_ABOVE_RUNS as u64 + 100;
        let (path, before) = clustered(dir.path(), runs);
        let old_inode = inode(&path);
        let done = densify(&path, MAX_FILLED_GAP, false).unwrap();
        assert!(!done.rewritten);
        assert_eq!(
            inode(&path),
            old_inode,
            "same file: shared extents stay shared"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = densify(Path::new("/nonexistent/img"), MAX_FILLED_GAP, true).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/img"), "{err}");
    }
}
