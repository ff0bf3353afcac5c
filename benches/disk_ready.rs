//! Disk ready: how long a per-pod disk takes from `POST /apis/imagecache.io/v1/disks` to the
//! answer (snapshot cloned with FICLONE, attached to a loop device, mounted), through a real
//! `imagecached` whose state root is a scratch XFS filesystem.
//!
//! Cases (caches built once, before any measurement; each measured iteration deletes its
//! disk outside the timed part):
//!
//! 1. `size/20GiB`     — a 20 GiB cache of one small image.
//! 2. `size/1TiB`      — the same image in a 1 TiB (1024 GiB) cache. Its 8,192 block groups
//!    of 4 KiB blocks take ~4 ms more to mount than the 20 GiB cache's 160: the price of
//!    paying no more space or build time than the 20 GiB cache (docs/OPERATIONS.md, Sizing).
//! 3. `data/100MB`     — a 20 GiB cache holding ~100 MB of image data.
//! 4. `data/2GB`       — a 20 GiB cache holding ~2 GB of image data: within 1.2× of 3.
//! 5. `concurrent/32`  — 32 creates at once through the API; each request's latency is a
//!    sample (target p99 ≤ 50 ms).
//! 6. `cold/100MB`     — the same ~100 MB image with no cache to clone (`eci-auto-imc:
//!    "false"`): an empty 20 GiB disk, the image pulled into it from the local registry,
//!    timed from the POST until the disk is Ready. What a pod waits for without a cache.
//!
//! Target for cases 1–4: p50 ≤ 15 ms. Criterion reports the mean and median of each sample
//! (a sample is several iterations); the bench also prints p50/p99 of the individual
//! requests, and of the daemon's own clone+grow+attach+mount timings, at the end.
//!
//! Run: `cargo bench --bench disk_ready` (root; xfsprogs and docker-registry installed).

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use imagecache::api::{Disk, DiskPhase, DiskSpec, API_VERSION, KIND_DISK};
use imagecache::cli::Client;
use imagecache::matching::ECI_AUTO_IMC;
use support::daemon::TestDaemon;
use support::gen::features::feature_set;
use support::gen::realistic::realistic_image_sized;
use support::oci::{push_image, Compression};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const DISKS: &str = "/apis/imagecache.io/v1/disks";
const CONCURRENT: usize = 32;

/// Everything the cases share: built once.
struct Setup {
    // Drop order: daemon, registry, scratch.
    daemon: TestDaemon,
    _registry: TestRegistry,
    rt: tokio::runtime::Runtime,
    client: Client,
    /// (case name, cache name, image) for cases 1–4.
    cases: Vec<(&'static str, &'static str, String)>,
    _scratch: ScratchXfs,
}

impl Setup {
    fn new() -> Setup {
        let started = Instant::now();
        let scratch = ScratchXfs::new(256 << 30);
        let registry = TestRegistry::start();
        let addr = registry.addr();
        let small = feature_set(1).push_all(&addr, None).remove(0);
        let mut data_refs = Vec::new();
        for (tag, bytes, files) in [
            ("100mb", 100_000_000u64, 5_000u64),
            ("2gb", 2_000_000_000, 60_000),
        ] {
            let image = realistic_image_sized(42, Compression::Zstd, bytes, files);
            push_image(&addr, "bench/data", tag, &image, None);
            data_refs.push(format!("{addr}/bench/data:{tag}"));
        }
        eprintln!("images generated and pushed in {:?}", started.elapsed());
        let root = scratch.path().join("state");
        let daemon = TestDaemon::start(&root, &[&addr]);
        let cases = vec![
            ("size/20GiB", "c20g", small.clone(), 20),
            ("size/1TiB", "c1t", small, 1024),
            ("data/100MB", "d100m", data_refs[0].clone(), 20),
            ("data/2GB", "d2g", data_refs[1].clone(), 20),
        ];
        for (_, name, image, size) in &cases {
            let t = Instant::now();
            let c = daemon.ready_cache(
                name,
                std::slice::from_ref(image),
                &format!("  imageCacheSize: {size}\n"),
            );
            eprintln!(
                "cache {name}: {size} GiB, data {}, built in {:?}",
                c["status"]["dataSize"],
                t.elapsed()
            );
        }
        let client = Client::new(&daemon.socket);
        Setup {
            daemon,
            _registry: registry,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
            client,
            cases: cases.into_iter().map(|(c, n, i, _)| (c, n, i)).collect(),
            _scratch: scratch,
        }
    }
}

