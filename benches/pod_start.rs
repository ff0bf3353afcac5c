//! Pod start as the kubelet sees it: RunPodSandbox + PullImage + CreateContainer +
//! StartContainer, until the container's process has written its first line to its CRI log.
//! containerd 1.6 (Debian's) is driven over CRI; everything runs on 127.0.0.1, on a scratch
//! XFS filesystem.
//!
//! The image is the existing benchmark's debian-sized one (scripts/bench-vs-containerd.sh:
//! `gen-image --kind realistic --seed 1`, 4 layers, ~420 MB, gzip) with a busybox layer on
//! top, so its containers have a shell to run. The pod sandbox ("pause") image comes from the
//! same local registry and shares no blob with it.
//!
//! Cases, run side by side in each round (in the order below, then (w) and (b2) with expedited
//! grace periods, then the next round):
//!
//! - (a) `overlayfs`: containerd's own snapshotter, cold: every run starts a containerd on an
//!   empty state root, so both images are pulled and unpacked.
//! - (b) `cache`: containerd on imagecache's snapshotter, both images in a Ready cache built
//!   once before the runs (not timed). Every run starts a containerd on an empty state root
//!   too, so each PullImage is a real pull through the snapshotter; no layer blob may be
//!   fetched (checked).
//! - (c) `disk`: as (b), and the container is bound to a per-pod disk cloned from that cache
//!   (annotations `containerd.io/snapshot/imagecache.io/disk` and `…/disk-token`, the
//!   disk's bind token); the disk's create through the daemon's API is inside the time,
//!   before RunPodSandbox.
//! - (a2) `cold`: containerd on the snapshotter of a daemon that holds no cache: both pulls go
//!   through the daemon's cold path (an auto-created cache of each image, built, then every
//!   layer answered present). No layer blob may be fetched by containerd (checked, by
//!   User-Agent in the registry's access log); the daemon's caches are deleted after each run.
//! - (w) `warm`: containerd's overlayfs snapshotter with both images already pulled (not
//!   timed): a kubelet with `IfNotPresent` finds them present and starts the pod without a
//!   PullImage (none is timed).
//! - (b2) `published`: containerd on imagecache's snapshotter, both images in a cache made
//!   after containerd started (not timed) and published into containerd's image store: the
//!   pod starts as in (w), without a PullImage; containerd may send the registry nothing
//!   (checked).
//! - (a3) `shared`: as (a2) on a daemon whose `share_registry` holds snapshots of both
//!   auto-created caches (a builder daemon made them, before the runs, by the same cold
//!   pulls): the cold path imports them. Neither containerd nor the daemon may fetch a layer
//!   blob from the image registry (checked).
//!
//! The page cache is dropped before each timed run (after containerd has started), as in
//! scripts/bench-vs-containerd.sh; `--keep-page-cache` skips that. The node's runtime
//! (containerd, the runc shim, runc and their libraries) is then read back, as it is on any
//! node that runs pods, so the images are what comes from disk; `--cold-runtime` leaves it
//! out too.
//!
//! (w) and (b2) run `--published-runs` times (21), the others `--runs` times (3): those two
//! are compared with each other, ~1 ms apart.
//!
//! (w) and (b2) also run `--expedited-runs` times (9) with the kernel's RCU grace periods
//! expedited (`/sys/kernel/rcu_expedited` set to 1 for the timed part only, then put back;
//! a signal that kills the driver skips that, which scripts/bench-pod-start.sh makes good).
//! Every pod start waits for a grace period inside runc: its write to the new cgroup's
//! `cgroup.procs` takes `cgroup_threadgroup_rwsem`, whose writer waits in `synchronize_rcu`.
//! On this machine's kernel (250 Hz) that wait took 7-16 ms of a ~65 ms start, by where the
//! call landed against the grace periods under way; it made the whole gap between (w) and
//! (b2) in the two sets traced (one each way), and whole runs of the driver put (b2) at
//! 0.95-1.17x of (w). No imagecached thread waited for a grace period. Expedited, the pod
//! starts are ~10 ms shorter and their runs spread over a few ms instead of ~25, so these
//! runs compare the two with that wait all but taken out; the runs under the kernel's
//! default are reported beside them. docs/BENCHMARKS.md has the traces and the figures.
//!
//! Output: a table of medians (and every run) on standard output, per-step medians, and one
//! `POD_START_RESULT {json}` line that scripts/bench-pod-start.sh reads for its thresholds.
//!
//! Run: `bash scripts/bench-pod-start.sh [--check] [--runs N]` (root), or
//! `cargo bench --bench pod_start -- --runs N`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

#[path = "../tests/snapshotter_util/mod.rs"]
mod snapshotter_util;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use imagecache::api::{Disk, DiskPhase, DiskSpec, API_VERSION, KIND_DISK};
use imagecache::cli::Client;
use imagecache::sys::{LinuxSys, Sys};
use serde_json::json;

