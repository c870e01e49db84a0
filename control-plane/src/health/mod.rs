//! Health checking: TTL heartbeats and active HTTP/TCP/gRPC checks, run by the leader.
//!
//! # What it owns
//! One task per node. While the node is a follower it only answers heartbeats with "not the
//! leader" (the API then relays them to the leader: `api/forward.rs`). Once the node leads (it polls the Raft status), it tracks every instance of every
//! service that has a check (`leader.rs`):
//! - **TTL**: heartbeat times live in the leader's memory; a heartbeat is *not* a Raft write.
//!   Only transitions are proposed: `SetHealth UNHEALTHY` when a TTL passes without a
//!   heartbeat, `SetHealth HEALTHY` when a heartbeat revives an unhealthy instance. So 100k
//!   instances heartbeating every 5 s cost 20k in-memory updates per second and no writes.
//! - **Active checks** (`probe.rs`): one task per instance, first run after a random delay
//!   within the interval (so a fleet is not probed in lockstep), each attempt bounded by the
//!   timeout; `healthy_threshold` consecutive passes propose HEALTHY, `unhealthy_threshold`
//!   consecutive failures propose UNHEALTHY.
//! - **Deregister-after**: an instance that stayed UNHEALTHY that long is deregistered.
//!
//! Every proposal goes through [`Replica::write`], so it is committed and applied on every
//! replica (and every DNS answer agrees). The registry stays pure: the clock is read here.
//!
//! # Leader changes
//! Nothing of this is replicated: a new leader starts from the registry and gives every TTL
//! instance a fresh grace period (a full TTL from the moment it took over) and every
//! UNHEALTHY instance a fresh deregister-after period, rather than expiring the fleet at
//! once because it never saw their heartbeats. Losing leadership drops all of it.
//!
//! # Depends on
//! `registry` (types), `replica` (views, writes, Raft status), `watch::diff` (what changed
//! between two views); hyper and tonic-health clients for the probes.

mod leader;
mod probe;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::raft::Role;
use crate::registry::{HealthStatus, RegistryError, ServiceName};
use crate::replica::Replica;

/// An instance: its service and id.
pub(crate) type Key = (ServiceName, String);

/// Tuning of the health task.
#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    /// How often the task asks Raft whether this node leads. 200 ms: a new leader starts
    /// checking within a fifth of a second, for a cost of five status calls per second.
    pub leader_poll: Duration,
    /// Wait before retrying a transition whose write failed (e.g. during an election).
    pub retry: Duration,
}

/// A heartbeat the leader accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The service's TTL, in milliseconds.
    pub ttl_ms: u32,
    /// The instance's health in the leader's current view.
    pub health: HealthStatus,
    /// That view's revision.
    pub revision: u64,
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// Heartbeats go to the leader, which keeps their times.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader, if known.
        leader_id: Option<u64>,
    },
    /// The instance does not exist, or its service has no TTL check.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The health task stopped (the node is shutting down).
    #[error("the health checker is stopped")]
    Stopped,
}

/// A heartbeat on its way to the health task.
#[derive(Debug)]
struct Beat {
    key: Key,
    reply: oneshot::Sender<Result<Accepted, HeartbeatError>>,
}

/// The API's handle on the health task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    beats: mpsc::Sender<Beat>,
}

/// The health task, before it runs.
pub struct HealthChecker {
    replica: Replica,
    config: HealthConfig,
    beats: mpsc::Receiver<Beat>,
}

// === impl HealthConfig ===

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            leader_poll: Duration::from_millis(200),
            retry: Duration::from_secs(1),
        }
    }
}

// === impl HealthHandle ===

impl HealthHandle {
    /// Records a heartbeat of `id` in `service` (on the leader).
    pub async fn heartbeat(
        &self,
        service: ServiceName,
        id: String,
    ) -> Result<Accepted, HeartbeatError> {
        let (reply, answer) = oneshot::channel();
        self.beats
            .send(Beat {
                key: (service, id),
                reply,
            })
            .await
            .map_err(|_| HeartbeatError::Stopped)?;
        answer.await.map_err(|_| HeartbeatError::Stopped)?
    }
}

// === impl HealthChecker ===

impl HealthChecker {
    /// The task over `replica`, and the handle heartbeats go through.
    pub fn new(replica: Replica, config: HealthConfig) -> (Self, HealthHandle) {
        // Heartbeats are answered in microseconds; 4096 queued absorb bursts of a large fleet.
        let (tx, beats) = mpsc::channel(4096);
        let task = Self {
            replica,
            config,
            beats,
        };
        (task, HealthHandle { beats: tx })
    }

    /// Runs until `shutdown` is cancelled or Raft stops: follows while another node leads,
    /// checks while this one does.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut leader_id = None;
        loop {
            let status = tokio::select! {
                () = shutdown.cancelled() => return,
                status = self.replica.raft().status() => status,
            };
            let Ok(status) = status else {
                return; // Raft stopped: so does the node.
            };
            leader_id = status.leader_id.or(leader_id);
            if status.role == Role::Leader {
                tracing::info!(term = status.term, "leading: health checks start");
                let mut term = leader::Leader::new(&self.replica, self.config, status.term);
                let stopped = term.run(&mut self.beats, &shutdown).await;
                tracing::info!(term = status.term, "health checks stop");
                if stopped {
                    return;
                }
                continue;
            }
            // Follower: refuse heartbeats until the next poll.
            let poll = tokio::time::sleep(self.config.leader_poll);
            tokio::pin!(poll);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut poll => break,
                    beat = self.beats.recv() => match beat {
                        Some(beat) => {
                            let _ = beat.reply.send(Err(HeartbeatError::NotLeader {
                                leader_id: status.leader_id,
                            }));
                        }
                        None => return,
                    },
                }
            }
        }
    }
}
