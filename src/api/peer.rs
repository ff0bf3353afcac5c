//! Who is calling and what they may do: each API connection's peer credentials, checked on
//! every request against two roles.
//!
//! | caller                                              | role     | may                      |
//! |-----------------------------------------------------|----------|--------------------------|
//! | uid 0                                               | `Admin`  | every request            |
//! | in `admin_group` (primary or supplementary group)   | `Admin`  | every request            |
//! | in `socket_group` (primary or supplementary group)  | `Reader` | GET and HEAD             |
//! | anyone else                                         | `Nobody` | nothing                  |
//!
//! The line is the HTTP method, decided before routing: GET and HEAD read (get, list,
//! describe, info, metrics, version, healthz); every other method needs `Admin`, on any path.
//! So a route added later that changes something is an admin's from the start, and a reader's
//! POST to a path that does not exist is a 403, not a 404. `verify` (a POST) changes nothing
//! but re-reads a whole snapshot, up to the cache's size: left to readers, it would let any
//! of them keep the node's disks busy at will, so it is an admin's too (the daemon also runs
//! it as work, not as a read: `Action::is_read`).
//!
//! The socket file (0660, group `socket_group`) keeps everyone else from connecting, so an
//! admin must be in `socket_group` too to reach it. This check holds when the file is not ours
//! to set (a socket systemd passed with other permissions, a looser directory), and it is what
//! tells reading from changing, which a file mode cannot. The groups are the kernel's record
//! of the connecting process (SO_PEERCRED, SO_PEERGROUPS), taken when it connected: not
//! `/proc/<pid>/status`, which by the time a request arrives may describe another process.

use std::os::fd::AsFd;
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
use crate::sys::linux::peer_groups;

/// The peer of one connection, as the kernel saw it when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (SO_PEERGROUPS). Shared: every request of the connection gets a
    /// copy of the peer.
    pub groups: Arc<[u32]>,
    /// `None` when the peer is in another PID namespace.
    pub pid: Option<i32>,
}

impl Peer {
    /// No user and in no group: how a caller whose credentials cannot be read is treated.
    fn unknown() -> Peer {
        Peer {
            uid: u32::MAX,
            gid: u32::MAX,
            groups: Arc::from([]),
            pid: None,
        }
    }

    /// Whether `gid` is the peer's primary group or one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let socket = stream.io();
        let cred = match socket.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                warn!(error = %e, "cannot read the API caller's credentials; refusing it");
                return Peer::unknown();
            }
        };
        let groups = match peer_groups(socket.as_fd()) {
            Ok(groups) => Arc::from(groups),
            // Groups only ever add rights, so a caller judged without them gets no more than
            // it should.
            Err(e) => {
                warn!(uid = cred.uid(), error = %e, "cannot read the API caller's supplementary groups; judging it by its uid and primary group");
                Arc::from([])
            }
        };
        Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            groups,
            pid: cred.pid(),
        }
    }
}

/// What a caller may do, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Nothing: neither root nor in `socket_group` or `admin_group`.
    Nobody,
    /// GET and HEAD (`socket_group`).
    Reader,
    /// Every request (root, `admin_group`).
    Admin,
}

impl Role {
    /// The role a request with `method` needs: GET and HEAD only read, anything else may
    /// change something (or, as verify, load the node) and needs an admin.
    pub fn needed_for(method: &Method) -> Role {
        if method == Method::GET || method == Method::HEAD {
            Role::Reader
        } else {
            Role::Admin
        }
    }
}

/// A group named in the config, and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

impl Group {
    /// Group `name` (a name in `/etc/group`, or a number); `key` is the config key that named
    /// it, for the error.
    pub fn resolve(name: &str, key: &str) -> Result<Group, String> {
        let gid = group_id(name).map_err(|e| format!("config {key}: {e}"))?;
        Ok(Group {
            name: name.to_owned(),
            gid,
        })
    }
}

/// Who may do what: root may do everything, `admins` too, `readers` may read.
#[derive(Debug, Clone)]
pub struct Access {
    /// `socket_group`: may read.
    pub readers: Group,
    /// `admin_group`: may change things too. `None`: only root may.
    pub admins: Option<Group>,
}

impl Access {
    pub fn role_of(&self, peer: &Peer) -> Role {
        if peer.uid == 0 || self.admins.as_ref().is_some_and(|g| peer.in_group(g.gid)) {
            Role::Admin
        } else if peer.in_group(self.readers.gid) {
            Role::Reader
        } else {
            Role::Nobody
        }
    }

    /// Why `peer` may not make a request that needs `needed`, naming the groups and the config
    /// keys that would let it.
    fn refusal(&self, peer: &Peer, needed: Role, method: &Method, path: &str) -> String {
        let admins = match &self.admins {
            Some(g) => format!("root or members of group {:?} (config admin_group)", g.name),
            None => "root (config admin_group names no group whose members may too)".to_owned(),
        };
        if needed == Role::Reader {
            return format!(
                "user {} may not use the imagecache API: reading needs membership of group {:?} (config socket_group); changing things needs {admins}",
                peer.uid, self.readers.name
            );
        }
        let reader_note = if self.role_of(peer) == Role::Reader {
            format!(
                "; members of group {:?} (config socket_group) may only read",
                self.readers.name
            )
        } else {
            String::new()
        };
        format!(
            "user {} may not {method} {path}: changing things through the imagecache API needs {admins}{reader_note}",
            peer.uid
        )
    }
}