use snapshotter_util::{snapshot_names, wait_for};
use support::busybox::{busybox_layer, image_with_cmd, pause_image};
use support::containerd::{ContainerdOptions, TestContainerd};
use support::cri::{container_log, Cri};
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::realistic::{realistic_layers, REALISTIC_BYTES, REALISTIC_FILES};
use support::oci::{push_image, Compression, Image};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const DISKS: &str = "/apis/imagecache.io/v1/disks";
const DISK_LABEL: &str = "containerd.io/snapshot/imagecache.io/disk";
const DISK_TOKEN_LABEL: &str = "containerd.io/snapshot/imagecache.io/disk-token";
/// What the container prints first; its arrival in the CRI log ends the timed part.
const FIRST_LINE: &str = "ready";
/// A pod that has not printed by then is broken, not slow.
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(120);
/// containerd's garbage collector removes snapshots in the background after RemoveImage.
const GC_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Parser, Debug)]
#[command(about = "Pod start through CRI: overlayfs cold vs imagecache cache vs per-pod disk")]
struct Args {
    /// Timed runs of each case.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Timed runs of (w) and (b2) under the kernel's default grace periods, at least `--runs`:
    /// their medians are compared with each other (reported), ~1-3 ms apart at ~65 ms where
    /// runs spread over ~25 ms, so they get more runs than the others.
    #[arg(long, default_value_t = 21)]
    published_runs: usize,
    /// Timed runs of (w) and (b2) with the kernel's RCU grace periods expedited, besides their
    /// runs under the kernel's default (0: none; see the module's comment).
    #[arg(long, default_value_t = 9)]
    expedited_runs: usize,
    /// Leave the page cache alone between runs.
    #[arg(long)]
    keep_page_cache: bool,
    /// After dropping the page cache, leave the node's runtime (containerd, its shim, runc and
    /// their libraries) cold too, as on a node that has not run a pod since it booted.
    #[arg(long)]
    cold_runtime: bool,
    /// Uncompressed bytes of the generated image's 4 layers (smaller for a quick try).
    #[arg(long, default_value_t = REALISTIC_BYTES)]
    bytes: u64,
    /// Files in the generated image's 4 layers.
    #[arg(long, default_value_t = REALISTIC_FILES)]
    files: u64,
    /// Only these cases, by key (a, b, c, a2, a3, w, b2), comma-separated; (a) always runs,
    /// the others' ratios are to it.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// `cargo bench` passes this to a bench without a harness.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Overlayfs,
    Cache,
    Disk,
    Cold,
    Shared,
    Warm,
    Published,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::Overlayfs,
        Case::Cache,
        Case::Disk,
        Case::Cold,
        Case::Shared,
        Case::Warm,
        Case::Published,
    ];

    fn key(self) -> &'static str {
        match self {
            Case::Overlayfs => "a",
            Case::Cache => "b",
            Case::Disk => "c",
            Case::Cold => "a2",
            Case::Shared => "a3",
            Case::Warm => "w",
            Case::Published => "b2",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Case::Overlayfs => "(a) overlayfs, cold",
            Case::Cache => "(b) imagecache, Ready cache",
            Case::Disk => "(c) imagecache, per-pod disk",
            Case::Cold => "(a2) imagecache, cold pull",
            Case::Shared => "(a3) imagecache, cold pull, shared snapshot",
            Case::Warm => "(w) overlayfs, images present",
            Case::Published => "(b2) imagecache, published cache",
        }
    }

    /// The daemon whose snapshotter containerd uses, if any.
    fn daemon<'a>(self, env: &'a Env) -> Option<&'a TestDaemon> {
        match self {
            Case::Overlayfs | Case::Warm => None,
            Case::Cache | Case::Disk => Some(env.daemon),
            Case::Cold => Some(env.cold),
            Case::Shared => Some(env.shared),
            Case::Published => Some(env.publisher),
        }
    }

    /// Whether the images are in containerd before the timed part, so no PullImage is timed.
    fn present(self) -> bool {
        matches!(self, Case::Warm | Case::Published)
    }

    /// containerd's directory for run `run`: one fixed path for (b2), whose daemon is
    /// configured with its socket.
    fn containerd_dir(self, scratch: &Path, run: usize) -> PathBuf {
        match self {
            Case::Published => scratch.join("cd-b2"),
            _ => scratch.join(format!("cd-{}{run}", self.key())),
        }
    }
}

/// The timed runs of one case, under the kernel's default grace periods or expedited ones.
struct Series {
    case: Case,
    expedited: bool,
    steps: Vec<Steps>,
}

impl Series {
    fn key(&self) -> String {
        if self.expedited {
            format!("{}-expedited", self.case.key())
        } else {
            self.case.key().into()
        }
    }

    fn title(&self) -> String {
        if self.expedited {
            format!("{}, RCU expedited", self.case.title())
        } else {
            self.case.title().into()
        }
    }
}

const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

/// The kernel's RCU grace periods expedited until this is dropped, then as they were (a
/// signal that kills the process skips that).
struct ExpeditedGracePeriods {
    before: String,
}

