//! `/v1/volumes` and `/v1/snapshots`: persistent iSCSI volumes placed on
//! storage nodes, and their point-in-time snapshots. Attachments live under
//! `/v1/instances/{id}/attachments`.

use std::collections::HashMap;

use api::ids::{HostId, SnapshotId, VolumeId};
use api::resources::{
    Attachment, List, ProjectScope, Snapshot, SnapshotCreate, SnapshotStatus, Volume, VolumeCreate,
    VolumeSource, VolumeStatus,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::distributions::{Alphanumeric, DistString};
use sqlx::any::AnyRow;

use crate::auth::Caller;
use crate::db::{now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;
use crate::store::quotas::{self, QuotaDelta};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/volumes", get(list).post(create))
        .route("/v1/volumes/{id}", get(show).delete(delete))
        .route("/v1/volumes/{id}/snapshots", post(snapshot_create))
        .route("/v1/snapshots", get(snapshot_list))
        .route(
            "/v1/snapshots/{id}",
            get(snapshot_show).delete(snapshot_delete),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list,
        create,
        show,
        delete,
        snapshot_create,
        snapshot_list,
        snapshot_show,
        snapshot_delete
    ),
    components(schemas(
        Volume,
        VolumeCreate,
        VolumeSource,
        VolumeStatus,
        Snapshot,
        SnapshotCreate,
        SnapshotStatus
    ))
)]
pub struct Doc;

/// The target name a volume is exported under.
pub fn iqn(id: VolumeId) -> String {
    format!("iqn.2026-11.io.strato:vol-{id}")
}

fn attachment_of_row(a: &AnyRow, volume: VolumeId) -> Result<Attachment, sqlx::Error> {
    Ok(Attachment {
        volume_id: volume,
        instance_id: a.id("instance_id")?,
        device_index: a.uint("device_index")? as u32,
        created_at: a.time("created_at")?,
    })
}

async fn view(state: &AppState, r: &AnyRow) -> ApiResult<Volume> {
    let id: VolumeId = r.id("id")?;
    let attachment = sqlx::query("SELECT * FROM attachments WHERE volume_id = $1")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .map(|a| attachment_of_row(&a, id))
        .transpose()?;
    view_with_attachment(r, attachment)
}

/// The attachments of every live volume in `project` (`''`: every
/// project), in one statement: a list must not cost a query per volume.
async fn attachments_in_scope(
    state: &AppState,
    project: &str,
) -> ApiResult<HashMap<VolumeId, Attachment>> {
    let rows = sqlx::query(
        "SELECT a.* FROM attachments a JOIN volumes v ON v.id = a.volume_id \
         WHERE v.deleted_at IS NULL AND ($1 = '' OR v.project_id = $1)",
    )
    .bind(project)
    .fetch_all(&state.db.pool)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for a in &rows {
        let volume: VolumeId = a.id("volume_id")?;
        out.insert(volume, attachment_of_row(a, volume)?);
    }
    Ok(out)
}

fn view_with_attachment(r: &AnyRow, attachment: Option<Attachment>) -> ApiResult<Volume> {
    Ok(Volume {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        size_gib: r.uint("size_gib")?,
        source_image_id: r.opt_id("source_image_id")?,
        source_snapshot_id: r.opt_id("source_snapshot_id")?,
        host_id: r.opt_id("host_id")?,
        status: r.parsed("status", VolumeStatus::parse)?,
        status_reason: r.opt_text("status_reason")?,
        iqn: r.text("iqn")?,
        attachment,
        created_at: r.time("created_at")?,
    })
}

