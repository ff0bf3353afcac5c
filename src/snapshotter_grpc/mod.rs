//! The second front door (the gRPC side of the snapshotter; its core is
//! `daemon::ctr_snapshots`): containerd's snapshots API over gRPC on a unix socket, so
//! containerd on the node uses imagecache as its snapshotter (`[proxy_plugins.imagecache]`).
//! Like the HTTP API beside it, it only parses requests into daemon requests and maps the
//! daemon's errors to its protocol's codes; it never touches the disk.

mod convert;
mod service;

use std::path::Path;

use tokio_stream::StreamExt;

pub use service::SnapshotsService;

use crate::daemon::Daemon;
use crate::root_socket::RootSocketError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    #[error(transparent)]
    Socket(#[from] RootSocketError),
    #[error("snapshotter server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The config key of the snapshotter's socket, in messages about it.
const KEY: &str = "snapshotter_socket";

/// Binds `socket` (replacing a stale file, never a live socket) and returns the listener;
/// root only may connect, as containerd runs as root (see [`crate::root_socket::bind`]).
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, SnapshotterError> {
    Ok(crate::root_socket::bind(socket, KEY)?)
}

/// Serves the snapshots API on `listener` until `stop` resolves.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::UnixListener,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SnapshotterError> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter(|accepted| {
        // An accept error goes on to tonic, which logs it and goes on accepting.
        accepted.as_ref().map_or(true, |s| {
            crate::root_socket::admit(s, "snapshotter", "containerd")
        })
    });
    tonic::transport::Server::builder()
        .add_service(SnapshotsService::new(daemon))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

/// The lines an operator adds to containerd's config.toml (version 2, containerd 1.6) so
/// that containerd and its CRI plugin use imagecache as their snapshotter; with
/// `cri_image_socket`, a comment naming the kubelet flag that sends its image calls (and the
/// pods' pull credentials) through the daemon's CRI image service (src/cri).
pub fn containerd_config(socket: &Path, cri_image_socket: Option<&Path>) -> String {
    let kubelet = match cri_image_socket {
        Some(cri) => format!(
            r#"
# The kubelet's image calls go through imagecache, which forwards each one to containerd
# and lends a pull's credentials to the snapshotter's own fetch of that image. Start the
# kubelet with:
#   {}
"#,
            kubelet_flag(cri)
        ),
        None => String::new(),
    };
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
{kubelet}"#,
        toml::Value::String(socket.display().to_string())
    )
}

/// The kubelet flag that makes the daemon's CRI image service the kubelet's.
pub fn kubelet_flag(cri_image_socket: &Path) -> String {
    format!(
        "--image-service-endpoint=unix://{}",
        cri_image_socket.display()
    )
}
