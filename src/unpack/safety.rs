//! Keeping every write beneath the layer directory.
//!
//! Two layers of defence: entry names are normalised and anything with an absolute path or a
//! `..` component is refused outright; then every parent directory is opened by the kernel
//! with `RESOLVE_BENEATH`, so a symlink planted earlier in the layer cannot carry a later
//! entry outside. The final component is always created with *at calls relative to that
//! parent fd and never followed.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::implicit::ImplicitDir;
use crate::sys::fsops;

/// Why a name was refused, worded to follow "layer entry `<name>`".
pub(crate) const ABSOLUTE: &str = "is an absolute path";
pub(crate) const DOT_DOT: &str = "escapes the layer directory (`..` component)";
pub(crate) const PARENT_ESCAPES: &str =
    "escapes the layer directory through a symlink in its parent path";
pub(crate) const PARENT_LOOPS: &str =
    "has a parent path through a symlink loop or a /proc magic link";

/// Normalise a tar name into `out`: `./` prefixes, empty components and trailing slashes go,
/// components are joined by single slashes. An empty result names the layer root.
pub(crate) fn normalise(raw: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
    out.clear();
    if raw.first() == Some(&b'/') {
        return Err(ABSOLUTE);
    }
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(DOT_DOT),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(())
}

/// Split a normalised path into its parent (possibly empty: the layer root) and final name.
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// The reason to give when the kernel refuses a confined lookup, if the refusal is about
/// safety rather than an ordinary failure.
pub(crate) fn refusal(errno: Errno) -> Option<&'static str> {
    match errno {
        Errno::XDEV => Some(PARENT_ESCAPES),
        Errno::LOOP => Some(PARENT_LOOPS),
        _ => None,
    }
}

/// The most recently used parent directory, kept open.
///
/// Layer tars list a directory's entries together, so one openat2 serves a whole run of
/// siblings. Anything that removes a node may change what a cached path resolves to, so
/// removals call [`Parents::forget`].
pub(crate) struct Parents {
    key: Vec<u8>,
    fd: Option<OwnedFd>,
    /// Every directory made because an entry needed it as a parent and the layer had not
    /// listed it (yet), for [`super::implicit`] to finish once the lower layers exist.
    made: Vec<ImplicitDir>,
    /// Index into `made` by inode, to notice a made directory the layer lists later.
    made_inodes: HashMap<u64, usize>,
}

impl Parents {
    pub(crate) fn new() -> Self {
        Parents {
            key: Vec::new(),
            fd: None,
            made: Vec::new(),
            made_inodes: HashMap::new(),
        }
    }

    /// The directories made for entries that did not list them, in the order made.
    pub(crate) fn take_made(&mut self) -> Vec<ImplicitDir> {
        self.made_inodes.clear();
        std::mem::take(&mut self.made)
    }

    /// A directory entry was applied to the directory `inode`: if that is one made
    /// earlier for a child, the entry's header now decides its mode and owner.
    pub(crate) fn listed(&mut self, inode: u64) {
        if self.made.is_empty() {
            return;
        }
        if let Some(&i) = self.made_inodes.get(&inode) {
            self.made[i].listed = true;
        }
    }

    /// The directory `parent` (normalised, relative to `root`), creating missing
    /// directories as containerd does when no lower layer has them: 0755, root's, in a
    /// setgid parent's group (the attributes of one a lower layer has, and the group under
    /// a parent that takes a lower layer's, are applied later, see [`super::implicit`]).
    pub(crate) fn get<'a>(
        &'a mut self,
        root: BorrowedFd<'a>,
        parent: &[u8],
    ) -> Result<BorrowedFd<'a>, Errno> {
        if parent.is_empty() {
            return Ok(root);
        }
        let hit = self.fd.is_some() && self.key == parent;
        if !hit {
            let fd = match fsops::open_dir_beneath(root, parent) {
                Err(Errno::NOENT) => {
                    create_parents(root, parent, &mut self.made, &mut self.made_inodes)?
                }
                other => other?,
            };
            self.key.clear();
            self.key.extend_from_slice(parent);
            self.fd = Some(fd);
        }
        Ok(self.fd.as_ref().map(|fd| fd.as_fd()).unwrap_or(root))
    }

    /// Remember `fd` as the directory at `path`: a directory entry is usually followed by
    /// its children.
    pub(crate) fn remember(&mut self, path: &[u8], fd: OwnedFd) {
        self.key.clear();
        self.key.extend_from_slice(path);
        self.fd = Some(fd);
    }

    pub(crate) fn forget(&mut self) {
        self.fd = None;
        self.key.clear();
    }
}

