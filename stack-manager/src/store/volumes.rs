//! Volumes and their snapshots: reads (a volume with its attachment joined
//! in, one statement per page), creation with its quota and storage claims,
//! and the user's delete and snapshot requests, checked by
//! `lifecycle::volume_action`. Attaching and detaching are instance
//! actions (`store::instances`).

use api::ids::{HostId, ImageId, ProjectId, SnapshotId, VolumeId};
use api::resources::{
    Attachment, CopyState, List, ProjectPage, Snapshot, SnapshotStatus, Volume, VolumeCopy,
    VolumeStatus,
};
use rand::distributions::{Alphanumeric, DistString};
use sqlx::any::AnyRow;

use super::claims::{Claim, VolumePlacer};
use super::page::{KeyKind, Keyset};
use super::Store;
use crate::caller::Caller;
use crate::db::{now_ms, RowExt};
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{self, VolumeAction};
use crate::store::quotas::{self, QuotaDelta};

/// Volumes are listed oldest first.
static VOLUME_PAGES: Keyset = Keyset {
    list: "volumes",
    columns: &[("v.created_at", KeyKind::Int), ("v.id", KeyKind::Text)],
    descending: false,
};

/// Snapshots are listed oldest first.
static SNAPSHOT_PAGES: Keyset = Keyset {
    list: "snapshots",
    columns: &[("s.created_at", KeyKind::Int), ("s.id", KeyKind::Text)],
    descending: false,
};

/// The columns of a volume with its attachment (a volume has at most one:
/// `attachments.volume_id` is its key), from `v`, which the query defines.
const WITH_ATTACHMENT: &str = "SELECT v.*, a.instance_id AS att_instance_id, \
     a.device_index AS att_device_index, a.created_at AS att_created_at FROM";
const ATTACHMENT_JOIN: &str = "LEFT JOIN attachments a ON a.volume_id = v.id";

/// The target name a volume is exported under.
pub fn iqn(id: VolumeId) -> String {
    format!("iqn.2026-11.io.strato:vol-{id}")
}

/// A volume to create, its fields and source checked by the caller.
pub struct NewVolume {
    pub name: String,
    pub size_gib: u64,
    pub image: Option<ImageId>,
    /// A snapshot read with [`Store::snapshot_get_for_clone`].
    pub snapshot: Option<Snapshot>,
    /// Copies, 1–3, checked by the caller.
    pub replicas: u32,
}

/// Sizes are checked to be at most 64 Ti before they get here; saturating
/// keeps a future caller that forgets from wrapping round.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn volume_of_row(r: &AnyRow) -> ApiResult<Volume> {
    let id: VolumeId = r.id("id")?;
    let attachment = match r.opt_text("att_instance_id")? {
        None => None,
        Some(_) => Some(Attachment {
            volume_id: id,
            instance_id: r.id("att_instance_id")?,
            device_index: r.uint("att_device_index")? as u32,
            created_at: r.time("att_created_at")?,
        }),
    };
    Ok(Volume {
        id,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        size_gib: r.uint("size_gib")?,
        source_image_id: r.opt_id("source_image_id")?,
        source_snapshot_id: r.opt_id("source_snapshot_id")?,
        host_id: r.opt_id("host_id")?,
        status: r.parsed("status", VolumeStatus::parse)?,
        status_reason: r.opt_text("status_reason")?,
        iqn: r.text("iqn")?,
        attachment,
        created_at: r.time("created_at")?,
        replicas: r.uint("replicas")? as u32,
        copies: Vec::new(),
    })
}

fn snapshot_of_row(r: &AnyRow) -> Result<Snapshot, sqlx::Error> {
    Ok(Snapshot {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        volume_id: r.id("volume_id")?,
        name: r.text("name")?,
        size_gib: r.uint("size_gib")?,
        status: r.parsed("status", SnapshotStatus::parse)?,
        created_at: r.time("created_at")?,
    })
}

