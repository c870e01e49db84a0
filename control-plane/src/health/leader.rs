//! One term of leadership: which instances are checked, their heartbeat times, probe verdicts
//! and deadlines, and the health transitions they propose.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::probe::{self, Verdict};
use super::{Accepted, Beat, HealthConfig, HeartbeatError, Key};
use crate::raft::Role;
use crate::registry::{
    CheckKind, Command, HealthCheck, HealthStatus, Instance, Registry, RegistryError,
};
use crate::replica::{Replica, View};
use crate::watch::{EventKind, changes_since};

/// The health task's state while this node leads, for one term.
pub(super) struct Leader {
    replica: Replica,
    config: HealthConfig,
    term: u64,
    views: watch::Receiver<View>,
    registry: Arc<Registry>,
    /// The applied index of the view `registry` came from (`None`: not from a view).
    seen: Option<u64>,
    tracked: HashMap<Key, Tracked>,
    /// Deadlines to look at, earliest first. Entries are hints: each is checked against the
    /// instance's current state when due (a heartbeat moves a deadline without touching this).
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
    probes: JoinSet<()>,
    verdict_tx: mpsc::Sender<Verdict>,
    verdicts: mpsc::Receiver<Verdict>,
    /// Proposals in flight: the instance and whether the write succeeded.
    writes: JoinSet<(Key, bool)>,
    generation: u64,
}

/// One checked instance.
struct Tracked {
    check: HealthCheck,
    target: SocketAddr,
    /// Its health in the registry (as of the last view).
    health: HealthStatus,
    /// Last heartbeat (or registration, or the start of this term: the grace period).
    last_beat: Instant,
    /// Since when it is UNHEALTHY, as far as this leader knows.
    unhealthy_since: Option<Instant>,
    passes: u32,
    failures: u32,
    /// A transition for it is being written: propose nothing else until it lands.
    proposing: bool,
    /// The running probe and its generation.
    probe: Option<(u64, AbortHandle)>,
}

// === impl Leader ===

impl Leader {
    pub(super) fn new(replica: &Replica, config: HealthConfig, term: u64) -> Self {
        let mut views = replica.subscribe();
        let view = views.borrow_and_update().clone();
        let (verdict_tx, verdicts) = mpsc::channel(1024);
        let mut this = Self {
            replica: replica.clone(),
            config,
            term,
            views,
            registry: Arc::new(Registry::new()),
            seen: None,
            tracked: HashMap::new(),
            timers: BinaryHeap::new(),
            probes: JoinSet::new(),
            verdict_tx,
            verdicts,
            writes: JoinSet::new(),
            generation: 0,
        };
        // Everything is new to this leader (`seen` is None: compared with an empty registry):
        // every instance starts with a fresh grace period.
        this.take(view);
        tracing::info!(instances = this.tracked.len(), "tracking checked instances");
        this
    }

    /// Runs the term. Returns `true` if the node is stopping, `false` when leadership was lost.
    pub(super) async fn run(
        &mut self,
        beats: &mut mpsc::Receiver<Beat>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut poll = tokio::time::interval(self.config.leader_poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            let timer = async move {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return true,
                _ = poll.tick() => match self.replica.raft().status().await {
                    Ok(s) if s.role == Role::Leader && s.term == self.term => {}
                    Ok(_) => return false,
                    Err(_) => return true,
                },
                changed = self.views.changed() => {
                    if changed.is_err() {
                        return true;
                    }
                    self.catch_up();
                }
                beat = beats.recv() => match beat {
                    Some(beat) => self.beat(beat),
                    None => return true,
                },
                Some(verdict) = self.verdicts.recv() => self.verdict(verdict),
                Some(done) = self.writes.join_next() => {
                    if let Ok((key, ok)) = done {
                        self.written(key, ok);
                    }
                }
                Some(_) = self.probes.join_next() => {}
                () = timer => self.expire(Instant::now()),
            }
        }
    }

    /// Applies the latest view, if it moved.
    fn catch_up(&mut self) {
        let view = self.views.borrow_and_update().clone();
        self.take(view);
    }

