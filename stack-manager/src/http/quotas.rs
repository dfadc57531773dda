//! `/v1/projects/{project}/quota`: reading a project's quota, and an admin
//! setting its limits. The claims creates make live in `store::quotas`.

use api::resources::{Quota, QuotaLimits, QuotaUpdate, QuotaUsage};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiJson, ApiPath, ApiResult};
use crate::http::validate;
use crate::state::AppState;
use crate::store::quotas::FIELDS;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/projects/{project}/quota", get(show).put(update))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(show, update),
    components(schemas(Quota, QuotaLimits, QuotaUsage, QuotaUpdate))
)]
pub struct Doc;

#[utoipa::path(get, path = "/v1/projects/{project}/quota", tag = "quotas",
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, body = Quota), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
) -> ApiResult<Json<Quota>> {
    Ok(Json(state.store.quota_get(&caller, &project).await?))
}

/// A limit may be set below what the project already uses: nothing is taken
/// away, new claims of that kind simply fail until usage drops.
/// The largest value a quota limit may take (2^50: more than any cloud holds).
const MAX_LIMIT: u64 = 1 << 50;

#[utoipa::path(put, path = "/v1/projects/{project}/quota", tag = "quotas",
    request_body = QuotaUpdate,
    params(("project" = String, Path, description = "Project id or name")),
    responses((status = 200, body = Quota), (status = 403, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(project): ApiPath<String>,
    ApiJson(body): ApiJson<QuotaUpdate>,
) -> ApiResult<Json<Quota>> {
    // The caller, then the project, then the body, as ever (the store
    // checks the caller again).
    caller.require_admin()?;
    let id = state.store.project_resolve(&project).await?;
    let values = [
        body.instances,
        body.vcpus,
        body.ram_mib,
        body.volumes,
        body.volume_gib,
        body.addresses,
    ];
    // Limits are stored as signed 64-bit; anything near that is a typo.
    for (field, v) in FIELDS.iter().zip(values) {
        if let Some(v) = v {
            validate::range(field, v, 0, MAX_LIMIT)?;
        }
    }
    Ok(Json(
        state
            .store
            .quota_set_limits(&caller, id, values.map(|v| v.map(validate::to_i64)))
            .await?,
    ))
}
