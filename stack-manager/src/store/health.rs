//! What the health monitor (`crate::health`) reads and writes: each
//! hypervisor's health state, the fencing of its volumes, the re-placement
//! of its instances, crash restarts, the events of all of it, and the
//! cloud-wide pause of the mass-failure guard.
//!
//! Every transition is one conditional UPDATE (`WHERE health = $from`) with
//! its event, in one transaction: two monitors (or a monitor and an
//! operator) racing on a host cannot both act on it.

use api::ids::{GroupId, HostId, InstanceId, ProjectId, VolumeId};
use api::resources::{DesiredState, EvacuationState, Event, HostHealth, List};

use super::claims::{host_release, Claim, InstanceDemand, Placer};
use super::instances::instance_claim;
use super::Store;
use crate::caller::Caller;
use crate::db::{lock_row, now_ms, RowExt, WriteTx};
use crate::error::{ApiError, ApiResult};

/// A hypervisor as the monitor judges it.
#[derive(Debug, Clone)]
pub struct HealthRow {
    pub id: HostId,
    pub name: String,
    pub health: HostHealth,
    pub since: Option<i64>,
    pub reason: Option<String>,
    /// When it was first found silent; `None` while it is up.
    pub lost_at: Option<i64>,
    pub last_heartbeat_ms: Option<i64>,
    pub machine_id: Option<String>,
}

/// A volume whose storage node has not yet confirmed that a fenced host
/// lost access to it.
#[derive(Debug, Clone)]
pub struct Unfenced {
    pub volume: VolumeId,
    pub node: Option<HostId>,
    pub node_name: Option<String>,
}

/// An instance the monitor must re-place.
#[derive(Debug, Clone)]
pub struct ToPlace {
    pub id: InstanceId,
    pub desired: DesiredState,
    pub group: Option<GroupId>,
    pub demand: InstanceDemand,
}

/// What a re-placement did, for the caller to apply to the scheduler's
/// view and the reconcilers once it is committed.
#[derive(Debug, Default)]
pub struct Relocated {
    /// The claim given back on the old host.
    pub released: Option<Claim>,
    /// The claim on the new host; `None`: no host could take it (it waits
    /// in `pending`).
    pub placed: Option<Claim>,
    /// Storage nodes whose ACLs change with it.
    pub storage: Vec<HostId>,
}

/// A crashed instance whose restart is due or must be scheduled.
#[derive(Debug, Clone)]
pub struct Crashed {
    pub id: InstanceId,
    pub host: HostId,
    pub crash_count: u64,
    pub restart_at: Option<i64>,
}

/// `restart_at` of an instance the crash policy gave up on.
pub const GAVE_UP: i64 = i64::MAX;

/// The name of the guard's flag in `health_flags`.
const EVACUATION_PAUSED: &str = "evacuation_paused";
/// When the guard was last lifted: hosts lost before it do not count again.
const EVACUATION_RESUMED: &str = "evacuation_resumed";

fn event_of_row(r: &sqlx::any::AnyRow) -> Result<Event, sqlx::Error> {
    Ok(Event {
        at: r.time("at")?,
        subject_kind: r.text("subject_kind")?,
        subject_id: r.text("subject_id")?,
        event: r.text("event")?,
        message: r.text("message")?,
    })
}

/// Records an event in `tx`.
pub async fn event_write(
    tx: &mut WriteTx,
    subject_kind: &str,
    subject_id: &str,
    project: Option<ProjectId>,
    event: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO events (id, at, subject_kind, subject_id, project_id, event, message) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now_ms())
    .bind(subject_kind)
    .bind(subject_id)
    .bind(project.map(|p| p.to_string()))
    .bind(event)
    .bind(message)
    .execute(&mut ***tx)
    .await?;
    Ok(())
}

/// Events are few per subject; a page holds the newest this many.
const EVENTS_SHOWN: i64 = 500;

