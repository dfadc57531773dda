//! `/v1/anti-affinity-groups`: sets of instances the scheduler never puts on
//! the same host. Membership is a property of the instance (chosen when it is
//! created); a group lists its live members and cannot go while it has any.

use api::ids::GroupId;
use api::resources::{Group, GroupCreate, List, ProjectPage, ProjectScope};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/anti-affinity-groups", get(list).post(create))
        .route("/v1/anti-affinity-groups/{id}", get(show).delete(delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, delete),
    components(schemas(Group, GroupCreate))
)]
pub struct Doc;

#[utoipa::path(get, path = "/v1/anti-affinity-groups", tag = "anti-affinity-groups", params(ProjectPage),
    responses((status = 200, body = List<Group>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Group>>> {
    Ok(Json(state.store.group_list(&caller, &q).await?))
}

#[utoipa::path(post, path = "/v1/anti-affinity-groups", tag = "anti-affinity-groups",
    request_body = GroupCreate, params(ProjectScope),
    responses((status = 201, body = Group), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<GroupCreate>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let project = state
        .store
        .project_for_write(&caller, scope.project.as_deref(), "anti-affinity group")
        .await?;
    validate::name("anti-affinity group", &body.name)?;
    let group = state
        .store
        .group_create(&caller, project, body.name)
        .await?;
    Ok((StatusCode::CREATED, Json(group)))
}

#[utoipa::path(get, path = "/v1/anti-affinity-groups/{id}", tag = "anti-affinity-groups",
    params(("id" = GroupId, Path)),
    responses((status = 200, body = Group), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<GroupId>,
) -> ApiResult<Json<Group>> {
    Ok(Json(state.store.group_get(&caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/anti-affinity-groups/{id}", tag = "anti-affinity-groups",
    params(("id" = GroupId, Path)),
    responses((status = 204), (status = 403, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<GroupId>,
) -> ApiResult<StatusCode> {
    state.store.group_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
