//! Instances: reading them (one statement per page or per instance, NICs
//! joined in), the user's lifecycle actions (`crate::lifecycle`), delete
//! requests, volume attachments, and folding what agents observe back in.
//!
//! Observed state is written only when it is not older than what the row
//! already holds: `applied_generation <= $observed`, on the host the row
//! places the instance on. A report that lost a race with a newer one (a
//! heartbeat read before a push was answered, an old host's report after
//! the instance moved) changes nothing, and the caller is told so.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use api::ids::{GroupId, HostId, InstanceId, ProjectId, RackId, SubnetId, VolumeId};
use api::internal::{InstanceSpec, ObservedInstance};
use api::resources::{
    Attachment, DesiredState, Flavor, Group, Image, Instance, InstanceStatus, Keypair, List,
    Network, Nic, ProjectPage, Relocation, VolumeStatus,
};
use sqlx::any::AnyRow;

use super::claims::Claim;
use super::claims::{InstanceDemand, Placer};
use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{
    from_ms, is_unique_violation, lock_row, now_ms, share_lock_row, to_i64, Backend, RowExt,
};
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{self, InstanceAction, VolumeAction};
use crate::store::quotas::{self, QuotaDelta};

/// Most volumes one instance may have attached.
pub const MAX_VOLUMES: i64 = 16;

/// Instances are listed oldest first.
static PAGES: Keyset = Keyset {
    list: "instances",
    columns: &[("i.created_at", KeyKind::Int), ("i.id", KeyKind::Text)],
    descending: false,
};

/// The columns of an instance with each of its NICs (one row per NIC, or
/// one row with NULL NIC columns for an instance without any), from `i`,
/// which the query defines.
const WITH_NICS: &str = "SELECT i.*, \
     (SELECT h.health FROM hosts h WHERE h.id = i.host_id) AS host_health, \
     (SELECT h.name FROM hosts h WHERE h.id = i.host_id) AS host_name, \
     a.subnet_id AS nic_subnet_id, a.address AS nic_address, \
     a.nic_index AS nic_index, s.network_id AS nic_network_id FROM";
const NIC_JOINS: &str =
    "LEFT JOIN addresses a ON a.instance_id = i.id LEFT JOIN subnets s ON s.id = a.subnet_id";

/// Where an instance runs and how to reach the agent there.
pub struct InstanceAgent {
    pub host: HostId,
    pub agent_url: String,
    pub credential: String,
}

/// An instance after a change, with the hosts whose reconcilers must hear
/// of it (woken by the caller once the change is committed).
pub struct Changed<T> {
    pub value: T,
    pub hosts: Vec<HostId>,
}

/// What folding one observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Whether the row took the report (false: it was older than what the
    /// row holds, or the instance is no longer placed there).
    pub applied: bool,
    /// Whether the agent is behind what is desired (the host needs a push).
    pub behind: bool,
}

fn nic_of_row(r: &AnyRow, instance: InstanceId) -> ApiResult<Option<Nic>> {
    let Some(address) = r.opt_text("nic_address")? else {
        return Ok(None);
    };
    Ok(Some(Nic {
        network_id: r.id("nic_network_id")?,
        subnet_id: r.id("nic_subnet_id")?,
        address: address
            .parse()
            .map_err(|_| ApiError::internal(format!("stored address `{address}` is invalid")))?,
        mac: netconfig::derive_mac(instance.0.as_bytes(), r.uint("nic_index")? as u8),
    }))
}

/// The status a reader is shown: what was last observed, unless the host
/// it was observed on is no longer trusted to tell (suspected, being
/// fenced, or fenced with the instance not yet moved): then `unknown`, with
/// the host's state as the reason.
fn shown_status(r: &AnyRow) -> ApiResult<(InstanceStatus, Option<String>)> {
    let status = r.parsed("status", InstanceStatus::parse)?;
    let reason = r.opt_text("status_reason")?;
    if matches!(status, InstanceStatus::Deleted | InstanceStatus::Pending) {
        return Ok((status, reason));
    }
    let host = r.opt_text("host_name")?.unwrap_or_default();
    let why = match r.opt_text("host_health")?.as_deref() {
        Some("suspected") => format!("host {host} is suspected: no heartbeat within the deadline"),
        Some("fencing") => {
            format!("host {host} is being fenced; the instance will be re-created elsewhere")
        }
        Some("fenced") => {
            format!("host {host} was fenced; the instance is being re-created elsewhere")
        }
        _ => return Ok((status, reason)),
    };
    let why = match (status, reason) {
        (InstanceStatus::Deleting, _) => return Ok((status, Some(why))),
        (_, Some(last)) => format!("{why} (last observed {}: {last})", status.as_str()),
        (_, None) => format!("{why} (last observed {})", status.as_str()),
    };
    Ok((InstanceStatus::Unknown, Some(why)))
}

