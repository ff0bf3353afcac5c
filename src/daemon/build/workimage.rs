//! The cache's image file in the build's work directory: made (a fresh ext4, or a clone of
//! the reused parent) in the background while the manifests resolve, then mounted to fill.

use std::path::{Path, PathBuf};

use super::reuse::{self, Parent};
use super::BuildError;
use crate::daemon::{background, Daemon};
use crate::image::{MountConfig, MountedImage};

pub(super) struct WorkImage {
    pub path: PathBuf,
    mountpoint: PathBuf,
}

impl WorkImage {
    /// Starts making the image of `size_gib` under `work_dir`; await the handle before
    /// mounting it.
    pub fn start(
        d: &Daemon,
        work_dir: &Path,
        size_gib: u32,
        parent: Option<&Parent>,
    ) -> Result<(WorkImage, background::Job<Result<(), BuildError>>), BuildError> {
        std::fs::create_dir_all(work_dir)
            .map_err(|e| BuildError::io("create the work directory", work_dir, e))?;
        let work = WorkImage {
            path: work_dir.join("disk.img"),
            mountpoint: work_dir.join("mnt"),
        };
        let size_bytes = u64::from(size_gib) << 30;
        let image_path = work.path.clone();
        let sys = d.inner.sys.clone();
        let parent_image = parent.map(|p| p.image.clone());
        let made = background::spawn("mkfs", move || -> Result<(), BuildError> {
            match parent_image {
                Some(from) => reuse::clone_parent(sys.as_ref(), &from, &image_path, size_bytes),
                None => {
                    crate::image::create_sparse(&image_path, size_bytes)?;
                    crate::fault::point("build.mkfs");
                    Ok(crate::image::mkfs(&image_path, "imagecache")?)
                }
            }
        });
        Ok((work, made))
    }

    /// Attaches and mounts the image for filling; a handful of syscalls, fine on the async
    /// thread.
    pub fn mount<'d>(&self, d: &'d Daemon) -> Result<MountedImage<'d>, BuildError> {
        Ok(crate::image::mount(
            d.inner.sys.as_ref(),
            &self.path,
            &self.mountpoint,
            &MountConfig::build(),
        )?)
    }
}
