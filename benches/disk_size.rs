//! Disk size: what the size of a cache, and of the disks cloned from it, costs.
//!
//! Everything runs through a real `imagecached` on a scratch XFS filesystem, with the
//! debian-sized 4-layer benchmark image (`realistic`, seed 1, ~400 MB, 20,000 files, gzip)
//! from a registry on 127.0.0.1.
//!
//! 1. **Cache size.** The image is built into a 20 GiB cache and into a 1 TiB one, in
//!    alternating rounds; each build is timed from `create --wait` to Ready, and each
//!    cache's frozen data (`status.dataSizeBytes`) is read. Medians are compared.
//! 2. **Disk size.** From the 20 GiB cache, disks of 1×, 2×, 10× and 100× its size; from the
//!    1 TiB cache, disks of its own size. Each is timed from the POST to the answer, which
//!    comes when the disk is Ready and mounted. The first disk of each size is reported on
//!    its own (it may make the grown image later disks of that size clone), then `--runs`
//!    more give the p50 and p99.
//! 3. **Concurrency.** 32 creates at once from the 20 GiB cache at its own size, `--batches`
//!    times; the p99 of the requests' latencies.
//!
//! Output: tables on standard error, and one `DISK_SIZE_RESULT {json}` line on standard
//! output that scripts/bench-disk-size.sh reads for its thresholds.
//!
//! Run: `bash scripts/bench-disk-size.sh [--check]` (root), or
//! `cargo bench --bench disk_size -- --runs N`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use imagecache::api::{Disk, DiskPhase, DiskSpec, API_VERSION, KIND_DISK};
use imagecache::cli::Client;
use serde_json::json;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::realistic::{realistic_image_sized, REALISTIC_BYTES, REALISTIC_FILES};
use support::oci::{push_image, Compression};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::stats::{median, percentile};

const DISKS: &str = "/apis/imagecache.io/v1/disks";
const CONCURRENT: usize = 32;
const SMALL_GIB: u32 = 20;
const LARGE_GIB: u32 = 1024;
/// Disk sizes from the 20 GiB cache, as multiples of its size.
const MULTIPLES: [u32; 4] = [1, 2, 10, 100];

