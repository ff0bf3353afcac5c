//! The shipped unit under a real systemd as PID 1 (Debian 12's systemd 252, a debootstrap tree
//! booted with `systemd-nspawn -b`; root): started as an operator starts it, the daemon runs in
//! PID 1's mount namespace, a disk it mounts is in PID 1's mountinfo and another process of
//! that namespace finds it mounted and reads the pod's images from it, and unmounting it on
//! delete is seen there too. Under the unit's whole hardening (its system call filter,
//! capability bounding set, `UMask=0077`, `RestrictNamespaces=`) the daemon builds a cache of
//! the feature images (device nodes, whiteouts, xattrs, hardlinks), clones, mounts, deletes a
//! disk and stops cleanly without a single restart; the disk holds exactly what the images
//! say; the state root is left 0700. Nothing stays attached or mounted afterwards.
//!
//! With `ProtectKernelLogs=yes` and `ProtectControlGroups=yes` back in the unit (as it once
//! shipped), or `ProtectKernelTunables=yes` added, this test fails: the disk is missing from
//! PID 1's mountinfo (the daemon's mount namespace is its own). With a system call filter that
//! lacks the mount calls it fails too: the daemon is killed by SIGSYS during the build.
//!
//! What this container cannot check: nspawn gives it the host's cgroup v1 controllers
//! read-only (no systemd on the host to delegate them), so `DevicePolicy=`, `MemoryMax=` and
//! `TasksMax=` are accepted by systemd but not enforced here.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::cachefs::mount_chain;
use support::daemon::cache_yaml;
use support::gen::features::feature_set;
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};
use support::tree::{assert_tree_eq, walk};

const DAEMON: &str = env!("CARGO_BIN_EXE_imagecached");
const CLI: &str = env!("CARGO_BIN_EXE_imagecache");

/// The debootstrap tree, made once per machine and reused by every later run (CI pays the
/// ~2 minutes of debootstrap once): each boot runs on an overlay of it, never on the tree.
const TREE: &str = "/var/cache/imagecache-tests/debian-bookworm-systemd";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What debootstrap adds to minbase: systemd as init, and the system's CA certificates as any
/// node has them (without them the daemon panics at start: reqwest finds none).
const PACKAGES: &str = "systemd,systemd-sysv,dbus,ca-certificates";

