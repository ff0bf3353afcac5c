//! The third front door: the CRI ImageService (v1) on `cri_image_socket`, the kubelet's
//! `--image-service-endpoint`. Every call is forwarded to containerd's own CRI on
//! `containerd_socket` and containerd's answer (or status) goes back unchanged; the one thing
//! the daemon takes from it is a PullImage's credentials (the pod's pull secret as the kubelet
//! resolved it), lent to the snapshotter's cold pull of that image while the call runs
//! (daemon/pull_auth.rs): containerd's CRI passes the snapshotter no credentials.

mod auth_config;
mod image_service;

use std::path::Path;

use tokio_stream::StreamExt;

pub use auth_config::credentials_of;
pub use image_service::ImageProxy;

use crate::daemon::Daemon;
use crate::root_socket::RootSocketError;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(transparent)]
    Socket(#[from] RootSocketError),
    #[error("CRI image service failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The config key of the service's socket, in messages about it.
const KEY: &str = "cri_image_socket";

/// Binds `socket` (replacing a stale file, never a live socket); root only may connect, as
/// the kubelet runs as root (see [`crate::root_socket::bind`]).
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, CriError> {
    Ok(crate::root_socket::bind(socket, KEY)?)
}

/// Serves the CRI ImageService on `listener`, forwarding to containerd on `containerd`,
/// until `stop` resolves. containerd need not be up yet: each call connects when it is
/// made, and one made while containerd is down gets containerd's `Unavailable`, as the
/// kubelet would talking to containerd itself.
pub async fn serve(
    daemon: Daemon,
    listener: tokio::net::UnixListener,
    containerd: &Path,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(), CriError> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).filter(|accepted| {
        // An accept error goes on to tonic, which logs it and goes on accepting.
        accepted.as_ref().map_or(true, |s| {
            crate::root_socket::admit(s, "CRI image service", "the kubelet")
        })
    });
    tonic::transport::Server::builder()
        .add_service(ImageProxy::new(daemon, containerd).into_service())
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}
