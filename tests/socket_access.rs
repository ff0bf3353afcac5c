//! Who may use the API, through a real daemon (root). The socket is 0660 with the configured
//! `socket_group`; each request's caller gets a role from its connection's credentials
//! (SO_PEERCRED, SO_PEERGROUPS): root and `admin_group` may do everything, `socket_group` may
//! read (GET and HEAD) and gets a 403 Status on every write route, anyone else gets a 403 on
//! everything, also through a socket made looser than ours (as a systemd unit might).
//! Supplementary groups count, as the kernel recorded them when the caller connected, not as
//! `/proc/<pid>/status` shows them later. Requests that change something are logged with the
//! caller's uid and pid, refused ones with its uid, gid and pid; pull-secret files readable by
//! every user draw a warning naming the file.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imagecache::api::peer::group_id;
use serde_json::Value;
use support::daemon::{cache_yaml, TestDaemon};
use support::gen::LayerSpec;
use support::oci::{push_image, Compression, Image, ManifestFormat};
use support::registry::TestRegistry;
use support::scratch::{assert_no_leaks, ScratchXfs};

const GROUP: &str = "users";
/// `admin_group` in the roles test (Debian's `staff`, which no test user is in).
const ADMIN_GROUP: &str = "staff";
const NOBODY: &str = "65534";

const IMAGECACHES: &str = "/apis/imagecache.io/v1/imagecaches";
const ECI_IMAGECACHES: &str = "/apis/eci.alibabacloud.com/v1/imagecaches";
const EKS_IMAGECACHES: &str = "/apis/eks.cloud.tencent.com/v1/imagecaches";
const DISKS: &str = "/apis/imagecache.io/v1/disks";

/// The log without its colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        match rest.find('m') {
            Some(end) => rest = &rest[end + 1..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// A daemon whose config names `GROUP` as the socket's group.
fn daemon_with_group(scratch: &ScratchXfs) -> TestDaemon {
    daemon_with_groups(scratch, &[], None)
}

/// A daemon trusting `registries`, whose config names `GROUP` as the socket's group and
/// `admin_group` as the admins'.
fn daemon_with_groups(
    scratch: &ScratchXfs,
    registries: &[&str],
    admin_group: Option<&str>,
) -> TestDaemon {
    let mut daemon = TestDaemon::start(&scratch.path().join("state"), registries);
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&daemon.config_path)
        .unwrap();
    writeln!(config, "socket_group = {GROUP:?}").unwrap();
    if let Some(group) = admin_group {
        writeln!(config, "admin_group = {group:?}").unwrap();
    }
    daemon.stop();
    daemon.spawn();
    daemon
}

/// `GET /apis/imagecache.io/v1/imagecaches` as uid 65534 with `ids` (setpriv options for the
/// group ids); the answer's JSON.
fn list_as(daemon: &TestDaemon, ids: &[&str]) -> serde_json::Value {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .args(ids)
        .args(["curl", "-sS", "--unix-socket"])
        .arg(&daemon.socket)
        .arg("http://localhost/apis/imagecache.io/v1/imagecaches")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl as {NOBODY} {ids:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn only_root_and_the_socket_group_may_use_the_api() {
    let scratch = ScratchXfs::new(4 << 30);
    let mut daemon = daemon_with_group(&scratch);
    let gid = group_id(GROUP).unwrap();

    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, gid));
    daemon.cli_ok(&["get"]);

    // Let any user reach the socket, as a looser socket than ours would: the check holds.
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();

    let refused = list_as(&daemon, &[&format!("--regid={NOBODY}"), "--clear-groups"]);
    assert_eq!(refused["kind"], "Status", "{refused:#}");
    assert_eq!(refused["code"], 403, "{refused:#}");
    assert_eq!(refused["reason"], "Forbidden", "{refused:#}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains(GROUP) && message.contains("socket_group"),
        "{message}"
    );
    assert!(plain(&daemon.log()).contains("API request refused"));

    // A member of the group, as a supplementary group and as the primary one.
    let supplementary = list_as(
        &daemon,
        &[&format!("--regid={NOBODY}"), &format!("--groups={gid}")],
    );
    assert_eq!(supplementary["kind"], "ImageCacheList", "{supplementary:#}");
    let primary = list_as(&daemon, &[&format!("--regid={gid}"), "--clear-groups"]);
    assert_eq!(primary["kind"], "ImageCacheList", "{primary:#}");

    // Requests that change something name their caller in the log; reads do not.
    let before = plain(&daemon.log()).matches("API request uid").count();
    let out = daemon.create(
        &cache_yaml("logged", &["127.0.0.1:1/nothing:here".to_owned()], ""),
        false,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.cli_ok(&["get"]);
    let log = plain(&daemon.log());
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("API request uid"))
        .collect();
    assert_eq!(lines.len(), before + 1, "{lines:#?}");
    let last = lines.last().unwrap();
    assert!(
        last.contains("uid=0") && last.contains("pid=Some(") && last.contains("method=POST"),
        "{last}"
    );

    daemon.stop();
    assert_no_leaks(&daemon.root);
}