fn instance_of_row(r: &AnyRow, nics: Vec<Nic>) -> ApiResult<Instance> {
    let (status, status_reason) = shown_status(r)?;
    Ok(Instance {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        flavor_id: r.id("flavor_id")?,
        image_id: r.id("image_id")?,
        keypair_id: r.opt_id("keypair_id")?,
        anti_affinity_group_id: r.opt_id("group_id")?,
        host_id: r.opt_id("host_id")?,
        desired: r.parsed("desired", DesiredState::parse)?,
        status,
        status_reason,
        nics,
        vcpus: r.uint("vcpus")? as u32,
        ram_mib: r.uint("ram_mib")?,
        disk_gib: r.uint("disk_gib")?,
        relocation: r.parsed("relocation", Relocation::parse)?,
        moving_to: r.opt_id("move_target")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// Instances from rows of [`WITH_NICS`], ordered by instance then NIC.
fn instances_of_rows(rows: &[AnyRow]) -> ApiResult<Vec<Instance>> {
    let mut out: Vec<Instance> = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let id: InstanceId = rows[start].id("id")?;
        let mut end = start + 1;
        while end < rows.len() && rows[end].id::<InstanceId>("id")? == id {
            end += 1;
        }
        let nics = rows[start..end]
            .iter()
            .filter_map(|r| nic_of_row(r, id).transpose())
            .collect::<ApiResult<Vec<_>>>()?;
        out.push(instance_of_row(&rows[start], nics)?);
        start = end;
    }
    Ok(out)
}

impl Store {
    /// One page of the instances the caller may list (see
    /// `Store::project_for_read`), oldest first, in one statement.
    pub async fn instance_list(
        &self,
        caller: &Caller,
        q: &ProjectPage,
    ) -> ApiResult<List<Instance>> {
        self.scoped_page(
            caller,
            q,
            &PAGES,
            |page| {
                format!(
                    "{WITH_NICS} (SELECT * FROM instances i WHERE i.deleted_at IS NULL \
                       AND ($1 = '' OR i.project_id = $1){}{}) i {NIC_JOINS} ORDER BY {}, a.nic_index",
                    page.condition(2),
                    page.order_and_limit(),
                    page.order(),
                )
            },
            instances_of_rows,
            |i| vec![i.created_at.into(), i.id.to_string().into()],
        )
        .await
    }

    /// A live instance the caller may read; 404 otherwise.
    pub async fn instance_get(&self, caller: &Caller, id: InstanceId) -> ApiResult<Instance> {
        let sql = format!(
            "{WITH_NICS} instances i {NIC_JOINS} WHERE i.id = $1 AND i.deleted_at IS NULL ORDER BY a.nic_index"
        );
        let rows = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_all(&self.db.pool)
            .await?;
        let instance = instances_of_rows(&rows)?
            .pop()
            .ok_or_else(|| ApiError::not_found("instance", id))?;
        caller.check_read(instance.project_id, "instance", id)?;
        Ok(instance)
    }

    /// [`instance_get`](Self::instance_get) for a caller who is about to
    /// change it: readers get 403.
    pub async fn instance_get_for_write(
        &self,
        caller: &Caller,
        id: InstanceId,
    ) -> ApiResult<Instance> {
        let instance = self.instance_get(caller, id).await?;
        caller.check_write(instance.project_id, "instance", id)?;
        Ok(instance)
    }

    /// A user's start, stop or reboot: checked by `lifecycle::instance_action`
    /// and written only if nobody changed the desired state meanwhile.
    pub async fn instance_act(
        &self,
        caller: &Caller,
        id: InstanceId,
        action: InstanceAction,
    ) -> ApiResult<Changed<Instance>> {
        let before = self.instance_get_for_write(caller, id).await?;
        let next = lifecycle::instance_action(before.desired, before.status, action)
            .map_err(|r| ApiError::conflict(r.message(id)))?;
        let update = sqlx::query(
            "UPDATE instances SET desired = $2, status = $3, generation = generation + 1, \
             reboot_count = reboot_count + $4, updated_at = $5, crash_count = 0, restart_at = NULL \
             WHERE id = $1 AND desired = $6 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .bind(next.desired.as_str())
        .bind(next.status.as_str())
        .bind(i32::from(next.reboot))
        .bind(now_ms())
        .bind(before.desired.as_str());
        let done = self.db.gated(update.execute(&self.db.pool)).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::conflict(format!(
                "instance {id} changed meanwhile; retry"
            )));
        }
        let value = self.instance_get(caller, id).await?;
        Ok(Changed {
            hosts: value.host_id.into_iter().collect(),
            value,
        })
    }

    /// Asks for an instance to be deleted: its desired state becomes
    /// `deleted` and its host's reconciler finishes the job. Returns the
    /// instance as it was.
    pub async fn instance_request_delete(
        &self,
        caller: &Caller,
        id: InstanceId,
    ) -> ApiResult<Instance> {
        let instance = self.instance_get_for_write(caller, id).await?;
        let update = sqlx::query(
            "UPDATE instances SET desired = 'deleted', status = 'deleting', generation = generation + 1, \
             updated_at = $2 WHERE id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now_ms());
        self.db.gated(update.execute(&self.db.pool)).await?;
        Ok(instance)
    }

    /// The host an instance runs on and its agent's address; `None` when it
    /// is on none.
    pub async fn instance_agent(
        &self,
        caller: &Caller,
        id: InstanceId,
    ) -> ApiResult<Option<InstanceAgent>> {
        let row = sqlx::query(
            "SELECT i.project_id, i.host_id, h.agent_url, h.credential FROM instances i \
             LEFT JOIN hosts h ON h.id = i.host_id WHERE i.id = $1 AND i.deleted_at IS NULL",
        )
        .bind(id.to_string())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("instance", id))?;
        caller.check_read(row.id("project_id")?, "instance", id)?;
        let (Some(host), Some(agent_url), Some(credential)) = (
            row.opt_id::<HostId>("host_id")?,
            row.opt_text("agent_url")?,
            row.opt_text("credential")?,
        ) else {
            return Ok(None);
        };
        Ok(Some(InstanceAgent {
            host,
            agent_url,
            credential,
        }))
    }

    /// Attaches the caller's volume `volume` (id or name, in the instance's
    /// project) to the instance, at its first free device index. The
    /// volume's storage node and the instance's host must both converge.
    pub async fn instance_attach(
        &self,
        caller: &Caller,
        id: InstanceId,
        volume: &str,
    ) -> ApiResult<Changed<Attachment>> {
        let instance = self.instance_get_for_write(caller, id).await?;
        if instance.desired == DesiredState::Deleted {
            return Err(ApiError::conflict(format!(
                "instance {id} is being deleted"
            )));
        }
        let row = sqlx::query(
            "SELECT id, status, host_id FROM volumes WHERE (id = $1 OR name = $1) AND project_id = $2 \
             AND deleted_at IS NULL",
        )
        .bind(volume)
        .bind(instance.project_id.to_string())
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", volume))?;
        let volume_id: VolumeId = row.id("id")?;
        let status = row.parsed("status", VolumeStatus::parse)?;
        lifecycle::volume_action(status, VolumeAction::Attach)
            .map_err(|r| ApiError::conflict(r.message(volume_id)))?;
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        // First write: the instance must still be live and not being
        // deleted, or the attachment would outlive it.
        let live = sqlx::query(
            "UPDATE instances SET generation = generation + 1, updated_at = $2 \
             WHERE id = $1 AND deleted_at IS NULL AND desired <> 'deleted'",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if live == 0 {
            return Err(ApiError::conflict(format!(
                "instance {id} is being deleted"
            )));
        }
        // Locks in the order relocation takes them: instance, then host.
        host_takes_attachments(&mut tx, id).await?;
        let used: Vec<i64> = sqlx::query(
            "SELECT device_index FROM attachments WHERE instance_id = $1 ORDER BY device_index",
        )
        .bind(id.to_string())
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| r.int("device_index"))
        .collect::<Result<_, _>>()?;
        let index = (0..MAX_VOLUMES)
            .find(|i| !used.contains(i))
            .ok_or_else(|| {
                ApiError::conflict(format!("instance {id} already has {MAX_VOLUMES} volumes"))
            })?;
        // The volume row's status is the lock: only one attach wins.
        let claimed = sqlx::query(&format!(
            "UPDATE volumes SET status = 'in_use', generation = generation + 1 \
             WHERE id = $1 AND status IN ({})",
            VolumeAction::Attach.allowed_sql()
        ))
        .bind(volume_id.to_string())
        .execute(&mut **tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Err(ApiError::conflict(format!(
                "volume {volume_id} was attached meanwhile"
            )));
        }
        sqlx::query(
            "INSERT INTO attachments (volume_id, instance_id, device_index, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(volume_id.to_string())
        .bind(id.to_string())
        .bind(index)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        // The storage node first opens its ACL to the host, then the host
        // logs in: storage first.
        let hosts = [row.opt_id::<HostId>("host_id")?, instance.host_id]
            .into_iter()
            .flatten()
            .collect();
        Ok(Changed {
            value: Attachment {
                volume_id,
                instance_id: id,
                device_index: index as u32,
                created_at: crate::db::from_ms(now),
            },
            hosts,
        })
    }

    /// Detaches `volume` from the instance.
    pub async fn instance_detach(
        &self,
        caller: &Caller,
        id: InstanceId,
        volume: VolumeId,
    ) -> ApiResult<Changed<()>> {
        let instance = self.instance_get_for_write(caller, id).await?;
        let mut tx = self.db.begin_write().await?;
        // The instance row first, then its host: relocation's order.
        sqlx::query("UPDATE instances SET updated_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        host_takes_attachments(&mut tx, id).await?;
        let done = sqlx::query("DELETE FROM attachments WHERE volume_id = $1 AND instance_id = $2")
            .bind(volume.to_string())
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found(
                "attachment of volume",
                format!("{volume} on instance {id}"),
            ));
        }
        let storage_host = sqlx::query(
            "UPDATE volumes SET status = CASE WHEN status = 'in_use' THEN 'available' ELSE status END, \
             generation = generation + 1 WHERE id = $1 RETURNING host_id",
        )
        .bind(volume.to_string())
        .fetch_one(&mut **tx)
        .await?
        .opt_id::<HostId>("host_id")?;
        sqlx::query(
            "UPDATE instances SET generation = generation + 1, updated_at = $2 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(Changed {
            value: (),
            hosts: [storage_host, instance.host_id]
                .into_iter()
                .flatten()
                .collect(),
        })
    }

    /// Folds an agent's report on one instance it runs into the row, if the
    /// row still places it on `host` and the report is not older than what
    /// the row holds.
    pub async fn instance_observe(
        &self,
        host: HostId,
        o: &ObservedInstance,
    ) -> ApiResult<Observed> {
        let row = sqlx::query(
            "SELECT desired, status, status_reason, generation, applied_generation, reboot_count \
             FROM instances WHERE id = $1 AND host_id = $2 AND deleted_at IS NULL",
        )
        .bind(o.id.to_string())
        .bind(host.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else {
            // Not ours any more (deleted, or moved): the host should drop it.
            return Ok(Observed {
                applied: false,
                behind: true,
            });
        };
        if r.parsed("desired", DesiredState::parse)? == DesiredState::Deleted {
            return Ok(Observed {
                applied: false,
                behind: true,
            });
        }
        let generation = r.uint("generation")?;
        let reboot_count = r.uint("reboot_count")?;
        // An agent cannot have applied a generation we never sent.
        let o = &ObservedInstance {
            generation: o.generation.min(generation),
            reboot_count: o.reboot_count.min(reboot_count),
            ..o.clone()
        };
        let behind = o.generation < generation || o.reboot_count < reboot_count;
        let status = crate::lifecycle::instance_status(o, reboot_count);
        let stored = r.text("status")?;
        // A crash the health monitor already annotated (its restart is
        // scheduled) is the same crash, whatever the agent says of it.
        let same_crash = stored == "crashed" && status == InstanceStatus::Crashed;
        let unchanged = stored == status.as_str()
            && (same_crash || r.opt_text("status_reason")? == o.reason)
            && r.uint("applied_generation")? == o.generation;
        if unchanged {
            return Ok(Observed {
                applied: true,
                behind,
            });
        }
        let applied = self.instance_write_observed(host, o, status).await?;
        Ok(Observed { applied, behind })
    }

    /// Records what an agent answered to the pushes of a reconciler pass,
    /// all at once: a fixed number of statements however many instances the
    /// host runs, and no read, since each spec says what was desired. Rows
    /// take their answer under the same conditions as
    /// [`instance_observe`](Self::instance_observe). A request that raced a
    /// push bumped the generation, so the next pass pushes again. Returns
    /// how many rows took their answer.
    pub async fn instance_record_pushes(
        &self,
        host: HostId,
        pushed: &[(InstanceSpec, ObservedInstance)],
    ) -> ApiResult<u64> {
        // Five parameters a row: far below either database's limit.
        const ROWS_PER_STATEMENT: usize = 200;
        let mut applied = 0;
        for chunk in pushed.chunks(ROWS_PER_STATEMENT) {
            let values = (0..chunk.len())
                .map(|i| {
                    let p = 3 + 4 * i;
                    format!("(${p}, ${}, ${}, ${})", p + 1, p + 2, p + 3)
                })
                .collect::<Vec<_>>()
                .join(", ");
            // VALUES columns are `column1`, `column2`, … on both databases.
            let sql = format!(
                "UPDATE instances SET status = v.column2, status_reason = v.column3,                  applied_generation = v.column4, updated_at = $1 FROM (VALUES {values}) AS v                  WHERE instances.id = v.column1 AND instances.host_id = $2                    AND instances.applied_generation <= v.column4                    AND instances.desired <> 'deleted' AND instances.deleted_at IS NULL"
            );
            let mut update = sqlx::query(&sql).bind(now_ms()).bind(host.to_string());
            for (spec, o) in chunk {
                let status = crate::lifecycle::instance_status(o, spec.reboot_count);
                update = update
                    .bind(o.id.to_string())
                    .bind(status.as_str())
                    .bind(o.reason.clone())
                    .bind(o.generation.min(spec.generation) as i64);
            }
            applied += self.db.write_one(update).await?.rows_affected();
        }
        Ok(applied)
    }

    /// The one conditional write of observed state (see the module comment).
    async fn instance_write_observed(
        &self,
        host: HostId,
        o: &ObservedInstance,
        status: InstanceStatus,
    ) -> ApiResult<bool> {
        let update = sqlx::query(
            "UPDATE instances SET status = $2, status_reason = $3, applied_generation = $4, updated_at = $5 \
             WHERE id = $1 AND host_id = $6 AND applied_generation <= $4 \
               AND desired <> 'deleted' AND deleted_at IS NULL",
        )
        .bind(o.id.to_string())
        .bind(status.as_str())
        .bind(o.reason.clone())
        .bind(o.generation as i64)
        .bind(now_ms())
        .bind(host.to_string());
        let done = self.db.gated(update.execute(&self.db.pool)).await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Attaching or detaching changes what the instance's host may reach, so
/// it is refused while that host is being fenced or is fenced: the volumes
/// fencing revokes are fixed when it begins (`Store::host_fence_begin`),
/// and a share lock on the host row orders this against that start.
async fn host_takes_attachments(tx: &mut crate::db::WriteTx, id: InstanceId) -> ApiResult<()> {
    let host: Option<HostId> = sqlx::query("SELECT host_id FROM instances WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut ***tx)
        .await?
        .map(|r| r.opt_id("host_id"))
        .transpose()?
        .flatten();
    let Some(host) = host else {
        return Ok(());
    };
    share_lock_row(tx, "hosts", &host.to_string()).await?;
    let health: Option<String> = sqlx::query("SELECT health FROM hosts WHERE id = $1")
        .bind(host.to_string())
        .fetch_optional(&mut ***tx)
        .await?
        .map(|r| r.text("health"))
        .transpose()?;
    match health.as_deref() {
        Some("fencing") | Some("fenced") => Err(ApiError::conflict(format!(
            "the host of instance {id} is being fenced: its volumes change once it is re-created elsewhere"
        ))),
        _ => Ok(()),
    }
}

/// The claim an instance row holds on its host.
pub fn instance_claim(r: &AnyRow) -> Result<Option<Claim>, sqlx::Error> {
    Ok(r.opt_id::<HostId>("host_id")?.map(|host| Claim {
        host,
        vcpus: r.int("vcpus").unwrap_or(0),
        ram_mib: r.int("ram_mib").unwrap_or(0),
        disk_gib: r.int("disk_gib").unwrap_or(0),
        storage_bytes: 0,
        instances: 1,
        volumes: 0,
    }))
}

impl Store {
    /// Finishes deleting an instance once its host confirmed: frees its host
    /// claim, addresses and quota, detaches its volumes, closes its usage span.
    /// One transaction; idempotent (`None` when it was already done). Returns
    /// the capacity given back and the storage nodes whose ACLs change. Locks are taken in the same order as a
    /// create (quota, then host) so the two cannot deadlock on PostgreSQL.
    pub async fn instance_finalize_delete(
        &self,
        id: InstanceId,
    ) -> ApiResult<Option<Changed<Option<Claim>>>> {
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        let Some(r) = super::mark_deleted(&mut tx, "instances", &id.to_string(), now).await? else {
            return Ok(None);
        };
        let project: ProjectId = r.id("project_id")?;
        let addresses = sqlx::query("DELETE FROM addresses WHERE instance_id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected() as i64;
        quotas::quota_release(
            &mut tx,
            project,
            QuotaDelta {
                instances: 1,
                vcpus: r.int("vcpus")?,
                ram_mib: r.int("ram_mib")?,
                addresses,
                ..Default::default()
            },
        )
        .await?;
        let claim = instance_claim(&r)?;
        if let Some(c) = claim {
            super::claims::host_release(&mut tx, c).await?;
        }
        // Deleted in the middle of a move: the target's claim goes too.
        // (The caller's scheduler view catches up at its next refresh.)
        if let Some(c) = super::moves::move_target_claim(&r)? {
            super::claims::host_release(&mut tx, c).await?;
        }
        // Detached volumes become available; their storage ACL changes.
        let volumes: Vec<Option<String>> = sqlx::query(
            "SELECT v.id, v.host_id FROM attachments a JOIN volumes v ON v.id = a.volume_id WHERE a.instance_id = $1",
        )
        .bind(id.to_string())
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|v| v.opt_text("host_id"))
        .collect::<Result<_, sqlx::Error>>()?;
        sqlx::query(
            "UPDATE volumes SET generation = generation + 1, \
             status = CASE WHEN status = 'in_use' THEN 'available' ELSE status END \
             WHERE id IN (SELECT volume_id FROM attachments WHERE instance_id = $1)",
        )
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM attachments WHERE instance_id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "UPDATE usage_spans SET ended_at = $2 WHERE resource_id = $1 AND ended_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE instances SET updated_at = $2, group_id = NULL WHERE id = $1")
            .bind(id.to_string())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
        let hosts = volumes
            .into_iter()
            .flatten()
            .filter_map(|h| h.parse().ok())
            .collect();
        Ok(Some(Changed {
            value: claim,
            hosts,
        }))
    }
}

/// A validated create request with everything it names resolved.
pub struct NewInstance {
    pub project: ProjectId,
    pub name: String,
    pub flavor: Flavor,
    pub image: Image,
    pub keypair: Option<Keypair>,
    pub group: Option<Group>,
    pub networks: Vec<Network>,
    pub user_data: Option<String>,
    pub start: bool,
    pub relocation: Relocation,
}

impl Store {
    /// Hosts and racks holding live members of an anti-affinity group, as
    /// the scheduler ranks against before the create's transaction.
    pub async fn group_footprint(&self, group: GroupId) -> ApiResult<Footprint> {
        group_footprint(&mut *self.db.pool.acquire().await?, group).await
    }

    /// Creates an instance in ONE transaction: quota claim, anti-affinity
    /// group lock, host claim (through `placer`), addresses, the instance
    /// row and its usage span. Either all of it happens or none does; the
    /// claim is returned for the caller to apply to the scheduler's view
    /// once this returned.
    pub async fn instance_create(
        &self,
        caller: &Caller,
        new: NewInstance,
        mut demand: InstanceDemand,
        placer: impl Placer,
    ) -> ApiResult<(Instance, Claim)> {
        let NewInstance {
            project,
            name,
            flavor,
            image,
            keypair,
            group,
            networks,
            user_data,
            start,
            relocation,
        } = new;
        caller.check_write(project, "project", project)?;
        let id = InstanceId::new();
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        // Images carry no foreign key (deleted instances keep pointing at
        // theirs): lock the image row (shared: creates from one image do not
        // queue on each other) so a concurrent image delete either finishes
        // first (and we refuse) or waits for us (and sees the user).
        if !share_lock_row(&mut tx, "images", &image.id.to_string()).await? {
            return Err(ApiError::conflict(format!(
                "image `{}` was deleted meanwhile",
                image.name
            )));
        }
        quotas::quota_claim(
            &mut tx,
            project,
            QuotaDelta {
                instances: 1,
                vcpus: flavor.vcpus as i64,
                ram_mib: to_i64(flavor.ram_mib),
                addresses: networks.len() as i64,
                ..Default::default()
            },
        )
        .await?;
        if let Some(g) = &group {
            // Serializes placement of the group's members (PostgreSQL row
            // lock), then reads where they are now.
            lock_row(&mut tx, "anti_affinity_groups", &g.id.to_string()).await?;
            (demand.group_hosts, demand.group_racks) = group_footprint(&mut tx, g.id).await?;
        }
        let claim = placer.claim_instance(&mut tx, &demand).await?;
        // Addresses are picked first and written with the instance row and
        // its usage span in ONE statement: three round trips become one.
        let mut nics = Vec::with_capacity(networks.len());
        let mut picked: Vec<(SubnetId, IpAddr)> = Vec::with_capacity(networks.len());
        for (index, net) in networks.iter().enumerate() {
            let (subnet_id, address) = super::networks::address_pick(&mut tx, net, &picked).await?;
            picked.push((subnet_id, address));
            nics.push(Nic {
                network_id: net.id,
                subnet_id,
                address,
                mac: netconfig::derive_mac(id.0.as_bytes(), index as u8),
            });
        }
        let desired = if start {
            DesiredState::Running
        } else {
            DesiredState::Stopped
        };
        // (The policy is one of two fixed words, written as a literal so
        // the numbered parameters stay those of the address values below.)
        let instance_insert = format!(
            "INSERT INTO instances (id, project_id, name, flavor_id, image_id, keypair_id, group_id, host_id, \
             vcpus, ram_mib, disk_gib, user_data, desired, status, created_at, updated_at, relocation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'building', $14, $14, '{}')",
            relocation.as_str()
        );
        let usage_insert = "INSERT INTO usage_spans (id, project_id, kind, resource_id, flavor_id, gib, started_at, ended_at) \
             VALUES ($15, $2, 'instance', $1, $4, 0, $14, NULL)";
        let address_values = (0..picked.len())
            .map(|i| format!("(${}, ${}, $1, {i}, $14)", 16 + 2 * i, 17 + 2 * i))
            .collect::<Vec<_>>()
            .join(", ");
        let address_insert = format!(
            "INSERT INTO addresses (subnet_id, address, instance_id, nic_index, created_at) VALUES {address_values}"
        );
        let sql = match tx.backend {
            // Data-modifying CTEs: all three inserts are one statement.
            Backend::Postgres => {
                format!("WITH a AS ({address_insert}), u AS ({usage_insert}) {instance_insert}")
            }
            // SQLite runs the statements of one query string in one call.
            Backend::Sqlite => format!("{instance_insert}; {address_insert}; {usage_insert}"),
        };
        let mut insert = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(project.to_string())
            .bind(&name)
            .bind(flavor.id.to_string())
            .bind(image.id.to_string())
            .bind(keypair.as_ref().map(|k| k.id.to_string()))
            .bind(group.as_ref().map(|g| g.id.to_string()))
            .bind(claim.host.to_string())
            .bind(flavor.vcpus as i64)
            .bind(to_i64(flavor.ram_mib))
            .bind(to_i64(flavor.disk_gib))
            .bind(user_data)
            .bind(desired.as_str())
            .bind(now)
            .bind(uuid::Uuid::new_v4().to_string());
        for (subnet, address) in &picked {
            insert = insert.bind(subnet.to_string()).bind(address.to_string());
        }
        // Addresses were picked under the subnet locks and usage span ids
        // are fresh, so the only unique index this can hit is the live name.
        insert
            .execute(&mut **tx)
            .await
            .map_err(|e| match is_unique_violation(&e) {
                true => ApiError::conflict(format!(
                    "an instance named `{name}` already exists in this project"
                )),
                false => e.into(),
            })?;
        tx.commit().await?;
        let created_at = from_ms(now);
        let instance = Instance {
            id,
            project_id: project,
            name,
            flavor_id: flavor.id,
            image_id: image.id,
            keypair_id: keypair.map(|k| k.id),
            anti_affinity_group_id: group.map(|g| g.id),
            host_id: Some(claim.host),
            desired,
            status: InstanceStatus::Building,
            status_reason: None,
            nics,
            vcpus: flavor.vcpus,
            ram_mib: flavor.ram_mib,
            disk_gib: flavor.disk_gib,
            relocation,
            moving_to: None,
            created_at,
            updated_at: created_at,
        };
        Ok((instance, claim))
    }
}

/// Where a group's other members are, read inside `tx` after the group's
/// lock: what an instance moved elsewhere is placed against.
pub async fn group_footprint_in(
    tx: &mut crate::db::WriteTx,
    group: GroupId,
    except: InstanceId,
) -> ApiResult<Footprint> {
    let rows = sqlx::query(
        "SELECT i.host_id, i.move_target, h.rack_id FROM instances i LEFT JOIN hosts h ON h.id = i.host_id \
         WHERE i.group_id = $1 AND i.id <> $2 AND i.deleted_at IS NULL AND i.host_id IS NOT NULL",
    )
    .bind(group.to_string())
    .bind(except.to_string())
    .fetch_all(&mut ***tx)
    .await?;
    let mut hosts = HashSet::new();
    let mut racks = HashMap::new();
    for r in &rows {
        hosts.insert(r.id("host_id")?);
        // A member being moved holds its target too (see `crate::moves`).
        if let Some(target) = r.opt_id("move_target")? {
            hosts.insert(target);
        }
        if let Some(rack) = r.opt_id("rack_id")? {
            *racks.entry(rack).or_insert(0) += 1;
        }
    }
    Ok((hosts, racks))
}

/// Hosts holding live members of a group, and members per rack.
pub type Footprint = (HashSet<HostId>, HashMap<RackId, u32>);

async fn group_footprint(conn: &mut sqlx::AnyConnection, group: GroupId) -> ApiResult<Footprint> {
    let rows = sqlx::query(
        "SELECT i.host_id, i.move_target, h.rack_id FROM instances i LEFT JOIN hosts h ON h.id = i.host_id \
         WHERE i.group_id = $1 AND i.deleted_at IS NULL AND i.host_id IS NOT NULL",
    )
    .bind(group.to_string())
    .fetch_all(conn)
    .await?;
    let mut hosts = HashSet::new();
    let mut racks = HashMap::new();
    for r in &rows {
        hosts.insert(r.id("host_id")?);
        // A member being moved holds its target too (see `crate::moves`).
        if let Some(target) = r.opt_id("move_target")? {
            hosts.insert(target);
        }
        if let Some(rack) = r.opt_id("rack_id")? {
            *racks.entry(rack).or_insert(0) += 1;
        }
    }
    Ok((hosts, racks))
}