impl Store {
    /// One page of the volumes the caller may list (see
    /// `Store::project_for_read`), oldest first, attachments joined in:
    /// one statement.
    pub async fn volume_list(&self, caller: &Caller, q: &ProjectPage) -> ApiResult<List<Volume>> {
        self.scoped_page(
            caller,
            q,
            &VOLUME_PAGES,
            |page| {
                format!(
                    "{WITH_ATTACHMENT} (SELECT * FROM volumes v WHERE v.deleted_at IS NULL \
                       AND ($1 = '' OR v.project_id = $1){}{}) v {ATTACHMENT_JOIN} ORDER BY {}",
                    page.condition(2),
                    page.order_and_limit(),
                    page.order(),
                )
            },
            |rows| rows.iter().map(volume_of_row).collect(),
            |v| vec![v.created_at.into(), v.id.to_string().into()],
        )
        .await
    }

    /// A live volume the caller may read, with its attachment; 404 otherwise.
    pub async fn volume_get(&self, caller: &Caller, id: VolumeId) -> ApiResult<Volume> {
        let sql = format!(
            "{WITH_ATTACHMENT} volumes v {ATTACHMENT_JOIN} WHERE v.id = $1 AND v.deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("volume", id))?;
        let mut volume = volume_of_row(&row)?;
        caller.check_read(volume.project_id, "volume", id)?;
        if volume.replicas > 1 {
            for r in sqlx::query(
                "SELECT host_id, state, behind_bytes FROM volume_copies WHERE volume_id = $1 ORDER BY host_id",
            )
            .bind(id.to_string())
            .fetch_all(&self.db.pool)
            .await?
            {
                volume.copies.push(VolumeCopy {
                    host_id: r.id("host_id")?,
                    state: r.parsed("state", CopyState::parse)?,
                    behind_bytes: r.uint("behind_bytes")?,
                });
            }
        }
        Ok(volume)
    }

    /// [`volume_get`](Self::volume_get) for a caller about to change the
    /// volume: readers get 403.
    pub async fn volume_get_for_write(&self, caller: &Caller, id: VolumeId) -> ApiResult<Volume> {
        let volume = self.volume_get(caller, id).await?;
        caller.check_write(volume.project_id, "volume", id)?;
        Ok(volume)
    }

    /// Creates a volume in `project` (see `Store::project_for_write`):
    /// claims the project's quota and a storage node (the snapshot's own
    /// node for a clone, which is copy-on-write) in one transaction.
    /// Returns the new volume's id and the storage claim, for the caller
    /// to apply to the scheduler's view and to wake that node's reconciler.
    pub async fn volume_create(
        &self,
        caller: &Caller,
        project: ProjectId,
        new: NewVolume,
        placer: impl VolumePlacer,
    ) -> ApiResult<(VolumeId, Vec<Claim>)> {
        caller.check_write(project, "project", project)?;
        let id = VolumeId::new();
        let now = now_ms();
        let bytes = new.size_gib << 30;
        let chap_secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
        let mut tx = self.db.begin_write().await?;
        quotas::quota_claim(
            &mut tx,
            project,
            QuotaDelta {
                volumes: 1,
                volume_gib: to_i64(new.size_gib),
                ..Default::default()
            },
        )
        .await?;
        // The source must still be there now that we write (lock it, as its
        // delete does): a volume silently created empty would be worse than none.
        if let Some(i) = new.image {
            let live = sqlx::query("UPDATE images SET min_disk_gib = min_disk_gib WHERE id = $1")
                .bind(i.to_string())
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if live == 0 {
                return Err(ApiError::conflict(format!(
                    "image {i} was deleted meanwhile"
                )));
            }
        }
        let mut source_host = None;
        if let Some(snap) = &new.snapshot {
            let live = sqlx::query(
                "UPDATE snapshots SET status = status WHERE id = $1 AND status = 'available' AND deleted_at IS NULL",
            )
            .bind(snap.id.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if live == 0 {
                return Err(ApiError::conflict(format!(
                    "snapshot {} is no longer available",
                    snap.id
                )));
            }
            source_host = sqlx::query("SELECT host_id FROM volumes WHERE id = $1")
                .bind(snap.volume_id.to_string())
                .fetch_one(&mut **tx)
                .await?
                .opt_id::<HostId>("host_id")?;
        }
        if new.replicas > 1 && new.snapshot.is_some() {
            return Err(ApiError::invalid(
                "a clone of a snapshot lives on the snapshot's node alone: create it with one replica",
            ));
        }
        let claim = placer
            .claim_volume(&mut tx, bytes, source_host, &[])
            .await?;
        let mut claims = vec![claim];
        while claims.len() < new.replicas as usize {
            let held: Vec<HostId> = claims.iter().map(|c| c.host).collect();
            claims.push(placer.claim_volume(&mut tx, bytes, None, &held).await?);
        }
        let replication_key =
            (new.replicas > 1).then(|| Alphanumeric.sample_string(&mut rand::thread_rng(), 32));
        sqlx::query(
            "INSERT INTO volumes (id, project_id, name, size_gib, source_image_id, source_snapshot_id, host_id, status, iqn, \
             chap_user, chap_secret, created_at, replicas, replication_epoch, replication_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'creating', $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(id.to_string())
        .bind(project.to_string())
        .bind(&new.name)
        .bind(to_i64(new.size_gib))
        .bind(new.image.map(|i| i.to_string()))
        .bind(new.snapshot.as_ref().map(|s| s.id.to_string()))
        .bind(claim.host.to_string())
        .bind(iqn(id))
        .bind(format!("strato-{}", &id.to_string()[..8]))
        .bind(chap_secret)
        .bind(now)
        .bind(i64::from(new.replicas))
        .bind(i64::from(new.replicas > 1))
        .bind(replication_key)
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!("a volume named `{}` already exists in this project", new.name)),
            false => e.into(),
        })?;
        super::usage::usage_open_span(
            &mut tx,
            project,
            "volume",
            &id.to_string(),
            None,
            to_i64(new.size_gib),
            now,
        )
        .await?;
        // Every copy starts from the same source: all are in sync.
        for c in &claims[1..] {
            sqlx::query(
                "INSERT INTO volume_copies (volume_id, host_id, state) VALUES ($1, $2, 'in_sync')",
            )
            .bind(id.to_string())
            .bind(c.host.to_string())
            .execute(&mut **tx)
            .await?;
        }
        tx.commit().await?;
        Ok((id, claims))
    }