    /// Brings the tracked set in line with `view`, looking only at what changed.
    fn take(&mut self, view: View) {
        let now = Instant::now();
        let seen = self.seen.replace(view.applied_index);
        let registry = Arc::clone(&view.registry);
        for changes in changes_since(&self.registry, seen, &view) {
            let check = registry
                .service(&changes.service)
                .ok()
                .and_then(|s| s.health_check.clone());
            for event in changes.events {
                let Some(instance) = event.kind.instance() else {
                    continue;
                };
                let key = (changes.service.clone(), instance.id.clone());
                match (&event.kind, &check) {
                    (EventKind::InstanceAdded(_), Some(check)) => {
                        self.untrack(&key);
                        self.track(key, check.clone(), instance, now);
                    }
                    (EventKind::InstanceUpdated(_), _) => self.updated(&key, instance, now),
                    (EventKind::InstanceRemoved(_), _) => self.untrack(&key),
                    _ => {}
                }
            }
        }
        self.registry = registry;
    }

    fn track(&mut self, key: Key, check: HealthCheck, instance: &Instance, now: Instant) {
        let mut tracked = Tracked {
            target: SocketAddr::new(instance.address, instance.port),
            health: instance.health,
            last_beat: now,
            unhealthy_since: (instance.health == HealthStatus::Unhealthy).then_some(now),
            passes: 0,
            failures: 0,
            proposing: false,
            probe: None,
            check,
        };
        if let CheckKind::Ttl { ttl_ms } = tracked.check.kind {
            self.timers.push(Reverse((now + ms(ttl_ms), key.clone())));
        } else {
            self.start_probe(&key, &mut tracked);
        }
        if let Some(since) = tracked.unhealthy_since {
            self.arm_deregister(&key, &tracked.check, since);
        }
        self.tracked.insert(key, tracked);
    }

    fn untrack(&mut self, key: &Key) {
        if let Some(Tracked {
            probe: Some((_, probe)),
            ..
        }) = self.tracked.remove(key)
        {
            probe.abort();
        }
    }

    fn start_probe(&mut self, key: &Key, tracked: &mut Tracked) {
        if let Some((_, old)) = tracked.probe.take() {
            old.abort();
        }
        self.generation += 1;
        let jitter = probe::jitter(key, tracked.check.interval_ms);
        let span = tracing::debug_span!("probe", service = %key.0, instance = %key.1);
        let task = probe::run(
            key.clone(),
            self.generation,
            tracked.target,
            tracked.check.clone(),
            jitter,
            self.verdict_tx.clone(),
        );
        let handle = self.probes.spawn(task.instrument(span));
        tracked.probe = Some((self.generation, handle));
    }

    fn arm_deregister(&mut self, key: &Key, check: &HealthCheck, since: Instant) {
        if check.deregister_after_ms > 0 {
            let at = since + ms(check.deregister_after_ms);
            self.timers.push(Reverse((at, key.clone())));
        }
    }

    /// An instance changed in the registry: its health, or a re-registration.
    fn updated(&mut self, key: &Key, instance: &Instance, now: Instant) {
        let Some(mut tracked) = self.tracked.remove(key) else {
            return;
        };
        let was = tracked.health;
        tracked.health = instance.health;
        let target = SocketAddr::new(instance.address, instance.port);
        if target != tracked.target {
            tracked.target = target;
            tracked.passes = 0;
            tracked.failures = 0;
            if tracked.probe.is_some() {
                self.start_probe(key, &mut tracked);
            }
        }
        if let CheckKind::Ttl { ttl_ms } = tracked.check.kind {
            // HEALTHY on a TTL instance comes from a heartbeat, a re-registration or a custom
            // status: each counts as a sign of life.
            if instance.health == HealthStatus::Healthy {
                tracked.last_beat = now;
                if was != HealthStatus::Healthy {
                    self.timers.push(Reverse((now + ms(ttl_ms), key.clone())));
                }
            }
        }
        if instance.health != HealthStatus::Unhealthy {
            tracked.unhealthy_since = None;
        } else if was != HealthStatus::Unhealthy || tracked.unhealthy_since.is_none() {
            tracked.unhealthy_since = Some(now);
            self.arm_deregister(key, &tracked.check, now);
        }
        self.tracked.insert(key.clone(), tracked);
    }

