//! `/v1/flavors`: instance sizes. Everyone reads them; admins manage them.

use api::ids::FlavorId;
use api::resources::{Flavor, FlavorCreate, FlavorListQuery, List};
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
        .route("/v1/flavors", get(list).post(create))
        .route("/v1/flavors/{id}", get(show).delete(delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, delete),
    components(schemas(Flavor, FlavorCreate))
)]
pub struct Doc;

#[utoipa::path(get, path = "/v1/flavors", tag = "flavors", params(FlavorListQuery),
    responses((status = 200, body = List<Flavor>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<FlavorListQuery>,
) -> ApiResult<Json<List<Flavor>>> {
    Ok(Json(state.store.flavor_list(&caller, &q).await?))
}

#[utoipa::path(post, path = "/v1/flavors", tag = "flavors", request_body = FlavorCreate,
    responses((status = 201, body = Flavor), (status = 400, body = api::ErrorBody), (status = 403, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<FlavorCreate>,
) -> ApiResult<(StatusCode, Json<Flavor>)> {
    // Checked before the body, as the store checks again, so that a caller
    // who may not create flavors hears that first.
    caller.require_admin()?;
    validate::name("flavor", &body.name.replace('.', "-"))?;
    validate::range("vcpus", body.vcpus as u64, 1, 256)?;
    validate::range("ram_mib", body.ram_mib, 64, 4 * 1024 * 1024)?;
    validate::range("disk_gib", body.disk_gib, 1, 65_536)?;
    let flavor = state.store.flavor_create(&caller, body).await?;
    Ok((StatusCode::CREATED, Json(flavor)))
}

#[utoipa::path(get, path = "/v1/flavors/{id}", tag = "flavors",
    params(("id" = FlavorId, Path)), responses((status = 200, body = Flavor), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<FlavorId>,
) -> ApiResult<Json<Flavor>> {
    Ok(Json(state.store.flavor_get(&caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/flavors/{id}", tag = "flavors",
    params(("id" = FlavorId, Path)), responses((status = 204), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<FlavorId>,
) -> ApiResult<StatusCode> {
    state.store.flavor_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
