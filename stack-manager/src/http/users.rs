//! `/v1/users`, `/v1/tokens`, `/v1/whoami`: people and their API tokens.

use api::ids::UserId;
use api::resources::{Membership, ProjectRole, User};
use axum::Router;

use crate::db::RowExt;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
}

#[derive(utoipa::OpenApi)]
#[openapi()]
pub struct Doc;

/// A user by id or name; 404 when absent.
pub async fn resolve(state: &AppState, id_or_name: &str) -> ApiResult<UserId> {
    let row = sqlx::query("SELECT id FROM users WHERE id = $1 OR name = $1")
        .bind(id_or_name)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id_or_name))?;
    Ok(row.id("id")?)
}

pub async fn user_get(state: &AppState, id: UserId) -> ApiResult<User> {
    let row = sqlx::query("SELECT * FROM users WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id))?;
    let memberships = sqlx::query(
        "SELECT m.project_id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id \
         WHERE m.user_id = $1 ORDER BY p.name",
    )
    .bind(id.to_string())
    .fetch_all(&state.db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok(Membership {
            project_id: r.id("project_id")?,
            project_name: r.text("name")?,
            role: r.parsed("role", ProjectRole::parse)?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(User {
        id,
        name: row.text("name")?,
        admin: row.int("admin")? != 0,
        memberships,
        created_at: row.time("created_at")?,
    })
}
