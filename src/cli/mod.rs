//! The `imagecache` command line: one file per subcommand, all talking to the daemon's socket.

pub mod client;
pub mod containerd_config;
pub mod create;
pub mod delete;
pub mod describe;
pub mod disk;
pub mod get;
pub mod info;
pub mod output;
mod pull;
mod push;
pub mod verify;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use client::Client;

/// Node-local OCI image caches: build, inspect, verify and delete them.
#[derive(Debug, Parser)]
#[command(name = "imagecache", version)]
pub struct Cli {
    /// The daemon's API socket.
    #[arg(long, global = true, env = client::SOCKET_ENV, default_value = client::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an ImageCache from a YAML or JSON file ("-" reads standard input).
    Create(create::Args),
    /// List caches, or show one.
    Get(get::Args),
    /// Show a cache in detail, with its events.
    Describe(describe::Args),
    /// Delete a cache (its snapshot goes when nothing else uses it).
    Delete(delete::Args),
    /// Re-hash a cache's snapshot and report any chunk that differs.
    Verify(verify::Args),
    /// Push a Ready cache's snapshot to the daemon's share_registry now.
    Push(push::Args),
    /// Make a cache from a shared snapshot named by reference (imported, or built here when
    /// it does not match what this node resolves).
    Pull(pull::Args),
    /// Per-pod disks cloned from caches.
    #[command(subcommand)]
    Disk(disk::Command),
    /// The node's state root, reflink support, loop devices, caches and disks.
    Info(info::Args),
    /// The containerd configuration that makes imagecache containerd's snapshotter.
    ContainerdConfig(containerd_config::Args),
}

pub async fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.socket);
    match cli.command {
        Command::Create(a) => create::run(&client, a).await,
        Command::Get(a) => get::run(&client, a).await,
        Command::Describe(a) => describe::run(&client, a).await,
        Command::Delete(a) => delete::run(&client, a).await,
        Command::Verify(a) => verify::run(&client, a).await,
        Command::Push(a) => push::run(&client, a).await,
        Command::Pull(a) => pull::run(&client, a).await,
        Command::Disk(c) => disk::run(&client, c).await,
        Command::Info(a) => info::run(&client, a).await,
        Command::ContainerdConfig(a) => containerd_config::run(&client, a).await,
    }
}

pub fn cache_path(name: &str) -> String {
    format!("{}/{name}", crate::api::routes::IMAGECACHES)
}