    /// Asks for a volume to be deleted: it becomes `deleting` and its
    /// storage node's reconciler finishes the job. Refused while it is
    /// attached or has snapshots. Returns the node the volume lives on
    /// (`None`: it was never placed, and the caller finishes at once).
    pub async fn volume_delete(&self, caller: &Caller, id: VolumeId) -> ApiResult<Option<HostId>> {
        let volume = self.volume_get_for_write(caller, id).await?;
        lifecycle::volume_action(volume.status, VolumeAction::Delete)
            .map_err(|r| ApiError::conflict(r.message(id)))?;
        let mut tx = self.db.begin_write().await?;
        // The status change comes first and is conditional: an attach that
        // committed meanwhile made the volume `in_use`, and then nothing changes.
        let marked = sqlx::query(&format!(
            "UPDATE volumes SET status = 'deleting', generation = generation + 1 \
             WHERE id = $1 AND deleted_at IS NULL AND status IN ({}) \
             AND NOT EXISTS (SELECT 1 FROM attachments WHERE volume_id = $1)",
            VolumeAction::Delete.allowed_sql()
        ))
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if marked == 0 {
            return Err(ApiError::conflict(format!(
                "volume {id} is attached; detach it first"
            )));
        }
        let snapshots = super::count_in(
            &mut tx,
            "SELECT COUNT(*) AS n FROM snapshots WHERE volume_id = $1 AND deleted_at IS NULL",
            &id.to_string(),
        )
        .await?;
        if snapshots > 0 {
            return Err(ApiError::conflict(format!(
                "volume {id} has snapshots; delete them first"
            )));
        }
        tx.commit().await?;
        Ok(volume.host_id)
    }

