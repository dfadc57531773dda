//! `/v1/instances`: virtual machines, their lifecycle actions, console (a
//! snapshot, or live over a WebSocket) and volume attachments. See
//! `api::resources::instance` for the state machine.
//!
//! Create is one transaction: quota claim, anti-affinity group lock, host
//! claim, instance row, addresses, usage span. Either all of it happens or
//! none does; only after commit is the host's reconciler woken.

use api::ids::{HostId, InstanceId, VolumeId};
use api::resources::{
    Attachment, AttachmentCreate, ConsoleLog, DesiredState, Instance, InstanceCreate,
    InstanceStatus, InstanceUpdate, List, Nic, ProjectPage, ProjectScope, Relocation,
};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete as delete_route, get, post};
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::lifecycle::InstanceAction;
use crate::scheduler::InstanceDemand;
use crate::state::AppState;
use crate::store::instances::NewInstance;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/instances", get(list).post(create))
        .route("/v1/instances/{id}", get(show).patch(update).delete(delete))
        .route("/v1/instances/{id}/start", post(start))
        .route("/v1/instances/{id}/stop", post(stop))
        .route("/v1/instances/{id}/reboot", post(reboot))
        .route("/v1/instances/{id}/console", get(console))
        .route("/v1/instances/{id}/events", get(events))
        .route("/v1/instances/{id}/console/stream", get(console_stream))
        .route("/v1/instances/{id}/attachments", post(attach))
        .route(
            "/v1/instances/{id}/attachments/{volume}",
            delete_route(detach),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list,
        create,
        show,
        update,
        delete,
        start,
        stop,
        reboot,
        console,
        events,
        console_stream,
        attach,
        detach
    ),
    components(schemas(
        Instance,
        InstanceCreate,
        InstanceUpdate,
        Relocation,
        InstanceStatus,
        DesiredState,
        Nic,
        ConsoleLog,
        Attachment,
        AttachmentCreate
    ))
)]
pub struct Doc;

/// Most NICs one instance may have, and the largest user data.
const MAX_NICS: usize = 8;
const MAX_USER_DATA: usize = 64 * 1024;

#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(ProjectPage),
    responses((status = 200, body = List<Instance>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Instance>>> {
    Ok(Json(state.store.instance_list(&caller, &q).await?))
}

#[utoipa::path(get, path = "/v1/instances/{id}", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Instance), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<Json<Instance>> {
    Ok(Json(state.store.instance_get(&caller, id).await?))
}

#[utoipa::path(post, path = "/v1/instances", tag = "instances", params(ProjectScope), request_body = InstanceCreate,
    responses((status = 201, body = Instance), (status = 400, body = api::ErrorBody),
              (status = 409, description = "quota, capacity or addresses exhausted", body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<InstanceCreate>,
) -> ApiResult<(StatusCode, Json<Instance>)> {
    // Everything that can be checked without writing is checked first.
    validate::name("instance", &body.name)?;
    if body.networks.is_empty() || body.networks.len() > MAX_NICS {
        return Err(ApiError::invalid(format!("give 1 to {MAX_NICS} networks")));
    }
    if body
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > MAX_USER_DATA)
    {
        return Err(ApiError::invalid("user_data is larger than 64 KiB"));
    }
    let project = state
        .store
        .project_for_write(&caller, scope.project.as_deref(), "instance")
        .await?;
    let flavor = state.store.flavor_resolve(&body.flavor).await?;
    let image = state.store.image_resolve(project, &body.image).await?;
    if image.min_disk_gib > flavor.disk_gib {
        return Err(ApiError::invalid(format!(
            "image `{}` needs a {} GiB disk but flavor `{}` has {} GiB",
            image.name, image.min_disk_gib, flavor.name, flavor.disk_gib
        )));
    }
    let keypair = match &body.keypair {
        Some(k) => Some(state.store.keypair_resolve(project, k).await?),
        None => None,
    };
    let group = match &body.anti_affinity_group {
        Some(g) => Some(state.store.group_resolve(project, g).await?),
        None => None,
    };
    let mut nets = Vec::with_capacity(body.networks.len());
    for n in &body.networks {
        nets.push(state.store.network_resolve(&caller, project, n).await?);
    }

    let mut demand = InstanceDemand {
        vcpus: flavor.vcpus as u64,
        ram_mib: flavor.ram_mib,
        disk_gib: flavor.disk_gib,
        ..Default::default()
    };
    if let Some(g) = &group {
        (demand.group_hosts, demand.group_racks) = state.store.group_footprint(g.id).await?;
    }
    // Ranked before the write transaction, so the scan of every host never
    // holds the SQLite write gate; the claim re-checks what changed since.
    let ranking = state.scheduler.rank_instance(&demand);
    let new = NewInstance {
        project,
        name: body.name,
        flavor,
        image,
        keypair,
        group,
        networks: nets,
        user_data: body.user_data,
        start: body.start,
        relocation: body.relocation,
    };
    let (instance, claim) = state
        .store
        .instance_create(&caller, new, demand, state.scheduler.placement(ranking))
        .await?;
    state.scheduler.apply(claim);
    state.reconciler.notify(claim.host);
    Ok((StatusCode::CREATED, Json(instance)))
}

/// Changes what may change in place: today its relocation policy (whether
/// drains and rebalancing may move it). A move already under way finishes.
#[utoipa::path(patch, path = "/v1/instances/{id}", tag = "instances", params(("id" = InstanceId, Path)),
    request_body = InstanceUpdate,
    responses((status = 200, body = Instance), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 404, body = api::ErrorBody)))]
