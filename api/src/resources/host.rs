//! Racks and hosts (hypervisors and storage nodes). Admin only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{EnrollmentTokenId, HostId, InstanceId, RackId};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RackCreate {
    pub name: String,
    #[serde(default)]
    pub location: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rack {
    pub id: RackId,
    pub name: String,
    pub location: String,
    pub host_count: u64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostKind {
    Hypervisor,
    Storage,
}

impl HostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::Hypervisor => "hypervisor",
            HostKind::Storage => "storage",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hypervisor" => Some(HostKind::Hypervisor),
            "storage" => Some(HostKind::Storage),
            _ => None,
        }
    }
}

/// What the operator wants from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes new work.
    Enabled,
    /// Keeps what it has, takes nothing new.
    Disabled,
    /// Takes nothing new; its instances are to be moved away.
    Draining,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Disabled => "disabled",
            AdminState::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(AdminState::Enabled),
            "disabled" => Some(AdminState::Disabled),
            "draining" => Some(AdminState::Draining),
            _ => None,
        }
    }
}

/// Liveness as the health monitor judges it.
///
/// Hypervisors: `up` ─(no heartbeat within `hosts.down_after_secs`)─►
/// `suspected` ─(still silent after `health.suspect_grace_secs`)─►
/// `fencing` (its volumes revoked on the storage targets, and powered off
/// where it has a power driver) ─(every step confirmed)─► `fenced`: its
/// instances are re-created elsewhere, and it runs nothing until an
/// operator re-admits it. A suspected host whose heartbeats return is `up`
/// again; once fencing has begun it always ends `fenced`.
/// Storage nodes are `up` or `down`, by heartbeat alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostHealth {
    Up,
    /// A storage node with no heartbeat within the configured timeout.
    Down,
    /// A hypervisor with no heartbeat within the deadline; nothing moves yet.
    Suspected,
    /// Being fenced; `health_reason` says which step is pending.
    Fencing,
    /// Fenced: its instances were (or are being) re-created elsewhere.
    Fenced,
}

impl HostHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            HostHealth::Up => "up",
            HostHealth::Down => "down",
            HostHealth::Suspected => "suspected",
            HostHealth::Fencing => "fencing",
            HostHealth::Fenced => "fenced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "up" => HostHealth::Up,
            "down" => HostHealth::Down,
            "suspected" => HostHealth::Suspected,
            "fencing" => HostHealth::Fencing,
            "fenced" => HostHealth::Fenced,
            _ => return None,
        })
    }
}

/// Capacity an agent reports. Hypervisors fill the compute fields, storage
/// nodes the byte fields; the rest are zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub storage_bytes_total: u64,
    pub storage_bytes_free: u64,
}

/// What the scheduler has claimed on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Allocated {
    pub vcpus: u64,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub storage_bytes: u64,
    pub instances: u64,
    pub volumes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Host {
    pub id: HostId,
    pub name: String,
    pub kind: HostKind,
    pub rack_id: Option<RackId>,
    /// Where the stack manager reaches the agent.
    pub agent_url: String,
    pub admin_state: AdminState,
    pub health: HostHealth,
    /// Why it is not `up`, or how it was fenced ("storage only: no power
    /// driver", "powered off through the provisioner").
    pub health_reason: Option<String>,
    pub health_since: Option<DateTime<Utc>>,
    /// The provisioner's machine behind it: fencing powers it off. `None`:
    /// fenced by its storage targets alone.
    pub machine_id: Option<String>,
    pub capacity: Capacity,
    pub allocated: Allocated,
    /// Live instances on it whose relocation policy is `never`: a drain
    /// leaves them where they are (the tenant moves or deletes them).
    pub pinned_instances: u64,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// `POST /v1/hosts/{id}/evacuate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvacuateRequest {
    /// The operator's word that the host is off (powered down or unplugged
    /// by hand): fencing counts as confirmed now, without waiting for its
    /// power driver or its storage nodes, so that a host whose BMC or
    /// storage node is gone too can still be evacuated. Refused while the
    /// host heartbeats. If the host is in fact alive, its VMs run twice:
    /// the event names who confirmed. Revocations not yet applied by a
    /// storage node are applied when it returns.
    #[serde(default)]
    pub confirm_fenced: bool,
}