async fn load(state: &AppState, caller: &Caller, id: VolumeId) -> ApiResult<AnyRow> {
    let row = sqlx::query("SELECT * FROM volumes WHERE id = $1 AND deleted_at IS NULL")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("volume", id))?;
    caller.check_read(row.id("project_id")?, "volume", id)?;
    Ok(row)
}

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", params(ProjectScope), responses((status = 200, body = List<Volume>)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
) -> ApiResult<Json<List<Volume>>> {
    let project = super::read_scope(&state, &caller, &scope).await?;
    let rows = super::rows_in_scope(&state, &project, "volumes").await?;
    let mut attachments = attachments_in_scope(&state, &project).await?;
    let items = rows
        .iter()
        .map(|r| view_with_attachment(r, attachments.remove(&r.id("id")?)))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(get, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = VolumeId, Path)),
    responses((status = 200, body = Volume), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VolumeId>,
) -> ApiResult<Json<Volume>> {
    let row = load(&state, &caller, id).await?;
    Ok(Json(view(&state, &row).await?))
}

#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", params(ProjectScope), request_body = VolumeCreate,
    responses((status = 201, body = Volume), (status = 409, description = "quota or storage capacity exhausted", body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<VolumeCreate>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    validate::name("volume", &body.name)?;
    validate::range("size_gib", body.size_gib, 1, 65_536)?;
    let project = caller
        .project_for_write(&state.store, scope.project.as_deref(), "volume")
        .await?;
    let (image, snapshot) = match &body.source {
        VolumeSource::Empty => (None, None),
        VolumeSource::Image(i) => {
            let image = state.store.image_resolve(project, i).await?;
            if image.min_disk_gib > body.size_gib {
                return Err(ApiError::invalid(format!(
                    "image `{}` needs at least {} GiB",
                    image.name, image.min_disk_gib
                )));
            }
            (Some(image.id), None)
        }
        VolumeSource::Snapshot(s) => {
            let snap = snapshot_load(&state, &caller, *s).await?;
            if snap.project_id != project {
                return Err(ApiError::not_found("snapshot", s));
            }
            if snap.status != SnapshotStatus::Available {
                return Err(ApiError::conflict(format!(
                    "snapshot {s} is {}",
                    snap.status.as_str()
                )));
            }
            if snap.size_gib > body.size_gib {
                return Err(ApiError::invalid(format!(
                    "snapshot {s} is {} GiB; the volume must be at least that",
                    snap.size_gib
                )));
            }
            (None, Some(snap))
        }
    };
    // Clones from a snapshot live on the snapshot's node (copy-on-write).
    let id = VolumeId::new();
    let now = now_ms();
    let bytes = body.size_gib << 30;
    let chap_secret = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
    let mut tx = state.db.begin_write().await?;
    quotas::quota_claim(
        &mut tx,
        project,
        QuotaDelta {
            volumes: 1,
            volume_gib: validate::to_i64(body.size_gib),
            ..Default::default()
        },
    )
    .await?;
    // The source must still be there now that we write (lock it, as its
    // delete does): a volume silently created empty would be worse than none.
    if let Some(i) = image {
        let live = sqlx::query("UPDATE images SET min_disk_gib = min_disk_gib WHERE id = $1")
            .bind(i.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if live == 0 {
            return Err(ApiError::conflict(format!(
                "image {i} was deleted meanwhile"
            )));
        }
    }
    let mut source_host = None;
    if let Some(snap) = &snapshot {
        let live = sqlx::query(
            "UPDATE snapshots SET status = status WHERE id = $1 AND status = 'available' AND deleted_at IS NULL",
        )
        .bind(snap.id.to_string())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if live == 0 {
            return Err(ApiError::conflict(format!(
                "snapshot {} is no longer available",
                snap.id
            )));
        }
        source_host = sqlx::query("SELECT host_id FROM volumes WHERE id = $1")
            .bind(snap.volume_id.to_string())
            .fetch_one(&mut **tx)
            .await?
            .opt_id::<HostId>("host_id")?;
    }
    let claim = state
        .scheduler
        .claim_volume(&mut tx, bytes, source_host)
        .await?;
    sqlx::query(
        "INSERT INTO volumes (id, project_id, name, size_gib, source_image_id, source_snapshot_id, host_id, status, iqn, \
         chap_user, chap_secret, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'creating', $8, $9, $10, $11)",
    )
    .bind(id.to_string())
    .bind(project.to_string())
    .bind(&body.name)
    .bind(validate::to_i64(body.size_gib))
    .bind(image.map(|i| i.to_string()))
    .bind(snapshot.as_ref().map(|s| s.id.to_string()))
    .bind(claim.host.to_string())
    .bind(iqn(id))
    .bind(format!("strato-{}", &id.to_string()[..8]))
    .bind(chap_secret)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(|e| match crate::db::is_unique_violation(&e) {
        true => ApiError::conflict(format!("a volume named `{}` already exists in this project", body.name)),
        false => e.into(),
    })?;
    crate::store::usage::usage_open_span(
        &mut tx,
        project,
        "volume",
        &id.to_string(),
        None,
        validate::to_i64(body.size_gib),
        now,
    )
    .await?;
    tx.commit().await?;
    state.scheduler.apply(claim);
    state.reconciler.notify(claim.host);
    let row = load(&state, &caller, id).await?;
    Ok((StatusCode::CREATED, Json(view(&state, &row).await?)))
}

#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = VolumeId, Path)),
    responses((status = 202, description = "deletion started"), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VolumeId>,
) -> ApiResult<StatusCode> {
    let row = load(&state, &caller, id).await?;
    caller.check_write(row.id("project_id")?, "volume", id)?;
    let mut tx = state.db.begin_write().await?;
    // The status change comes first and is conditional: an attach that
    // committed meanwhile made the volume `in_use`, and then nothing changes.
    let marked = sqlx::query(
        "UPDATE volumes SET status = 'deleting', generation = generation + 1 \
         WHERE id = $1 AND deleted_at IS NULL AND status IN ('available', 'error', 'creating', 'deleting') \
         AND NOT EXISTS (SELECT 1 FROM attachments WHERE volume_id = $1)",
    )
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if marked == 0 {
        return Err(ApiError::conflict(format!(
            "volume {id} is attached; detach it first"
        )));
    }
    let snapshots = sqlx::query(
        "SELECT COUNT(*) AS n FROM snapshots WHERE volume_id = $1 AND deleted_at IS NULL",
    )
    .bind(id.to_string())
    .fetch_one(&mut **tx)
    .await?
    .int("n")?;
    if snapshots > 0 {
        return Err(ApiError::conflict(format!(
            "volume {id} has snapshots; delete them first"
        )));
    }
    tx.commit().await?;
    match row.opt_id::<HostId>("host_id")? {
        Some(h) => state.reconciler.notify(h),
        None => crate::desired::finalize_volume_delete(&state, id).await?,
    }
    Ok(StatusCode::ACCEPTED)
}

fn snapshot_from_row(r: &AnyRow) -> Result<Snapshot, sqlx::Error> {
    Ok(Snapshot {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        volume_id: r.id("volume_id")?,
        name: r.text("name")?,
        size_gib: r.uint("size_gib")?,
        status: r.parsed("status", SnapshotStatus::parse)?,
        created_at: r.time("created_at")?,
    })
}

async fn snapshot_load(state: &AppState, caller: &Caller, id: SnapshotId) -> ApiResult<Snapshot> {
    let row = sqlx::query("SELECT * FROM snapshots WHERE id = $1 AND deleted_at IS NULL")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("snapshot", id))?;
    let s = snapshot_from_row(&row)?;
    caller.check_read(s.project_id, "snapshot", id)?;
    Ok(s)
}

#[utoipa::path(post, path = "/v1/volumes/{id}/snapshots", tag = "volumes", params(("id" = VolumeId, Path)),
    request_body = SnapshotCreate, responses((status = 201, body = Snapshot), (status = 409, body = api::ErrorBody)))]
