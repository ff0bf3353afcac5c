//! The daemon under systemd's protocols, without systemd as init (root): both units pass
//! `systemd-analyze verify`; READY=1 and watchdog pings reach the NOTIFY_SOCKET it is given;
//! under `systemd-socket-activate` the first request starts the daemon and is answered; a
//! socket passed to the daemon (as systemd passes it) is never removed by it, and requests
//! sent while it restarts wait in the socket's queue and are answered by the next start. The
//! service sets nothing that makes systemd give it a mount namespace (its mounts would be
//! hidden from containerd and the host; tests/systemd_boot.rs shows it under a real systemd)
//! and keeps the hardening that needs none.

mod support;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::scratch::{assert_no_leaks, ScratchXfs};

const DAEMON: &str = env!("CARGO_BIN_EXE_imagecached");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A config for a daemon whose state root is `root` and API socket `socket`.
fn write_config(dir: &Path, root: &Path, socket: &Path) -> PathBuf {
    let config = dir.join("config.toml");
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        &config,
        format!(
            "root = {root:?}\nsocket = {socket:?}\nsnapshotter_socket = \"\"\ncri_image_socket = \"\"\nsecrets_dir = {secrets:?}\n"
        ),
    )
    .unwrap();
    config
}

fn log_file(dir: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("daemon.log"))
        .unwrap()
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// `GET path` over `socket` with curl, waiting up to 60 s for the answer.
fn curl(socket: &Path, path: &str) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(socket)
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap()
}

fn terminate(child: &mut Child) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn both_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["imagecached.service", "imagecached.socket"] {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        // verify checks that ExecStart's program exists: point it at the one just built.
        let text = text.replace("/usr/local/bin/imagecached", DAEMON);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("imagecached.service"))
        .arg(dir.path().join("imagecached.socket"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("imagecached"),
        "systemd-analyze has something to say about our units:\n{said}"
    );
}

#[test]
fn ready_and_watchdog_pings_reach_the_notify_socket() {
    let scratch = ScratchXfs::new(4 << 30);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let config = write_config(dir.path(), &scratch.path().join("state"), &socket);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let mut daemon = Command::new(DAEMON)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    while seen.iter().filter(|m| *m == "WATCHDOG=1").count() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no three pings within 60 s: {seen:?}"
        );
        let n = notify
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{e} after {seen:?}:\n{}", log(dir.path())));
        // One state per datagram here, newline-terminated.
        let message = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
        if message == "READY=1" {
            // READY comes once the API answers.
            let out = curl(&socket, "/healthz");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
        }
        seen.push(message);
    }
    assert_eq!(seen[0], "READY=1", "{seen:?}");
    // Three pings at 100 ms intervals, not a burst.
    assert!(started.elapsed() >= Duration::from_millis(150), "{seen:?}");
    terminate(&mut daemon);
    let mut rest = Vec::new();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
    assert!(
        !socket.exists(),
        "a socket the daemon made is removed at exit"
    );
    assert_no_leaks(&scratch.path().join("state"));
}

#[test]
fn the_first_request_starts_a_socket_activated_daemon() {
    let scratch = ScratchXfs::new(4 << 30);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let config = write_config(dir.path(), &scratch.path().join("state"), &socket);
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg(DAEMON)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "no socket:\n{}", log(dir.path()));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !log(dir.path()).contains("imagecached serving"),
        "started before any request"
    );
    let out = curl(&socket, "/healthz");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok",
        "{}",
        log(dir.path())
    );
    assert!(log(dir.path()).contains("using the socket systemd passed"));
    terminate(&mut activator);
    assert!(
        socket.exists(),
        "the daemon removed the socket it was passed"
    );
    assert_no_leaks(&scratch.path().join("state"));
}

