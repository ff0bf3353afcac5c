//! Restart: how long a node's `imagecached` takes to serve again with many disks attached.
//!
//! Everything runs through a real `imagecached` on a scratch XFS filesystem, with one small
//! cache (the test kit's feature-set image, from a registry on 127.0.0.1) that every disk
//! clones. `max_loop_devices` is raised to fit the largest count.
//!
//! For each count in `--disks` (ascending; the disks of a smaller count stay, more are made):
//!
//! 1. **Create.** Disks are created (`--concurrency` at a time), each attached and mounted;
//!    the create latencies' p50 and p99.
//! 2. **List.** `GET /disks` with every disk there, `--lists` times: the median.
//! 3. **Restart.** The daemon is killed (SIGKILL: the disks stay attached and mounted, as
//!    after a crash) and started again. Timed from the start of the process to its first
//!    successful `GET /disks` (**serving**), and to the first list in which no disk reads
//!    `Adopting` (**adopted**). Every disk must then be Ready on the device it had, and still
//!    mounted.
//!
//! With `--caches N` (default 1), N caches of the image are built first (disks clone the
//! first): the figures then also hold for a node with that many caches, and the driver
//! reports `GET /imagecaches` and disk creates that match automatically among all N (the
//! matching policy's cost per cache), `--lists` of each.
//!
//! At the end every disk is deleted and nothing may be left attached or mounted.
//!
//! Output: a table on standard error, and one `RESTART_RESULT {json}` line on standard output
//! that scripts/bench-restart.sh reads for its threshold.
//!
//! Run: `bash scripts/bench-restart.sh [--check]` (root), or
//! `cargo bench --bench restart -- --disks 100,1000`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use imagecache::cli::Client;
use serde_json::{json, Value};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::stats::{median, percentile};

