//! `GET /v1/audit`: the record of every mutating call, for operators. The
//! records are written by the authentication middleware (`crate::audit`).

use api::resources::{AuditQuery, AuditRecord, List};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::Caller;
use crate::db::RowExt;
use crate::error::{ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit", get(list))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list), components(schemas(AuditRecord)))]
pub struct Doc;

fn from_row(r: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        id: r.id("id")?,
        at: r.time("at")?,
        user_id: r.opt_id("user_id")?,
        user_name: r.opt_text("user_name")?,
        method: r.text("method")?,
        path: r.text("path")?,
        status: u16::try_from(r.int("status")?).unwrap_or(0),
        result: r.text("result")?,
    })
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = List<AuditRecord>), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<List<AuditRecord>>> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    validate::range("limit", limit.into(), 1, MAX_LIMIT.into())?;
    let since = q.since.map(|t| t.timestamp_millis()).unwrap_or(i64::MIN);
    let rows =
        sqlx::query("SELECT * FROM audit_log WHERE at >= $1 ORDER BY at DESC, id DESC LIMIT $2")
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(&state.db.pool)
            .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}
