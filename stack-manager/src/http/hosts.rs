//! `/v1/racks`, `/v1/hosts`, `/v1/enrollment-tokens`: the operator's view
//! of the fleet. Admin only. Hosts are created by enrollment (see
//! `internal.rs`); here they are inspected, disabled or drained, and removed.

use api::ids::{HostId, RackId};
use api::resources::{
    AdminState, EnrollmentTokenCreate, EnrollmentTokenCreated, EvacuateRequest, Evacuation,
    EvacuationState, Event, Host, HostHealth, HostKind, HostUpdate, List, MoveReason, PageParams,
    Rack, RackCreate, RebalanceHost, RebalanceMove, RebalancePlan, RebalanceRequest,
    RebalanceStuck,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/racks", get(rack_list).post(rack_create))
        .route("/v1/racks/{id}", get(rack_show).delete(rack_delete))
        .route("/v1/hosts", get(host_list))
        .route("/v1/hosts/rebalance", post(host_rebalance))
        .route(
            "/v1/hosts/{id}",
            get(host_show).patch(host_update).delete(host_delete),
        )
        .route("/v1/hosts/{id}/evacuate", post(host_evacuate))
        .route("/v1/hosts/{id}/readmit", post(host_readmit))
        .route("/v1/hosts/{id}/events", get(host_events))
        .route("/v1/system/evacuation", get(evacuation_show))
        .route("/v1/system/evacuation/resume", post(evacuation_resume))
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
        host_rebalance,
        host_evacuate,
        host_readmit,
        host_events,
        evacuation_show,
        evacuation_resume,
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
        EnrollmentTokenCreated,
        EvacuateRequest,
        Evacuation,
        EvacuationState,
        Event,
        RebalanceRequest,
        RebalancePlan,
        RebalanceMove,
        RebalanceHost,
        RebalanceStuck,
        MoveReason
    ))
)]
pub struct Doc;

const MAX_TOKEN_TTL_SECS: u64 = 30 * 86_400;

#[utoipa::path(get, path = "/v1/racks", tag = "hosts", params(PageParams),
    responses((status = 200, body = List<Rack>), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody)))]
async fn rack_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> ApiResult<Json<List<Rack>>> {
    Ok(Json(state.store.rack_list(&caller, &page).await?))
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
    let rack = state
        .store
        .rack_create(&caller, body.name, body.location)
        .await?;
    Ok((StatusCode::CREATED, Json(rack)))
}

#[utoipa::path(get, path = "/v1/racks/{id}", tag = "hosts", params(("id" = RackId, Path)),
    responses((status = 200, body = Rack), (status = 404, body = api::ErrorBody)))]
async fn rack_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RackId>,
) -> ApiResult<Json<Rack>> {
    Ok(Json(
        state.store.rack_resolve(&caller, &id.to_string()).await?,
    ))
}

#[utoipa::path(delete, path = "/v1/racks/{id}", tag = "hosts", params(("id" = RackId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn rack_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<RackId>,
) -> ApiResult<StatusCode> {
    state.store.rack_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", params(PageParams),
    responses((status = 200, body = List<Host>), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody)))]
async fn host_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> ApiResult<Json<List<Host>>> {
    Ok(Json(
        state
            .store
            .host_list(&caller, &page, &|v| state.scheduler.current_health(v))
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = HostId, Path)),
    responses((status = 200, body = Host), (status = 404, body = api::ErrorBody)))]
async fn host_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<Json<Host>> {
    Ok(Json(
        state
            .store
            .host_get(&caller, id, &|v| state.scheduler.current_health(v))
            .await?,
    ))
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
    state
        .store
        .host_set_admin_state(&caller, id, body.admin_state)
        .await?;
    state.scheduler.set_admin_state(id, body.admin_state);
    if body.admin_state == AdminState::Draining {
        state.moves.notify();
    }
    Ok(Json(
        state
            .store
            .host_get(&caller, id, &|v| state.scheduler.current_health(v))
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/hosts/{id}", tag = "hosts", params(("id" = HostId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn host_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<StatusCode> {
    state.store.host_delete(&caller, id).await?;
    state.scheduler.remove(id);
    Ok(StatusCode::NO_CONTENT)
}

/// Plans the fewest moves that bring every enabled, up hypervisor's vCPU
/// and RAM allocation within `band` of the cloud-wide mean (and empty the
/// draining ones of their `allow` instances), honouring capacity and
/// anti-affinity; unless `dry_run`, hands them to the mover, which runs a
/// bounded number at a time in an order that is safe (`depends_on`).
#[utoipa::path(post, path = "/v1/hosts/rebalance", tag = "hosts", request_body = RebalanceRequest,
    responses((status = 200, body = RebalancePlan), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody)))]
async fn host_rebalance(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RebalanceRequest>,
) -> ApiResult<Json<RebalancePlan>> {
    caller.require_admin()?;
    let band = body.band.unwrap_or(state.config.moves.band);
    if !(band.is_finite() && band > 0.0 && band <= 1.0) {
        return Err(ApiError::invalid(format!(
            "band must be a share in (0, 1], got {band}"
        )));
    }
    let (mut plan, moves) = crate::moves::plan(&state, band).await?;
    if !body.dry_run && !moves.is_empty() {
        state.store.planned_moves_queue(&moves).await?;
        state.moves.notify();
        plan.queued = true;
    }
    Ok(Json(plan))
}