impl ExpeditedGracePeriods {
    /// The setting as it is; panics, saying so, when it cannot be read or written back (not
    /// root, or sysfs read-only), so a run finds out before its first timed part.
    fn current() -> String {
        let value = std::fs::read_to_string(RCU_EXPEDITED)
            .unwrap_or_else(|e| panic!("read {RCU_EXPEDITED}: {e}; --expedited-runs 0 runs none"));
        let value = value.trim().to_string();
        std::fs::write(RCU_EXPEDITED, &value)
            .unwrap_or_else(|e| panic!("write {RCU_EXPEDITED}: {e}; --expedited-runs 0 runs none"));
        value
    }

    /// Expedited; `current` has shown the setting can be written.
    fn on() -> Self {
        let before = std::fs::read_to_string(RCU_EXPEDITED)
            .unwrap_or_else(|e| panic!("read {RCU_EXPEDITED}: {e}"))
            .trim()
            .to_string();
        std::fs::write(RCU_EXPEDITED, "1")
            .unwrap_or_else(|e| panic!("write 1 to {RCU_EXPEDITED}: {e}"));
        ExpeditedGracePeriods { before }
    }
}

impl Drop for ExpeditedGracePeriods {
    fn drop(&mut self) {
        // Left at 1, every later run under the "default" would be expedited too.
        if let Err(e) = std::fs::write(RCU_EXPEDITED, &self.before) {
            if !std::thread::panicking() {
                panic!("put {} back into {RCU_EXPEDITED}: {e}", self.before);
            }
        }
    }
}

/// One timed pod start, step by step.
#[derive(Clone, Debug, Default)]
struct Steps {
    disk: Duration,
    sandbox: Duration,
    pull: Duration,
    create: Duration,
    start: Duration,
    first_line: Duration,
    total: Duration,
    /// The daemon's own clone / grow / attach / mount time of the disk, ms.
    disk_daemon: Option<[f64; 4]>,
    /// Layer blobs containerd downloaded.
    layer_blobs_fetched: usize,
    /// Layer blobs the daemon downloaded (its cold pulls).
    daemon_layer_blobs: usize,
    /// The node's (every process's) major page faults, and KiB read from its disks and
    /// through loop devices, during RunPodSandbox and during the whole pod start: with the
    /// page cache dropped, what each case reads back from disk.
    sandbox_io: NodeIo,
    io: NodeIo,
}

/// Counters of /proc/vmstat and /proc/diskstats, or their difference over a step.
#[derive(Debug, Default, Clone, Copy)]
struct NodeIo {
    major_faults: u64,
    /// Read from the node's disks (what a loop device reads lands here too).
    disk_read_kib: u64,
    /// Read through loop devices (a cache image's filesystem).
    loop_read_kib: u64,
    /// Read requests completed by the disks, and the ms they spent on them (summed over
    /// requests, so overlapping ones count twice).
    disk_reads: u64,
    disk_read_ms: u64,
    /// The same for loop devices.
    loop_reads: u64,
    loop_read_ms: u64,
}

impl NodeIo {
    fn now() -> Self {
        let vmstat = std::fs::read_to_string("/proc/vmstat").expect("read /proc/vmstat");
        let counter = |name: &str| {
            vmstat
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("/proc/vmstat has no {name}"))
        };
        let (mut disk, mut through_loops) = ([0u64; 3], [0u64; 3]);
        let diskstats = std::fs::read_to_string("/proc/diskstats").expect("read /proc/diskstats");
        for line in diskstats.lines() {
            // major minor name reads merged sectors-read ms-reading ...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(name) = fields.get(2) else {
                continue;
            };
            let field =
                |i: usize| -> u64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
            let read = [field(3), field(5), field(6)];
            let into = if name.starts_with("loop") {
                &mut through_loops
            } else if std::path::Path::new("/sys/block").join(name).exists() {
                // Whole disks only: a partition's reads are its disk's too.
                &mut disk
            } else {
                continue;
            };
            for (sum, v) in into.iter_mut().zip(read) {
                *sum += v;
            }
        }
        NodeIo {
            major_faults: counter("pgmajfault"),
            disk_read_kib: disk[1] / 2,
            loop_read_kib: through_loops[1] / 2,
            disk_reads: disk[0],
            disk_read_ms: disk[2],
            loop_reads: through_loops[0],
            loop_read_ms: through_loops[2],
        }
    }

    fn since(self, start: NodeIo) -> NodeIo {
        NodeIo {
            major_faults: self.major_faults - start.major_faults,
            disk_read_kib: self.disk_read_kib - start.disk_read_kib,
            loop_read_kib: self.loop_read_kib - start.loop_read_kib,
            disk_reads: self.disk_reads - start.disk_reads,
            disk_read_ms: self.disk_read_ms - start.disk_read_ms,
            loop_reads: self.loop_reads - start.loop_reads,
            loop_read_ms: self.loop_read_ms - start.loop_read_ms,
        }
    }
}