const DISKS: &str = "/apis/imagecache.io/v1/disks";
/// How often a restarted daemon is asked whether it serves (and whether it has adopted
/// everything): fine enough for a 1 s bound.
const POLL: Duration = Duration::from_millis(5);
/// A restart that takes longer than this is a hang, not a figure.
const RESTART_DEADLINE: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
#[command(about = "Restart to serving with many disks attached")]
struct Args {
    /// Disk counts to restart with, ascending.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    disks: Vec<usize>,
    /// Creates (and deletes) in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Timed lists at each count.
    #[arg(long, default_value_t = 5)]
    lists: usize,
    /// Caches of the image on the node.
    #[arg(long, default_value_t = 1)]
    caches: usize,
    /// `cargo bench` passes this to a bench without a harness.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A disk as created: its id and device, to compare with what the restart adopted.
struct Made {
    id: String,
    device: String,
    mountpoint: String,
}

fn main() {
    let args = Args::parse();
    assert!(
        !args.disks.is_empty() && args.disks.windows(2).all(|w| w[0] < w[1]),
        "--disks must be ascending counts"
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "restart needs root (loop devices, mounts)"
    );
    let most = *args.disks.last().unwrap();
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let image = feature_set(1).push_all(&addr, None).remove(0);
    let mut daemon = TestDaemon::start_with_config(
        &scratch.path().join("state"),
        &[&addr],
        &format!("max_loop_devices = {}\n", most + 64),
    );
    let cache_id = daemon.ready_cache_id("c", std::slice::from_ref(&image), "");
    let t = Instant::now();
    for n in 1..args.caches {
        let yaml = cache_yaml(&format!("c{n}"), std::slice::from_ref(&image), "");
        let out = daemon.create(&yaml, false);
        assert!(out.status.success(), "{}", daemon.log());
    }
    for n in 1..args.caches {
        daemon.wait_until(&format!("c{n}"), Duration::from_secs(600), |c| {
            c["status"]["phase"] == "Ready"
        });
    }
    if args.caches > 1 {
        eprintln!(
            "{} more caches built in {:.1} s",
            args.caches - 1,
            t.elapsed().as_secs_f64()
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = Client::new(&daemon.socket);

    let mut made: Vec<Made> = Vec::new();
    let mut rows = Vec::new();
    for &count in &args.disks {
        let t = Instant::now();
        let mut latencies = rt.block_on(create_many(
            &client,
            &image,
            &cache_id,
            count - made.len(),
            args.concurrency,
            &mut made,
        ));
        eprintln!(
            "{count} disks: created {} in {:.1} s",
            latencies.len(),
            t.elapsed().as_secs_f64()
        );
        latencies.sort_by(f64::total_cmp);
        let lists: Vec<f64> = (0..args.lists)
            .map(|_| {
                let t = Instant::now();
                let list = rt.block_on(client.get(DISKS)).expect("list disks");
                let ms = t.elapsed().as_secs_f64() * 1e3;
                let items: Value = list.json().unwrap();
                assert_eq!(items["items"].as_array().unwrap().len(), made.len());
                ms
            })
            .collect();

        daemon.kill9();
        let t = Instant::now();
        daemon.launch();
        let serving = rt.block_on(first_answer(&client, t));
        let (adopted, adopting_seen) = rt.block_on(all_adopted(&client, t));
        check_adopted(
            &rt.block_on(client.get(DISKS)).unwrap().json().unwrap(),
            &made,
        );
        eprintln!(
            "{count} disks: serving after {:.1} ms, every disk adopted after {:.1} ms \
             ({adopting_seen} read Adopting in the first list)",
            serving * 1e3,
            adopted * 1e3
        );
        rows.push(json!({
            "disks": count,
            "create_p50_ms": percentile(&latencies, 0.5),
            "create_p99_ms": percentile(&latencies, 0.99),
            "list_ms": median(&lists),
            "serving_ms": serving * 1e3,
            "adopted_ms": adopted * 1e3,
            "adopting_in_first_list": adopting_seen,
        }));
    }

    eprintln!();
    eprintln!(
        "{:>6} {:>12} {:>12} {:>10} {:>12} {:>12}",
        "disks", "create p50", "create p99", "list", "to serving", "to adopted"
    );
    for r in &rows {
        let ms = |k: &str| r[k].as_f64().unwrap();
        eprintln!(
            "{:>6} {:>9.2} ms {:>9.2} ms {:>7.2} ms {:>9.1} ms {:>9.1} ms",
            r["disks"],
            ms("create_p50_ms"),
            ms("create_p99_ms"),
            ms("list_ms"),
            ms("serving_ms"),
            ms("adopted_ms")
        );
    }
    let cache_lists: Vec<f64> = (0..args.lists)
        .map(|_| {
            let t = Instant::now();
            rt.block_on(client.get("/apis/imagecache.io/v1/imagecaches"))
                .expect("list caches");
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let mut matched = Vec::new();
    let auto = rt.block_on(create_many(
        &client,
        &image,
        "auto",
        args.lists,
        1,
        &mut matched,
    ));
    rt.block_on(delete_many(&client, &matched, 1));
    eprintln!(
        "{} caches: list {:.2} ms, a disk create matching among them p50 {:.2} ms",
        args.caches,
        median(&cache_lists),
        median(&auto)
    );
    println!(
        "RESTART_RESULT {}",
        json!({
            "caches": args.caches,
            "cache_list_ms": median(&cache_lists),
            "auto_match_create_ms": median(&auto),
            "restarts": rows,
        })
    );

    let t = Instant::now();
    rt.block_on(delete_many(&client, &made, args.concurrency));
    eprintln!(
        "{} disks deleted in {:.1} s",
        made.len(),
        t.elapsed().as_secs_f64()
    );
    let root = daemon.root.clone();
    daemon.stop();
    assert_no_leaks(&root);
    drop(registry);
}

async fn create_many(
    client: &Client,
    image: &str,
    cache_id: &str,
    n: usize,
    concurrency: usize,
    made: &mut Vec<Made>,
) -> Vec<f64> {
    let body = serde_json::to_vec(&json!({
        "apiVersion": "imagecache.io/v1",
        "kind": "Disk",
        "metadata": {},
        "spec": {"images": [image], "cacheId": cache_id},
    }))
    .unwrap();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, body, next) = (client.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let t = Instant::now();
                    let answer = client
                        .post(DISKS, body.clone(), "application/json")
                        .await
                        .expect("create disk");
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let disk: Value = answer.json().unwrap();
                    let status = &disk["status"];
                    assert_eq!(status["phase"], "Ready", "{disk:#}");
                    done.push((
                        Made {
                            id: disk["metadata"]["name"].as_str().unwrap().to_owned(),
                            device: status["device"].as_str().unwrap().to_owned(),
                            mountpoint: status["mountpoint"].as_str().unwrap().to_owned(),
                        },
                        ms,
                    ));
                }
                done
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        for (m, ms) in task.await.unwrap() {
            made.push(m);
            latencies.push(ms);
        }
    }
    latencies
}

async fn delete_many(client: &Client, made: &[Made], concurrency: usize) {
    let ids: Vec<String> = made.iter().map(|m| m.id.clone()).collect();
    let ids = std::sync::Arc::new(ids);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, ids, next) = (client.clone(), ids.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return };
                    client
                        .delete(&format!("{DISKS}/{id}"))
                        .await
                        .unwrap_or_else(|e| panic!("delete {id}: {e:#}"));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

/// Seconds from `start` to the first successful list.
async fn first_answer(client: &Client, start: Instant) -> f64 {
    loop {
        if client.get(DISKS).await.is_ok() {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < RESTART_DEADLINE,
            "the daemon did not answer within {RESTART_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Seconds from `start` to the first list in which no disk reads Adopting, and how many read
/// Adopting in the first list asked for.
async fn all_adopted(client: &Client, start: Instant) -> (f64, usize) {
    let mut first = None;
    loop {
        let list: Value = client.get(DISKS).await.unwrap().json().unwrap();
        let adopting = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["status"]["phase"] == "Adopting")
            .count();
        let first = *first.get_or_insert(adopting);
        if adopting == 0 {
            return (start.elapsed().as_secs_f64(), first);
        }
        assert!(
            start.elapsed() < RESTART_DEADLINE,
            "{adopting} disks were still Adopting after {RESTART_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every disk made is Ready on the device it was created on, and still mounted.
fn check_adopted(list: &Value, made: &[Made]) {
    let items: HashMap<&str, &Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["metadata"]["name"].as_str().unwrap(), &d["status"]))
        .collect();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounted: HashMap<&str, &str> = mounts
        .lines()
        .filter_map(|l| {
            let target = l.split(' ').nth(4)?;
            let source = l.split_once(" - ")?.1.split(' ').nth(1)?;
            Some((target, source))
        })
        .collect();
    for m in made {
        let status = items
            .get(m.id.as_str())
            .unwrap_or_else(|| panic!("{} is not listed", m.id));
        assert_eq!(status["phase"], "Ready", "{}: {status:#}", m.id);
        assert_eq!(status["device"], m.device.as_str(), "{}: {status:#}", m.id);
        assert_eq!(
            mounted.get(m.mountpoint.as_str()).copied(),
            Some(m.device.as_str()),
            "{} is not mounted at {} from {}",
            m.id,
            m.mountpoint,
            m.device
        );
    }
}
