//! What the mover (`crate::moves`) reads and writes: planned moves of
//! instances between healthy hypervisors, for drains and rebalancing.
//!
//! A move is three transactions, each one conditional UPDATE with its
//! claims and its event, so that the instance never runs on two hosts and
//! stays where it was when anything fails:
//!
//! 1. [`Store::instance_move_start`]: the target is claimed (both claims
//!    are held during the move), `move_target` is recorded and the
//!    generation bumped; every spec pushed while `move_target` is set says
//!    `stopped` (`store::agents::pushable`), so the source stops it.
//! 2. [`Store::instance_move_commit`], only once the source reported it
//!    stopped at the current generation: `host_id` becomes the target, the
//!    source's claim is released, the generation of the instance and of
//!    its volumes is bumped (their ACLs follow it) and it is `building`
//!    with its desired power state; the source's reconciler deletes the
//!    domain there as an orphan (volumes untouched), the target's creates it.
//! 3. Or [`Store::instance_move_abort`]: the target's claim is released,
//!    `move_target` cleared and the generation bumped: the source runs it
//!    again.

use api::ids::{GroupId, HostId, InstanceId, ProjectId, RackId};
use api::resources::{AdminState, DesiredState, HostHealth, InstanceStatus, Relocation};
use sqlx::any::AnyRow;

use super::claims::{host_release, Claim, InstanceDemand, Placer};
use super::health::{event_write, volumes_of_instance_bump};
use super::instances::group_footprint_in;
use super::Store;
use crate::db::{lock_row, now_ms, RowExt, WriteTx};
use crate::error::{ApiError, ApiResult};

/// One move of a queued rebalancing plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove {
    pub instance: InstanceId,
    pub from: HostId,
    pub to: HostId,
    /// Indexes of the moves of the same plan that must be done first.
    pub depends_on: Vec<usize>,
}

/// Where a planned move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Queued,
    Running,
    Done,
    Failed,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Queued => "queued",
            Step::Running => "running",
            Step::Done => "done",
            Step::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        Ok(match s {
            "queued" => Step::Queued,
            "running" => Step::Running,
            "done" => Step::Done,
            "failed" => Step::Failed,
            other => {
                return Err(sqlx::Error::Decode(
                    format!("unknown planned move step `{other}`").into(),
                ))
            }
        })
    }
}

/// A queued plan as stored: its moves and where each is, by index.
#[derive(Debug, Clone)]
pub struct QueuedPlan {
    pub id: String,
    pub moves: Vec<PlannedMove>,
    pub steps: Vec<Step>,
}

/// The claim an instance being moved holds on its target.
pub fn move_target_claim(r: &AnyRow) -> Result<Option<Claim>, sqlx::Error> {
    Ok(r.opt_id::<HostId>("move_target")?.map(|host| Claim {
        host,
        vcpus: r.int("vcpus").unwrap_or(0),
        ram_mib: r.int("ram_mib").unwrap_or(0),
        disk_gib: r.int("disk_gib").unwrap_or(0),
        storage_bytes: 0,
        instances: 1,
        volumes: 0,
    }))
}

/// Why an instance is moved, as recorded on it and in its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveKind {
    Drain,
    Rebalance,
}

impl MoveKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveKind::Drain => "drain",
            MoveKind::Rebalance => "rebalance",
        }
    }
}

/// An instance a drain must move off its host.
#[derive(Debug, Clone)]
pub struct DrainCandidate {
    pub id: InstanceId,
    pub host: HostId,
    pub group: Option<GroupId>,
    pub demand: InstanceDemand,
}

/// A move under way, with what the mover needs to finish or abort it.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub id: InstanceId,
    pub from: HostId,
    pub to: HostId,
    pub desired: DesiredState,
    pub status: InstanceStatus,
    pub generation: u64,
    pub applied_generation: u64,
    pub started_at: i64,
    pub kind: Option<String>,
    /// The target's agent, probed before the move commits.
    pub target_agent_url: String,
    pub target_credential: String,
    pub target_name: String,
    pub target_health: HostHealth,
    pub target_admin_state: AdminState,
}

impl InFlight {
    /// The source has confirmed the stop the move asked for.
    pub fn stop_confirmed(&self) -> bool {
        self.applied_generation == self.generation && self.status == InstanceStatus::Stopped
    }
}

