//! The internal API agents call, on its own listener (bind it to the
//! management network): enrollment with a one-time token, heartbeats, and
//! the full desired state of a host. Agents authenticate with the per-host
//! credential they got at enrollment; errors are the usual `ApiError` JSON.

use std::collections::{HashMap, HashSet};

use api::ids::HostId;
use api::internal::*;
use api::resources::{Capacity, HostKind};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::{bearer, hash_secret, new_secret};
use crate::db::{now_ms, RowExt};
use crate::desired;
use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::http::validate;
use crate::scheduler::HostView;
use crate::state::AppState;

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

/// One message for every bad token, so a caller learns nothing about which
/// tokens exist.
fn bad_token() -> ApiError {
    ApiError::unauthenticated("enrollment token is invalid, used or expired")
}

fn bad_credential() -> ApiError {
    ApiError::unauthenticated("unknown host or wrong credential")
}

fn credential_hash(headers: &HeaderMap) -> ApiResult<String> {
    bearer(headers).map(hash_secret).ok_or_else(|| {
        ApiError::unauthenticated("missing `Authorization: Bearer <host credential>`")
    })
}

/// Checks the bearer against the credential of host `id` (not of any host).
async fn authenticate_host(state: &AppState, headers: &HeaderMap, id: HostId) -> ApiResult<()> {
    let hash = credential_hash(headers)?;
    let n = sqlx::query("SELECT COUNT(*) AS n FROM hosts WHERE id = $1 AND credential_hash = $2")
        .bind(id.to_string())
        .bind(hash)
        .fetch_one(&state.db.pool)
        .await?
        .int("n")?;
    if n == 0 {
        return Err(bad_credential());
    }
    Ok(())
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
    let now = now_ms();
    let token = sqlx::query(
        "SELECT id, kind, rack_id, expires_at, used_at FROM enrollment_tokens WHERE secret_hash = $1",
    )
    .bind(hash_secret(&req.token))
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(bad_token)?;
    let usable = token.opt_int("used_at")?.is_none()
        && token.int("expires_at")? > now
        && token.text("kind")? == req.kind.as_str();
    if !usable {
        return Err(bad_token());
    }
    validate_enroll(&req)?;

    let host = HostId::new();
    let credential = new_secret("agent");
    let c = req.capacity;
    let mut tx = state.db.begin_write().await?;
    // Conditional, so two agents racing with one token cannot both win.
    let claimed = sqlx::query(
        "UPDATE enrollment_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(token.text("id")?)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if claimed != 1 {
        return Err(bad_token());
    }
    sqlx::query(
        "INSERT INTO hosts (id, name, kind, rack_id, agent_url, credential_hash, credential, initiator_iqn, \
           iscsi_portal, admin_state, cap_vcpus, cap_ram_mib, cap_disk_gib, cap_storage_total, cap_storage_free, \
           last_heartbeat_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'enabled', $10, $11, $12, $13, $14, $15, $15)",
    )
    .bind(host.to_string())
    .bind(&req.name)
    .bind(req.kind.as_str())
    .bind(token.opt_text("rack_id")?)
    .bind(&req.agent_url)
    .bind(hash_secret(&credential))
    .bind(&credential)
    .bind(req.initiator_iqn.as_deref())
    .bind(req.iscsi_portal.as_deref())
    .bind(i64::from(c.vcpus))
    .bind(validate::to_i64(c.ram_mib))
    .bind(validate::to_i64(c.disk_gib))
    .bind(validate::to_i64(c.storage_bytes_total))
    .bind(validate::to_i64(c.storage_bytes_free))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match crate::db::is_unique_violation(&e) {
        true => ApiError::conflict(format!(
            "a host named `{}` is already enrolled; delete it first (`strato host delete`) to re-enroll",
            req.name
        )),
        false => e.into(),
    })?;
    tx.commit().await?;

    let row = sqlx::query("SELECT * FROM hosts WHERE id = $1")
        .bind(host.to_string())
        .fetch_one(&state.db.pool)
        .await?;
    state.scheduler.upsert(HostView::from_row(&row)?);
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
    // Authentication and the update in one statement: this runs for every
    // host every few seconds. It still takes the write gate (without a
    // transaction): on SQLite an ungated write would make gated
    // transactions fail mid-way.
    let update = sqlx::query(
        "UPDATE hosts SET cap_vcpus = $3, cap_ram_mib = $4, cap_disk_gib = $5, cap_storage_total = $6, \
           cap_storage_free = $7, last_heartbeat_at = $8 \
         WHERE id = $1 AND credential_hash = $2 RETURNING kind",
    )
    .bind(id.to_string())
    .bind(hash)
    .bind(i64::from(c.vcpus))
    .bind(validate::to_i64(c.ram_mib))
    .bind(validate::to_i64(c.disk_gib))
    .bind(validate::to_i64(c.storage_bytes_total))
    .bind(validate::to_i64(c.storage_bytes_free))
    .bind(now);
    let kind = state
        .db
        .gated(update.fetch_optional(&state.db.pool))
        .await?
        .ok_or_else(bad_credential)?
        .parsed("kind", HostKind::parse)?;
    state.scheduler.heartbeat(id, c, now);

    // A hypervisor reports instances, a storage node volumes; the other
    // list is meaningless for its kind and ignored.
    let needs_push = match kind {
        HostKind::Hypervisor => fold_instances(&state, id, &hb.instances).await?,
        HostKind::Storage => fold_volumes(&state, id, &hb.volumes).await?,
    };
    if needs_push {
        state.reconciler.notify(id);
    }
    Ok(Json(HeartbeatAck {
        heartbeat_interval_secs: state.config.hosts.heartbeat_interval_secs,
    }))
}

