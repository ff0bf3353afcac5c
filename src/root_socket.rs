//! The unix sockets only root may use: containerd's snapshotter and the kubelet's CRI image
//! service. Both are bound so that nobody else can ever connect (not even for the moment
//! between bind and chmod), and both drop a connection whose peer is not root before a byte
//! of it is read.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum RootSocketError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{key} {path} is too long for a unix socket: give a path whose directory is at most {max} bytes long"
    )]
    TooLong {
        key: &'static str,
        path: String,
        max: usize,
    },
    #[error("{key} {path} is in use by a running process: stop it or set another {key}")]
    InUse { key: &'static str, path: String },
    #[error("cannot listen on {key} {path}: {source}")]
    Listen {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The longest path a unix socket can be bound at (`sun_path` holds 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// What the staging path adds to the socket's directory: `/.<n>.<pid>/s`, with n < 10 and a
/// pid of up to 7 digits.
const STAGING_LEN: usize = 13;

/// Binds `socket` (the config key `key` names it; replacing a stale file, never a live
/// socket) and returns the listener; root only may connect.
///
/// The socket is bound inside a fresh 0700 directory beside its final path, made 0600 there
/// and then renamed into place: it is never connectable by anyone but root, whatever the
/// process umask, and no umask is changed under the daemon's other threads.
pub fn bind(socket: &Path, key: &'static str) -> Result<tokio::net::UnixListener, RootSocketError> {
    let shown = socket.display().to_string();
    let dir = socket.parent().unwrap_or(Path::new("/"));
    crate::access::create_socket_dir(dir).map_err(|source| RootSocketError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    let longest = socket
        .as_os_str()
        .len()
        .max(dir.as_os_str().len() + STAGING_LEN);
    if longest > MAX_SOCKET_PATH {
        return Err(RootSocketError::TooLong {
            key,
            path: shown,
            max: MAX_SOCKET_PATH - STAGING_LEN,
        });
    }
    if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(RootSocketError::InUse { key, path: shown });
    }
    // Short names: a unix socket's path holds at most 107 bytes, and the staged path must
    // fit wherever the configured one does (`.<n>.<pid>/s` is 13 bytes at most past `dir`).
    static STAGED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
    let private = dir.join(format!(".{n}.{}", std::process::id()));
    // A directory left by a daemon killed between the two steps below.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| RootSocketError::Dir {
            path: private.display().to_string(),
            source,
        })?;
    let staged = private.join("s");
    let bound = tokio::net::UnixListener::bind(&staged)
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, socket)?;
            Ok(listener)
        })
        .map_err(|source| RootSocketError::Listen {
            key,
            path: shown,
            source,
        });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Why a connection's peer may not use a root socket.
#[derive(Debug)]
pub enum Refused {
    NotRoot {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    Unknown(std::io::Error),
}

/// `Ok` when the connection's peer is root; each socket logs a refusal in its own words.
pub fn peer_is_root(stream: &tokio::net::UnixStream) -> Result<(), Refused> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => Ok(()),
        Ok(cred) => Err(Refused::NotRoot {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        }),
        Err(e) => Err(Refused::Unknown(e)),
    }
}

/// Whether a connection to the socket of `service` may go on: its peer is root (`client`,
/// the one caller the service has). Anyone else is dropped before a byte of it is read, and
/// the refusal is logged with who it was.
pub fn admit(stream: &tokio::net::UnixStream, service: &str, client: &str) -> bool {
    match peer_is_root(stream) {
        Ok(()) => true,
        Err(Refused::NotRoot { uid, gid, pid }) => {
            tracing::warn!(
                uid,
                gid,
                ?pid,
                "{service} connection refused: only root ({client}) may use the {service}"
            );
            false
        }
        Err(Refused::Unknown(e)) => {
            tracing::warn!(error = %e, "cannot read a {service} caller's credentials; refusing it");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory under a temp dir whose path is exactly `len` bytes long.
    fn dir_of_len(base: &Path, len: usize) -> std::path::PathBuf {
        let pad = len - base.as_os_str().len() - 1;
        let dir = base.join("d".repeat(pad));
        assert_eq!(dir.as_os_str().len(), len);
        dir
    }

    #[tokio::test]
    async fn a_socket_binds_wherever_its_path_fits_and_a_longer_one_is_refused_clearly() {
        let base = tempfile::tempdir().unwrap();
        let fits = dir_of_len(base.path(), MAX_SOCKET_PATH - STAGING_LEN).join("x.sock");
        let listener = bind(&fits, "snapshotter_socket").unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&fits).is_ok());
        drop(listener);

        let long = dir_of_len(base.path(), MAX_SOCKET_PATH - STAGING_LEN + 1).join("x.sock");
        let e = bind(&long, "snapshotter_socket").unwrap_err().to_string();
        assert!(
            e.contains("snapshotter_socket") && e.contains("too long") && e.contains("94 bytes"),
            "{e}"
        );
    }
}