/// One request's client-side latency and the daemon's own clone+grow+attach+mount time.
#[derive(Clone, Copy)]
struct Sample {
    api: Duration,
    daemon_ms: f64,
    clone_ms: f64,
    attach_ms: f64,
    mount_ms: f64,
}

/// POST a Disk with `spec`; the answer and how long it took.
async fn post_disk(client: &Client, spec: DiskSpec) -> (Disk, Duration) {
    let disk = Disk {
        api_version: API_VERSION.into(),
        kind: KIND_DISK.into(),
        metadata: Default::default(),
        spec,
        status: None,
    };
    let body = serde_json::to_vec(&disk).unwrap();
    let t = Instant::now();
    let answer = client
        .post(DISKS, body, "application/json")
        .await
        .expect("create disk");
    let took = t.elapsed();
    (answer.json().unwrap(), took)
}

async fn create(client: &Client, cache: &str, image: &str) -> (String, Sample) {
    let spec = DiskSpec {
        images: vec![image.to_owned()],
        cache_id: Some(cache.to_owned()),
        ..Default::default()
    };
    let (created, api) = post_disk(client, spec).await;
    let s = created.status.expect("status");
    assert!(s.cache_id.is_some() && s.missing_images.is_empty());
    let t = &s.timings;
    (
        created.metadata.name,
        Sample {
            api,
            daemon_ms: t.clone_ms + t.grow_ms + t.attach_ms + t.mount_ms,
            clone_ms: t.clone_ms,
            attach_ms: t.attach_ms,
            mount_ms: t.mount_ms,
        },
    )
}

