//! What the agents' side of the stack manager reads and writes: host
//! enrollment and heartbeats, the desired state pushed to a host (instance
//! and volume specs, and the reconciler's pass), and the folding of what a
//! host reports back into the rows.
//!
//! Every read here costs a fixed number of statements however many
//! instances or volumes the host carries, and every write of observed
//! state is conditional: it applies only if the row still places the
//! resource on the reporting host and the report is not older than what
//! the row holds (`applied_generation <= $observed`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use api::ids::{HostId, InstanceId, SnapshotId, VolumeId};
use api::internal::*;
use api::resources::{
    Capacity, CopyState, DesiredState, HostHealth, HostKind, ImageFormat, InstanceStatus,
    VolumeStatus,
};
use sqlx::any::AnyRow;

use super::claims::{Claim, HostView};
use super::quotas::{self, QuotaDelta};
use super::Store;
use crate::db::{is_unique_violation, now_ms, to_i64, RowExt};
use crate::error::{ApiError, ApiResult};
use crate::lifecycle;

/// One message for every bad token, so a caller learns nothing about which
/// tokens exist.
pub fn bad_token() -> ApiError {
    ApiError::unauthenticated("enrollment token is invalid, used or expired")
}

pub fn bad_credential() -> ApiError {
    ApiError::unauthenticated("unknown host or wrong credential")
}

/// A validated enrollment, as the row it becomes.
pub struct Enrollment<'a> {
    pub request: &'a EnrollRequest,
    /// The hash of the one-time token the agent presented.
    pub token_hash: String,
    pub host: HostId,
    pub credential: &'a str,
    pub credential_hash: String,
}

/// A spec with what its agent last applied, for the reconciler.
pub struct Pushable {
    pub spec: InstanceSpec,
    pub applied_generation: u64,
    pub status: InstanceStatus,
}

/// What one pass of a host's reconciler has to do with its instances.
#[derive(Default)]
pub struct HostWork {
    /// Instances whose desired state is `deleted`: to delete on the agent.
    pub deleting: Vec<InstanceId>,
    /// Instances the agent is behind on (or owes a reboot): to push.
    pub to_push: Vec<Pushable>,
}

/// A host as its reconciler needs it, with the instance work of the pass.
pub struct HostPass {
    pub kind: HostKind,
    pub agent_url: String,
    pub credential: String,
    pub last_heartbeat_at: Option<i64>,
    /// The health monitor's state: a fencing or fenced host runs nothing.
    pub health: HostHealth,
    pub work: HostWork,
}

/// What one pass of a storage node's reconciler has to do.
#[derive(Default)]
pub struct StoragePass {
    /// Volumes being deleted: to delete on the node.
    pub deleting: Vec<VolumeId>,
    /// Every live volume the node should have (deleting ones included).
    pub live: HashSet<VolumeId>,
    /// Specs of the volumes the node is behind on: to push.
    pub stale: Vec<VolumeSpec>,
}

/// What folding a host's report found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Folded {
    /// The host is behind on something (or a fold failed): push to it.
    pub push: bool,
    /// The host reported something that is not (or no longer) its own.
    pub orphans: bool,
    /// Other hosts whose desired state the report changed (the copies of
    /// a replicated volume whose state moved): push to them too.
    pub wake: Vec<HostId>,
}

/// The columns of an instance row the fold of a report compares against.
struct LiveInstance {
    desired: DesiredState,
    status: String,
    status_reason: Option<String>,
    generation: u64,
    applied_generation: u64,
    reboot_count: u64,
}

struct LiveVolume {
    status: String,
    generation: u64,
    applied_generation: u64,
    attached: bool,
    pending_snapshots: bool,
}