impl std::fmt::Display for NodeIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} major faults, {} KiB read from disk in {} requests, {} ms ({} KiB through loop devices in {} requests, {} ms)",
            self.major_faults,
            self.disk_read_kib,
            self.disk_reads,
            self.disk_read_ms,
            self.loop_read_kib,
            self.loop_reads,
            self.loop_read_ms
        )
    }
}

/// What every run shares.
struct Env<'a> {
    registry: &'a TestRegistry,
    daemon: &'a TestDaemon,
    /// (a2): no cache, no share registry.
    cold: &'a TestDaemon,
    /// (a3): no cache, a share registry holding both images' snapshots.
    shared: &'a TestDaemon,
    /// (b2): publishes its caches into (b2)'s containerd.
    publisher: &'a TestDaemon,
    scratch: &'a Path,
    app_ref: String,
    pause_ref: String,
    /// Layer blobs of both images: any of them in the registry's access log is a download.
    layer_digests: HashSet<String>,
    drop_page_cache: bool,
    /// The runtime's own files read back after each drop (empty with `--cold-runtime`).
    runtime_files: Vec<PathBuf>,
    rt: tokio::runtime::Runtime,
    api: Client,
}

impl Args {
    fn runs_of(&self, case: Case, expedited: bool) -> usize {
        if expedited {
            self.expedited_runs
        } else if case.present() {
            self.runs.max(self.published_runs)
        } else {
            self.runs
        }
    }
}

fn main() {
    let args = Args::parse();
    assert!(args.runs > 0, "--runs must be at least 1");
    assert!(
        rustix::process::geteuid().is_root(),
        "pod_start needs root (containerd, loop devices, mounts)"
    );

    let wanted = |c: &Case| {
        *c == Case::Overlayfs || args.cases.is_empty() || args.cases.iter().any(|k| k == c.key())
    };
    let series_of = |expedited: bool| {
        Case::ALL
            .into_iter()
            .filter(move |c| wanted(c) && (!expedited || c.present()))
            .map(move |case| Series {
                case,
                expedited,
                steps: vec![],
            })
    };
    let mut results: Vec<Series> = series_of(false).collect();
    if args.expedited_runs > 0 {
        results.extend(series_of(true));
    }
    // As the kernel has it, which the runs "under the default" run with; read (and written
    // back) before anything is set up, so a node where it cannot be set fails at once.
    let rcu_expedited_at_start = results
        .iter()
        .any(|s| s.expedited)
        .then(ExpeditedGracePeriods::current);

    // Dropped last: everything else lives on it.
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();

    let t = Instant::now();
    let pause = pause_image();
    let app = app_image(args.bytes, args.files);
    push_image(&addr, "pause", "v1", &pause, None);
    push_image(&addr, "bench/app", "v1", &app, None);
    eprintln!(
        "images generated and pushed in {:.1} s: app {} layers, {:.1} MB ({:.1} MB compressed); pause {:.1} MB",
        t.elapsed().as_secs_f64(),
        app.layers.len(),
        app.uncompressed_size() as f64 / 1e6,
        app.compressed_size() as f64 / 1e6,
        pause.uncompressed_size() as f64 / 1e6,
    );
    let app_ref = format!("{addr}/bench/app:v1");
    let pause_ref = format!("{addr}/pause:v1");

    let daemon = TestDaemon::start(&scratch.path().join("state"), &[&addr]);
    let t = Instant::now();
    let out = daemon.create(
        &cache_yaml("pod-start", &[pause_ref.clone(), app_ref.clone()], ""),
        true,
    );
    assert!(
        out.status.success(),
        "cache build failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    eprintln!(
        "cache of both images Ready in {:.2} s (not timed)",
        t.elapsed().as_secs_f64()
    );

    let cold = TestDaemon::start(&scratch.path().join("state-cold"), &[&addr]);
    let share = TestRegistry::start();
    let share_repo = format!("{}/imagecache/snapshots", share.addr());
    let registries = [addr.as_str(), &share.addr()];
    let t = Instant::now();
    share_both_images(
        &scratch.path().join("state-builder"),
        &registries,
        &share_repo,
        &registry,
        &pause_ref,
        &app_ref,
    );
    eprintln!(
        "snapshots of both images shared in {:.2} s (not timed)",
        t.elapsed().as_secs_f64()
    );
    let shared = TestDaemon::start_sharing(
        &scratch.path().join("state-shared"),
        &registries,
        &share_repo,
    );

    let publisher = publishing_daemon(
        &scratch.path().join("state-pub"),
        &addr,
        &Case::Published.containerd_dir(scratch.path(), 0),
    );

    let env = Env {
        registry: &registry,
        daemon: &daemon,
        cold: &cold,
        shared: &shared,
        publisher: &publisher,
        scratch: scratch.path(),
        app_ref,
        pause_ref,
        layer_digests: app
            .layers
            .iter()
            .chain(&pause.layers)
            .map(|l| l.digest.clone())
            .collect(),
        drop_page_cache: !args.keep_page_cache,
        runtime_files: if args.cold_runtime {
            vec![]
        } else {
            node_runtime_files()
        },
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        api: Client::new(&daemon.socket),
    };

    let rounds = args.runs.max(args.published_runs).max(args.expedited_runs);
    for run in 1..=rounds {
        for series in results.iter_mut() {
            if run > args.runs_of(series.case, series.expedited) {
                continue;
            }
            let s = pod_start(&env, series.case, run, series.expedited);
            eprintln!(
                "run {run} {}: total {} (disk {}, RunPodSandbox {}, PullImage {}, CreateContainer {}, StartContainer {}, first line {}), layer blobs fetched {}; {} ({} in RunPodSandbox)",
                series.title(),
                ms(s.total),
                ms(s.disk),
                ms(s.sandbox),
                ms(s.pull),
                ms(s.create),
                ms(s.start),
                ms(s.first_line),
                s.layer_blobs_fetched,
                s.io,
                s.sandbox_io
            );
            series.steps.push(s);
        }
    }
    report(&results, &args, rcu_expedited_at_start.as_deref());

    drop(env);
    for d in [daemon, cold, shared, publisher] {
        let state = d.root.clone();
        drop(d);
        assert_no_leaks(&state);
    }
    drop(share);
    // Every containerd's directory went with its run; nothing may be mounted on the scratch
    // filesystem but itself.
    let left: Vec<_> = LinuxSys
        .mounts_under(scratch.path())
        .expect("mountinfo")
        .into_iter()
        .filter(|m| m != scratch.path())
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    drop(registry);
}

