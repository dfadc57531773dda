use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ids::ProjectId;

/// Query parameter that selects the project a request acts in. It may be
/// omitted when the caller belongs to exactly one project; admins may omit it
/// on list endpoints to see every project.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectScope {
    /// Project id or name.
    pub project: Option<String>,
}

/// A list response. Lists are small per project; paging can be added
/// without breaking clients because items live under `items`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
}

impl<T> From<Vec<T>> for List<T> {
    fn from(items: Vec<T>) -> Self {
        Self { items }
    }
}

/// Who owns a resource: used in every project-scoped resource view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Owner {
    pub project_id: ProjectId,
}
