//! Daemon configuration: `/etc/imagecache/config.toml`, every key optional, unknown keys
//! refused (a typo must not silently fall back to a default on a production node).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/imagecache/config.toml";
pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/run/imagecache/snapshotter.sock";
pub const DEFAULT_CRI_IMAGE_SOCKET: &str = "/run/imagecache/cri-image.sock";
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// Half the state root's filesystem for auto-created caches (see `max_cache_space_percent`).
pub const DEFAULT_MAX_CACHE_SPACE_PERCENT: u32 = 50;
/// Two builds at once: on a 2-core node the unpacking of two builds already keeps both cores
/// busy; more at once only share the same cores while each holds a loop device, its work
/// image's space and its downloads' buffers.
pub const DEFAULT_MAX_CONCURRENT_BUILDS: usize = 2;
/// A queue deep enough for a burst of new workloads (each distinct image set of a pod is one
/// auto-created cache), small enough that its caches' records stay a few hundred KB.
pub const DEFAULT_MAX_QUEUED_BUILDS: usize = 64;
/// Each pod's disk holds one loop device: kubelet's default of 110 pods per node, with the
/// builds and the caches mounted for containerd, stays well within it, while a runaway
/// creator of disks stops long before the node's device numbers or memory run out.
pub const DEFAULT_MAX_LOOP_DEVICES: usize = 256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// State root: state.db, snapshots/, disks/, work/.
    pub root: PathBuf,
    /// The API's unix socket.
    pub socket: PathBuf,
    /// The group (name or number) whose members may read through the API (GET and HEAD): the
    /// socket is created 0660 with it, and every request's caller is checked against it.
    pub socket_group: String,
    /// The group (name or number) whose members may also change things (every POST and
    /// DELETE), as root may. `None`: only root may. Its members reach the socket through
    /// `socket_group`, so they must be in that group too (api/peer.rs).
    pub admin_group: Option<String>,
    /// Registries (`host[:port]`) spoken to over plain HTTP, as containerd and docker do.
    pub insecure_registries: Vec<String>,
    /// Mirrors tried before a registry: `{ "docker.io" = ["mirror.local:5000"] }`.
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    /// Upper bound on layers downloading and unpacking at once, across all builds.
    pub max_concurrent_downloads: usize,
    /// Pull secrets: `<secrets_dir>/<namespace>/<name>/.dockerconfigjson`.
    pub secrets_dir: PathBuf,
    /// A docker config.json whose credentials apply to every image (after pull secrets).
    pub docker_config: Option<PathBuf>,
    /// imageCacheSize when a spec leaves it out.
    pub default_cache_size_gib: u32,
    /// An XFS filesystem in a sparse file under which the state root lives, for reflinks on
    /// hosts whose root filesystem lacks them.
    pub backing_image: Option<PathBuf>,
    /// The containerd proxy snapshotter's socket (`[proxy_plugins.imagecache]` in
    /// containerd's config); an empty string turns the snapshotter off.
    pub snapshotter_socket: PathBuf,
    /// A CRI pull of an image no cache holds goes through the daemon's own puller: the
    /// snapshotter gets the whole image into an auto-created cache before containerd fetches
    /// a layer (daemon/ctr_snapshots/cold_pull.rs). Only with the snapshotter on.
    pub snapshotter_pulls: bool,
    /// containerd's own socket (its gRPC API, CRI included), which the CRI image service
    /// forwards to.
    pub containerd_socket: PathBuf,
    /// The CRI ImageService the kubelet is pointed at (`--image-service-endpoint`): every
    /// call is forwarded to containerd's CRI on `containerd_socket`, and a PullImage's
    /// credentials are lent, in memory and for that pull only, to the snapshotter's fetch of
    /// that image (src/cri). An empty string turns it off.
    pub cri_image_socket: PathBuf,
    /// The node's default for pods that say nothing (ECI's `eci-auto-imc`): `true` matches a
    /// cache automatically and builds one when none matches; `false` (as on Tencent EKS) gives
    /// a cache only to pods whose annotations ask for one.
    pub auto_match: bool,
    /// The pause image of the node's CRI config (`sandbox_image`); when set, every cache also
    /// holds it, so a pod's sandbox starts from the cache too.
    pub sandbox_image: Option<String>,
    /// retentionDays of a cache the daemon creates for a pod that matched none; each disk
    /// cloned from it renews that much time.
    pub auto_cache_retention_days: u32,
    /// The space auto-created Ready caches may hold together (GiB, fractions allowed); beyond
    /// it the least recently used are deleted. `None`: `max_cache_space_percent` decides.
    pub max_cache_space_gib: Option<f64>,
    /// Without `max_cache_space_gib`: the share of the state root's filesystem (its size, in
    /// percent) auto-created Ready caches may hold together. Half by default: pods' disks,
    /// builds in progress and users' caches need the other half of the same filesystem.
    pub max_cache_space_percent: u32,
    /// Builds that run at once; more wait in a queue, their caches `Queued`. Each build takes
    /// a loop device, a share of the downloads and unpacking threads at nice 10: on a small
    /// node two at once already use both cores.
    pub max_concurrent_builds: usize,
    /// Builds that may wait in the queue; a cache create beyond it is refused (429) and
    /// records nothing.
    pub max_queued_builds: usize,
    /// Loop devices the daemon may hold attached at once (its disks, its builds, the caches it
    /// mounts for containerd; other programs' devices are not counted). A disk create at the
    /// ceiling is refused (503), a build waits in the queue.
    pub max_loop_devices: usize,
    /// How old an auto-created cache's failure must be before the next pod that wants it
    /// builds it again (seconds; 10 minutes by default).
    pub auto_cache_retry_after_secs: u64,
    /// How long resolving one image, or opening one layer, may take against its registry,
    /// every retry included, and the longest silence allowed while a layer downloads
    /// (seconds). A registry that accepts connections and never answers fails the build then.
    pub registry_timeout_secs: u64,
    /// Where a Disk's `mountPath` may point: only beneath this directory (`<root>/disks` when
    /// unset). Disks the daemon names itself always go to `<root>/disks/<id>/mnt`.
    pub disk_mount_root: Option<PathBuf>,
    /// How long a registry's answer that a request's credentials may read an image that
    /// needed credentials is trusted before it is asked again (seconds; 0 asks every time).
    /// A revoked credential keeps being served cached images that long.
    pub credential_check_ttl_secs: u64,
    /// `host[:port]/repository` where Ready caches' frozen snapshots are pushed as OCI
    /// artifacts and looked up before a build (src/share); empty: sharing off. Credentials
    /// come from `docker_config`; `insecure_registries` and `registry_mirrors` apply.
    pub share_registry: String,
    /// Publish a Ready cache's images into containerd's image store (namespace `k8s.io`, on
    /// `containerd_socket`, layers served by the snapshotter) so the kubelet finds them
    /// present (daemon/publish.rs). Only with the snapshotter on and containerd's socket there.
    pub publish_images: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/imagecache"),
            socket: PathBuf::from("/run/imagecache/imagecache.sock"),
            socket_group: "root".into(),
            admin_group: None,
            insecure_registries: Vec::new(),
            registry_mirrors: BTreeMap::new(),
            max_concurrent_downloads: 8,
            secrets_dir: PathBuf::from("/etc/imagecache/secrets"),
            docker_config: None,
            default_cache_size_gib: 20,
            backing_image: None,
            snapshotter_socket: PathBuf::from(DEFAULT_SNAPSHOTTER_SOCKET),
            snapshotter_pulls: true,
            containerd_socket: PathBuf::from(DEFAULT_CONTAINERD_SOCKET),
            cri_image_socket: PathBuf::from(DEFAULT_CRI_IMAGE_SOCKET),
            auto_match: true,
            sandbox_image: None,
            auto_cache_retention_days: 7,
            max_cache_space_gib: None,
            max_cache_space_percent: DEFAULT_MAX_CACHE_SPACE_PERCENT,
            max_concurrent_builds: DEFAULT_MAX_CONCURRENT_BUILDS,
            max_queued_builds: DEFAULT_MAX_QUEUED_BUILDS,
            max_loop_devices: DEFAULT_MAX_LOOP_DEVICES,
            auto_cache_retry_after_secs: 600,
            registry_timeout_secs: crate::registry::DEFAULT_REGISTRY_TIMEOUT.as_secs(),
            disk_mount_root: None,
            credential_check_ttl_secs: 300,
            share_registry: String::new(),
            publish_images: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// " (line N: `the line`)" for the byte offset `at` of `text`: a wrong value's message from
