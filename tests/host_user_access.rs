//! What a host user without privileges can reach of the daemon's (root, a real daemon,
//! registry and containerd on 127.0.0.1): nothing. As uid 65534 every path the daemon made
//! (the state root, state.db, frozen and grown images, snapshot dirs, cache mounts and the
//! layers in them, disk files and disk mounts, containerd's upper dirs, a setuid binary and a
//! device node of an image) refuses to be listed, read, executed or opened with EACCES, while
//! the same image's setuid binary still runs as root inside a container started through CRI.
//! The directories above the state root are opened up first, so only the daemon's own modes
//! stand in the way; a control path beside them shows the probe can succeed.
//!
//! The snapshotter socket serves root alone: a socket file made looser than the daemon makes
//! it does not let another user in, the connection is refused before a request is read.

mod snapshotter_util;
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_cri::v1::{Int64Value, LinuxContainerConfig, LinuxContainerSecurityContext};
use snapshotter_util::*;
use support::busybox::{busybox_layer, image_with_cmd};
use support::cri::{container_config, wait_log_match, Cri};
use support::daemon::TestDaemon;
use support::gen::model::LayerSpec;
use support::oci::{Compression, Image};
use support::scratch::{assert_no_leaks, ScratchXfs};

const NOBODY: &str = "65534";

/// Tries, as uid 65534 with no groups, what argv's `KIND:PATH` pairs allow for their kind
/// (dir: list and open; file: open; exe: open and execute; dev: open) and prints each result
/// (`ok` or the errno's name) as JSON.
const PROBE: &str = r#"
import errno, json, os, subprocess, sys
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def run(path):
    subprocess.run([path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
out = {}
for arg in sys.argv[1:]:
    kind, path = arg.split(":", 1)
    r = {"open": attempt(lambda: os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK)))}
    if kind == "dir":
        r["list"] = attempt(lambda: os.listdir(path))
    if kind == "exe":
        r["exec"] = attempt(lambda: run(path))
    out[arg] = r
print(json.dumps(out))
"#;

