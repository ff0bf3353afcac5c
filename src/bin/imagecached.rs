//! imagecached: the node-local image cache daemon.

use std::future::IntoFuture;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use imagecache::api::peer::{Access, Group, Peer};
use imagecache::config::{Config, DEFAULT_CONFIG_PATH};
use imagecache::daemon::Daemon;
use imagecache::sys::LinuxSys;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Builds frozen ext4 snapshots of OCI images and serves the imagecache.io/v1 API on a unix
/// socket. Flags override the config file.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML; every key optional, unknown keys refused).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// State root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// API socket.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// A registry (host[:port]) to speak plain HTTP to; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Upper bound on layers downloading at once.
    #[arg(long)]
    max_concurrent_downloads: Option<usize>,
    /// Pull secrets directory (<ns>/<name>/.dockerconfigjson).
    #[arg(long)]
    secrets_dir: Option<PathBuf>,
    /// imageCacheSize (GiB) when a spec leaves it out.
    #[arg(long)]
    default_cache_size_gib: Option<u32>,
    /// An XFS filesystem in this sparse file holds the state root (for ext4 hosts).
    #[arg(long)]
    backing_image: Option<PathBuf>,
    /// The containerd snapshotter's socket ("" turns the snapshotter off).
    #[arg(long)]
    snapshotter_socket: Option<PathBuf>,
    /// The CRI image service's socket, the kubelet's --image-service-endpoint ("" turns it
    /// off).
    #[arg(long)]
    cri_image_socket: Option<PathBuf>,
    /// containerd's socket, which the CRI image service forwards to.
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMAGECACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = load_config(&args)?;
    // Before any thread: what the daemon makes without naming a mode is root's alone.
    imagecache::access::private_umask();
    // Two runtimes: the work runtime carries out creates, deletes, builds and pulls, whose
    // tasks wait in store writes, directory changes and their joins with mounts and loop
    // devices; the API runtime accepts requests and answers reads. With one runtime, 32 disk
    // creates and deletes in flight kept a `GET` queued behind them for 50-100 ms (p99).
    let api = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(API_WORKERS)
        .thread_name("imagecached-api")
        .on_thread_start(imagecache::daemon::background::raise_api_priority)
        .enable_all()
        .build()
        .context("cannot start the API's async runtime")?;
    let work = tokio::runtime::Builder::new_multi_thread()
        .thread_name("imagecached-work")
        // Below the API's threads, so a read finds a core while the work keeps both busy.
        .on_thread_start(|| imagecache::daemon::background::lower_priority(WORK_NICE))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = work.block_on(serve(config, api.handle().clone()));
    // A connection still open holds nothing the daemon must finish.
    api.shutdown_background();
    served
}

/// Reads are short (from memory, store/mirror.rs): two workers keep one answering while the
/// other reads a create's body or writes an answer.
const API_WORKERS: usize = 2;

/// The nice value of the work runtime's threads (the API's are raised to
/// `background::API_NICE`; disk operations and builds go lower still, see
/// `daemon::background`).
const WORK_NICE: i32 = 2;

fn load_config(args: &Args) -> Result<Config> {
    let explicit = args.config != Path::new(DEFAULT_CONFIG_PATH);
    let mut config = Config::load(&args.config, explicit)?;
    if let Some(root) = &args.root {
        config.root = root.clone();
    }
    if let Some(socket) = &args.socket {
        config.socket = socket.clone();
    }
    config
        .insecure_registries
        .extend(args.insecure_registries.iter().cloned());
    if let Some(n) = args.max_concurrent_downloads {
        config.max_concurrent_downloads = n;
    }
    if let Some(dir) = &args.secrets_dir {
        config.secrets_dir = dir.clone();
    }
    if let Some(size) = args.default_cache_size_gib {
        config.default_cache_size_gib = size;
    }
    if let Some(backing) = &args.backing_image {
        config.backing_image = Some(backing.clone());
    }
    if let Some(socket) = &args.snapshotter_socket {
        config.snapshotter_socket = socket.clone();
    }
    if let Some(socket) = &args.cri_image_socket {
        config.cri_image_socket = socket.clone();
    }
    if let Some(socket) = &args.containerd_socket {
        config.containerd_socket = socket.clone();
    }
    // Flags go through the same checks as the file.
    let text = toml::to_string(&config).context("cannot render the effective config")?;
    Ok(Config::parse(&text, Path::new("<flags>"))?)
}

