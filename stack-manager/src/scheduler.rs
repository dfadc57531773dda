//! Placement: which host gets a new instance or volume.
//!
//! The scheduler keeps every host's capacity and allocations in memory (like
//! Nova's host state cache), so filtering and weighing 20,000 hosts is a scan
//! of a vector, not a query. The memory view is only advice: the claim itself
//! is a conditional `UPDATE hosts ... WHERE alloc + request <= capacity *
//! ratio`, in the same transaction as the instance row, so the database never
//! overcommits even when the view is stale or several stack managers
//! schedule at once. A failed claim refreshes that host and tries the next
//! candidate.
//!
//! Filters: kind, admin state `enabled`, heartbeat fresh, vCPU/RAM/disk with
//! allocation ratios, anti-affinity (no two members of a group on one host),
//! rack spread `require`. Weights: `spread` (most free RAM and vCPU after
//! placement) or `pack` (least), minus a penalty per group member already in
//! the rack when rack spread is `prefer`.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Instant;

use crate::config::{HostsConfig, RackSpread, SchedulerConfig, Weigher};
use crate::db::{now_ms, Db, WriteTx};
use crate::error::{ApiError, ApiResult};
use crate::store::claims::{self, Placer, Ratios, VolumePlacer};
pub use crate::store::claims::{Claim, HostView, InstanceDemand};
use api::ids::{HostId, RackId};
use api::resources::{AdminState, Capacity, HostHealth, HostKind};

impl HostView {
    /// Health as readers should see it now: the monitor's state, except
    /// that an `up` host whose heartbeat is overdue reads `suspected` (a
    /// storage node: `down`) at once, before the monitor's next pass.
    pub fn health(&self, now_ms: i64, down_after_secs: u64) -> HostHealth {
        self.health_by(now_ms, down_after_secs, self.last_heartbeat_ms)
    }

    /// [`health`](Self::health) as if its last heartbeat were `heartbeat`.
    fn health_by(&self, now_ms: i64, down_after_secs: u64, heartbeat: Option<i64>) -> HostHealth {
        let fresh = matches!(heartbeat,
            Some(t) if now_ms - t <= (down_after_secs as i64) * 1000);
        match (self.kind, self.health) {
            (HostKind::Storage, _) if fresh => HostHealth::Up,
            (HostKind::Storage, _) => HostHealth::Down,
            (HostKind::Hypervisor, HostHealth::Up | HostHealth::Down) if fresh => HostHealth::Up,
            (HostKind::Hypervisor, HostHealth::Up | HostHealth::Down) => HostHealth::Suspected,
            (HostKind::Hypervisor, state) => state,
        }
    }
}

/// Hosts ranked for a request before its transaction, best first.
#[derive(Debug, Clone)]
pub struct Ranking {
    pub hosts: Vec<HostId>,
    took: std::time::Duration,
}

/// One enabled hypervisor as the per-request scan sees it: only what the
/// filters and weighers read, with capacities already multiplied by the
/// allocation ratios, packed densely so that a scan of 20,000 hosts streams
/// through a couple of MiB instead of chasing a hash map's buckets.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: HostId,
    /// The heartbeat it counts as alive by: its last one, plus the refresh
    /// period when that one reached another replica (see
    /// `Hosts::heard_here`). `i64::MIN` when it never sent one.
    last_heartbeat_ms: i64,
    cpu_cap: f64,
    ram_cap: f64,
    disk_cap: f64,
    alloc_vcpus: u64,
    alloc_ram_mib: u64,
    alloc_disk_gib: u64,
    rack: Option<RackId>,
}

/// Every host by id, plus the dense slots of the enabled hypervisors (the
/// only hosts an instance can go to). Every change goes through
/// [`Hosts::sync`], which keeps the two in step.
#[derive(Default)]
struct Hosts {
    views: HashMap<HostId, HostView>,
    slots: Vec<Slot>,
    slot_of: HashMap<HostId, usize>,
    /// The last heartbeat each host sent to this replica. A view whose
    /// heartbeat is that one is exact; one whose heartbeat reached another
    /// replica was read at a refresh and may be a refresh period old.
    heard_here: HashMap<HostId, i64>,
    /// The refresh period, ms: what a heartbeat heard elsewhere is allowed.
    slack_ms: i64,
}