/// Each `(kind, path)` probed as uid 65534: path -> operation -> outcome.
fn probe_as_nobody(paths: &[(&str, PathBuf)]) -> BTreeMap<String, BTreeMap<String, String>> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            // Debian's, by path: a python3 first on root's PATH may live where uid 65534
            // cannot reach (pyenv under /root).
            "/usr/bin/python3",
            "-c",
            PROBE,
        ])
        .args(paths.iter().map(|(k, p)| format!("{k}:{}", p.display())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A static program that prints its real and effective uids: setuid root, it shows whether
/// the kernel honoured the bit.
fn euid_program(dir: &Path) -> Vec<u8> {
    let source = dir.join("euid.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n#include <unistd.h>\n\
         int main(void) { printf(\"uid=%d euid=%d\\n\", (int)getuid(), (int)geteuid()); return 0; }\n",
    )
    .unwrap();
    let binary = dir.join("euid");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(binary).unwrap()
}

/// busybox, and a layer with a setuid-root program, a device node and a private file.
fn tenant_image(euid: Vec<u8>) -> Image {
    let mut own = LayerSpec::new(Compression::Gzip);
    own.file("bin/euid", euid).mode(0o4755).owner(0, 0);
    own.char_dev("dev/tenant-null", 1, 3).mode(0o666);
    own.dir("etc");
    own.file(
        "etc/tenant-secret",
        "not for other users\n".as_bytes().to_vec(),
    )
    .mode(0o644);
    image_with_cmd(
        vec![busybox_layer().to_layer(), own.to_layer()],
        &["/bin/sh"],
    )
}

/// Gives `dir` and its ancestors up to `/` the search bit for everyone, so that only what
/// lies beneath decides.
fn open_up_to(dir: &Path) {
    for level in dir.ancestors() {
        let mode = std::fs::metadata(level).unwrap().mode() & 0o7777;
        std::fs::set_permissions(level, std::fs::Permissions::from_mode(mode | 0o555)).unwrap();
    }
}

fn children(dir: &Path) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    all.sort();
    all
}

/// Runs `/bin/euid` as uid 1000 in a container of `image`; its output line.
fn euid_in_container(
    cri: &Cri,
    pod: &str,
    pod_config: &k8s_cri::v1::PodSandboxConfig,
    image: &str,
) -> String {
    let log_path = "euid/0.log";
    let mut config = container_config(
        "euid",
        image,
        &["/bin/sh", "-c", "/bin/euid; echo END"],
        &[],
        &[],
        log_path,
    );
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            run_as_user: Some(Int64Value { value: 1000 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = cri
        .try_create_container_with(pod, pod_config, config)
        .unwrap_or_else(|e| panic!("CreateContainer euid: {e}"));
    cri.start_container(&id);
    let log = Cri::log_file(pod_config, log_path);
    wait_log_match(&log, Duration::from_secs(60), |l| l == "END");
    wait_for("the container to exit", Duration::from_secs(30), || {
        cri.container_status(&id).finished_at != 0
    });
    support::cri::container_log(&log)
        .into_iter()
        .next()
        .unwrap_or_default()
}

#[test]
fn a_host_user_reaches_nothing_the_daemon_made_and_setuid_still_works_in_containers() {
    let build = tempfile::tempdir().unwrap();
    let image = tenant_image(euid_program(build.path()));
    let chain = image.chain_ids();
    let node = node_with_cache(&[("tenant", &image)]);
    let image_ref = node.image_ref("tenant");
    let root = node.daemon.root.clone();
    open_up_to(node.scratch.path());
    let control = node.scratch.path().join("control");
    std::fs::create_dir(&control).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy("/bin/busybox", control.join("true")).unwrap();
    std::fs::set_permissions(control.join("true"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let cache_id = node.daemon.cache_id("node-images");
    // Larger than the cache: a grown image backs it.
    let disk: serde_json::Value = serde_json::from_str(&node.daemon.cli_ok(&[
        "disk", "create", "--image", &image_ref, "--cache", &cache_id, "--size", "24", "-o", "json",
    ]))
    .unwrap();
    let disk_id = disk["metadata"]["name"].as_str().unwrap().to_owned();
    let disk_mount = PathBuf::from(disk["status"]["mountpoint"].as_str().unwrap());

    let containerd = node.containerd();
    let cri = containerd.cri();
    let pod_config = cri.pod_config("tenant", "uid-tenant", "default");
    let pod = cri.run_pod_sandbox_with(&pod_config);
    cri.pull_image(&image_ref);
    let line = euid_in_container(&cri, &pod, &pod_config, &image_ref);
    assert_eq!(
        line, "uid=1000 euid=0",
        "the image's setuid binary, in its container"
    );

    // Every kind of path the daemon made, checked to exist as root first: EACCES as nobody
    // means the modes refused it, not a wrong path.
    let frozen_dirs = children(&root.join("snapshots/sha256"));
    let frozen = frozen_dirs
        .iter()
        .find(|d| d.join("disk.img").exists())
        .expect("a frozen snapshot")
        .clone();
    let grown = children(&root.join("snapshots/grown"))
        .into_iter()
        .flat_map(|d| children(&d))
        .find(|f| f.extension().is_some_and(|e| e == "img"))
        .expect("a grown image for the larger disk");
    let cache_mounts = children(&root.join("snapshotter/caches"));
    let cache_mount = cache_mounts
        .first()
        .expect("a cache image mounted for containerd");
    let layer = |fs_root: &Path| fs_root.join("snapshots").join(&chain[1]).join("fs");
    let uppers: Vec<PathBuf> = children(&root.join("snapshotter/snapshots"))
        .into_iter()
        .map(|d| d.join("fs"))
        .filter(|fs| fs.is_dir() && !fs.is_symlink())
        .collect();
    assert!(!uppers.is_empty(), "no upper directory on the node");
    let mut paths: Vec<(&str, PathBuf)> = vec![
        ("dir", root.clone()),
        ("file", root.join("state.db")),
        ("dir", root.join("snapshots")),
        ("dir", frozen.clone()),
        ("file", frozen.join("disk.img")),
        ("file", frozen.join("manifest.json")),
        ("file", grown),
        ("dir", root.join("disks")),
        ("file", root.join("disks").join(format!("{disk_id}.img"))),
        ("dir", root.join("snapshotter")),
        ("dir", cache_mount.clone()),
        ("dir", layer(cache_mount)),
        ("exe", layer(cache_mount).join("bin/euid")),
        ("dev", layer(cache_mount).join("dev/tenant-null")),
        ("file", layer(cache_mount).join("etc/tenant-secret")),
        ("dir", disk_mount.clone()),
        ("dir", layer(&disk_mount)),
        ("exe", layer(&disk_mount).join("bin/euid")),
        ("dev", layer(&disk_mount).join("dev/tenant-null")),
    ];
    paths.extend(uppers.iter().map(|u| ("dir", u.clone())));
    for (kind, path) in &paths {
        let meta = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{} is not there for root: {e}", path.display()));
        match *kind {
            "dir" => assert!(meta.is_dir(), "{}", path.display()),
            "dev" => assert!(meta.file_type().is_char_device(), "{}", path.display()),
            "exe" => assert_eq!(meta.mode() & 0o4000, 0o4000, "{} setuid", path.display()),
            _ => assert!(meta.is_file(), "{}", path.display()),
        }
    }
    let seen = probe_as_nobody(&paths);
    let reached: Vec<String> = seen
        .iter()
        .flat_map(|(path, ops)| {
            ops.iter()
                .filter(|(_, outcome)| *outcome != "EACCES")
                .map(move |(op, outcome)| format!("{op} {path}: {outcome}"))
        })
        .collect();
    assert_eq!(seen.len(), paths.len(), "{seen:?}");
    assert!(
        reached.is_empty(),
        "uid {NOBODY} got further than EACCES:\n{}",
        reached.join("\n")
    );
    let controls = [("dir", control.clone()), ("exe", control.join("true"))];
    let seen = probe_as_nobody(&controls);
    assert!(
        seen.values()
            .flat_map(|ops| ops.values())
            .all(|o| o == "ok"),
        "the probe cannot succeed even where it may: {seen:?}"
    );

    let images = [image_ref.clone(), node.image_ref("pause")];
    remove_pod_and_images(&containerd, &cri, &pod, &images);
    drop(cri);
    drop(containerd);
    node.daemon.cli_ok(&["disk", "delete", &disk_id]);
    assert_node_clean(node);
}

/// A gRPC List over `socket` with curl, as `uid` (None: root); the HTTP status curl saw
/// ("000" when the connection closed without an answer).
fn grpc_list(socket: &Path, uid: Option<&str>) -> String {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "curl",
            ]);
            c
        }
        None => Command::new("curl"),
    };
    // An empty ListSnapshotsRequest, framed: no compression, length 0.
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), [0u8; 5]).unwrap();
    std::fs::set_permissions(body.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cmd
        .args([
            "-s",
            "--max-time",
            "20",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", "--unix-socket"])
        .arg(socket)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", body.path().display()))
        .arg("http://localhost/containerd.services.snapshots.v1.Snapshots/List")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_snapshotter_socket_refuses_every_user_but_root() {
    let scratch = ScratchXfs::new(4 << 30);
    let daemon = TestDaemon::start(&scratch.path().join("state"), &[]);
    let socket = daemon.snapshotter_socket();
    let mode = std::fs::metadata(&socket).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the snapshotter socket is root's");
    assert_eq!(grpc_list(&socket, None), "200", "root is served");

    // A socket file made looser than the daemon makes it (by hand, or by a directory with
    // other rules): the connection itself is refused.
    open_up_to(socket.parent().unwrap());
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(
        grpc_list(&socket, Some(NOBODY)),
        "000",
        "uid {NOBODY} was answered"
    );
    assert!(
        daemon.log().contains(
            "snapshotter connection refused: only root (containerd) may use the snapshotter"
        ),
        "{}",
        daemon.log()
    );
    assert_eq!(grpc_list(&socket, None), "200", "root is still served");
    let dir = scratch.path().to_owned();
    drop(daemon);
    assert_no_leaks(&dir.join("state"));
}
