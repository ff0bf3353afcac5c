//! `imagecache create -f FILE [--wait]`

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::Client;
use crate::api::routes::IMAGECACHES;
use crate::api::{ImageCache, Phase};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ImageCache manifest (YAML or JSON); "-" for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Wait until the cache is Ready (or Failed), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds (the build goes on).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let body = if args.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        buf
    } else {
        std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let content_type = match args.file.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        _ => "application/yaml",
    };
    let created: ImageCache = client.post(IMAGECACHES, body, content_type).await?.json()?;
    let name = created.metadata.name.clone();
    let id = created
        .status
        .as_ref()
        .map(|s| s.image_cache_id.clone())
        .unwrap_or_default();
    println!("imagecache.imagecache.io/{name} created ({id})");
    if args.wait {
        wait_ready(client, &name, Duration::from_secs(args.timeout)).await?;
    }
    Ok(())
}

/// Polls the cache until it is Ready or Failed, drawing a progress bar on a terminal.
pub async fn wait_ready(client: &Client, name: &str, timeout: Duration) -> Result<ImageCache> {
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>9} [{bar:40}] {pos:>3}% {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cache: ImageCache = client.get(&super::cache_path(name)).await?.json()?;
        let status = cache
            .status
            .clone()
            .context("the daemon returned a cache without status")?;
        let pct: u64 = status.progress.trim_end_matches('%').parse().unwrap_or(0);
        bar.set_prefix(status.phase.to_string());
        bar.set_position(pct);
        if let Some(last) = status.events.last() {
            bar.set_message(last.message.clone());
        }
        match status.phase {
            Phase::Ready => {
                bar.finish_and_clear();
                println!(
                    "imagecache.imagecache.io/{name} Ready: {} ({})",
                    status.snapshot_digest.as_deref().unwrap_or("-"),
                    status.data_size.as_deref().unwrap_or("-")
                );
                return Ok(cache);
            }
            Phase::Failed => {
                bar.finish_and_clear();
                bail!(
                    "imagecache {name} Failed: {}",
                    status
                        .message
                        .as_deref()
                        .unwrap_or("no reason recorded; see `imagecache describe`")
                );
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bar.abandon();
            bail!("imagecache {name} is still {} after {}s; it keeps building: check it with `imagecache get {name}`", status.phase, timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
