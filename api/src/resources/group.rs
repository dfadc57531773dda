//! Anti-affinity groups: members are never placed on the same host.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{GroupId, InstanceId, ProjectId};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupCreate {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub id: GroupId,
    pub project_id: ProjectId,
    pub name: String,
    pub members: Vec<InstanceId>,
    pub created_at: DateTime<Utc>,
}
