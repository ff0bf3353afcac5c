//! Where a disk may be mounted, checked as text before anything touches the filesystem.
//!
//! A mount path ends up in two places that trust it: the kernel's path walk when the disk
//! is mounted, and the option strings overlayfs parses (`upperdir=`, `lowerdir=a:b`) when
//! containerd mounts a container's root filesystem from a layer on the disk. So a path is
//! only accepted when it:
//!
//! - is absolute, with plain components only (no `.`, `..` or empty ones), so what it names
//!   is what it says;
//! - holds none of `,` (separates mount options: `x,upperdir=/` adds an option), `:`
//!   (separates overlay lower directories), `\` (overlayfs's escape character), whitespace
//!   or other control characters (they end fields of /proc/self/mountinfo and option
//!   strings); overlayfs has no escaping for the first two that containerd 1.6 applies;
//! - lies strictly beneath a root the operator chose (`disk_mount_root`), so a tenant's
//!   request cannot name `/etc` or another node path.
//!
//! Symlinks cannot be judged from text: the mount itself resolves the path beneath its root
//! without following any (`Sys::mount_beneath`).

use std::path::{Component, Path, PathBuf};

/// Why a path may not be used as (or hold) a mount point.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountPathError {
    #[error("{path:?} is not an absolute path: give one that starts with `/`")]
    NotAbsolute { path: PathBuf },
    #[error(
        "{path:?} has a `.`, `..` or empty component: give the plain path, component by component"
    )]
    NotPlain { path: PathBuf },
    #[error(
        "{path:?} contains {found:?}, which would end up inside mount option strings: use a path \
         without `,`, `:`, `\\`, whitespace or control characters"
    )]
    UnsafeChar { path: PathBuf, found: char },
    #[error(
        "{path:?} is not beneath {root}, where disks may be mounted: give a path under it (the \
         operator sets it with `disk_mount_root` in the daemon's config)",
        root = root.display()
    )]
    Outside { path: PathBuf, root: PathBuf },
}

/// The first character of `path` that must never reach a mount option string, if any.
pub fn unsafe_char(path: &Path) -> Option<char> {
    path.to_string_lossy().chars().find(|&c| {
        matches!(c, ',' | ':' | '\\' | '\u{fffd}') || c.is_whitespace() || c.is_control()
    })
}

/// Checks what text can tell about `path`: absolute, plain components, no unsafe character.
pub fn check_plain(path: &Path) -> Result<(), MountPathError> {
    if !path.is_absolute() {
        return Err(MountPathError::NotAbsolute {
            path: path.to_owned(),
        });
    }
    if let Some(found) = unsafe_char(path) {
        return Err(MountPathError::UnsafeChar {
            path: path.to_owned(),
            found,
        });
    }
    // `Path::components` quietly drops `.` and repeated `/`; look at the raw text instead.
    let text = path.to_string_lossy();
    let plain = text.strip_prefix('/').is_some_and(|rest| {
        rest.is_empty()
            || rest
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
    });
    if !plain {
        return Err(MountPathError::NotPlain {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The first existing component of `path` that is a symlink, and where it points; `None`
/// when every existing component is a real directory (missing ones are made later, as
/// directories). For the state root and `disk_mount_root` at start: everything the daemon
/// mounts hangs off them, and a symlink there would move all of it.
pub fn first_symlink(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut ancestors: Vec<&Path> = path.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|p| {
        let meta = std::fs::symlink_metadata(p).ok()?;
        meta.file_type()
            .is_symlink()
            .then(|| (p.to_owned(), std::fs::read_link(p).unwrap_or_default()))
    })
}

/// A mount point strictly beneath a root: the root is resolved as it stands (it was checked
/// for symlinks when the daemon started), the relative part never through a symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountTarget {
    root: PathBuf,
    relative: PathBuf,
}

impl MountTarget {
    /// `path` as a mount point beneath `root`; both must pass [`check_plain`].
    pub fn beneath(root: &Path, path: &Path) -> Result<MountTarget, MountPathError> {
        check_plain(root)?;
        check_plain(path)?;
        match path.strip_prefix(root) {
            Ok(relative) if relative.components().next().is_some() => Ok(MountTarget {
                root: root.to_owned(),
                relative: relative.to_owned(),
            }),
            _ => Err(MountPathError::Outside {
                path: path.to_owned(),
                root: root.to_owned(),
            }),
        }
    }

    /// The first of `roots` that `path` lies beneath, as a target; the error of the last
    /// root tried when it lies beneath none.
    pub fn beneath_any(roots: &[&Path], path: &Path) -> Result<MountTarget, MountPathError> {
        let mut last = None;
        for root in roots {
            match MountTarget::beneath(root, path) {
                Ok(target) => return Ok(target),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(MountPathError::Outside {
            path: path.to_owned(),
            root: PathBuf::new(),
        }))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The part beneath the root: one or more plain components.
    pub fn relative(&self) -> &Path {
        &self.relative
    }

    /// The whole path, as recorded and as the mount table shows it.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.relative)
    }

    /// The relative part's components, each a plain name.
    pub fn components(&self) -> impl Iterator<Item = &std::ffi::OsStr> {
        self.relative.components().filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_separators_and_whitespace_are_refused() {
        for bad in [
            "/srv/disks/a,upperdir=/",
            "/srv/disks/a:b",
            "/srv/disks/a b",
            "/srv/disks/a\nb",
            "/srv/disks/a\tb",
            "/srv/disks/a\\b",
        ] {
            let err = check_plain(Path::new(bad)).unwrap_err();
            assert!(
                matches!(err, MountPathError::UnsafeChar { .. }),
                "{bad:?}: {err}"
            );
        }
        check_plain(Path::new("/srv/disks/pod-1_a.b@c")).unwrap();
    }

    #[test]
    fn only_plain_absolute_paths_pass() {
        for bad in ["srv/d", "/srv/../etc", "/srv/./d", "/srv//d", "/srv/d/"] {
            assert!(check_plain(Path::new(bad)).is_err(), "{bad:?}");
        }
        check_plain(Path::new("/")).unwrap();
    }

    #[test]
    fn targets_lie_strictly_beneath_their_root() {
        let root = Path::new("/srv/disks");
        let t = MountTarget::beneath(root, Path::new("/srv/disks/p/mnt")).unwrap();
        assert_eq!(t.relative(), Path::new("p/mnt"));
        assert_eq!(t.path(), PathBuf::from("/srv/disks/p/mnt"));
        assert_eq!(t.components().count(), 2);
        for outside in ["/srv/disks", "/srv/disksx/a", "/etc", "/srv/disks/../x"] {
            assert!(
                MountTarget::beneath(root, Path::new(outside)).is_err(),
                "{outside:?}"
            );
        }
        let err = MountTarget::beneath(root, Path::new("/etc/x")).unwrap_err();
        assert!(err.to_string().contains("disk_mount_root"), "{err}");
        let other = Path::new("/var/lib/imagecache/disks");
        let t =
            MountTarget::beneath_any(&[root, other], Path::new("/var/lib/imagecache/disks/d/mnt"))
                .unwrap();
        assert_eq!(t.root(), other);
    }
}
