//! Who is calling and what they may do: the roles of a request's caller.
//! `admin` is global (operators); `member` and `reader` are per project. A
//! caller with no role in a project gets 404 for its resources, so
//! existence is never leaked; a reader who tries to change something gets
//! 403. Authentication (`crate::auth`) makes a `Caller`; the store checks
//! against one.

use api::ids::{ProjectId, UserId};
use api::resources::ProjectRole;

use crate::error::{ApiError, ApiResult};

/// Who is calling, resolved once per request by `auth::authenticate`.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: UserId,
    pub user_name: String,
    pub admin: bool,
    pub memberships: Vec<(ProjectId, ProjectRole)>,
    /// Names of the projects in `memberships`, so that `?project=<name>`
    /// needs no query for the caller's own projects.
    pub project_names: Vec<(String, ProjectId)>,
    /// When the token presented expires (ms), if it does.
    pub expires_at: Option<i64>,
}

impl Caller {
    pub fn role_in(&self, project: ProjectId) -> Option<ProjectRole> {
        self.memberships
            .iter()
            .find(|(p, _)| *p == project)
            .map(|(_, r)| *r)
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this action needs the admin role"))
        }
    }

    /// Reading a resource of `project`: admins and any role; others see 404.
    pub fn check_read(
        &self,
        project: ProjectId,
        kind: &str,
        id: impl std::fmt::Display,
    ) -> ApiResult<()> {
        if self.admin || self.role_in(project).is_some() {
            Ok(())
        } else {
            Err(ApiError::not_found(kind, id))
        }
    }

    /// Changing a resource of `project`: admins and members; readers get 403,
    /// strangers 404.
    pub fn check_write(
        &self,
        project: ProjectId,
        kind: &str,
        id: impl std::fmt::Display,
    ) -> ApiResult<()> {
        if self.admin {
            return Ok(());
        }
        match self.role_in(project) {
            Some(ProjectRole::Member) => Ok(()),
            Some(ProjectRole::Reader) => Err(ApiError::forbidden(format!(
                "the reader role cannot change {kind}s"
            ))),
            None => Err(ApiError::not_found(kind, id)),
        }
    }
}
