//! Host-capacity claims: the conditional writes that keep the database from
//! ever overcommitting a host, and the host rows the scheduler's memory
//! view is loaded from.
//!
//! The scheduler ranks hosts in memory; the claim itself is `UPDATE hosts
//! … WHERE alloc + request <= capacity * ratio`, in the transaction of the
//! row that needs the capacity, so a stale view or several stack managers
//! scheduling at once cost a retry, never an overcommit. A claim is
//! applied to the memory view only once its transaction committed.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use api::ids::{HostId, RackId};
use api::resources::{AdminState, Allocated, Capacity, HostHealth, HostKind};
use sqlx::any::AnyRow;

use crate::db::{Db, RowExt, WriteTx};
use crate::error::ApiResult;

/// A claim made in a transaction; apply it to the memory view once the
/// transaction commits (a rolled-back claim must leave no trace).
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    pub host: HostId,
    pub vcpus: i64,
    pub ram_mib: i64,
    pub disk_gib: i64,
    pub storage_bytes: i64,
    pub instances: i64,
    pub volumes: i64,
}

impl Claim {
    /// The claim that gives back what `self` took.
    pub fn reversed(self) -> Claim {
        Claim {
            host: self.host,
            vcpus: -self.vcpus,
            ram_mib: -self.ram_mib,
            disk_gib: -self.disk_gib,
            storage_bytes: -self.storage_bytes,
            instances: -self.instances,
            volumes: -self.volumes,
        }
    }

    /// What one instance of this size takes on `host`.
    pub fn instance(host: HostId, d: &InstanceDemand) -> Claim {
        Claim {
            host,
            vcpus: d.vcpus as i64,
            ram_mib: d.ram_mib as i64,
            disk_gib: d.disk_gib as i64,
            storage_bytes: 0,
            instances: 1,
            volumes: 0,
        }
    }

    /// What one volume of `bytes` takes on storage node `host`.
    pub fn volume(host: HostId, bytes: i64) -> Claim {
        Claim {
            host,
            vcpus: 0,
            ram_mib: 0,
            disk_gib: 0,
            storage_bytes: bytes,
            instances: 0,
            volumes: 1,
        }
    }
}

/// What an instance needs, and where its anti-affinity group already is.
#[derive(Debug, Clone, Default)]
pub struct InstanceDemand {
    pub vcpus: u64,
    pub ram_mib: u64,
    pub disk_gib: u64,
    /// Hosts running other members of the instance's anti-affinity group.
    pub group_hosts: HashSet<HostId>,
    /// Members of the group per rack.
    pub group_racks: HashMap<RackId, u32>,
}

impl InstanceDemand {
    /// What an instance row (`vcpus`, `ram_mib`, `disk_gib`) needs, with no
    /// group footprint yet: it is read under the group's lock.
    pub fn of_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            vcpus: r.uint("vcpus")?,
            ram_mib: r.uint("ram_mib")?,
            disk_gib: r.uint("disk_gib")?,
            ..Default::default()
        })
    }
}

/// How much of a host's capacity may be allocated.
#[derive(Debug, Clone, Copy)]
pub struct Ratios {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
}

/// Chooses and claims the host of a new instance inside the create's
/// transaction (the scheduler implements it). The store asks for a claim
/// through this rather than calling the scheduler, so the store depends on
/// no placement policy.
pub trait Placer {
    fn claim_instance(
        self,
        tx: &mut WriteTx,
        d: &InstanceDemand,
    ) -> impl Future<Output = ApiResult<Claim>> + Send;
}

/// Chooses and claims the storage node of a new volume (or of one more
/// copy of it) inside the create's transaction; `only_on` pins it to one
/// node (a clone must live where its snapshot does); `avoid` are the nodes
/// already holding a copy, never chosen again, and whose racks are chosen
/// last.
pub trait VolumePlacer: Copy {
    fn claim_volume(
        self,
        tx: &mut WriteTx,
        bytes: u64,
        only_on: Option<HostId>,
        avoid: &[HostId],
    ) -> impl Future<Output = ApiResult<Claim>> + Send;
}

/// The scheduler's view of one host.
#[derive(Debug, Clone)]
pub struct HostView {
    pub id: HostId,
    pub kind: HostKind,
    pub rack: Option<RackId>,
    pub admin_state: AdminState,
    /// The health monitor's state (`hosts.health`); see `HostView::health`
    /// for what readers see.
    pub health: HostHealth,
    pub last_heartbeat_ms: Option<i64>,
    pub capacity: Capacity,
    pub allocated: Allocated,
}

