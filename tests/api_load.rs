//! The API stays responsive under load (issue 10, "Load"), against a real daemon on a
//! scratch XFS with a registry on 127.0.0.1:
//!
//! - idle: 32 disk creates/deletes in flight, no build; the creates' latencies;
//! - loaded: 4 cache builds at once (two generated ~160 MB, 8,000-file images, gzip, each in
//!   two caches; another 4 when those are over, until 6 s have passed) and the same 32
//!   creates/deletes in flight. Meanwhile one client on a thread of its own asks, in turn,
//!   `GET /healthz`, the list of ImageCaches, one ImageCache, the list of Disks and one Disk.
//!   Each of those is to answer with p99 <= 25 ms, idle and loaded; the disk creates' p50/p99
//!   are bounded too (idle and loaded, `*_CREATE_BOUND_MS`), and all are printed.
//!
//! Timing: the API answers reads on a runtime of its own at nice -5, from memory
//! (store/mirror.rs), while the work runs at nice 2 to 10 (imagecached.rs,
//! `daemon::background`). On a 2-core machine the reads' p99 was 4.8-20.4 ms in 5 runs by hand
//! (docs/TESTING.md, "Load").

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imagecache::cli::Client;
use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::gen::realistic::realistic_image_sized;
use support::oci::{push_image, Compression};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const CACHES: &str = "/apis/imagecache.io/v1/imagecaches";
const DISKS: &str = "/apis/imagecache.io/v1/disks";
const BUILDS: usize = 4;
/// Distinct images; build i builds image i % IMAGES (each build pulls and unpacks its own).
const IMAGES: usize = 2;
const DISKS_IN_FLIGHT: usize = 32;
/// Uncompressed bytes and files of each build's image.
const IMAGE_BYTES: u64 = 160_000_000;
const IMAGE_FILES: u64 = 8_000;
const P99_BOUND_MS: f64 = 25.0;
/// Bounds on the disk creates' (p50, p99) in ms, idle and under the builds. docs/TESTING.md
/// has quiet-machine figures of idle p50 25-36 / p99 54-70 and, under the builds, p50 47-67 /
/// p99 229-734; the test command runs two tests at once, which slowed them 2-3x here (idle
/// 80 / 110, loaded 197 / 689 with builds alongside). The bounds are about 4x the quiet p50s
/// and p99s (2x the worst loaded p99): wide enough for a shared machine, narrow enough that
/// creates waiting on a build (seconds) or queueing one behind another fail.
const IDLE_CREATE_BOUND_MS: (f64, f64) = (150.0, 300.0);
const LOADED_CREATE_BOUND_MS: (f64, f64) = (300.0, 1500.0);
/// The shortest loaded window: builds start in waves of `BUILDS` until it has passed.
const MIN_LOADED: Duration = Duration::from_secs(6);
/// Creates per disk worker in the idle phase.
const IDLE_ROUNDS: usize = 4;

/// Latencies in ms of one kind of request.
type Samples = Vec<f64>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn figures(v: &Samples) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut v = v.clone();
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        *v.last().unwrap(),
    )
}

fn rt(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

async fn timed(client: &Client, path: &str) -> (f64, Value) {
    let t = Instant::now();
    let answer = client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let body = if path == "/healthz" {
        Value::Null
    } else {
        serde_json::from_slice(&answer.body).unwrap()
    };
    (ms, body)
}

/// The read requests the sampler makes, in turn.
const KINDS: [&str; 5] = [
    "healthz",
    "list caches",
    "get cache",
    "list disks",
    "get disk",
];

/// Asks the five reads in turn on a thread of its own until `stop`; their latencies by kind.
/// The get of one ImageCache goes to each of `caches` in turn.
fn sample(
    client: Client,
    caches: Vec<String>,
    disk: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Samples>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = vec![Samples::new(); KINDS.len()];
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                out[0].push(timed(&client, "/healthz").await.0);
                out[1].push(timed(&client, CACHES).await.0);
                let cache = &caches[i % caches.len()];
                out[2].push(timed(&client, &format!("{CACHES}/{cache}")).await.0);
                out[3].push(timed(&client, DISKS).await.0);
                out[4].push(timed(&client, &format!("{DISKS}/{disk}")).await.0);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            out
        })
    })
}

/// Whether every cache in `names` is Ready or Failed.
async fn all_settled(client: &Client, names: &[String]) -> bool {
    let answer = client
        .get(CACHES)
        .await
        .unwrap_or_else(|e| panic!("GET {CACHES}: {e}"));
    let list: Value = serde_json::from_slice(&answer.body).unwrap();
    names.iter().all(|name| {
        list["items"].as_array().unwrap().iter().any(|c| {
            c["metadata"]["name"] == name.as_str()
                && matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
        })
    })
}