impl Hosts {
    /// The heartbeat time `h` counts as alive by (see [`Slot`]).
    fn liveness_ms(&self, h: &HostView) -> Option<i64> {
        let t = h.last_heartbeat_ms?;
        Some(if self.heard_here.get(&h.id) == Some(&t) {
            t
        } else {
            t.saturating_add(self.slack_ms)
        })
    }

    /// Brings the slot of `id` in line with its view (adds, updates or
    /// removes it).
    fn sync(&mut self, id: HostId, cfg: &SchedulerConfig) {
        let slot = self.views.get(&id).and_then(|h| {
            // A suspected, fencing or fenced host takes nothing new, even
            // while its heartbeats come back.
            (h.kind == HostKind::Hypervisor
                && h.admin_state == AdminState::Enabled
                && h.health == HostHealth::Up)
                .then(|| Slot {
                    id,
                    last_heartbeat_ms: self.liveness_ms(h).unwrap_or(i64::MIN),
                    cpu_cap: h.capacity.vcpus as f64 * cfg.cpu_allocation_ratio,
                    ram_cap: h.capacity.ram_mib as f64 * cfg.ram_allocation_ratio,
                    disk_cap: h.capacity.disk_gib as f64 * cfg.disk_allocation_ratio,
                    alloc_vcpus: h.allocated.vcpus,
                    alloc_ram_mib: h.allocated.ram_mib,
                    alloc_disk_gib: h.allocated.disk_gib,
                    rack: h.rack,
                })
        });
        match (slot, self.slot_of.get(&id).copied()) {
            (Some(s), Some(i)) => self.slots[i] = s,
            (Some(s), None) => {
                self.slot_of.insert(id, self.slots.len());
                self.slots.push(s);
            }
            (None, Some(i)) => {
                self.slot_of.remove(&id);
                self.slots.swap_remove(i);
                if let Some(moved) = self.slots.get(i) {
                    self.slot_of.insert(moved.id, i);
                }
            }
            (None, None) => {}
        }
    }
}

pub struct Scheduler {
    hosts: RwLock<Hosts>,
    config: SchedulerConfig,
    hosts_config: HostsConfig,
    placement_seconds: prometheus::HistogramVec,
}

/// A ranking and the scheduler that claims from it: what
/// `Store::instance_create` asks for a host inside its transaction.
pub struct Placement<'a> {
    scheduler: &'a Scheduler,
    ranking: Ranking,
}

impl Placer for Placement<'_> {
    fn claim_instance(
        self,
        tx: &mut WriteTx,
        d: &InstanceDemand,
    ) -> impl std::future::Future<Output = ApiResult<Claim>> + Send {
        self.scheduler.claim_instance(tx, d, self.ranking)
    }
}

/// A claim on one given host only (a planned move's target): what
/// `Store::instance_move_start` asks for when the rebalancer chose it.
pub struct Pinned<'a> {
    scheduler: &'a Scheduler,
    host: HostId,
}

impl Placer for Pinned<'_> {
    async fn claim_instance(self, tx: &mut WriteTx, d: &InstanceDemand) -> ApiResult<Claim> {
        let host = self.host;
        if self.scheduler.still_allowed(host, d) {
            if let Some(claim) = self.scheduler.try_claim(tx, host, d).await? {
                return Ok(claim);
            }
        }
        Err(ApiError::new(
            api::ErrorCode::CapacityExhausted,
            format!(
                "host {host} cannot take {} vCPU / {} MiB RAM / {} GiB disk: it is full, not up, \
                 not enabled, or holds a member of the anti-affinity group",
                d.vcpus, d.ram_mib, d.disk_gib
            ),
        ))
    }
}