/// What a start did.
#[derive(Debug)]
pub enum MoveStart {
    /// Under way: the claim on the target, to apply to the scheduler's view.
    Started(Claim),
    /// Not started: the instance moved, was deleted, is pinned or already
    /// moving (nothing was written).
    Skipped(String),
    /// The target could not be claimed (an event says why).
    NoTarget(String),
}

/// What a commit did, for the caller to apply once it returned.
#[derive(Debug)]
pub struct Committed {
    /// The claim given back on the source.
    pub released: Claim,
    /// Storage nodes whose ACLs change with it.
    pub storage: Vec<HostId>,
}

/// A hypervisor as the rebalancer's input.
#[derive(Debug, Clone)]
pub struct BalanceHost {
    pub id: HostId,
    pub name: String,
    pub rack: Option<RackId>,
    pub admin_state: AdminState,
    pub health: HostHealth,
    pub last_heartbeat_ms: Option<i64>,
    pub vcpus: u32,
    pub ram_mib: u64,
}

/// A live placed instance as the rebalancer's input.
#[derive(Debug, Clone)]
pub struct BalanceInstance {
    pub id: InstanceId,
    pub name: String,
    pub host: HostId,
    /// Where it is being moved, if a move is under way.
    pub moving_to: Option<HostId>,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub group: Option<GroupId>,
    pub relocation: Relocation,
}