/// Fences a hypervisor (if it is not fenced yet) and re-creates its
/// instances elsewhere once fencing is confirmed, whatever the
/// mass-failure guard says: the operator decided. With `confirm_fenced`,
/// the operator's word that the host is off confirms fencing at once (a
/// host whose BMC or storage node died with it would otherwise wait
/// forever); only a silent host takes that word. For planned maintenance
/// of a healthy host, drain it instead (its instances are stopped and
/// moved one by one, never fenced).
#[utoipa::path(post, path = "/v1/hosts/{id}/evacuate", tag = "hosts", params(("id" = HostId, Path)),
    request_body = EvacuateRequest,
    responses((status = 202, body = Evacuation), (status = 404, body = api::ErrorBody),
              (status = 409, body = api::ErrorBody)))]
async fn host_evacuate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
    ApiJson(body): ApiJson<EvacuateRequest>,
) -> ApiResult<(StatusCode, Json<Evacuation>)> {
    let health = |v: &_| state.scheduler.current_health(v);
    let host = state.store.host_get(&caller, id, &health).await?;
    if host.kind != HostKind::Hypervisor {
        return Err(ApiError::conflict(format!(
            "host {} is a storage node: only hypervisors are evacuated",
            host.name
        )));
    }
    // A heartbeat within the detection deadline means it is running:
    // taking the operator's word then would run its VMs twice.
    let silent_before = crate::db::now_ms() - (state.config.hosts.down_after_secs as i64) * 1000;
    let heard_lately = |h: &Host| {
        h.last_heartbeat_at
            .is_some_and(|t| t.timestamp_millis() >= silent_before)
    };
    if body.confirm_fenced && heard_lately(&host) {
        return Err(ApiError::conflict(format!(
            "host {} heartbeated within the last {} s: it is running, so fencing cannot be \
             confirmed on an operator's word; power it off first, or evacuate without \
             confirm_fenced to fence it through its power driver and storage",
            host.name, state.config.hosts.down_after_secs
        )));
    }
    let message = format!("evacuation requested by {}", caller.user_name);
    crate::health::fence_begin(&state, id, &message, None).await?;
    if body.confirm_fenced {
        let message = format!(
            "fenced on the word of {}, who confirmed that the host is off; revocations its \
             storage nodes have not applied yet are applied when they return",
            caller.user_name
        );
        if state
            .store
            .host_fence_confirm(id, &message, silent_before)
            .await?
        {
            tracing::warn!(host = %id, "{message}");
            state.scheduler.set_health(id, HostHealth::Fenced);
        }
    }
    let host = state.store.host_get(&caller, id, &health).await?;
    if body.confirm_fenced && !matches!(host.health, HostHealth::Fenced) {
        // A heartbeat landed between the check above and the move.
        return Err(ApiError::conflict(format!(
            "host {} is {}, not fenced: it heartbeated meanwhile",
            host.name,
            host.health.as_str()
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Evacuation {
            host_id: id,
            health: host.health,
            instances: host.allocated.instances,
        }),
    ))
}

/// Takes a fenced host back once its instances moved: its storage targets
/// accept it again and it gets new work.
#[utoipa::path(post, path = "/v1/hosts/{id}/readmit", tag = "hosts", params(("id" = HostId, Path)),
    responses((status = 200, body = Host), (status = 404, body = api::ErrorBody),
              (status = 409, body = api::ErrorBody)))]
async fn host_readmit(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<Json<Host>> {
    state.store.host_readmit(&caller, id).await?;
    state.scheduler.set_health(id, HostHealth::Up);
    Ok(Json(
        state
            .store
            .host_get(&caller, id, &|v| state.scheduler.current_health(v))
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/hosts/{id}/events", tag = "hosts", params(("id" = HostId, Path)),
    responses((status = 200, body = List<Event>, description = "The host's events, oldest first (the newest 500)"),
              (status = 404, body = api::ErrorBody)))]
async fn host_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<Json<List<Event>>> {
    state
        .store
        .host_get(&caller, id, &|v| state.scheduler.current_health(v))
        .await?;
    Ok(Json(state.store.host_events(&caller, id).await?))
}

#[utoipa::path(get, path = "/v1/system/evacuation", tag = "hosts",
    responses((status = 200, body = EvacuationState), (status = 403, body = api::ErrorBody)))]
async fn evacuation_show(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<EvacuationState>> {
    caller.require_admin()?;
    Ok(Json(state.store.evacuation_state().await?))
}

/// Lifts the mass-failure guard: hosts lost before now no longer count.
#[utoipa::path(post, path = "/v1/system/evacuation/resume", tag = "hosts",
    responses((status = 200, body = EvacuationState), (status = 403, body = api::ErrorBody)))]
async fn evacuation_resume(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<EvacuationState>> {
    Ok(Json(state.store.evacuation_resume(&caller).await?))
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
    let created = state.store.enrollment_token_create(&caller, &body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}
