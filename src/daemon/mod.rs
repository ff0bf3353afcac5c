//! The daemon: actions, the build scheduler, the state store and restart recovery.

pub mod action;
pub mod background;
mod build;
pub mod clock;
pub mod ctr_snapshots;
mod disks;
mod error;
pub mod events;
pub mod gc;
mod handlers;
pub mod ids;
pub(crate) mod image_access;
mod info;
mod jobs;
mod loop_budget;
pub mod metrics;
mod owner;
mod pipe;
mod progress;
pub(crate) mod publish;
pub mod pull_auth;
mod record;
mod recovery;
mod share;
mod stop_wait;
mod storage;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use action::{Action, Reply};
pub use error::{DaemonError, FieldError};

use crate::block_snapshot::SnapshotStore;
use crate::config::Config;
use crate::disk_image::CloneMode;
use crate::registry::{RegistryClient, RegistryConfig};
use crate::store::Store;
use crate::sys::Sys;

/// Everything the actions share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Daemon {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    store: Store,
    sys: Arc<dyn Sys>,
    registry: RegistryClient,
    snapshots: SnapshotStore,
    /// Reflink where the state root can share extents, else the loud sparse-copy fallback.
    clone_mode: CloneMode,
    /// The state root's filesystem type, as probed at start.
    root_fs: String,
    /// One bound on layers downloading and unpacking at once, across every build.
    downloads: Arc<Semaphore>,
    /// Running builds and disk pulls by owner, to cancel one when its object is deleted.
    jobs: jobs::RunningJobs,
    /// Builds waiting for a slot (`max_concurrent_builds`) or a loop device.
    queue: build::queue::BuildQueue,
    /// The ceiling on loop devices the daemon holds (`max_loop_devices`).
    loops: loop_budget::LoopBudget,
    /// The disks a restart has not yet put back (disks/adoption.rs).
    adoption: disks::adoption::Adoption,
    /// Creates of client-named disks, one at a time per name.
    disk_names: disks::named::NameLocks,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The containerd snapshotter's request serialisation.
    snapshotter: ctr_snapshots::State,
    metrics: metrics::Metrics,
    /// Store writes that failed, shown on their objects (record.rs).
    unrecorded: record::Unrecorded,
    /// Registry answers that a request's credentials may read a cached image.
    grants: image_access::Grants,
    /// The credentials of CRI PullImage calls in flight (src/cri), for cold pulls.
    pull_auths: Arc<pull_auth::PullAuths>,
    /// `share_registry`, when sharing is on.
    share: Option<Arc<crate::share::ShareRemote>>,
    /// The runtime that carries out changes (creates, deletes, builds, pulls): the one the
    /// daemon was started on. Reads are answered on the caller's runtime, so the API can
    /// serve them from a runtime of its own whose workers never wait in a mount, a loop
    /// device's teardown or a store write.
    work: Option<tokio::runtime::Handle>,
}

/// The state root and `disk_mount_root` are trusted as they stand (disks are mounted
/// beneath them without following symlinks): a symlink in either would redirect every mount.
fn refuse_symlinked_roots(config: &Config) -> Result<(), DaemonError> {
    for (key, path) in [
        ("root", config.root.clone()),
        ("disk_mount_root", config.disk_mount_root()),
    ] {
        if let Some((link, target)) = crate::mount_path::first_symlink(&path) {
            return Err(DaemonError::Setup(format!(
                "{key} = {path:?} passes through the symlink {} -> {}: the daemon never \
                 follows symlinks in the paths it mounts beneath; set {key} to the resolved \
                 path (`realpath -m {}`)",
                link.display(),
                target.display(),
                path.display()
            )));
        }
    }
    Ok(())
}

