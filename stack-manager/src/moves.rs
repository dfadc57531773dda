//! The mover: planned moves of instances off healthy hosts, for drains and
//! rebalancing. One background task (`mover`), every `moves.interval_ms`
//! and whenever a host starts draining or a plan is queued.
//!
//! A move stops the instance on its source and starts it on the target
//! with the same id, MACs, addresses and volumes; it never runs on two
//! hosts, and it stays where it was when the move fails (the protocol is
//! in `store::moves`). One pass:
//!
//! 1. **Moves under way.** Once the source confirmed the stop, the target's
//!    agent is asked to answer (a target that cannot create it must not
//!    get it), then the move commits: the target's reconciler creates it,
//!    the source's deletes it there as an orphan. A source that does not
//!    confirm within `moves.stop_timeout_secs`, a target that stops taking
//!    work or does not answer: the move aborts, and the source runs it
//!    again.
//! 2. **Queued plans** (`POST /v1/hosts/rebalance`): a planned move starts
//!    once every move it `depends_on` completed (the planner's rule for
//!    running several at once); one whose dependency failed is dropped.
//! 3. **Drains.** Every `allow` instance on a draining host is moved to a
//!    host the scheduler chooses (anti-affinity honoured); `never` ones
//!    stay and the host counts them (`pinned_instances`). An instance whose
//!    move failed waits `moves.retry_after_secs` before the next try.
//! 4. **Automatic rebalancing** (`moves.auto_rebalance`), when nothing else
//!    is going on and a host drifted outside `moves.auto_rebalance_band`.
//!
//! At most `moves.concurrency` moves are under way at once, counted in the
//! database (cloud-wide). Queued plans are in the database too
//! (`planned_moves`): a plan accepted by any replica runs on the one
//! holding the mover's lease, and survives a restart.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use api::ids::{GroupId, HostId, InstanceId, RackId};
use api::resources::{
    AdminState, HostHealth, MoveReason, RebalanceHost, RebalanceMove, RebalancePlan,
    RebalanceStuck, Relocation,
};
use api::AgentClient;
use serde_json::json;

use crate::config::MovesConfig;
use crate::db::now_ms;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::store::moves::{InFlight, MoveKind, MoveStart, Step};
use crate::tasks::{Activator, BackgroundTask, Outcome, TaskError};

/// The mover's period, or `None` when planned moves are turned off.
pub fn period(cfg: &MovesConfig) -> Option<Duration> {
    (cfg.interval_ms > 0).then(|| Duration::from_millis(cfg.interval_ms))
}

pub use crate::store::moves::PlannedMove;

/// The handle request handlers wake the mover through (a host started
/// draining, a plan was queued). Plans themselves are in the database
/// (`planned_moves`): the mover runs on whichever replica holds its lease.
#[derive(Clone, Default)]
pub struct Moves {
    activator: Activator,
}

impl Moves {
    pub fn activator(&self) -> Activator {
        self.activator.clone()
    }

    /// Wakes the mover, if it runs on this replica (elsewhere its period
    /// finds the work).
    pub fn notify(&self) {
        self.activator.activate();
    }
}

/// What one pass did.
#[derive(Debug, Default)]
struct PassCounts {
    started: u64,
    moved: u64,
    aborted: u64,
    no_target: u64,
}

pub struct Mover {
    state: AppState,
    passes: u64,
    totals: PassCounts,
    /// When a drain last failed to move an instance (retried after
    /// `moves.retry_after_secs`).
    failed_at: HashMap<InstanceId, Instant>,
}

