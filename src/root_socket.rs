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
    #[error("{key} {path} is in use by a running process: stop it or set another {key}")]
    InUse { key: &'static str, path: String },
    #[error("cannot listen on {key} {path}: {source}")]
    Listen {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
}

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
    if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(RootSocketError::InUse { key, path: shown });
    }
    let private = dir.join(format!(".{key}-bind.{}", std::process::id()));
    // A directory left by a daemon killed between the two steps below.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| RootSocketError::Dir {
            path: private.display().to_string(),
            source,
        })?;
    let staged = private.join("root.sock");
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
