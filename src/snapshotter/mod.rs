//! The second front door: containerd's snapshots API over gRPC on a unix socket, so
//! containerd on the node uses imagecache as its snapshotter (`[proxy_plugins.imagecache]`).
//! Like the HTTP API beside it, it only parses requests into daemon requests and maps the
//! daemon's errors to its protocol's codes; it never touches the disk.

mod convert;
mod service;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use tokio_stream::StreamExt;
use tracing::warn;

pub use service::SnapshotsService;

use crate::daemon::Daemon;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshotter socket {0} is in use by a running process: stop it or set another snapshotter_socket")]
    InUse(String),
    #[error("cannot listen on snapshotter socket {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshotter server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Binds `socket` (replacing a stale file, never a live socket) and returns the listener;
/// root only may connect, as containerd runs as root.
///
/// The socket is bound inside a fresh 0700 directory beside its final path, made 0600 there
/// and then renamed into place: it is never connectable by anyone but root, whatever the
/// process umask, and no umask is changed under the daemon's other threads.
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, SnapshotterError> {
    let shown = socket.display().to_string();
    let listen_err = |source| SnapshotterError::Listen {
        path: shown.clone(),
        source,
    };
    let dir = socket.parent().unwrap_or(Path::new("/"));
    crate::access::create_socket_dir(dir).map_err(|source| SnapshotterError::Dir {
        path: dir.display().to_string(),
        source,
    })?;
    if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(SnapshotterError::InUse(shown));
    }
    let private = dir.join(format!(".snapshotter-bind.{}", std::process::id()));
    // A directory left by a daemon killed between the two steps below.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|source| SnapshotterError::Dir {
            path: private.display().to_string(),
            source,
        })?;
    let staged = private.join("snapshotter.sock");
    let bound = tokio::net::UnixListener::bind(&staged)
        .and_then(|listener| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, socket)?;
            Ok(listener)
        })
        .map_err(listen_err);
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Whether a connection may speak to the snapshotter: its peer is root (containerd). Anyone
/// else is dropped before a byte of it is read: the snapshotter mounts, binds disks and
/// removes snapshots on request, which is root's alone.
fn peer_allowed(stream: &tokio::net::UnixStream) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => true,
        Ok(cred) => {
            warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "snapshotter connection refused: only root (containerd) may use the snapshotter");
            false
        }
        Err(e) => {
            warn!(error = %e, "cannot read a snapshotter caller's credentials; refusing it");
            false
        }
    }
}

/// Serves the snapshots API on `listener` until `stop` resolves.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::UnixListener,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SnapshotterError> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter(|accepted| {
        // An accept error goes on to tonic, which logs it and goes on accepting.
        accepted.as_ref().map_or(true, peer_allowed)
    });
    tonic::transport::Server::builder()
        .add_service(SnapshotsService::new(daemon))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

/// The lines an operator adds to containerd's config.toml (version 2, containerd 1.6) so
/// that containerd and its CRI plugin use imagecache as their snapshotter.
pub fn containerd_config(socket: &Path) -> String {
    format!(
        r#"# imagecache: containerd's snapshotter, so images held by a Ready cache are "pulled"
# without fetching a layer, and containers bound to a per-pod disk run from it.
[proxy_plugins]
  [proxy_plugins.imagecache]
    type = "snapshot"
    address = {}

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "imagecache"
  # Pass the container annotations containerd.io/snapshot/imagecache.io/disk and
  # .../disk-token (and CRI's layer annotations) to the snapshotter as labels.
  disable_snapshot_annotations = false
"#,
        toml::Value::String(socket.display().to_string())
    )
}
