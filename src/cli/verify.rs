//! `imagecache verify NAME`: exits non-zero when any chunk differs.

use anyhow::{bail, Result};

use super::Client;
use crate::api::VerifyResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let path = format!("{}/verify", super::cache_path(&args.name));
    let result: VerifyResult = client
        .post(&path, Vec::new(), "application/json")
        .await?
        .json()?;
    if result.ok {
        println!(
            "{}: snapshot {} verified, {} chunks match",
            result.name, result.snapshot_digest, result.chunks_checked
        );
        return Ok(());
    }
    for problem in &result.problems {
        eprintln!("{problem}");
    }
    bail!(
        "{}: snapshot {} does NOT match its manifest ({} problem(s)): delete the cache and build it again",
        result.name,
        result.snapshot_digest,
        result.problems.len()
    )
}
