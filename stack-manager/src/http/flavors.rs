//! `/v1/flavors`: instance sizes. Everyone reads them; admins manage them.

use api::ids::FlavorId;
use api::resources::{Flavor, FlavorCreate, List};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::Caller;
use crate::db::{now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
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

fn from_row(r: &AnyRow) -> Result<Flavor, sqlx::Error> {
    Ok(Flavor {
        id: r.id("id")?,
        name: r.text("name")?,
        vcpus: r.uint("vcpus")? as u32,
        ram_mib: r.uint("ram_mib")?,
        disk_gib: r.uint("disk_gib")?,
        created_at: r.time("created_at")?,
    })
}

/// A flavor by id or name.
pub async fn resolve(state: &AppState, id_or_name: &str) -> ApiResult<Flavor> {
    let row = sqlx::query("SELECT * FROM flavors WHERE id = $1 OR name = $1")
        .bind(id_or_name)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("flavor", id_or_name))?;
    Ok(from_row(&row)?)
}

#[utoipa::path(get, path = "/v1/flavors", tag = "flavors", responses((status = 200, body = List<Flavor>)))]
async fn list(State(state): State<AppState>, _caller: Caller) -> ApiResult<Json<List<Flavor>>> {
    let rows = sqlx::query("SELECT * FROM flavors ORDER BY vcpus, ram_mib, name")
        .fetch_all(&state.db.pool)
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(post, path = "/v1/flavors", tag = "flavors", request_body = FlavorCreate,
    responses((status = 201, body = Flavor), (status = 400, body = api::ErrorBody), (status = 403, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<FlavorCreate>,
) -> ApiResult<(StatusCode, Json<Flavor>)> {
    caller.require_admin()?;
    validate::name("flavor", &body.name.replace('.', "-"))?;
    validate::range("vcpus", body.vcpus as u64, 1, 256)?;
    validate::range("ram_mib", body.ram_mib, 64, 4 * 1024 * 1024)?;
    validate::range("disk_gib", body.disk_gib, 1, 65_536)?;
    let flavor = Flavor {
        id: FlavorId::new(),
        name: body.name,
        vcpus: body.vcpus,
        ram_mib: body.ram_mib,
        disk_gib: body.disk_gib,
        created_at: crate::db::from_ms(now_ms()),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query("INSERT INTO flavors (id, name, vcpus, ram_mib, disk_gib, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(flavor.id.to_string())
        .bind(&flavor.name)
        .bind(flavor.vcpus as i64)
        .bind(flavor.ram_mib as i64)
        .bind(flavor.disk_gib as i64)
        .bind(flavor.created_at.timestamp_millis())
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!("a flavor named `{}` already exists", flavor.name)),
            false => e.into(),
        })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(flavor)))
}

#[utoipa::path(get, path = "/v1/flavors/{id}", tag = "flavors",
    params(("id" = FlavorId, Path)), responses((status = 200, body = Flavor), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<FlavorId>,
) -> ApiResult<Json<Flavor>> {
    Ok(Json(resolve(&state, &id.to_string()).await?))
}

#[utoipa::path(delete, path = "/v1/flavors/{id}", tag = "flavors",
    params(("id" = FlavorId, Path)), responses((status = 204), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<FlavorId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut tx = state.db.begin_write().await?;
    let used = sqlx::query(
        "SELECT COUNT(*) AS n FROM instances WHERE flavor_id = $1 AND deleted_at IS NULL",
    )
    .bind(id.to_string())
    .fetch_one(&mut **tx)
    .await?
    .int("n")?;
    if used > 0 {
        return Err(ApiError::conflict(format!(
            "flavor {id} is used by {used} instance(s)"
        )));
    }
    let done = sqlx::query("DELETE FROM flavors WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("flavor", id));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