    /// One page of the snapshots the caller may list, oldest first, in one
    /// statement.
    pub async fn snapshot_list(
        &self,
        caller: &Caller,
        q: &ProjectPage,
    ) -> ApiResult<List<Snapshot>> {
        self.scoped_page(
            caller,
            q,
            &SNAPSHOT_PAGES,
            super::one_table("SELECT s.* FROM snapshots s WHERE s.deleted_at IS NULL AND ($1 = '' OR s.project_id = $1)"),
            super::each_row(snapshot_of_row),
            |s| vec![s.created_at.into(), s.id.to_string().into()],
        )
        .await
    }

    /// A live snapshot the caller may read; 404 otherwise.
    pub async fn snapshot_get(&self, caller: &Caller, id: SnapshotId) -> ApiResult<Snapshot> {
        let row = sqlx::query("SELECT * FROM snapshots WHERE id = $1 AND deleted_at IS NULL")
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("snapshot", id))?;
        let s = snapshot_of_row(&row)?;
        caller.check_read(s.project_id, "snapshot", id)?;
        Ok(s)
    }

    /// A snapshot a new volume of `size_gib` in `project` can be cloned
    /// from: the project's own, available, and no larger than the volume.
    pub async fn snapshot_get_for_clone(
        &self,
        caller: &Caller,
        project: ProjectId,
        id: SnapshotId,
        size_gib: u64,
    ) -> ApiResult<Snapshot> {
        let snap = self.snapshot_get(caller, id).await?;
        if snap.project_id != project {
            return Err(ApiError::not_found("snapshot", id));
        }
        if snap.status != SnapshotStatus::Available {
            return Err(ApiError::conflict(format!(
                "snapshot {id} is {}",
                snap.status.as_str()
            )));
        }
        if snap.size_gib > size_gib {
            return Err(ApiError::invalid(format!(
                "snapshot {id} is {} GiB; the volume must be at least that",
                snap.size_gib
            )));
        }
        Ok(snap)
    }

    /// Takes a snapshot of a volume the caller may change. Returns it with
    /// the storage node that must make it.
    pub async fn snapshot_create(
        &self,
        caller: &Caller,
        volume: VolumeId,
        name: String,
    ) -> ApiResult<(Snapshot, Option<HostId>)> {
        let v = self.volume_get_for_write(caller, volume).await?;
        lifecycle::volume_action(v.status, VolumeAction::Snapshot)
            .map_err(|r| ApiError::conflict(r.message(volume)))?;
        let snap = Snapshot {
            id: SnapshotId::new(),
            project_id: v.project_id,
            volume_id: volume,
            name,
            size_gib: v.size_gib,
            status: SnapshotStatus::Creating,
            created_at: crate::db::from_ms(now_ms()),
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO snapshots (id, project_id, volume_id, name, size_gib, status, created_at) VALUES ($1, $2, $3, $4, $5, 'creating', $6)",
        )
        .bind(snap.id.to_string())
        .bind(v.project_id.to_string())
        .bind(volume.to_string())
        .bind(&snap.name)
        .bind(to_i64(snap.size_gib))
        .bind(snap.created_at.timestamp_millis())
        .execute(&mut **tx)
        .await?;
        let live = sqlx::query(&format!(
            "UPDATE volumes SET generation = generation + 1 \
             WHERE id = $1 AND deleted_at IS NULL AND status IN ({})",
            VolumeAction::Snapshot.allowed_sql()
        ))
        .bind(volume.to_string())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if live == 0 {
            return Err(ApiError::conflict(format!(
                "volume {volume} is no longer available for snapshots"
            )));
        }
        tx.commit().await?;
        Ok((snap, v.host_id))
    }

    /// Asks for a snapshot to be deleted (its storage node finishes the
    /// job); refused while volumes cloned from it live. Returns that node.
    pub async fn snapshot_delete(
        &self,
        caller: &Caller,
        id: SnapshotId,
    ) -> ApiResult<Option<HostId>> {
        let snap = self.snapshot_get(caller, id).await?;
        caller.check_write(snap.project_id, "snapshot", id)?;
        let mut tx = self.db.begin_write().await?;
        let clones = super::count_in(
            &mut tx,
            "SELECT COUNT(*) AS n FROM volumes WHERE source_snapshot_id = $1 AND deleted_at IS NULL",
            &id.to_string(),
        )
        .await?;
        if clones > 0 {
            return Err(ApiError::conflict(format!(
                "snapshot {id} has {clones} clone(s); delete them first"
            )));
        }
        sqlx::query("UPDATE snapshots SET status = 'deleting' WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
        let host = sqlx::query(
            "UPDATE volumes SET generation = generation + 1 WHERE id = $1 RETURNING host_id",
        )
        .bind(snap.volume_id.to_string())
        .fetch_one(&mut **tx)
        .await?
        .opt_id::<HostId>("host_id")?;
        tx.commit().await?;
        Ok(host)
    }
}