/// Creates `BUILDS` caches at once (wave 0 named `load-0-*`, ...), waits for them all, and
/// starts another wave until `MIN_LOADED` has passed since the first; then sets `stop`. A
/// fast machine builds one wave in under 3 s, too short a window to measure the reads under.
/// The names of every cache built, by wave.
fn drive_builds(daemon: &TestDaemon, images: &[String], stop: &AtomicBool) -> Vec<Vec<String>> {
    // Set on the way out, a panic's too, so that the disk churn waiting on it ends.
    struct SetOnDrop<'a>(&'a AtomicBool);
    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _stop = SetOnDrop(stop);
    let client = Client::new(&daemon.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut waves = Vec::new();
    while waves.is_empty() || started.elapsed() < MIN_LOADED {
        let names: Vec<String> = (0..BUILDS)
            .map(|i| format!("load-{}-{i}", waves.len()))
            .collect();
        for (name, image) in names.iter().zip(images.iter().cycle()) {
            let out = daemon.create(&cache_yaml(name, std::slice::from_ref(image), ""), false);
            assert!(out.status.success(), "create {name}: {}", daemon.log());
        }
        while !rt.block_on(all_settled(&client, &names)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        waves.push(names);
    }
    waves
}

fn disk_body(image: &str) -> Vec<u8> {
    serde_json::json!({
        "apiVersion": "imagecache.io/v1", "kind": "Disk",
        "spec": {"images": [image], "cacheId": "base"}
    })
    .to_string()
    .into_bytes()
}

/// `DISKS_IN_FLIGHT` workers each creating and deleting a disk of `image` from cache `base`,
/// `rounds` times each or (rounds = 0) until `stop`; the creates' latencies.
async fn churn(client: &Client, image: &str, rounds: usize, stop: Arc<AtomicBool>) -> Samples {
    let creates = Arc::new(Mutex::new(Samples::new()));
    let workers: Vec<_> = (0..DISKS_IN_FLIGHT)
        .map(|w| {
            let (client, body) = (client.clone(), disk_body(image));
            let (creates, stop) = (creates.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while (rounds == 0 && !stop.load(Ordering::SeqCst)) || (rounds > 0 && n < rounds) {
                    let t = Instant::now();
                    let answer = client
                        .post(DISKS, body.clone(), "application/json")
                        .await
                        .unwrap_or_else(|e| panic!("worker {w}: create: {e}"));
                    creates
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1e3);
                    let disk: Value = serde_json::from_slice(&answer.body).unwrap();
                    assert_eq!(disk["status"]["phase"], "Ready", "{disk:#}");
                    let id = disk["metadata"]["name"].as_str().unwrap();
                    client
                        .delete(&format!("{DISKS}/{id}"))
                        .await
                        .unwrap_or_else(|e| panic!("worker {w}: delete {id}: {e}"));
                    n += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    Arc::try_unwrap(creates).unwrap().into_inner().unwrap()
}

fn print_reads(label: &str, reads: &[Samples]) {
    for (kind, v) in KINDS.iter().zip(reads) {
        let (p50, p99, max) = figures(v);
        eprintln!(
            "{label:6} {kind:12} n={:5}  p50 {p50:6.2} ms  p99 {p99:6.2} ms  max {max:7.2} ms",
            v.len()
        );
    }
}

#[test]
fn reads_answer_within_25ms_p99_under_four_builds_and_32_disk_creates() {
    let scratch = ScratchXfs::new(128 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(1);
    let base_image = set.push_all(&addr, None).remove(0);
    let t = Instant::now();
    let images: Vec<String> = (0..IMAGES)
        .map(|i| {
            let image =
                realistic_image_sized(100 + i as u64, Compression::Gzip, IMAGE_BYTES, IMAGE_FILES);
            push_image(&addr, &format!("load/app{i}"), "v1", &image, None);
            format!("{addr}/load/app{i}:v1")
        })
        .collect();
    eprintln!(
        "{IMAGES} images of {} MB generated and pushed in {:.1} s",
        IMAGE_BYTES / 1_000_000,
        t.elapsed().as_secs_f64()
    );
    let root = scratch.path().join("state");
    let mut daemon = TestDaemon::start(&root, &[&addr]);
    // Four builds at once is the load measured, above the default of two.
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    daemon.stop();
    std::fs::write(
        &daemon.config_path,
        format!("{config}max_concurrent_builds = {BUILDS}\n"),
    )
    .unwrap();
    daemon.spawn();
    let out = daemon.create(
        &cache_yaml(
            "base",
            std::slice::from_ref(&base_image),
            "  imageCacheSize: 20\n",
        ),
        true,
    );
    assert!(out.status.success(), "base cache: {}", daemon.log());
    let client = Client::new(&daemon.socket);
    let runtime = rt(2);
    // A disk that lives through the test, for the get.
    let pinned: Value = runtime.block_on(async {
        let answer = client
            .post(DISKS, disk_body(&base_image), "application/json")
            .await
            .unwrap();
        serde_json::from_slice(&answer.body).unwrap()
    });
    let pinned_id = pinned["metadata"]["name"].as_str().unwrap().to_owned();

    // Idle: the disk creates alone.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(
        client.clone(),
        vec!["base".into()],
        pinned_id.clone(),
        stop.clone(),
    );
    let idle_creates = runtime.block_on(churn(&client, &base_image, IDLE_ROUNDS, stop.clone()));
    stop.store(true, Ordering::SeqCst);
    let idle_reads = sampler.join().unwrap();

    // Loaded: four builds at a time and the disk creates, sampled until the builds are over.
    rustix::fs::sync();
    let first_wave: Vec<String> = (0..BUILDS).map(|i| format!("load-0-{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (waves, busy_creates, busy_reads) = std::thread::scope(|s| {
        let driver = s.spawn(|| drive_builds(&daemon, &images, &stop));
        // The first wave exists before the sampler asks for it.
        while !driver.is_finished()
            && !first_wave
                .iter()
                .all(|name| daemon.cli(&["get", name]).status.success())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let sampler = sample(
            client.clone(),
            first_wave.clone(),
            pinned_id.clone(),
            stop.clone(),
        );
        let creates = runtime.block_on(churn(&client, &base_image, 0, stop.clone()));
        let waves = driver.join().unwrap();
        (waves, creates, sampler.join().unwrap())
    });
    let loaded_for = started.elapsed();

    for name in waves.iter().flatten() {
        let cache = daemon.get_json(name);
        assert_eq!(
            cache["status"]["phase"],
            "Ready",
            "{name}: {cache:#}\n{}",
            daemon.log()
        );
    }
    eprintln!(
        "loaded phase: {:.1} s, {} wave(s) of {BUILDS} builds, {} disk creates",
        loaded_for.as_secs_f64(),
        waves.len(),
        busy_creates.len()
    );
    print_reads("idle", &idle_reads);
    print_reads("loaded", &busy_reads);
    let (i50, i99, imax) = figures(&idle_creates);
    let (b50, b99, bmax) = figures(&busy_creates);
    eprintln!(
        "disk create, idle:   n={:5}  p50 {i50:6.2} ms  p99 {i99:6.2} ms  max {imax:7.2} ms",
        idle_creates.len()
    );
    eprintln!(
        "disk create, builds: n={:5}  p50 {b50:6.2} ms  p99 {b99:6.2} ms  max {bmax:7.2} ms",
        busy_creates.len()
    );

    // The builds ran through a window long enough to sample the reads under.
    assert!(
        loaded_for >= MIN_LOADED && busy_reads[0].len() >= 100,
        "too short a loaded window: {loaded_for:?}, {} rounds",
        busy_reads[0].len()
    );
    let mut over: Vec<String> = [("idle", &idle_reads), ("loaded", &busy_reads)]
        .into_iter()
        .flat_map(|(phase, reads)| {
            KINDS.iter().zip(reads).filter_map(move |(kind, v)| {
                let (_, p99, _) = figures(v);
                (p99 > P99_BOUND_MS).then(|| format!("{phase} {kind}: p99 {p99:.2} ms"))
            })
        })
        .collect();
    for (phase, (p50, p99), (max50, max99)) in [
        ("idle", (i50, i99), IDLE_CREATE_BOUND_MS),
        ("under the builds", (b50, b99), LOADED_CREATE_BOUND_MS),
    ] {
        if p50 > max50 || p99 > max99 {
            over.push(format!(
                "disk create {phase}: p50 {p50:.2} ms p99 {p99:.2} ms, bounds {max50} / {max99} ms"
            ));
        }
    }

    runtime.block_on(async {
        client
            .delete(&format!("{DISKS}/{pinned_id}"))
            .await
            .unwrap();
    });
    drop(daemon);
    assert_no_leaks(&root);
    assert!(
        over.is_empty(),
        "slower than the bounds (reads: {P99_BOUND_MS} ms p99): {over:?}"
    );
}
