//! Why an action (or the daemon's start) failed, in the daemon's own terms. Each front door
//! maps these kinds to its protocol's codes (the HTTP API to a Kubernetes `Status`); the
//! messages say what was wrong and what to do, whichever door they leave by.

/// One invalid field of a request: which, and what is allowed instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request, e.g. `spec.sizeGiB`.
    pub field: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    /// The name is taken.
    #[error("{kind} {name:?} already exists: delete it first or choose another name")]
    AlreadyExists { kind: String, name: String },
    /// The request is valid but the objects' state does not allow it now; the message says
    /// what would.
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be carried out as asked, whatever the state: each field says why.
    #[error("{kind} {name:?} is invalid: {}", fields.iter().map(|f| format!("{}: {}", f.field, f.message)).collect::<Vec<_>>().join("; "))]
    Invalid {
        kind: String,
        name: String,
        fields: Vec<FieldError>,
    },
    /// Something on the node failed; nothing the caller sent is to blame.
    #[error("internal error: {0}")]
    Internal(#[source] crate::failure::Failure),
    /// The node lacks a resource the request needs right now (no loop device to be had):
    /// the same request can succeed once it is freed; the message says what to free.
    #[error("{0}")]
    Unavailable(String),
    /// A bound of the node's config is reached (`max_loop_devices`): the request changed
    /// nothing and may succeed once the daemon holds less; the message names the bound and
    /// what frees it. `retry_after_secs` is a hint for when to try again.
    #[error("{message}")]
    AtLimit {
        message: String,
        retry_after_secs: u64,
    },
    /// Too much work waits already (the build queue holds `max_queued_builds`): the request
    /// recorded nothing; the same request may be sent again after `retry_after_secs`.
    #[error("{message}")]
    QueueFull {
        message: String,
        retry_after_secs: u64,
    },
    /// The disk is still waiting to be adopted after the daemon's restart: nothing may act
    /// on it until its device and mount are checked. Adoption takes moments; try again.
    #[error(
        "disk {0} is still being adopted after the daemon's restart (checked to be attached \
         and mounted as it was): try again in a moment"
    )]
    Adopting(String),
    /// The daemon could not start.
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Sys(#[from] crate::sys::SysError),
    /// A containerd snapshots request failed, in the kinds containerd tells apart.
    #[error(transparent)]
    Snapshot(#[from] super::ctr_snapshots::SnapshotError),
}

impl DaemonError {
    pub fn not_found(kind: &str, name: &str) -> Self {
        DaemonError::NotFound {
            kind: kind.into(),
            name: name.into(),
        }
    }

    /// A request refused for one field.
    pub fn invalid_field(kind: &str, name: &str, field: &str, message: String) -> Self {
        DaemonError::Invalid {
            kind: kind.into(),
            name: name.into(),
            fields: vec![FieldError {
                field: field.into(),
                message,
            }],
        }
    }

    /// Something on the node failed: `e`, kept whole (a message where no error lies beneath).
    pub fn internal(e: impl Into<crate::failure::BoxError>) -> Self {
        DaemonError::Internal(crate::failure::Failure::of(e))
    }

    /// `what` failed on the node because of `source`.
    pub fn internal_because(
        what: impl Into<String>,
        source: impl Into<crate::failure::BoxError>,
    ) -> Self {
        DaemonError::Internal(crate::failure::Failure::new(what, source))
    }
}