#[derive(Parser, Debug)]
#[command(about = "Cache and disk sizes: build, frozen data and disk ready")]
struct Args {
    /// Timed disks of each size after the first.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Builds of each cache size: seven, so two slow builds on a busy node do not move the
    /// median.
    #[arg(long, default_value_t = 7)]
    builds: usize,
    /// Batches of 32 concurrent creates.
    #[arg(long, default_value_t = 3)]
    batches: usize,
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

/// One cache build: wall time to Ready and the frozen data it left.
struct Build {
    seconds: f64,
    data_bytes: u64,
}

/// One disk create: the API's latency and the daemon's own grow time, ms.
#[derive(Clone, Copy)]
struct Ready {
    api_ms: f64,
    grow_ms: f64,
}

fn main() {
    let args = Args::parse();
    assert!(
        args.runs > 0 && args.builds > 0,
        "--runs and --builds must be at least 1"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "disk_size needs root (loop devices, mounts)"
    );
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let t = Instant::now();
    let image = realistic_image_sized(1, Compression::Gzip, args.bytes, args.files);
    push_image(&addr, "bench/app", "v1", &image, None);
    eprintln!(
        "image generated and pushed in {:.1} s: {} layers, {:.1} MB",
        t.elapsed().as_secs_f64(),
        image.layers.len(),
        image.uncompressed_size() as f64 / 1e6
    );
    let app = format!("{addr}/bench/app:v1");
    let daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(&daemon.socket);

    // 1. Cache size: alternate the sizes so drift on the machine hits both alike. The last
    // round's caches stay for the disks.
    let mut builds: [Vec<Build>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.builds {
        for (i, gib) in [SMALL_GIB, LARGE_GIB].into_iter().enumerate() {
            let name = format!("c{gib}g-{round}");
            let b = build(&daemon, &name, &app, gib);
            eprintln!(
                "build {round} of the {gib} GiB cache: {:.2} s, frozen data {:.1} MiB",
                b.seconds,
                b.data_bytes as f64 / (1 << 20) as f64
            );
            builds[i].push(b);
            if round < args.builds {
                assert!(daemon.cli(&["delete", &name]).status.success());
            }
        }
    }
    let small_cache = format!("c{SMALL_GIB}g-{}", args.builds);
    let large_cache = format!("c{LARGE_GIB}g-{}", args.builds);

    // 2. Disk size.
    let mut sizes = Vec::new();
    for m in MULTIPLES {
        let gib = SMALL_GIB * m;
        let first = create_delete(&rt, &client, &small_cache, &app, gib);
        let timed: Vec<Ready> = (0..args.runs)
            .map(|_| create_delete(&rt, &client, &small_cache, &app, gib))
            .collect();
        sizes.push((format!("{m}x"), small_cache.clone(), gib, first, timed));
    }
    let first = create_delete(&rt, &client, &large_cache, &app, LARGE_GIB);
    let timed: Vec<Ready> = (0..args.runs)
        .map(|_| create_delete(&rt, &client, &large_cache, &app, LARGE_GIB))
        .collect();
    sizes.push((
        "1TiB-cache".into(),
        large_cache.clone(),
        LARGE_GIB,
        first,
        timed,
    ));

    // 3. Concurrency.
    let mut concurrent = Vec::new();
    for _ in 0..args.batches {
        concurrent.extend(rt.block_on(batch(&client, &small_cache, &app)));
    }

    let result = report(&builds, &sizes, &mut concurrent);
    println!("DISK_SIZE_RESULT {result}");

    if std::env::var_os("DISK_SIZE_LOG").is_some() {
        eprintln!("{}", daemon.log());
    }
    let root = daemon.root.clone();
    drop(daemon);
    assert_no_leaks(&root);
    drop(registry);
}

fn build(daemon: &TestDaemon, name: &str, image: &str, gib: u32) -> Build {
    // Each build starts with nothing of the previous one still being written back, so the
    // two sizes are timed from the same state.
    rustix::fs::sync();
    let t = Instant::now();
    let out = daemon.create(
        &cache_yaml(
            name,
            &[image.to_owned()],
            &format!("  imageCacheSize: {gib}\n"),
        ),
        true,
    );
    let seconds = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "build {name}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let cache = daemon.get_json(name);
    Build {
        seconds,
        data_bytes: cache["status"]["dataSizeBytes"]
            .as_u64()
            .expect("a Ready cache has dataSizeBytes"),
    }
}

async fn create(client: &Client, cache: &str, image: &str, gib: u32) -> (String, Ready) {
    let disk = Disk {
        api_version: API_VERSION.into(),
        kind: KIND_DISK.into(),
        metadata: Default::default(),
        spec: DiskSpec {
            images: vec![image.to_owned()],
            cache_id: Some(cache.to_owned()),
            size_gib: Some(gib),
            ..Default::default()
        },
        status: None,
    };
    let body = serde_json::to_vec(&disk).unwrap();
    let t = Instant::now();
    let answer = client
        .post(DISKS, body, "application/json")
        .await
        .expect("create disk");
    let api_ms = t.elapsed().as_secs_f64() * 1e3;
    let created: Disk = answer.json().unwrap();
    let status = created.status.expect("a created disk has a status");
    assert!(
        status.phase == DiskPhase::Ready && status.mountpoint.is_some(),
        "the disk is not Ready and mounted: {status:?}"
    );
    assert_eq!(status.size_gib, gib, "the disk has the size asked for");
    (
        created.metadata.name,
        Ready {
            api_ms,
            grow_ms: status.timings.grow_ms,
        },
    )
}

async fn delete(client: &Client, id: &str) {
    client
        .delete(&format!("{DISKS}/{id}"))
        .await
        .expect("delete disk");
}

fn create_delete(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    cache: &str,
    image: &str,
    gib: u32,
) -> Ready {
    rt.block_on(async {
        let (id, ready) = create(client, cache, image, gib).await;
        delete(client, &id).await;
        ready
    })
}

/// 32 creates at once; every request's latency. The disks are deleted afterwards.
async fn batch(client: &Client, cache: &str, image: &str) -> Vec<f64> {
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (client, cache, image) = (client.clone(), cache.to_owned(), image.to_owned());
            tokio::spawn(async move { create(&client, &cache, &image, SMALL_GIB).await })
        })
        .collect();
    let mut made = Vec::new();
    for t in tasks {
        made.push(t.await.unwrap());
    }
    for (id, _) in &made {
        delete(client, id).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    made.into_iter().map(|(_, r)| r.api_ms).collect()
}

type SizeCase = (String, String, u32, Ready, Vec<Ready>);

fn report(
    builds: &[Vec<Build>; 2],
    sizes: &[SizeCase],
    concurrent: &mut [f64],
) -> serde_json::Value {
    let seconds = |b: &[Build]| median(&b.iter().map(|b| b.seconds).collect::<Vec<_>>());
    let data = |b: &[Build]| median(&b.iter().map(|b| b.data_bytes as f64).collect::<Vec<_>>());
    let (small, large) = (&builds[0], &builds[1]);
    eprintln!();
    eprintln!("cache size (medians of {} builds each):", small.len());
    eprintln!("{:<10} {:>10} {:>16}", "size", "build s", "frozen data MiB");
    for (gib, b) in [(SMALL_GIB, small), (LARGE_GIB, large)] {
        eprintln!(
            "{:<10} {:>10.2} {:>16.1}",
            format!("{gib} GiB"),
            seconds(b),
            data(b) / (1 << 20) as f64
        );
    }
    let build_ratio = seconds(large) / seconds(small);
    let data_ratio = data(large) / data(small);
    eprintln!("1 TiB / 20 GiB: build {build_ratio:.3}×, frozen data {data_ratio:.3}×");

    eprintln!();
    eprintln!("disk ready, POST to Ready and mounted (ms):");
    eprintln!(
        "{:<12} {:>8} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10}",
        "case", "size GiB", "first", "first grow", "n", "p50", "p99", "grow p50"
    );
    let mut cases = serde_json::Map::new();
    for (case, cache, gib, first, timed) in sizes {
        let mut api: Vec<f64> = timed.iter().map(|r| r.api_ms).collect();
        api.sort_by(f64::total_cmp);
        let grow = median(&timed.iter().map(|r| r.grow_ms).collect::<Vec<_>>());
        let (p50, p99) = (percentile(&api, 0.5), percentile(&api, 0.99));
        eprintln!(
            "{case:<12} {gib:>8} {:>10.2} {:>10.2} {:>8} {p50:>8.2} {p99:>8.2} {grow:>10.2}",
            first.api_ms,
            first.grow_ms,
            api.len()
        );
        cases.insert(
            case.clone(),
            json!({"cache": cache, "size_gib": gib, "first_ms": first.api_ms,
                   "first_grow_ms": first.grow_ms, "p50_ms": p50, "p99_ms": p99}),
        );
    }
    concurrent.sort_by(f64::total_cmp);
    let (c50, c99) = (percentile(concurrent, 0.5), percentile(concurrent, 0.99));
    eprintln!(
        "concurrent/{CONCURRENT}: n {} p50 {c50:.2} ms p99 {c99:.2} ms",
        concurrent.len()
    );
    json!({
        "builds": {
            "small": {"size_gib": SMALL_GIB, "seconds": seconds(small), "data_bytes": data(small)},
            "large": {"size_gib": LARGE_GIB, "seconds": seconds(large), "data_bytes": data(large)},
            "build_ratio": build_ratio,
            "data_ratio": data_ratio,
        },
        "disks": cases,
        "concurrent": {"n": concurrent.len(), "p50_ms": c50, "p99_ms": c99},
    })
}