/// A builder node: a daemon sharing through `share_repo` whose own cold pulls of both images
/// (through a containerd of its own) make the auto-created caches the (a3) node then finds,
/// and push them. Returns once both are pushed; everything it made is gone.
fn share_both_images(
    root: &Path,
    registries: &[&str],
    share_repo: &str,
    registry: &TestRegistry,
    pause_ref: &str,
    app_ref: &str,
) {
    let builder = TestDaemon::start_sharing(root, registries, share_repo);
    let dir = root.with_file_name("cd-builder");
    {
        let containerd = TestContainerd::start(
            &dir,
            &ContainerdOptions {
                registry: registry.addr(),
                sandbox_image: pause_ref.to_owned(),
                proxy_snapshotter: Some(builder.snapshotter_socket()),
            },
        );
        let cri = containerd.cri();
        cri.pull_image(pause_ref);
        cri.pull_image(app_ref);
        cri.remove_image(app_ref);
        cri.remove_image(pause_ref);
        wait_for("containerd to remove every snapshot", GC_TIMEOUT, || {
            snapshot_names(&containerd).is_empty()
        });
    }
    std::fs::remove_dir_all(&dir).expect("remove containerd's state");
    let names = builder.list_names();
    assert_eq!(
        names.len(),
        2,
        "one auto-created cache per image: {names:?}"
    );
    for name in &names {
        let cache = builder.wait_until(name, Duration::from_secs(300), |c| {
            c["status"]["events"].as_array().is_some_and(|e| {
                e.iter()
                    .any(|e| e["reason"] == "Pushed" || e["reason"] == "PushFailed")
            })
        });
        assert!(
            cache["status"]["sharedAs"].is_string(),
            "{name} was not pushed: {cache:#}"
        );
    }
    let state = builder.root.clone();
    drop(builder);
    assert_no_leaks(&state);
}

/// A daemon that publishes its Ready caches into the containerd whose directory is `dir`.
fn publishing_daemon(root: &Path, registry: &str, dir: &Path) -> TestDaemon {
    TestDaemon::start_with_config(
        root,
        &[registry],
        &format!("containerd_socket = {:?}", dir.join("containerd.sock")),
    )
}

/// Before a timed run of a case whose images are present: (w) pulls them through CRI,
/// (b2) makes a cache of them and waits until it is published.
fn make_present(env: &Env, case: Case, cri: &Cri) {
    match case {
        Case::Warm => {
            cri.pull_image(&env.pause_ref);
            cri.pull_image(&env.app_ref);
        }
        Case::Published => {
            let out = env.publisher.create(
                &cache_yaml(
                    "published",
                    &[env.pause_ref.clone(), env.app_ref.clone()],
                    "",
                ),
                true,
            );
            assert!(out.status.success(), "{}", env.publisher.log());
            let cache = env
                .publisher
                .wait_until("published", Duration::from_secs(60), |c| {
                    c["status"]["events"].as_array().is_some_and(|e| {
                        e.iter()
                            .any(|e| e["reason"] == "Published" || e["reason"] == "PublishFailed")
                    })
                });
            let events = cache["status"]["events"].to_string();
            assert!(events.contains("\"Published\""), "{events}");
            wait_for("CRI to list both images", GC_TIMEOUT, || {
                let tags: Vec<String> = cri
                    .list_images()
                    .into_iter()
                    .flat_map(|i| i.repo_tags)
                    .collect();
                tags.contains(&env.app_ref) && tags.contains(&env.pause_ref)
            });
        }
        _ => {}
    }
}

