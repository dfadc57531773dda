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

/// One page of a list, in a stable order. When `next_page_token` is
/// present there may be more: ask again with `?page_token=<it>` (and the
/// same filters) for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Opaque; present when more items may follow this page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

impl<T> From<Vec<T>> for List<T> {
    fn from(items: Vec<T>) -> Self {
        Self {
            items,
            next_page_token: None,
        }
    }
}

/// Most items one page of a list holds, and how many it holds when the
/// request does not say.
pub const PAGE_LIMIT_MAX: u32 = 1000;
pub const PAGE_LIMIT_DEFAULT: u32 = 100;

/// Paging of a list that is not scoped to a project.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Most items in the page: 1 to 1000, 100 when omitted.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_page_token` of the previous page; omit for the first page.
    pub page_token: Option<String>,
}

/// The query of a project-scoped list: the project (see [`ProjectScope`])
/// and the page.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectPage {
    /// Project id or name.
    pub project: Option<String>,
    /// Most items in the page: 1 to 1000, 100 when omitted.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_page_token` of the previous page; omit for the first page.
    pub page_token: Option<String>,
}

impl ProjectPage {
    pub fn scope(&self) -> ProjectScope {
        ProjectScope {
            project: self.project.clone(),
        }
    }
    pub fn page(&self) -> PageParams {
        PageParams {
            limit: self.limit,
            page_token: self.page_token.clone(),
        }
    }
}

/// Who owns a resource: used in every project-scoped resource view.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Owner {
    pub project_id: ProjectId,
}
