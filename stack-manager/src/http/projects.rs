//! `/v1/projects`: tenants, and who belongs to them. Admins create and
//! delete projects and manage members; members and readers see their own.

use api::resources::{List, MembershipSet, PageParams, Project, ProjectCreate, User};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
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

#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(PageParams),
    responses((status = 200, body = List<Project>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<List<Project>>> {
    Ok(Json(state.store.project_list(&caller, &q).await?))
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = ProjectCreate,
    responses((status = 201, body = Project), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ProjectCreate>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    // Before the body, as ever (the store checks again).
    caller.require_admin()?;
    validate::name("project", &body.name)?;
    if body.description.len() > 1024 {
        return Err(ApiError::invalid(
            "description is longer than 1024 characters",
        ));
    }
    let project = state
        .store
        .project_create(&caller, &body.name, &body.description)
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, body = Project), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> ApiResult<Json<Project>> {
    Ok(Json(state.store.project_get(&caller, &project).await?))
}

#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 204), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> ApiResult<StatusCode> {
    state.store.project_delete(&caller, &project).await?;
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
    Ok(Json(
        state
            .store
            .project_member_set(&caller, &project, &user, body.role)
            .await?,
    ))
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
    state
        .store
        .project_member_remove(&caller, &project, &user)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
