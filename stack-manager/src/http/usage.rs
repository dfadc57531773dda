//! `GET /v1/usage`: metering for billing, summed by `store::usage` from
//! spans of existence clipped to the requested window.

use api::resources::{FlavorHours, ProjectUsage, UsageQuery, UsageReport};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiQuery, ApiResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/usage", get(report))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(report),
    components(schemas(UsageReport, ProjectUsage, FlavorHours))
)]
pub struct Doc;

#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 404, body = api::ErrorBody)))]
async fn report(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    Ok(Json(state.store.usage_get(&caller, &q).await?))
}