async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
    ApiJson(body): ApiJson<InstanceUpdate>,
) -> ApiResult<Json<Instance>> {
    if let Some(r) = body.relocation {
        state.store.instance_set_relocation(&caller, id, r).await?;
    } else {
        state.store.instance_get_for_write(&caller, id).await?;
    }
    Ok(Json(state.store.instance_get(&caller, id).await?))
}

/// A lifecycle action (`crate::lifecycle`), then the host's reconciler is woken.
async fn transition(
    state: &AppState,
    caller: &Caller,
    id: InstanceId,
    action: InstanceAction,
) -> ApiResult<Json<Instance>> {
    let changed = state.store.instance_act(caller, id, action).await?;
    wake(state, &changed.hosts);
    Ok(Json(changed.value))
}

fn wake(state: &AppState, hosts: &[HostId]) {
    for &h in hosts {
        state.reconciler.notify(h);
    }
}

#[utoipa::path(post, path = "/v1/instances/{id}/start", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Instance), (status = 409, body = api::ErrorBody)))]
async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<Json<Instance>> {
    transition(&state, &caller, id, InstanceAction::Start).await
}

#[utoipa::path(post, path = "/v1/instances/{id}/stop", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Instance), (status = 409, body = api::ErrorBody)))]
async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<Json<Instance>> {
    transition(&state, &caller, id, InstanceAction::Stop).await
}

#[utoipa::path(post, path = "/v1/instances/{id}/reboot", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = Instance), (status = 409, body = api::ErrorBody)))]
async fn reboot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<Json<Instance>> {
    transition(&state, &caller, id, InstanceAction::Reboot).await
}

#[utoipa::path(delete, path = "/v1/instances/{id}", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 202, description = "deletion started; the instance shows `deleting` until its host confirms"),
              (status = 404, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<StatusCode> {
    let instance = state.store.instance_request_delete(&caller, id).await?;
    match instance.host_id {
        Some(h) => state.reconciler.notify(h),
        None => crate::desired::finalize_instance_delete(&state, id).await?,
    }
    Ok(StatusCode::ACCEPTED)
}

/// What happened to it: crashes and restarts, its host's failure, where it
/// was re-created, moves. Oldest first (the newest 500).
#[utoipa::path(get, path = "/v1/instances/{id}/events", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = List<api::resources::Event>), (status = 404, body = api::ErrorBody)))]
async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<Json<List<api::resources::Event>>> {
    Ok(Json(state.store.instance_events(&caller, id).await?))
}

#[utoipa::path(get, path = "/v1/instances/{id}/console", tag = "instances", params(("id" = InstanceId, Path)),
    responses((status = 200, body = ConsoleLog), (status = 503, description = "the host's agent cannot be reached", body = api::ErrorBody)))]
async fn console(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
) -> ApiResult<Json<ConsoleLog>> {
    let (host, agent) = agent_of(&state, &caller, id).await?;
    let data = agent.instance_console(id).await.map_err(|e| {
        ApiError::new(
            api::ErrorCode::Unavailable,
            format!("cannot read the console from host {host}: {e}"),
        )
    })?;
    Ok(Json(ConsoleLog {
        instance_id: id,
        data,
    }))
}

/// The host an instance is placed on and a client for its agent; 409 when
/// it is on none.
async fn agent_of(
    state: &AppState,
    caller: &Caller,
    id: InstanceId,
) -> ApiResult<(HostId, api::AgentClient)> {
    let a = state
        .store
        .instance_agent(caller, id)
        .await?
        .ok_or_else(|| ApiError::conflict(format!("instance {id} is not on a host")))?;
    let agent = api::AgentClient::with_http(state.agent_http.clone(), &a.agent_url, &a.credential);
    Ok((a.host, agent))
}

