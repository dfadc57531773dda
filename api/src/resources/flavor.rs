//! Flavors: the sizes instances come in. Admin-managed, visible to everyone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::FlavorId;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlavorCreate {
    pub name: String,
    /// 1–256.
    pub vcpus: u32,
    /// 64 MiB – 4 TiB.
    pub ram_mib: u64,
    /// 1–65536 GiB.
    pub disk_gib: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Flavor {
    pub id: FlavorId,
    pub name: String,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gib: u64,
    pub created_at: DateTime<Utc>,
}