impl Store {
    /// `allow` instances on draining hypervisors that are up, not yet
    /// moving and not being deleted, oldest first.
    pub async fn drain_candidates(&self) -> ApiResult<Vec<DrainCandidate>> {
        sqlx::query(
            "SELECT i.id, i.host_id, i.group_id, i.vcpus, i.ram_mib, i.disk_gib FROM instances i \
             JOIN hosts h ON h.id = i.host_id \
             WHERE h.kind = 'hypervisor' AND h.admin_state = 'draining' AND h.health = 'up' \
               AND i.deleted_at IS NULL AND i.desired <> 'deleted' AND i.relocation = 'allow' \
               AND i.move_target IS NULL ORDER BY i.created_at, i.id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(DrainCandidate {
                id: r.id("id")?,
                host: r.id("host_id")?,
                group: r.opt_id("group_id")?,
                demand: InstanceDemand::of_row(r)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// Every move under way (instances being deleted are left to the
    /// delete, which releases both claims).
    pub async fn moves_in_flight(&self) -> ApiResult<Vec<InFlight>> {
        sqlx::query(
            "SELECT i.id, i.host_id, i.move_target, i.desired, i.status, i.generation, i.applied_generation, \
                    i.move_started_at, i.move_reason, t.agent_url, t.credential, t.name AS target_name, \
                    t.health AS target_health, t.admin_state AS target_admin_state \
             FROM instances i JOIN hosts t ON t.id = i.move_target \
             WHERE i.move_target IS NOT NULL AND i.deleted_at IS NULL AND i.desired <> 'deleted' \
             ORDER BY i.move_started_at, i.id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(InFlight {
                id: r.id("id")?,
                from: r.id("host_id")?,
                to: r.id("move_target")?,
                desired: r.parsed("desired", DesiredState::parse)?,
                status: r.parsed("status", InstanceStatus::parse)?,
                generation: r.uint("generation")?,
                applied_generation: r.uint("applied_generation")?,
                started_at: r.opt_int("move_started_at")?.unwrap_or(0),
                kind: r.opt_text("move_reason")?,
                target_agent_url: r.text("agent_url")?,
                target_credential: r.text("credential")?,
                target_name: r.text("target_name")?,
                target_health: r.parsed("target_health", HostHealth::parse)?,
                target_admin_state: r.parsed("target_admin_state", AdminState::parse)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// How many moves are under way, cloud-wide (the mover's concurrency
    /// counts them, whichever replica started them).
    pub async fn moves_in_flight_count(&self) -> ApiResult<u64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM instances WHERE move_target IS NOT NULL AND deleted_at IS NULL",
        )
        .fetch_one(&self.db.pool)
        .await?
        .uint("n")?)
    }

    /// What a live instance asks of a host; `None` when it is gone.
    pub async fn instance_demand(&self, id: InstanceId) -> ApiResult<Option<InstanceDemand>> {
        let row = sqlx::query(
            "SELECT vcpus, ram_mib, disk_gib FROM instances WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref()
            .map(InstanceDemand::of_row)
            .transpose()
            .map_err(|e: sqlx::Error| e.into())
    }

    /// Where a live instance is now, and whether it is moving; `None` when
    /// it is gone.
    pub async fn instance_place(
        &self,
        id: InstanceId,
    ) -> ApiResult<Option<(Option<HostId>, Option<HostId>)>> {
        let row = sqlx::query(
            "SELECT host_id, move_target FROM instances WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        row.map(|r| Ok((r.opt_id("host_id")?, r.opt_id("move_target")?)))
            .transpose()
            .map_err(|e: sqlx::Error| e.into())
    }

    /// Starts moving `id` off `from`, in ONE transaction: the target is
    /// claimed through `placer` (anti-affinity against where its group is
    /// now, the moving members' targets included), `move_target` recorded,
    /// the generation bumped so the source is told to stop it. Nothing is
    /// written unless it is still a live `allow` instance on `from` that is
    /// not moving already; a failed claim writes only its event.
    pub async fn instance_move_start(
        &self,
        id: InstanceId,
        from: HostId,
        mut demand: InstanceDemand,
        placer: impl Placer,
        kind: MoveKind,
    ) -> ApiResult<MoveStart> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "SELECT id, project_id, host_id, group_id, desired, relocation, move_target FROM instances \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(MoveStart::Skipped(format!("instance {id} is gone")));
        };
        if row.opt_id::<HostId>("host_id")? != Some(from) {
            return Ok(MoveStart::Skipped(format!(
                "instance {id} is no longer on host {from}"
            )));
        }
        if row.opt_text("move_target")?.is_some() {
            return Ok(MoveStart::Skipped(format!(
                "instance {id} is moving already"
            )));
        }
        if row.parsed("relocation", Relocation::parse)? == Relocation::Never {
            return Ok(MoveStart::Skipped(format!(
                "instance {id} has relocation `never`"
            )));
        }
        if row.parsed("desired", DesiredState::parse)? == DesiredState::Deleted {
            return Ok(MoveStart::Skipped(format!(
                "instance {id} is being deleted"
            )));
        }
        let project: ProjectId = row.id("project_id")?;
        if let Some(group) = row.opt_id::<GroupId>("group_id")? {
            lock_row(&mut tx, "anti_affinity_groups", &group.to_string()).await?;
            let (hosts, racks) = group_footprint_in(&mut tx, group, id).await?;
            demand.group_hosts = hosts;
            demand.group_racks = racks;
        }
        // Never onto itself: a claim there would only double its own.
        demand.group_hosts.insert(from);
        let claim = match placer.claim_instance(&mut tx, &demand).await {
            Ok(c) => c,
            Err(e) => {
                let message = format!(
                    "{} move off host {from} not started: no target: {}",
                    kind.as_str(),
                    e.message
                );
                event_write(
                    &mut tx,
                    "instance",
                    &id.to_string(),
                    Some(project),
                    "instance.move_failed",
                    &message,
                )
                .await?;
                tx.commit().await?;
                return Ok(MoveStart::NoTarget(message));
            }
        };
        let now = now_ms();
        let message = format!(
            "{} move from host {from} to host {} started: stopping it on its host",
            kind.as_str(),
            claim.host
        );
        sqlx::query(
            "UPDATE instances SET move_target = $2, move_started_at = $3, move_reason = $4, \
             generation = generation + 1, status_reason = $5, updated_at = $3 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(claim.host.to_string())
        .bind(now)
        .bind(kind.as_str())
        .bind(&message)
        .execute(&mut **tx)
        .await?;
        event_write(
            &mut tx,
            "instance",
            &id.to_string(),
            Some(project),
            "instance.move_started",
            &message,
        )
        .await?;
        tx.commit().await?;
        Ok(MoveStart::Started(claim))
    }

    /// Commits a move whose source confirmed the stop, in ONE transaction
    /// (see the module comment); `None` when the row is not (any more) a
    /// confirmed move from `from` to `to` — nothing is written then.
    pub async fn instance_move_commit(
        &self,
        id: InstanceId,
        from: HostId,
        to: HostId,
    ) -> ApiResult<Option<Committed>> {
        let mut tx = self.db.begin_write().await?;
        let now = now_ms();
        let message = format!("moved from host {from} to host {to}");
        let row = sqlx::query(
            "UPDATE instances SET host_id = move_target, move_target = NULL, move_started_at = NULL, \
               move_reason = NULL, generation = generation + 1, applied_generation = 0, \
               status = 'building', status_reason = $4, crash_count = 0, restart_at = NULL, \
               running_since = NULL, updated_at = $5 \
             WHERE id = $1 AND host_id = $2 AND move_target = $3 AND deleted_at IS NULL \
               AND desired <> 'deleted' AND applied_generation = generation AND status = 'stopped' \
             RETURNING project_id, vcpus, ram_mib, disk_gib",
        )
        .bind(id.to_string())
        .bind(from.to_string())
        .bind(to.to_string())
        .bind(&message)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let released = Claim {
            host: from,
            ..instance_claim_of(&row, to)?
        };
        host_release(&mut tx, released).await?;
        let storage = volumes_of_instance_bump(&mut tx, id).await?;
        event_write(
            &mut tx,
            "instance",
            &id.to_string(),
            Some(row.id("project_id")?),
            "instance.moved",
            &message,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Committed { released, storage }))
    }

    /// Aborts a move to `to`, in ONE transaction: the target's claim is
    /// released, `move_target` cleared and the generation bumped, so the
    /// source runs it again as it was. Returns the released claim, or
    /// `None` when it was not moving there (committed or aborted already).
    pub async fn instance_move_abort(
        &self,
        id: InstanceId,
        to: HostId,
        why: &str,
    ) -> ApiResult<Option<Claim>> {
        let mut tx = self.db.begin_write().await?;
        let now = now_ms();
        let message = format!("move to host {to} aborted: {why}; it stays where it was");
        let row = sqlx::query(
            "UPDATE instances SET move_target = NULL, move_started_at = NULL, move_reason = NULL, \
               generation = generation + 1, status_reason = $3, updated_at = $4 \
             WHERE id = $1 AND move_target = $2 AND deleted_at IS NULL \
             RETURNING project_id, vcpus, ram_mib, disk_gib",
        )
        .bind(id.to_string())
        .bind(to.to_string())
        .bind(&message)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let released = instance_claim_of(&row, to)?;
        host_release(&mut tx, released).await?;
        event_write(
            &mut tx,
            "instance",
            &id.to_string(),
            Some(row.id("project_id")?),
            "instance.move_failed",
            &message,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(released))
    }

    /// Sets the relocation policy of an instance the caller may change.
    pub async fn instance_set_relocation(
        &self,
        caller: &crate::caller::Caller,
        id: InstanceId,
        relocation: Relocation,
    ) -> ApiResult<()> {
        self.instance_get_for_write(caller, id).await?;
        let update = sqlx::query(
            "UPDATE instances SET relocation = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .bind(relocation.as_str())
        .bind(now_ms());
        let done = self.db.gated(update.execute(&self.db.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("instance", id));
        }
        Ok(())
    }

    /// The hypervisors and live placed instances a rebalancing plan is
    /// made from: two statements however large the cloud.
    pub async fn rebalance_inputs(&self) -> ApiResult<(Vec<BalanceHost>, Vec<BalanceInstance>)> {
        let hosts = sqlx::query(
            "SELECT id, name, rack_id, admin_state, health, last_heartbeat_at, cap_vcpus, cap_ram_mib \
             FROM hosts WHERE kind = 'hypervisor' ORDER BY name, id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(BalanceHost {
                id: r.id("id")?,
                name: r.text("name")?,
                rack: r.opt_id("rack_id")?,
                admin_state: r.parsed("admin_state", AdminState::parse)?,
                health: r.parsed("health", HostHealth::parse)?,
                last_heartbeat_ms: r.opt_int("last_heartbeat_at")?,
                vcpus: r.uint("cap_vcpus")? as u32,
                ram_mib: r.uint("cap_ram_mib")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let instances = sqlx::query(
            "SELECT id, name, host_id, move_target, vcpus, ram_mib, group_id, relocation FROM instances \
             WHERE deleted_at IS NULL AND host_id IS NOT NULL AND desired <> 'deleted' \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(BalanceInstance {
                id: r.id("id")?,
                name: r.text("name")?,
                host: r.id("host_id")?,
                moving_to: r.opt_id("move_target")?,
                vcpus: r.uint("vcpus")? as u32,
                ram_mib: r.uint("ram_mib")?,
                group: r.opt_id("group_id")?,
                relocation: r.parsed("relocation", Relocation::parse)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((hosts, instances))
    }
}

/// The claim of a row returning `vcpus`, `ram_mib` and `disk_gib`, on `host`.
fn instance_claim_of(r: &AnyRow, host: HostId) -> Result<Claim, sqlx::Error> {
    Ok(Claim {
        host,
        vcpus: r.int("vcpus")?,
        ram_mib: r.int("ram_mib")?,
        disk_gib: r.int("disk_gib")?,
        storage_bytes: 0,
        instances: 1,
        volumes: 0,
    })
}

/// Releases the claim of a move under way on its target and clears it, in
/// `tx` (the health monitor re-places an instance whose source failed
/// mid-move).
pub async fn move_forget(tx: &mut WriteTx, r: &AnyRow) -> Result<Option<Claim>, sqlx::Error> {
    let Some(c) = move_target_claim(r)? else {
        return Ok(None);
    };
    host_release(tx, c).await?;
    sqlx::query(
        "UPDATE instances SET move_target = NULL, move_started_at = NULL, move_reason = NULL WHERE id = $1",
    )
    .bind(r.text("id")?)
    .execute(&mut ***tx)
    .await?;
    Ok(Some(c))
}

impl Store {
    /// Queues a plan's moves, in one transaction.
    pub async fn planned_moves_queue(&self, moves: &[PlannedMove]) -> ApiResult<()> {
        let plan = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        for (seq, m) in moves.iter().enumerate() {
            sqlx::query(
                "INSERT INTO planned_moves \
                 (plan_id, seq, instance_id, from_host, to_host, depends_on, step, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7)",
            )
            .bind(&plan)
            .bind(seq as i64)
            .bind(m.instance.to_string())
            .bind(m.from.to_string())
            .bind(m.to.to_string())
            .bind(serde_json::to_string(&m.depends_on).unwrap_or_else(|_| "[]".into()))
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every plan with a move still queued or running, oldest first.
    pub async fn planned_moves_open(&self) -> ApiResult<Vec<QueuedPlan>> {
        let rows = sqlx::query(
            "SELECT plan_id, seq, instance_id, from_host, to_host, depends_on, step \
             FROM planned_moves WHERE plan_id IN \
               (SELECT plan_id FROM planned_moves WHERE step IN ('queued', 'running')) \
             ORDER BY created_at, plan_id, seq",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut plans: Vec<QueuedPlan> = Vec::new();
        for r in rows {
            let id = r.text("plan_id")?;
            let depends_on: Vec<usize> = serde_json::from_str(&r.text("depends_on")?)
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
            let m = PlannedMove {
                instance: r.id("instance_id")?,
                from: r.id("from_host")?,
                to: r.id("to_host")?,
                depends_on,
            };
            let step = Step::parse(&r.text("step")?)?;
            match plans.last_mut().filter(|p| p.id == id) {
                Some(p) => {
                    p.moves.push(m);
                    p.steps.push(step);
                }
                None => plans.push(QueuedPlan {
                    id,
                    moves: vec![m],
                    steps: vec![step],
                }),
            }
        }
        Ok(plans)
    }

    /// Moves of queued plans not yet done or failed.
    pub async fn planned_moves_pending(&self) -> ApiResult<u64> {
        Ok(sqlx::query(
            "SELECT COUNT(*) AS n FROM planned_moves WHERE step IN ('queued', 'running')",
        )
        .fetch_one(&self.db.pool)
        .await?
        .uint("n")?)
    }

    /// Sets the steps of some moves of one plan, in one transaction, and
    /// forgets the plans whose every move ended.
    pub async fn planned_moves_set(&self, plan: &str, steps: &[(usize, Step)]) -> ApiResult<()> {
        let mut tx = self.db.begin_write().await?;
        for (seq, step) in steps {
            sqlx::query("UPDATE planned_moves SET step = $3 WHERE plan_id = $1 AND seq = $2")
                .bind(plan)
                .bind(*seq as i64)
                .bind(step.as_str())
                .execute(&mut **tx)
                .await?;
        }
        forget_finished_plans(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records how the running planned move of `instance` ended, if it has
    /// one.
    pub async fn planned_move_finish(&self, instance: InstanceId, done: bool) -> ApiResult<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE planned_moves SET step = $2 WHERE instance_id = $1 AND step = 'running'",
        )
        .bind(instance.to_string())
        .bind(if done { Step::Done } else { Step::Failed }.as_str())
        .execute(&mut **tx)
        .await?;
        forget_finished_plans(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Deletes the plans none of whose moves is queued or running any more.
async fn forget_finished_plans(tx: &mut WriteTx) -> ApiResult<()> {
    sqlx::query(
        "DELETE FROM planned_moves WHERE plan_id NOT IN \
           (SELECT plan_id FROM planned_moves WHERE step IN ('queued', 'running'))",
    )
    .execute(&mut ***tx)
    .await?;
    Ok(())
}