impl VolumePlacer for &Scheduler {
    fn claim_volume(
        self,
        tx: &mut WriteTx,
        bytes: u64,
        only_on: Option<HostId>,
        avoid: &[HostId],
    ) -> impl std::future::Future<Output = ApiResult<Claim>> + Send {
        Scheduler::claim_volume(self, tx, bytes, only_on, avoid)
    }
}

/// How many ranked candidates a placement tries before giving up.
const CANDIDATES: usize = 8;

impl Scheduler {
    pub async fn load(
        db: &Db,
        config: SchedulerConfig,
        hosts_config: HostsConfig,
        placement_seconds: prometheus::HistogramVec,
    ) -> Result<Self, sqlx::Error> {
        let slack_ms = RefreshTask::period(&hosts_config).as_millis() as i64;
        let s = Self {
            hosts: RwLock::new(Hosts {
                slack_ms,
                ..Hosts::default()
            }),
            config,
            hosts_config,
            placement_seconds,
        };
        s.refresh(db).await?;
        Ok(s)
    }

    /// Reloads every host from the database (start-up, and periodically so
    /// that several stack managers converge on each other's heartbeats).
    pub async fn refresh(&self, db: &Db) -> Result<(), sqlx::Error> {
        let views = claims::host_views(db).await?;
        let (heard_here, slack_ms) = {
            let old = self.hosts.read().unwrap_or_else(|e| e.into_inner());
            (old.heard_here.clone(), old.slack_ms)
        };
        let mut hosts = Hosts {
            views: HashMap::with_capacity(views.len()),
            slots: Vec::with_capacity(views.len()),
            slot_of: HashMap::with_capacity(views.len()),
            heard_here,
            slack_ms,
        };
        for h in views {
            let id = h.id;
            hosts.views.insert(id, h);
            hosts.sync(id, &self.config);
        }
        *self.hosts.write().unwrap_or_else(|e| e.into_inner()) = hosts;
        Ok(())
    }

