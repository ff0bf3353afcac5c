//! Who is calling: the API socket's peer credentials (SO_PEERCRED), checked on every request.
//!
//! The socket file is 0660 with the group `socket_group`, which already keeps others from
//! connecting; the check here holds when that file is not ours to set (a socket systemd
//! passed with other permissions, a directory with looser ones) and names the caller in the
//! log of every request that changes something.

use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::ApiError;

/// The peer of one connection, as the kernel saw it when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// `None` when the peer is in another PID namespace.
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: cred.pid(),
            },
            // Unknown callers get nothing: u32::MAX is no user and in no group.
            Err(e) => {
                warn!(error = %e, "cannot read the API caller's credentials; refusing it");
                Peer {
                    uid: u32::MAX,
                    gid: u32::MAX,
                    pid: None,
                }
            }
        }
    }
}

/// Who may call: root, and members of one group.
#[derive(Debug, Clone)]
pub struct Access {
    pub group_name: String,
    pub gid: u32,
}

impl Access {
    /// Whether `peer` is root or has the group, as its primary group or, read from
    /// `/proc/<pid>/status` while it is connected, a supplementary one.
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.gid == self.gid {
            return true;
        }
        peer.pid
            .and_then(supplementary_groups)
            .is_some_and(|groups| groups.contains(&self.gid))
    }
}

/// The `Groups:` line of `/proc/<pid>/status`.
fn supplementary_groups(pid: i32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    )
}

/// Middleware: refuses callers `access` does not allow with a 403 Status, and logs every
/// request that changes something with the caller's uid and pid.
pub async fn check(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    if !access.allows(&peer) {
        warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, method = %request.method(), path = %request.uri().path(), "API request refused: caller is neither root nor in the socket's group");
        return ApiError::Forbidden(format!(
            "user {} may not use the imagecache API: only root and members of group {:?} may (config socket_group)",
            peer.uid, access.group_name
        ))
        .into_response();
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        info!(uid = peer.uid, pid = ?peer.pid, method = %request.method(), path = %request.uri().path(), "API request");
    }
    next.run(request).await
}

/// The gid of group `name` in `/etc/group` (or `name` itself when it is a number).
pub fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to find group {name:?}: {e}"))?;
    groups
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(name)).then(|| fields.nth(1)?.parse().ok())?
        })
        .ok_or_else(|| {
            format!("group {name:?} (config socket_group) does not exist: create it (groupadd) or name another")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(gid: u32) -> Access {
        Access {
            group_name: "imagecache".into(),
            gid,
        }
    }

    #[test]
    fn root_and_the_group_may_call_others_not() {
        let a = access(4242);
        let peer = |uid, gid| Peer {
            uid,
            gid,
            pid: None,
        };
        assert!(a.allows(&peer(0, 0)));
        assert!(a.allows(&peer(1000, 4242)));
        assert!(!a.allows(&peer(1000, 1000)));
        assert!(!a.allows(&peer(u32::MAX, u32::MAX)));
    }

    #[test]
    fn supplementary_groups_count() {
        // This process's own groups, as the kernel reports them.
        let me = std::process::id() as i32;
        let groups = supplementary_groups(me).unwrap();
        let peer = Peer {
            uid: 1000,
            gid: 1000,
            pid: Some(me),
        };
        for g in groups {
            assert!(access(g).allows(&peer));
        }
        assert!(!access(4_000_000).allows(&peer));
    }

    #[test]
    fn group_names_resolve() {
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(group_id("1234"), Ok(1234));
        let err = group_id("no-such-group-here").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
    }
}
