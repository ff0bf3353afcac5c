//! `imagecache describe NAME`

use std::fmt::Write;

use anyhow::Result;

use super::output;
use super::Client;
use crate::api::ImageCache;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub name: String,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let cache: ImageCache = client.get(&super::cache_path(&args.name)).await?.json()?;
    print!("{}", render(&cache));
    Ok(())
}

pub fn render(c: &ImageCache) -> String {
    let mut o = String::new();
    let field = |o: &mut String, k: &str, v: &str| {
        let _ = writeln!(o, "{:<18}{v}", format!("{k}:"));
    };
    field(&mut o, "Name", &c.metadata.name);
    field(&mut o, "API Version", &c.api_version);
    field(
        &mut o,
        "Created",
        c.metadata.creation_timestamp.as_deref().unwrap_or("-"),
    );
    field(
        &mut o,
        "Size",
        &c.spec
            .image_cache_size
            .map(|g| format!("{g} GiB"))
            .unwrap_or_default(),
    );
    field(
        &mut o,
        "Retention",
        &c.spec
            .retention_days
            .map(|d| format!("{d} days"))
            .unwrap_or_else(|| "never expires".into()),
    );
    if !c.spec.image_pull_secrets.is_empty() {
        field(
            &mut o,
            "Pull Secrets",
            &c.spec.image_pull_secrets.join(", "),
        );
    }
    let _ = writeln!(o, "Images:");
    for image in &c.spec.images {
        let _ = writeln!(o, "  {image}");
    }
    if let Some(s) = &c.status {
        let _ = writeln!(o, "Status:");
        let row = |o: &mut String, k: &str, v: &str| {
            let _ = writeln!(o, "  {:<16}{v}", format!("{k}:"));
        };
        row(&mut o, "Phase", s.phase.as_str());
        row(&mut o, "Progress", &s.progress);
        row(&mut o, "Cache ID", &s.image_cache_id);
        row(
            &mut o,
            "Snapshot",
            s.snapshot_digest.as_deref().unwrap_or("-"),
        );
        row(&mut o, "Data Size", s.data_size.as_deref().unwrap_or("-"));
        row(&mut o, "Started", s.start_time.as_deref().unwrap_or("-"));
        row(&mut o, "Last Updated", &s.last_updated_time);
        row(
            &mut o,
            "Expires",
            s.expire_date_time.as_deref().unwrap_or("never"),
        );
        if let Some(m) = &s.message {
            row(&mut o, "Message", m);
        }
        for image in &s.images {
            let _ = writeln!(
                o,
                "  Image {}: {} ({} layers)",
                image.image,
                image.digest,
                image.chain_ids.len()
            );
        }
        let _ = writeln!(o, "Events:");
        if s.events.is_empty() {
            let _ = writeln!(o, "  <none>");
        } else {
            let rows: Vec<Vec<String>> = s
                .events
                .iter()
                .map(|e| {
                    let age = if e.count > 1 {
                        format!(
                            "{} (x{} over {})",
                            output::age(Some(&e.last_timestamp)),
                            e.count,
                            output::age(Some(&e.first_timestamp))
                        )
                    } else {
                        output::age(Some(&e.last_timestamp))
                    };
                    vec![e.type_.clone(), e.reason.clone(), age, e.message.clone()]
                })
                .collect();
            for line in output::table(&["Type", "Reason", "Age", "Message"], &rows).lines() {
                let _ = writeln!(o, "  {line}");
            }
        }
    }
    o
}