impl Mover {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            passes: 0,
            totals: PassCounts::default(),
            failed_at: HashMap::new(),
        }
    }

    async fn pass(&mut self) -> ApiResult<PassCounts> {
        let mut n = PassCounts::default();
        let cfg = self.state.config.moves.clone();
        let in_flight = self.state.store.moves_in_flight().await?;
        let moving: HashSet<InstanceId> = in_flight.iter().map(|m| m.id).collect();
        for m in in_flight {
            self.progress(m, &cfg, &mut n).await?;
        }
        self.settle_vanished(&moving).await?;
        let mut slots = cfg
            .concurrency
            .saturating_sub(self.state.store.moves_in_flight_count().await?);
        slots = self.start_planned(slots, &mut n).await?;
        let retry = Duration::from_secs(cfg.retry_after_secs);
        self.failed_at.retain(|_, t| t.elapsed() < retry);
        if slots > 0 {
            for c in self.state.store.drain_candidates().await? {
                if slots == 0 {
                    break;
                }
                if self.failed_at.contains_key(&c.id) {
                    continue;
                }
                let mut demand = c.demand.clone();
                if let Some(group) = c.group {
                    let (hosts, racks) = self.state.store.group_footprint(group).await?;
                    demand.group_hosts = hosts;
                    demand.group_racks = racks;
                }
                demand.group_hosts.insert(c.host);
                let scheduler = self.state.scheduler.clone();
                let ranking = scheduler.rank_instance(&demand);
                let placement = scheduler.placement(ranking);
                if self
                    .start(c.id, c.host, c.demand, placement, MoveKind::Drain, &mut n)
                    .await?
                {
                    slots -= 1;
                }
            }
        }
        if cfg.auto_rebalance
            && slots == cfg.concurrency
            && self.state.store.planned_moves_pending().await? == 0
            && n.started == 0
        {
            let (_, moves) = plan(&self.state, cfg.auto_rebalance_band).await?;
            if !moves.is_empty() {
                tracing::info!(
                    moves = moves.len(),
                    "automatic rebalancing: hosts drifted outside the band"
                );
                self.state.store.planned_moves_queue(&moves).await?;
            }
        }
        Ok(n)
    }

    /// One look at a move under way.
    async fn progress(
        &mut self,
        m: InFlight,
        cfg: &MovesConfig,
        n: &mut PassCounts,
    ) -> ApiResult<()> {
        let overdue = now_ms() - m.started_at > (cfg.stop_timeout_secs as i64) * 1000;
        if m.target_health != HostHealth::Up || m.target_admin_state != AdminState::Enabled {
            let why = format!(
                "target host {} no longer takes work ({}, {})",
                m.target_name,
                m.target_admin_state.as_str(),
                m.target_health.as_str()
            );
            return self.abort(&m, &why, n).await;
        }
        if m.stop_confirmed() {
            let agent = AgentClient::with_http(
                self.state.agent_http.clone(),
                &m.target_agent_url,
                &m.target_credential,
            );
            if let Err(e) = agent.instance_list().await {
                let why = format!(
                    "the agent of target host {} does not answer: {e}",
                    m.target_name
                );
                return self.abort(&m, &why, n).await;
            }
            if let Some(done) = self
                .state
                .store
                .instance_move_commit(m.id, m.from, m.to)
                .await?
            {
                self.state.scheduler.apply(done.released.reversed());
                for node in done.storage {
                    self.state.reconciler.notify(node);
                }
                self.state.reconciler.notify(m.to);
                // Its domain on the source is not ours any more.
                self.state.reconciler.notify_orphans(m.from);
                self.state.store.planned_move_finish(m.id, true).await?;
                n.moved += 1;
                tracing::info!(instance = %m.id, from = %m.from, to = %m.to, "moved");
            }
            return Ok(());
        }
        if overdue {
            let why = format!(
                "host {} did not confirm the stop within {} s",
                m.from, cfg.stop_timeout_secs
            );
            return self.abort(&m, &why, n).await;
        }
        // (Folded into one pass when it is already awake.)
        self.state.reconciler.notify(m.from);
        Ok(())
    }

    async fn abort(&mut self, m: &InFlight, why: &str, n: &mut PassCounts) -> ApiResult<()> {
        if let Some(c) = self
            .state
            .store
            .instance_move_abort(m.id, m.to, why)
            .await?
        {
            self.state.scheduler.apply(c.reversed());
            self.state.reconciler.notify(m.from);
            tracing::warn!(instance = %m.id, from = %m.from, to = %m.to, "move aborted: {why}");
            n.aborted += 1;
        }
        self.failed_at.insert(m.id, Instant::now());
        self.state.store.planned_move_finish(m.id, false).await?;
        Ok(())
    }

    /// Running planned moves that are no longer under way without this
    /// pass seeing them end (another replica, a delete, an evacuation, a
    /// crash between marking it running and starting it): done if the
    /// instance is on the target, failed otherwise.
    async fn settle_vanished(&self, moving: &HashSet<InstanceId>) -> ApiResult<()> {
        let open = self.state.store.planned_moves_open().await?;
        let running: Vec<(InstanceId, HostId)> =
            running_moves(&open).map(|m| (m.instance, m.to)).collect();
        for (id, to) in running {
            if moving.contains(&id) {
                continue;
            }
            let place = self.state.store.instance_place(id).await?;
            let store = &self.state.store;
            match place {
                Some((_, Some(_))) => {}
                Some((host, None)) => store.planned_move_finish(id, host == Some(to)).await?,
                None => store.planned_move_finish(id, false).await?,
            }
        }
        Ok(())
    }

    /// Starts the queued planned moves whose dependencies completed, up to
    /// `slots`; returns the slots left. A move is marked running before it
    /// starts: one cut short in between is settled as failed by the next
    /// pass (`settle_vanished`).
    async fn start_planned(&mut self, mut slots: u64, n: &mut PassCounts) -> ApiResult<u64> {
        let mut ready = Vec::new();
        let open = self.state.store.planned_moves_open().await?;
        // One running planned move an instance at most (two plans may both
        // move it): how a move's end is recorded, by instance, stays
        // unambiguous. The other waits, queued.
        let mut running: HashSet<InstanceId> = running_moves(&open).map(|m| m.instance).collect();
        for mut p in open {
            let mut changed = Vec::new();
            for i in 0..p.moves.len() {
                if p.steps[i] != Step::Queued || running.contains(&p.moves[i].instance) {
                    continue;
                }
                let deps: Vec<_> = p.moves[i]
                    .depends_on
                    .iter()
                    .map(|&d| p.steps.get(d).copied())
                    .collect();
                if deps.contains(&Some(Step::Failed)) {
                    p.steps[i] = Step::Failed;
                    changed.push((i, Step::Failed));
                } else if deps.iter().all(|d| *d == Some(Step::Done) || d.is_none())
                    && (ready.len() as u64) < slots
                {
                    p.steps[i] = Step::Running;
                    changed.push((i, Step::Running));
                    running.insert(p.moves[i].instance);
                    ready.push(p.moves[i].clone());
                }
            }
            if !changed.is_empty() {
                self.state.store.planned_moves_set(&p.id, &changed).await?;
            }
        }
        for m in ready {
            let demand = match self.state.store.instance_demand(m.instance).await? {
                Some(d) => d,
                None => {
                    self.state
                        .store
                        .planned_move_finish(m.instance, false)
                        .await?;
                    continue;
                }
            };
            let scheduler = self.state.scheduler.clone();
            let placer = scheduler.pinned(m.to);
            if self
                .start(m.instance, m.from, demand, placer, MoveKind::Rebalance, n)
                .await?
            {
                slots = slots.saturating_sub(1);
            } else {
                self.state
                    .store
                    .planned_move_finish(m.instance, false)
                    .await?;
            }
        }
        Ok(slots)
    }

    /// Starts one move; whether it is under way.
    async fn start(
        &mut self,
        id: InstanceId,
        from: HostId,
        demand: crate::scheduler::InstanceDemand,
        placer: impl crate::store::claims::Placer,
        kind: MoveKind,
        n: &mut PassCounts,
    ) -> ApiResult<bool> {
        match self
            .state
            .store
            .instance_move_start(id, from, demand, placer, kind)
            .await?
        {
            MoveStart::Started(claim) => {
                self.state.scheduler.apply(claim);
                self.state.reconciler.notify(from);
                tracing::info!(instance = %id, %from, to = %claim.host, kind = kind.as_str(), "move started");
                n.started += 1;
                Ok(true)
            }
            MoveStart::NoTarget(why) => {
                tracing::info!(instance = %id, %from, "{why}");
                self.failed_at.insert(id, Instant::now());
                n.no_target += 1;
                Ok(false)
            }
            MoveStart::Skipped(why) => {
                tracing::debug!(instance = %id, "move not started: {why}");
                Ok(false)
            }
        }
    }
}