    fn beat(&mut self, beat: Beat) {
        // The registration before a first heartbeat is published before it is acknowledged:
        // if the instance is unknown here, the view holding it may just not be taken in yet.
        if !self.tracked.contains_key(&beat.key) && self.views.has_changed().unwrap_or(false) {
            self.catch_up();
        }
        let now = Instant::now();
        let revision = self.registry.revision();
        let result = match self.tracked.get_mut(&beat.key) {
            Some(t) => match t.check.kind {
                CheckKind::Ttl { ttl_ms } => {
                    t.last_beat = now;
                    let revive = t.health != HealthStatus::Healthy && !t.proposing;
                    let accepted = Accepted {
                        ttl_ms,
                        health: t.health,
                        revision,
                    };
                    if revive {
                        self.propose(&beat.key, HealthStatus::Healthy);
                    }
                    Ok(accepted)
                }
                _ => Err(self.no_ttl(&beat.key)),
            },
            None => Err(self.no_ttl(&beat.key)),
        };
        // The caller may have given up waiting: nothing to do then.
        let _ = beat.reply.send(result);
    }

    /// Why `key` takes no heartbeats: it does not exist, or its service has no TTL check.
    fn no_ttl(&self, key: &Key) -> HeartbeatError {
        if let Err(e) = self.registry.instance(&key.0, &key.1) {
            return e.into();
        }
        RegistryError::FailedPrecondition(format!(
            "service {} has no TTL check: its instances do not heartbeat",
            key.0
        ))
        .into()
    }

    fn verdict(&mut self, verdict: Verdict) {
        let Some(t) = self.tracked.get_mut(&verdict.key) else {
            return;
        };
        if t.probe.as_ref().map(|p| p.0) != Some(verdict.generation) {
            return; // From a probe of an endpoint that has since moved.
        }
        let target = if verdict.pass {
            t.passes = t.passes.saturating_add(1);
            t.failures = 0;
            (t.passes >= t.check.healthy_threshold).then_some(HealthStatus::Healthy)
        } else {
            t.failures = t.failures.saturating_add(1);
            t.passes = 0;
            (t.failures >= t.check.unhealthy_threshold).then_some(HealthStatus::Unhealthy)
        };
        if let Some(health) = target
            && health != t.health
            && !t.proposing
        {
            self.propose(&verdict.key, health);
        }
    }

    /// Looks at every deadline that is due.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            self.due(key, now);
        }
    }

    fn due(&mut self, key: Key, now: Instant) {
        let Some(t) = self.tracked.get(&key) else {
            return; // Gone since.
        };
        if t.proposing {
            return; // Its outcome re-arms what is needed.
        }
        let deadline = match (&t.check.kind, t.health) {
            (CheckKind::Ttl { ttl_ms }, HealthStatus::Healthy) => t.last_beat + ms(*ttl_ms),
            (_, HealthStatus::Unhealthy) if t.check.deregister_after_ms > 0 => {
                t.unhealthy_since.unwrap_or(now) + ms(t.check.deregister_after_ms)
            }
            _ => return,
        };
        if deadline > now {
            self.timers.push(Reverse((deadline, key)));
        } else if t.health == HealthStatus::Healthy {
            tracing::info!(service = %key.0, instance = %key.1, "TTL expired without a heartbeat");
            self.propose(&key, HealthStatus::Unhealthy);
        } else {
            tracing::info!(service = %key.0, instance = %key.1, "unhealthy for too long: deregistering");
            self.write(
                &key,
                Command::DeregisterInstance {
                    service: key.0.clone(),
                    id: key.1.clone(),
                },
            );
        }
    }

    fn propose(&mut self, key: &Key, health: HealthStatus) {
        tracing::info!(service = %key.0, instance = %key.1, ?health, "health transition");
        self.write(
            key,
            Command::SetHealth {
                service: key.0.clone(),
                id: key.1.clone(),
                health,
            },
        );
    }

    fn write(&mut self, key: &Key, command: Command) {
        if let Some(t) = self.tracked.get_mut(key) {
            t.proposing = true;
        }
        let replica = self.replica.clone();
        let key = key.clone();
        self.writes.spawn(
            async move {
                let ok = match replica.write(command).await {
                    Ok(_) => true,
                    Err(error) => {
                        tracing::debug!(%error, "health write failed; will retry");
                        false
                    }
                };
                (key, ok)
            }
            .in_current_span(),
        );
    }

    fn written(&mut self, key: Key, ok: bool) {
        // The write is applied (and its view published) before it resolves: take that view
        // first so the instance's new health is known before it may propose again.
        if self.views.has_changed().unwrap_or(false) {
            self.catch_up();
        }
        if let Some(t) = self.tracked.get_mut(&key) {
            t.proposing = false;
            if !ok {
                let at = Instant::now() + self.config.retry;
                self.timers.push(Reverse((at, key)));
            }
        }
    }
}

fn ms(millis: u32) -> Duration {
    Duration::from_millis(u64::from(millis))
}