/// Where the unit expects things, inside the container (the unit's and config's defaults).
const STATE_ROOT: &str = "/var/lib/imagecache";
const API_SOCKET: &str = "/run/imagecache/imagecache.sock";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The booted-Debian tree, made by debootstrap on first use (and again when [`PACKAGES`]
/// changes). A lock keeps two test processes from making it at once; the rename makes a
/// half-made tree impossible to reuse.
fn debian_tree() -> PathBuf {
    let tree = PathBuf::from(TREE);
    let parent = tree.parent().unwrap();
    std::fs::create_dir_all(parent).unwrap();
    let lock = std::fs::File::create(parent.join("debian-bookworm-systemd.lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .expect("lock the debootstrap tree");
    let stamp = parent.join("debian-bookworm-systemd.packages");
    if tree.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(PACKAGES) {
        return tree;
    }
    let partial = parent.join("debian-bookworm-systemd.partial");
    if tree.exists() {
        // Made with another package list: made again.
        std::fs::rename(&tree, &partial).unwrap();
    }
    if partial.exists() {
        // A run killed in the middle of debootstrap, or an old tree: it has device nodes and
        // root's files, and must not be mixed with the next one.
        let out = Command::new("rm")
            .args(["-rf", "--one-file-system"])
            .arg(&partial)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let started = Instant::now();
    let out = run_for(
        Command::new("debootstrap").args([
            "--variant=minbase",
            &format!("--include={PACKAGES}"),
            "bookworm",
            partial.to_str().unwrap(),
            MIRROR,
        ]),
        Duration::from_secs(900),
    );
    assert!(
        out.status.success(),
        "debootstrap failed (is {MIRROR} reachable?): {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &tree).unwrap();
    std::fs::write(&stamp, PACKAGES).unwrap();
    eprintln!("debootstrap made {TREE} in {:?}", started.elapsed());
    tree
}

/// Runs `cmd` with no stdin, killing it if it takes longer than `limit`.
fn run_for(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
        let out = waiter.join().unwrap().unwrap();
        panic!(
            "{cmd:?} took longer than {limit:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    waiter.join().unwrap().unwrap()
}

/// A booted container: systemd-nspawn and the container's PID 1 (as the host numbers it).
/// Dropping it powers the container off and, if that does not end it in time, kills it.
struct Container {
    nspawn: Child,
    pid1: u32,
    log: PathBuf,
    /// Dropped after the fields above, once nspawn has exited.
    _cgroup: OwnCgroup,
}

impl Container {
    /// Boots `root` with the scratch directory `state` as the unit's state root.
    fn boot(root: &Path, state: &Path, log: PathBuf) -> Container {
        let cgroup = OwnCgroup::new();
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--directory")
            .arg(root)
            .args([
                "--boot",
                // No system bus and no systemd-machined on the host (systemd is not PID 1
                // here): nothing to register with, and no scope unit to make.
                "--register=no",
                "--keep-unit",
                "--console=passive",
            ])
            // The host's network stays (nspawn's default): the daemon pulls from the test
            // registry on 127.0.0.1.
            .arg(format!("--bind={}:{STATE_ROOT}", state.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        let procs = cgroup.procs_files();
        // SAFETY: only write(2) on fds opened before the fork, async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                for f in &procs {
                    rustix::io::write(f, b"0")?;
                }
                Ok(())
            });
        }
        let nspawn = cmd.spawn().expect("systemd-nspawn starts");
        let mut container = Container {
            nspawn,
            pid1: 0,
            log,
            _cgroup: cgroup,
        };
        container.pid1 = container.find_pid1();
        container
    }

    /// nspawn's child is the container's PID 1: it appears once nspawn has set up the
    /// container and exec'd /sbin/init in new mount and PID namespaces.
    fn find_pid1(&mut self) -> u32 {
        let nspawn = self.nspawn.id();
        let own_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let own_pidns = std::fs::read_link("/proc/self/ns/pid").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited with {status}:\n{}", self.logs());
            }
            for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                // After the command's closing parenthesis: state, then the parent's pid.
                let ppid = stat
                    .rsplit_once(") ")
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                let mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap_or_default();
                let pidns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap_or_default();
                // Another child of nspawn may have a mount namespace of its own: only the
                // container's PID 1 is in a new PID namespace.
                if ppid == Some(nspawn)
                    && mnt != own_mnt
                    && pidns != own_pidns
                    && exe.to_string_lossy().contains("systemd")
                {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no container PID 1 within 60 s:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `systemctl ARGS` in the container's mount, PID and UTS namespaces, as a shell of the
    /// container would run it (it talks to PID 1 through /run/systemd/private), for at most
    /// `limit`.
    fn systemctl(&self, args: &[&str], limit: Duration) -> Output {
        run_for(
            Command::new("nsenter")
                .arg(format!("--target={}", self.pid1))
                .args(["--mount", "--pid", "--uts", "--", "systemctl"])
                .args(args),
            limit,
        )
    }

    /// `systemctl ARGS` in the container, which must succeed; its standard output.
    fn systemctl_ok(&self, args: &[&str]) -> String {
        ok(
            "systemctl",
            args,
            self.systemctl(args, Duration::from_secs(120)),
        )
    }

    /// `findmnt ARGS` in the container: a process of PID 1's mount namespace other than the
    /// daemon, as containerd is.
    fn findmnt(&self, args: &[&str]) -> String {
        let out = run_for(
            Command::new("nsenter")
                .arg(format!("--target={}", self.pid1))
                .args(["--mount", "--pid", "--uts", "--", "findmnt"])
                .args(args),
            Duration::from_secs(30),
        );
        ok("findmnt", args, out)
    }

    /// Waits until the container's systemd has finished booting.
    fn wait_booted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.systemctl(&["is-system-running"], Duration::from_secs(30));
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            match state.as_str() {
                "running" => return,
                "degraded" => panic!(
                    "the container booted degraded:\n{}",
                    self.systemctl_ok(&["--failed", "--no-pager"])
                ),
                _ => {}
            }
            if let Some(status) = self.nspawn.try_wait().unwrap() {
                panic!("systemd-nspawn exited with {status}:\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the container did not finish booting within 120 s (state {state:?}):\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A path inside the container, as the host reaches it (through PID 1's root).
    fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid1))
    }

    /// The mount points of PID 1's mount namespace, as the container names them.
    fn pid1_mount_points(&self) -> Vec<String> {
        mount_points(&format!("/proc/{}/mountinfo", self.pid1))
    }

    fn journal(&self, unit: &str) -> String {
        let out = run_for(
            Command::new("nsenter")
                .arg(format!("--target={}", self.pid1))
                .args(["--mount", "--pid", "--uts", "--", "journalctl"])
                .args(["--no-pager", "--unit", unit]),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- nspawn stdout ---\n{}\n--- nspawn stderr ---\n{}",
            read(&self.log),
            read(&self.log.with_extension("err"))
        )
    }

    /// SIGRTMIN+4 is systemd's "power off" (systemd(1)): a clean shutdown, units stopped in
    /// order, then nspawn exits. Killed if that takes more than 60 s.
    fn power_off(&mut self) {
        if self.nspawn.try_wait().unwrap().is_some() {
            return;
        }
        let out = run_for(
            Command::new("kill")
                .args(["-s", "RTMIN+4"])
                .arg(self.pid1.to_string()),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "kill -s RTMIN+4: {out:?}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.nspawn.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "the container did not power off within 60 s:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to PID 1 ends every process of its PID namespace; nspawn then exits.
    fn kill(&mut self) {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.pid1 as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.nspawn.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.nspawn.try_wait().unwrap().is_none() {
            if std::thread::panicking() {
                self.kill();
            } else {
                self.power_off();
            }
        }
    }
}

/// With `--keep-unit` and no systemd on the host, nspawn makes the container's cgroups
/// (`payload`, `supervisor`) under its own, in the named systemd hierarchy and the unified
/// one, and leaves them behind. Started in a cgroup of its own, two runs do not share them and
/// nothing is left: removed, deepest first, when dropped.
struct OwnCgroup {
    dirs: Vec<PathBuf>,
}

impl OwnCgroup {
    fn new() -> OwnCgroup {
        let name = format!("imagecache-systemd-boot-{}", std::process::id());
        let dirs: Vec<PathBuf> = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"]
            .iter()
            .map(|h| Path::new(h).join(&name))
            .filter(|d| d.parent().unwrap().join("cgroup.procs").exists())
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        OwnCgroup { dirs }
    }

    /// Each cgroup's `cgroup.procs`, open for writing: a process writing "0" moves in.
    fn procs_files(&self) -> Vec<std::fs::File> {
        self.dirs
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .unwrap()
            })
            .collect()
    }
}

impl Drop for OwnCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let mut all: Vec<PathBuf> = Vec::new();
            let mut todo = vec![dir.clone()];
            while let Some(d) = todo.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        todo.push(e.path());
                    }
                }
                all.push(d);
            }
            // Deepest first; a cgroup whose last process just exited may be busy a moment.
            all.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in all {
                let deadline = Instant::now() + Duration::from_secs(10);
                while let Err(e) = std::fs::remove_dir(&d) {
                    if Instant::now() > deadline {
                        eprintln!("cannot remove cgroup {}: {e}", d.display());
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Runs `f` on a thread of its own that has entered `pid`'s mount namespace (after leaving
/// the filesystem context it shared with the test's other threads, as setns(2) requires), and
/// returns what it returns. The thread ends with `f`: nothing else runs in that namespace.
fn in_mount_namespace_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    extern "C" {
        fn unshare(flags: i32) -> i32;
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    const CLONE_FS: i32 = 0x0000_0200;
    const CLONE_NEWNS: i32 = 0x0002_0000;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: plain system calls on this thread's own attributes, with a valid fd.
                let unshared = unsafe { unshare(CLONE_FS) };
                assert_eq!(
                    unshared,
                    0,
                    "unshare(CLONE_FS): {}",
                    std::io::Error::last_os_error()
                );
                // SAFETY: as above; `ns` is open for the whole call.
                let entered = unsafe { setns(ns.as_raw_fd(), CLONE_NEWNS) };
                assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|_| panic!("the thread in pid {pid}'s mount namespace failed"))
    })
}

/// The standard output of `program args`, which must have succeeded.
fn ok(program: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "{program} {args:?} in the container: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `losetup` lines of the loop devices whose backing file is on the filesystem holding
/// `path`. By device number, not by name: the host names a file the container attached by
/// its path in the container, which does not exist on the host.
fn loops_backed_on(path: &Path) -> Vec<String> {
    let dev = std::fs::metadata(path).unwrap().dev();
    let want = format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev));
    let out = run_for(
        Command::new("losetup").args([
            "--list",
            "--noheadings",
            "--output",
            "NAME,BACK-MAJ:MIN,BACK-FILE",
        ]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "losetup: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .map(str::to_owned)
        .collect()
}

/// The mount points (field 5) of a mountinfo file.
fn mount_points(mountinfo: &str) -> Vec<String> {
    std::fs::read_to_string(mountinfo)
        .unwrap_or_else(|e| panic!("{mountinfo}: {e}"))
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// An overlay of the cached tree with its upper layer on the scratch filesystem: each boot
/// starts from the tree as debootstrap left it, and the tree is never written.
struct RootOverlay {
    path: PathBuf,
}

impl RootOverlay {
    fn mount(tree: &Path, under: &Path) -> RootOverlay {
        let (upper, work, path) = (under.join("upper"), under.join("work"), under.join("root"));
        for d in [&upper, &work, &path] {
            std::fs::create_dir_all(d).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            upper.display(),
            work.display()
        );
        use imagecache::sys::{LinuxSys, MountOptions, Sys};
        LinuxSys
            .mount(
                Path::new("overlay"),
                &path,
                "overlay",
                MountOptions::default(),
                &data,
            )
            .unwrap_or_else(|e| panic!("overlay of {}: {e}", tree.display()));
        RootOverlay { path }
    }
}

impl Drop for RootOverlay {
    fn drop(&mut self) {
        if let Err(e) = imagecache::sys::unmount_settled(&imagecache::sys::LinuxSys, &self.path) {
            eprintln!("unmount {}: {e}", self.path.display());
        }
    }
}

/// Puts the units as shipped, the daemon just built and a config naming the test registry
/// into the container's tree. The unit's ExecStart names /usr/local/bin/imagecached and
/// --config /etc/imagecache/config.toml: the files go exactly there, and the unit is not
/// edited at all.
fn install(root: &Path, registry: &str) {
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for unit in ["imagecached.service", "imagecached.socket"] {
        std::fs::copy(repo().join("systemd").join(unit), units.join(unit)).unwrap();
    }
    let service = std::fs::read_to_string(units.join("imagecached.service")).unwrap();
    assert!(
        service
            .contains("ExecStart=/usr/local/bin/imagecached --config /etc/imagecache/config.toml"),
        "the unit's ExecStart changed: update this test's install()"
    );
    let bin = root.join("usr/local/bin/imagecached");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(DAEMON, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let etc = root.join("etc/imagecache");
    std::fs::create_dir_all(etc.join("secrets")).unwrap();
    std::fs::write(
        etc.join("config.toml"),
        format!("insecure_registries = [{registry:?}]\n"),
    )
    .unwrap();
}

/// Makes /dev/loop-control and /dev/loopN nodes in the container's /dev. nspawn's /dev is a
/// tmpfs with a handful of nodes, and no udev fills it: the daemon's LOOP_CTL_GET_FREE answers
/// with the lowest free loop number on the whole machine, and the daemon then opens
/// /dev/loopN, so every number it may be given needs a node. Loop devices are made on demand
/// (the kernel's loop numbers grow past those in use), so nodes go up to the highest number
/// in use now plus 512: more than other tests can bind while this one runs. The container's
/// device cgroup is the host's root one (no systemd on the host gives nspawn a scope), so the
/// nodes open.
fn make_loop_nodes(container: &Container) {
    use rustix::fs::{makedev, mknodat, FileType, Mode, CWD};
    let highest = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("loop")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    let dev = container.host_path("/dev");
    let node = |name: String, kind: FileType, major: u32, minor: u32| {
        mknodat(
            CWD,
            dev.join(&name),
            kind,
            Mode::from_raw_mode(0o660),
            makedev(major, minor),
        )
        .unwrap_or_else(|e| panic!("mknod /dev/{name} in the container: {e}"));
    };
    node("loop-control".into(), FileType::CharacterDevice, 10, 237);
    for n in 0..=highest + 512 {
        node(format!("loop{n}"), FileType::BlockDevice, 7, n);
    }
}

/// The imagecache CLI against the daemon in the container, through PID 1's root.
fn cli(container: &Container, args: &[&str]) -> Value {
    let out = run_for(
        Command::new(CLI)
            .arg("--socket")
            .arg(container.host_path(API_SOCKET))
            .args(args),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "imagecache {args:?}: {}\n{}\n--- daemon's journal ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        container.journal("imagecached.service")
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `systemctl show -p NAME --value imagecached.service`.
fn service_property(container: &Container, name: &str) -> String {
    container
        .systemctl_ok(&["show", "-p", name, "--value", "imagecached.service"])
        .trim()
        .to_owned()
}

/// The host's pid of the process the container numbers `pid` (its NSpid's last field).
fn host_pid(container: &Container, pid: u32) -> u32 {
    let want_ns = std::fs::read_link(format!("/proc/{}/ns/pid", container.pid1)).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(host) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(format!("/proc/{host}/ns/pid")).ok() != Some(want_ns.clone()) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap_or_default();
        let inner = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u32>().ok());
        if inner == Some(pid) {
            return host;
        }
    }
    panic!("no host process for the container's pid {pid}");
}

#[test]
fn the_shipped_unit_mounts_disks_where_pid_1_and_containerd_see_them() {
    let started = Instant::now();
    let tree = debian_tree();
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    let set = feature_set(9);
    let refs = set.push_all(&addr, None);
    let state = scratch.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // Whatever mode it had, systemd's StateDirectoryMode= is to set it.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = RootOverlay::mount(&tree, &scratch.path().join("rootfs"));
    install(&root.path, &addr);

    let mut container = Container::boot(&root.path, &state, scratch.path().join("nspawn.log"));
    container.wait_booted();
    let booted = started.elapsed();
    make_loop_nodes(&container);
    // As an operator would after installing the package (Also= enables the socket too).
    container.systemctl_ok(&["enable", "imagecached.service"]);
    container.systemctl_ok(&["start", "imagecached.socket", "imagecached.service"]);
    assert_eq!(
        service_property(&container, "ActiveState"),
        "active",
        "{}",
        container.journal("imagecached.service")
    );

    // A cache of two feature images, built under the unit's hardening.
    let yaml = cache_yaml("boot", &refs[..2], "  imageCacheSize: 20\n");
    let manifest = scratch.path().join("cache.yaml");
    std::fs::write(&manifest, yaml).unwrap();
    cli(
        &container,
        &["create", "-f", manifest.to_str().unwrap(), "--wait"],
    );
    let cache = cli(&container, &["get", "boot", "-o", "json"]);
    assert_eq!(cache["status"]["phase"], "Ready", "{cache:#}");

    // A disk cloned from it and mounted by the daemon.
    let disk = cli(
        &container,
        &["disk", "create", "--image", &refs[0], "-o", "json"],
    );
    assert_eq!(disk["status"]["phase"], "Ready", "{disk:#}");
    let disk_id = disk["metadata"]["name"].as_str().unwrap().to_owned();
    let mountpoint = disk["status"]["mountpoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no mountpoint: {disk:#}"))
        .to_owned();

    // The leak check at the end sees the devices the daemon attached in the container.
    let device = disk["status"]["device"].as_str().unwrap().to_owned();
    let loops = loops_backed_on(scratch.path());
    assert!(
        loops
            .iter()
            .any(|l| l.split_whitespace().next() == Some(device.as_str())),
        "{device} is not among the loop devices backed on the scratch filesystem: {loops:?}"
    );

    // In PID 1's mountinfo...
    let points = container.pid1_mount_points();
    assert!(
        points.contains(&mountpoint),
        "disk {disk_id} mounted at {mountpoint} by the daemon is not in the mount namespace \
         of the container's PID 1 (a unit setting gave the daemon its own): {points:#?}"
    );
    // The daemon's mount namespace is PID 1's (a unit setting that gives it one of its own
    // fails the check above first, with the symptom: the disk missing from PID 1's view).
    let main_pid: u32 = service_property(&container, "MainPID").parse().unwrap();
    let daemon = host_pid(&container, main_pid);
    let ns = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_eq!(
        ns(daemon),
        ns(container.pid1),
        "the unit runs the daemon in a mount namespace of its own"
    );

    // ...and for any other process of that namespace, as containerd would be: mounted ext4,
    // holding the pod's image exactly as the registry has it.
    let fstype = container.findmnt(&[
        "--noheadings",
        "--output",
        "FSTYPE",
        "--mountpoint",
        &mountpoint,
    ]);
    assert_eq!(
        fstype.trim(),
        "ext4",
        "findmnt in the container: {fstype:?}"
    );
    let alpha = set.get("alpha");
    let chain = alpha.artifact.host_image().chain_ids();
    let seen = in_mount_namespace_of(container.pid1, || {
        // The container's /run: the scratch filesystem is not in that namespace.
        let merged = mount_chain(
            Path::new(&mountpoint),
            &chain,
            Path::new("/run/merged-alpha"),
        );
        walk(&merged.path)
    });
    assert_tree_eq("alpha", &alpha.expected, &seen);

    // StateDirectoryMode= applied to the state root systemd was given.
    let mode = std::fs::metadata(&state).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "state root mode {mode:o}");

    // Deleting the disk unmounts it where it was seen.
    cli(&container, &["disk", "delete", &disk_id]);
    assert!(
        !container.pid1_mount_points().contains(&mountpoint),
        "disk {disk_id} still mounted at {mountpoint} after its delete"
    );
    container.systemctl_ok(&["stop", "imagecached.service"]);
    // A call outside the unit's system call filter kills the daemon (SIGSYS) and systemd
    // restarts it: none may have happened.
    assert_eq!(
        service_property(&container, "NRestarts"),
        "0",
        "{}",
        container.journal("imagecached.service")
    );
    assert_eq!(
        service_property(&container, "Result"),
        "success",
        "{}",
        container.journal("imagecached.service")
    );
    let state_mounts: Vec<String> = container
        .pid1_mount_points()
        .into_iter()
        .filter(|p| p.starts_with(&format!("{STATE_ROOT}/")))
        .collect();
    assert!(
        state_mounts.is_empty(),
        "mounts left under the state root: {state_mounts:?}"
    );

    // The container's mounts die with it, and loop devices set to autoclear with them: the
    // daemon must have detached its own before it stopped.
    let loops = loops_backed_on(scratch.path());
    assert!(loops.is_empty(), "loop devices left attached: {loops:?}");

    container.power_off();
    drop(container);
    drop(root);
    assert_no_leaks(&state);
    assert_no_leaks(&scratch.path().join("rootfs"));
    let loops = loops_backed_on(scratch.path());
    assert!(loops.is_empty(), "loop devices left attached: {loops:?}");
    eprintln!("booted in {booted:?}; whole test {:?}", started.elapsed());
}
