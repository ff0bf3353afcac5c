//! containerd's snapshot messages to and from the daemon's snapshot requests, and the
//! daemon's errors to gRPC codes (which containerd turns back into its errdefs: AlreadyExists
//! from Prepare is how a remote snapshotter says "this layer is here, fetch nothing").

use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::snapshots::{Info, Kind};
use containerd_client::types::Mount;
use prost_types::Timestamp;

use crate::daemon::ctr_snapshots::{MountSpec, SnapshotError, SnapshotInfo};
use crate::daemon::DaemonError;
use crate::store::SnapshotKind;

pub fn status(e: DaemonError) -> tonic::Status {
    use tonic::Code;
    let code = match &e {
        DaemonError::Snapshot(s) => match s {
            SnapshotError::NotFound(_) => Code::NotFound,
            SnapshotError::AlreadyExists(_) => Code::AlreadyExists,
            SnapshotError::FailedPrecondition(_) => Code::FailedPrecondition,
            SnapshotError::InvalidArgument(_) => Code::InvalidArgument,
            SnapshotError::PermissionDenied(_) => Code::PermissionDenied,
            SnapshotError::Internal(_) => Code::Internal,
            SnapshotError::Unavailable(_) => Code::Unavailable,
        },
        DaemonError::NotFound { .. } => Code::NotFound,
        DaemonError::AlreadyExists { .. } => Code::AlreadyExists,
        DaemonError::Conflict(_) => Code::FailedPrecondition,
        DaemonError::Invalid { .. } => Code::InvalidArgument,
        DaemonError::Unavailable(_) | DaemonError::AtLimit { .. } | DaemonError::Adopting(_) => {
            Code::Unavailable
        }
        DaemonError::QueueFull { .. } => Code::ResourceExhausted,
        _ => Code::Internal,
    };
    tonic::Status::new(code, e.to_string())
}

pub fn labels(map: HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

pub fn mounts(specs: Vec<MountSpec>) -> Vec<Mount> {
    specs
        .into_iter()
        .map(|m| Mount {
            r#type: m.kind,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn timestamp(nanos: i64) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

pub fn kind(k: SnapshotKind) -> Kind {
    match k {
        SnapshotKind::View => Kind::View,
        SnapshotKind::Active => Kind::Active,
        SnapshotKind::Committed => Kind::Committed,
    }
}

pub fn info(i: SnapshotInfo) -> Info {
    Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind(i.kind) as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_nanoseconds() {
        let t = timestamp(1_700_000_000_123_456_789);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_789));
    }

    #[test]
    fn kinds_keep_containerds_numbers() {
        assert_eq!(kind(SnapshotKind::View) as i32, 1);
        assert_eq!(kind(SnapshotKind::Active) as i32, 2);
        assert_eq!(kind(SnapshotKind::Committed) as i32, 3);
    }

    #[test]
    fn each_error_kind_has_its_code() {
        let code = |e| status(DaemonError::Snapshot(e)).code();
        assert_eq!(
            code(SnapshotError::NotFound("x".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(SnapshotError::AlreadyExists("x".into())),
            tonic::Code::AlreadyExists
        );
        assert_eq!(
            code(SnapshotError::FailedPrecondition("x".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(SnapshotError::InvalidArgument("x".into())),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(SnapshotError::PermissionDenied("x".into())),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(SnapshotError::Internal(crate::failure::Failure::msg("x"))),
            tonic::Code::Internal
        );
    }
}