impl BackgroundTask for Mover {
    async fn activate(&mut self) -> Result<Outcome, TaskError> {
        self.passes += 1;
        let n = self
            .pass()
            .await
            .map_err(|e| format!("mover pass: {}", e.message))?;
        let t = &mut self.totals;
        t.started += n.started;
        t.moved += n.moved;
        t.aborted += n.aborted;
        t.no_target += n.no_target;
        Ok(Outcome::ran(json!({
            "passes": self.passes,
            "started_total": t.started,
            "moved_total": t.moved,
            "aborted_total": t.aborted,
            "no_target_total": t.no_target,
            "planned_pending": self
                .state
                .store
                .planned_moves_pending()
                .await
                .map_err(|e| format!("mover: {}", e.message))?,
        })))
    }
}

/// Plans a rebalancing of the hypervisors with `band`: the plan in API
/// terms, and its moves as the mover runs them.
pub async fn plan(state: &AppState, band: f64) -> ApiResult<(RebalancePlan, Vec<PlannedMove>)> {
    let (hosts, instances) = state.store.rebalance_inputs().await?;
    let now = now_ms();
    let deadline = (state.config.hosts.down_after_secs as i64) * 1000;
    let sched = &state.config.scheduler;
    let mut host_ix: HashMap<HostId, u32> = HashMap::with_capacity(hosts.len());
    let mut racks: HashMap<RackId, u32> = HashMap::new();
    let mut cloud = rebalance::Cloud::default();
    for (i, h) in hosts.iter().enumerate() {
        host_ix.insert(h.id, i as u32);
        let next = racks.len() as u32 + 1;
        // Hosts without a rack share rack 0: spread is neutral among them.
        let rack = h.rack.map(|r| *racks.entry(r).or_insert(next)).unwrap_or(0);
        let fresh = h.last_heartbeat_ms.is_some_and(|t| now - t <= deadline);
        let host_state = if h.health != HostHealth::Up || !fresh {
            rebalance::HostState::Down
        } else {
            match h.admin_state {
                AdminState::Enabled => rebalance::HostState::Active,
                AdminState::Draining => rebalance::HostState::Draining,
                AdminState::Disabled => rebalance::HostState::Disabled,
            }
        };
        cloud.hosts.push(rebalance::Host {
            rack,
            vcpus: h.vcpus,
            ram_mib: h.ram_mib,
            cpu_ratio: sched.cpu_allocation_ratio,
            ram_ratio: sched.ram_allocation_ratio,
            state: host_state,
        });
    }
    let mut groups: HashMap<GroupId, u32> = HashMap::new();
    let mut placed = Vec::with_capacity(instances.len());
    for inst in &instances {
        // An instance being moved counts where it is going, and stays put.
        let at = inst.moving_to.unwrap_or(inst.host);
        let Some(&host) = host_ix.get(&at) else {
            continue;
        };
        let next = groups.len() as u32;
        cloud.instances.push(rebalance::Instance {
            host,
            vcpus: inst.vcpus,
            ram_mib: inst.ram_mib,
            group: inst.group.map(|g| *groups.entry(g).or_insert(next)),
            policy: match (inst.relocation, inst.moving_to) {
                (Relocation::Allow, None) => rebalance::Relocation::Allow,
                _ => rebalance::Relocation::Never,
            },
        });
        placed.push(inst);
    }
    let options = rebalance::Options {
        band,
        ..Default::default()
    };
    let started = Instant::now();
    let p = rebalance::plan(&cloud, &options);
    let plan_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut moves = Vec::with_capacity(p.moves.len());
    let mut planned = Vec::with_capacity(p.moves.len());
    for m in &p.moves {
        let inst = placed[m.instance as usize];
        let from = hosts[m.from as usize].id;
        let to = hosts[m.to as usize].id;
        moves.push(RebalanceMove {
            instance_id: inst.id,
            instance_name: inst.name.clone(),
            from,
            to,
            reason: match m.reason {
                rebalance::MoveReason::Drain => MoveReason::Drain,
                rebalance::MoveReason::Balance => MoveReason::Balance,
            },
            depends_on: m.depends_on.clone(),
        });
        planned.push(PlannedMove {
            instance: inst.id,
            from,
            to,
            depends_on: m.depends_on.clone(),
        });
    }
    let report = RebalancePlan {
        moves,
        hosts: hosts
            .iter()
            .zip(&p.hosts)
            .map(|(h, r)| RebalanceHost {
                host_id: h.id,
                name: h.name.clone(),
                before_vcpu_share: r.before.vcpu,
                before_ram_share: r.before.ram,
                after_vcpu_share: r.after.vcpu,
                after_ram_share: r.after.ram,
                within_band_after: match r.standing_after {
                    rebalance::Standing::Within => Some(true),
                    rebalance::Standing::Outside => Some(false),
                    rebalance::Standing::NotCounted => None,
                },
            })
            .collect(),
        band,
        mean_vcpu_share: p.band.mean.vcpu,
        mean_ram_share: p.band.mean.ram,
        lower_bound: p.lower_bound as u64,
        within_band: p.within_band,
        stuck: p
            .stuck
            .iter()
            .filter_map(|s| {
                let inst = placed.get(s.instance as usize)?;
                Some(RebalanceStuck {
                    instance_id: inst.id,
                    instance_name: inst.name.clone(),
                    reason: match s.reason {
                        rebalance::StuckReason::RelocationNever => "relocation_never",
                        rebalance::StuckReason::NoTarget => "no_target",
                        rebalance::StuckReason::UnknownHost => "unknown_host",
                    }
                    .to_string(),
                })
            })
            .collect(),
        queued: false,
        plan_ms,
    };
    Ok((report, planned))
}

/// The moves of `plans` marked running.
fn running_moves(plans: &[crate::store::moves::QueuedPlan]) -> impl Iterator<Item = &PlannedMove> {
    plans.iter().flat_map(|p| {
        p.moves
            .iter()
            .zip(&p.steps)
            .filter(|(_, s)| **s == Step::Running)
            .map(|(m, _)| m)
    })
}