    /// Runs `f` on the view of `id` (if known) and re-syncs its slot.
    fn update(&self, id: HostId, f: impl FnOnce(&mut HostView)) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.views.get_mut(&id) {
            f(h);
            hosts.sync(id, &self.config);
        }
    }

    fn observe(&self, kind: &str, result: &str, took: std::time::Duration) {
        self.placement_seconds
            .with_label_values(&[kind, result])
            .observe(took.as_secs_f64());
    }

    /// A host that enrolled through this replica: its enrollment counts as
    /// a heartbeat heard here.
    pub fn enrolled(&self, h: HostView) {
        let id = h.id;
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = h.last_heartbeat_ms {
            hosts.heard_here.insert(id, t);
        }
        hosts.views.insert(id, h);
        hosts.sync(id, &self.config);
    }

    pub fn upsert(&self, h: HostView) {
        let id = h.id;
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        hosts.views.insert(id, h);
        hosts.sync(id, &self.config);
    }

    pub fn remove(&self, id: HostId) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        hosts.views.remove(&id);
        hosts.heard_here.remove(&id);
        hosts.sync(id, &self.config);
    }

    pub fn heartbeat(&self, id: HostId, capacity: Capacity, at_ms: i64) {
        let mut hosts = self.hosts.write().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.views.get_mut(&id) {
            h.capacity = capacity;
            h.last_heartbeat_ms = Some(at_ms);
            hosts.heard_here.insert(id, at_ms);
            hosts.sync(id, &self.config);
        }
    }

    pub fn set_admin_state(&self, id: HostId, state: AdminState) {
        self.update(id, |h| h.admin_state = state);
    }

    /// The health monitor moved a host (see `crate::health`).
    pub fn set_health(&self, id: HostId, health: HostHealth) {
        self.update(id, |h| h.health = health);
    }

    pub fn get(&self, id: HostId) -> Option<HostView> {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .get(&id)
            .cloned()
    }

    /// A host's health as the API reports it, from `row` as read from the
    /// database in the same request: every heartbeat and every move of the
    /// health monitor is written there before anything else sees it, so
    /// the row is never older than this replica's view, and on a replica
    /// that neither receives the host's heartbeats nor runs the monitor it
    /// is newer by up to a refresh period.
    pub fn current_health(&self, row: &HostView) -> HostHealth {
        row.health(now_ms(), self.hosts_config.down_after_secs)
    }

    /// `h`'s health in this view. A replica that does not receive a
    /// host's heartbeats itself (another replica does) sees them only at
    /// its refreshes: such a heartbeat counts as a refresh period younger,
    /// or every host would look down to it just before each refresh.
    /// Detection itself reads the database (`crate::health`), not this view.
    pub fn health(&self, h: &HostView) -> HostHealth {
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        Self::health_in(&hosts, h, now_ms(), self.hosts_config.down_after_secs)
    }

    fn health_in(hosts: &Hosts, h: &HostView, now: i64, down_after_secs: u64) -> HostHealth {
        h.health_by(now, down_after_secs, hosts.liveness_ms(h))
    }

    /// Applies a committed claim (or its reversal) to the memory view.
    pub fn apply(&self, c: Claim) {
        let add = |v: &mut u64, d: i64| *v = (*v as i64 + d).max(0) as u64;
        self.update(c.host, |h| {
            add(&mut h.allocated.vcpus, c.vcpus);
            add(&mut h.allocated.ram_mib, c.ram_mib);
            add(&mut h.allocated.disk_gib, c.disk_gib);
            add(&mut h.allocated.storage_bytes, c.storage_bytes);
            add(&mut h.allocated.instances, c.instances);
            add(&mut h.allocated.volumes, c.volumes);
        });
    }

    fn any_of_kind(&self, kind: HostKind) -> bool {
        self.hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .values()
            .any(|h| h.kind == kind)
    }

    pub fn export_host_gauges(&self, gauge: &prometheus::IntGaugeVec) {
        let now = now_ms();
        let mut counts: HashMap<(HostKind, HostHealth), i64> = HashMap::new();
        let down_after = self.hosts_config.down_after_secs;
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        for h in hosts.views.values() {
            *counts
                .entry((h.kind, Self::health_in(&hosts, h, now, down_after)))
                .or_default() += 1;
        }
        drop(hosts);
        for kind in [HostKind::Hypervisor, HostKind::Storage] {
            for health in [
                HostHealth::Up,
                HostHealth::Down,
                HostHealth::Suspected,
                HostHealth::Fencing,
                HostHealth::Fenced,
            ] {
                let label = health.as_str();
                gauge
                    .with_label_values(&[kind.as_str(), label])
                    .set(counts.get(&(kind, health)).copied().unwrap_or(0));
            }
        }
    }

    /// Ranks hypervisors that pass every filter, best first, at most `CANDIDATES`.
    pub fn rank_hypervisors(&self, d: &InstanceDemand) -> Vec<HostId> {
        let now = now_ms();
        let cfg = &self.config;
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        let mut scored = BestOf::new();
        // This loop runs over every enabled hypervisor for every request: no
        // hashing or allocation per host unless the request needs it.
        let alive_since = now - (self.hosts_config.down_after_secs as i64) * 1000;
        let has_group = !d.group_hosts.is_empty();
        let (vcpus, ram_mib, disk_gib) = (d.vcpus, d.ram_mib, d.disk_gib);
        for h in &hosts.slots {
            if h.last_heartbeat_ms < alive_since || (has_group && d.group_hosts.contains(&h.id)) {
                continue;
            }
            let cpu_after = (h.alloc_vcpus + vcpus) as f64;
            let ram_after = (h.alloc_ram_mib + ram_mib) as f64;
            let disk_after = (h.alloc_disk_gib + disk_gib) as f64;
            if cpu_after > h.cpu_cap || ram_after > h.ram_cap || disk_after > h.disk_cap {
                continue;
            }
            let rack_members = match h.rack {
                Some(r) if has_group => d.group_racks.get(&r).copied().unwrap_or(0),
                _ => 0,
            };
            if cfg.rack_spread == RackSpread::Require && rack_members > 0 {
                continue;
            }
            // Free fraction after placement: RAM dominates, CPU breaks ties.
            let free = (1.0 - ram_after / h.ram_cap.max(1.0))
                + 0.25 * (1.0 - cpu_after / h.cpu_cap.max(1.0));
            let mut weight = match cfg.weigher {
                Weigher::Spread => free,
                Weigher::Pack => -free,
            };
            if cfg.rack_spread == RackSpread::Prefer {
                weight -= 10.0 * rack_members as f64;
            }
            scored.push(weight, h.id);
        }
        top(scored.into_vec())
    }

    /// Ranks storage nodes by free allocatable bytes.
    pub fn rank_storage(&self, bytes: u64) -> Vec<HostId> {
        let now = now_ms();
        let ratio = self.config.disk_allocation_ratio;
        let hosts = self.hosts.read().unwrap_or_else(|e| e.into_inner());
        let scored = hosts
            .views
            .values()
            .filter(|h| {
                h.kind == HostKind::Storage
                    && h.admin_state == AdminState::Enabled
                    && Self::health_in(&hosts, h, now, self.hosts_config.down_after_secs)
                        == HostHealth::Up
            })
            .filter_map(|h| {
                let cap = h.capacity.storage_bytes_total as f64 * ratio;
                let after = (h.allocated.storage_bytes + bytes) as f64;
                (after <= cap).then_some((cap - after, h.id))
            })
            .collect();
        top(scored)
    }

    /// Ranks hosts for an instance. Done before the write transaction
    /// begins, so the scan of every host never holds the SQLite write gate;
    /// [`Scheduler::claim_instance`] re-checks what may have changed since.
    pub fn rank_instance(&self, d: &InstanceDemand) -> Ranking {
        let started = Instant::now();
        let hosts = self.rank_hypervisors(d);
        Ranking {
            hosts,
            took: started.elapsed(),
        }
    }

    /// A claim on `host` only.
    pub fn pinned(&self, host: HostId) -> Pinned<'_> {
        Pinned {
            scheduler: self,
            host,
        }
    }

    /// The claim of one create, from a ranking made before its transaction.
    pub fn placement(&self, ranking: Ranking) -> Placement<'_> {
        Placement {
            scheduler: self,
            ranking,
        }
    }

    /// Claims the first ranked host that still fits `d` (whose group
    /// footprint was read inside `tx`, after the group lock) and that the
    /// database accepts. When every ranked host is gone, ranks once more.
    pub async fn claim_instance(
        &self,
        tx: &mut WriteTx,
        d: &InstanceDemand,
        ranking: Ranking,
    ) -> ApiResult<Claim> {
        let started = Instant::now();
        let result = self.claim_instance_inner(tx, d, ranking.hosts).await;
        let label = if result.is_ok() { "ok" } else { "no_host" };
        self.observe("instance", label, ranking.took + started.elapsed());
        result
    }

    async fn claim_instance_inner(
        &self,
        tx: &mut WriteTx,
        d: &InstanceDemand,
        ranked: Vec<HostId>,
    ) -> ApiResult<Claim> {
        let mut tried = HashSet::new();
        for round in 0..2 {
            let candidates = if round == 0 {
                ranked.clone()
            } else {
                self.rank_hypervisors(d)
            };
            for host in candidates {
                if !tried.insert(host) || !self.still_allowed(host, d) {
                    continue;
                }
                if let Some(claim) = self.try_claim(tx, host, d).await? {
                    return Ok(claim);
                }
            }
        }
        if !self.any_of_kind(HostKind::Hypervisor) {
            return Err(ApiError::new(
                api::ErrorCode::CapacityExhausted,
                "no hypervisor has enrolled yet: instances cannot be placed until a hypervisor agent enrolls",
            ));
        }
        Err(ApiError::new(
            api::ErrorCode::CapacityExhausted,
            format!(
                "no hypervisor can take {} vCPU / {} MiB RAM / {} GiB disk: all are full, down, disabled{}",
                d.vcpus,
                d.ram_mib,
                d.disk_gib,
                if d.group_hosts.is_empty() { "" } else { ", or already hold a member of the anti-affinity group" }
            ),
        ))
    }

    /// Anti-affinity against the footprint read inside the transaction.
    fn still_allowed(&self, host: HostId, d: &InstanceDemand) -> bool {
        if d.group_hosts.contains(&host) {
            return false;
        }
        if self.config.rack_spread == RackSpread::Require {
            let rack = self.get(host).and_then(|h| h.rack);
            if rack.is_some_and(|r| d.group_racks.get(&r).copied().unwrap_or(0) > 0) {
                return false;
            }
        }
        true
    }

    /// The conditional claim on one host; `None` when the database says it
    /// no longer fits (our view was stale: refresh that host).
    async fn try_claim(
        &self,
        tx: &mut WriteTx,
        host: HostId,
        d: &InstanceDemand,
    ) -> ApiResult<Option<Claim>> {
        let cfg = &self.config;
        let ratios = Ratios {
            cpu: cfg.cpu_allocation_ratio,
            ram: cfg.ram_allocation_ratio,
            disk: cfg.disk_allocation_ratio,
        };
        if let Some(claim) = claims::host_claim_instance(tx, host, d, ratios).await? {
            return Ok(Some(claim));
        }
        self.reload_host(tx, host).await?;
        Ok(None)
    }

    /// Places a volume on a storage node, in `tx`.
    /// `only_on` pins the volume to one node (a clone must live where its
    /// snapshot does).
    pub async fn claim_volume(
        &self,
        tx: &mut WriteTx,
        bytes: u64,
        only_on: Option<HostId>,
        avoid: &[HostId],
    ) -> ApiResult<Claim> {
        let started = Instant::now();
        let ratio = self.config.disk_allocation_ratio;
        let candidates = match only_on {
            Some(h) => {
                let healthy = self
                    .get(h)
                    .is_some_and(|v| self.health(&v) == HostHealth::Up);
                if healthy {
                    vec![h]
                } else {
                    Vec::new()
                }
            }
            None => {
                let avoided_racks: Vec<_> = avoid
                    .iter()
                    .filter_map(|h| self.get(*h).and_then(|v| v.rack))
                    .collect();
                let mut ranked: Vec<HostId> = self
                    .rank_storage(bytes)
                    .into_iter()
                    .filter(|h| !avoid.contains(h))
                    .collect();
                // A copy in another rack first: a rack's power or switch
                // failure must not take every copy.
                ranked.sort_by_key(|h| {
                    self.get(*h)
                        .and_then(|v| v.rack)
                        .is_some_and(|r| avoided_racks.contains(&r))
                });
                ranked
            }
        };
        if candidates.is_empty() && !avoid.is_empty() {
            self.observe("volume", "no_host", started.elapsed());
            return Err(ApiError::new(
                api::ErrorCode::CapacityExhausted,
                format!(
                    "no storage node besides the {} already chosen can hold another copy of {} GiB",
                    avoid.len(),
                    bytes >> 30
                ),
            ));
        }
        for host in candidates {
            if let Some(claim) = claims::host_claim_volume(tx, host, bytes, ratio).await? {
                self.observe("volume", "ok", started.elapsed());
                return Ok(claim);
            }
            self.reload_host(tx, host).await?;
        }
        self.observe("volume", "no_host", started.elapsed());
        Err(ApiError::new(
            api::ErrorCode::CapacityExhausted,
            format!(
                "no storage node can hold {} GiB: {}",
                bytes >> 30,
                if self.any_of_kind(HostKind::Storage) {
                    "all are full, down or disabled"
                } else {
                    "none has enrolled yet; volumes need a storage agent"
                }
            ),
        ))
    }

    async fn reload_host(&self, tx: &mut WriteTx, host: HostId) -> Result<(), sqlx::Error> {
        match claims::host_view(tx, host).await? {
            Some(h) => self.upsert(h),
            None => self.remove(host),
        }
        Ok(())
    }
}