/// After a cold-pull run: every cache the daemon made for it deleted, so the next run is as
/// cold as this one (the snapshots go with their last cache).
fn forget_caches(daemon: &TestDaemon) {
    for name in daemon.list_names() {
        daemon.cli_ok(&["delete", &name]);
    }
}

/// The existing benchmark's 4 layers with a busybox layer on top. The busybox layer carries a
/// file of its own, so its blob differs from the pause image's: nothing the sandbox pulled
/// spares the app's pull any work.
fn app_image(bytes: u64, files: u64) -> Image {
    let mut layers = realistic_layers(1, Compression::Gzip, bytes, files);
    let mut tools = busybox_layer();
    tools.file("etc/pod-start", "the pod start benchmark's image\n");
    layers.push(tools.to_layer());
    image_with_cmd(layers, &["/bin/sh"])
}

/// One pod start of `case` on a containerd with an empty state root, with the kernel's RCU
/// grace periods `expedited` or not; tears everything down (outside the timed part) so the
/// next run starts as cold as this one.
fn pod_start(env: &Env, case: Case, run: usize, expedited: bool) -> Steps {
    // Short: containerd's sockets live in this directory, and unix socket paths are short.
    let dir = case.containerd_dir(env.scratch, run);
    let containerd = TestContainerd::start(
        &dir,
        &ContainerdOptions {
            registry: env.registry.addr(),
            sandbox_image: env.pause_ref.clone(),
            proxy_snapshotter: case.daemon(env).map(TestDaemon::snapshotter_socket),
        },
    );
    let cri = containerd.cri();
    let name = format!("bench-{}{run}", case.key());
    let pod_config = cri.pod_config(&name, &format!("uid-{name}"), "default");
    let log_path = "app/0.log";
    let log = Cri::log_file(&pod_config, log_path);
    if case.present() {
        make_present(env, case, &cri);
    }
    if env.drop_page_cache {
        drop_page_cache();
        warm(&env.runtime_files);
    }

    let grace = expedited.then(ExpeditedGracePeriods::on);
    let mut s = Steps::default();
    let mark = env.registry.log_mark();
    let io_at_start = NodeIo::now();
    let t0 = Instant::now();
    let disk = (case == Case::Disk).then(|| {
        let (disk, daemon_ms) = create_disk(env);
        s.disk_daemon = Some(daemon_ms);
        disk
    });
    let t = lap(t0, &mut s.disk);
    let io_before_sandbox = NodeIo::now();
    let pod = cri.run_pod_sandbox_with(&pod_config);
    let t = lap(t, &mut s.sandbox);
    s.sandbox_io = NodeIo::now().since(io_before_sandbox);
    // A kubelet with IfNotPresent pulls only what containerd does not have.
    if !case.present() {
        cri.pull_image(&env.app_ref);
    }
    let t = lap(t, &mut s.pull);
    let annotations: Vec<(&str, &str)> = match &disk {
        Some(disk) => vec![
            (DISK_LABEL, disk.id.as_str()),
            (DISK_TOKEN_LABEL, disk.bind_token.as_str()),
        ],
        None => vec![],
    };
    let id = cri.create_container(
        &pod,
        &pod_config,
        "app",
        &env.app_ref,
        &[
            "/bin/sh",
            "-c",
            &format!("echo {FIRST_LINE}; exec sleep 600"),
        ],
        &[],
        &annotations,
        log_path,
    );
    let t = lap(t, &mut s.create);
    cri.start_container(&id);
    let t = lap(t, &mut s.start);
    let line = first_line(&log);
    lap(t, &mut s.first_line);
    s.total = t0.elapsed();
    drop(grace);
    s.io = NodeIo::now().since(io_at_start);
    assert_eq!(line, FIRST_LINE, "the container's first line");
    let fetched = env.registry.blobs_fetched_by_since(mark);
    let layers_by = |agent: &str| {
        fetched
            .iter()
            .filter(|(d, who)| env.layer_digests.contains(d) && who.starts_with(agent))
            .count()
    };
    s.layer_blobs_fetched = layers_by("containerd/");
    s.daemon_layer_blobs = layers_by("imagecache/");
    if let (true, Some(d)) = (
        std::env::var_os("POD_START_LOG").is_some(),
        case.daemon(env),
    ) {
        eprintln!("--- {} daemon log ---\n{}", case.title(), d.log());
    }
    if case == Case::Published {
        let asked: Vec<_> = env
            .registry
            .requests_since(mark)
            .into_iter()
            .filter(|(_, path, _)| path != "/v2/")
            .collect();
        assert!(
            asked.is_empty(),
            "(b2): containerd asked the registry: {asked:?}"
        );
    }
    match case {
        // The positive control: the access log read this way sees containerd's downloads.
        Case::Overlayfs => assert_eq!(
            s.layer_blobs_fetched,
            env.layer_digests.len(),
            "(a) fetches every layer of both images: {fetched:?}"
        ),
        // (w) pulled its images before the timed part.
        _ => assert_eq!(
            s.layer_blobs_fetched,
            0,
            "{}: containerd downloaded layer blobs, so the snapshotter did not serve them",
            case.title()
        ),
    }
    match case {
        Case::Cold => assert_eq!(
            s.daemon_layer_blobs,
            env.layer_digests.len(),
            "(a2): the daemon pulls every layer of both images"
        ),
        Case::Cache | Case::Disk | Case::Shared | Case::Published => assert_eq!(
            s.daemon_layer_blobs,
            0,
            "{}: the daemon downloaded layer blobs",
            case.title()
        ),
        Case::Overlayfs | Case::Warm => {}
    }

    cri.stop_pod_sandbox(&pod);
    cri.remove_pod_sandbox(&pod);
    if let Some(daemon) = case.daemon(env) {
        // The snapshotter's state outlives this containerd: leave it empty for the next one.
        cri.remove_image(&env.app_ref);
        cri.remove_image(&env.pause_ref);
        wait_for("containerd to remove every snapshot", GC_TIMEOUT, || {
            snapshot_names(&containerd).is_empty()
        });
        if matches!(case, Case::Cold | Case::Shared | Case::Published) {
            forget_caches(daemon);
        }
    }
    if let Some(BenchDisk { id, root, .. }) = disk {
        wait_for(
            "the container's directory on the disk to go",
            GC_TIMEOUT,
            || {
                std::fs::read_dir(root.join("containers"))
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true)
            },
        );
        env.rt
            .block_on(env.api.delete(&format!("{DISKS}/{id}")))
            .expect("delete disk");
    }
    drop(cri);
    drop(containerd);
    std::fs::remove_dir_all(&dir).expect("remove containerd's state");
    s
}

