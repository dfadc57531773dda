//! The internal API agents call, on its own listener (bind it to the
//! management network): enrollment with a one-time token, heartbeats, and
//! the full desired state of a host. Agents authenticate with the per-host
//! credential they got at enrollment; errors are the usual `ApiError` JSON.

use api::ids::HostId;
use api::internal::*;
use api::resources::{Capacity, HostKind};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::{bearer, hash_secret, new_secret};
use crate::db::now_ms;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::http::validate;
use crate::state::AppState;
use crate::store::agents::Enrollment;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(ENROLL_PATH, post(enroll))
        .route("/internal/v1/hosts/{id}/heartbeat", post(heartbeat))
        .route("/internal/v1/hosts/{id}/desired", get(desired_state))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(enroll, heartbeat, desired_state),
    components(schemas(
        EnrollRequest,
        EnrollResponse,
        Heartbeat,
        HeartbeatAck,
        ObservedInstance,
        ObservedInstanceState,
        ObservedVolume,
        ObservedVolumeState,
        DesiredHostState,
        InstanceSpec,
        ImageSpec,
        NicSpec,
        VolumeAttachmentSpec,
        VolumeSpec,
        VolumeSourceSpec,
        PowerState,
        Capacity,
        HostKind
    ))
)]
pub struct Doc;

impl Doc {
    pub fn openapi_doc() -> utoipa::openapi::OpenApi {
        <Doc as utoipa::OpenApi>::openapi()
    }
}

async fn not_found() -> ApiError {
    ApiError::new(api::ErrorCode::NotFound, "no such internal endpoint")
}

fn credential_hash(headers: &HeaderMap) -> ApiResult<String> {
    bearer(headers).map(hash_secret).ok_or_else(|| {
        ApiError::unauthenticated("missing `Authorization: Bearer <host credential>`")
    })
}

/// Checks the bearer against the credential of host `id` (not of any host).
async fn authenticate_host(state: &AppState, headers: &HeaderMap, id: HostId) -> ApiResult<()> {
    state
        .store
        .host_authenticate(id, &credential_hash(headers)?)
        .await
}