/// Keeps the `TIE_POOL` best (weight, host) pairs seen so far without
/// holding on to every host.
struct BestOf {
    items: Vec<(f64, HostId)>,
    /// Weights below this cannot make the pool any more.
    floor: f64,
}

impl BestOf {
    fn new() -> Self {
        Self {
            items: Vec::with_capacity(TIE_POOL * 2),
            floor: f64::NEG_INFINITY,
        }
    }

    fn push(&mut self, weight: f64, host: HostId) {
        // Once the pool is full, a host no better than its worst cannot
        // change it. Skipping equal weights too matters: on an empty cloud
        // thousands of identical hosts tie, and letting each in would
        // re-select the pool every `TIE_POOL` hosts for nothing.
        if weight <= self.floor {
            return;
        }
        self.items.push((weight, host));
        if self.items.len() == TIE_POOL * 2 {
            self.items
                .select_nth_unstable_by(TIE_POOL - 1, |a, b| b.0.total_cmp(&a.0));
            self.items.truncate(TIE_POOL);
            self.floor = self.items.iter().map(|i| i.0).fold(f64::INFINITY, f64::min);
        }
    }

    fn into_vec(self) -> Vec<(f64, HostId)> {
        self.items
    }
}

/// Weights this close to the best count as a tie.
const TIE: f64 = 0.02;