#[utoipa::path(get, path = "/v1/instances/{id}/console/stream", tag = "instances", params(("id" = InstanceId, Path)),
    description = "The live serial console over a WebSocket (send `Authorization: Bearer` with the upgrade request). \
                   Each binary message carries console bytes as the guest prints them, starting with the last few KiB \
                   of the log; the client's messages are ignored. The server closes with code 1000 when the console \
                   ends (the instance was deleted) and with 1011 and a reason when the host's agent fails mid-stream.",
    responses((status = 101, description = "switching to the WebSocket protocol"),
              (status = 400, description = "not a WebSocket upgrade request", body = api::ErrorBody),
              (status = 404, body = api::ErrorBody),
              (status = 409, description = "the instance is not on a host", body = api::ErrorBody),
              (status = 503, description = "the host's agent cannot be reached", body = api::ErrorBody)))]
async fn console_stream(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // Who may read the instance is checked before anything else is said.
    let placed = state.store.instance_agent(&caller, id).await?;
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!(
            "this endpoint needs a WebSocket upgrade request: {}",
            e.body_text()
        ))
    })?;
    let a = placed.ok_or_else(|| ApiError::conflict(format!("instance {id} is not on a host")))?;
    let host = a.host;
    let agent = api::AgentClient::with_http(state.agent_http.clone(), &a.agent_url, &a.credential);
    // Opened before upgrading, so that an unreachable agent is an ordinary
    // JSON error rather than a socket that closes at once.
    let upstream = agent.instance_console_stream(id).await.map_err(|e| {
        ApiError::new(
            api::ErrorCode::Unavailable,
            format!("cannot open the console of host {host}: {e}"),
        )
    })?;
    Ok(ws.on_upgrade(move |socket| relay_console(socket, upstream, host)))
}

/// How often an idle console socket is pinged: keeps proxies from closing it
/// and lets a client that vanished show up as a failed send.
const CONSOLE_PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Copies the agent's console stream into the socket until either side ends.
/// Returning drops `upstream`, which closes the connection to the agent.
async fn relay_console(mut socket: WebSocket, mut upstream: reqwest::Response, host: HostId) {
    let mut ping = tokio::time::interval(CONSOLE_PING_EVERY);
    ping.tick().await;
    let close = loop {
        tokio::select! {
            chunk = upstream.chunk() => match chunk {
                Ok(Some(bytes)) => {
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break CloseFrame {
                    code: close_code::NORMAL,
                    reason: "the console ended".into(),
                },
                Err(e) => {
                    tracing::warn!(%host, error = %e, "console stream from agent broke");
                    break CloseFrame {
                        code: close_code::ERROR,
                        reason: close_reason(&format!("lost the console stream from host {host}: {e}")).into(),
                    };
                }
            },
            incoming = socket.recv() => match incoming {
                // The console is read-only: whatever the client sends is
                // ignored (tungstenite answers pings itself), but a close or
                // a dead connection means nobody is reading any more.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = socket.send(Message::Close(Some(close))).await;
}

/// A close frame's reason may be at most 123 bytes (a control frame carries
/// 125, two of them the code); cut at a character boundary.
fn close_reason(text: &str) -> String {
    const MAX: usize = 123;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[utoipa::path(post, path = "/v1/instances/{id}/attachments", tag = "instances", params(("id" = InstanceId, Path)),
    request_body = AttachmentCreate,
    responses((status = 201, body = Attachment), (status = 409, body = api::ErrorBody)))]
async fn attach(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<InstanceId>,
    ApiJson(body): ApiJson<AttachmentCreate>,
) -> ApiResult<(StatusCode, Json<Attachment>)> {
    let changed = state
        .store
        .instance_attach(&caller, id, &body.volume)
        .await?;
    wake(&state, &changed.hosts);
    Ok((StatusCode::CREATED, Json(changed.value)))
}

#[utoipa::path(delete, path = "/v1/instances/{id}/attachments/{volume}", tag = "instances",
    params(("id" = InstanceId, Path), ("volume" = VolumeId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
async fn detach(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, volume)): ApiPath<(InstanceId, VolumeId)>,
) -> ApiResult<StatusCode> {
    let changed = state.store.instance_detach(&caller, id, volume).await?;
    wake(&state, &changed.hosts);
    Ok(StatusCode::NO_CONTENT)
}
