//! Looking into a frozen cache the way containerd would: the snapshot's image mounted
//! read-only, and an image's chain of layers overlay-mounted from it.

use std::path::{Path, PathBuf};

use imagecache::image::{mount, MountConfig, MountedImage};
use imagecache::sys::{LinuxSys, MountOptions, Sys};

static SYS: LinuxSys = LinuxSys;

/// The frozen image of snapshot `digest` under state root `root`, mounted read-only at `at`.
pub fn mount_snapshot(root: &Path, digest: &str, at: &Path) -> MountedImage<'static> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let file = root.join("snapshots/sha256").join(hex).join("disk.img");
    mount(&SYS, &file, at, &MountConfig::read_only())
        .unwrap_or_else(|e| panic!("mount {}: {e}", file.display()))
}

/// An overlay of layer directories (read-only, no upper). Unmounted on drop.
pub struct Overlay {
    pub path: PathBuf,
}

/// overlayfs splits lowerdir on ':' — chainIDs contain one — so escape it.
fn escape(p: &Path) -> String {
    p.to_str()
        .expect("UTF-8 path")
        .replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

/// Overlay-mounts `chain_ids` (bottom first, as an image lists them) from a mounted cache
/// filesystem at `at`: the image's merged root filesystem.
pub fn mount_chain(cache_root: &Path, chain_ids: &[String], at: &Path) -> Overlay {
    std::fs::create_dir_all(at).unwrap();
    let mut lowers: Vec<String> = chain_ids
        .iter()
        .rev()
        .map(|c| escape(&cache_root.join("snapshots").join(c).join("fs")))
        .collect();
    if lowers.len() == 1 {
        // overlayfs wants two lower layers when it has no upper one; an empty one changes nothing.
        let empty = at.with_extension("empty-lower");
        std::fs::create_dir_all(&empty).unwrap();
        lowers.push(escape(&empty));
    }
    let data = format!("lowerdir={}", lowers.join(":"));
    SYS.mount(
        Path::new("overlay"),
        at,
        "overlay",
        MountOptions {
            read_only: true,
            ..Default::default()
        },
        &data,
    )
    .unwrap_or_else(|e| panic!("overlay mount of {chain_ids:?}: {e}"));
    Overlay {
        path: at.to_owned(),
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if let Err(e) = imagecache::sys::unmount_settled(&SYS, &self.path) {
            eprintln!("overlay unmount {}: {e}", self.path.display());
        }
    }
}