/// Adds the time since `since` to `into`; now.
fn lap(since: Instant, into: &mut Duration) -> Instant {
    let now = Instant::now();
    *into = now - since;
    now
}

/// A disk the bench made, and what its pod needs to run on it.
struct BenchDisk {
    id: String,
    root: PathBuf,
    bind_token: String,
}

/// A disk for the app image from whichever cache holds it, through the daemon's API (what a
/// node agent calls before the pod starts), and the daemon's own clone / grow / attach /
/// mount milliseconds.
fn create_disk(env: &Env) -> (BenchDisk, [f64; 4]) {
    let disk = Disk {
        api_version: API_VERSION.into(),
        kind: KIND_DISK.into(),
        metadata: Default::default(),
        spec: DiskSpec {
            images: vec![env.app_ref.clone()],
            ..Default::default()
        },
        status: None,
    };
    let answer = env
        .rt
        .block_on(env.api.post(
            DISKS,
            serde_json::to_vec(&disk).unwrap(),
            "application/json",
        ))
        .expect("create disk");
    let created: Disk = answer.json().unwrap();
    let status = created.status.expect("a created disk has a status");
    assert!(
        status.phase == DiskPhase::Ready && status.cache_id.is_some(),
        "the disk was not cloned from the cache: {status:?}"
    );
    let t = &status.timings;
    (
        BenchDisk {
            id: created.metadata.name,
            root: PathBuf::from(status.mountpoint.clone().expect("a mounted disk")),
            bind_token: status
                .bind_token
                .clone()
                .expect("a disk's create answers its bind token")
                .0,
        },
        [t.clone_ms, t.grow_ms, t.attach_ms, t.mount_ms],
    )
}

