//! Usage metering: instance-hours by flavor and volume GiB-hours per project.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ids::{FlavorId, ProjectId};

#[derive(Debug, Clone, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start of the period (RFC 3339, inclusive).
    pub start: DateTime<Utc>,
    /// End of the period (RFC 3339, exclusive); defaults to now.
    pub end: Option<DateTime<Utc>>,
    /// Project id or name; absent means every project.
    pub project: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlavorHours {
    pub flavor_id: FlavorId,
    pub flavor_name: String,
    pub instance_hours: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectUsage {
    pub project_id: ProjectId,
    pub project_name: String,
    pub instances: Vec<FlavorHours>,
    pub volume_gib_hours: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub projects: Vec<ProjectUsage>,
}
