//! Who may reach what the daemon makes: root only.
//!
//! Layers keep setuid binaries, file capabilities and device nodes, containers write into
//! upper directories under the state root, and frozen images hold every tenant's private
//! images. So the state root is 0700 and everything the daemon makes beneath it is 0700 or
//! 0600 (0400 when frozen), as containerd keeps its snapshotters' roots. The daemon runs with
//! umask 0077 (`private_umask`, and `UMask=0077` in the unit) so whatever it creates without
//! naming a mode is root's alone; the few directories whose mode a container or a cache's
//! readers see are made with the mode containerd gives them, whatever the umask.
//!
//! A container still runs setuid binaries and opens device nodes: the kernel mounts its
//! overlay as root, and permission inside it is checked against the layer's own modes, not
//! against the directories above the layer.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The state root and every directory of the daemon's own beneath it.
pub const PRIVATE_DIR: u32 = 0o700;
/// A file of the daemon's own that it writes (state.db, a disk's image).
pub const PRIVATE_FILE: u32 = 0o600;
/// A frozen file (a snapshot's image and manifest): root may read it, nobody writes it.
pub const FROZEN_FILE: u32 = 0o400;
/// The root of a layer or of a container's upper directory, and a cache's own directories:
/// what containerd's overlayfs snapshotter gives a snapshot's `fs` (a container's `/` shows
/// it), and what an unpacked image layout holds for containerd to read.
pub const LAYER_DIR: u32 = 0o755;
/// An overlayfs work directory, as containerd makes it.
pub const WORK_DIR: u32 = 0o711;
/// A file of a cache's image layout (index.json, blobs, snapshots.json).
pub const LAYOUT_FILE: u32 = 0o644;

/// The umask the daemon runs with: what it makes without naming a mode is root's alone.
pub const DAEMON_UMASK: u32 = 0o077;

/// Sets the process umask to [`DAEMON_UMASK`]. Call before any thread starts: the umask is
/// the process's, and a thread creating a file while it changes would get either.
pub fn private_umask() {
    crate::sys::set_umask(DAEMON_UMASK);
}

/// A directory the daemon makes for a socket (`/run/imagecache`): others must pass through it
/// to reach the API socket, whose own mode and group say who may connect.
pub const SOCKET_DIR: u32 = 0o755;

/// Makes the missing directories of `dir` with [`SOCKET_DIR`]; leaves existing ones as the
/// operator (or systemd's `RuntimeDirectory=`) made them.
pub fn create_socket_dir(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for level in missing.into_iter().rev() {
        match std::fs::create_dir(level) {
            Ok(()) => set_mode(level, SOCKET_DIR)?,
            // Made by another process in between: theirs to set.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `dir` (and any missing parent, at the umask's mode) and gives `dir` exactly `mode`.
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    set_mode(dir, mode)
}

/// Gives `path` exactly `mode` (no umask applies to a chmod).
pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes `bytes` to a new file at `path` with exactly `mode`.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    std::fs::write(path, bytes)?;
    set_mode(path, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn modes_are_exact_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("a/b/fs");
        create_dir_with_mode(&layer, LAYER_DIR).unwrap();
        assert_eq!(std::fs::metadata(&layer).unwrap().mode() & 0o7777, 0o755);
        let file = dir.path().join("index.json");
        write_with_mode(&file, b"{}", LAYOUT_FILE).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o644);
        set_mode(&file, FROZEN_FILE).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o7777, 0o400);
    }
}