/// How many of the best hosts ties are drawn from: wide enough that 32
/// concurrent requests on an empty cloud rarely pick the same host (on
/// PostgreSQL a shared pick queues on that host's row lock).
const TIE_POOL: usize = 256;

/// The best `CANDIDATES` by weight, best first, without sorting everything.
/// Near-ties are shuffled: concurrent requests would otherwise all pick the
/// same emptiest host and queue on its row lock (PostgreSQL) or fail their
/// claims one after another (several stack managers).
fn top(mut scored: Vec<(f64, HostId)>) -> Vec<HostId> {
    use rand::seq::SliceRandom;
    let by_weight_desc =
        |a: &(f64, HostId), b: &(f64, HostId)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if scored.len() > TIE_POOL {
        scored.select_nth_unstable_by(TIE_POOL - 1, by_weight_desc);
        scored.truncate(TIE_POOL);
    }
    scored.sort_by(by_weight_desc);
    if let Some(best) = scored.first().map(|s| s.0) {
        let ties = scored.iter().take_while(|s| s.0 >= best - TIE).count();
        scored[..ties].shuffle(&mut rand::thread_rng());
    }
    scored.truncate(CANDIDATES);
    scored.into_iter().map(|(_, id)| id).collect()
}

/// The periodic refresh as a background task: several stack managers
/// converge on each other's heartbeats and claims through it.
pub struct RefreshTask {
    pub scheduler: std::sync::Arc<Scheduler>,
    pub db: Db,
}

