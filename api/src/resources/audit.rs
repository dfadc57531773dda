//! The audit log: every mutating call, readable by admins.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ids::{AuditId, UserId};
use crate::resources::PageParams;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    pub id: AuditId,
    pub at: DateTime<Utc>,
    /// Absent when the caller could not be authenticated.
    pub user_id: Option<UserId>,
    pub user_name: Option<String>,
    pub method: String,
    pub path: String,
    /// HTTP status of the response.
    pub status: u16,
    /// `ok`, or the error code.
    pub result: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first (default 100, max 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_page_token` of the previous page; omit for the first page.
    pub page_token: Option<String>,
}

impl AuditQuery {
    pub fn page(&self) -> PageParams {
        PageParams {
            limit: self.limit,
            page_token: self.page_token.clone(),
        }
    }
}
