//! Volumes (persistent iSCSI block devices), their attachments and snapshots.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{HostId, ImageId, InstanceId, ProjectId, SnapshotId, VolumeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeStatus {
    /// Placed on a storage node; the agent has not confirmed it yet.
    Creating,
    Available,
    InUse,
    Error,
    Deleting,
    Deleted,
}

impl VolumeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeStatus::Creating => "creating",
            VolumeStatus::Available => "available",
            VolumeStatus::InUse => "in_use",
            VolumeStatus::Error => "error",
            VolumeStatus::Deleting => "deleting",
            VolumeStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => VolumeStatus::Creating,
            "available" => VolumeStatus::Available,
            "in_use" => VolumeStatus::InUse,
            "error" => VolumeStatus::Error,
            "deleting" => VolumeStatus::Deleting,
            "deleted" => VolumeStatus::Deleted,
            _ => return None,
        })
    }
}

/// What a new volume's blocks start as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum VolumeSource {
    Empty,
    /// Image id or name.
    Image(String),
    /// Snapshot id.
    Snapshot(SnapshotId),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreate {
    pub name: String,
    /// 1–65536 GiB.
    pub size_gib: u64,
    #[serde(default = "default_source")]
    pub source: VolumeSource,
    /// Copies on distinct storage nodes (distinct racks where known), 1–3.
    /// A write is acknowledged once every in-sync copy holds it; when the
    /// primary's node fails, an in-sync copy takes over. Default 1.
    #[serde(default)]
    pub replicas: Option<u32>,
}

fn default_source() -> VolumeSource {
    VolumeSource::Empty
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: VolumeId,
    pub project_id: ProjectId,
    pub name: String,
    pub size_gib: u64,
    pub source_image_id: Option<ImageId>,
    pub source_snapshot_id: Option<SnapshotId>,
    /// The storage node serving it.
    pub host_id: Option<HostId>,
    pub status: VolumeStatus,
    pub status_reason: Option<String>,
    /// `iqn.2026-11.io.strato:vol-<id>`.
    pub iqn: String,
    pub attachment: Option<Attachment>,
    pub created_at: DateTime<Utc>,
    /// How many copies the volume keeps.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Its copies other than the primary (`host_id`), for a replicated volume.
    #[serde(default)]
    pub copies: Vec<VolumeCopy>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeCopy {
    pub host_id: HostId,
    pub state: CopyState,
    /// Bytes the primary still has to resend it, as last reported: the
    /// resync's progress.
    #[serde(default)]
    pub behind_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// Holds every acknowledged write; may be promoted.
    InSync,
    /// Missed writes (its node was away); being brought back by resync.
    OutOfSync,
}

impl CopyState {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyState::InSync => "in_sync",
            CopyState::OutOfSync => "out_of_sync",
        }
    }

    pub fn parse(s: &str) -> Option<CopyState> {
        match s {
            "in_sync" => Some(CopyState::InSync),
            "out_of_sync" => Some(CopyState::OutOfSync),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentCreate {
    /// Volume id or name.
    pub volume: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    pub volume_id: VolumeId,
    pub instance_id: InstanceId,
    /// Order of the disk on the instance after the root disk: 0 is the first volume.
    pub device_index: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    Creating,
    Available,
    Error,
    Deleting,
}

impl SnapshotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::Creating => "creating",
            SnapshotStatus::Available => "available",
            SnapshotStatus::Error => "error",
            SnapshotStatus::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => SnapshotStatus::Creating,
            "available" => SnapshotStatus::Available,
            "error" => SnapshotStatus::Error,
            "deleting" => SnapshotStatus::Deleting,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub project_id: ProjectId,
    pub volume_id: VolumeId,
    pub name: String,
    pub size_gib: u64,
    pub status: SnapshotStatus,
    pub created_at: DateTime<Utc>,
}