impl Store {
    /// Turns a one-time enrollment token into a host row. The token is
    /// claimed with a conditional write in the host's own transaction, so
    /// two agents racing with one token cannot both win; any bad token
    /// gets the same 401. `validate` runs once the token is known good and
    /// before anything is written.
    pub async fn host_enroll(
        &self,
        e: Enrollment<'_>,
        validate: impl FnOnce() -> ApiResult<()>,
    ) -> ApiResult<HostView> {
        let now = now_ms();
        let req = e.request;
        let token = sqlx::query(
            "SELECT id, kind, rack_id, expires_at, used_at FROM enrollment_tokens WHERE secret_hash = $1",
        )
        .bind(&e.token_hash)
        .fetch_optional(&self.db.pool)
        .await?
        .ok_or_else(bad_token)?;
        let usable = token.opt_int("used_at")?.is_none()
            && token.int("expires_at")? > now
            && token.text("kind")? == req.kind.as_str();
        if !usable {
            return Err(bad_token());
        }
        validate()?;
        let c = &req.capacity;
        let mut tx = self.db.begin_write().await?;
        let claimed = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(token.text("id")?)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Err(bad_token());
        }
        let row = sqlx::query(
            "INSERT INTO hosts (id, name, kind, rack_id, agent_url, credential_hash, credential, initiator_iqn, \
               iscsi_portal, admin_state, cap_vcpus, cap_ram_mib, cap_disk_gib, cap_storage_total, cap_storage_free, \
               last_heartbeat_at, created_at, machine_id, replication_address) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'enabled', $10, $11, $12, $13, $14, $15, $15, $16, $17) \
             RETURNING *",
        )
        .bind(e.host.to_string())
        .bind(&req.name)
        .bind(req.kind.as_str())
        .bind(token.opt_text("rack_id")?)
        .bind(&req.agent_url)
        .bind(&e.credential_hash)
        .bind(e.credential)
        .bind(req.initiator_iqn.as_deref())
        .bind(req.iscsi_portal.as_deref())
        .bind(i64::from(c.vcpus))
        .bind(to_i64(c.ram_mib))
        .bind(to_i64(c.disk_gib))
        .bind(to_i64(c.storage_bytes_total))
        .bind(to_i64(c.storage_bytes_free))
        .bind(now)
        .bind(req.machine_id.as_deref())
        .bind(req.replication_address.as_deref())
        .fetch_one(&mut **tx)
        .await
        .map_err(|err| match is_unique_violation(&err) {
            true => ApiError::conflict(format!(
                "a host named `{}` is already enrolled; delete it first (`strato host delete`) to re-enroll",
                req.name
            )),
            false => err.into(),
        })?;
        let host = HostView::from_row(&row)?;
        tx.commit().await?;
        Ok(host)
    }

    /// Checks a bearer's hash against the credential of host `id` (not of
    /// any host).
    pub async fn host_authenticate(&self, id: HostId, credential_hash: &str) -> ApiResult<()> {
        let n =
            sqlx::query("SELECT COUNT(*) AS n FROM hosts WHERE id = $1 AND credential_hash = $2")
                .bind(id.to_string())
                .bind(credential_hash)
                .fetch_one(&self.db.pool)
                .await?
                .int("n")?;
        if n == 0 {
            return Err(bad_credential());
        }
        Ok(())
    }

    /// Records a heartbeat's capacity and time; returns the host's kind.
    /// Authentication and the update are one statement: this runs for
    /// every host every few seconds. It still takes the write gate
    /// (without a transaction): on SQLite an ungated write would make
    /// gated transactions fail mid-way.
    pub async fn host_heartbeat(
        &self,
        id: HostId,
        credential_hash: &str,
        c: &Capacity,
        now: i64,
    ) -> ApiResult<HostKind> {
        let update = sqlx::query(
            "UPDATE hosts SET cap_vcpus = $3, cap_ram_mib = $4, cap_disk_gib = $5, cap_storage_total = $6, \
               cap_storage_free = $7, last_heartbeat_at = $8 \
             WHERE id = $1 AND credential_hash = $2 RETURNING kind",
        )
        .bind(id.to_string())
        .bind(credential_hash)
        .bind(i64::from(c.vcpus))
        .bind(to_i64(c.ram_mib))
        .bind(to_i64(c.disk_gib))
        .bind(to_i64(c.storage_bytes_total))
        .bind(to_i64(c.storage_bytes_free))
        .bind(now);
        Ok(self
            .db
            .gated(update.fetch_optional(&self.db.pool))
            .await?
            .ok_or_else(bad_credential)?
            .parsed("kind", HostKind::parse)?)
    }

    /// Specs of every instance placed on `host` that should exist: three
    /// statements (rows, NICs, attachments) however many there are.
    pub async fn instance_specs(&self, host: HostId) -> ApiResult<Vec<InstanceSpec>> {
        let rows = sqlx::query(&format!(
            "{PUSHABLE_SELECT} FROM instances i JOIN images im ON im.id = i.image_id \
             LEFT JOIN keypairs k ON k.id = i.keypair_id \
             WHERE i.host_id = $1 AND i.desired <> 'deleted' AND i.deleted_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM hosts h WHERE h.id = i.host_id AND h.health IN ('fencing', 'fenced')) \
             ORDER BY i.id"
        ))
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut nics = self.nic_specs(SpecsOf::Host(host)).await?;
        let mut volumes = self.attachment_specs(SpecsOf::Host(host)).await?;
        rows.iter()
            .map(|r| {
                let id: InstanceId = r.id("id")?;
                let nics = nics.remove(&id).unwrap_or_default();
                let attached = volumes.remove(&id).unwrap_or_default();
                Ok(pushable(r, id, nics, attached)?.spec)
            })
            .collect()
    }

    /// The host row and the instances on it a reconciler pass has to act
    /// on, read in a fixed number of statements however many instances the
    /// host runs: one for the host and its rows (converged instances are
    /// not even read), one for the NICs and, only when some of them have
    /// volumes, one for the attachments. `None` when the host is gone.
    pub async fn host_pass(&self, host: HostId) -> ApiResult<Option<HostPass>> {
        let rows = sqlx::query(&format!(
            "{PUSHABLE_SELECT}, h.kind AS h_kind, h.agent_url AS h_agent_url, h.credential AS h_credential, \
                    h.last_heartbeat_at AS h_last_heartbeat_at, h.health AS h_health, \
                    (SELECT COUNT(*) FROM attachments at WHERE at.instance_id = i.id) AS attached \
             FROM hosts h \
             LEFT JOIN instances i ON i.host_id = h.id AND i.deleted_at IS NULL \
               AND (i.desired = 'deleted' OR i.applied_generation < i.generation OR i.status = 'rebooting') \
             LEFT JOIN images im ON im.id = i.image_id LEFT JOIN keypairs k ON k.id = i.keypair_id \
             WHERE h.id = $1"
        ))
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut pass = HostPass {
            kind: first.parsed("h_kind", HostKind::parse)?,
            agent_url: first.text("h_agent_url")?,
            credential: first.text("h_credential")?,
            last_heartbeat_at: first.opt_int("h_last_heartbeat_at")?,
            health: first.parsed("h_health", HostHealth::parse)?,
            work: HostWork::default(),
        };
        // A host with no work comes back as one row without an instance.
        let rows: Vec<&AnyRow> = rows
            .iter()
            .filter(|r| r.opt_text("id").ok().flatten().is_some())
            .collect();
        pass.work = self.host_work(host, &rows).await?;
        Ok(Some(pass))
    }

    async fn host_work(&self, host: HostId, rows: &[&AnyRow]) -> ApiResult<HostWork> {
        let mut work = HostWork::default();
        let mut push_rows = Vec::with_capacity(rows.len());
        for &r in rows {
            let id: InstanceId = r.id("id")?;
            if r.parsed("desired", DesiredState::parse)? == DesiredState::Deleted {
                work.deleting.push(id);
            } else if r.opt_text("image_source")?.is_some() {
                // (An instance whose image row is gone cannot be built; the
                // inner join of `instance_specs` skips it the same way.)
                push_rows.push((id, r));
            }
        }
        if push_rows.is_empty() {
            return Ok(work);
        }
        // NICs and attachments of the instances to push: by id for one, by
        // host for several. Addresses are written in the instance's own
        // create transaction, so an instance read above has all of its NICs.
        let of = match push_rows.as_slice() {
            [(id, _)] => SpecsOf::Instance(*id),
            _ => SpecsOf::Host(host),
        };
        let mut nics = self.nic_specs(of).await?;
        let mut volumes = HashMap::new();
        if push_rows
            .iter()
            .any(|(_, r)| r.int("attached").unwrap_or(1) > 0)
        {
            volumes = self.attachment_specs(of).await?;
        }
        for (id, r) in push_rows {
            let nics = nics.remove(&id).unwrap_or_default();
            let attached = volumes.remove(&id).unwrap_or_default();
            work.to_push.push(pushable(r, id, nics, attached)?);
        }
        Ok(work)
    }

    /// The NICs of the instances `of` names, by instance.
    async fn nic_specs(&self, of: SpecsOf) -> ApiResult<HashMap<InstanceId, Vec<NicSpec>>> {
        let sql = format!(
            "SELECT {NIC_COLUMNS} {} ORDER BY a.instance_id, a.nic_index",
            of.condition()
        );
        let rows = sqlx::query(&sql)
            .bind(of.id())
            .fetch_all(&self.db.pool)
            .await?;
        Ok(by_instance(&rows, nic_spec)?)
    }

    /// The volume attachments of the instances `of` names, by instance.
    async fn attachment_specs(
        &self,
        of: SpecsOf,
    ) -> ApiResult<HashMap<InstanceId, Vec<VolumeAttachmentSpec>>> {
        let sql = format!(
            "SELECT {ATTACHMENT_COLUMNS} {} ORDER BY a.instance_id, a.device_index",
            of.condition()
        );
        let rows = sqlx::query(&sql)
            .bind(of.id())
            .fetch_all(&self.db.pool)
            .await?;
        Ok(by_instance(&rows, |_, r| attachment_spec(r))?)
    }

    /// Specs of every volume placed on storage node `host` that should
    /// exist: two statements (the volumes, their snapshots) however many.
    pub async fn volume_specs(&self, host: HostId) -> ApiResult<Vec<VolumeSpec>> {
        self.volume_specs_where(host, false).await
    }

    /// What a storage node's reconciler pass acts on, in at most three
    /// statements however many volumes the node holds.
    pub async fn storage_pass(&self, host: HostId) -> ApiResult<StoragePass> {
        let mut pass = StoragePass::default();
        for r in
            sqlx::query("SELECT id, status FROM volumes WHERE host_id = $1 AND deleted_at IS NULL")
                .bind(host.to_string())
                .fetch_all(&self.db.pool)
                .await?
        {
            let id: VolumeId = r.id("id")?;
            if r.parsed("status", VolumeStatus::parse)? == VolumeStatus::Deleting {
                pass.deleting.push(id);
            }
            pass.live.insert(id);
        }
        // Copies are deleted with their volume, by the orphan sweep.
        for r in sqlx::query(
            "SELECT c.volume_id FROM volume_copies c JOIN volumes v ON v.id = c.volume_id \
             WHERE c.host_id = $1 AND v.deleted_at IS NULL",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?
        {
            pass.live.insert(r.id("volume_id")?);
        }
        pass.stale = self.volume_specs_where(host, true).await?;
        Ok(pass)
    }

    /// Of the volumes a node reports, those we know were deleted (a
    /// volume's data is never dropped on a guess).
    pub async fn volumes_deleted(&self, ids: &[VolumeId]) -> ApiResult<HashSet<VolumeId>> {
        let mut deleted = HashSet::new();
        for chunk in ids.chunks(IN_BATCH) {
            let sql = format!(
                "SELECT id FROM volumes WHERE deleted_at IS NOT NULL AND id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for r in query.fetch_all(&self.db.pool).await? {
                deleted.insert(r.id("id")?);
            }
        }
        Ok(deleted)
    }

    /// The live instances the database places on `host`: what a listing
    /// of its agent is checked against for orphans.
    pub async fn instance_ids_on(&self, host: HostId) -> ApiResult<HashSet<InstanceId>> {
        sqlx::query("SELECT id FROM instances WHERE host_id = $1 AND deleted_at IS NULL")
            .bind(host.to_string())
            .fetch_all(&self.db.pool)
            .await?
            .iter()
            .map(|r| r.id("id"))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Hosts with work a reconciler has not finished: what the reconcilers
    /// resume at start-up.
    pub async fn hosts_with_pending_work(&self) -> ApiResult<Vec<HostId>> {
        sqlx::query(
            "SELECT DISTINCT host_id FROM instances WHERE host_id IS NOT NULL AND deleted_at IS NULL \
               AND (applied_generation < generation OR desired = 'deleted' OR status = 'building') \
             UNION SELECT DISTINCT host_id FROM volumes WHERE host_id IS NOT NULL AND deleted_at IS NULL \
               AND (applied_generation < generation OR status = 'deleting') \
             UNION SELECT DISTINCT c.host_id FROM volume_copies c JOIN volumes v ON v.id = c.volume_id \
               WHERE v.deleted_at IS NULL AND v.status <> 'deleting' AND c.applied_generation < v.generation",
        )
        .fetch_all(&self.db.pool)
        .await?
        .iter()
        .map(|r| r.id("host_id"))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
    }

    async fn volume_specs_where(
        &self,
        host: HostId,
        only_stale: bool,
    ) -> ApiResult<Vec<VolumeSpec>> {
        let stale = if only_stale {
            " AND ((cp.host_id IS NULL AND v.applied_generation < v.generation) \
               OR (cp.host_id IS NOT NULL AND cp.applied_generation < v.generation))"
        } else {
            ""
        };
        let rows = sqlx::query(&format!(
            "SELECT v.*, hi.initiator_iqn AS initiator, im.id AS image_id, im.source AS image_source, \
                    im.format AS image_format, im.sha256 AS image_sha256, sn.volume_id AS snapshot_volume, \
                    cp.host_id AS copy_host \
             FROM volumes v \
             LEFT JOIN volume_copies cp ON cp.volume_id = v.id AND cp.host_id = $1 \
             LEFT JOIN attachments a ON a.volume_id = v.id \
             LEFT JOIN instances i ON i.id = a.instance_id \
             LEFT JOIN hosts hi ON hi.id = i.host_id AND hi.health NOT IN ('fencing', 'fenced') \
             LEFT JOIN images im ON im.id = v.source_image_id \
             LEFT JOIN snapshots sn ON sn.id = v.source_snapshot_id \
             WHERE (v.host_id = $1 OR cp.host_id IS NOT NULL) AND v.status <> 'deleting' \
               AND v.deleted_at IS NULL{stale} ORDER BY v.id",
        ))
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut snapshots: HashMap<VolumeId, Vec<SnapshotId>> = HashMap::new();
        for s in sqlx::query(
            "SELECT s.id, s.volume_id FROM snapshots s JOIN volumes v ON v.id = s.volume_id \
             WHERE v.host_id = $1 AND v.deleted_at IS NULL \
               AND s.deleted_at IS NULL AND s.status <> 'deleting' ORDER BY s.created_at, s.id",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?
        {
            snapshots
                .entry(s.id("volume_id")?)
                .or_default()
                .push(s.id("id")?);
        }
        let mut peers: HashMap<VolumeId, Vec<ReplicaPeer>> = HashMap::new();
        for p in sqlx::query(
            "SELECT c.volume_id, c.host_id, c.state, h.replication_address FROM volume_copies c \
             JOIN hosts h ON h.id = c.host_id JOIN volumes v ON v.id = c.volume_id \
             WHERE v.host_id = $1 AND v.deleted_at IS NULL ORDER BY c.host_id",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?
        {
            let state = match p.parsed("state", CopyState::parse)? {
                CopyState::InSync => PeerState::InSync,
                CopyState::OutOfSync => PeerState::OutOfSync,
            };
            peers
                .entry(p.id("volume_id")?)
                .or_default()
                .push(ReplicaPeer {
                    host: p.id("host_id")?,
                    address: p.opt_text("replication_address")?.unwrap_or_default(),
                    state,
                });
        }
        let mut specs = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: VolumeId = r.id("id")?;
            let is_copy = r.opt_text("copy_host")?.is_some();
            let replication = match r.opt_text("replication_key")? {
                Some(key) if r.uint("replicas")? > 1 => Some(ReplicationSpec {
                    epoch: r.uint("replication_epoch")?,
                    role: if is_copy {
                        ReplicaRole::Replica
                    } else {
                        ReplicaRole::Primary
                    },
                    key,
                    peers: if is_copy {
                        Vec::new()
                    } else {
                        peers.remove(&id).unwrap_or_default()
                    },
                }),
                _ => None,
            };
            let source = if r.opt_text("image_id")?.is_some() {
                VolumeSourceSpec::Image {
                    image: image_spec(r)?,
                }
            } else if let (Some(vol), Some(snap)) = (
                r.opt_id::<VolumeId>("snapshot_volume")?,
                r.opt_id::<SnapshotId>("source_snapshot_id")?,
            ) {
                VolumeSourceSpec::Snapshot {
                    volume_id: vol,
                    snapshot_id: snap,
                }
            } else {
                VolumeSourceSpec::Empty
            };
            specs.push(VolumeSpec {
                id,
                generation: r.uint("generation")?,
                size_bytes: r.uint("size_gib")? << 30,
                source,
                iqn: r.text("iqn")?,
                chap_user: r.text("chap_user")?,
                chap_secret: r.text("chap_secret")?,
                // A copy serves no initiator and keeps no snapshot.
                allowed_initiators: if is_copy {
                    Vec::new()
                } else {
                    r.opt_text("initiator")?.into_iter().collect()
                },
                snapshots: if is_copy {
                    Vec::new()
                } else {
                    snapshots.remove(&id).unwrap_or_default()
                },
                replication,
            });
        }
        Ok(specs)
    }

    /// Folds a hypervisor's heartbeat report into the rows, in a fixed
    /// number of statements when nothing changed (the common heartbeat).
    /// Entries whose state differs from their row go through
    /// [`instance_observe`](Self::instance_observe).
    pub async fn instance_fold_report(
        &self,
        host: HostId,
        observed: &[ObservedInstance],
    ) -> ApiResult<Folded> {
        let rows = sqlx::query(
            "SELECT id, desired, status, status_reason, generation, applied_generation, reboot_count \
             FROM instances WHERE host_id = $1 AND deleted_at IS NULL",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?;
        let mut live = HashMap::with_capacity(rows.len());
        for r in &rows {
            live.insert(
                r.id::<InstanceId>("id")?,
                LiveInstance {
                    desired: r.parsed("desired", DesiredState::parse)?,
                    status: r.text("status")?,
                    status_reason: r.opt_text("status_reason")?,
                    generation: r.uint("generation")?,
                    applied_generation: r.uint("applied_generation")?,
                    reboot_count: r.uint("reboot_count")?,
                },
            );
        }
        let mut folded = Folded::default();
        let mut seen = HashSet::with_capacity(observed.len());
        for o in observed {
            let Some(r) = live.get(&o.id) else {
                // Not ours (any more): the agent should drop it.
                folded.orphans = true;
                continue;
            };
            seen.insert(o.id);
            if r.desired == DesiredState::Deleted {
                folded.push = true;
                continue;
            }
            let status = lifecycle::instance_status(o, r.reboot_count);
            // A crash the health monitor annotated stays as it wrote it.
            let same_crash = r.status == "crashed" && status == InstanceStatus::Crashed;
            let changed = r.status != status.as_str()
                || (!same_crash && r.status_reason != o.reason)
                || r.applied_generation != o.generation;
            if changed {
                folded.push |= fold_failed(
                    host,
                    "instance",
                    self.instance_observe(host, o).await.map(|o| o.behind),
                );
            } else {
                folded.push |= o.generation < r.generation || o.reboot_count < r.reboot_count;
            }
        }
        let lost: Vec<String> = live
            .iter()
            .filter(|(id, r)| !seen.contains(*id) && r.applied_generation > 0)
            .map(|(id, _)| id.to_string())
            .collect();
        self.forget_applied("instances", host, &lost).await?;
        folded.push |= live.len() > seen.len();
        Ok(folded)
    }

    /// The volume counterpart of
    /// [`instance_fold_report`](Self::instance_fold_report).
    pub async fn volume_fold_report(
        &self,
        host: HostId,
        observed: &[ObservedVolume],
    ) -> ApiResult<Folded> {
        let rows = sqlx::query(
            "SELECT v.id, v.status, v.generation, v.applied_generation, \
               (SELECT COUNT(*) FROM attachments a WHERE a.volume_id = v.id) AS attached, \
               (SELECT COUNT(*) FROM snapshots s WHERE s.volume_id = v.id AND s.deleted_at IS NULL \
                  AND s.status IN ('creating', 'deleting')) AS pending_snapshots \
             FROM volumes v WHERE v.host_id = $1 AND v.deleted_at IS NULL",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?;
        let mut live = HashMap::with_capacity(rows.len());
        for r in &rows {
            live.insert(
                r.id::<VolumeId>("id")?,
                LiveVolume {
                    status: r.text("status")?,
                    generation: r.uint("generation")?,
                    applied_generation: r.uint("applied_generation")?,
                    attached: r.int("attached")? > 0,
                    pending_snapshots: r.int("pending_snapshots")? > 0,
                },
            );
        }
        let mut folded = Folded::default();
        let mut seen = HashSet::with_capacity(observed.len());
        let copies = self.copies_on(host).await?;
        for o in observed {
            if let Some(&(generation, applied)) = copies.get(&o.id) {
                seen.insert(o.id);
                if applied != o.generation.min(generation) {
                    folded.push |=
                        fold_failed(host, "volume copy", self.copy_observe(host, o).await);
                } else {
                    folded.push |= o.generation < generation;
                }
                continue;
            }
            let Some(r) = live.get(&o.id) else {
                folded.orphans = true;
                continue;
            };
            if let Some(peers) = o.replication.as_ref().map(|r| &r.peers) {
                match self.copies_fold(o.id, host, peers).await {
                    Ok(hosts) => folded.wake.extend(hosts),
                    Err(e) => {
                        tracing::warn!(%host, volume = %o.id, error = %e, "cannot fold copy states")
                    }
                }
            }
            seen.insert(o.id);
            if r.status == VolumeStatus::Deleting.as_str() {
                folded.push = true;
                continue;
            }
            let status = lifecycle::volume_status(o, r.attached);
            // Snapshots being created or deleted settle only through the report.
            if r.status != status.as_str()
                || r.applied_generation != o.generation
                || r.pending_snapshots
            {
                folded.push |= fold_failed(host, "volume", self.volume_observe(host, o).await);
            } else {
                folded.push |= o.generation < r.generation;
            }
        }
        let lost: Vec<String> = live
            .iter()
            .filter(|(id, r)| !seen.contains(*id) && r.applied_generation > 0)
            .map(|(id, _)| id.to_string())
            .collect();
        self.forget_applied("volumes", host, &lost).await?;
        let lost_copies: Vec<VolumeId> = copies
            .iter()
            .filter(|(id, (_, applied))| !seen.contains(*id) && *applied > 0)
            .map(|(id, _)| *id)
            .collect();
        for id in &lost_copies {
            sqlx::query("UPDATE volume_copies SET applied_generation = 0 WHERE volume_id = $1 AND host_id = $2")
                .bind(id.to_string())
                .bind(host.to_string())
                .execute(&self.db.pool)
                .await?;
        }
        folded.push |= live.len() + copies.len() > seen.len();
        Ok(folded)
    }

    /// The copies of replicated volumes `host` holds: (volume generation,
    /// the generation the copy applied).
    async fn copies_on(&self, host: HostId) -> ApiResult<HashMap<VolumeId, (u64, u64)>> {
        let mut out = HashMap::new();
        for r in sqlx::query(
            "SELECT c.volume_id, v.generation, c.applied_generation FROM volume_copies c \
             JOIN volumes v ON v.id = c.volume_id \
             WHERE c.host_id = $1 AND v.deleted_at IS NULL AND v.status <> 'deleting'",
        )
        .bind(host.to_string())
        .fetch_all(&self.db.pool)
        .await?
        {
            out.insert(
                r.id("volume_id")?,
                (r.uint("generation")?, r.uint("applied_generation")?),
            );
        }
        Ok(out)
    }

    /// Folds a copy's report: the generation it applied. Returns whether
    /// the node needs a push; `None` if `host` holds no copy of it.
    async fn copy_observe(&self, host: HostId, o: &ObservedVolume) -> ApiResult<bool> {
        let Some(r) = sqlx::query(
            "SELECT v.generation FROM volume_copies c JOIN volumes v ON v.id = c.volume_id \
             WHERE c.volume_id = $1 AND c.host_id = $2 AND v.deleted_at IS NULL",
        )
        .bind(o.id.to_string())
        .bind(host.to_string())
        .fetch_optional(&self.db.pool)
        .await?
        else {
            return Ok(true);
        };
        let generation = r.uint("generation")?;
        let applied = o.generation.min(generation);
        let update = sqlx::query(
            "UPDATE volume_copies SET applied_generation = $3 \
             WHERE volume_id = $1 AND host_id = $2 AND applied_generation <= $3",
        )
        .bind(o.id.to_string())
        .bind(host.to_string())
        .bind(applied as i64);
        self.db.write_one(update).await?;
        Ok(applied < generation)
    }

    /// Folds what a primary reports of its copies. A copy the database
    /// holds out of sync that is caught up (connected, every missed region
    /// resent) becomes in sync: from then on no write is acknowledged
    /// without it, and it may be promoted; a new epoch and generation
    /// carry that to every copy. Each copy's lag (bytes of regions still
    /// to resend) is recorded as it changes. Returns the hosts to push to.
    async fn copies_fold(
        &self,
        id: VolumeId,
        primary: HostId,
        peers: &[ObservedPeer],
    ) -> ApiResult<Vec<HostId>> {
        if peers.is_empty() {
            return Ok(Vec::new());
        }
        // The common report changes nothing: read before taking the write gate.
        let mut caught_up = Vec::new();
        let mut lag = Vec::new();
        for r in sqlx::query(
            "SELECT host_id, state, behind_bytes FROM volume_copies WHERE volume_id = $1",
        )
        .bind(id.to_string())
        .fetch_all(&self.db.pool)
        .await?
        {
            let host: HostId = r.id("host_id")?;
            let Some(p) = peers.iter().find(|p| p.host == host) else {
                continue;
            };
            if r.text("state")? == "out_of_sync" && p.state == ObservedPeerState::InSync {
                caught_up.push(host);
            }
            if r.uint("behind_bytes")? != p.behind_bytes {
                lag.push((host, p.behind_bytes));
            }
        }
        if caught_up.is_empty() && lag.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.db.begin_write().await?;
        for (h, behind) in &lag {
            sqlx::query(
                "UPDATE volume_copies SET behind_bytes = $3 WHERE volume_id = $1 AND host_id = $2",
            )
            .bind(id.to_string())
            .bind(h.to_string())
            .bind(to_i64(*behind))
            .execute(&mut **tx)
            .await?;
        }
        let mut changed = 0;
        for h in &caught_up {
            changed += sqlx::query(
                "UPDATE volume_copies SET state = 'in_sync', behind_bytes = 0 WHERE volume_id = $1 \
                   AND host_id = $2 AND state = 'out_of_sync' \
                   AND EXISTS (SELECT 1 FROM volumes v WHERE v.id = $1 AND v.host_id = $3 AND v.deleted_at IS NULL)",
            )
            .bind(id.to_string())
            .bind(h.to_string())
            .bind(primary.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected();
        }
        let hosts = if changed > 0 {
            bump_replication(&mut tx, id).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        if changed > 0 {
            tracing::info!(volume = %id, copies = ?caught_up, "copies back in sync");
        }
        Ok(hosts)
    }

    /// Rows the agent did not report were lost on its side (it restarted
    /// with nothing, or a create failed before it was recorded): they are
    /// marked as not applied, so the reconciler pushes them again. Only
    /// rows the agent had already been told about are passed in: a
    /// building one may simply not be reported yet.
    async fn forget_applied(
        &self,
        table: &'static str,
        host: HostId,
        ids: &[String],
    ) -> ApiResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        for chunk in ids.chunks(IN_BATCH) {
            let sql = format!(
                "UPDATE {table} SET applied_generation = 0 WHERE host_id = $1 AND id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut update = sqlx::query(&sql).bind(host.to_string());
            for id in chunk {
                update = update.bind(id);
            }
            update.execute(&mut **tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Folds a storage node's report on one volume into its row; returns
    /// whether the node needs a push. The write is conditional like
    /// [`instance_observe`](Self::instance_observe)'s: on the host the row
    /// names, not over a newer report, never over a delete.
    pub async fn volume_observe(&self, host: HostId, o: &ObservedVolume) -> ApiResult<bool> {
        if o.replication
            .as_ref()
            .is_some_and(|r| r.role == ReplicaRole::Replica)
        {
            return self.copy_observe(host, o).await;
        }
        let row = sqlx::query(
            "SELECT v.status, v.generation, v.applied_generation, v.lun, \
                    (SELECT COUNT(*) FROM attachments a WHERE a.volume_id = v.id) AS attached \
             FROM volumes v WHERE v.id = $1 AND v.host_id = $2 AND v.deleted_at IS NULL",
        )
        .bind(o.id.to_string())
        .bind(host.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        let Some(r) = row else { return Ok(true) };
        let current = r.parsed("status", VolumeStatus::parse)?;
        if current == VolumeStatus::Deleting {
            return Ok(true);
        }
        let generation = r.uint("generation")?;
        let status = lifecycle::volume_status(o, r.int("attached")? > 0);
        // A node cannot have applied a generation we never sent.
        let o = &ObservedVolume {
            generation: o.generation.min(generation),
            ..o.clone()
        };
        if current != status
            || r.uint("applied_generation")? != o.generation
            || r.uint("lun")? != u64::from(o.lun)
        {
            let update = sqlx::query(
                "UPDATE volumes SET status = $2, status_reason = $3, applied_generation = $4, lun = $5 \
                 WHERE id = $1 AND host_id = $6 AND applied_generation <= $4 \
                   AND status <> 'deleting' AND deleted_at IS NULL",
            )
            .bind(o.id.to_string())
            .bind(status.as_str())
            .bind(o.reason.clone())
            .bind(o.generation as i64)
            .bind(i64::from(o.lun))
            .bind(host.to_string());
            self.db.write_one(update).await?;
        }
        self.snapshot_observe(o).await?;
        Ok(o.generation < generation)
    }

    /// Snapshots the node reports exist become available; snapshots being
    /// deleted that it no longer reports are gone. One read, and at most
    /// one write of each kind.
    async fn snapshot_observe(&self, o: &ObservedVolume) -> ApiResult<()> {
        let rows = sqlx::query(
            "SELECT id, status FROM snapshots WHERE volume_id = $1 AND deleted_at IS NULL \
               AND status IN ('creating', 'deleting')",
        )
        .bind(o.id.to_string())
        .fetch_all(&self.db.pool)
        .await?;
        let mut became_available = Vec::new();
        let mut gone = Vec::new();
        for r in &rows {
            let id: SnapshotId = r.id("id")?;
            let reported = o.snapshots.contains(&id);
            match r.text("status")?.as_str() {
                "creating" if reported => became_available.push(id.to_string()),
                "deleting" if !reported => gone.push(id.to_string()),
                _ => {}
            }
        }
        if became_available.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        // (A volume has far fewer snapshots than either database's limit
        // on parameters.)
        if !became_available.is_empty() {
            let sql = format!(
                "UPDATE snapshots SET status = 'available' WHERE deleted_at IS NULL AND id IN ({})",
                placeholders(1, became_available.len())
            );
            let mut update = sqlx::query(&sql);
            for id in &became_available {
                update = update.bind(id);
            }
            update.execute(&mut **tx).await?;
        }
        if !gone.is_empty() {
            let sql = format!(
                "UPDATE snapshots SET deleted_at = $1 WHERE deleted_at IS NULL AND id IN ({})",
                placeholders(2, gone.len())
            );
            let mut update = sqlx::query(&sql).bind(now_ms());
            for id in &gone {
                update = update.bind(id);
            }
            update.execute(&mut **tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a volume deleted once its storage node confirmed, releasing
    /// its quota and its claim on the node in the same transaction.
    /// Returns the claim released (for the scheduler's view), or `None`
    /// when it was already gone or had no node.
    pub async fn volume_finalize_delete(&self, id: VolumeId) -> ApiResult<Vec<Claim>> {
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        let Some(r) = super::mark_deleted(&mut tx, "volumes", &id.to_string(), now).await? else {
            return Ok(Vec::new());
        };
        let size_gib = r.int("size_gib")?;
        quotas::quota_release(
            &mut tx,
            r.id("project_id")?,
            QuotaDelta {
                volumes: 1,
                volume_gib: size_gib,
                ..Default::default()
            },
        )
        .await?;
        let mut claims: Vec<Claim> = r
            .opt_id::<HostId>("host_id")?
            .map(|host| Claim::volume(host, size_gib << 30))
            .into_iter()
            .collect();
        // The copies' space is released with the volume; their nodes drop
        // their data in the orphan sweep (the volume is known deleted).
        for c in sqlx::query("DELETE FROM volume_copies WHERE volume_id = $1 RETURNING host_id")
            .bind(id.to_string())
            .fetch_all(&mut **tx)
            .await?
        {
            claims.push(Claim::volume(c.id("host_id")?, size_gib << 30));
        }
        for c in &claims {
            super::claims::host_release(&mut tx, *c).await?;
        }
        sqlx::query(
            "UPDATE usage_spans SET ended_at = $2 WHERE resource_id = $1 AND ended_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE snapshots SET deleted_at = $2 WHERE volume_id = $1 AND deleted_at IS NULL",
        )
        .bind(id.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        tx.commit().await?;
        Ok(claims)
    }
}

/// Whose NICs or attachments a spec read fetches: one instance's, or those
/// of every live instance on a host. `a` is the `addresses` or
/// `attachments` row of the query.
#[derive(Clone, Copy)]
enum SpecsOf {
    Instance(InstanceId),
    Host(HostId),
}

impl SpecsOf {
    fn condition(self) -> &'static str {
        match self {
            SpecsOf::Instance(_) => "WHERE a.instance_id = $1",
            SpecsOf::Host(_) => {
                "JOIN instances i ON i.id = a.instance_id WHERE i.host_id = $1 AND i.deleted_at IS NULL"
            }
        }
    }

    fn id(self) -> String {
        match self {
            SpecsOf::Instance(id) => id.to_string(),
            SpecsOf::Host(id) => id.to_string(),
        }
    }
}

/// Most ids one `IN (…)` list binds: far below either database's limit.
const IN_BATCH: usize = 500;

/// An instance with its image and key, as the spec to push; `i`, `im` and
/// `k` are defined by the query.
const PUSHABLE_SELECT: &str = "SELECT i.*, im.source AS image_source, im.format AS image_format, \
     im.sha256 AS image_sha256, k.public_key AS public_key";

const NIC_COLUMNS: &str =
    "a.instance_id, a.address, a.nic_index, s.cidr, s.gateway, s.dns_servers, \
     n.id AS network_id, n.vlan, n.mtu \
     FROM addresses a JOIN subnets s ON s.id = a.subnet_id JOIN networks n ON n.id = s.network_id";

const ATTACHMENT_COLUMNS: &str =
    "a.instance_id, a.volume_id, a.device_index, v.iqn, v.lun, v.chap_user, v.chap_secret, h.iscsi_portal \
     FROM attachments a JOIN volumes v ON v.id = a.volume_id LEFT JOIN hosts h ON h.id = v.host_id";

/// `$first, $first+1, …`: `n` parameters of an `IN (…)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether an observation failed to fold; logged, and treated as "needs a
/// push" so the reconciler looks at the host again.
fn fold_failed(host: HostId, what: &str, r: ApiResult<bool>) -> bool {
    r.unwrap_or_else(|e| {
        tracing::warn!(%host, error = %e, "cannot fold observed {what}");
        true
    })
}

/// An instance row (with its image and key columns) as the spec to push.
fn pushable(
    r: &AnyRow,
    id: InstanceId,
    nics: Vec<NicSpec>,
    volumes: Vec<VolumeAttachmentSpec>,
) -> Result<Pushable, sqlx::Error> {
    let spec = InstanceSpec {
        id,
        hostname: r.text("name")?,
        generation: r.uint("generation")?,
        // While a planned move is under way its source must stop it
        // whatever the tenant wants: it runs nowhere until the move
        // commits (then on the target) or aborts (then here again).
        power: match r.parsed("desired", DesiredState::parse)? {
            DesiredState::Running if r.opt_text("move_target")?.is_none() => PowerState::Running,
            _ => PowerState::Stopped,
        },
        reboot_count: r.uint("reboot_count")?,
        vcpus: r.uint("vcpus")? as u32,
        ram_mib: r.uint("ram_mib")?,
        disk_gib: r.uint("disk_gib")?,
        image: image_spec(r)?,
        nics,
        ssh_authorized_keys: r.opt_text("public_key")?.into_iter().collect(),
        user_data: r.opt_text("user_data")?,
        volumes,
    };
    Ok(Pushable {
        spec,
        applied_generation: r.uint("applied_generation")?,
        status: r.parsed("status", InstanceStatus::parse)?,
    })
}

fn image_spec(r: &AnyRow) -> Result<ImageSpec, sqlx::Error> {
    Ok(ImageSpec {
        id: r.id("image_id")?,
        source: r.text("image_source")?,
        format: r.parsed("image_format", ImageFormat::parse)?,
        sha256: r.text("image_sha256")?,
    })
}

/// Rows carrying an `instance_id`, mapped and grouped by it (in row order).
fn by_instance<T>(
    rows: &[AnyRow],
    f: impl Fn(InstanceId, &AnyRow) -> Result<T, sqlx::Error>,
) -> Result<HashMap<InstanceId, Vec<T>>, sqlx::Error> {
    let mut out: HashMap<InstanceId, Vec<T>> = HashMap::new();
    for r in rows {
        let id: InstanceId = r.id("instance_id")?;
        out.entry(id).or_default().push(f(id, r)?);
    }
    Ok(out)
}

fn nic_spec(instance: InstanceId, r: &AnyRow) -> Result<NicSpec, sqlx::Error> {
    let decode = |col: &str| sqlx::Error::Decode(format!("{col}: bad value").into());
    let address: IpAddr = r.text("address")?.parse().map_err(|_| decode("address"))?;
    let cidr: ipnet::IpNet = r.text("cidr")?.parse().map_err(|_| decode("cidr"))?;
    let dns: Vec<IpAddr> = serde_json::from_str(&r.text("dns_servers")?).unwrap_or_default();
    let index = r.uint("nic_index")? as u8;
    Ok(NicSpec {
        network_id: r.id("network_id")?,
        mac: netconfig::derive_mac(instance.0.as_bytes(), index),
        address,
        prefix_len: cidr.prefix_len(),
        gateway: r.text("gateway")?.parse().map_err(|_| decode("gateway"))?,
        dns_servers: dns,
        vlan: r.opt_int("vlan")?.map(|v| v as u16),
        mtu: r.uint("mtu")? as u16,
    })
}

fn attachment_spec(r: &AnyRow) -> Result<VolumeAttachmentSpec, sqlx::Error> {
    Ok(VolumeAttachmentSpec {
        volume_id: r.id("volume_id")?,
        device_index: r.uint("device_index")? as u32,
        portal: r.opt_text("iscsi_portal")?.unwrap_or_default(),
        iqn: r.text("iqn")?,
        lun: r.uint("lun")? as u32,
        chap_user: r.text("chap_user")?,
        chap_secret: r.text("chap_secret")?,
    })
}

/// A new epoch and generation for a replicated volume whose primary or
/// copy states changed, in the caller's transaction; returns every host
/// holding a copy (the primary first), to push to.
pub(crate) async fn bump_replication(
    tx: &mut crate::db::WriteTx,
    id: VolumeId,
) -> Result<Vec<HostId>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE volumes SET generation = generation + 1, replication_epoch = replication_epoch + 1 \
         WHERE id = $1 AND deleted_at IS NULL RETURNING host_id",
    )
    .bind(id.to_string())
    .fetch_optional(&mut ***tx)
    .await?;
    let mut hosts: Vec<HostId> = match row {
        Some(r) => r.opt_id::<HostId>("host_id")?.into_iter().collect(),
        None => return Ok(Vec::new()),
    };
    for r in sqlx::query("SELECT host_id FROM volume_copies WHERE volume_id = $1")
        .bind(id.to_string())
        .fetch_all(&mut ***tx)
        .await?
    {
        hosts.push(r.id("host_id")?);
    }
    Ok(hosts)
}