impl Store {
    /// Storage nodes silent since before `silent_before_ms` (ms since the
    /// epoch) that still hold a primary or an in-sync copy of a
    /// replicated volume: what the health monitor fails over.
    pub async fn storage_hosts_to_fail_over(
        &self,
        silent_before_ms: i64,
    ) -> ApiResult<Vec<HostId>> {
        sqlx::query(
            "SELECT h.id FROM hosts h WHERE h.kind = 'storage' \
               AND (h.last_heartbeat_at IS NULL OR h.last_heartbeat_at < $1) \
               AND (EXISTS (SELECT 1 FROM volumes v WHERE v.host_id = h.id AND v.replicas > 1 AND v.deleted_at IS NULL) \
                 OR EXISTS (SELECT 1 FROM volume_copies c WHERE c.host_id = h.id AND c.state = 'in_sync')) \
             ORDER BY h.id",
        )
        .bind(silent_before_ms)
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| r.id("id"))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    /// A storage node is gone: each replicated volume it was primary of
    /// moves to an in-sync copy on a node heard from since
    /// `alive_since_ms` (the dead node's copy becomes out of sync), and
    /// each in-sync copy it held becomes out of sync, so the primary's
    /// writes go on without it. Every change raises the volume's epoch: the
    /// copies then refuse the old primary even if it is only partitioned.
    /// One transaction. Returns the hosts to push to: every copy's node and
    /// the hypervisors whose attached disks must follow the new primary.
    pub async fn storage_fail_over(
        &self,
        dead: HostId,
        alive_since_ms: i64,
    ) -> ApiResult<Vec<HostId>> {
        let mut wake = Vec::new();
        let mut tx = self.db.begin_write().await?;
        let primaries = sqlx::query(
            "SELECT v.id, v.project_id, \
               (SELECT c.host_id FROM volume_copies c JOIN hosts h ON h.id = c.host_id \
                 WHERE c.volume_id = v.id AND c.state = 'in_sync' AND h.last_heartbeat_at >= $2 \
                 ORDER BY c.host_id LIMIT 1) AS heir \
             FROM volumes v WHERE v.host_id = $1 AND v.replicas > 1 AND v.deleted_at IS NULL \
               AND v.status <> 'deleting'",
        )
        .bind(dead.to_string())
        .bind(alive_since_ms)
        .fetch_all(&mut **tx)
        .await?;
        for r in &primaries {
            let id: VolumeId = r.id("id")?;
            let Some(heir) = r.opt_id::<HostId>("heir")? else {
                // No live in-sync copy: the volume waits for its node (a
                // copy that fell behind is never promoted).
                continue;
            };
            sqlx::query("UPDATE volumes SET host_id = $2, applied_generation = 0 WHERE id = $1")
                .bind(id.to_string())
                .bind(heir.to_string())
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM volume_copies WHERE volume_id = $1 AND host_id = $2")
                .bind(id.to_string())
                .bind(heir.to_string())
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO volume_copies (volume_id, host_id, state, applied_generation) \
                 VALUES ($1, $2, 'out_of_sync', 0)",
            )
            .bind(id.to_string())
            .bind(dead.to_string())
            .execute(&mut **tx)
            .await?;
            wake.extend(super::agents::bump_replication(&mut tx, id).await?);
            // The instance it is attached to gets a new generation: its
            // hypervisor learns the new portal.
            for i in sqlx::query(
                "UPDATE instances SET generation = generation + 1 \
                 WHERE id IN (SELECT instance_id FROM attachments WHERE volume_id = $1) \
                   AND deleted_at IS NULL RETURNING host_id",
            )
            .bind(id.to_string())
            .fetch_all(&mut **tx)
            .await?
            {
                wake.extend(i.opt_id::<HostId>("host_id")?);
            }
            super::health::event_write(
                &mut tx,
                "volume",
                &id.to_string(),
                Some(r.id("project_id")?),
                "volume.failed_over",
                &format!(
                    "storage node {dead} is silent: the in-sync copy on {heir} is the primary now"
                ),
            )
            .await?;
            tracing::warn!(volume = %id, from = %dead, to = %heir, "volume failed over");
        }
        let copies = sqlx::query(
            "SELECT c.volume_id, v.project_id FROM volume_copies c JOIN volumes v ON v.id = c.volume_id \
             WHERE c.host_id = $1 AND c.state = 'in_sync' AND v.deleted_at IS NULL",
        )
        .bind(dead.to_string())
        .fetch_all(&mut **tx)
        .await?;
        for r in &copies {
            let id: VolumeId = r.id("volume_id")?;
            sqlx::query(
                "UPDATE volume_copies SET state = 'out_of_sync' WHERE volume_id = $1 AND host_id = $2",
            )
            .bind(id.to_string())
            .bind(dead.to_string())
            .execute(&mut **tx)
            .await?;
            wake.extend(super::agents::bump_replication(&mut tx, id).await?);
            super::health::event_write(
                &mut tx,
                "volume",
                &id.to_string(),
                Some(r.id("project_id")?),
                "volume.copy_lost",
                &format!("storage node {dead} is silent: writes go on without its copy, which resyncs when it returns"),
            )
            .await?;
        }
        tx.commit().await?;
        wake.retain(|h| *h != dead);
        wake.sort_by_key(|h| h.to_string());
        wake.dedup();
        Ok(wake)
    }
}

impl Store {
    /// Copies of live volumes by state, and the sum of their lag: what
    /// `/metrics` reports of replication.
    pub async fn volume_copy_figures(&self) -> ApiResult<(Vec<(String, i64)>, i64)> {
        let mut by_state = Vec::new();
        let mut behind = 0;
        for r in sqlx::query(
            "SELECT c.state, COUNT(*) AS n, CAST(COALESCE(SUM(c.behind_bytes), 0) AS BIGINT) AS behind \
             FROM volume_copies c JOIN volumes v ON v.id = c.volume_id \
             WHERE v.deleted_at IS NULL GROUP BY c.state",
        )
        .fetch_all(&self.db.pool)
        .await?
        {
            behind += r.int("behind")?;
            by_state.push((r.text("state")?, r.int("n")?));
        }
        Ok((by_state, behind))
    }
}