#[test]
fn world_readable_pull_secrets_draw_a_warning_naming_the_file() {
    let scratch = ScratchXfs::new(4 << 30);
    let mut daemon = TestDaemon::start(&scratch.path().join("state"), &[]);
    daemon.write_pull_secret("ns", "open", "127.0.0.1:1", "user", "s3cret-pass");
    daemon.write_pull_secret("ns", "closed", "127.0.0.1:1", "user", "s3cret-pass");
    let file = |name: &str| {
        daemon
            .secrets_dir
            .join("ns")
            .join(name)
            .join(".dockerconfigjson")
    };
    std::fs::set_permissions(file("open"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(file("closed"), std::fs::Permissions::from_mode(0o600)).unwrap();

    for secret in ["open", "closed"] {
        let yaml = cache_yaml(
            secret,
            &["127.0.0.1:1/nothing:here".to_owned()],
            &format!("  imagePullSecrets:\n    - ns/{secret}\n"),
        );
        let out = daemon.create(&yaml, true);
        assert!(!out.status.success(), "nothing listens on 127.0.0.1:1");
    }
    let log = plain(&daemon.log());
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("readable by every user"))
        .collect();
    assert!(!warnings.is_empty(), "{log}");
    for w in &warnings {
        assert!(w.contains(&file("open").display().to_string()), "{w}");
        assert!(!w.contains("closed"), "{w}");
    }
    assert!(!log.contains("s3cret-pass"), "a password reached the log");
    daemon.stop();
    assert_no_leaks(&daemon.root);
}

/// Who sends a request: root, or uid and primary gid 65534 with only the given supplementary
/// groups (setpriv's options).
struct Caller {
    setpriv: Vec<String>,
}

impl Caller {
    fn root() -> Caller {
        Caller {
            setpriv: Vec::new(),
        }
    }

    fn nobody_in(groups: &[u32]) -> Caller {
        let groups = if groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            let ids: Vec<String> = groups.iter().map(u32::to_string).collect();
            format!("--groups={}", ids.join(","))
        };
        Caller {
            setpriv: vec![
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                groups,
            ],
        }
    }
}

