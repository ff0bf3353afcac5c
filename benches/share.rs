//! Shared snapshots: what building once per cluster saves the second node.
//!
//! Two real `imagecached` processes per run, "node A" and "node B", each on its own state root
//! on a scratch XFS filesystem, with the debian-sized 4-layer benchmark image (`realistic`,
//! seed 1, ~400 MB, 20,000 files, gzip) in one registry on 127.0.0.1 and the shared snapshots
//! in another. Each run:
//!
//! 1. **Build without sharing.** A node without `share_registry` builds the image's cache,
//!    timed from `create --wait` to Ready: the baseline for "push adds nothing".
//! 2. **Build and push.** Node A, sharing on, builds the same cache (timed the same way),
//!    then the driver waits for its `Pushed` event. Push time is the event's own figure, and
//!    the wall time from Ready to the event seen is reported beside it.
//! 3. **Import.** Node B, sharing on, creates the same cache: timed from `create --wait` to
//!    Ready; it must say `source: imported` with A's snapshot digest. Bytes fetched are the
//!    registries' own count (access log response sizes of B's GETs): every blob, manifest and
//!    tag list from the share registry, plus what B asked the image registry for (manifests
//!    and configs). The `Imported` event's figure is read as a cross-check.
//!
//! Each run has a fresh share registry, so B fetches every chunk instead of finding them
//! pushed by an earlier run, and fresh state roots for all three nodes. Runs alternate whether
//! the build without sharing comes first, so drift on the machine hits both builds alike.
//!
//! Output: a table on standard error, and one `SHARE_RESULT {json}` line on standard output
//! that scripts/bench-share.sh reads for its thresholds.
//!
//! Run: `bash scripts/bench-share.sh [--check]` (root), or
//! `cargo bench --bench share -- --runs N`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::realistic::{realistic_image_sized, REALISTIC_BYTES, REALISTIC_FILES};
use support::oci::{push_image, Compression};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const SHARE_REPO: &str = "imagecache/snapshots";
const CACHE: &str = "app";
const SIZE_GIB: u32 = 20;
/// A push of ~500 MB to 127.0.0.1 takes seconds; this only bounds a stuck one.
const PUSH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
#[command(about = "Shared snapshots: build and push on one node, import on another")]
struct Args {
    /// Runs (each: a build without sharing, a build and push, an import).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Uncompressed bytes of the generated image's 4 layers.
    #[arg(long, default_value_t = REALISTIC_BYTES)]
    bytes: u64,
    /// Files in the generated image's 4 layers.
    #[arg(long, default_value_t = REALISTIC_FILES)]
    files: u64,
    /// `cargo bench` passes this to a bench without a harness.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One run's figures.
struct Run {
    /// Node without sharing: create to Ready, s.
    build_off_s: f64,
    /// Node A: create to Ready, s.
    build_s: f64,
    /// The `Pushed` event's duration, s.
    push_s: f64,
    /// Ready to the `Pushed` event seen by polling, s.
    push_wall_s: f64,
    /// Node B: create to Ready, s.
    import_s: f64,
    /// The `Imported` event's duration, s.
    import_event_s: f64,
    /// Everything the share registry sent B.
    share_bytes: u64,
    /// Of which blobs (the artifact's config and its chunks).
    share_blob_bytes: u64,
    share_blobs: usize,
    /// Everything the image registry sent B.
    image_bytes: u64,
    /// The `Imported` event's message.
    imported: String,
    /// A's frozen data, bytes.
    data_bytes: u64,
    snapshot: String,
}

fn main() {
    let args = Args::parse();
    assert!(args.runs > 0, "--runs must be at least 1");
    assert!(
        rustix::process::geteuid().is_root(),
        "share needs root (loop devices, mounts)"
    );
    let scratch = ScratchXfs::new(64 << 30);
    let images = TestRegistry::start();
    let img_addr = images.addr();
    let t = Instant::now();
    let image = realistic_image_sized(1, Compression::Gzip, args.bytes, args.files);
    push_image(&img_addr, "bench/app", "v1", &image, None);
    let compressed = image.compressed_size();
    eprintln!(
        "image generated and pushed in {:.1} s: {} layers, {:.1} MB, {:.1} MB compressed",
        t.elapsed().as_secs_f64(),
        image.layers.len(),
        image.uncompressed_size() as f64 / 1e6,
        compressed as f64 / 1e6
    );
    let app = format!("{img_addr}/bench/app:v1");

    let mut runs = Vec::new();
    for i in 1..=args.runs {
        let dir = scratch.path().join(format!("run{i}"));
        // Alternate the order of the two builds, so the writeback an earlier node left and
        // drift on the machine hit both alike.
        let off_first = i % 2 == 0;
        let off = off_first.then(|| build_without_sharing(&dir.join("off"), &img_addr, &app));
        let mut run = share_run(&dir, &images, &app, &img_addr);
        run.build_off_s =
            off.unwrap_or_else(|| build_without_sharing(&dir.join("off"), &img_addr, &app));
        eprintln!(
            "run {i}: build without sharing {:.2} s, with {:.2} s; push {:.2} s ({:.2} s seen); \
             import {:.2} s (event {:.1} s), fetched {:.1} MiB from the share registry \
             ({} blobs), {:.1} KiB from the image registry; {}",
            run.build_off_s,
            run.build_s,
            run.push_s,
            run.push_wall_s,
            run.import_s,
            run.import_event_s,
            mib(run.share_bytes),
            run.share_blobs,
            run.image_bytes as f64 / 1024.0,
            run.imported
        );
        // Only so three runs' state roots do not pile up on the scratch filesystem.
        let _ = std::fs::remove_dir_all(&dir);
        runs.push(run);
    }

    let result = report(&runs, compressed, image.uncompressed_size());
    println!("SHARE_RESULT {result}");
    drop(images);
    drop(scratch);
}

/// A node without `share_registry` builds the cache on `root`; seconds to Ready.
fn build_without_sharing(root: &Path, img_addr: &str, app: &str) -> f64 {
    let node = TestDaemon::start(root, &[img_addr]);
    let (seconds, cache) = create(&node, app);
    assert_eq!(cache["status"]["source"], "built", "{cache:#}");
    finish(node);
    seconds
}

/// Node A builds and pushes, node B imports; the caller fills in `build_off_s`.
fn share_run(dir: &Path, images: &TestRegistry, app: &str, img_addr: &str) -> Run {
    let share = TestRegistry::start();
    let share_addr = share.addr();
    let target = format!("{share_addr}/{SHARE_REPO}");
    let registries = [img_addr, share_addr.as_str()];

    let a = TestDaemon::start_sharing(&dir.join("a"), &registries, &target);
    let (build_s, built) = create(&a, app);
    let ready_at = Instant::now();
    assert_eq!(built["status"]["source"], "built", "{built:#}");
    let pushed = a.wait_until(CACHE, PUSH_TIMEOUT, |c| {
        !events(c, "Pushed").is_empty() || !events(c, "PushFailed").is_empty()
    });
    let push_wall_s = ready_at.elapsed().as_secs_f64();
    let failed = events(&pushed, "PushFailed");
    assert!(failed.is_empty(), "{failed:?}\n{}", a.log());
    let push_s = event_secs(&events(&pushed, "Pushed")[0]);
    let snapshot = built["status"]["snapshotDigest"]
        .as_str()
        .expect("a Ready cache has a snapshot digest")
        .to_owned();
    let data_bytes = built["status"]["dataSizeBytes"]
        .as_u64()
        .expect("a Ready cache has dataSizeBytes");
    // Node A is done before B starts, as another node would be: B has the CPUs to itself.
    finish(a);

    let b = TestDaemon::start_sharing(&dir.join("b"), &registries, &target);
    let (share_mark, image_mark) = (share.log_mark(), images.log_mark());
    let (import_s, imported) = create(&b, app);
    let from_share = share.bytes_sent_since(share_mark);
    let from_images = images.bytes_sent_since(image_mark);
    assert_eq!(
        imported["status"]["source"],
        "imported",
        "{imported:#}\n{}",
        b.log()
    );
    assert_eq!(
        imported["status"]["snapshotDigest"], snapshot,
        "{imported:#}"
    );
    let message = events(&imported, "Imported")
        .pop()
        .expect("an imported cache has an Imported event");
    let import_event_s = event_secs(&message);
    cross_check(&message, from_share.blob_bytes);
    finish(b);

    Run {
        build_off_s: f64::NAN,
        build_s,
        push_s,
        push_wall_s,
        import_s,
        import_event_s,
        share_bytes: from_share.bytes,
        share_blob_bytes: from_share.blob_bytes,
        share_blobs: from_share.blobs,
        image_bytes: from_images.bytes,
        imported: message,
        data_bytes,
        snapshot,
    }
}

/// Creates the cache and waits for Ready; seconds and the cache.
fn create(node: &TestDaemon, app: &str) -> (f64, Value) {
    // Each build starts with nothing of the previous one still being written back.
    rustix::fs::sync();
    let t = Instant::now();
    let out = node.create(
        &cache_yaml(
            CACHE,
            &[app.to_owned()],
            &format!("  imageCacheSize: {SIZE_GIB}\n"),
        ),
        true,
    );
    let seconds = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "create: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let cache = node.get_json(CACHE);
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
    if std::env::var_os("SHARE_LOG").is_some() {
        eprintln!("{}", node.log());
    }
    (seconds, cache)
}

/// Stops a node and checks it left nothing mounted or attached.
fn finish(node: TestDaemon) {
    let root = node.root.clone();
    drop(node);
    assert_no_leaks(&root);
}

fn events(cache: &Value, reason: &str) -> Vec<String> {
    cache["status"]["events"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The duration an event's message gives ("... in 1.2s: ...").
fn event_secs(message: &str) -> f64 {
    message
        .split_once(" in ")
        .and_then(|(_, rest)| rest.split_once("s:"))
        .and_then(|(secs, _)| secs.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {message:?}"))
}

/// The `Imported` event says what the daemon counted fetched ("...: 121 chunk(s) fetched
/// (123.7 MiB), ..."), its chunks alone; the registry also sent the artifact's config. The
/// two must agree to within the event's rounding and the config's size, or one of them
/// counts something else.
fn cross_check(message: &str, registry_blob_bytes: u64) {
    let figure = message
        .split_once(" chunk(s) fetched (")
        .and_then(|(_, tail)| tail.split_once(')'))
        .map(|(figure, _)| figure)
        .unwrap_or_else(|| panic!("no fetched figure in {message:?}"));
    let (value, unit) = figure
        .split_once(' ')
        .unwrap_or_else(|| panic!("no unit in {figure:?}"));
    let value: f64 = value.parse().unwrap();
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unit {unit:?} in {message:?}"),
    };
    let event_bytes = value * scale;
    let registry = registry_blob_bytes as f64;
    // One decimal of the unit, plus the config blob (a few hundred KiB at most).
    let slack = scale * 0.05 + (1 << 20) as f64;
    assert!(
        (registry - event_bytes).abs() <= slack,
        "the registry sent {registry_blob_bytes} blob bytes, the Imported event says {figure}"
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

fn report(runs: &[Run], compressed: u64, uncompressed: u64) -> Value {
    eprintln!();
    eprintln!(
        "{:<4} {:>9} {:>9} {:>8} {:>8} {:>10} {:>12} {:>12}",
        "run",
        "build off",
        "build on",
        "push",
        "import",
        "import/bld",
        "fetched MiB",
        "fetched/comp"
    );
    for (i, r) in runs.iter().enumerate() {
        eprintln!(
            "{:<4} {:>9.2} {:>9.2} {:>8.2} {:>8.2} {:>10.3} {:>12.1} {:>12.3}",
            i + 1,
            r.build_off_s,
            r.build_s,
            r.push_s,
            r.import_s,
            r.import_s / r.build_s,
            mib(r.share_bytes + r.image_bytes),
            (r.share_bytes + r.image_bytes) as f64 / compressed as f64
        );
    }
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(f));
    let build = m(|r| r.build_s);
    let build_off = m(|r| r.build_off_s);
    let import = m(|r| r.import_s);
    let fetched = m(|r| (r.share_bytes + r.image_bytes) as f64);
    let import_ratio = import / build;
    let fetched_ratio = fetched / compressed as f64;
    eprintln!(
        "medians of {}: build {build:.2} s (without sharing {build_off:.2} s), import {import:.2} s \
         = {import_ratio:.3}× the build; fetched {:.1} MiB = {fetched_ratio:.3}× the layers' \
         {:.1} MiB compressed",
        runs.len(),
        mib(fetched as u64),
        mib(compressed)
    );
    let each: Vec<Value> = runs
        .iter()
        .map(|r| {
            json!({
                "build_off_s": r.build_off_s,
                "build_s": r.build_s,
                "push_s": r.push_s,
                "push_wall_s": r.push_wall_s,
                "import_s": r.import_s,
                "import_event_s": r.import_event_s,
                "share_bytes": r.share_bytes,
                "share_blob_bytes": r.share_blob_bytes,
                "share_blobs": r.share_blobs,
                "image_bytes": r.image_bytes,
                "data_bytes": r.data_bytes,
                "snapshot": r.snapshot,
                "imported": r.imported,
            })
        })
        .collect();
    json!({
        "image": {"compressed_bytes": compressed, "uncompressed_bytes": uncompressed},
        "runs": each,
        "build_s": build,
        "build_off_s": build_off,
        "build_on_off_ratio": build / build_off,
        "push_s": m(|r| r.push_s),
        "push_wall_s": m(|r| r.push_wall_s),
        "import_s": import,
        "import_event_s": m(|r| r.import_event_s),
        "import_ratio": import_ratio,
        "fetched_bytes": fetched,
        "fetched_ratio": fetched_ratio,
        "data_bytes": m(|r| r.data_bytes as f64),
    })
}
