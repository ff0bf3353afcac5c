//! `imagecache delete NAME`

use anyhow::Result;

use super::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    client.delete(&super::cache_path(&args.name)).await?;
    println!("imagecache.imagecache.io \"{}\" deleted", args.name);
    Ok(())
}