impl HostView {
    pub fn from_row(r: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.id("id")?,
            kind: r.parsed("kind", HostKind::parse)?,
            rack: r.opt_id("rack_id")?,
            admin_state: r.parsed("admin_state", AdminState::parse)?,
            health: r.parsed("health", HostHealth::parse)?,
            last_heartbeat_ms: r.opt_int("last_heartbeat_at")?,
            capacity: Capacity {
                vcpus: r.uint("cap_vcpus")? as u32,
                ram_mib: r.uint("cap_ram_mib")?,
                disk_gib: r.uint("cap_disk_gib")?,
                storage_bytes_total: r.uint("cap_storage_total")?,
                storage_bytes_free: r.uint("cap_storage_free")?,
            },
            allocated: Allocated {
                vcpus: r.uint("alloc_vcpus")?,
                ram_mib: r.uint("alloc_ram_mib")?,
                disk_gib: r.uint("alloc_disk_gib")?,
                storage_bytes: r.uint("alloc_storage")?,
                instances: r.uint("alloc_instances")?,
                volumes: r.uint("alloc_volumes")?,
            },
        })
    }
}

/// The columns [`HostView::from_row`] reads: agent URLs, credentials and
/// names would triple what 20,000 rows cost to fetch and decode.
const HOST_VIEW_SELECT: &str =
    "SELECT id, kind, rack_id, admin_state, health, last_heartbeat_at, cap_vcpus, \
     cap_ram_mib, cap_disk_gib, cap_storage_total, cap_storage_free, alloc_vcpus, alloc_ram_mib, \
     alloc_disk_gib, alloc_storage, alloc_instances, alloc_volumes FROM hosts";

/// Every host, as the scheduler's view is loaded from.
pub async fn host_views(db: &Db) -> Result<Vec<HostView>, sqlx::Error> {
    sqlx::query(HOST_VIEW_SELECT)
        .fetch_all(&db.pool)
        .await?
        .iter()
        .map(HostView::from_row)
        .collect()
}

/// One host as it is inside `tx` (after a claim on it failed), or `None`
/// when it is gone.
pub async fn host_view(tx: &mut WriteTx, host: HostId) -> Result<Option<HostView>, sqlx::Error> {
    sqlx::query(&format!("{HOST_VIEW_SELECT} WHERE id = $1"))
        .bind(host.to_string())
        .fetch_optional(&mut ***tx)
        .await?
        .as_ref()
        .map(HostView::from_row)
        .transpose()
}

/// Claims an instance's capacity on hypervisor `host` if it still fits
/// and the host is enabled; `None` otherwise.
pub async fn host_claim_instance(
    tx: &mut WriteTx,
    host: HostId,
    d: &InstanceDemand,
    ratios: Ratios,
) -> Result<Option<Claim>, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE hosts SET alloc_vcpus = alloc_vcpus + $2, alloc_ram_mib = alloc_ram_mib + $3, \
         alloc_disk_gib = alloc_disk_gib + $4, alloc_instances = alloc_instances + 1 \
         WHERE id = $1 AND kind = 'hypervisor' AND admin_state = 'enabled' AND health = 'up' \
         AND alloc_vcpus + $2 <= cap_vcpus * $5 AND alloc_ram_mib + $3 <= cap_ram_mib * $6 \
         AND alloc_disk_gib + $4 <= cap_disk_gib * $7",
    )
    .bind(host.to_string())
    .bind(d.vcpus as i64)
    .bind(d.ram_mib as i64)
    .bind(d.disk_gib as i64)
    .bind(ratios.cpu)
    .bind(ratios.ram)
    .bind(ratios.disk)
    .execute(&mut ***tx)
    .await?;
    Ok((done.rows_affected() == 1).then(|| Claim::instance(host, d)))
}

/// Claims `bytes` of storage node `host` if they still fit; `None`
/// otherwise.
pub async fn host_claim_volume(
    tx: &mut WriteTx,
    host: HostId,
    bytes: u64,
    disk_ratio: f64,
) -> Result<Option<Claim>, sqlx::Error> {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "UPDATE hosts SET alloc_storage = alloc_storage + $2, alloc_volumes = alloc_volumes + 1 \
         WHERE id = $1 AND kind = 'storage' AND admin_state = 'enabled' \
         AND alloc_storage + $2 <= cap_storage_total * $3",
    )
    .bind(host.to_string())
    .bind(bytes)
    .bind(disk_ratio)
    .execute(&mut ***tx)
    .await?;
    Ok((done.rows_affected() == 1).then(|| Claim::volume(host, bytes)))
}

/// Gives back a claim in `tx` (its instance or volume was deleted).
pub async fn host_release(tx: &mut WriteTx, c: Claim) -> Result<(), sqlx::Error> {
    let r = c.reversed();
    sqlx::query(
        "UPDATE hosts SET alloc_vcpus = alloc_vcpus + $2, alloc_ram_mib = alloc_ram_mib + $3, \
         alloc_disk_gib = alloc_disk_gib + $4, alloc_storage = alloc_storage + $5, \
         alloc_instances = alloc_instances + $6, alloc_volumes = alloc_volumes + $7 WHERE id = $1",
    )
    .bind(c.host.to_string())
    .bind(r.vcpus)
    .bind(r.ram_mib)
    .bind(r.disk_gib)
    .bind(r.storage_bytes)
    .bind(r.instances)
    .bind(r.volumes)
    .execute(&mut ***tx)
    .await?;
    Ok(())
}
