//! A real `imagecached` process for integration tests: its state root on a scratch XFS
//! filesystem, its socket in a temp dir, the test registry marked insecure. The CLI binary is
//! driven the way an operator would drive it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct TestDaemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub secrets_dir: PathBuf,
    pub config_path: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestDaemon {
    /// Starts a daemon whose state root is `root` (created if needed), trusting `registries`
    /// over plain HTTP.
    pub fn start(root: &Path, registries: &[&str]) -> TestDaemon {
        TestDaemon::start_with_config(root, registries, "")
    }

    /// Like [`TestDaemon::start`], with `extra` (TOML lines) added to its config; a key it
    /// names replaces the base config's.
    pub fn start_with_config(root: &Path, registries: &[&str], extra: &str) -> TestDaemon {
        let dir = tempfile::tempdir().expect("temp dir");
        let secrets_dir = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets_dir).unwrap();
        let socket = dir.path().join("imagecache.sock");
        let config_path = dir.path().join("config.toml");
        let insecure: Vec<String> = registries.iter().map(|r| format!("{r:?}")).collect();
        // containerd's socket is one no containerd listens on, unless a test names its own:
        // a test daemon must never publish into, or forward to, the host's containerd.
        let base = format!(
            "root = {:?}\nsocket = {:?}\nsnapshotter_socket = {:?}\ncri_image_socket = {:?}\n\
             containerd_socket = {:?}\nsecrets_dir = {:?}\ninsecure_registries = [{}]\n",
            root,
            socket,
            dir.path().join("snapshotter.sock"),
            dir.path().join("cri-image.sock"),
            dir.path().join("no-containerd.sock"),
            secrets_dir,
            insecure.join(", ")
        );
        std::fs::write(&config_path, merged(&base, extra)).unwrap();
        let mut d = TestDaemon {
            root: root.to_owned(),
            socket,
            secrets_dir,
            config_path,
            dir,
            child: None,
        };
        d.spawn();
        d
    }

    /// Like [`TestDaemon::start`], sharing frozen snapshots through `share_registry`
    /// ("host:port/repository").
    pub fn start_sharing(root: &Path, registries: &[&str], share_registry: &str) -> TestDaemon {
        TestDaemon::start_with_config(
            root,
            registries,
            &format!("share_registry = \"{share_registry}\"\n"),
        )
    }

    /// Stops the daemon, puts `extra` (TOML lines; its keys replace the config's) into its
    /// config, and starts it again.
    pub fn reconfigure(&mut self, extra: &str) {
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        self.stop();
        std::fs::write(&self.config_path, merged(&config, extra)).unwrap();
        self.spawn();
    }

    /// The containerd snapshotter's socket.
    pub fn snapshotter_socket(&self) -> PathBuf {
        self.dir.path().join("snapshotter.sock")
    }

    /// The CRI image service's socket (the kubelet's `--image-service-endpoint`).
    pub fn cri_image_socket(&self) -> PathBuf {
        self.dir.path().join("cri-image.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("imagecached.log")
    }

    /// Starts (or restarts) the daemon process and waits for its socket to answer.
    pub fn spawn(&mut self) {
        if !self.spawn_with_env(&[]) {
            panic!("imagecached exited before answering:\n{}", self.log());
        }
    }

    /// Starts the daemon with `env` added to its environment (a fault point armed, say) and
    /// waits for its socket to answer with every disk adopted; false if the process ended
    /// first.
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) -> bool {
        self.spawn_until(env, |d| d.adopted())
    }

    /// As `spawn_with_env`, but returns as soon as the socket answers, disks adopted or not.
    pub fn spawn_serving_with_env(&mut self, env: &[(&str, &str)]) -> bool {
        self.spawn_until(env, |_| true)
    }

    fn spawn_until(&mut self, env: &[(&str, &str)], ready: impl Fn(&TestDaemon) -> bool) -> bool {
        self.launch_with_env(env);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() && ready(self) {
                return true;
            }
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "imagecached did not answer with every disk adopted within 30 s:\n{}",
            self.log()
        );
    }

    /// Whether the API answers and no disk reads `Adopting`: the daemon serves before it has
    /// adopted the disks it finds at start, and tests that restart it and look at a disk
    /// straight away mean the adopted disk.
    fn adopted(&self) -> bool {
        let out = self.cli(&["disk", "get", "-o", "json"]);
        if !out.status.success() {
            return false;
        }
        let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        !list["items"]
            .as_array()
            .is_some_and(|disks| disks.iter().any(|d| d["status"]["phase"] == "Adopting"))
    }

    /// Starts (or restarts) the daemon process and returns at once, for a caller that times
    /// how long it takes to answer.
    pub fn launch(&mut self) {
        self.launch_with_env(&[]);
    }

    fn launch_with_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imagecached"))
            .arg("--config")
            .arg(&self.config_path)
            .env("IMAGECACHE_LOG", "info,imagecache=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("imagecached starts");
        self.child = Some(child);
    }

    /// Waits up to `timeout` for the process to end on its own; its exit status, or None if
    /// it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait, as systemd stops it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "imagecached did not stop on SIGTERM within 120 s:\n{}",
                self.log()
            );
        }
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_imagecache"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("imagecache runs")
    }

    /// `GET /metrics`: the exposition text.
    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://localhost/metrics")
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the CLI and asserts it succeeded; returns its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "imagecache {args:?} failed: {}\n{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `disk create ARGS -o json` (which waits for pulls unless ARGS hold `--no-wait`), parsed.
    pub fn disk_create(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["disk", "create"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.cli_ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("disk create -o json: {e}: {out}"))
    }

    /// `get NAME -o json` as a JSON value.
    pub fn get_json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["get", name, "-o", "json"])).unwrap()
    }

    /// The imageCacheId of cache `name`.
    pub fn cache_id(&self, name: &str) -> String {
        image_cache_id(name, &self.get_json(name))
    }

    /// Creates cache `name` of `images` (`extra`: more lines of its spec, see `cache_yaml`)
    /// and waits until it is Ready; the cache as `get -o json` shows it. Panics with the
    /// CLI's and the daemon's output if it is not.
    pub fn ready_cache(&self, name: &str, images: &[String], extra: &str) -> serde_json::Value {
        let out = self.create(&cache_yaml(name, images, extra), true);
        assert!(
            out.status.success(),
            "create {name}: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let cache = self.get_json(name);
        assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");
        cache
    }

    /// `ready_cache`, for its imageCacheId.
    pub fn ready_cache_id(&self, name: &str, images: &[String], extra: &str) -> String {
        image_cache_id(name, &self.ready_cache(name, images, extra))
    }

    /// Writes a manifest file and runs `create -f FILE --wait`, returning the CLI's output.
    pub fn create(&self, yaml: &str, wait: bool) -> Output {
        let path = self.dir.path().join(format!(
            "cache-{}.yaml",
            std::process::id() as u64 + rand_suffix()
        ));
        std::fs::write(&path, yaml).unwrap();
        let path_s = path.to_str().unwrap().to_owned();
        let mut args = vec!["create", "-f", path_s.as_str()];
        if wait {
            args.push("--wait");
        }
        self.cli(&args)
    }

    /// Writes `body` to a file called `file_name` (its extension decides the content type the
    /// CLI sends: `.json` is JSON, anything else YAML) and runs `create -f FILE [--wait]`.
    pub fn create_file(&self, file_name: &str, body: &str, wait: bool) -> Output {
        let path = self.dir.path().join(file_name);
        std::fs::write(&path, body).unwrap();
        let path_s = path.to_str().unwrap().to_owned();
        let mut args = vec!["create", "-f", path_s.as_str()];
        if wait {
            args.push("--wait");
        }
        self.cli(&args)
    }

    /// Polls `get NAME -o json` until `done` holds for the cache; panics with the last state
    /// and the daemon's log after `timeout`.
    pub fn wait_until(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let cache = self.get_json(name);
            if done(&cache) {
                return cache;
            }
            if Instant::now() > deadline {
                panic!(
                    "cache {name} did not reach the expected state within {timeout:?}: {cache:#}\n--- daemon log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every cache as one `get -o json` lists them: one store query, so one moment.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let mut list: serde_json::Value =
            serde_json::from_str(&self.cli_ok(&["get", "-o", "json"])).unwrap();
        match list["items"].take() {
            serde_json::Value::Array(items) => items,
            _ => panic!("get -o json lists no items: {list:#}"),
        }
    }

    /// The names `get -o json` lists.
    pub fn list_names(&self) -> Vec<String> {
        self.list()
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Writes a kubernetes.io/dockerconfigjson pull secret `ns/name` for `registry`.
    pub fn write_pull_secret(&self, ns: &str, name: &str, registry: &str, user: &str, pass: &str) {
        use base64::Engine;
        let dir = self.secrets_dir.join(ns).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let json = serde_json::json!({"auths": {registry: {"auth": auth}}});
        std::fs::write(dir.join(".dockerconfigjson"), json.to_string()).unwrap();
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An ImageCache manifest for `images`.
pub fn cache_yaml(name: &str, images: &[String], extra_spec: &str) -> String {
    let list: Vec<String> = images.iter().map(|i| format!("    - {i:?}")).collect();
    format!(
        "apiVersion: imagecache.io/v1\nkind: ImageCache\nmetadata:\n  name: {name}\nspec:\n  images:\n{}\n{extra_spec}",
        list.join("\n")
    )
}

/// The messages of `object`'s events (a cache's or a disk's) with `reason`, oldest first.
#[allow(dead_code)]
pub fn events(object: &serde_json::Value, reason: &str) -> Vec<String> {
    object["status"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {object:#}"))
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap().to_owned())
        .collect()
}

/// `base` with the keys of `extra` (TOML both) set over it.
fn merged(base: &str, extra: &str) -> String {
    let mut table: toml::Table = base.parse().expect("the base config is TOML");
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("extra config is not TOML ({e}):\n{extra}"));
    table.extend(extra);
    toml::to_string(&table).expect("a TOML table serialises")
}

/// The imageCacheId in `cache` (cache `name` as `get -o json` shows it).
fn image_cache_id(name: &str, cache: &serde_json::Value) -> String {
    cache["status"]["imageCacheId"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no imageCacheId: {cache:#}"))
        .to_owned()
}
