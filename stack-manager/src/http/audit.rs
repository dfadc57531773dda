//! `GET /v1/audit`: the record of every mutating call, for operators. The
//! records are written by the authentication middleware (`crate::audit`).

use api::resources::{AuditQuery, AuditRecord, List, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(list))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list), components(schemas(AuditRecord)))]
pub struct Doc;

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = List<AuditRecord>), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<List<AuditRecord>>> {
    // The store checks both again; here they keep their order (a caller
    // who may not read the log hears that first) and the limit its message.
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    validate::range("limit", limit.into(), 1, PAGE_LIMIT_MAX.into())?;
    Ok(Json(state.store.audit_list(&caller, &q).await?))
}
