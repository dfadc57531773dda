//! Instances (VMs).
//!
//! State machine. `desired` is what the tenant asked for; `status` is what
//! the stack manager and the hypervisor agent observed:
//!
//! ```text
//!   create ──► building ──(agent: running)──► running ◄──► stopped
//!                 │                              │  reboot: rebooting ─► running
//!                 └──(agent error)──► error      │
//!   delete (from any state) ──► deleting ──(agent: gone)──► deleted
//! ```
//!
//! Actions allowed by current desired state: `start` when desired is
//! `stopped`, `stop` and `reboot` when desired is `running`, `delete` always
//! (idempotent). Anything else is a 409 that names the state.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{
    FlavorId, GroupId, HostId, ImageId, InstanceId, KeypairId, NetworkId, ProjectId, SubnetId,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    Stopped,
    Deleted,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
            DesiredState::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(DesiredState::Running),
            "stopped" => Some(DesiredState::Stopped),
            "deleted" => Some(DesiredState::Deleted),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Placed on a host; the agent has not reported it yet.
    Building,
    Running,
    Stopped,
    Rebooting,
    /// The agent could not realize it; `status_reason` says why.
    Error,
    /// Delete requested; the agent has not confirmed yet.
    Deleting,
    Deleted,
    /// Its host is suspected or being fenced: what it last reported may no
    /// longer be true. `status_reason` names the host's state.
    Unknown,
    /// It died on a healthy host; a restart in place is scheduled
    /// (`status_reason` says when).
    Crashed,
    /// Waiting for a host: its host failed and no other can take it yet.
    /// Placed as soon as capacity appears.
    Pending,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Building => "building",
            InstanceStatus::Running => "running",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Rebooting => "rebooting",
            InstanceStatus::Error => "error",
            InstanceStatus::Deleting => "deleting",
            InstanceStatus::Deleted => "deleted",
            InstanceStatus::Unknown => "unknown",
            InstanceStatus::Crashed => "crashed",
            InstanceStatus::Pending => "pending",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "building" => InstanceStatus::Building,
            "running" => InstanceStatus::Running,
            "stopped" => InstanceStatus::Stopped,
            "rebooting" => InstanceStatus::Rebooting,
            "error" => InstanceStatus::Error,
            "deleting" => InstanceStatus::Deleting,
            "deleted" => InstanceStatus::Deleted,
            "unknown" => InstanceStatus::Unknown,
            "crashed" => InstanceStatus::Crashed,
            "pending" => InstanceStatus::Pending,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// 1–63 characters of `[a-z0-9-]`; also the guest hostname.
    pub name: String,
    /// Flavor id or name.
    pub flavor: String,
    /// Image id or name.
    pub image: String,
    /// Network ids or names, one NIC each, in order. At least one.
    pub networks: Vec<String>,
    /// Keypair id or name.
    #[serde(default)]
    pub keypair: Option<String>,
    /// Passed to the guest's cloud-init untouched. At most 64 KiB.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Anti-affinity group id or name.
    #[serde(default)]
    pub anti_affinity_group: Option<String>,
    /// Start it (default) or only create it.
    #[serde(default = "default_true")]
    pub start: bool,
    /// Whether drains and rebalancing may move it (default `allow`).
    #[serde(default)]
    pub relocation: Relocation,
}

/// Whether planned moves (drains, rebalancing) may move an instance. A
/// move stops it on its host and starts it on another (same id, MACs,
/// addresses and volumes), so a VM that must never be restarted by the
/// operator's maintenance says `never`; a failed host's instances are
/// re-created elsewhere regardless.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Relocation {
    #[default]
    Allow,
    Never,
}

impl Relocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Relocation::Allow => "allow",
            Relocation::Never => "never",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(Relocation::Allow),
            "never" => Some(Relocation::Never),
            _ => None,
        }
    }
}

/// `PATCH /v1/instances/{id}`: what a tenant may change in place.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    #[serde(default)]
    pub relocation: Option<Relocation>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    pub network_id: NetworkId,
    pub subnet_id: SubnetId,
    #[schema(value_type = String)]
    pub address: IpAddr,
    /// Derived from the instance id and NIC index.
    pub mac: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub project_id: ProjectId,
    pub name: String,
    pub flavor_id: FlavorId,
    pub image_id: ImageId,
    pub keypair_id: Option<KeypairId>,
    pub anti_affinity_group_id: Option<GroupId>,
    /// Where the scheduler placed it.
    pub host_id: Option<HostId>,
    pub desired: DesiredState,
    pub status: InstanceStatus,
    /// Why it is in `error`, or the last agent message.
    pub status_reason: Option<String>,
    pub nics: Vec<Nic>,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    /// Whether drains and rebalancing may move it.
    pub relocation: Relocation,
    /// The host it is being moved to, while a planned move is under way
    /// (it is stopped on `host_id` meanwhile).
    pub moving_to: Option<HostId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `GET /v1/instances/{id}/console`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleLog {
    pub instance_id: InstanceId,
    pub data: String,
}
