//! `imagecache info`

use anyhow::Result;

use super::Client;
use crate::api::routes::INFO;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the API's JSON as it is.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<super::output::Format>,
}

pub async fn run(client: &Client, args: Args) -> Result<()> {
    let answer = client.get(INFO).await?;
    if args.output == Some(super::output::Format::Json) {
        println!("{}", String::from_utf8_lossy(&answer.body));
        return Ok(());
    }
    let v: serde_json::Value = answer.json()?;
    let line = |k: &str, v: &serde_json::Value| {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            other => other.to_string(),
        };
        println!("{:<22}{v}", format!("{k}:"));
    };
    line("Version", &v["version"]);
    line("State root", &v["root"]);
    line("Root filesystem", &v["rootFilesystem"]);
    line("Reflink", &v["reflink"]);
    line("Clone mode", &v["cloneMode"]);
    line("Backing image", &v["backingImage"]);
    let of = |held: &serde_json::Value, max: &serde_json::Value| {
        serde_json::Value::String(format!("{held} of {max}"))
    };
    line(
        "Loop devices (ours)",
        &of(&v["loopDevicesInUse"], &v["maxLoopDevices"]),
    );
    line("Loop devices (node)", &v["loopDevicesOnNode"]);
    line(
        "Builds running",
        &of(&v["buildsRunning"], &v["maxConcurrentBuilds"]),
    );
    line(
        "Builds queued",
        &of(&v["buildsQueued"], &v["maxQueuedBuilds"]),
    );
    line("Caches", &v["caches"]);
    line("Ready caches", &v["readyCaches"]);
    line("Snapshots", &v["snapshots"]);
    line("Disks", &v["disks"]);
    line("Snapshotter socket", &v["snapshotterSocket"]);
    let counts = &v["containerdSnapshots"];
    let counts = format!(
        "{} committed, {} active, {} view",
        counts["committed"], counts["active"], counts["view"]
    );
    line("containerd snapshots", &serde_json::Value::String(counts));
    if v["reflink"] == serde_json::Value::Bool(false) {
        eprintln!("WARNING: the state root cannot reflink: every disk is a full copy of its snapshot. Set backing_image in the config or put the state root on XFS.");
    }
    Ok(())
}
