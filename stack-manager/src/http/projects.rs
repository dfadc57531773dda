//! `/v1/projects`: tenants, and who belongs to them. Admins create and
//! delete projects and manage members; members and readers see their own.

use api::ids::{ProjectId, UserId};
use api::resources::{List, MembershipSet, Project, ProjectCreate, QuotaLimits, User};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::Caller;
use crate::db::{now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::http::{users, validate};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/projects", get(list).post(create))
        .route("/v1/projects/{project}", get(show).delete(delete))
        .route(
            "/v1/projects/{project}/members/{user}",
            put(member_set).delete(member_remove),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, delete, member_set, member_remove),
    components(schemas(Project, ProjectCreate, MembershipSet))
)]
pub struct Doc;

fn from_row(r: &AnyRow) -> Result<Project, sqlx::Error> {
    Ok(Project {
        id: r.id("id")?,
        name: r.text("name")?,
        description: r.text("description")?,
        created_at: r.time("created_at")?,
    })
}

/// A project by id or name, as any caller may name it; 404 when absent.
pub async fn resolve(state: &AppState, id_or_name: &str) -> ApiResult<ProjectId> {
    state.store.project_resolve(id_or_name).await
}

pub async fn project_get(state: &AppState, id: ProjectId) -> ApiResult<Project> {
    let row = sqlx::query("SELECT * FROM projects WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("project", id))?;
    Ok(from_row(&row)?)
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects",
    responses((status = 200, body = List<Project>)))]
async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<Project>>> {
    let rows = sqlx::query("SELECT * FROM projects ORDER BY name")
        .fetch_all(&state.db.pool)
        .await?;
    let mut items = Vec::new();
    for r in &rows {
        let p = from_row(r)?;
        if caller.admin || caller.role_in(p.id).is_some() {
            items.push(p);
        }
    }
    Ok(Json(items.into()))
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProjectCreate>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    caller.require_admin()?;
    validate::name("project", &body.name)?;
    if body.description.len() > 1024 {
        return Err(ApiError::invalid(
            "description is longer than 1024 characters",
        ));
    }
    let project = project_insert(&state, &body.name, &body.description).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// Creates a project with the default quota, in one transaction.
pub async fn project_insert(state: &AppState, name: &str, description: &str) -> ApiResult<Project> {
    let id = ProjectId::new();
    let now = now_ms();
    let q = QuotaLimits::default();
    let mut tx = state.db.begin_write().await?;
    sqlx::query("INSERT INTO projects (id, name, description, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.to_string())
        .bind(name)
        .bind(description)
        .bind(now)
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!("a project named `{name}` already exists")),
            false => e.into(),
        })?;
    sqlx::query(
        "INSERT INTO quotas (project_id, max_instances, max_vcpus, max_ram_mib, max_volumes, max_volume_gib, max_addresses) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id.to_string())
    .bind(validate::to_i64(q.instances))
    .bind(validate::to_i64(q.vcpus))
    .bind(validate::to_i64(q.ram_mib))
    .bind(validate::to_i64(q.volumes))
    .bind(validate::to_i64(q.volume_gib))
    .bind(validate::to_i64(q.addresses))
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok(Project {
        id,
        name: name.to_string(),
        description: description.to_string(),
        created_at: crate::db::from_ms(now),
    })
}

#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, body = Project), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> ApiResult<Json<Project>> {
    let id = resolve(&state, &project).await?;
    caller.check_read(id, "project", &project)?;
    Ok(Json(project_get(&state, id).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 204), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> ApiResult<StatusCode> {
    let id = resolve(&state, &project).await?;
    caller.check_read(id, "project", &project)?;
    caller.require_admin()?;
    let mut tx = state.db.begin_write().await?;
    let live = super::live_instances_and_volumes(&mut tx, "project_id", &id.to_string()).await?;
    if live > 0 {
        return Err(ApiError::conflict(format!(
            "project `{project}` still has {live} instance(s) or volume(s); delete them first"
        )));
    }
    // Deleted instances/volumes/snapshots/usage are kept for metering until
    // the project goes; then they go with it.
    for sql in [
        "DELETE FROM attachments WHERE volume_id IN (SELECT id FROM volumes WHERE project_id = $1)",
        "DELETE FROM snapshots WHERE project_id = $1",
        "DELETE FROM volumes WHERE project_id = $1",
        "DELETE FROM addresses WHERE instance_id IN (SELECT id FROM instances WHERE project_id = $1)",
        "DELETE FROM instances WHERE project_id = $1",
        "DELETE FROM usage_spans WHERE project_id = $1",
        "DELETE FROM projects WHERE id = $1",
    ] {
        sqlx::query(sql).bind(id.to_string()).execute(&mut **tx).await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/v1/projects/{project}/members/{user}", tag = "projects",
    request_body = MembershipSet,
    params(("project" = String, Path, description = "Project id or name"),
           ("user" = String, Path, description = "User id or name")),
    responses((status = 200, body = User)))]
async fn member_set(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, user)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<MembershipSet>,
) -> ApiResult<Json<User>> {
    caller.require_admin()?;
    let pid = resolve(&state, &project).await?;
    let uid: UserId = users::resolve(&state, &user).await?;
    let mut tx = state.db.begin_write().await?;
    sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND project_id = $2")
        .bind(uid.to_string())
        .bind(pid.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO memberships (user_id, project_id, role) VALUES ($1, $2, $3)")
        .bind(uid.to_string())
        .bind(pid.to_string())
        .bind(body.role.as_str())
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    Ok(Json(users::user_get(&state, uid).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{project}/members/{user}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name"),
           ("user" = String, Path, description = "User id or name")),
    responses((status = 204)))]
async fn member_remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((project, user)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let pid = resolve(&state, &project).await?;
    let uid = users::resolve(&state, &user).await?;
    let mut tx = state.db.begin_write().await?;
    let done = sqlx::query("DELETE FROM memberships WHERE user_id = $1 AND project_id = $2")
        .bind(uid.to_string())
        .bind(pid.to_string())
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(
            "membership of user",
            format!("{user} in {project}"),
        ));
    }
    Ok(StatusCode::NO_CONTENT)
}
