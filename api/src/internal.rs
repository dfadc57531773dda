//! The internal API between the stack manager and its agents.
//!
//! Agent → stack manager (the stack manager's internal listener):
//! - `POST /internal/v1/enroll` with a one-time enrollment token → a
//!   per-host credential;
//! - `POST /internal/v1/hosts/{id}/heartbeat` (Bearer credential) with
//!   capacity and everything the agent observes;
//! - `GET /internal/v1/hosts/{id}/desired` (Bearer credential): the whole
//!   desired state of the host, for an agent that restarts and adopts.
//!
//! Stack manager → agent (the agent's own listener, at `agent_url`; the
//! stack manager presents the same credential as Bearer): every call is an
//! idempotent PUT or DELETE by id, repeated until the observed state matches.
//! - hypervisor: `PUT|DELETE /agent/v1/instances/{id}`, `GET /agent/v1/instances`,
//!   `GET /agent/v1/instances/{id}/console` (text: the recent serial console log),
//!   `GET /agent/v1/instances/{id}/console/stream` (the live console: an endless
//!   chunked `application/octet-stream` body carrying the last ≤ 4 KiB of the
//!   log, then every new byte as the guest prints it; it ends when the
//!   instance is deleted, so callers must not put a total timeout on it);
//! - storage: `PUT|DELETE /agent/v1/volumes/{id}`,
//!   `PUT|DELETE /agent/v1/volumes/{id}/snapshots/{snapshot}`, `GET /agent/v1/volumes`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{HostId, ImageId, InstanceId, NetworkId, SnapshotId, VolumeId};
use crate::resources::host::{Capacity, HostKind};
use crate::resources::image::ImageFormat;

pub const ENROLL_PATH: &str = "/internal/v1/enroll";

pub fn heartbeat_path(host: HostId) -> String {
    format!("/internal/v1/hosts/{host}/heartbeat")
}

pub fn desired_path(host: HostId) -> String {
    format!("/internal/v1/hosts/{host}/desired")
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token's secret.
    pub token: String,
    /// Host name; unique among hosts.
    pub name: String,
    pub kind: HostKind,
    /// Base URL of the agent's own API, e.g. `http://10.0.0.5:7101`.
    pub agent_url: String,
    pub capacity: Capacity,
    /// Hypervisors: the iSCSI initiator IQN volumes must allow.
    #[serde(default)]
    pub initiator_iqn: Option<String>,
    /// The provisioner's machine this host was deployed on, when the
    /// provisioner wrote the agent's config: fencing powers it off.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// Storage nodes: the iSCSI portal initiators connect to, `address:port`.
    #[serde(default)]
    pub iscsi_portal: Option<String>,
    /// Storage nodes: where primaries of replicated volumes reach this
    /// node's copies, `address:port`.
    #[serde(default)]
    pub replication_address: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    pub host_id: HostId,
    /// Secret for every later call in both directions; store it, it is not shown again.
    pub credential: String,
    pub heartbeat_interval_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub capacity: Capacity,
    /// Every Strato instance the agent knows of.
    #[serde(default)]
    pub instances: Vec<ObservedInstance>,
    /// Every volume the agent serves.
    #[serde(default)]
    pub volumes: Vec<ObservedVolume>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// Seconds until the next heartbeat is expected.
    pub heartbeat_interval_secs: u64,
}

/// Whether the guest should be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageSpec {
    pub id: ImageId,
    pub source: String,
    pub format: ImageFormat,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NicSpec {
    pub network_id: NetworkId,
    pub mac: String,
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub prefix_len: u8,
    #[schema(value_type = String)]
    pub gateway: IpAddr,
    #[schema(value_type = Vec<String>)]
    pub dns_servers: Vec<IpAddr>,
    pub vlan: Option<u16>,
    pub mtu: u16,
}

/// How a hypervisor reaches a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeAttachmentSpec {
    pub volume_id: VolumeId,
    pub device_index: u32,
    /// `address:port` of the storage node's iSCSI portal.
    pub portal: String,
    pub iqn: String,
    pub lun: u32,
    pub chap_user: String,
    pub chap_secret: String,
}