/// An HTTP answer: its status code and body.
struct Answer {
    code: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `method path` (with a JSON `body`) as `caller`, through curl; `None` when the socket refused
/// the connection itself (curl's "could not connect": the socket file's mode kept it out).
fn call(
    daemon: &TestDaemon,
    caller: &Caller,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<Answer> {
    let mut curl = if caller.setpriv.is_empty() {
        Command::new("curl")
    } else {
        let mut setpriv = Command::new("setpriv");
        setpriv.args(&caller.setpriv).arg("curl");
        setpriv
    };
    curl.args(["-sS", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&daemon.socket);
    if method == "HEAD" {
        curl.arg("--head");
    } else {
        curl.args(["-X", method]);
    }
    if let Some(body) = body {
        curl.args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = curl
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    if out.status.code() == Some(7) {
        return None;
    }
    assert!(
        out.status.success(),
        "curl {method} {path} as {:?}: {}",
        caller.setpriv,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    Some(Answer {
        code: code.trim().parse().unwrap(),
        body: body.to_owned(),
    })
}

/// `call`, for a caller the socket file lets in.
fn answer(
    daemon: &TestDaemon,
    caller: &Caller,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    call(daemon, caller, method, path, body)
        .unwrap_or_else(|| panic!("{method} {path}: {:?} could not connect", caller.setpriv))
}

/// A 403 Kubernetes Status whose message contains every one of `needles`.
fn assert_forbidden(answer: &Answer, needles: &[&str], what: &str) {
    assert_eq!(answer.code, 403, "{what}: {}", answer.body);
    let status = answer.json();
    assert_eq!(status["kind"], "Status", "{what}: {status:#}");
    assert_eq!(status["reason"], "Forbidden", "{what}: {status:#}");
    assert_eq!(status["code"], 403, "{what}: {status:#}");
    let message = status["message"].as_str().unwrap();
    for needle in needles {
        assert!(
            message.contains(needle),
            "{what}: {needle:?} not in {message:?}"
        );
    }
}

fn tiny_image() -> Image {
    let mut layer = LayerSpec::new(Compression::Gzip);
    layer.dir("etc");
    layer.file("etc/hostname", "roles\n");
    Image::new(vec![layer.to_layer()], ManifestFormat::Oci)
}

fn cache_json(api_version: &str, name: &str, image: &str) -> String {
    serde_json::json!({
        "apiVersion": api_version, "kind": "ImageCache", "metadata": {"name": name},
        "spec": {"images": [image], "imageCacheSize": 20}
    })
    .to_string()
}

fn disk_json(image: &str) -> String {
    serde_json::json!({
        "apiVersion": "imagecache.io/v1", "kind": "Disk",
        "spec": {"images": [image], "cacheId": "base"}
    })
    .to_string()
}

/// The names of the caches, and of the disks, the daemon lists (as root).
fn objects(daemon: &TestDaemon) -> (Vec<String>, Vec<String>) {
    let names = |path: &str| -> Vec<String> {
        let list = answer(daemon, &Caller::root(), "GET", path, None).json();
        list["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{path} lists no items: {list:#}"))
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    (names(IMAGECACHES), names(DISKS))
}

/// A connection to `socket` made by a thread of this process that runs as uid and gid 65534
/// with `groups`, and ends once connected. The kernel records those credentials on the socket;
/// SO_PEERCRED's pid is this process, whose `/proc/<pid>/status` shows its main thread's
/// (root's) groups instead.
fn connect_from_a_thread_in(socket: &Path, groups: Vec<u32>) -> UnixStream {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let nobody: libc::c_long = NOBODY.parse().unwrap();
        // Raw syscalls change the calling thread's credentials only; glibc's wrappers would
        // change every thread of the test process.
        // SAFETY: setgroups reads `groups.len()` ids from a live buffer; the others take ints.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, nobody, nobody, nobody),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, nobody, nobody, nobody),
                0
            );
        }
        UnixStream::connect(&socket).expect("the thread reaches the socket")
    })
    .join()
    .unwrap()
}

/// The status code of a bodiless `method path` sent over `stream`.
fn status_over(mut stream: UnixStream, method: &str, path: &str) -> u16 {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {reply:?}"))
}

#[test]
fn readers_read_and_only_admins_and_root_change_things() {
    let scratch = ScratchXfs::new(64 << 30);
    let registry = TestRegistry::start();
    let addr = registry.addr();
    push_image(&addr, "roles/tiny", "v1", &tiny_image(), None);
    let image = format!("{addr}/roles/tiny:v1");
    let mut daemon = daemon_with_groups(&scratch, &[&addr], Some(ADMIN_GROUP));
    let (readers, admins) = (group_id(GROUP).unwrap(), group_id(ADMIN_GROUP).unwrap());
    // Everyone may search the socket's directory: the socket file's own mode is under test.
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let meta = std::fs::metadata(&daemon.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, readers));

    // Root changes things: a Ready cache and a disk cloned from it, for the reads to find.
    let root = Caller::root();
    let body = cache_json("imagecache.io/v1", "base", &image);
    let created = answer(&daemon, &root, "POST", IMAGECACHES, Some(&body));
    assert_eq!(created.code, 201, "{}", created.body);
    let base = daemon.wait_until("base", Duration::from_secs(120), |c| {
        matches!(c["status"]["phase"].as_str(), Some("Ready" | "Failed"))
    });
    assert_eq!(base["status"]["phase"], "Ready", "{base:#}");
    let disk = answer(&daemon, &root, "POST", DISKS, Some(&disk_json(&image)));
    assert_eq!(disk.code, 201, "{}", disk.body);
    let disk_id = disk.json()["metadata"]["name"].as_str().unwrap().to_owned();
    let disk_path = format!("{DISKS}/{disk_id}");