/// Runs the daemon on the current (work) runtime and its API on `api`.
async fn serve(config: Config, api: tokio::runtime::Handle) -> Result<()> {
    let socket = config.socket.clone();
    let snapshotter_socket = config.snapshotter().map(Path::to_owned);
    let cri_image_socket = config.cri_image().map(Path::to_owned);
    let containerd_socket = config.containerd_socket.clone();
    let access = access_of(&config)?;
    imagecache::fault::init();
    let daemon = Daemon::start(config, Arc::new(LinuxSys)).context("cannot start the daemon")?;
    // The API socket comes last: once it takes connections, the snapshotter's does too (a
    // caller that saw the daemon answer may go straight to it). A live daemon on the API
    // socket is refused before the snapshotter's socket is touched. The API's listener (and
    // every connection it accepts) is driven by the API runtime's reactor.
    let activated = {
        let _api = api.enter();
        activated_socket()?
    };
    if activated.is_none() {
        refuse_if_serving(&socket)?;
    }
    let stop = CancellationToken::new();
    let snapshotter = match &snapshotter_socket {
        Some(path) => {
            let listener = imagecache::snapshotter_grpc::bind(path)?;
            let (daemon, stop) = (daemon.clone(), stop.clone());
            info!(socket = %path.display(), "containerd snapshotter serving");
            Some(tokio::spawn(async move {
                imagecache::snapshotter_grpc::serve(daemon, listener, stop.cancelled_owned()).await
            }))
        }
        None => None,
    };
    // Before the API socket too: a kubelet that saw the daemon up may pull at once.
    let cri_image = match &cri_image_socket {
        Some(path) => {
            let listener = imagecache::cri::bind(path)?;
            let (daemon, stop) = (daemon.clone(), stop.clone());
            let containerd = containerd_socket.clone();
            info!(socket = %path.display(), containerd = %containerd.display(), "CRI image service serving");
            Some(tokio::spawn(async move {
                imagecache::cri::serve(daemon, listener, &containerd, stop.cancelled_owned()).await
            }))
        }
        None => None,
    };
    // A socket systemd passed is systemd's: it keeps it for the next start.
    let (listener, ours) = match activated {
        Some(listener) => (listener, false),
        None => {
            let _api = api.enter();
            (bind(&socket, access.readers.gid)?, true)
        }
    };
    daemon.start_gc();
    info!(socket = %socket.display(), root = %daemon.config().root.display(), "imagecached serving");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        spawn_watchdog(interval, stop.clone());
    }

    let app = imagecache::api::routes::router(daemon.clone(), access)
        .into_make_service_with_connect_info::<Peer>();
    let signalled = stop.clone();
    tokio::spawn(async move {
        stop_signal().await;
        signalled.cancel();
    });
    api.spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    )
    .await
    .context("API server task panicked")?
    .context("API server failed")?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    stop.cancel();
    if let Some(task) = snapshotter {
        task.await
            .context("snapshotter task panicked")?
            .context("snapshotter server failed")?;
    }
    if let Some(task) = cri_image {
        task.await
            .context("CRI image service task panicked")?
            .context("CRI image service failed")?;
    }
    info!("stopping: cancelling builds");
    daemon.shutdown().await;
    // A socket systemd passed is systemd's: it keeps it for the next start.
    if ours {
        let _ = std::fs::remove_file(&socket);
    }
    for path in [&snapshotter_socket, &cri_image_socket]
        .into_iter()
        .flatten()
    {
        let _ = std::fs::remove_file(path);
    }
    info!("stopped");
    Ok(())
}

/// The API's roles from the config: `socket_group` reads, `admin_group` (and root) change
/// things. A group that does not exist stops the daemon rather than leaving a role empty.
fn access_of(config: &Config) -> Result<Access> {
    let readers =
        Group::resolve(&config.socket_group, "socket_group").map_err(anyhow::Error::msg)?;
    let admins = config
        .admin_group
        .as_deref()
        .map(|name| Group::resolve(name, "admin_group"))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(Access { readers, admins })
}

/// Binds the API socket, replacing a stale socket file but refusing to steal the socket of a
/// daemon that is still running.
fn bind(socket: &Path, gid: u32) -> Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        imagecache::access::create_socket_dir(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if socket.exists() {
        refuse_if_serving(socket)?;
        std::fs::remove_file(socket)
            .with_context(|| format!("cannot remove stale socket {}", socket.display()))?;
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    // Root and the socket's group may connect; nobody else. One group per file: admin_group's
    // members reach the socket through socket_group too, so the file keeps out everyone who
    // has no role at all, and the request check (api/peer.rs) tells readers from admins.
    std::os::unix::fs::chown(socket, Some(0), Some(gid))
        .with_context(|| format!("cannot give {} to group {gid}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Fails when another daemon answers on `socket`.
fn refuse_if_serving(socket: &Path) -> Result<()> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!(
            "another imagecached is serving {}: stop it first",
            socket.display()
        );
    }
    Ok(())
}

/// The socket systemd passed (imagecached.socket), if the daemon was socket-activated.
fn activated_socket() -> Result<Option<UnixListener>> {
    let Ok(mut fds) = sd_notify::listen_fds() else {
        return Ok(None);
    };
    let Some(fd) = fds.next() else {
        return Ok(None);
    };
    // SAFETY: systemd hands this process ownership of the listening socket at fd 3 (checked
    // through LISTEN_PID by listen_fds), and nothing else in the process uses it.
    let std_listener =
        unsafe { <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    std_listener.set_nonblocking(true)?;
    info!("using the socket systemd passed");
    Ok(Some(UnixListener::from_std(std_listener)?))
}

/// Pings systemd's watchdog every half of `interval` (WatchdogSec) until `stop`. The pings come
/// from a task on the runtime that serves the API, so a runtime that stops running tasks
/// stops them too, and systemd restarts the daemon.
fn spawn_watchdog(interval: std::time::Duration, stop: CancellationToken) {
    info!(?interval, "watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    });
}

async fn stop_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
