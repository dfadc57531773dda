//! Desired state as agents see it: building complete instance and volume
//! specs from the database, and folding what agents observe back into it.

use std::net::IpAddr;

use api::ids::{HostId, InstanceId, SnapshotId, VolumeId};
use api::internal::*;
use api::resources::ImageFormat;
use sqlx::any::AnyRow;

use crate::db::{now_ms, Db, RowExt};
use crate::error::ApiResult;
use crate::lifecycle;
use crate::scheduler::Claim;
use crate::state::AppState;
use crate::store::quotas::{self, QuotaDelta};

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
        power: if r.text("desired")? == "running" {
            PowerState::Running
        } else {
            PowerState::Stopped
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
        status: r.text("status")?,
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

/// A spec with what its agent last applied, for the reconciler.
pub struct Pushable {
    pub spec: InstanceSpec,
    pub applied_generation: u64,
    pub status: String,
}

/// Specs of every instance placed on `host` that should exist.
pub async fn instance_specs(
    db: &Db,
    host: HostId,
    only: Option<InstanceId>,
) -> Result<Vec<InstanceSpec>, sqlx::Error> {
    Ok(pushable_instances(db, host, only)
        .await?
        .into_iter()
        .map(|p| p.spec)
        .collect())
}

/// [`instance_specs`] with the applied generation and status of each.
pub async fn pushable_instances(
    db: &Db,
    host: HostId,
    only: Option<InstanceId>,
) -> Result<Vec<Pushable>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT i.*, im.source AS image_source, im.format AS image_format, im.sha256 AS image_sha256, \
                k.public_key AS public_key \
         FROM instances i JOIN images im ON im.id = i.image_id LEFT JOIN keypairs k ON k.id = i.keypair_id \
         WHERE i.host_id = $1 AND i.desired <> 'deleted' AND i.deleted_at IS NULL AND ($2 = '' OR i.id = $2)",
    )
    .bind(host.to_string())
    .bind(only.map(|i| i.to_string()).unwrap_or_default())
    .fetch_all(&db.pool)
    .await?;
    let mut specs = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: InstanceId = r.id("id")?;
        let nics = nic_specs(db, id).await?;
        let volumes = attachment_specs(db, id).await?;
        specs.push(pushable(r, id, nics, volumes)?);
    }
    Ok(specs)
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
    pub kind: api::resources::HostKind,
    pub agent_url: String,
    pub credential: String,
    pub last_heartbeat_at: Option<i64>,
    pub work: HostWork,
}

/// The host row and the instances on it a reconciler pass has to act on,
/// read in a fixed number of queries however many instances the host runs:
/// one for the host and its rows (converged instances are not even read),
/// one for the NICs and, only when some of them have volumes, one for the
/// attachments. `None` when the host is gone.
pub async fn host_pass(db: &Db, host: HostId) -> Result<Option<HostPass>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT h.kind AS h_kind, h.agent_url AS h_agent_url, h.credential AS h_credential, \
                h.last_heartbeat_at AS h_last_heartbeat_at, \
                i.*, im.source AS image_source, im.format AS image_format, im.sha256 AS image_sha256, \
                k.public_key AS public_key, \
                (SELECT COUNT(*) FROM attachments at WHERE at.instance_id = i.id) AS attached \
         FROM hosts h \
         LEFT JOIN instances i ON i.host_id = h.id AND i.deleted_at IS NULL \
           AND (i.desired = 'deleted' OR i.applied_generation < i.generation OR i.status = 'rebooting') \
         LEFT JOIN images im ON im.id = i.image_id LEFT JOIN keypairs k ON k.id = i.keypair_id \
         WHERE h.id = $1",
    )
    .bind(host.to_string())
    .fetch_all(&db.pool)
    .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let mut pass = HostPass {
        kind: first.parsed("h_kind", api::resources::HostKind::parse)?,
        agent_url: first.text("h_agent_url")?,
        credential: first.text("h_credential")?,
        last_heartbeat_at: first.opt_int("h_last_heartbeat_at")?,
        work: HostWork::default(),
    };
    // A host with no work comes back as one row without an instance.
    let rows: Vec<&AnyRow> = rows
        .iter()
        .filter(|r| r.opt_text("id").ok().flatten().is_some())
        .collect();
    pass.work = host_work(db, host, &rows).await?;
    Ok(Some(pass))
}