async fn snapshot_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VolumeId>,
    ApiJson(body): ApiJson<SnapshotCreate>,
) -> ApiResult<(StatusCode, Json<Snapshot>)> {
    validate::name("snapshot", &body.name)?;
    let row = load(&state, &caller, id).await?;
    let project = row.id("project_id")?;
    caller.check_write(project, "volume", id)?;
    let status = row.text("status")?;
    if status != "available" && status != "in_use" {
        return Err(ApiError::conflict(format!(
            "volume {id} is {status}; snapshots need an available or in-use volume"
        )));
    }
    let snap = Snapshot {
        id: SnapshotId::new(),
        project_id: project,
        volume_id: id,
        name: body.name,
        size_gib: row.uint("size_gib")?,
        status: SnapshotStatus::Creating,
        created_at: crate::db::from_ms(now_ms()),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO snapshots (id, project_id, volume_id, name, size_gib, status, created_at) VALUES ($1, $2, $3, $4, $5, 'creating', $6)",
    )
    .bind(snap.id.to_string())
    .bind(project.to_string())
    .bind(id.to_string())
    .bind(&snap.name)
    .bind(validate::to_i64(snap.size_gib))
    .bind(snap.created_at.timestamp_millis())
    .execute(&mut **tx)
    .await?;
    let live = sqlx::query(
        "UPDATE volumes SET generation = generation + 1 \
         WHERE id = $1 AND deleted_at IS NULL AND status IN ('available', 'in_use')",
    )
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if live == 0 {
        return Err(ApiError::conflict(format!(
            "volume {id} is no longer available for snapshots"
        )));
    }
    tx.commit().await?;
    if let Some(h) = row.opt_id::<HostId>("host_id")? {
        state.reconciler.notify(h);
    }
    Ok((StatusCode::CREATED, Json(snap)))
}

