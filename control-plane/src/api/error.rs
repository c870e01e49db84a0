//! The one mapping from the control plane's errors to `tonic::Status`.

use tonic::{Code, Status};

use crate::health::HeartbeatError;
use crate::raft::ProposeError;
use crate::registry::RegistryError;
use crate::replica::ReplicaError;

/// Converts any error the API can meet into the gRPC status a client sees. The message names
/// the field and the reason (`port: 0 is not a port (1-65535)`); nothing internal leaks.
pub(crate) fn status(err: impl Into<ReplicaError>) -> Status {
    match err.into() {
        ReplicaError::Registry(e) => registry_status(e),
        ReplicaError::Raft(e) => raft_status(e),
        ReplicaError::Timeout(d) => Status::deadline_exceeded(format!(
            "no quorum answered within {d:?}; a write may still take effect"
        )),
    }
}

pub(crate) fn registry_status(err: RegistryError) -> Status {
    let code = match &err {
        RegistryError::InvalidArgument { .. } => Code::InvalidArgument,
        RegistryError::NotFound { .. } => Code::NotFound,
        RegistryError::AlreadyExists { .. } => Code::AlreadyExists,
        RegistryError::FailedPrecondition(_) => Code::FailedPrecondition,
    };
    Status::new(code, err.to_string())
}

pub(crate) fn heartbeat_status(err: HeartbeatError) -> Status {
    match err {
        HeartbeatError::NotLeader { leader_id } => {
            raft_status(ProposeError::NotLeader { leader_id })
        }
        HeartbeatError::Registry(e) => registry_status(e),
        HeartbeatError::Stopped => Status::unavailable(err.to_string()),
    }
}

fn raft_status(err: ProposeError) -> Status {
    match err {
        ProposeError::NotLeader { leader_id } => {
            let hint = leader_id.map_or_else(
                || "no leader is known yet (election in progress)".to_owned(),
                |id| format!("the leader is node {id}"),
            );
            let mut status = Status::unavailable(format!("this node is not the leader; {hint}"));
            if let Some(Ok(v)) = leader_id.map(|id| id.to_string().parse()) {
                status.metadata_mut().insert("meridian-leader-id", v);
            }
            status
        }
        ProposeError::Storage(reason) => {
            tracing::error!(%reason, "storage failure during a write");
            Status::internal("the node could not persist the write")
        }
        other => Status::unavailable(other.to_string()),
    }
}

pub(crate) fn discovery_status(err: crate::discovery::DiscoveryError) -> Status {
    use crate::discovery::DiscoveryError;
    match &err {
        DiscoveryError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
        DiscoveryError::Stopped => Status::unavailable(err.to_string()),
    }
}