async fn host_work(db: &Db, host: HostId, rows: &[&AnyRow]) -> Result<HostWork, sqlx::Error> {
    let mut work = HostWork::default();
    let mut push_rows = Vec::with_capacity(rows.len());
    for &r in rows {
        let id: InstanceId = r.id("id")?;
        if r.text("desired")? == "deleted" {
            work.deleting.push(id);
        } else if r.opt_text("image_source")?.is_some() {
            // (An instance whose image row is gone cannot be built; the
            // inner join of `pushable_instances` skips it the same way.)
            push_rows.push((id, r));
        }
    }
    if push_rows.is_empty() {
        return Ok(work);
    }
    // NICs and attachments of the instances to push: by id for one, by host
    // for several. Addresses are written in the instance's own create
    // transaction, so an instance read above has all of its NICs here.
    let (mut nics, mut volumes) = match push_rows.as_slice() {
        [(id, _)] => {
            let mut nics = std::collections::HashMap::new();
            nics.insert(*id, nic_specs(db, *id).await?);
            (nics, None)
        }
        _ => (host_nic_specs(db, host).await?, None),
    };
    if push_rows
        .iter()
        .any(|(_, r)| r.int("attached").unwrap_or(1) > 0)
    {
        volumes = Some(match push_rows.as_slice() {
            [(id, _)] => {
                let mut v = std::collections::HashMap::new();
                v.insert(*id, attachment_specs(db, *id).await?);
                v
            }
            _ => host_attachment_specs(db, host).await?,
        });
    }
    for (id, r) in push_rows {
        let nics = nics.remove(&id).unwrap_or_default();
        let attached = volumes
            .as_mut()
            .and_then(|v| v.remove(&id))
            .unwrap_or_default();
        work.to_push.push(pushable(r, id, nics, attached)?);
    }
    Ok(work)
}

const NIC_COLUMNS: &str =
    "a.instance_id, a.address, a.nic_index, s.cidr, s.gateway, s.dns_servers, \
     n.id AS network_id, n.vlan, n.mtu \
     FROM addresses a JOIN subnets s ON s.id = a.subnet_id JOIN networks n ON n.id = s.network_id";

async fn nic_specs(db: &Db, instance: InstanceId) -> Result<Vec<NicSpec>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {NIC_COLUMNS} WHERE a.instance_id = $1 ORDER BY a.nic_index"
    ))
    .bind(instance.to_string())
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(|r| nic_spec(instance, r)).collect()
}

/// The NICs of every live instance on `host`, by instance.
async fn host_nic_specs(
    db: &Db,
    host: HostId,
) -> Result<std::collections::HashMap<InstanceId, Vec<NicSpec>>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {NIC_COLUMNS} JOIN instances i ON i.id = a.instance_id \
         WHERE i.host_id = $1 AND i.deleted_at IS NULL ORDER BY a.instance_id, a.nic_index"
    ))
    .bind(host.to_string())
    .fetch_all(&db.pool)
    .await?;
    by_instance(&rows, nic_spec)
}

