//! `/v1/racks`, `/v1/hosts`, `/v1/enrollment-tokens`: the operator's view
//! of the fleet. Admin only. Hosts are created by enrollment (see
//! `internal.rs`); here they are inspected, disabled or drained, and removed.

use api::ids::{EnrollmentTokenId, HostId, RackId};
use api::resources::{
    AdminState, EnrollmentTokenCreate, EnrollmentTokenCreated, Host, HostHealth, HostUpdate, List,
    Rack, RackCreate,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::{hash_secret, new_secret, Caller};
use crate::db::{from_ms, now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::http::validate;
use crate::scheduler::HostView;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/racks", get(rack_list).post(rack_create))
        .route("/v1/racks/{id}", get(rack_show).delete(rack_delete))
        .route("/v1/hosts", get(host_list))
        .route(
            "/v1/hosts/{id}",
            get(host_show).patch(host_update).delete(host_delete),
        )
        .route("/v1/enrollment-tokens", post(enrollment_token_create))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        rack_list,
        rack_create,
        rack_show,
        rack_delete,
        host_list,
        host_show,
        host_update,
        host_delete,
        enrollment_token_create
    ),
    components(schemas(
        Rack,
        RackCreate,
        Host,
        HostUpdate,
        api::resources::HostKind,
        AdminState,
        HostHealth,
        api::resources::Capacity,
        api::resources::Allocated,
        EnrollmentTokenCreate,
        EnrollmentTokenCreated
    ))
)]
pub struct Doc;

const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;

/// Every host column except the credential and its hash, so that no query
/// here can leak them into a response by accident.
const HOST_COLUMNS: &str = "id, name, kind, rack_id, agent_url, admin_state, \
     cap_vcpus, cap_ram_mib, cap_disk_gib, cap_storage_total, cap_storage_free, \
     alloc_vcpus, alloc_ram_mib, alloc_disk_gib, alloc_storage, alloc_instances, alloc_volumes, \
     last_heartbeat_at, created_at";

const RACK_SELECT: &str = "SELECT r.*, \
     (SELECT COUNT(*) FROM hosts h WHERE h.rack_id = r.id) AS host_count FROM racks r";

fn rack_from_row(r: &AnyRow) -> Result<Rack, sqlx::Error> {
    Ok(Rack {
        id: r.id("id")?,
        name: r.text("name")?,
        location: r.text("location")?,
        host_count: r.uint("host_count")?,
        created_at: r.time("created_at")?,
    })
}

/// Health comes from the scheduler's memory view when it has the host
/// (heartbeats land there first), else from the row.
fn host_from_row(state: &AppState, r: &AnyRow) -> Result<Host, sqlx::Error> {
    let view = HostView::from_row(r)?;
    let health = match state.scheduler.get(view.id) {
        Some(v) => state.scheduler.health(&v),
        None => view.health(now_ms(), state.config.hosts.down_after_secs),
    };
    Ok(Host {
        id: view.id,
        name: r.text("name")?,
        kind: view.kind,
        rack_id: view.rack,
        agent_url: r.text("agent_url")?,
        admin_state: view.admin_state,
        health,
        capacity: view.capacity,
        allocated: view.allocated,
        last_heartbeat_at: r.opt_time("last_heartbeat_at")?,
        created_at: r.time("created_at")?,
    })
}

/// A rack by id or name; 404 otherwise.
pub async fn rack_resolve(state: &AppState, id_or_name: &str) -> ApiResult<Rack> {
    let row = sqlx::query(&format!("{RACK_SELECT} WHERE r.id = $1 OR r.name = $1"))
        .bind(id_or_name)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("rack", id_or_name))?;
    Ok(rack_from_row(&row)?)
}

pub async fn host_get(state: &AppState, id: HostId) -> ApiResult<Host> {
    let row = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("host", id))?;
    Ok(host_from_row(state, &row)?)
}

#[utoipa::path(get, path = "/v1/racks", tag = "hosts",
    responses((status = 200, body = List<Rack>), (status = 403, body = api::ErrorBody)))]
async fn rack_list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<Rack>>> {
    caller.require_admin()?;
    let rows = sqlx::query(&format!("{RACK_SELECT} ORDER BY r.name"))
        .fetch_all(&state.db.pool)
        .await?;
    let items = rows
        .iter()
        .map(rack_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(post, path = "/v1/racks", tag = "hosts", request_body = RackCreate,
    responses((status = 201, body = Rack), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn rack_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RackCreate>,
) -> ApiResult<(StatusCode, Json<Rack>)> {
    caller.require_admin()?;
    validate::name("rack", &body.name)?;
    if body.location.len() > 256 {
        return Err(ApiError::invalid("location is longer than 256 characters"));
    }
    let rack = Rack {
        id: RackId::new(),
        name: body.name,
        location: body.location,
        host_count: 0,
        created_at: from_ms(now_ms()),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query("INSERT INTO racks (id, name, location, created_at) VALUES ($1, $2, $3, $4)")
        .bind(rack.id.to_string())
        .bind(&rack.name)
        .bind(&rack.location)
        .bind(rack.created_at.timestamp_millis())
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!("a rack named `{}` already exists", rack.name)),
            false => e.into(),
        })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(rack)))
}

