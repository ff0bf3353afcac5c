//! Who may use the API, through a real daemon (root): the socket is 0660 with the configured
//! `socket_group`; a caller that reaches it anyway (a socket made looser than ours, as a
//! systemd unit might) is checked with SO_PEERCRED: root and members of the group (primary or
//! supplementary) are served, anyone else gets a 403 Status; mutating requests are logged
//! with the caller's uid and pid; pull-secret files readable by every user draw a warning
//! naming the file.

mod support;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use imagecache::api::peer::group_id;
use support::daemon::{cache_yaml, TestDaemon};
use support::scratch::{assert_no_leaks, ScratchXfs};

const GROUP: &str = "users";
const NOBODY: &str = "65534";

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
    let mut daemon = TestDaemon::start(&scratch.path().join("state"), &[]);
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&daemon.config_path)
        .unwrap();
    writeln!(config, "socket_group = {GROUP:?}").unwrap();
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
