//! `meridian.v1.Cluster`: the node's view of the Raft cluster.

use meridian_proto::v1 as pb;
use meridian_proto::v1::cluster_server::Cluster as ClusterApi;
use tonic::{Request, Response, Status};

use std::time::Duration;

use super::error::status;
use crate::auth;
use crate::raft::{MembershipChange, RaftStatus, Role};
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

impl ClusterService {
    /// Polls this node's status every 50 ms until `done` holds or `patience` runs out.
    async fn wait_until(
        &self,
        patience: Duration,
        what: &str,
        done: impl Fn(&RaftStatus) -> bool,
    ) -> Result<RaftStatus, Status> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let now = self.replica.raft().status().await.map_err(status)?;
            if done(&now) {
                return Ok(now);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(format!(
                    "{what} within {patience:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        auth::caller(&req)?.require_admin()?;
        let req = req.into_inner();
        if req.id == 0 {
            return Err(Status::invalid_argument("id: must be at least 1"));
        }
        if req.address.parse::<std::net::SocketAddr>().is_err() && !req.address.contains(':') {
            return Err(Status::invalid_argument(format!(
                "address: {:?} is not HOST:PORT",
                req.address
            )));
        }
        let patience = match req.timeout_ms {
            0 => Duration::from_secs(60),
            ms => Duration::from_millis(u64::from(ms)),
        };
        let raft = self.replica.raft();
        let now = raft.status().await.map_err(status)?;
        match now.members.iter().find(|m| m.id == req.id) {
            Some(m) if m.voter => {
                return Err(Status::already_exists(format!(
                    "node {} is already a voter",
                    req.id
                )));
            }
            Some(_) => {} // a learner from an earlier attempt: go on to catch up and promote
            None => {
                raft.change_membership(MembershipChange::AddLearner {
                    id: req.id,
                    address: req.address,
                })
                .await
                .map_err(status)?;
            }
        }
        // A learner that has caught up can vote without stalling commits.
        let id = req.id;
        self.wait_until(
            patience,
            "the new node did not catch up (is it running with --join?)",
            |s| {
                s.members.iter().any(|m| {
                    m.id == id && m.match_index + 16 >= s.commit_index && m.match_index > 0
                })
            },
        )
        .await?;
        let index = raft
            .change_membership(MembershipChange::Promote { id })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AddNodeResponse { index }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        auth::caller(&req)?.require_admin()?;
        let id = req.into_inner().id;
        let now = self.replica.raft().status().await.map_err(status)?;
        let Some(member) = now.members.iter().find(|m| m.id == id) else {
            return Err(Status::not_found(format!("node {id} is not a member")));
        };
        if member.voter && now.members.iter().filter(|m| m.voter).count() == 1 {
            return Err(Status::failed_precondition(format!(
                "node {id} is the last voter"
            )));
        }
        let index = self
            .replica
            .raft()
            .change_membership(MembershipChange::Remove { id })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveNodeResponse { index }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        auth::caller(&req)?.require_admin()?;
        let id = req.into_inner().id;
        let now = self.replica.raft().status().await.map_err(status)?;
        if !now.members.iter().any(|m| m.id == id && m.voter) {
            return Err(Status::invalid_argument(format!(
                "id: node {id} is not a voter"
            )));
        }
        if now.leader_id != Some(id) {
            self.replica
                .raft()
                .transfer_leader(id)
                .await
                .map_err(status)?;
            self.wait_until(Duration::from_secs(10), "leadership did not move", |s| {
                s.leader_id == Some(id)
            })
            .await?;
        }
        let now = self.replica.raft().status().await.map_err(status)?;
        Ok(Response::new(pb::TransferLeaderResponse {
            leader_id: id,
            term: now.term,
        }))
    }

    async fn snapshot(
        &self,
        req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        auth::caller(&req)?.require_admin()?;
        let snapshot_index = self.replica.raft().snapshot().await.map_err(status)?;
        Ok(Response::new(pb::SnapshotResponse { snapshot_index }))
    }

    /// Any valid token may read the cluster's status (the layer has authenticated the call).
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        auth::caller(&req)?;
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
            last_index: raft.last_index,
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
