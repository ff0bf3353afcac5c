//! `imagecache pull REF [--name NAME]`: a cache made from the shared snapshot REF names
//! (`host[:port]/repository:tag`, `…@sha256:…`, or a tag or digest in the daemon's
//! `share_registry`), waited for until Ready. The daemon checks the snapshot against the
//! images it resolves itself and builds them instead when it cannot be used.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::Client;
use crate::api::routes::PULLS;
use crate::objects::{ImageCache, SnapshotPull};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shared snapshot: host[:port]/repository:tag or host[:port]/repository@sha256:…
    /// (a cache's `sharedAs`), or a tag or @digest in the daemon's share_registry.
    pub reference: String,
    /// The cache's name; by default `shared-` and 12 hex digits of the snapshot's manifest digest.
    #[arg(long)]
    pub name: Option<String>,
    /// Return once the cache is created instead of waiting until it is Ready.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the import goes on).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let body = serde_json::to_vec(&SnapshotPull {
        reference: args.reference.clone(),
        name: args.name.clone(),
    })
    .context("cannot encode the request")?;
    let created: ImageCache = client.post(PULLS, body, "application/json").await?.json()?;
    let name = created.metadata.name.clone();
    println!(
        "imagecache.imagecache.io/{name} created from {}",
        args.reference
    );
    if args.no_wait {
        return Ok(());
    }
    let cache = super::create::wait_ready(client, &name, Duration::from_secs(args.timeout)).await?;
    let status = cache
        .status
        .context("the daemon returned a cache without status")?;
    match status.source.as_deref() {
        Some("imported") => println!("{name}: imported"),
        _ => {
            let why = status
                .events
                .iter()
                .rev()
                .find(|e| e.reason == "ImportFailed")
                .map_or("see `imagecache describe`", |e| e.message.as_str());
            println!("{name}: built on this node; the shared snapshot was not used: {why}");
        }
    }
    Ok(())
}
