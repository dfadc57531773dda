//! Projects (tenants), users, memberships and API tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::ids::{ProjectId, TokenId, UserId};
use crate::resources::PageParams;

/// A role. `admin` is the operator role and is global; `member` and `reader`
/// are granted per project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProjectRole {
    /// May create, change and delete the project's resources.
    Member,
    /// May only read the project's resources.
    Reader,
}

impl ProjectRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectRole::Member => "member",
            ProjectRole::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(ProjectRole::Member),
            "reader" => Some(ProjectRole::Reader),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    /// Unique, 1–63 characters of `[a-z0-9-]`, starting with a letter.
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    /// Unique login name, same rules as project names.
    pub name: String,
    /// Operators are admins; everyone else gets roles per project.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub admin: bool,
    pub memberships: Vec<Membership>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    pub project_id: ProjectId,
    pub project_name: String,
    pub role: ProjectRole,
}

/// Body of `PUT /v1/projects/{id}/members/{user}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipSet {
    pub role: ProjectRole,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// What the token is for, shown in listings.
    #[serde(default)]
    pub description: String,
    /// Lifetime in seconds; absent means the token does not expire.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A token as listed: the secret is never shown again after creation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Token {
    pub id: TokenId,
    pub user_id: UserId,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Returned once, at creation: `secret` is what goes in `Authorization: Bearer`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: Token,
    pub secret: String,
}

/// `GET /v1/whoami`: the caller as the server sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub user: User,
}

/// `GET /v1/tokens?user=`: admins may list another user's tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenListQuery {
    /// User id or name (admins only); defaults to the caller.
    pub user: Option<String>,
    /// Most items in the page: 1 to 1000, 100 when omitted.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_page_token` of the previous page; omit for the first page.
    pub page_token: Option<String>,
}

impl TokenListQuery {
    pub fn page(&self) -> PageParams {
        PageParams {
            limit: self.limit,
            page_token: self.page_token.clone(),
        }
    }
}
