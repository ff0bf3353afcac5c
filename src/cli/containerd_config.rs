//! `imagecache containerd-config`: the lines to add to containerd's config.toml so that
//! containerd and its CRI plugin use imagecache as their snapshotter.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::Client;
use crate::api::routes::INFO;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The snapshotter socket to name (default: the running daemon's, from its info).
    #[arg(long)]
    pub snapshotter_socket: Option<PathBuf>,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let socket = match args.snapshotter_socket {
        Some(socket) => socket,
        None => {
            let info: serde_json::Value = client.get(INFO).await?.json()?;
            match info["snapshotterSocket"].as_str() {
                Some(s) => PathBuf::from(s),
                None => bail!(
                    "the daemon's containerd snapshotter is off (snapshotter_socket = \"\" in its \
                     config): set snapshotter_socket and restart imagecached, or name a socket \
                     with --snapshotter-socket"
                ),
            }
        }
    };
    print!("{}", crate::snapshotter::containerd_config(&socket));
    Ok(())
}
