//! A real containerd (Debian's 1.6.20) per test, driven as a kubelet drives it: its root,
//! state, sockets, runc root and log all live under one test directory, its CRI plugin pulls
//! from the test registry over plain HTTP, and dropping it leaves no process, container or
//! mount behind.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imagecache::sys::{LinuxSys, Sys};

use super::cri::Cri;

/// containerd loads its plugins in well under a second here; a loaded 2-core CI box needs more.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long containerd gets to stop on SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Any one `ctr`/`runc` call made while cleaning up.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The CRI namespace: every pod, container and image CRI makes lives in it.
pub const K8S_NAMESPACE: &str = "k8s.io";

#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// "127.0.0.1:PORT" of a plain-HTTP registry; CRI pulls `127.0.0.1:PORT/repo:tag` from it.
    pub registry: String,
    /// The pod sandbox ("pause") image, a reference into `registry`.
    pub sandbox_image: String,
    /// Some(socket): the CRI plugin uses the proxy snapshotter `imagecache` served there.
    /// None: containerd's own overlayfs snapshotter.
    pub proxy_snapshotter: Option<PathBuf>,
}

/// The configuration an operator adds for imagecache: the proxy snapshotter plugin and the
/// CRI plugin's use of it. `disable_snapshot_annotations = false` makes CRI label each layer
/// snapshot with its image and chainID, and pass `containerd.io/snapshot/*` annotations of a
/// container to its rootfs snapshot.
pub fn cri_snapshotter_config(socket: &Path) -> String {
    // Exactly what `imagecache containerd-config` prints for an operator (the kubelet flag
    // is a comment there: containerd has no part in it).
    imagecache::snapshotter_grpc::containerd_config(socket, None)
}

/// The whole containerd configuration `TestContainerd::start(dir, opts)` runs with.
pub fn config_toml(dir: &Path, opts: &ContainerdOptions) -> String {
    let p = |rel: &str| toml_str(&dir.join(rel).to_string_lossy());
    let mut c = String::new();
    // Everything containerd writes goes under `dir`: a test must never touch the host's
    // /var/lib/containerd or /run/containerd, nor meet another test's containerd.
    write!(
        c,
        r#"version = 2
root = {root}
state = {state}
# Snapshotters this machine cannot or need not run; skipping them keeps the log clean.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox}
  # root here lacks CAP_SYS_RESOURCE: runc fails lowering a sandbox's oom_score_adj below ours.
  restrict_oom_score_adj = true
  # The streaming server (exec/attach) is the only TCP listener, on loopback, any port.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_tcp_service = true
  disable_apparmor = true
  enable_selinux = false

"#,
        root = p("root"),
        state = p("state"),
        grpc = p("containerd.sock"),
        ttrpc = p("containerd.sock.ttrpc"),
        opt = p("opt"),
        sandbox = toml_str(&opts.sandbox_image),
    )
    .unwrap();
    match &opts.proxy_snapshotter {
        Some(socket) => c.push_str(&cri_snapshotter_config(socket)),
        None => c.push_str(
            r#"[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
"#,
        ),
    }
    write!(
        c,
        r#"  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # runc's state under the test dir too (runc appends the namespace), so cleanup finds it.
  Root = {runc}
  SystemdCgroup = false

# Pods use the host network: no CNI plugin, and none of the host's configuration.
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = {cni_bin}
  conf_dir = {cni_conf}

[plugins."io.containerd.grpc.v1.cri".registry.mirrors.{registry}]
  endpoint = [{endpoint}]
"#,
        runc = p("runc"),
        cni_bin = p("cni/bin"),
        cni_conf = p("cni/conf"),
        registry = toml_str(&opts.registry),
        endpoint = toml_str(&format!("http://{}", opts.registry)),
    )
    .unwrap();
    c
}

/// A TOML basic string (quoted, escaped).
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub struct TestContainerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub runc_root: PathBuf,
    pub log_path: PathBuf,
    pub options: ContainerdOptions,
    child: Option<Child>,
}