    // A reader (socket_group as a supplementary group only) reads everything.
    let reader = Caller::nobody_in(&[readers]);
    let mut reads: Vec<(&str, String)> = Vec::new();
    for group in [IMAGECACHES, ECI_IMAGECACHES, EKS_IMAGECACHES] {
        reads.push(("GET", group.to_owned()));
        reads.push(("GET", format!("{group}/base")));
    }
    for path in [
        DISKS,
        &disk_path,
        "/apis/imagecache.io/v1/info",
        "/healthz",
        "/metrics",
        "/version",
    ] {
        reads.push(("GET", path.to_owned()));
    }
    reads.push(("HEAD", IMAGECACHES.to_owned()));
    reads.push(("HEAD", disk_path.clone()));
    for (method, path) in &reads {
        let got = answer(&daemon, &reader, method, path, None);
        assert_eq!(got.code, 200, "reader {method} {path}: {}", got.body);
    }
    // Reads reach the router: a path that does not exist is a 404.
    let missing = answer(
        &daemon,
        &reader,
        "GET",
        "/apis/imagecache.io/v1/nothing",
        None,
    );
    assert_eq!(missing.code, 404, "{}", missing.body);

    // ...and changes nothing: every write route, under every API group, is a 403 naming the
    // group and config key that would allow it, and so is any method but GET and HEAD on a
    // path no route has.
    let mut writes: Vec<(&str, String, Option<String>)> = Vec::new();
    for (i, (group, version)) in [
        (IMAGECACHES, "imagecache.io/v1"),
        (ECI_IMAGECACHES, "eci.alibabacloud.com/v1"),
        (EKS_IMAGECACHES, "eks.cloud.tencent.com/v1"),
    ]
    .into_iter()
    .enumerate()
    {
        let body = cache_json(version, &format!("by-reader-{i}"), &image);
        writes.push(("POST", group.to_owned(), Some(body)));
        writes.push(("DELETE", format!("{group}/base"), None));
    }
    writes.push(("POST", format!("{IMAGECACHES}/base/verify"), None));
    writes.push(("POST", DISKS.to_owned(), Some(disk_json(&image))));
    writes.push(("DELETE", disk_path.clone(), None));
    writes.push(("PUT", format!("{IMAGECACHES}/base"), Some(body.clone())));
    writes.push(("PATCH", disk_path.clone(), Some("{}".to_owned())));
    writes.push(("POST", "/apis/imagecache.io/v1/nothing".to_owned(), None));
    for (method, path, body) in &writes {
        let got = answer(&daemon, &reader, method, path, body.as_deref());
        let what = format!("reader {method} {path}");
        assert_forbidden(&got, &[ADMIN_GROUP, "admin_group", "may only read"], &what);
    }
    assert_eq!(
        objects(&daemon),
        (vec!["base".to_owned()], vec![disk_id.clone()]),
        "a reader's writes changed something"
    );
    let log = plain(&daemon.log());
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("API request refused"))
        .collect();
    assert_eq!(refused.len(), writes.len(), "{refused:#?}");
    for line in &refused {
        let ids = [
            format!("uid={NOBODY}"),
            format!("gid={NOBODY}"),
            "pid=Some(".into(),
        ];
        assert!(ids.iter().all(|id| line.contains(id.as_str())), "{line}");
    }

    // An admin (admin_group and socket_group, both supplementary) changes things.
    let admin = Caller::nobody_in(&[readers, admins]);
    let body = cache_json("imagecache.io/v1", "by-admin", "127.0.0.1:1/nothing:here");
    let created = answer(&daemon, &admin, "POST", IMAGECACHES, Some(&body));
    assert_eq!(created.code, 201, "{}", created.body);
    let verified = answer(
        &daemon,
        &admin,
        "POST",
        &format!("{IMAGECACHES}/base/verify"),
        None,
    );
    assert_eq!(verified.code, 200, "{}", verified.body);
    assert_eq!(verified.json()["ok"], true, "{}", verified.body);
    let disk = answer(&daemon, &admin, "POST", DISKS, Some(&disk_json(&image)));
    assert_eq!(disk.code, 201, "{}", disk.body);
    let admins_disk = format!(
        "{DISKS}/{}",
        disk.json()["metadata"]["name"].as_str().unwrap()
    );
    let deleted = answer(&daemon, &admin, "DELETE", &admins_disk, None);
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    let deleted = answer(
        &daemon,
        &admin,
        "DELETE",
        &format!("{ECI_IMAGECACHES}/by-admin"),
        None,
    );
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    let log = plain(&daemon.log());
    assert!(
        log.lines()
            .any(|l| l.contains("API request uid=65534") && l.contains("method=DELETE")),
        "an admin's write is logged with its uid"
    );

    // The socket file lets in socket_group only: an admin must be in it too, and a caller in
    // neither group cannot connect at all.
    for groups in [vec![admins], vec![]] {
        let caller = Caller::nobody_in(&groups);
        assert!(
            call(&daemon, &caller, "GET", "/version", None).is_none(),
            "{:?} reached the 0660 socket",
            caller.setpriv
        );
    }

    // The groups are the ones the kernel recorded when the caller connected (SO_PEERGROUPS),
    // not what /proc/<pid>/status shows for the pid SO_PEERCRED names: here that is this
    // process, whose main thread (root) is in neither group.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let groups_line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        !groups_line
            .split_whitespace()
            .any(|g| g == admins.to_string() || g == readers.to_string()),
        "{groups_line}: the check below needs a test process outside both groups"
    );
    let no_disk = format!("{DISKS}/disk-0000000000000000");
    let as_admin = connect_from_a_thread_in(&daemon.socket, vec![readers, admins]);
    assert_eq!(
        status_over(as_admin, "DELETE", &no_disk),
        404,
        "an admin's delete reaches the daemon"
    );
    let as_reader = connect_from_a_thread_in(&daemon.socket, vec![readers]);
    assert_eq!(status_over(as_reader, "DELETE", &no_disk), 403);
    let as_reader = connect_from_a_thread_in(&daemon.socket, vec![readers]);
    assert_eq!(status_over(as_reader, "GET", DISKS), 200);

    // Through a socket anyone may connect to, the daemon's check alone decides.
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let stranger = Caller::nobody_in(&[]);
    let got = answer(&daemon, &stranger, "GET", IMAGECACHES, None);
    assert_forbidden(&got, &[GROUP, "socket_group"], "stranger GET");
    let got = answer(&daemon, &stranger, "DELETE", &disk_path, None);
    assert_forbidden(&got, &[ADMIN_GROUP, "admin_group"], "stranger DELETE");
    let admin_only = Caller::nobody_in(&[admins]);
    let got = answer(&daemon, &admin_only, "GET", &disk_path, None);
    assert_eq!(got.code, 200, "{}", got.body);
    let got = answer(&daemon, &admin_only, "DELETE", &no_disk, None);
    assert_eq!(got.code, 404, "{}", got.body);

    // Root deletes what it made.
    let deleted = answer(&daemon, &root, "DELETE", &disk_path, None);
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    let deleted = answer(
        &daemon,
        &root,
        "DELETE",
        &format!("{EKS_IMAGECACHES}/base"),
        None,
    );
    assert_eq!(deleted.code, 200, "{}", deleted.body);
    assert_eq!(objects(&daemon), (vec![], vec![]));
    daemon.stop();
    assert_no_leaks(&daemon.root);
}

#[test]
fn without_admin_group_only_root_changes_things() {
    let scratch = ScratchXfs::new(4 << 30);
    let mut daemon = daemon_with_group(&scratch);
    let readers = group_id(GROUP).unwrap();
    let dir = daemon.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();

    let reader = Caller::nobody_in(&[readers]);
    let body = cache_json("imagecache.io/v1", "by-reader", "127.0.0.1:1/nothing:here");
    let got = answer(&daemon, &reader, "POST", IMAGECACHES, Some(&body));
    assert_forbidden(
        &got,
        &["needs root", "admin_group", "may only read"],
        "reader POST",
    );
    let got = answer(&daemon, &reader, "GET", IMAGECACHES, None);
    assert_eq!(got.code, 200, "{}", got.body);

    let body = cache_json("imagecache.io/v1", "by-root", "127.0.0.1:1/nothing:here");
    let got = answer(&daemon, &Caller::root(), "POST", IMAGECACHES, Some(&body));
    assert_eq!(got.code, 201, "{}", got.body);
    assert_eq!(objects(&daemon).0, ["by-root"]);
    daemon.stop();
    assert_no_leaks(&daemon.root);
}
