//! `imagecache push NAME`: push a Ready cache's snapshot to the daemon's `share_registry` now
//! (a cache built here is pushed by itself once Ready; this pushes again, or an imported one).

use anyhow::{Context as _, Result};

use super::Client;
use crate::objects::ImageCache;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let path = format!("{}/push", super::cache_path(&args.name));
    let cache: ImageCache = client
        .post(&path, Vec::new(), "application/json")
        .await?
        .json()?;
    let shared_as = cache
        .status
        .and_then(|s| s.shared_as)
        .context("the daemon answered without status.sharedAs")?;
    println!("{}: pushed as {shared_as}", args.name);
    Ok(())
}
