//! What the daemon has done and holds, for `GET /metrics` in the Prometheus text format.
//!
//! Counters and histograms are moved where the work happens; what the daemon holds (caches
//! and disks by phase, snapshots, loop devices) is read from the store and the kernel when
//! scraped, so it can never drift from the truth.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::Daemon;
use crate::objects::{DiskPhase, Phase};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's template (`/apis/imagecache.io/v1/disks/{id}`), never the raw path: names
    /// in paths would make a series per object.
    pub route: String,
    pub method: String,
    pub code: u16,
}

pub struct Metrics {
    registry: Registry,
    pub pulled_bytes: Counter,
    pub layers_unpacked: Counter,
    pub credentials_refused: Counter,
    /// Cold pulls through the snapshotter by how they ended (daemon/ctr_snapshots/cold_pull.rs).
    snapshotter_pulls: Family<KindLabel, Counter>,
    /// Shared snapshots (daemon/share): chunks and compressed bytes uploaded, fetched, and
    /// chunks taken from a local snapshot instead of fetched.
    pub share_pushed_chunks: Counter,
    pub share_pushed_bytes: Counter,
    pub share_fetched_chunks: Counter,
    pub share_fetched_bytes: Counter,
    pub share_reused_chunks: Counter,
    pub share_push_seconds: Histogram,
    pub share_import_seconds: Histogram,
    pub build_seconds: Histogram,
    pub disk_ready_seconds: Histogram,
    pub errors: Family<KindLabel, Counter>,
    pub api_requests: Family<RequestLabels, Counter>,
    caches: Family<PhaseLabel, Gauge>,
    disks: Family<PhaseLabel, Gauge>,
    snapshots: Gauge,
    loop_devices: Gauge,
    /// One scrape at a time: each sets the gauges, then encodes them.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("imagecache"),
            pulled_bytes: Counter::default(),
            layers_unpacked: Counter::default(),
            credentials_refused: Counter::default(),
            snapshotter_pulls: Family::default(),
            share_pushed_chunks: Counter::default(),
            share_pushed_bytes: Counter::default(),
            share_fetched_chunks: Counter::default(),
            share_fetched_bytes: Counter::default(),
            share_reused_chunks: Counter::default(),
            // 0.1 s to ~27 min: a push or an import takes about what a build does.
            share_push_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 15)),
            share_import_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 15)),
            // 0.25 s to ~68 min: builds take seconds to tens of minutes.
            build_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 15)),
            // 0.5 ms to ~16 s: a clone is milliseconds, a first grow or a busy node more.
            disk_ready_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            errors: Family::default(),
            api_requests: Family::default(),
            caches: Family::default(),
            disks: Family::default(),
            snapshots: Gauge::default(),
            loop_devices: Gauge::default(),
            scrape: Mutex::new(()),
        };
        m.registry.register(
            "pulled_bytes",
            "Bytes of layer blobs downloaded from registries",
            m.pulled_bytes.clone(),
        );
        m.registry.register(
            "layers_unpacked",
            "Layers unpacked into caches and disks",
            m.layers_unpacked.clone(),
        );
        m.registry.register(
            "credentials_refused",
            "Cached images not served (disk clones, snapshotter layers) because the request's credentials could not read them",
            m.credentials_refused.clone(),
        );
        m.registry.register(
            "snapshotter_pulls",
            "CRI pulls of images no cache held, by how they ended: cached (containerd fetched no layer) or fallback_<reason> (containerd pulled the image itself)",
            m.snapshotter_pulls.clone(),
        );
        for (name, help, counter) in [
            ("share_pushed_chunks", "Snapshot chunks uploaded to share_registry", &m.share_pushed_chunks),
            ("share_pushed_bytes", "Compressed bytes of snapshot chunks uploaded to share_registry", &m.share_pushed_bytes),
            ("share_fetched_chunks", "Snapshot chunks fetched from share_registry", &m.share_fetched_chunks),
            ("share_fetched_bytes", "Compressed bytes of snapshot chunks fetched from share_registry", &m.share_fetched_bytes),
            ("share_reused_chunks", "Snapshot chunks an import took from a snapshot on this node instead of fetching them", &m.share_reused_chunks),
        ] {
            m.registry.register(name, help, counter.clone());
        }
        m.registry.register(
            "share_push_duration_seconds",
            "Time to push a Ready cache's snapshot to share_registry",
            m.share_push_seconds.clone(),
        );
        m.registry.register(
            "share_import_duration_seconds",
            "Time to import a shared snapshot, from the lookup to the commit",
            m.share_import_seconds.clone(),
        );
        m.registry.register(
            "build_duration_seconds",
            "Time from a cache's creation to Ready",
            m.build_seconds.clone(),
        );
        m.registry.register(
            "disk_ready_seconds",
            "Time to make a per-pod disk: clone, grow, attach, mount",
            m.disk_ready_seconds.clone(),
        );
        m.registry.register(
            "errors",
            "Failures by kind: a cache build's reason, disk_create, or store_write (a state change not recorded)",
            m.errors.clone(),
        );
        m.registry.register(
            "api_requests",
            "API requests by route, method and status code",
            m.api_requests.clone(),
        );
        m.registry
            .register("caches", "Image caches by phase", m.caches.clone());
        m.registry
            .register("disks", "Per-pod disks by phase", m.disks.clone());
        m.registry.register(
            "snapshots",
            "Frozen snapshots in the store",
            m.snapshots.clone(),
        );
        m.registry.register(
            "loop_devices",
            "Loop devices backed by files under the state root",
            m.loop_devices.clone(),
        );
        m
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn snapshotter_pull(&self, kind: &str) {
        self.snapshotter_pulls
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }
}