impl RefreshTask {
    /// Five heartbeats, or half the detection deadline if that is
    /// shorter: a host's view is never older than that (see
    /// `Scheduler::health`).
    pub fn period(hosts: &HostsConfig) -> std::time::Duration {
        let beats = hosts.heartbeat_interval_secs.max(1) * 5;
        std::time::Duration::from_secs(beats.min((hosts.down_after_secs / 2).max(1)))
    }
}

impl crate::tasks::BackgroundTask for RefreshTask {
    async fn activate(&mut self) -> Result<crate::tasks::Outcome, crate::tasks::TaskError> {
        self.scheduler.refresh(&self.db).await?;
        let hosts = self
            .scheduler
            .hosts
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .len();
        Ok(crate::tasks::Outcome::ran(
            serde_json::json!({ "hosts": hosts }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_winner_comes_first_and_ties_are_spread() {
        let a = HostId::new();
        let others: Vec<HostId> = (0..20).map(|_| HostId::new()).collect();
        let mut scored = vec![(0.9, a)];
        scored.extend(others.iter().map(|h| (0.5, *h)));
        for _ in 0..20 {
            let ranked = top(scored.clone());
            assert_eq!(ranked[0], a);
            assert_eq!(ranked.len(), CANDIDATES);
        }
        let tied: Vec<(f64, HostId)> = others.iter().map(|h| (0.5, *h)).collect();
        let firsts: HashSet<HostId> = (0..50).map(|_| top(tied.clone())[0]).collect();
        assert!(firsts.len() > 1, "ties are shuffled");
    }
}