/// Everything about an enrollment request that does not need the database.
fn validate_enroll(req: &EnrollRequest) -> ApiResult<()> {
    // Host names are often FQDN-like (`hv-12.rack-3`), so dots are allowed.
    validate::name("host", &req.name.replace('.', "-")).map_err(|_| {
        ApiError::invalid(format!(
            "host name `{}` is invalid: use 1-63 characters of a-z, 0-9, '-' and '.', starting with a letter",
            req.name.chars().take(80).collect::<String>()
        ))
    })?;
    let url_ok = req.agent_url.len() <= 2048
        && reqwest::Url::parse(&req.agent_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !url_ok {
        return Err(ApiError::invalid(format!(
            "agent_url `{}` is not an http:// or https:// URL",
            req.agent_url.chars().take(200).collect::<String>()
        )));
    }
    let c = &req.capacity;
    match req.kind {
        HostKind::Hypervisor => {
            if c.vcpus < 1 || c.ram_mib < 64 {
                return Err(ApiError::invalid(format!(
                    "a hypervisor needs at least 1 vCPU and 64 MiB RAM, reported {} vCPU / {} MiB",
                    c.vcpus, c.ram_mib
                )));
            }
            let iqn = req.initiator_iqn.as_deref().unwrap_or_default();
            let iqn_ok = (iqn.starts_with("iqn.") || iqn.starts_with("eui."))
                && iqn.len() <= 223
                && iqn.bytes().all(|b| b.is_ascii_graphic());
            if !iqn_ok {
                return Err(ApiError::invalid(
                    "a hypervisor needs initiator_iqn, an iSCSI name starting with `iqn.` or `eui.`",
                ));
            }
        }
        HostKind::Storage => {
            if c.storage_bytes_total < 1 {
                return Err(ApiError::invalid(
                    "a storage node needs capacity.storage_bytes_total of at least 1 byte",
                ));
            }
            let portal = req.iscsi_portal.as_deref().unwrap_or_default();
            let portal_ok = portal.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            }) && portal.len() <= 262
                && portal.bytes().all(|b| b.is_ascii_graphic());
            if !portal_ok {
                return Err(ApiError::invalid(
                    "a storage node needs iscsi_portal as `address:port`",
                ));
            }
        }
    }
    if let Some(m) = &req.machine_id {
        if m.parse::<api::ids::MachineId>().is_err() {
            return Err(ApiError::invalid(format!(
                "machine_id `{}` is not a provisioner machine id",
                m.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/internal/v1/enroll", tag = "internal", request_body = EnrollRequest,
    security(()),
    responses((status = 201, body = EnrollResponse), (status = 400, body = api::ErrorBody),
              (status = 401, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    let host = HostId::new();
    let credential = new_secret("agent");
    let view = state
        .store
        .host_enroll(
            Enrollment {
                request: &req,
                token_hash: hash_secret(&req.token),
                host,
                credential: &credential,
                credential_hash: hash_secret(&credential),
            },
            || validate_enroll(&req),
        )
        .await?;
    state.scheduler.enrolled(view);
    tracing::info!(%host, name = %req.name, kind = req.kind.as_str(), "host enrolled");
    Ok((
        StatusCode::CREATED,
        Json(EnrollResponse {
            host_id: host,
            credential,
            heartbeat_interval_secs: state.config.hosts.heartbeat_interval_secs,
        }),
    ))
}

#[utoipa::path(post, path = "/internal/v1/hosts/{id}/heartbeat", tag = "internal",
    params(("id" = HostId, Path)), request_body = Heartbeat,
    responses((status = 200, body = HeartbeatAck), (status = 401, body = api::ErrorBody)))]
async fn heartbeat(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<HostId>,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatAck>> {
    let hash = credential_hash(&headers)?;
    let now = now_ms();
    let c = hb.capacity;
    let kind = state.store.host_heartbeat(id, &hash, &c, now).await?;
    state.scheduler.heartbeat(id, c, now);

    // A hypervisor reports instances, a storage node volumes; the other
    // list is meaningless for its kind and ignored.
    let folded = match kind {
        HostKind::Hypervisor => state.store.instance_fold_report(id, &hb.instances).await?,
        HostKind::Storage => state.store.volume_fold_report(id, &hb.volumes).await?,
    };
    if folded.orphans {
        state.reconciler.notify_orphans(id);
    }
    if folded.push {
        state.reconciler.notify(id);
    }
    for h in folded.wake {
        state.reconciler.notify(h);
    }
    Ok(Json(HeartbeatAck {
        heartbeat_interval_secs: state.config.hosts.heartbeat_interval_secs,
    }))
}

#[utoipa::path(get, path = "/internal/v1/hosts/{id}/desired", tag = "internal",
    params(("id" = HostId, Path)),
    responses((status = 200, body = DesiredHostState), (status = 401, body = api::ErrorBody)))]
async fn desired_state(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<HostId>,
) -> ApiResult<Json<DesiredHostState>> {
    authenticate_host(&state, &headers, id).await?;
    Ok(Json(DesiredHostState {
        instances: state.store.instance_specs(id).await?,
        volumes: state.store.volume_specs(id).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: HostKind) -> EnrollRequest {
        EnrollRequest {
            token: "enroll_x".into(),
            name: "hv-1.rack-a".into(),
            kind,
            agent_url: "http://10.0.0.5:7102".into(),
            capacity: Capacity {
                vcpus: 8,
                ram_mib: 16384,
                disk_gib: 100,
                storage_bytes_total: 1 << 40,
                storage_bytes_free: 1 << 40,
            },
            initiator_iqn: Some("iqn.2024-01.org.strato:hv-1".into()),
            iscsi_portal: Some("10.0.0.6:3260".into()),
            machine_id: None,
            replication_address: None,
        }
    }

    #[test]
    fn enroll_validation() {
        assert!(validate_enroll(&request(HostKind::Hypervisor)).is_ok());
        assert!(validate_enroll(&request(HostKind::Storage)).is_ok());
        let bad = |f: fn(&mut EnrollRequest), kind| {
            let mut r = request(kind);
            f(&mut r);
            validate_enroll(&r).is_err()
        };
        assert!(bad(
            |r| r.agent_url = "ftp://x".into(),
            HostKind::Hypervisor
        ));
        assert!(bad(
            |r| r.agent_url = "not a url".into(),
            HostKind::Hypervisor
        ));
        assert!(bad(|r| r.name = "Bad_Name".into(), HostKind::Hypervisor));
        assert!(bad(|r| r.initiator_iqn = None, HostKind::Hypervisor));
        assert!(bad(
            |r| r.initiator_iqn = Some("x.y".into()),
            HostKind::Hypervisor
        ));
        assert!(bad(|r| r.capacity.vcpus = 0, HostKind::Hypervisor));
        assert!(bad(|r| r.iscsi_portal = None, HostKind::Storage));
        assert!(bad(
            |r| r.iscsi_portal = Some("10.0.0.6".into()),
            HostKind::Storage
        ));
        assert!(bad(
            |r| r.capacity.storage_bytes_total = 0,
            HostKind::Storage
        ));
        // A storage node does not need an initiator, nor a hypervisor a portal.
        assert!(!bad(|r| r.initiator_iqn = None, HostKind::Storage));
        assert!(!bad(|r| r.iscsi_portal = None, HostKind::Hypervisor));
        assert!(bad(
            |r| r.machine_id = Some("rack-1/m7".into()),
            HostKind::Hypervisor
        ));
        assert!(!bad(
            |r| r.machine_id = Some(api::ids::MachineId::new().to_string()),
            HostKind::Hypervisor
        ));
    }
}