impl Store {
    /// Every hypervisor with its health, for one monitor pass.
    pub async fn health_hypervisors(&self) -> ApiResult<Vec<HealthRow>> {
        sqlx::query(
            "SELECT id, name, health, health_since, health_reason, lost_at, last_heartbeat_at, machine_id \
             FROM hosts WHERE kind = 'hypervisor' ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(HealthRow {
                id: r.id("id")?,
                name: r.text("name")?,
                health: r.parsed("health", HostHealth::parse)?,
                since: r.opt_int("health_since")?,
                reason: r.opt_text("health_reason")?,
                lost_at: r.opt_int("lost_at")?,
                last_heartbeat_ms: r.opt_int("last_heartbeat_at")?,
                machine_id: r.opt_text("machine_id")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// Moves `host` from one of `from` to `to` with its event; false when
    /// it was in none of them (someone else moved it first).
    pub async fn host_health_move(
        &self,
        host: HostId,
        from: &[HostHealth],
        to: HostHealth,
        reason: Option<&str>,
        event: &str,
        message: &str,
    ) -> ApiResult<bool> {
        let mut tx = self.db.begin_write().await?;
        let moved = health_move(&mut tx, host, from, to, reason).await?;
        if moved {
            event_write(&mut tx, "host", &host.to_string(), None, event, message).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// Updates the reason of a host's current state without moving it
    /// (an unconfirmed fencing step), with an event when it changed.
    pub async fn host_health_note(
        &self,
        host: HostId,
        health: HostHealth,
        reason: &str,
        event: &str,
    ) -> ApiResult<()> {
        let mut tx = self.db.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE hosts SET health_reason = $3 WHERE id = $1 AND health = $2 \
               AND (health_reason IS NULL OR health_reason <> $3)",
        )
        .bind(host.to_string())
        .bind(health.as_str())
        .bind(reason)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            event_write(&mut tx, "host", &host.to_string(), None, event, reason).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Begins fencing `host` (from any state but `fencing` and `fenced`):
    /// in the same transaction, every volume attached to its instances gets
    /// a new generation, whose spec no longer allows the host's initiator
    /// (see `volume_specs_where`). Returns the storage nodes to wake, or
    /// `None` when it was already fencing or fenced.
    /// `silent_before`: only if its last heartbeat is older than that (the
    /// monitor's judgement; `None` for an operator's evacuation).
    pub async fn host_fence_begin(
        &self,
        host: HostId,
        message: &str,
        silent_before: Option<i64>,
    ) -> ApiResult<Option<Vec<HostId>>> {
        let mut tx = self.db.begin_write().await?;
        let from = [HostHealth::Up, HostHealth::Suspected, HostHealth::Down];
        let fencing = HostHealth::Fencing;
        if !health_move_if(&mut tx, host, &from, fencing, Some(message), silent_before).await? {
            return Ok(None);
        }
        let nodes = volumes_of_host_bump(&mut tx, host).await?;
        event_write(
            &mut tx,
            "host",
            &host.to_string(),
            None,
            "host.fencing",
            message,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(nodes))
    }

    /// Fencing confirmed on an operator's word (see
    /// [`api::resources::EvacuateRequest::confirm_fenced`]): a `fencing`
    /// host moves to `fenced` if it has been silent since `silent_before`.
    /// False when it was not fencing or it heartbeated since.
    pub async fn host_fence_confirm(
        &self,
        host: HostId,
        message: &str,
        silent_before: i64,
    ) -> ApiResult<bool> {
        let mut tx = self.db.begin_write().await?;
        let (from, to) = ([HostHealth::Fencing], HostHealth::Fenced);
        let moved =
            health_move_if(&mut tx, host, &from, to, Some(message), Some(silent_before)).await?;
        if moved {
            let id = host.to_string();
            event_write(&mut tx, "host", &id, None, "host.fenced", message).await?;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// The volumes of `host`'s instances whose storage node has not yet
    /// applied the spec that revokes the host: empty once storage fencing
    /// is confirmed.
    pub async fn host_fence_pending(&self, host: HostId) -> ApiResult<Vec<Unfenced>> {
        sqlx::query(
            "SELECT v.id, v.host_id, n.name AS node_name FROM attachments a \
             JOIN instances i ON i.id = a.instance_id \
             JOIN volumes v ON v.id = a.volume_id \
             LEFT JOIN hosts n ON n.id = v.host_id \
             WHERE i.host_id = $1 AND i.deleted_at IS NULL AND v.deleted_at IS NULL \
               AND v.applied_generation < v.generation ORDER BY v.id",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Unfenced {
                volume: r.id("id")?,
                node: r.opt_id("host_id")?,
                node_name: r.opt_text("node_name")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// The live instances on `host` (to re-place once it is fenced), or
    /// those waiting for a host anywhere (`host` = `None`).
    pub async fn instances_to_place(&self, host: Option<HostId>) -> ApiResult<Vec<ToPlace>> {
        let q = match host {
            Some(h) => sqlx::query(
                "SELECT id, desired, group_id, vcpus, ram_mib, disk_gib FROM instances \
                 WHERE host_id = $1 AND deleted_at IS NULL ORDER BY created_at, id",
            )
            .bind(h.to_string()),
            None => sqlx::query(
                "SELECT id, desired, group_id, vcpus, ram_mib, disk_gib FROM instances \
                 WHERE host_id IS NULL AND deleted_at IS NULL ORDER BY created_at, id",
            ),
        };
        q.fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(ToPlace {
                    id: r.id("id")?,
                    desired: r.parsed("desired", DesiredState::parse)?,
                    group: r.opt_id("group_id")?,
                    demand: InstanceDemand::of_row(r)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Re-creates an instance elsewhere, in ONE transaction: the claim on
    /// `from` (its fenced host, or none when it was waiting) is given back,
    /// a new host is claimed through `placer` (anti-affinity against where
    /// the group is now), and the row moves there with a new generation;
    /// its id, name, MACs, addresses, keypair, user-data and attachments
    /// stay. Its volumes get a new generation too, so their storage nodes
    /// allow the new host's initiator. When no host can take it, it waits
    /// in `pending` with the reason and no host.
    pub async fn instance_relocate(
        &self,
        id: InstanceId,
        from: Option<HostId>,
        mut demand: InstanceDemand,
        placer: impl Placer,
        why: &str,
    ) -> ApiResult<Relocated> {
        let mut tx = self.db.begin_write().await?;
        let group: Option<GroupId> = sqlx::query("SELECT group_id FROM instances WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.opt_id("group_id"))
            .transpose()?
            .flatten();
        // Locks in the order a create takes them (group, then hosts), with
        // the instance's own row between: a second monitor (another
        // replica) or a delete racing this one waits here and then sees
        // what this one did.
        if let Some(group) = group {
            lock_row(&mut tx, "anti_affinity_groups", &group.to_string()).await?;
        }
        lock_row(&mut tx, "instances", &id.to_string()).await?;
        let row = sqlx::query(
            "SELECT id, project_id, host_id, group_id, vcpus, ram_mib, disk_gib, desired, move_target FROM instances \
             WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else {
            return Ok(Relocated::default());
        };
        if row.opt_id::<HostId>("host_id")? != from
            || row.parsed("desired", DesiredState::parse)? == DesiredState::Deleted
        {
            // Moved, or being deleted, meanwhile: nothing to do here.
            return Ok(Relocated::default());
        }
        let project: ProjectId = row.id("project_id")?;
        let mut done = Relocated::default();
        if let Some(group) = group {
            let (hosts, racks) = super::instances::group_footprint_in(&mut tx, group, id).await?;
            demand.group_hosts = hosts;
            demand.group_racks = racks;
        }
        if let Some(old) = instance_claim(&row)? {
            host_release(&mut tx, old).await?;
            done.released = Some(old);
        }
        // Its host failed in the middle of a planned move: that move is
        // over, and its target's claim goes back (the scheduler's view
        // catches up at its next refresh).
        super::moves::move_forget(&mut tx, &row).await?;
        let now = now_ms();
        match placer.claim_instance(&mut tx, &demand).await {
            Ok(claim) => {
                sqlx::query(
                    "UPDATE instances SET host_id = $2, generation = generation + 1, applied_generation = 0, \
                     status = 'building', status_reason = $3, crash_count = 0, restart_at = NULL, \
                     running_since = NULL, updated_at = $4 WHERE id = $1",
                )
                .bind(id.to_string())
                .bind(claim.host.to_string())
                .bind(why)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                done.storage = volumes_of_instance_bump(&mut tx, id).await?;
                let message = format!("{why}; re-created on host {}", claim.host);
                event_write(
                    &mut tx,
                    "instance",
                    &id.to_string(),
                    Some(project),
                    "instance.relocated",
                    &message,
                )
                .await?;
                done.placed = Some(claim);
            }
            Err(e) => {
                let reason = format!("{why}; waiting for a host: {}", e.message);
                let changed = sqlx::query(
                    "UPDATE instances SET host_id = NULL, status = 'pending', status_reason = $2, updated_at = $3 \
                     WHERE id = $1 AND (host_id IS NOT NULL OR status_reason IS NULL OR status_reason <> $2)",
                )
                .bind(id.to_string())
                .bind(&reason)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1;
                if changed {
                    event_write(
                        &mut tx,
                        "instance",
                        &id.to_string(),
                        Some(project),
                        "instance.pending",
                        &reason,
                    )
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Takes a fenced host back: it is `up` and its initiator is allowed
    /// again wherever its (new) instances' volumes say.
    pub async fn host_readmit(&self, caller: &Caller, host: HostId) -> ApiResult<()> {
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let state =
            sqlx::query("SELECT health, health_since, last_heartbeat_at FROM hosts WHERE id = $1")
                .bind(host.to_string())
                .fetch_optional(&mut **tx)
                .await?
                .ok_or_else(|| ApiError::not_found("host", host.to_string()))?;
        let health = state.parsed("health", HostHealth::parse)?;
        let since = state.opt_int("health_since")?.unwrap_or(0);
        let heard = state.opt_int("last_heartbeat_at")?.unwrap_or(0);
        if health == HostHealth::Fenced && heard <= since {
            return Err(ApiError::conflict(format!(
                "host {host} has not sent a heartbeat since it was fenced: start its agent (and power it on) first"
            )));
        }
        if health != HostHealth::Fenced {
            return Err(ApiError::conflict(format!(
                "host {host} is {}: only a fenced host is re-admitted",
                health.as_str()
            )));
        }
        let left = sqlx::query(
            "SELECT COUNT(*) AS n FROM instances WHERE host_id = $1 AND deleted_at IS NULL",
        )
        .bind(host.to_string())
        .fetch_one(&mut **tx)
        .await?
        .int("n")?;
        if left > 0 {
            return Err(ApiError::conflict(format!(
                "host {host} still holds {left} instance(s) being re-created elsewhere; re-admit it once they moved"
            )));
        }
        health_move(&mut tx, host, &[HostHealth::Fenced], HostHealth::Up, None).await?;
        event_write(
            &mut tx,
            "host",
            &host.to_string(),
            None,
            "host.readmitted",
            &format!("re-admitted by {}", caller.user_name),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Crashed instances (as their agent last reported at the current
    /// generation) that want to run: their restart is scheduled or due.
    pub async fn instances_crashed(&self) -> ApiResult<Vec<Crashed>> {
        sqlx::query(
            "SELECT i.id, i.host_id, i.crash_count, i.restart_at FROM instances i \
             JOIN hosts h ON h.id = i.host_id \
             WHERE i.status = 'crashed' AND i.desired = 'running' AND i.deleted_at IS NULL \
               AND i.applied_generation = i.generation AND h.health = 'up' ORDER BY i.id",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Crashed {
                id: r.id("id")?,
                host: r.id("host_id")?,
                crash_count: r.uint("crash_count")?,
                restart_at: r.opt_int("restart_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// Schedules the restart of a crashed instance at `at` (ms), its crash
    /// counted; [`GAVE_UP`] when the policy gives up on it (it stays
    /// `crashed`, with the reason, until a user starts it).
    pub async fn instance_crash_schedule(
        &self,
        id: InstanceId,
        at: i64,
        message: &str,
    ) -> ApiResult<()> {
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "UPDATE instances SET crash_count = crash_count + 1, restart_at = $2, status_reason = $3 \
             WHERE id = $1 AND status = 'crashed' AND restart_at IS NULL AND applied_generation = generation",
        )
        .bind(id.to_string())
        .bind(at)
        .bind(message)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            instance_event(&mut tx, id, "instance.crashed", message).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Restarts a crashed instance in place: a new generation, which its
    /// reconciler pushes and its agent starts.
    pub async fn instance_crash_restart(&self, id: InstanceId, message: &str) -> ApiResult<bool> {
        let mut tx = self.db.begin_write().await?;
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE instances SET generation = generation + 1, restart_at = NULL, running_since = $2, \
             status_reason = $3, updated_at = $2 \
             WHERE id = $1 AND status = 'crashed' AND restart_at IS NOT NULL AND restart_at <= $2",
        )
        .bind(id.to_string())
        .bind(now)
        .bind(message)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            instance_event(&mut tx, id, "instance.restarted", message).await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Forgets the crashes of instances that stayed up `after_ms` since
    /// their last restart.
    pub async fn instance_crashes_reset(&self, after_ms: i64) -> ApiResult<u64> {
        let update = sqlx::query(
            "UPDATE instances SET crash_count = 0, running_since = NULL \
             WHERE crash_count > 0 AND status = 'running' AND running_since IS NOT NULL AND running_since < $1",
        )
        .bind(now_ms() - after_ms);
        // A transaction, not a gated statement: it is the health monitor's
        // write, so it checks the monitor's lease first.
        let mut tx = self.db.begin_write().await?;
        let done = update.execute(&mut **tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// A host's events, oldest first (admins).
    pub async fn host_events(&self, caller: &Caller, host: HostId) -> ApiResult<List<Event>> {
        caller.require_admin()?;
        self.events_of("host", &host.to_string()).await
    }

    /// An instance's events, oldest first, for whoever may read it.
    pub async fn instance_events(&self, caller: &Caller, id: InstanceId) -> ApiResult<List<Event>> {
        self.instance_get(caller, id).await?;
        self.events_of("instance", &id.to_string()).await
    }

    async fn events_of(&self, kind: &str, id: &str) -> ApiResult<List<Event>> {
        let mut items = sqlx::query(
            "SELECT * FROM events WHERE subject_kind = $1 AND subject_id = $2 ORDER BY at DESC, id DESC LIMIT $3",
        )
        .bind(kind)
        .bind(id)
        .bind(EVENTS_SHOWN)
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(event_of_row)
        .collect::<Result<Vec<_>, _>>()?;
        items.reverse();
        Ok(List {
            items,
            next_page_token: None,
        })
    }

    /// The mass-failure guard's state.
    pub async fn evacuation_state(&self) -> ApiResult<EvacuationState> {
        let row = sqlx::query("SELECT since, reason FROM health_flags WHERE name = $1")
            .bind(EVACUATION_PAUSED)
            .fetch_optional(&self.db.pool)
            .await?;
        Ok(match row {
            Some(r) => EvacuationState {
                paused: true,
                since: Some(r.time("since")?),
                reason: r.opt_text("reason")?,
            },
            None => EvacuationState {
                paused: false,
                since: None,
                reason: None,
            },
        })
    }

    /// When the guard was last lifted (ms), if ever.
    pub async fn evacuation_resumed_at(&self) -> ApiResult<Option<i64>> {
        Ok(
            sqlx::query("SELECT since FROM health_flags WHERE name = $1")
                .bind(EVACUATION_RESUMED)
                .fetch_optional(&self.db.pool)
                .await?
                .map(|r| r.int("since"))
                .transpose()?,
        )
    }

    /// Pauses automatic evacuation (the guard tripped); false when it was
    /// paused already.
    pub async fn evacuation_pause(&self, reason: &str) -> ApiResult<bool> {
        let mut tx = self.db.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO health_flags (name, value, since, reason) VALUES ($1, 'true', $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(EVACUATION_PAUSED)
        .bind(now_ms())
        .bind(reason)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            event_write(
                &mut tx,
                "cloud",
                "evacuation",
                None,
                "evacuation.paused",
                reason,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Lifts the guard (an operator decided).
    pub async fn evacuation_resume(&self, caller: &Caller) -> ApiResult<EvacuationState> {
        caller.require_admin()?;
        let mut tx = self.db.begin_write().await?;
        let now = now_ms();
        let was = sqlx::query("DELETE FROM health_flags WHERE name = $1")
            .bind(EVACUATION_PAUSED)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1;
        sqlx::query(
            "INSERT INTO health_flags (name, value, since, reason) VALUES ($1, 'true', $2, $3) \
             ON CONFLICT (name) DO UPDATE SET since = excluded.since, reason = excluded.reason",
        )
        .bind(EVACUATION_RESUMED)
        .bind(now)
        .bind(format!("resumed by {}", caller.user_name))
        .execute(&mut **tx)
        .await?;
        if was {
            let message = format!("automatic evacuation resumed by {}", caller.user_name);
            event_write(
                &mut tx,
                "cloud",
                "evacuation",
                None,
                "evacuation.resumed",
                &message,
            )
            .await?;
        }
        tx.commit().await?;
        self.evacuation_state().await
    }
}

async fn instance_event(
    tx: &mut WriteTx,
    id: InstanceId,
    event: &str,
    message: &str,
) -> Result<(), sqlx::Error> {
    let project: Option<ProjectId> = sqlx::query("SELECT project_id FROM instances WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut ***tx)
        .await?
        .map(|r| r.id("project_id"))
        .transpose()?;
    event_write(tx, "instance", &id.to_string(), project, event, message).await
}

/// The one conditional health transition.
async fn health_move(
    tx: &mut WriteTx,
    host: HostId,
    from: &[HostHealth],
    to: HostHealth,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    health_move_if(tx, host, from, to, reason, None).await
}

/// [`health_move`], and only if the host's last heartbeat is older than
/// `silent_before` (ms) when given: a heartbeat that landed since the
/// monitor read the host wins.
async fn health_move_if(
    tx: &mut WriteTx,
    host: HostId,
    from: &[HostHealth],
    to: HostHealth,
    reason: Option<&str>,
    silent_before: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let states = from
        .iter()
        .map(|h| format!("'{}'", h.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let silent = match silent_before {
        Some(_) => " AND (last_heartbeat_at IS NULL OR last_heartbeat_at < $5)",
        None => "",
    };
    let sql = format!(
        "UPDATE hosts SET health = $2, health_since = $3, health_reason = $4, \
           lost_at = CASE WHEN $2 = 'up' THEN NULL WHEN lost_at IS NULL THEN $3 ELSE lost_at END \
         WHERE id = $1 AND health IN ({states}){silent}"
    );
    let mut update = sqlx::query(&sql)
        .bind(host.to_string())
        .bind(to.as_str())
        .bind(now_ms())
        .bind(reason);
    if let Some(t) = silent_before {
        update = update.bind(t);
    }
    Ok(update.execute(&mut ***tx).await?.rows_affected() == 1)
}

/// Gives every volume attached to `host`'s instances a new generation;
/// returns their storage nodes.
async fn volumes_of_host_bump(tx: &mut WriteTx, host: HostId) -> Result<Vec<HostId>, sqlx::Error> {
    let nodes = sqlx::query(
        "SELECT DISTINCT v.host_id FROM attachments a JOIN instances i ON i.id = a.instance_id \
         JOIN volumes v ON v.id = a.volume_id \
         WHERE i.host_id = $1 AND i.deleted_at IS NULL AND v.host_id IS NOT NULL",
    )
    .bind(host.to_string())
    .fetch_all(&mut ***tx)
    .await?
    .iter()
    .map(|r| r.id("host_id"))
    .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "UPDATE volumes SET generation = generation + 1 WHERE id IN \
         (SELECT a.volume_id FROM attachments a JOIN instances i ON i.id = a.instance_id \
          WHERE i.host_id = $1 AND i.deleted_at IS NULL)",
    )
    .bind(host.to_string())
    .execute(&mut ***tx)
    .await?;
    Ok(nodes)
}

/// The same for one instance's volumes.
pub(super) async fn volumes_of_instance_bump(
    tx: &mut WriteTx,
    id: InstanceId,
) -> Result<Vec<HostId>, sqlx::Error> {
    let nodes = sqlx::query(
        "SELECT DISTINCT v.host_id FROM attachments a JOIN volumes v ON v.id = a.volume_id \
         WHERE a.instance_id = $1 AND v.host_id IS NOT NULL",
    )
    .bind(id.to_string())
    .fetch_all(&mut ***tx)
    .await?
    .iter()
    .map(|r| r.id("host_id"))
    .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(
        "UPDATE volumes SET generation = generation + 1 WHERE id IN \
         (SELECT volume_id FROM attachments WHERE instance_id = $1)",
    )
    .bind(id.to_string())
    .execute(&mut ***tx)
    .await?;
    Ok(nodes)
}
