//! Flavors: the sizes instances come in. Admin-managed, visible to everyone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ids::FlavorId;
use crate::resources::PageParams;

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

/// `GET /v1/flavors`: one page of the flavors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FlavorListQuery {
    /// Accepted and ignored: flavors belong to no project, but clients
    /// that name their project on every call must still be able to list them.
    pub project: Option<String>,
    /// Most items in the page: 1 to 1000, 100 when omitted.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_page_token` of the previous page; omit for the first page.
    pub page_token: Option<String>,
}

impl FlavorListQuery {
    pub fn page(&self) -> PageParams {
        PageParams {
            limit: self.limit,
            page_token: self.page_token.clone(),
        }
    }
}
