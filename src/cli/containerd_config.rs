//! `imagecache containerd-config`: the lines to add to containerd's config.toml so that
//! containerd and its CRI plugin use imagecache as their snapshotter, and the kubelet flag
//! that sends its image calls through the daemon's CRI image service.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::Client;
use crate::api::routes::INFO;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshotter socket to name (default: the running daemon's, from its info).
    #[arg(long)]
    pub snapshotter_socket: Option<PathBuf>,
    /// The CRI image service socket to name in the kubelet flag (default: the running
    /// daemon's, from its info; "" leaves the flag out).
    #[arg(long)]
    pub cri_image_socket: Option<PathBuf>,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let info: Option<serde_json::Value> =
        match args.snapshotter_socket.is_some() && args.cri_image_socket.is_some() {
            true => None,
            false => Some(client.get(INFO).await?.json()?),
        };
    let from_info = |key: &str| {
        info.as_ref()
            .and_then(|i| i[key].as_str())
            .map(PathBuf::from)
    };
    let socket = match args
        .snapshotter_socket
        .or_else(|| from_info("snapshotterSocket"))
    {
        Some(socket) => socket,
        None => bail!(
            "the daemon's containerd snapshotter is off (snapshotter_socket = \"\" in its \
             config): set snapshotter_socket and restart imagecached, or name a socket \
             with --snapshotter-socket"
        ),
    };
    let cri_image = args
        .cri_image_socket
        .or_else(|| from_info("criImageSocket"))
        .filter(|p| !p.as_os_str().is_empty());
    print!(
        "{}",
        crate::snapshotter_grpc::containerd_config(&socket, cri_image.as_deref())
    );
    Ok(())
}