/// The metrics in the Prometheus text (OpenMetrics) format, with what the daemon holds read
/// now. A source that cannot be read leaves its gauge as it was and is logged.
pub fn render(d: &Daemon) -> String {
    let m = &d.inner.metrics;
    let _one = m.scrape.lock().unwrap_or_else(|p| p.into_inner());
    match d.inner.store.list_caches() {
        Ok(caches) => {
            for phase in [
                Phase::Pending,
                Phase::Queued,
                Phase::Pulling,
                Phase::Freezing,
                Phase::Ready,
                Phase::Failed,
            ] {
                let n = caches
                    .iter()
                    .filter(|c| c.status.as_ref().map(|s| s.phase) == Some(phase))
                    .count();
                set(&m.caches, phase.as_str(), n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list caches"),
    }
    match d.inner.store.list_disks() {
        Ok(disks) => {
            // As the API shows them: one not yet adopted after a restart counts as Adopting.
            let shown = |x: &crate::objects::Disk| {
                let stored = x.status.as_ref().map(|s| s.phase)?;
                Some(if d.inner.adoption.is_pending(&x.metadata.name) {
                    DiskPhase::Adopting
                } else {
                    stored
                })
            };
            for phase in [
                DiskPhase::Pulling,
                DiskPhase::Ready,
                DiskPhase::Failed,
                DiskPhase::Adopting,
            ] {
                let n = disks.iter().filter(|x| shown(x) == Some(phase)).count();
                set(&m.disks, &phase.to_string(), n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list disks"),
    }
    match d.inner.snapshots.list() {
        Ok(s) => {
            m.snapshots.set(s.len() as i64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list snapshots"),
    }
    let root = &d.inner.config.root;
    match d.inner.sys.loop_devices() {
        Ok(loops) => {
            let ours = loops.iter().filter(|l| l.backing_file.starts_with(root));
            m.loop_devices.set(ours.count() as i64);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot list loop devices"),
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::warn!(error = %e, "metrics: cannot encode");
    }
    out
}

fn set(family: &Family<PhaseLabel, Gauge>, phase: &str, n: usize) {
    family
        .get_or_create(&PhaseLabel {
            phase: phase.into(),
        })
        .set(n as i64);
}
