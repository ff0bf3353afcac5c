//! `imagecache disk create|get|delete`

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::output::{self, Format};
use super::Client;
use crate::api::routes::DISKS;
use crate::api::{Disk, DiskList, DiskPhase, DiskSpec, API_VERSION, KIND_DISK};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Clone the best cache for a pod (or these images) into a new disk, attach and mount it.
    Create(CreateArgs),
    /// List disks, or show one.
    Get(GetArgs),
    /// Unmount, detach and remove a disk (refused while its mount is busy).
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["pod", "image"])))]
pub struct CreateArgs {
    /// The disk's name (a DNS-1123 label, say made from the pod's UID); by default the
    /// daemon generates `disk-…`. Sending the same create again answers the disk made the
    /// first time (with a new bind token) instead of making a second; a different request
    /// under a taken name is refused.
    #[arg(long)]
    pub name: Option<String>,
    /// A Pod manifest (YAML or JSON; "-" for standard input): its containers' and
    /// initContainers' images, and its annotations for cache selection.
    #[arg(long)]
    pub pod: Option<PathBuf>,
    /// An image for the disk; repeatable.
    #[arg(long)]
    pub image: Vec<String>,
    /// A selection annotation KEY=VALUE, as a Pod would carry it; repeatable.
    #[arg(long = "annotation", value_parser = parse_kv)]
    pub annotations: Vec<(String, String)>,
    /// The cache to clone (imc-…), or auto.
    #[arg(long, default_value = "auto")]
    pub cache: String,
    /// Disk size in GiB (default: the cache's size; never smaller).
    #[arg(long)]
    pub size: Option<u32>,
    /// Attach only: no mount (for a microVM that takes the block device).
    #[arg(long)]
    pub no_mount: bool,
    /// Mount here instead of `<root>/disks/<id>/mnt`: a path of plain directories beneath
    /// the daemon's `disk_mount_root` (by default `<root>/disks`).
    #[arg(long)]
    pub mount_path: Option<String>,
    /// Return at once instead of waiting for missing images to be pulled.
    #[arg(long)]
    pub no_wait: bool,
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    pub id: Option<String>,
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub id: String,
}

pub async fn run(client: &Client, command: Command) -> Result<()> {
    match command {
        Command::Create(a) => create(client, a).await,
        Command::Get(a) => get(client, a).await,
        Command::Delete(a) => {
            client.delete(&format!("{DISKS}/{}", a.id)).await?;
            println!("disk.imagecache.io \"{}\" deleted", a.id);
            Ok(())
        }
    }
}

async fn create(client: &Client, a: CreateArgs) -> Result<()> {
    let pod = match &a.pod {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            };
            let value: serde_json::Value = if text.trim_start().starts_with('{') {
                serde_json::from_str(&text).context("the Pod file is not valid JSON")?
            } else {
                serde_saphyr::from_str(&text).context("the Pod file is not valid YAML")?
            };
            Some(value)
        }
        None => None,
    };
    let disk = Disk {
        api_version: API_VERSION.into(),
        kind: KIND_DISK.into(),
        metadata: crate::api::ObjectMeta {
            name: a.name.clone().unwrap_or_default(),
            ..Default::default()
        },
        spec: DiskSpec {
            pod,
            images: a.image.clone(),
            annotations: a.annotations.iter().cloned().collect(),
            cache_id: Some(a.cache.clone()),
            size_gib: a.size,
            mount: Some(!a.no_mount),
            mount_path: a.mount_path.clone(),
        },
        status: None,
    };
    let answer = client
        .post(DISKS, serde_json::to_vec(&disk)?, "application/json")
        .await?;
    // 200, not 201: the disk of this name was made by an earlier create of the same request.
    let existed = answer.code == 200;
    let mut created: Disk = answer.json()?;
    let id = created.metadata.name.clone();
    let mut body = answer.body;
    // Only the create's answer carries the bind token: the gets below do not.
    let bind_token = created.status.as_ref().and_then(|s| s.bind_token.clone());
    if !a.no_wait {
        // Missing images are pulled in the background; a pod needs them, so wait.
        let mut waited = false;
        while created.status.as_ref().map(|s| s.phase) == Some(DiskPhase::Pulling) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let answer = client.get(&format!("{DISKS}/{id}")).await?;
            created = answer.json()?;
            body = answer.body;
            waited = true;
        }
        if waited {
            // The disk as it is now, with the token its create answered: printed without
            // it, the token would be lost and no container could bind the disk.
            if let Some(status) = created.status.as_mut() {
                status.bind_token = bind_token;
            }
            body = serde_json::to_vec(&created)?;
        }
    }
    match a.output {
        Some(Format::Json) => println!("{}", String::from_utf8_lossy(&body)),
        Some(Format::Yaml) => print!("{}", output::yaml(&body)?),
        _ => {
            let s = created
                .status
                .as_ref()
                .context("the daemon returned a disk without status")?;
            println!(
                "disk.imagecache.io/{id} {}{}: {} {} ({} GiB, cache {}, ready in {:.1} ms)",
                if existed { "(existing) " } else { "" },
                s.phase,
                s.device.as_deref().unwrap_or("-"),
                s.mountpoint.as_deref().unwrap_or("(not mounted)"),
                s.size_gib,
                s.cache_id.as_deref().unwrap_or("none"),
                s.timings.clone_ms + s.timings.grow_ms + s.timings.attach_ms + s.timings.mount_ms
            );
        }
    }
    if let Some(s) = &created.status {
        if s.phase == DiskPhase::Failed {
            bail!(
                "disk {id} Failed: {}",
                s.message
                    .as_deref()
                    .unwrap_or("see `imagecache disk get -o yaml`")
            );
        }
    }
    Ok(())
}

async fn get(client: &Client, a: GetArgs) -> Result<()> {
    let path = match &a.id {
        Some(id) => format!("{DISKS}/{id}"),
        None => DISKS.to_string(),
    };
    let answer = client.get(&path).await?;
    if output::print_raw(&answer.body, a.output)? {
        return Ok(());
    }
    let items = match &a.id {
        Some(_) => vec![answer.json::<Disk>()?],
        None => answer.json::<DiskList>()?.items,
    };
    if items.is_empty() {
        println!("No resources found");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|d| {
            let s = d.status.as_ref();
            vec![
                d.metadata.name.clone(),
                output::age(d.metadata.creation_timestamp.as_deref()),
                s.map(|s| s.phase.to_string()).unwrap_or_default(),
                s.and_then(|s| s.cache_id.clone())
                    .unwrap_or_else(|| "-".into()),
                s.map(|s| format!("{}Gi", s.size_gib)).unwrap_or_default(),
                s.and_then(|s| s.device.clone())
                    .unwrap_or_else(|| "-".into()),
                s.and_then(|s| s.mountpoint.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "ID",
                "AGE",
                "PHASE",
                "CACHEID",
                "SIZE",
                "DEVICE",
                "MOUNTPOINT"
            ],
            &rows
        )
    );
    Ok(())
}
