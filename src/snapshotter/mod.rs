//! The second front door: containerd's snapshots API over gRPC on a unix socket, so
//! containerd on the node uses imagecache as its snapshotter (`[proxy_plugins.imagecache]`).
//! Like the HTTP API beside it, it only parses requests into daemon requests and maps the
//! daemon's errors to its protocol's codes; it never touches the disk.

mod convert;
mod service;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, SnapshotterError> {
    let shown = socket.display().to_string();
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotterError::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Err(SnapshotterError::InUse(shown));
        }
        std::fs::remove_file(socket).map_err(|source| SnapshotterError::Listen {
            path: shown.clone(),
            source,
        })?;
    }
    let listener =
        tokio::net::UnixListener::bind(socket).map_err(|source| SnapshotterError::Listen {
            path: shown.clone(),
            source,
        })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SnapshotterError::Listen {
            path: shown,
            source,
        }
    })?;
    Ok(listener)
}

/// Serves the snapshots API on `listener` until `stop` resolves.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::UnixListener,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SnapshotterError> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
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