#[utoipa::path(get, path = "/v1/racks/{id}", tag = "hosts", params(("id" = RackId, Path)),
    responses((status = 200, body = Rack), (status = 404, body = api::ErrorBody)))]
async fn rack_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RackId>,
) -> ApiResult<Json<Rack>> {
    caller.require_admin()?;
    Ok(Json(rack_resolve(&state, &id.to_string()).await?))
}

#[utoipa::path(delete, path = "/v1/racks/{id}", tag = "hosts", params(("id" = RackId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn rack_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RackId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut tx = state.db.begin_write().await?;
    let hosts = sqlx::query("SELECT COUNT(*) AS n FROM hosts WHERE rack_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut **tx)
        .await?
        .int("n")?;
    if hosts > 0 {
        return Err(ApiError::conflict(format!(
            "rack {id} still holds {hosts} host(s); delete them first"
        )));
    }
    // Unused enrollment tokens for the rack go with it (ON DELETE CASCADE).
    let done = sqlx::query("DELETE FROM racks WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("rack", id));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = List<Host>), (status = 403, body = api::ErrorBody)))]
async fn host_list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<Host>>> {
    caller.require_admin()?;
    let rows = sqlx::query(&format!("SELECT {HOST_COLUMNS} FROM hosts ORDER BY name"))
        .fetch_all(&state.db.pool)
        .await?;
    let items = rows
        .iter()
        .map(|r| host_from_row(&state, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = HostId, Path)),
    responses((status = 200, body = Host), (status = 404, body = api::ErrorBody)))]
async fn host_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<Json<Host>> {
    caller.require_admin()?;
    Ok(Json(host_get(&state, id).await?))
}

#[utoipa::path(patch, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = HostId, Path)),
    request_body = HostUpdate,
    responses((status = 200, body = Host), (status = 404, body = api::ErrorBody)))]
async fn host_update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
    ApiJson(body): ApiJson<HostUpdate>,
) -> ApiResult<Json<Host>> {
    caller.require_admin()?;
    let mut tx = state.db.begin_write().await?;
    let done = sqlx::query("UPDATE hosts SET admin_state = $2 WHERE id = $1")
        .bind(id.to_string())
        .bind(body.admin_state.as_str())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("host", id));
    }
    tx.commit().await?;
    state.scheduler.set_admin_state(id, body.admin_state);
    Ok(Json(host_get(&state, id).await?))
}

#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = HostId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn host_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let mut tx = state.db.begin_write().await?;
    let live = super::live_instances_and_volumes(&mut tx, "host_id", &id.to_string()).await?;
    if live > 0 {
        return Err(ApiError::conflict(format!(
            "host {id} still holds {live} instance(s) or volume(s); drain it or delete them first"
        )));
    }
    // Deleted instances and volumes are kept for metering and still name
    // their last host; they must not keep the host row alive.
    for sql in [
        "UPDATE instances SET host_id = NULL WHERE host_id = $1",
        "UPDATE volumes SET host_id = NULL WHERE host_id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
    }
    let done = sqlx::query("DELETE FROM hosts WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("host", id));
    }
    tx.commit().await?;
    state.scheduler.remove(id);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/enrollment-tokens", tag = "hosts",
    request_body = EnrollmentTokenCreate,
    responses((status = 201, body = EnrollmentTokenCreated), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 404, body = api::ErrorBody)))]
async fn enrollment_token_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<EnrollmentTokenCreate>,
) -> ApiResult<(StatusCode, Json<EnrollmentTokenCreated>)> {
    caller.require_admin()?;
    validate::range(
        "expires_in_secs",
        body.expires_in_secs,
        60,
        MAX_TOKEN_TTL_SECS,
    )?;
    let rack = match body.rack.as_deref() {
        Some(r) => Some(rack_resolve(&state, r).await?.id),
        None => None,
    };
    let now = now_ms();
    let expires_at = now + validate::to_i64(body.expires_in_secs) * 1000;
    let created = EnrollmentTokenCreated {
        id: EnrollmentTokenId::new(),
        kind: body.kind,
        rack_id: rack,
        expires_at: from_ms(expires_at),
        secret: new_secret("enroll"),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO enrollment_tokens (id, secret_hash, kind, rack_id, expires_at, used_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, NULL, $6)",
    )
    .bind(created.id.to_string())
    .bind(hash_secret(&created.secret))
    .bind(created.kind.as_str())
    .bind(rack.map(|r| r.to_string()))
    .bind(expires_at)
    .bind(now)
    .execute(&mut **tx)
    .await
    // The rack was deleted between the lookup and the insert.
    .map_err(|e| match crate::db::is_foreign_key_violation(&e) {
        true => ApiError::not_found("rack", body.rack.as_deref().unwrap_or_default()),
        false => e.into(),
    })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(created)))
}
