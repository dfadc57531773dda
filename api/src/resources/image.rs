//! Images: the bootable disks instances start from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{ImageId, ProjectId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "qcow2" => Some(ImageFormat::Qcow2),
            "raw" => Some(ImageFormat::Raw),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Every project may boot it; only admins create public images.
    Public,
    /// Only the owning project sees it.
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageCreate {
    pub name: String,
    /// `http(s)://...` URL or an absolute path on the hypervisor hosts.
    pub source: String,
    pub format: ImageFormat,
    /// Lower-case hex SHA-256 of the image file; agents verify it.
    pub sha256: String,
    /// Smallest root disk the image fits on.
    #[serde(default = "default_min_disk")]
    pub min_disk_gib: u64,
    #[serde(default = "default_visibility")]
    pub visibility: Visibility,
}

fn default_min_disk() -> u64 {
    1
}

fn default_visibility() -> Visibility {
    Visibility::Private
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub id: ImageId,
    /// Absent for public images created by an operator outside any project.
    pub project_id: Option<ProjectId>,
    pub name: String,
    pub source: String,
    pub format: ImageFormat,
    pub sha256: String,
    pub min_disk_gib: u64,
    pub visibility: Visibility,
    pub created_at: DateTime<Utc>,
}