/// Middleware: refuses a request whose caller's role is below what its method needs with a
/// 403 Status saying which group and config key would allow it, and logs every request that
/// may change something with the caller's uid and pid.
pub async fn check(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let role = access.role_of(&peer);
    let needed = Role::needed_for(request.method());
    if role < needed {
        warn!(uid = peer.uid, gid = peer.gid, groups = ?peer.groups, pid = ?peer.pid, ?role, ?needed, method = %request.method(), path = %request.uri().path(), "API request refused: the caller's role is below what the request needs");
        return ApiError::Forbidden(access.refusal(
            &peer,
            needed,
            request.method(),
            request.uri().path(),
        ))
        .into_response();
    }
    if needed == Role::Admin {
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
            format!("group {name:?} does not exist: create it (groupadd) or name another")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const READERS: u32 = 4242;
    const ADMINS: u32 = 4343;
    const OTHER: u32 = 1000;

    fn group(name: &str, gid: u32) -> Group {
        Group {
            name: name.into(),
            gid,
        }
    }

    fn access(admins: bool) -> Access {
        Access {
            readers: group("imagecache", READERS),
            admins: admins.then(|| group("imagecache-admin", ADMINS)),
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            groups: Arc::from(groups),
            pid: None,
        }
    }

    #[test]
    fn roles_by_uid_and_groups() {
        use Role::*;
        // (what, the caller, role with admin_group set, role without)
        let table = [
            ("root", peer(0, 0, &[]), Admin, Admin),
            (
                "root in no group of ours",
                peer(0, OTHER, &[OTHER]),
                Admin,
                Admin,
            ),
            (
                "admin_group as primary",
                peer(OTHER, ADMINS, &[]),
                Admin,
                Nobody,
            ),
            (
                "admin_group as supplementary",
                peer(OTHER, OTHER, &[ADMINS]),
                Admin,
                Nobody,
            ),
            (
                "both groups",
                peer(OTHER, OTHER, &[READERS, ADMINS]),
                Admin,
                Reader,
            ),
            (
                "socket_group as primary",
                peer(OTHER, READERS, &[]),
                Reader,
                Reader,
            ),
            (
                "socket_group as supplementary",
                peer(OTHER, OTHER, &[7, READERS]),
                Reader,
                Reader,
            ),
            ("gid 0 is not uid 0", peer(OTHER, 0, &[0]), Nobody, Nobody),
            (
                "in neither group",
                peer(OTHER, OTHER, &[7, 8]),
                Nobody,
                Nobody,
            ),
            ("credentials unreadable", Peer::unknown(), Nobody, Nobody),
        ];
        for (what, caller, with_admins, without) in table {
            assert_eq!(access(true).role_of(&caller), with_admins, "{what}");
            assert_eq!(access(false).role_of(&caller), without, "{what}");
        }
    }

    #[test]
    fn only_get_and_head_are_reads() {
        for method in [Method::GET, Method::HEAD] {
            assert_eq!(Role::needed_for(&method), Role::Reader, "{method}");
        }
        for method in [
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::PATCH,
            Method::OPTIONS,
            Method::TRACE,
            Method::CONNECT,
            Method::from_bytes(b"PURGE").unwrap(),
        ] {
            assert_eq!(Role::needed_for(&method), Role::Admin, "{method}");
        }
        assert!(Role::Nobody < Role::Reader && Role::Reader < Role::Admin);
    }

    #[test]
    fn refusals_name_the_group_and_the_config_key_that_would_allow() {
        let reader = peer(OTHER, READERS, &[]);
        let delete = |a: &Access, p: &Peer| {
            a.refusal(
                p,
                Role::Admin,
                &Method::DELETE,
                "/apis/imagecache.io/v1/disks/d",
            )
        };
        let m = delete(&access(true), &reader);
        assert!(
            m.contains("\"imagecache-admin\" (config admin_group)"),
            "{m}"
        );
        assert!(m.contains("DELETE /apis/imagecache.io/v1/disks/d"), "{m}");
        assert!(m.contains("may only read"), "{m}");
        let m = delete(&access(false), &reader);
        assert!(m.contains("needs root (config admin_group"), "{m}");
        let m = delete(&access(true), &peer(OTHER, OTHER, &[]));
        assert!(!m.contains("may only read"), "{m}");
        let m = access(true).refusal(&peer(OTHER, OTHER, &[]), Role::Reader, &Method::GET, "/");
        assert!(m.contains("\"imagecache\" (config socket_group)"), "{m}");
    }

    #[test]
    fn group_names_resolve() {
        assert_eq!(group_id("root"), Ok(0));
        assert_eq!(group_id("1234"), Ok(1234));
        let err = group_id("no-such-group-here").unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let err = Group::resolve("no-such-group-here", "admin_group").unwrap_err();
        assert!(err.starts_with("config admin_group: "), "{err}");
        assert_eq!(Group::resolve("root", "socket_group"), Ok(group("root", 0)));
    }
}