impl TestContainerd {
    /// Writes `<dir>/config.toml` and runs containerd with it; returns once its API answers.
    /// `dir` must be on a filesystem overlayfs takes as an upper layer (XFS, ext4; not
    /// overlayfs itself).
    pub fn start(dir: &Path, opts: &ContainerdOptions) -> TestContainerd {
        fs::create_dir_all(dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        for sub in ["root", "state", "opt", "runc", "cni/bin", "cni/conf"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(&dir, opts)).unwrap();
        let log_path = dir.join("containerd.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // If the test process dies without unwinding, containerd goes with it. The thread
        // that spawns is the test's own, which outlives this value.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::TERM,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn containerd (is it installed?)");
        let mut c = TestContainerd {
            socket: dir.join("containerd.sock"),
            root: dir.join("root"),
            state: dir.join("state"),
            runc_root: dir.join("runc"),
            log_path,
            options: opts.clone(),
            child: Some(child),
            dir,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.print_log();
                panic!("containerd exited at start with {status}");
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                let out = self.ctr(&["version"]);
                if out.status.success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.print_log();
                panic!("containerd did not answer within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Prints containerd's log to stderr (the harness shows it when the test fails).
    pub fn print_log(&self) {
        eprintln!(
            "---- containerd log ({}) ----\n{}\n---- end containerd log ----",
            self.log_path.display(),
            self.log()
        );
    }

    /// `ctr --address <socket> --namespace k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(K8S_NAMESPACE, args)
    }

    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args);
        run_bounded(cmd, TOOL_TIMEOUT)
    }

    /// `ctr` that must succeed; its standard output. Prints containerd's log on failure.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            self.print_log();
            panic!(
                "ctr {args:?} failed: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).unwrap()
    }

    /// A CRI client over this containerd's socket; pod logs go under `<dir>/pods`.
    pub fn cri(&self) -> Cri {
        Cri::connect(&self.socket, &self.dir.join("pods"))
    }

    /// Removes what a test left through containerd itself (pods via CRI, then any task and
    /// container in any namespace), so shims exit and unmount their rootfs.
    fn remove_everything_via_api(&self) {
        if let Ok(cri) = std::panic::catch_unwind(|| self.cri()) {
            for pod in cri.list_pod_sandboxes() {
                if let Err(e) = cri.try_stop_pod_sandbox(&pod) {
                    eprintln!("containerd cleanup: stop pod {pod}: {e}");
                }
                if let Err(e) = cri.try_remove_pod_sandbox(&pod) {
                    eprintln!("containerd cleanup: remove pod {pod}: {e}");
                }
            }
        }
        let namespaces = self.ctr_in("default", &["namespaces", "ls", "-q"]);
        for ns in lines(&namespaces.stdout) {
            for task in lines(&self.ctr_in(&ns, &["tasks", "ls", "-q"]).stdout) {
                self.ctr_in(&ns, &["tasks", "kill", "-s", "SIGKILL", &task]);
                self.ctr_in(&ns, &["tasks", "rm", "-f", &task]);
            }
            for c in lines(&self.ctr_in(&ns, &["containers", "ls", "-q"]).stdout) {
                self.ctr_in(&ns, &["containers", "rm", &c]);
            }
        }
    }

    /// SIGTERM, then SIGKILL after `STOP_TIMEOUT`.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("containerd ignored SIGTERM for {STOP_TIMEOUT:?}; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// After containerd is gone: shims it started (by the pid files in its state dir, checked
    /// against their command line) and containers runc still knows under our runc root.
    fn kill_leftover_shims_and_containers(&self) {
        let tasks = self.state.join("io.containerd.runtime.v2.task");
        for ns in read_dir_paths(&tasks) {
            for task in read_dir_paths(&ns) {
                let Ok(text) = fs::read_to_string(task.join("shim.pid")) else {
                    continue;
                };
                let Ok(pid) = text.trim().parse::<i32>() else {
                    continue;
                };
                let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let ours =
                    String::from_utf8_lossy(&cmdline).contains(&*self.socket.to_string_lossy());
                if ours {
                    eprintln!("containerd cleanup: killing leftover shim {pid}");
                    if let Some(p) = rustix::process::Pid::from_raw(pid) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                    }
                }
            }
        }
        for ns_root in read_dir_paths(&self.runc_root) {
            let mut list = Command::new("runc");
            list.arg("--root").arg(&ns_root).args(["list", "-q"]);
            for id in lines(&run_bounded(list, TOOL_TIMEOUT).stdout) {
                eprintln!("containerd cleanup: deleting leftover runc container {id}");
                let mut del = Command::new("runc");
                del.arg("--root")
                    .arg(&ns_root)
                    .args(["delete", "--force", &id]);
                run_bounded(del, TOOL_TIMEOUT);
            }
        }
    }

    /// Unmounts everything under the test dir, deepest first.
    fn unmount_everything(&self) {
        let sys = LinuxSys;
        // A mount a dying shim still holds may need a moment; go round a few times.
        for _ in 0..5 {
            let mounts = sys.mounts_under(&self.dir).unwrap_or_default();
            if mounts.is_empty() {
                return;
            }
            for m in mounts {
                if let Err(e) = imagecache::sys::unmount_settled(&sys, &m) {
                    eprintln!("containerd cleanup: unmount {}: {e}", m.display());
                }
            }
        }
    }
}

impl Drop for TestContainerd {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if self.child.is_some() {
            self.remove_everything_via_api();
        }
        self.stop_daemon();
        self.kill_leftover_shims_and_containers();
        self.unmount_everything();
        if failed {
            self.print_log();
        }
    }
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs `cmd` to completion, killing it (by its own pid) after `timeout`: a wedged containerd
/// must not hang a test's cleanup forever.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            eprintln!("{cmd:?} did not finish within {timeout:?}; killing it");
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}