#[test]
fn a_passed_socket_outlives_the_daemon_and_queues_requests_across_a_restart() {
    let scratch = ScratchXfs::new(4 << 30);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let config = write_config(dir.path(), &scratch.path().join("state"), &socket);
    // The test holds the listening socket across restarts, as systemd does.
    let listener = UnixListener::bind(&socket).unwrap();
    let start = || {
        let fd = listener.as_raw_fd();
        let mut cmd = Command::new("sh");
        // LISTEN_PID must be the daemon's own pid: the shell's, kept by exec.
        cmd.args([
            "-c",
            "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\"",
        ])
        .arg(DAEMON)
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log_file(dir.path()));
        // SAFETY: only dup2 and fcntl, async-signal-safe, run between fork and exec; they put
        // the listening socket at fd 3 without close-on-exec, where LISTEN_FDS says it is.
        unsafe {
            cmd.pre_exec(move || {
                let listening = BorrowedFd::borrow_raw(fd);
                let mut three = OwnedFd::from_raw_fd(3);
                let placed = rustix::io::dup2(listening, &mut three).and_then(|()| {
                    // dup2 onto itself keeps close-on-exec: clear it either way.
                    rustix::io::fcntl_setfd(&three, rustix::io::FdFlags::empty())
                });
                // Fd 3 is the daemon's now, not this closure's to close.
                std::mem::forget(three);
                placed.map_err(Into::into)
            });
        }
        cmd.spawn().unwrap()
    };
    let mut first = start();
    let out = curl(&socket, "/healthz");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok",
        "{}",
        log(dir.path())
    );
    terminate(&mut first);
    assert!(
        socket.exists(),
        "the daemon removed the socket it was passed"
    );

    // While no daemon runs, a request waits in the socket's queue...
    let waiting = {
        let socket = socket.clone();
        std::thread::spawn(move || curl(&socket, "/healthz"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished());
    // ...and the next start answers it.
    let mut second = start();
    let out = waiting.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ok",
        "{}",
        log(dir.path())
    );
    terminate(&mut second);
    assert!(socket.exists());
    drop(listener);
    assert_no_leaks(&scratch.path().join("state"));
}

/// The nice value the unit's `LimitNICE=` lets the daemon's threads rise to.
fn unit_nice_limit() -> i32 {
    let unit = std::fs::read_to_string(repo().join("systemd/imagecached.service")).unwrap();
    unit.lines()
        .find_map(|l| l.strip_prefix("LimitNICE="))
        .expect("the unit sets LimitNICE=")
        .trim()
        .parse()
        .expect("LimitNICE= is a signed nice value")
}

/// The nice value of each of `pid`'s threads named `comm`.
fn thread_nices(pid: u32, comm: &str) -> Vec<i32> {
    let mut nices = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
            continue;
        };
        let (name, rest) = stat.split_once(" (").unwrap().1.rsplit_once(") ").unwrap();
        if name == comm {
            // After the name: the state is field 3 of proc_pid_stat(5), the nice value 19.
            nices.push(rest.split_whitespace().nth(16).unwrap().parse().unwrap());
        }
    }
    nices
}

/// The API's threads run at `API_NICE`, which the unit's `LimitNICE=` allows without
/// CAP_SYS_NICE (an RLIMIT_NICE of 20 - nice, setrlimit(2)); the work runtime's at 2. A
/// daemon that may not rise (here: CAP_SYS_NICE dropped from the bounding set, RLIMIT_NICE
/// left at 0) keeps them at 0 and says so. The limit itself cannot be set here: raising
/// RLIMIT_NICE takes CAP_SYS_RESOURCE, which a test in a container may not hold.
#[test]
fn the_api_threads_rise_to_the_units_nice_limit_and_say_so_when_they_may_not() {
    let allowed = unit_nice_limit();
    assert_eq!(
        allowed,
        imagecache::daemon::background::API_NICE,
        "LimitNICE= in the unit and the API threads' nice value differ"
    );
    for may_rise in [true, false] {
        let scratch = ScratchXfs::new(4 << 30);
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let config = write_config(dir.path(), &scratch.path().join("state"), &socket);
        let mut cmd = Command::new("setpriv");
        if !may_rise {
            cmd.args(["--bounding-set", "-sys_nice"]);
        }
        let mut daemon = KilledOnDrop(
            cmd.arg("--")
                .arg(DAEMON)
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log_file(dir.path()))
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while String::from_utf8_lossy(&curl(&socket, "/healthz").stdout) != "ok" {
            assert!(Instant::now() < deadline, "no answer:\n{}", log(dir.path()));
            std::thread::sleep(Duration::from_millis(50));
        }
        let api = thread_nices(daemon.0.id(), "imagecached-api");
        // The kernel keeps 15 bytes of a thread's name.
        let work = thread_nices(daemon.0.id(), "imagecached-wor");
        assert!(!api.is_empty() && !work.is_empty(), "{api:?} {work:?}");
        assert!(work.iter().all(|n| *n == 2), "work threads: {work:?}");
        let refused = log(dir.path()).contains("cannot raise the API threads' CPU priority");
        let want = if may_rise { allowed } else { 0 };
        assert!(api.iter().all(|n| *n == want), "API threads: {api:?}");
        assert_eq!(refused, !may_rise, "{}", log(dir.path()));
        terminate(&mut daemon.0);
        assert_no_leaks(&scratch.path().join("state"));
    }
}

