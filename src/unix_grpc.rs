//! gRPC over a unix socket: every new HTTP/2 connection of a tonic channel is a connect to
//! the socket (containerd's API and CRI for the daemon, CRI and the snapshotter for tests).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::codegen::{Context, Poll, Service};
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects every new HTTP/2 connection of a channel to one unix socket.
#[derive(Clone)]
pub struct UnixConnector(pub PathBuf);

impl Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

/// A channel to `socket` that connects on first use (and again after containerd restarts).
pub fn lazy_channel(socket: &Path) -> Channel {
    // The URI is never dialled: the connector decides where a connection goes.
    Endpoint::from_static("http://localhost")
        .connect_with_connector_lazy(UnixConnector(socket.to_owned()))
}
