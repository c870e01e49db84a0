//! `meridian.v1.Cluster`: the node's view of the Raft cluster.

use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_server::Cluster as ClusterApi;
use tonic::{Request, Response, Status};

use super::error::status;
use crate::raft::Role;
use crate::replica::Replica;

/// The `Cluster` gRPC service.
pub struct ClusterService {
    replica: Replica,
}

// === impl ClusterService ===

impl ClusterService {
    /// Reports on the Raft node behind `replica`.
    pub fn new(replica: Replica) -> Self {
        Self { replica }
    }
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn status(
        &self,
        _: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let raft = self.replica.raft().status().await.map_err(status)?;
        let role = match raft.role {
            Role::Follower => pb::Role::Follower,
            Role::Candidate => pb::Role::Candidate,
            Role::PreCandidate => pb::Role::PreCandidate,
            Role::Leader => pb::Role::Leader,
        };
        Ok(Response::new(pb::StatusResponse {
            node_id: raft.id,
            role: role as i32,
            leader_id: raft.leader_id.unwrap_or(0),
            term: raft.term,
            commit_index: raft.commit_index,
            applied_index: raft.applied_index,
            snapshot_index: raft.snapshot_index,
            revision: self.replica.current().registry.revision(),
            members: raft
                .members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    address: m.address,
                    voter: m.voter,
                    match_index: m.match_index,
                })
                .collect(),
        }))
    }
}
