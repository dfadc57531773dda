//! The provisioner's API (`/v1/machines` on each rack controller): bare
//! machines, their lifecycle, power and inventory.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{HostId, MachineId};
use crate::resources::HostKind;

/// Where a machine is in its life, in the spirit of MAAS. In-progress
/// states (`commissioning`, `deploying`, `releasing`) have a timeout that
/// moves the machine to the matching `failed_*` state (`releasing` to
/// `broken`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Known (enlisted by an operator or discovered when it PXE-booted),
    /// hardware not yet inventoried.
    New,
    /// Booted into the ephemeral environment, reporting its hardware.
    Commissioning,
    FailedCommissioning,
    /// Inventoried, powered off, ready to deploy.
    Ready,
    /// Writing its image to disk.
    Deploying,
    FailedDeployment,
    /// Running its installed system from its own disk.
    Deployed,
    /// Being powered off and returned to the pool.
    Releasing,
    /// Taken out of service by an operator or a failed release.
    Broken,
    /// Booted into the ephemeral environment for an operator to repair.
    Rescue,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::New => "new",
            MachineState::Commissioning => "commissioning",
            MachineState::FailedCommissioning => "failed_commissioning",
            MachineState::Ready => "ready",
            MachineState::Deploying => "deploying",
            MachineState::FailedDeployment => "failed_deployment",
            MachineState::Deployed => "deployed",
            MachineState::Releasing => "releasing",
            MachineState::Broken => "broken",
            MachineState::Rescue => "rescue",
        }
    }

    /// Every state, in lifecycle order.
    pub const ALL: [MachineState; 10] = [
        MachineState::New,
        MachineState::Commissioning,
        MachineState::FailedCommissioning,
        MachineState::Ready,
        MachineState::Deploying,
        MachineState::FailedDeployment,
        MachineState::Deployed,
        MachineState::Releasing,
        MachineState::Broken,
        MachineState::Rescue,
    ];

    pub fn parse(s: &str) -> Option<MachineState> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// How the provisioner switches a machine on and off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "driver")]
pub enum PowerSpec {
    /// An operator (or a test) presses the button; the provisioner only asks.
    Manual,
    /// IPMI over LAN (`ipmitool -I lanplus`).
    Ipmi {
        /// Host name or address of the BMC.
        address: String,
        /// UDP port of the BMC; default 623, the standard RMCP port.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        user: String,
        password: String,
    },
    /// DMTF Redfish over HTTPS.
    Redfish {
        /// e.g. `https://10.0.0.5`
        url: String,
        /// e.g. `/redfish/v1/Systems/1`
        system: String,
        user: String,
        password: String,
        #[serde(default)]
        insecure_tls: bool,
    },
    /// A libvirt domain, for racks of VMs.
    Libvirt { uri: String, domain: String },
}

impl PowerSpec {
    pub fn driver(&self) -> PowerDriver {
        match self {
            PowerSpec::Manual => PowerDriver::Manual,
            PowerSpec::Ipmi { .. } => PowerDriver::Ipmi,
            PowerSpec::Redfish { .. } => PowerDriver::Redfish,
            PowerSpec::Libvirt { .. } => PowerDriver::Libvirt,
        }
    }

    /// What switches the machine, as an operator would name it in a
    /// message: `host:port` of a BMC, a Redfish system URL, a libvirt
    /// domain. Never the credentials.
    pub fn bmc(&self) -> String {
        match self {
            PowerSpec::Manual => "the operator".into(),
            PowerSpec::Ipmi { address, port, .. } => format!("{address}:{}", port.unwrap_or(623)),
            PowerSpec::Redfish { url, system, .. } => {
                format!("{}{system}", url.trim_end_matches('/'))
            }
            PowerSpec::Libvirt { uri, domain } => format!("{uri} domain {domain}"),
        }
    }
}

/// The kind of a [`PowerSpec`], without its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerDriver {
    Manual,
    Ipmi,
    Redfish,
    Libvirt,
}

impl PowerDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerDriver::Manual => "manual",
            PowerDriver::Ipmi => "ipmi",
            PowerDriver::Redfish => "redfish",
            PowerDriver::Libvirt => "libvirt",
        }
    }
}

impl std::fmt::Display for PowerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

/// `GET /v1/machines/{id}/power`: what the power driver reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachinePower {
    pub state: PowerState,
}

/// `POST /v1/machines/{id}/fence`: the machine was powered off and its
/// power driver then reported it off. Anything short of that is an error
/// (`bmc_unreachable`, `bmc_failed`; `conflict` for a machine without a
/// power driver), and the machine must then be taken as possibly running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MachineFenced {
    pub machine: MachineId,
    pub driver: PowerDriver,
    /// Always `off`: the state the driver reported after switching.
    pub state: PowerState,
    /// From the request to the driver's confirmation.
    pub elapsed_ms: u64,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    #[serde(default)]
    pub link: bool,
}

/// What commissioning found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Inventory {
    pub cpus: u32,
    #[serde(default)]
    pub cpu_model: String,
    pub ram_mib: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineCreate {
    pub name: String,
    /// The MAC it PXE-boots from (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    #[serde(default = "default_role")]
    pub role: HostKind,
    #[serde(default)]
    pub rack: Option<String>,
    #[serde(default = "default_power")]
    pub power: PowerSpec,
}

fn default_role() -> HostKind {
    HostKind::Hypervisor
}

fn default_power() -> PowerSpec {
    PowerSpec::Manual
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: MachineId,
    pub name: String,
    pub mac: String,
    pub role: HostKind,
    pub rack: Option<String>,
    pub state: MachineState,
    /// Why it is in a failed state, or what it is doing.
    pub state_reason: Option<String>,
    /// When the current in-progress state times out.
    pub deadline: Option<DateTime<Utc>>,
    /// The address its last DHCP lease gave it.
    pub address: Option<String>,
    /// Switch port from DHCP option 82 (`circuit-id/remote-id`), when relayed.
    pub switch_port: Option<String>,
    /// PXE client architecture from DHCP option 93.
    pub arch: Option<String>,
    pub power: PowerSpec,
    pub inventory: Option<Inventory>,
    /// The image being or last deployed.
    pub image: Option<String>,
    /// The stack manager host its agent enrolled as, once post-install
    /// finished.
    #[serde(default)]
    pub host_id: Option<HostId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A lifecycle request: `POST /v1/machines/{id}/actions`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "action", deny_unknown_fields)]
pub enum MachineAction {
    Commission,
    Deploy {
        /// Name of an image in the provisioner's image directory.
        image: String,
        /// What the machine becomes (and which agent post-install starts);
        /// default: the role it has.
        #[serde(default)]
        role: Option<HostKind>,
    },
    Release,
    MarkBroken {
        #[serde(default)]
        reason: String,
    },
    MarkFixed,
    Rescue,
    ExitRescue,
    PowerOn,
    PowerOff,
    PowerCycle,
}

/// One entry of a machine's history: every transition and power action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineEvent {
    pub at: DateTime<Utc>,
    pub from: Option<MachineState>,
    pub to: MachineState,
    pub message: String,
}