#[utoipa::path(get, path = "/v1/snapshots", tag = "volumes", params(ProjectScope), responses((status = 200, body = List<Snapshot>)))]
async fn snapshot_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
) -> ApiResult<Json<List<Snapshot>>> {
    let rows = super::scoped_rows(&state, &caller, &scope, "snapshots").await?;
    Ok(Json(
        rows.iter()
            .map(snapshot_from_row)
            .collect::<Result<Vec<_>, _>>()?
            .into(),
    ))
}

#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "volumes", params(("id" = SnapshotId, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = api::ErrorBody)))]
async fn snapshot_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SnapshotId>,
) -> ApiResult<Json<Snapshot>> {
    Ok(Json(snapshot_load(&state, &caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "volumes", params(("id" = SnapshotId, Path)),
    responses((status = 202, description = "deletion started"), (status = 409, body = api::ErrorBody)))]
async fn snapshot_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SnapshotId>,
) -> ApiResult<StatusCode> {
    let snap = snapshot_load(&state, &caller, id).await?;
    caller.check_write(snap.project_id, "snapshot", id)?;
    let mut tx = state.db.begin_write().await?;
    let clones = sqlx::query(
        "SELECT COUNT(*) AS n FROM volumes WHERE source_snapshot_id = $1 AND deleted_at IS NULL",
    )
    .bind(id.to_string())
    .fetch_one(&mut **tx)
    .await?
    .int("n")?;
    if clones > 0 {
        return Err(ApiError::conflict(format!(
            "snapshot {id} has {clones} clone(s); delete them first"
        )));
    }
    sqlx::query("UPDATE snapshots SET status = 'deleting' WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE volumes SET generation = generation + 1 WHERE id = $1")
        .bind(snap.volume_id.to_string())
        .execute(&mut **tx)
        .await?;
    let host = sqlx::query("SELECT host_id FROM volumes WHERE id = $1")
        .bind(snap.volume_id.to_string())
        .fetch_one(&mut **tx)
        .await?
        .opt_id::<HostId>("host_id")?;
    tx.commit().await?;
    if let Some(h) = host {
        state.reconciler.notify(h);
    }
    Ok(StatusCode::ACCEPTED)
}