/// Desired state of one instance, complete: an agent needs nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceSpec {
    pub id: InstanceId,
    pub hostname: String,
    /// Bumped on every change of this spec; the agent reports the one it applied.
    pub generation: u64,
    pub power: PowerState,
    /// Bumped by each reboot request; the agent reboots when it sees a new value.
    pub reboot_count: u64,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub image: ImageSpec,
    pub nics: Vec<NicSpec>,
    pub ssh_authorized_keys: Vec<String>,
    pub user_data: Option<String>,
    pub volumes: Vec<VolumeAttachmentSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObservedInstanceState {
    Building,
    Running,
    Stopped,
    Error,
    /// The domain went down without the agent taking it down (QEMU killed
    /// or crashed, destroyed behind the agent's back, vanished from
    /// libvirt) while it was meant to run; `reason` says how, from
    /// libvirt's own reason where it gives one. The agent never restarts
    /// it on its own: a spec with a higher generation (or reboot count)
    /// and power `running` does.
    Crashed,
    /// The agent cannot tell: libvirt has not answered it for longer than
    /// its `stale_reading_secs`; `reason` says since when and what was
    /// seen last.
    Unknown,
}

impl ObservedInstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
            Self::Crashed => "crashed",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObservedInstance {
    pub id: InstanceId,
    pub state: ObservedInstanceState,
    /// The spec generation the agent last applied.
    pub generation: u64,
    pub reboot_count: u64,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum VolumeSourceSpec {
    Empty,
    Image {
        image: ImageSpec,
    },
    Snapshot {
        volume_id: VolumeId,
        snapshot_id: SnapshotId,
    },
}

/// Desired state of one volume on a storage node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeSpec {
    pub id: VolumeId,
    pub generation: u64,
    pub size_bytes: u64,
    pub source: VolumeSourceSpec,
    pub iqn: String,
    pub chap_user: String,
    pub chap_secret: String,
    /// Initiator IQNs allowed to log in: the attached host's, or none.
    pub allowed_initiators: Vec<String>,
    /// Snapshots that should exist.
    pub snapshots: Vec<SnapshotId>,
    /// This node's part in a replicated volume; none for a single copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSpec>,
}

/// One copy of a replicated volume, as the stack manager wants it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicationSpec {
    /// Raised whenever the primary or the set of copies changes. A replica
    /// refuses changes from any primary of an older epoch: that is how a
    /// deposed primary is fenced.
    pub epoch: u64,
    pub role: ReplicaRole,
    /// Shared by the volume's copies; the primary presents it to replicas.
    pub key: String,
    /// On the primary: the replicas it keeps equal to itself. Empty on a replica.
    pub peers: Vec<ReplicaPeer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaRole {
    /// Serves initiators and streams every change to its peers.
    Primary,
    /// Applies the primary's changes; serves no initiator.
    Replica,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaPeer {
    pub host: HostId,
    /// `address:port` of the peer's replication listener.
    pub address: String,
    pub state: PeerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// No write is acknowledged before this peer holds it; while it is
    /// unreachable, writes wait (for the stack manager to decide).
    InSync,
    /// Writes are acknowledged without it. The primary records the regions
    /// it misses and sends them when it is back (resync).
    OutOfSync,
}

/// What the primary observes of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObservedPeer {
    pub host: HostId,
    pub state: ObservedPeerState,
    /// Bytes of regions the peer still misses.
    pub behind_bytes: u64,
    /// Bytes sent to bring it back since this agent started.
    pub resynced_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObservedPeerState {
    /// Connected and holding every acknowledged change.
    InSync,
    /// Connected, catching up on the regions it missed.
    Resyncing,
    /// Not connected.
    Unreachable,
    /// It refused this primary: a newer epoch exists elsewhere.
    Fenced,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObservedReplication {
    pub epoch: u64,
    pub role: ReplicaRole,
    pub peers: Vec<ObservedPeer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ObservedVolumeState {
    Creating,
    Available,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ObservedVolume {
    pub id: VolumeId,
    pub state: ObservedVolumeState,
    pub generation: u64,
    pub size_bytes: u64,
    /// Snapshots that exist.
    pub snapshots: Vec<SnapshotId>,
    pub reason: Option<String>,
    /// LUN the volume is exported on within its target. Targets that keep
    /// LUN 0 for a controller device (tgt) export data on LUN 1.
    #[serde(default)]
    pub lun: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ObservedReplication>,
}

/// `GET /internal/v1/hosts/{id}/desired`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct DesiredHostState {
    pub instances: Vec<InstanceSpec>,
    pub volumes: Vec<VolumeSpec>,
}