/// Walk `parent` component by component, making what is missing. Every step is opened
/// through the confined resolver again, so a symlink met on the way is judged by
/// RESOLVE_BENEATH like any other.
fn create_parents(
    root: BorrowedFd<'_>,
    parent: &[u8],
    made: &mut Vec<ImplicitDir>,
    made_inodes: &mut HashMap<u64, usize>,
) -> Result<OwnedFd, Errno> {
    let mut current: Option<OwnedFd> = None;
    let mut start = 0;
    let ends = parent
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| i)
        .chain(std::iter::once(parent.len()));
    for end in ends {
        let prefix = &parent[..end];
        let name = &parent[start..end];
        start = end + 1;
        match fsops::open_dir_beneath(root, prefix) {
            Ok(fd) => current = Some(fd),
            Err(Errno::NOENT) => {
                let at = current.as_ref().map(|fd| fd.as_fd());
                let (gid, made_in) = match at {
                    Some(at) => group_and_pending_parent(at, made, made_inodes)?,
                    None => (0, None),
                };
                let made_now = match fsops::mkdir(at.unwrap_or(root), name, 0o755) {
                    Ok(()) => true,
                    // A dangling symlink or a concurrent maker: let the resolver judge it.
                    Err(Errno::EXIST) => false,
                    Err(e) => return Err(e),
                };
                let fd = fsops::open_dir_beneath(root, prefix)?;
                if made_now {
                    // Explicit, so neither umask nor the daemon's own ids decide. The mode
                    // drops the setgid bit the kernel passes down, as containerd's chmod
                    // 0755 after its mkdir does; the group stays.
                    fsops::fchown(fd.as_fd(), 0, gid)?;
                    fsops::fchmod(fd.as_fd(), 0o755)?;
                    let inode = fsops::inode(fd.as_fd())?;
                    made_inodes.insert(inode, made.len());
                    made.push(ImplicitDir {
                        path: prefix.to_vec(),
                        inode,
                        listed: false,
                        made_in,
                    });
                }
                current = Some(fd);
            }
            Err(e) => return Err(e),
        }
    }
    current.ok_or(Errno::NOENT)
}

/// The group a directory made in `parent` gets (the parent's if it is setgid, as the kernel
/// gives it, else root's), and which of `made` the parent is if its attributes are still
/// to come from a lower layer (see [`ImplicitDir::made_in`]). The layer root stands for
/// containerd's fresh 0755 root:root upper directory, so its callers pass no parent.
fn group_and_pending_parent(
    parent: BorrowedFd<'_>,
    made: &[ImplicitDir],
    made_inodes: &HashMap<u64, usize>,
) -> Result<(u32, Option<usize>), Errno> {
    let (mode, _, gid) = fsops::owner_and_mode(parent)?;
    let gid = if mode & SETGID != 0 { gid } else { 0 };
    let pending = made_inodes
        .get(&fsops::inode(parent)?)
        .copied()
        .filter(|&i| !made[i].listed);
    Ok((gid, pending))
}

const SETGID: u32 = 0o2000;

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, &'static str> {
        let mut out = Vec::new();
        normalise(s.as_bytes(), &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn normalises_names() {
        assert_eq!(norm("./a/b/").unwrap(), "a/b");
        assert_eq!(norm("a//./b").unwrap(), "a/b");
        assert_eq!(norm("./").unwrap(), "");
        assert_eq!(norm("/etc/passwd"), Err(ABSOLUTE));
        assert_eq!(norm("a/../../x"), Err(DOT_DOT));
        assert_eq!(norm("a/.."), Err(DOT_DOT));
        assert_eq!(norm("..."), Ok("...".into()));
    }

    #[test]
    fn splits() {
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
    }
}