/// A disk for `image` with no cache (the cold path), timed from the request until the
/// image has been pulled into it and the disk is Ready.
async fn create_cold(client: &Client, image: &str) -> (String, Duration) {
    let t = Instant::now();
    let spec = DiskSpec {
        images: vec![image.to_owned()],
        annotations: [(ECI_AUTO_IMC.to_owned(), "false".to_owned())].into(),
        ..Default::default()
    };
    let (created, _) = post_disk(client, spec).await;
    let id = created.metadata.name;
    loop {
        let got: Disk = client
            .get(&format!("{DISKS}/{id}"))
            .await
            .expect("get disk")
            .json()
            .unwrap();
        let status = got.status.expect("status");
        assert!(status.cache_id.is_none(), "cold: no cache");
        match status.phase {
            DiskPhase::Ready => return (id, t.elapsed()),
            DiskPhase::Failed => panic!("cold disk failed: {:?}", status.events),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn delete(client: &Client, id: &str) {
    client
        .delete(&format!("{DISKS}/{id}"))
        .await
        .expect("delete disk");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(raw: &BTreeMap<&'static str, Vec<Sample>>) {
    eprintln!();
    eprintln!("disk ready, per request (ms):");
    eprintln!(
        "{:<16} {:>6} {:>8} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "case", "n", "api p50", "api p99", "api max", "mean", "daemon p50", "daemon p99"
    );
    let mut p50s = BTreeMap::new();
    for (case, samples) in raw {
        let mut api: Vec<f64> = samples.iter().map(|s| s.api.as_secs_f64() * 1e3).collect();
        let mut own: Vec<f64> = samples.iter().map(|s| s.daemon_ms).collect();
        api.sort_by(f64::total_cmp);
        own.sort_by(f64::total_cmp);
        let mean = api.iter().sum::<f64>() / api.len() as f64;
        eprintln!(
            "{:<16} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>10.2}",
            case,
            api.len(),
            percentile(&api, 0.5),
            percentile(&api, 0.99),
            api[api.len() - 1],
            mean,
            percentile(&own, 0.5),
            percentile(&own, 0.99)
        );
        p50s.insert(*case, percentile(&api, 0.5));
    }
    eprintln!("daemon steps, p50 (ms):");
    eprintln!(
        "{:<16} {:>8} {:>8} {:>8}",
        "case", "clone", "attach", "mount"
    );
    for (case, samples) in raw {
        let p50 = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        eprintln!(
            "{:<16} {:>8.2} {:>8.2} {:>8.2}",
            case,
            p50(|s| s.clone_ms),
            p50(|s| s.attach_ms),
            p50(|s| s.mount_ms)
        );
    }
    let ratio = |a: &str, b: &str| match (p50s.get(a), p50s.get(b)) {
        (Some(x), Some(y)) => format!("{:.2}×", x / y),
        _ => "-".into(),
    };
    eprintln!(
        "p50 ratios: 1TiB/20GiB {}, 2GB/100MB {} (target ≤ 1.2×)",
        ratio("size/1TiB", "size/20GiB"),
        ratio("data/2GB", "data/100MB")
    );
}

fn bench(c: &mut Criterion) {
    let setup = Setup::new();
    let raw: Arc<Mutex<BTreeMap<&'static str, Vec<Sample>>>> = Default::default();
    let mut group = c.benchmark_group("disk_ready");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    for (case, cache, image) in &setup.cases {
        group.bench_function(*case, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (id, sample) = setup.rt.block_on(create(&setup.client, cache, image));
                    total += sample.api;
                    raw.lock().unwrap().entry(*case).or_default().push(sample);
                    setup.rt.block_on(delete(&setup.client, &id));
                }
                total
            })
        });
    }
    // Case 5: a batch of 32 concurrent creates is one iteration; its time is the batch's
    // wall time, and each request's own latency goes into the raw samples.
    let (_, cache, image) = setup.cases[0].clone();
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("concurrent/32", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                let results = setup.rt.block_on(async {
                    let tasks: Vec<_> = (0..CONCURRENT)
                        .map(|_| {
                            let (client, cache, image) =
                                (setup.client.clone(), cache, image.clone());
                            tokio::spawn(async move { create(&client, cache, &image).await })
                        })
                        .collect();
                    let mut out = Vec::new();
                    for t in tasks {
                        out.push(t.await.unwrap());
                    }
                    out
                });
                total += t.elapsed();
                let mut raw = raw.lock().unwrap();
                let v = raw.entry("concurrent/32").or_default();
                v.extend(results.iter().map(|(_, s)| *s));
                drop(raw);
                setup.rt.block_on(async {
                    for (id, _) in &results {
                        delete(&setup.client, id).await;
                    }
                });
            }
            total
        })
    });
    // Case 6: the cold path, for comparison with case 3's clone of the same image.
    let cold_image = setup
        .cases
        .iter()
        .find(|c| c.0 == "data/100MB")
        .map(|c| c.2.clone())
        .unwrap();
    let cold = Arc::new(Mutex::new(Vec::new()));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("cold/100MB", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (id, took) = setup.rt.block_on(create_cold(&setup.client, &cold_image));
                total += took;
                cold.lock().unwrap().push(took.as_secs_f64() * 1e3);
                setup.rt.block_on(delete(&setup.client, &id));
            }
            total
        })
    });
    group.finish();
    report(&raw.lock().unwrap());
    let mut cold = cold.lock().unwrap().clone();
    cold.sort_by(f64::total_cmp);
    if cold.is_empty() {
        // Filtered out (`cargo bench --bench disk_ready -- <case>`).
        cold.push(f64::NAN);
    }
    let clone_p50 = raw.lock().unwrap().get("data/100MB").map(|s| {
        let mut v: Vec<f64> = s.iter().map(|s| s.api.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    });
    eprintln!(
        "cold/100MB: n {} p50 {:.1} ms p99 {:.1} ms; clone of the same image p50 {:.2} ms ({:.0}× faster)",
        cold.len(),
        percentile(&cold, 0.5),
        percentile(&cold, 0.99),
        clone_p50.unwrap_or(f64::NAN),
        percentile(&cold, 0.5) / clone_p50.unwrap_or(f64::NAN)
    );

    let root = setup.daemon.root.clone();
    let Setup { mut daemon, .. } = setup;
    daemon.stop();
    assert_no_leaks(Path::new(&root));
}

criterion_group!(benches, bench);
criterion_main!(benches);