/// A daemon that a failed assertion must not leave running (it holds the scratch mount).
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Settings that make systemd run a service in a mount namespace of its own, so that what it
/// mounts is seen by no one else: the conditions of systemd 252's exec_needs_mount_namespace()
/// (Debian 12). Measured under that systemd booted in a container, a transient service
/// (`systemd-run -p KEY=VALUE readlink /proc/self/ns/mnt`) got a mount namespace other than
/// PID 1's with each of these but the image ones (RootImage, MountImages, ExtensionImages,
/// ExtensionDirectories: not tried), and kept PID 1's with ProtectClock, ProtectHostname,
/// PrivateNetwork, NetworkNamespacePath, MountAPIVFS, RestrictNamespaces, SystemCallFilter,
/// DevicePolicy, UMask, NoNewPrivileges, LockPersonality, MemoryDenyWriteExecute and
/// RestrictSUIDSGID.
const MOUNT_NAMESPACE_SETTINGS: &[&str] = &[
    "PrivateMounts",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateIPC",
    "IPCNamespacePath",
    "ProtectSystem",
    "ProtectHome",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "RootDirectory",
    "RootImage",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "MountFlags",
    "LogNamespace",
    "DynamicUser",
    // A user namespace, not a mount one, but the same loss: the daemon's root would not be
    // the host's, and could neither mount for it nor attach loop devices.
    // (It kept PID 1's mount namespace when measured.)
    "PrivateUsers",
];

/// The `KEY=VALUE` settings of `section` in a unit file, in order (comments and blank lines
/// left out).
fn unit_settings(text: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut settings = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            current = line.to_owned();
            continue;
        }
        if current == section {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {line:?}"));
            settings.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    settings
}

/// Which of `settings` would give the service a mount namespace (or a user namespace).
fn namespace_settings(settings: &[(String, String)]) -> Vec<String> {
    settings
        .iter()
        .filter(|(k, _)| MOUNT_NAMESPACE_SETTINGS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

fn service_settings() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("systemd/imagecached.service")).unwrap();
    unit_settings(&text, "[Service]")
}

/// Even `=no` is refused: the setting's name in the unit invites the next edit to flip it, and
/// a drop-in that sets one is the operator's choice, not ours.
#[test]
fn the_service_sets_nothing_that_makes_a_mount_namespace() {
    let found = namespace_settings(&service_settings());
    assert!(
        found.is_empty(),
        "systemd/imagecached.service sets {found:?}: each runs the daemon in a mount namespace \
         of its own (or a user namespace), where the disks and caches it mounts are invisible \
         to containerd and the host. Harden with something that needs no namespace \
         (seccomp, capabilities, device and resource limits) instead."
    );
    // The check itself: each listed setting is caught, as a unit would spell it.
    for key in MOUNT_NAMESPACE_SETTINGS {
        let text = format!("[Service]\nExecStart=/bin/true\n{key}=yes\n");
        assert_eq!(
            namespace_settings(&unit_settings(&text, "[Service]")).len(),
            1,
            "{key}"
        );
    }
}

/// The hardening that needs no mount namespace stays: a root-only state root, devices closed
/// but the loop devices, a system call filter that keeps the mount calls, no new namespaces,
/// and bounds on memory and tasks.
#[test]
fn the_service_keeps_the_hardening_that_needs_no_mount_namespace() {
    let settings = service_settings();
    let values = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("UMask"), ["0077"]);
    assert_eq!(values("StateDirectoryMode"), ["0700"]);
    assert_eq!(values("StateDirectory"), ["imagecache"]);
    assert_eq!(values("DevicePolicy"), ["closed"]);
    let mut allowed = values("DeviceAllow");
    allowed.sort_unstable();
    assert_eq!(
        allowed,
        [
            "/dev/loop-control rw",
            "block-* m",
            "block-loop rw",
            "char-* m"
        ]
    );
    assert_eq!(values("RestrictNamespaces"), ["yes"]);
    assert_eq!(values("NoNewPrivileges"), ["yes"]);
    let filter: Vec<&str> = values("SystemCallFilter")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert!(
        filter.iter().all(|c| !c.starts_with('~')),
        "SystemCallFilter= is an allow list here: {filter:?}"
    );
    for needed in [
        "@system-service",
        "@mount",
        "ioctl",
        "mknodat",
        "fsetxattr",
        "openat2",
        "sched_setattr",
        "setpriority",
        "clone3",
    ] {
        assert!(filter.contains(&needed), "SystemCallFilter= lacks {needed}");
    }
    for limit in ["MemoryMax", "TasksMax"] {
        assert_eq!(values(limit).len(), 1, "{limit}= is set once");
    }
}
