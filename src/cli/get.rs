//! `imagecache get [NAME] [-o json|yaml|wide]`

use anyhow::Result;

use super::output::{self, Format};
use super::Client;
use crate::api::routes::IMAGECACHES;
use crate::api::{ImageCache, ImageCacheList};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// One cache; all when left out.
    pub name: Option<String>,
    /// json and yaml print exactly what the API returned; wide adds columns.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let path = match &args.name {
        Some(name) => super::cache_path(name),
        None => IMAGECACHES.to_string(),
    };
    let answer = client.get(&path).await?;
    if output::print_raw(&answer.body, args.output)? {
        return Ok(());
    }
    let items = match &args.name {
        Some(_) => vec![answer.json::<ImageCache>()?],
        None => answer.json::<ImageCacheList>()?.items,
    };
    let wide = args.output == Some(Format::Wide);
    print!("{}", render(&items, wide));
    Ok(())
}

pub fn render(items: &[ImageCache], wide: bool) -> String {
    let mut header = vec!["NAME", "AGE", "CACHEID", "PHASE", "PROGRESS"];
    if wide {
        header.extend(["SIZE", "DATA", "IMAGES", "SOURCE", "SNAPSHOT"]);
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            let s = c.status.as_ref();
            let mut row = vec![
                c.metadata.name.clone(),
                output::age(c.metadata.creation_timestamp.as_deref()),
                s.map(|s| s.image_cache_id.clone()).unwrap_or_default(),
                s.map(|s| s.phase.to_string()).unwrap_or_default(),
                s.map(|s| s.progress.clone()).unwrap_or_default(),
            ];
            if wide {
                row.push(
                    c.spec
                        .image_cache_size
                        .map(|g| format!("{g}Gi"))
                        .unwrap_or_default(),
                );
                row.push(
                    s.and_then(|s| s.data_size.clone())
                        .unwrap_or_else(|| "-".into()),
                );
                row.push(c.spec.images.len().to_string());
                row.push(
                    s.and_then(|s| s.source.clone())
                        .unwrap_or_else(|| "-".into()),
                );
                row.push(
                    s.and_then(|s| s.snapshot_digest.clone())
                        .unwrap_or_else(|| "-".into()),
                );
            }
            row
        })
        .collect();
    if rows.is_empty() {
        return "No resources found\n".into();
    }
    output::table(&header, &rows)
}