/// Waits for the first full line of the container's CRI log; polled every 2 ms (the pod
/// starts take 100s of ms at the least).
fn first_line(log: &Path) -> String {
    let deadline = Instant::now() + FIRST_LINE_TIMEOUT;
    loop {
        if let Some(line) = container_log(log).into_iter().next() {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no line in {} within {FIRST_LINE_TIMEOUT:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Writes dirty pages out, then drops clean ones: reads during the run come from the disk.
fn drop_page_cache() {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop the page cache");
}

/// The files every pod start on a node runs, whatever its image: containerd, the runc shim,
/// runc and the libraries they link. A node that runs pods has them in its page cache; a
/// run that read them back from disk (~33 MB here, at a time per request that varies from run
/// to run) would measure the node's disk more than where the image comes from.
fn node_runtime_files() -> Vec<PathBuf> {
    let mut files = vec![];
    for program in ["containerd", "containerd-shim-runc-v2", "runc"] {
        let path = which(program);
        let out = std::process::Command::new("ldd")
            .arg(&path)
            .output()
            .expect("run ldd");
        assert!(out.status.success(), "ldd {}", path.display());
        files.push(path);
        // Lines are "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; the vDSO has no file.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line.split("=>").last().unwrap_or("").trim();
            if let Some(path) = lib.split_whitespace().next().filter(|p| p.starts_with('/')) {
                files.push(PathBuf::from(path));
            }
        }
    }
    files.sort();
    files.dedup();
    files
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// Reads each file whole, so the run finds it in the page cache.
fn warm(files: &[PathBuf]) {
    for file in files {
        std::fs::read(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn med(steps: &[Steps], f: impl Fn(&Steps) -> f64) -> f64 {
    median(steps.iter().map(f).collect())
}

fn runs(steps: &[Steps], f: impl Fn(&Steps) -> f64) -> String {
    steps
        .iter()
        .map(|s| format!("{:.3}", f(s)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn report(results: &[Series], args: &Args, rcu_expedited_at_start: Option<&str>) {
    let total = |s: &Steps| secs(s.total);
    let pull = |s: &Steps| secs(s.pull);

    println!();
    let expedited = if results.iter().any(|s| s.expedited) {
        format!(
            ", and {} more of each with RCU grace periods expedited ({RCU_EXPEDITED} was {} otherwise)",
            args.expedited_runs,
            rcu_expedited_at_start.unwrap_or("?")
        )
    } else {
        String::new()
    };
    println!(
        "Pod start through CRI, {} runs per case ({} of (w) and (b2){expedited}), medians (every run in brackets), seconds; page cache {}",
        args.runs,
        args.runs_of(Case::Published, false),
        if args.keep_page_cache {
            "kept"
        } else if args.cold_runtime {
            "dropped before each run"
        } else {
            "dropped before each run, then the node's runtime (containerd, shim, runc) read back"
        }
    );
    println!("| case | pod start | PullImage |");
    println!("|---|---|---|");
    for series in results {
        let steps = &series.steps;
        println!(
            "| {} | {:.3} ({}) | {:.3} ({}) |",
            series.title(),
            med(steps, total),
            runs(steps, total),
            med(steps, pull),
            runs(steps, pull)
        );
    }
    println!();
    println!("Per step, medians, ms:");
    println!("| case | disk create | RunPodSandbox | PullImage | CreateContainer | StartContainer | first line | total |");
    println!("|---|---|---|---|---|---|---|---|");
    let in_ms = |d: Duration| d.as_secs_f64() * 1e3;
    for series in results {
        let steps = &series.steps;
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            series.title(),
            med(steps, |s| in_ms(s.disk)),
            med(steps, |s| in_ms(s.sandbox)),
            med(steps, |s| in_ms(s.pull)),
            med(steps, |s| in_ms(s.create)),
            med(steps, |s| in_ms(s.start)),
            med(steps, |s| in_ms(s.first_line)),
            med(steps, |s| in_ms(s.total)),
        );
    }
    let of = |case: Case, expedited: bool| {
        results
            .iter()
            .find(|s| s.case == case && s.expedited == expedited)
    };
    if let Some(disk) = of(Case::Disk, false) {
        let part = |i: usize| {
            med(&disk.steps, move |s| {
                s.disk_daemon.map_or(f64::NAN, |d| d[i])
            })
        };
        println!(
            "Disk create, daemon's own steps, medians: clone {:.2} ms, grow {:.2} ms, attach {:.2} ms, mount {:.2} ms",
            part(0),
            part(1),
            part(2),
            part(3)
        );
    }

    let a = &results[0].steps;
    let ratio = |steps: &[Steps], f: fn(&Steps) -> f64| med(steps, f) / med(a, f);
    println!();
    // Against (a), which runs under the kernel's default only.
    for series in results[1..].iter().filter(|s| !s.expedited) {
        println!(
            "{}: pod start {:.3}× of (a), PullImage {:.3}× of (a)'s",
            series.title(),
            ratio(&series.steps, total),
            ratio(&series.steps, pull)
        );
    }
    for expedited in [false, true] {
        if let (Some(w), Some(b2)) = (of(Case::Warm, expedited), of(Case::Published, expedited)) {
            println!(
                "{}: pod start {:.3}× of (w)'s",
                b2.title(),
                med(&b2.steps, total) / med(&w.steps, total)
            );
        }
    }

    let mut cases = serde_json::Map::new();
    for series in results {
        let steps = &series.steps;
        let list = |f: fn(&Steps) -> f64| steps.iter().map(f).collect::<Vec<_>>();
        cases.insert(
            series.key(),
            json!({
                "title": series.title(),
                "total": med(steps, total),
                "pull": med(steps, pull),
                "total_runs": list(total),
                "pull_runs": list(pull),
                "layer_blobs_fetched": steps.iter().map(|s| s.layer_blobs_fetched).collect::<Vec<_>>(),
                "daemon_layer_blobs": steps.iter().map(|s| s.daemon_layer_blobs).collect::<Vec<_>>(),
            }),
        );
    }
    println!(
        "POD_START_RESULT {}",
        json!({
            "runs": args.runs,
            "published_runs": args.runs_of(Case::Published, false),
            "expedited_runs": args.expedited_runs,
            "rcu_expedited_at_start": rcu_expedited_at_start,
            "page_cache_dropped": !args.keep_page_cache,
            "runtime_warm": !args.cold_runtime,
            "cases": cases
        })
    );
}
