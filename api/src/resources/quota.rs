//! Per-project quotas and what the project uses against them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::ProjectId;

/// Limits. Every field is a hard cap; creating past it is a 409 `quota_exceeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    pub instances: u64,
    pub vcpus: u64,
    pub ram_mib: u64,
    pub volumes: u64,
    pub volume_gib: u64,
    pub addresses: u64,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            instances: 20,
            vcpus: 40,
            ram_mib: 81_920,
            volumes: 20,
            volume_gib: 2_000,
            addresses: 40,
        }
    }
}

/// `PUT /v1/projects/{id}/quota`: change any subset of the limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    pub instances: Option<u64>,
    pub vcpus: Option<u64>,
    pub ram_mib: Option<u64>,
    pub volumes: Option<u64>,
    pub volume_gib: Option<u64>,
    pub addresses: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    pub instances: u64,
    pub vcpus: u64,
    pub ram_mib: u64,
    pub volumes: u64,
    pub volume_gib: u64,
    pub addresses: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    pub project_id: ProjectId,
    pub limits: QuotaLimits,
    pub usage: QuotaUsage,
}