impl Daemon {
    /// Opens the state under `config.root`, cleans what an earlier run left behind, and
    /// returns a daemon ready to take actions. The disks it finds are adopted (checked
    /// attached and mounted, put back if not) on a thread of their own, so the caller can
    /// serve at once; until its turn each reads `Adopting` (`Daemon::disks_adopting`).
    pub fn start(config: Config, sys: Arc<dyn Sys>) -> Result<Daemon, DaemonError> {
        refuse_symlinked_roots(&config)?;
        let (clone_mode, root_fs) = storage::prepare(&config, sys.as_ref())?;
        for dir in [
            config.root.join("snapshots"),
            config.root.join("work"),
            config.root.join("disks"),
            config.disk_mount_root(),
        ] {
            crate::access::create_dir_with_mode(&dir, crate::access::PRIVATE_DIR)
                .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        }
        let store = Store::open(&config.root.join("state.db"))?;
        storage::make_private(&config.root)?;
        let registry = RegistryClient::new(RegistryConfig {
            insecure_registries: config.insecure_registries.clone(),
            mirrors: config.registry_mirrors.clone(),
            docker_config: config.docker_config.clone(),
            timeout: std::time::Duration::from_secs(config.registry_timeout_secs),
            ..RegistryConfig::default()
        });
        let snapshots = SnapshotStore::new(config.root.join("snapshots"));
        let share = share::remote(&config).map(Arc::new);
        share::import::remove_stale_partials(&config.root);
        let inner = Inner {
            downloads: Arc::new(Semaphore::new(config.max_concurrent_downloads)),
            loops: loop_budget::LoopBudget::new(config.max_loop_devices, config.root.clone()),
            disk_names: Default::default(),
            queue: build::queue::BuildQueue::default(),
            adoption: Default::default(),
            config,
            store,
            sys,
            registry,
            snapshots,
            clone_mode,
            root_fs,
            jobs: jobs::RunningJobs::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            snapshotter: ctr_snapshots::State::default(),
            metrics: metrics::Metrics::default(),
            unrecorded: record::Unrecorded::default(),
            grants: image_access::Grants::default(),
            pull_auths: Arc::default(),
            share,
            work: tokio::runtime::Handle::try_current().ok(),
        };
        let daemon = Daemon {
            inner: Arc::new(inner),
        };
        let started = std::time::Instant::now();
        let to_adopt = recovery::recover(&daemon)?;
        ctr_snapshots::recover(&daemon)
            .map_err(|e| DaemonError::Setup(format!("snapshotter recovery: {e}")))?;
        tracing::info!(
            disks_to_adopt = to_adopt.len(),
            ms = started.elapsed().as_millis() as u64,
            "state recovered"
        );
        disks::adopt::spawn(&daemon, to_adopt);
        Ok(daemon)
    }

    /// How many disks still wait to be adopted after the restart.
    pub fn disks_adopting(&self) -> usize {
        self.inner.adoption.count()
    }

    /// Lends `credentials` to the snapshotter's cold pull of `image` until the guard drops:
    /// the CRI image service holds one for each PullImage it forwards (daemon/pull_auth.rs).
    pub fn hold_pull_credentials(
        &self,
        image: &crate::registry::ImageReference,
        credentials: crate::registry::Credentials,
    ) -> pull_auth::HeldPullCredentials {
        self.inner.pull_auths.hold(image, credentials)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The state database, which only this daemon may write while it runs: its gets and
    /// lists read a mirror that sees no other writer (store/mirror.rs). For embedding
    /// code and tests that record state as the daemon's own work would.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The counters and histograms, for the front doors to record their requests in.
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.inner.metrics
    }

    /// The store writes that failed, by object.
    pub(crate) fn unrecorded(&self) -> &record::Unrecorded {
        &self.inner.unrecorded
    }

    /// `GET /metrics`: a read of counters and of what the daemon holds, no action.
    pub fn metrics_text(&self) -> String {
        metrics::render(self)
    }

    pub fn work_root(&self) -> PathBuf {
        self.inner.config.root.join("work")
    }

    /// Carries out one action: a read where it is asked, anything else on the work runtime
    /// (where it also runs to its end when the asker goes away).
    pub async fn dispatch(&self, action: Action) -> Result<Reply, DaemonError> {
        let done = match (&self.inner.work, action.is_read()) {
            (Some(work), false) => {
                let d = self.clone();
                work.spawn(async move { handlers::dispatch(&d, action).await })
                    .await
                    .unwrap_or_else(|e| {
                        Err(DaemonError::internal_because(
                            "the request's task failed",
                            e,
                        ))
                    })
            }
            _ => handlers::dispatch(self, action).await,
        };
        done.map(|mut reply| {
            self.inner.unrecorded.show(&mut reply);
            events::stamp_reply(reply)
        })
    }

    /// Stops every build (each cleans up its loop device, mount and work files) and waits.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        build::queue::fail_waiting(self);
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