/// `POST /v1/hosts/{id}/evacuate`: what was started.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Evacuation {
    pub host_id: HostId,
    pub health: HostHealth,
    /// Instances that will be re-created elsewhere once fencing is confirmed.
    pub instances: u64,
}

/// `GET /v1/system/evacuation`: whether automatic evacuation runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EvacuationState {
    /// Paused by the mass-failure guard: too many hypervisors were lost
    /// within the window, so an operator decides (`strato host evacuate`,
    /// or resume).
    pub paused: bool,
    pub since: Option<DateTime<Utc>>,
    pub reason: Option<String>,
}

/// One step in the life of a host or an instance: detection, fencing,
/// evacuation, crash restarts, moves. Newest last.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub at: DateTime<Utc>,
    /// `host` or `instance`.
    pub subject_kind: String,
    pub subject_id: String,
    /// A stable name: `host.suspected`, `host.fenced`, `instance.evacuated`, ...
    pub event: String,
    pub message: String,
}

/// `POST /v1/hosts/rebalance`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebalanceRequest {
    /// Only plan: nothing moves.
    #[serde(default)]
    pub dry_run: bool,
    /// Half-width of the band around the mean utilization, as a share
    /// (0.1 = ±10 percentage points). Default: `moves.band` of the
    /// configuration.
    #[serde(default)]
    pub band: Option<f64>,
}

/// Why a planned move is in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MoveReason {
    /// Off a draining host.
    Drain,
    /// Toward the band.
    Balance,
}

/// One move of a rebalancing plan.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RebalanceMove {
    pub instance_id: InstanceId,
    pub instance_name: String,
    pub from: HostId,
    pub to: HostId,
    pub reason: MoveReason,
    /// Indices into `moves` of the moves that must complete before this
    /// one starts.
    pub depends_on: Vec<usize>,
}

/// One hypervisor before and after a plan: allocated share of its
/// effective capacity (capacity × allocation ratio), per dimension.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RebalanceHost {
    pub host_id: HostId,
    pub name: String,
    pub before_vcpu_share: f64,
    pub before_ram_share: f64,
    pub after_vcpu_share: f64,
    pub after_ram_share: f64,
    /// Within the band after the plan; `None`: not counted (not enabled,
    /// not up, or no capacity).
    pub within_band_after: Option<bool>,
}

/// An instance the plan had to move and could not.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RebalanceStuck {
    pub instance_id: InstanceId,
    pub instance_name: String,
    /// `relocation_never` or `no_target`.
    pub reason: String,
}

/// `POST /v1/hosts/rebalance`: the plan, and whether it was queued.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RebalancePlan {
    pub moves: Vec<RebalanceMove>,
    pub hosts: Vec<RebalanceHost>,
    pub band: f64,
    pub mean_vcpu_share: f64,
    pub mean_ram_share: f64,
    /// No plan that ends within the band has fewer moves.
    pub lower_bound: u64,
    /// Every counted host ends within the band.
    pub within_band: bool,
    pub stuck: Vec<RebalanceStuck>,
    /// The moves were handed to the mover (false for a dry run).
    pub queued: bool,
    /// How long planning took, milliseconds.
    pub plan_ms: f64,
}

/// `PATCH /v1/hosts/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostUpdate {
    pub admin_state: AdminState,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentTokenCreate {
    pub kind: HostKind,
    /// Rack id or name the enrolled host belongs to.
    #[serde(default)]
    pub rack: Option<String>,
    /// Lifetime in seconds (default one day).
    #[serde(default = "default_enroll_ttl")]
    pub expires_in_secs: u64,
}

fn default_enroll_ttl() -> u64 {
    86_400
}

/// Returned once: `secret` is what the agent presents to `POST /internal/v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentTokenCreated {
    pub id: EnrollmentTokenId,
    pub kind: HostKind,
    pub rack_id: Option<RackId>,
    pub expires_at: DateTime<Utc>,
    pub secret: String,
}