/// Rows carrying an `instance_id`, mapped and grouped by it (in row order).
fn by_instance<T>(
    rows: &[AnyRow],
    f: impl Fn(InstanceId, &AnyRow) -> Result<T, sqlx::Error>,
) -> Result<std::collections::HashMap<InstanceId, Vec<T>>, sqlx::Error> {
    let mut out: std::collections::HashMap<InstanceId, Vec<T>> = Default::default();
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

const ATTACHMENT_COLUMNS: &str =
    "a.instance_id, a.volume_id, a.device_index, v.iqn, v.lun, v.chap_user, v.chap_secret, h.iscsi_portal \
     FROM attachments a JOIN volumes v ON v.id = a.volume_id LEFT JOIN hosts h ON h.id = v.host_id";

async fn attachment_specs(
    db: &Db,
    instance: InstanceId,
) -> Result<Vec<VolumeAttachmentSpec>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {ATTACHMENT_COLUMNS} WHERE a.instance_id = $1 ORDER BY a.device_index"
    ))
    .bind(instance.to_string())
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(attachment_spec).collect()
}

/// The attachments of every live instance on `host`, by instance.
async fn host_attachment_specs(
    db: &Db,
    host: HostId,
) -> Result<std::collections::HashMap<InstanceId, Vec<VolumeAttachmentSpec>>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {ATTACHMENT_COLUMNS} JOIN instances i ON i.id = a.instance_id \
         WHERE i.host_id = $1 AND i.deleted_at IS NULL ORDER BY a.instance_id, a.device_index"
    ))
    .bind(host.to_string())
    .fetch_all(&db.pool)
    .await?;
    by_instance(&rows, |_, r| attachment_spec(r))
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

/// Specs of every volume placed on storage node `host` that should exist.
pub async fn volume_specs(
    db: &Db,
    host: HostId,
    only: Option<VolumeId>,
) -> Result<Vec<VolumeSpec>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT v.*, hi.initiator_iqn AS initiator, im.id AS image_id, im.source AS image_source, \
                im.format AS image_format, im.sha256 AS image_sha256, sn.volume_id AS snapshot_volume \
         FROM volumes v \
         LEFT JOIN attachments a ON a.volume_id = v.id \
         LEFT JOIN instances i ON i.id = a.instance_id \
         LEFT JOIN hosts hi ON hi.id = i.host_id \
         LEFT JOIN images im ON im.id = v.source_image_id \
         LEFT JOIN snapshots sn ON sn.id = v.source_snapshot_id \
         WHERE v.host_id = $1 AND v.status <> 'deleting' AND v.deleted_at IS NULL AND ($2 = '' OR v.id = $2)",
    )
    .bind(host.to_string())
    .bind(only.map(|i| i.to_string()).unwrap_or_default())
    .fetch_all(&db.pool)
    .await?;
    let mut specs = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: VolumeId = r.id("id")?;
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
        let snapshots = sqlx::query(
            "SELECT id FROM snapshots WHERE volume_id = $1 AND deleted_at IS NULL AND status <> 'deleting' ORDER BY created_at",
        )
        .bind(id.to_string())
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(|s| s.id("id"))
        .collect::<Result<Vec<SnapshotId>, _>>()?;
        specs.push(VolumeSpec {
            id,
            generation: r.uint("generation")?,
            size_bytes: r.uint("size_gib")? << 30,
            source,
            iqn: r.text("iqn")?,
            chap_user: r.text("chap_user")?,
            chap_secret: r.text("chap_secret")?,
            allowed_initiators: r.opt_text("initiator")?.into_iter().collect(),
            snapshots,
        });
    }
    Ok(specs)
}