/// the TOML parser says what was expected but not for which key.
fn where_in(text: &str, at: usize) -> String {
    let before = text.get(..at).unwrap_or(text);
    let number = before.matches('\n').count() + 1;
    let line = text.lines().nth(number - 1).unwrap_or_default().trim();
    format!(" (line {number}: `{line}`)")
}

impl Config {
    /// The snapshotter's socket, or `None` when the config turns the snapshotter off.
    pub fn snapshotter(&self) -> Option<&Path> {
        (!self.snapshotter_socket.as_os_str().is_empty())
            .then_some(self.snapshotter_socket.as_path())
    }

    /// The CRI image service's socket, or `None` when the config turns it off.
    pub fn cri_image(&self) -> Option<&Path> {
        (!self.cri_image_socket.as_os_str().is_empty()).then_some(self.cri_image_socket.as_path())
    }

    /// Where caller-given disk mount paths must lie: `disk_mount_root`, else `<root>/disks`.
    pub fn disk_mount_root(&self) -> PathBuf {
        self.disk_mount_root
            .clone()
            .unwrap_or_else(|| self.root.join("disks"))
    }

    /// Loads `path`. A missing file at the default location means "all defaults"; a missing
    /// file the operator named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned()
                + &e.span()
                    .map(|s| where_in(text, s.start))
                    .unwrap_or_default(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_downloads == 0 || self.max_concurrent_downloads > 256 {
            return Err(format!(
                "max_concurrent_downloads = {} is out of range: use 1 to 256",
                self.max_concurrent_downloads
            ));
        }
        if !(crate::objects::MIN_CACHE_SIZE_GIB..=crate::objects::MAX_CACHE_SIZE_GIB)
            .contains(&self.default_cache_size_gib)
        {
            return Err(format!(
                "default_cache_size_gib = {} is out of range: use {} to {}",
                self.default_cache_size_gib,
                crate::objects::MIN_CACHE_SIZE_GIB,
                crate::objects::MAX_CACHE_SIZE_GIB
            ));
        }
        if let Some(image) = &self.sandbox_image {
            image
                .parse::<crate::registry::ImageReference>()
                .map_err(|e| format!("sandbox_image = {image:?} is not an image reference: {e}"))?;
        }
        if !(1..=crate::objects::MAX_RETENTION_DAYS).contains(&self.auto_cache_retention_days) {
            return Err(format!(
                "auto_cache_retention_days = {} is out of range: use 1 to {}",
                self.auto_cache_retention_days,
                crate::objects::MAX_RETENTION_DAYS
            ));
        }
        if let Some(gib) = self.max_cache_space_gib {
            if !gib.is_finite() || gib < 0.0 {
                return Err(format!(
                    "max_cache_space_gib = {gib} must be a number of GiB, 0 or more"
                ));
            }
        }
        let ranges: [(&str, usize, usize, usize); 4] = [
            (
                "max_cache_space_percent",
                self.max_cache_space_percent as usize,
                1,
                100,
            ),
            ("max_concurrent_builds", self.max_concurrent_builds, 1, 64),
            ("max_queued_builds", self.max_queued_builds, 1, 4096),
            ("max_loop_devices", self.max_loop_devices, 1, 65536),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(format!(
                    "{key} = {value} is out of range: use {low} to {high}"
                ));
            }
        }
        if !(1..=3600).contains(&self.registry_timeout_secs) {
            return Err(format!(
                "registry_timeout_secs = {} is out of range: use 1 to 3600",
                self.registry_timeout_secs
            ));
        }
        if self.credential_check_ttl_secs > 86400 {
            return Err(format!(
                "credential_check_ttl_secs = {} is out of range: use 0 to 86400 (a day); a revoked credential is served cached images that long",
                self.credential_check_ttl_secs
            ));
        }
        if !self.share_registry.is_empty() {
            crate::share::ShareTarget::parse(&self.share_registry)
                .map_err(|e| format!("share_registry = {:?}: {e}", self.share_registry))?;
        }
        if self.cri_image().is_some() && self.containerd_socket.as_os_str().is_empty() {
            return Err(format!(
                "cri_image_socket = {:?} forwards to containerd, and containerd_socket is empty: name containerd's socket, or set cri_image_socket = \"\" to turn the CRI image service off",
                self.cri_image_socket
            ));
        }
        let sockets = [
            ("socket", Some(self.socket.as_path())),
            ("snapshotter_socket", self.snapshotter()),
            ("cri_image_socket", self.cri_image()),
        ];
        for (i, (key, path)) in sockets.iter().enumerate() {
            let Some(path) = path else { continue };
            for (other, other_path) in &sockets[i + 1..] {
                if *other_path == Some(*path) {
                    return Err(format!(
                        "{key} and {other} are both {path:?}: each socket needs a path of its own"
                    ));
                }
            }
        }
        // Both reach mount targets and, through the snapshotter's layer paths, overlayfs
        // option strings.
        for (key, path) in [
            ("root", self.root.clone()),
            ("disk_mount_root", self.disk_mount_root()),
        ] {
            crate::mount_path::check_plain(&path).map_err(|e| format!("{key} = {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(
            Config::parse("", Path::new("c.toml")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn every_documented_key_parses() {
        let text = r#"
            root = "/srv/ic"
            socket = "/run/ic.sock"
            insecure_registries = ["127.0.0.1:5000"]
            registry_mirrors = { "docker.io" = ["127.0.0.1:5001"] }
            max_concurrent_downloads = 4
            secrets_dir = "/etc/ic/secrets"
            docker_config = "/root/.docker/config.json"
            default_cache_size_gib = 30
            backing_image = "/var/lib/imagecache.xfs"
            snapshotter_socket = "/run/ic/snap.sock"
            containerd_socket = "/run/k3s/containerd/containerd.sock"
            cri_image_socket = "/run/ic/cri.sock"
            auto_match = false
            sandbox_image = "registry.k8s.io/pause:3.9"
            auto_cache_retention_days = 3
            max_cache_space_gib = 500.5
            max_cache_space_percent = 30
            auto_cache_retry_after_secs = 60
            max_concurrent_builds = 3
            max_queued_builds = 10
            max_loop_devices = 40
        "#;
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.root, PathBuf::from("/srv/ic"));
        assert_eq!(
            c.registry_mirrors["docker.io"],
            vec!["127.0.0.1:5001".to_string()]
        );
        assert_eq!(c.max_concurrent_downloads, 4);
        assert_eq!(c.default_cache_size_gib, 30);
        assert_eq!(c.snapshotter(), Some(Path::new("/run/ic/snap.sock")));
        assert_eq!(c.cri_image(), Some(Path::new("/run/ic/cri.sock")));
        assert_eq!(
            c.containerd_socket,
            Path::new("/run/k3s/containerd/containerd.sock")
        );
        assert!(!c.auto_match);
        assert_eq!(
            c.sandbox_image.as_deref(),
            Some("registry.k8s.io/pause:3.9")
        );
        assert_eq!(c.auto_cache_retention_days, 3);
        assert_eq!(c.max_cache_space_gib, Some(500.5));
        assert_eq!(c.auto_cache_retry_after_secs, 60);
        assert_eq!(c.max_cache_space_percent, 30);
        assert_eq!(c.max_concurrent_builds, 3);
        assert_eq!(c.max_queued_builds, 10);
        assert_eq!(c.max_loop_devices, 40);
    }

    #[test]
    fn resource_bounds_are_on_by_default() {
        let c = Config::default();
        assert_eq!(c.max_concurrent_builds, 2);
        assert_eq!(c.max_queued_builds, 64);
        assert_eq!(c.max_loop_devices, 256);
        assert_eq!(c.max_cache_space_percent, 50);
    }

    #[test]
    fn resource_bounds_of_zero_or_too_much_are_refused_naming_the_key_and_range() {
        for (bad, says) in [
            (
                "max_concurrent_builds = 0",
                "max_concurrent_builds = 0 is out of range: use 1 to 64",
            ),
            ("max_concurrent_builds = 65", "use 1 to 64"),
            (
                "max_queued_builds = 0",
                "max_queued_builds = 0 is out of range: use 1 to 4096",
            ),
            (
                "max_loop_devices = 0",
                "max_loop_devices = 0 is out of range: use 1 to 65536",
            ),
            (
                "max_cache_space_percent = 0",
                "max_cache_space_percent = 0 is out of range: use 1 to 100",
            ),
            ("max_cache_space_percent = 101", "use 1 to 100"),
            ("max_loop_devices = -1", "max_loop_devices"),
            ("max_queued_builds = \"many\"", "max_queued_builds"),
        ] {
            let err = Config::parse(bad, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn auto_cache_bounds_default_to_a_week_half_the_filesystem_and_ten_minutes() {
        let c = Config::default();
        assert_eq!(c.auto_cache_retention_days, 7);
        assert_eq!(c.max_cache_space_gib, None);
        assert_eq!(c.max_cache_space_percent, 50);
        assert_eq!(c.auto_cache_retry_after_secs, 600);
        let whole = Config::parse("max_cache_space_gib = 100", Path::new("c.toml")).unwrap();
        assert_eq!(whole.max_cache_space_gib, Some(100.0));
        for bad in ["auto_cache_retention_days = 0", "max_cache_space_gib = -1"] {
            let err = Config::parse(bad, Path::new("c.toml")).unwrap_err();
            assert!(
                err.to_string().contains(&bad[..bad.find(' ').unwrap()]),
                "{err}"
            );
        }
    }

    #[test]
    fn auto_match_is_on_by_default_and_can_be_turned_off() {
        assert!(Config::default().auto_match);
        let off = Config::parse("auto_match = false", Path::new("c.toml")).unwrap();
        assert!(!off.auto_match);
    }

    #[test]
    fn sandbox_image_is_unset_by_default_and_must_be_a_reference() {
        assert_eq!(Config::default().sandbox_image, None);
        let on = Config::parse("sandbox_image = \"pause:3.9\"", Path::new("c.toml")).unwrap();
        assert_eq!(on.sandbox_image.as_deref(), Some("pause:3.9"));
        let err = Config::parse("sandbox_image = \"UPPER CASE\"", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("sandbox_image"), "{err}");
    }

    #[test]
    fn the_snapshotter_is_on_by_default_and_an_empty_socket_turns_it_off() {
        assert_eq!(
            Config::default().snapshotter(),
            Some(Path::new(DEFAULT_SNAPSHOTTER_SOCKET))
        );
        let off = Config::parse("snapshotter_socket = \"\"", Path::new("c.toml")).unwrap();
        assert_eq!(off.snapshotter(), None);
    }

    #[test]
    fn cold_pulls_through_the_snapshotter_are_on_by_default() {
        assert!(Config::default().snapshotter_pulls);
        let off = Config::parse("snapshotter_pulls = false", Path::new("c.toml")).unwrap();
        assert!(!off.snapshotter_pulls);
    }

    #[test]
    fn the_cri_image_service_is_on_by_default_forwarding_to_containerds_socket() {
        let c = Config::default();
        assert_eq!(c.cri_image(), Some(Path::new(DEFAULT_CRI_IMAGE_SOCKET)));
        assert_eq!(c.containerd_socket, Path::new(DEFAULT_CONTAINERD_SOCKET));
        let off = Config::parse("cri_image_socket = \"\"", Path::new("c.toml")).unwrap();
        assert_eq!(off.cri_image(), None);
        let err = Config::parse("containerd_socket = \"\"", Path::new("c.toml")).unwrap_err();
        assert!(
            err.to_string().contains("containerd_socket is empty"),
            "{err}"
        );
        let both_off = "containerd_socket = \"\"\ncri_image_socket = \"\"";
        assert!(Config::parse(both_off, Path::new("c.toml")).is_ok());
        let clash = "cri_image_socket = \"/run/imagecache/snapshotter.sock\"";
        let err = Config::parse(clash, Path::new("c.toml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("snapshotter_socket and cri_image_socket"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::parse("max_concurent_downloads = 3", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("max_concurent_downloads"), "{err}");
    }

    #[test]
    fn out_of_range_values_say_the_range() {
        let err = Config::parse("default_cache_size_gib = 10", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("20 to 32768"), "{err}");
        let err = Config::parse("max_concurrent_downloads = 0", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("1 to 256"), "{err}");
    }

    #[test]
    fn disk_mount_root_defaults_under_root_and_paths_reaching_mount_options_are_refused() {
        let c = Config::parse("root = \"/srv/ic\"", Path::new("c.toml")).unwrap();
        assert_eq!(c.disk_mount_root(), PathBuf::from("/srv/ic/disks"));
        let c = Config::parse("disk_mount_root = \"/pods\"", Path::new("c.toml")).unwrap();
        assert_eq!(c.disk_mount_root(), PathBuf::from("/pods"));
        for (bad, key) in [
            ("root = \"/srv/ic,upperdir=\"", "root"),
            ("root = \"/srv/i c\"", "root"),
            ("root = \"/srv/a:b\"", "root"),
            ("root = \"srv\"", "root"),
            ("disk_mount_root = \"/pods\\nx\"", "disk_mount_root"),
            ("disk_mount_root = \"/pods/../etc\"", "disk_mount_root"),
        ] {
            let err = Config::parse(bad, Path::new("c.toml")).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{key} = ")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn missing_default_file_is_defaults_but_missing_named_file_is_an_error() {
        let p = Path::new("/nonexistent/imagecache/config.toml");
        assert_eq!(Config::load(p, false).unwrap(), Config::default());
        assert!(Config::load(p, true).is_err());
    }
}
