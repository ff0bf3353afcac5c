//! API errors, answered as Kubernetes `Status` objects with the matching HTTP code. The
//! daemon's errors become these here, at the door: the daemon knows nothing of HTTP.

use serde::{Deserialize, Serialize};

use crate::daemon::DaemonError;

/// One invalid field of a request.
/// `Retry-After` of a 503 whose cause names no better time: a registry or the node's
/// resources that failed now, which a client asks again about a few seconds later.
pub const RETRY_AFTER_SECS: u64 = 5;

/// `Retry-After` of a 503 for a disk still being adopted after a restart: adoption takes a
/// few milliseconds a disk, so a second is long enough for most.
pub const ADOPTING_RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The body could not be read as JSON or YAML of the expected shape (400).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid fields (422), each naming the field and what is allowed.
    #[error("{kind} {name:?} is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join("; "))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    #[error("{kind} {name:?} already exists: delete it first or choose another name")]
    AlreadyExists { kind: String, name: String },
    /// The request is valid but the object's state does not allow it (409).
    #[error("{0}")]
    Conflict(String),
    /// The caller's role does not allow the request (403): in neither `socket_group` nor
    /// `admin_group`, or a reader asking to change something (api/peer.rs).
    #[error("{0}")]
    Forbidden(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The node lacks a resource the request needs now (503): the same request can succeed
    /// later, as for a Kubernetes API server's ServiceUnavailable. Every such answer carries a
    /// `Retry-After` header: the bound's own hint, or [`RETRY_AFTER_SECS`].
    #[error("{message}")]
    Unavailable {
        message: String,
        retry_after_secs: u64,
    },
    /// Too much work waits already (429), as a Kubernetes API server answers an overload:
    /// nothing was recorded; send the same request again after `Retry-After`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
}

/// Every field error is a `FieldValueInvalid` cause, the reason kubectl shows for a bad value.
impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::NotFound { kind, name } => ApiError::NotFound { kind, name },
            DaemonError::AlreadyExists { kind, name } => ApiError::AlreadyExists { kind, name },
            DaemonError::Conflict(message) => ApiError::Conflict(message),
            DaemonError::Invalid { kind, name, fields } => ApiError::Invalid {
                kind,
                name,
                causes: fields
                    .into_iter()
                    .map(|f| Cause {
                        reason: "FieldValueInvalid".into(),
                        message: f.message,
                        field: f.field,
                    })
                    .collect(),
            },
            DaemonError::Internal(failure) => ApiError::Internal(failure.to_string()),
            DaemonError::Unavailable(message) => ApiError::Unavailable {
                message,
                retry_after_secs: RETRY_AFTER_SECS,
            },
            e @ DaemonError::Adopting(_) => ApiError::Unavailable {
                message: e.to_string(),
                retry_after_secs: ADOPTING_RETRY_AFTER_SECS,
            },
            DaemonError::AtLimit {
                message,
                retry_after_secs,
            } => ApiError::Unavailable {
                message,
                retry_after_secs,
            },
            DaemonError::QueueFull {
                message,
                retry_after_secs,
            } => ApiError::TooManyRequests {
                message,
                retry_after_secs,
            },
            e @ (DaemonError::Setup(_)
            | DaemonError::Store(_)
            | DaemonError::Sys(_)
            | DaemonError::Snapshot(_)) => {
                // The whole chain: a store or system error's cause may not be in its message.
                ApiError::Internal(crate::failure::Failure::of(e).to_string())
            }
        }
    }
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Invalid { .. } => 422,
            ApiError::NotFound { .. } => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict(_) => 409,
            ApiError::Forbidden(_) => 403,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable { .. } => 503,
            ApiError::TooManyRequests { .. } => 429,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::NotFound { .. } => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable { .. } => "ServiceUnavailable",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
        }
    }

    /// Seconds for the `Retry-After` header, when the answer is "not now" with a hint.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            ApiError::Unavailable {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        ApiError::NotFound {
            kind: kind.into(),
            name: name.into(),
        }
    }

    pub fn to_status(&self) -> Status {
        let (details, causes) = match self {
            ApiError::Invalid { kind, name, causes } => (Some((kind, name)), causes.clone()),
            ApiError::NotFound { kind, name } | ApiError::AlreadyExists { kind, name } => {
                (Some((kind, name)), Vec::new())
            }
            _ => (None, Vec::new()),
        };
        Status {
            api_version: "v1".into(),
            kind: "Status".into(),
            status: "Failure".into(),
            message: self.to_string(),
            reason: self.reason().into(),
            details: details.map(|(kind, name)| StatusDetails {
                name: name.clone(),
                group: crate::api::API_GROUP.into(),
                kind: kind.clone(),
                causes,
            }),
            code: self.code(),
        }
    }

    /// Rebuilds an error from a `Status` the server sent (for the CLI).
    pub fn message_of(status: &Status) -> String {
        status.message.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub api_version: String,
    pub kind: String,
    pub status: String,
    pub message: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    pub name: String,
    pub group: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}

impl Status {
    pub fn success(message: String) -> Status {
        Status {
            api_version: "v1".into(),
            kind: "Status".into(),
            status: "Success".into(),
            message,
            reason: String::new(),
            details: None,
            code: 200,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_says_when_to_retry() {
        let generic: ApiError = DaemonError::Unavailable("registry down".into()).into();
        assert_eq!(generic.code(), 503);
        assert_eq!(generic.retry_after_secs(), Some(RETRY_AFTER_SECS));
        let bound: ApiError = DaemonError::AtLimit {
            message: "max_loop_devices".into(),
            retry_after_secs: 10,
        }
        .into();
        assert_eq!((bound.code(), bound.retry_after_secs()), (503, Some(10)));
    }

    /// An internal error's message names what failed and every cause beneath it, each once.
    #[test]
    fn an_internal_error_shows_its_whole_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Sending(#[source] std::io::Error);
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e: ApiError =
            DaemonError::internal_because("cannot reach the share registry", Sending(refused))
                .into();
        assert_eq!(e.code(), 500);
        assert_eq!(
            e.to_string(),
            "internal error: cannot reach the share registry: error sending request: connection refused"
        );
    }
}