/// The database's view of the live instances (or volumes) of a host, by id.
async fn live_rows(
    state: &AppState,
    sql: &str,
    host: HostId,
) -> ApiResult<HashMap<String, AnyRow>> {
    let rows = sqlx::query(sql)
        .bind(host.to_string())
        .fetch_all(&state.db.pool)
        .await?;
    rows.into_iter()
        .map(|r| Ok((r.text("id")?, r)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// Whether an observation failed to fold; logged, and treated as "needs a
/// push" so the reconciler looks at the host again.
fn folded(host: HostId, what: &str, r: ApiResult<bool>) -> bool {
    r.unwrap_or_else(|e| {
        tracing::warn!(%host, error = %e, "cannot fold observed {what}");
        true
    })
}

/// Folds a hypervisor's report into the database. Only entries whose state
/// differs from their row go through `Store::instance_observe` (the
/// common heartbeat changes nothing). Returns whether the host needs a push.
async fn fold_instances(
    state: &AppState,
    host: HostId,
    observed: &[ObservedInstance],
) -> ApiResult<bool> {
    let rows = live_rows(
        state,
        "SELECT id, desired, status, status_reason, generation, applied_generation, reboot_count \
         FROM instances WHERE host_id = $1 AND deleted_at IS NULL",
        host,
    )
    .await?;
    let mut push = false;
    let mut seen = HashSet::with_capacity(observed.len());
    for o in observed {
        let key = o.id.to_string();
        let Some(r) = rows.get(&key) else {
            // Not ours (any more): the agent should drop it.
            state.reconciler.notify_orphans(host);
            continue;
        };
        seen.insert(key);
        if r.text("desired")? == "deleted" {
            push = true;
            continue;
        }
        let reboot_count = r.uint("reboot_count")?;
        let status = crate::lifecycle::instance_status(o, reboot_count).as_str();
        let changed = r.text("status")? != status
            || r.opt_text("status_reason")? != o.reason
            || r.uint("applied_generation")? != o.generation;
        if changed {
            push |= folded(
                host,
                "instance",
                state
                    .store
                    .instance_observe(host, o)
                    .await
                    .map(|o| o.behind),
            );
        } else {
            push |= o.generation < r.uint("generation")? || o.reboot_count < reboot_count;
        }
    }
    forget_applied(state, "instances", &rows, &seen).await?;
    Ok(push || rows.len() > seen.len())
}

/// Rows the agent did not report were lost on its side (it restarted with
/// nothing, or a create failed before it was recorded): mark them as not
/// applied so the reconciler pushes them again.
async fn forget_applied(
    state: &AppState,
    table: &'static str,
    rows: &HashMap<String, AnyRow>,
    seen: &HashSet<String>,
) -> ApiResult<()> {
    let missing: Vec<&String> = rows
        .keys()
        .filter(|k| !seen.contains(*k))
        .filter(|k| {
            // Only instances the agent has already been told about; a
            // building one may simply not be reported yet.
            rows[*k].uint("applied_generation").unwrap_or(0) > 0
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sql = format!("UPDATE {table} SET applied_generation = 0 WHERE id = $1");
    let mut tx = state.db.begin_write().await?;
    for id in missing {
        sqlx::query(&sql).bind(id).execute(&mut **tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The volume counterpart of [`fold_instances`].
async fn fold_volumes(
    state: &AppState,
    host: HostId,
    observed: &[ObservedVolume],
) -> ApiResult<bool> {
    let rows = live_rows(
        state,
        "SELECT v.id, v.status, v.generation, v.applied_generation, \
           (SELECT COUNT(*) FROM attachments a WHERE a.volume_id = v.id) AS attached, \
           (SELECT COUNT(*) FROM snapshots s WHERE s.volume_id = v.id AND s.deleted_at IS NULL \
              AND s.status IN ('creating', 'deleting')) AS pending_snapshots \
         FROM volumes v WHERE v.host_id = $1 AND v.deleted_at IS NULL",
        host,
    )
    .await?;
    let mut push = false;
    let mut seen = HashSet::with_capacity(observed.len());
    for o in observed {
        let key = o.id.to_string();
        let Some(r) = rows.get(&key) else {
            state.reconciler.notify_orphans(host);
            continue;
        };
        seen.insert(key);
        let current = r.text("status")?;
        if current == "deleting" {
            push = true;
            continue;
        }
        let status = crate::lifecycle::volume_status(o, r.int("attached")? > 0).as_str();
        // Snapshots being created or deleted settle only through the report.
        if current != status
            || r.uint("applied_generation")? != o.generation
            || r.int("pending_snapshots")? > 0
        {
            push |= folded(
                host,
                "volume",
                desired::observe_volume(state, host, o).await,
            );
        } else {
            push |= o.generation < r.uint("generation")?;
        }
    }
    forget_applied(state, "volumes", &rows, &seen).await?;
    Ok(push || rows.len() > seen.len())
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
        instances: desired::instance_specs(&state.db, id, None).await?,
        volumes: desired::volume_specs(&state.db, id, None).await?,
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
    }
}