/// Folds an agent's report on one volume into its row; returns whether the
/// storage node needs a push.
pub async fn observe_volume(state: &AppState, host: HostId, o: &ObservedVolume) -> ApiResult<bool> {
    let row = sqlx::query(
        "SELECT v.status, v.generation, v.applied_generation, v.lun, \
                (SELECT COUNT(*) FROM attachments a WHERE a.volume_id = v.id) AS attached \
         FROM volumes v WHERE v.id = $1 AND v.host_id = $2 AND v.deleted_at IS NULL",
    )
    .bind(o.id.to_string())
    .bind(host.to_string())
    .fetch_optional(&state.db.pool)
    .await?;
    let Some(r) = row else { return Ok(true) };
    let current = r.text("status")?;
    if current == "deleting" {
        return Ok(true);
    }
    let status = lifecycle::volume_status(o, r.int("attached")? > 0);
    let o = &ObservedVolume {
        generation: o.generation.min(r.uint("generation")?),
        ..o.clone()
    };
    if current != status.as_str()
        || r.uint("applied_generation")? != o.generation
        || r.uint("lun")? != u64::from(o.lun)
    {
        let mut tx = state.db.begin_write().await?;
        sqlx::query("UPDATE volumes SET status = $2, status_reason = $3, applied_generation = $4, lun = $5 WHERE id = $1 AND status <> 'deleting'")
            .bind(o.id.to_string())
            .bind(status.as_str())
            .bind(o.reason.clone())
            .bind(o.generation as i64)
            .bind(i64::from(o.lun))
            .execute(&mut **tx)
            .await?;
        tx.commit().await?;
    }
    observe_snapshots(state, o).await?;
    Ok(o.generation < r.uint("generation")?)
}

/// Snapshots the node reports exist become available; snapshots being
/// deleted that it no longer reports are gone.
async fn observe_snapshots(state: &AppState, o: &ObservedVolume) -> ApiResult<()> {
    let rows =
        sqlx::query("SELECT id, status FROM snapshots WHERE volume_id = $1 AND deleted_at IS NULL")
            .bind(o.id.to_string())
            .fetch_all(&state.db.pool)
            .await?;
    let mut became_available = Vec::new();
    let mut gone = Vec::new();
    for r in &rows {
        let id: SnapshotId = r.id("id")?;
        let reported = o.snapshots.contains(&id);
        match r.text("status")?.as_str() {
            "creating" if reported => became_available.push(id),
            "deleting" if !reported => gone.push(id),
            _ => {}
        }
    }
    if became_available.is_empty() && gone.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let mut tx = state.db.begin_write().await?;
    for id in became_available {
        sqlx::query("UPDATE snapshots SET status = 'available' WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
    }
    for id in gone {
        sqlx::query("UPDATE snapshots SET deleted_at = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Finishes deleting an instance once its host confirmed (see
/// `Store::instance_finalize_delete`), then gives its capacity back to the
/// scheduler's view and wakes the storage nodes of its volumes.
pub async fn finalize_instance_delete(state: &AppState, id: InstanceId) -> ApiResult<()> {
    if let Some(done) = state.store.instance_finalize_delete(id).await? {
        if let Some(c) = done.value {
            state.scheduler.apply(c.reversed());
        }
        for h in done.hosts {
            state.reconciler.notify(h);
        }
    }
    Ok(())
}

/// Finishes deleting a volume once its storage node confirmed.
pub async fn finalize_volume_delete(state: &AppState, id: VolumeId) -> ApiResult<()> {
    let now = now_ms();
    let mut tx = state.db.begin_write().await?;
    let Some(r) = crate::store::mark_deleted(&mut tx, "volumes", &id.to_string(), now).await?
    else {
        return Ok(());
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
    let claim = r.opt_id::<HostId>("host_id")?.map(|host| Claim {
        host,
        vcpus: 0,
        ram_mib: 0,
        disk_gib: 0,
        storage_bytes: size_gib << 30,
        instances: 0,
        volumes: 1,
    });
    if let Some(c) = claim {
        crate::scheduler::Scheduler::release(&mut tx, c).await?;
    }
    sqlx::query("UPDATE usage_spans SET ended_at = $2 WHERE resource_id = $1 AND ended_at IS NULL")
        .bind(id.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE snapshots SET deleted_at = $2 WHERE volume_id = $1 AND deleted_at IS NULL")
        .bind(id.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    if let Some(c) = claim {
        state.scheduler.apply(c.reversed());
    }
    Ok(())
}
