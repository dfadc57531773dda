//! `/v1/volumes` and `/v1/snapshots`: persistent iSCSI volumes placed on
//! storage nodes, and their point-in-time snapshots. Attachments live under
//! `/v1/instances/{id}/attachments`.

use api::ids::{SnapshotId, VolumeId};
use api::resources::{
    List, ProjectPage, ProjectScope, Snapshot, SnapshotCreate, SnapshotStatus, Volume,
    VolumeCreate, VolumeSource, VolumeStatus,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;
use crate::store::volumes::NewVolume;

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

#[utoipa::path(get, path = "/v1/volumes", tag = "volumes", params(ProjectPage),
    responses((status = 200, body = List<Volume>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Volume>>> {
    Ok(Json(state.store.volume_list(&caller, &q).await?))
}

#[utoipa::path(get, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = VolumeId, Path)),
    responses((status = 200, body = Volume), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VolumeId>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(state.store.volume_get(&caller, id).await?))
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
    let replicas = body.replicas.unwrap_or(1);
    validate::range("replicas", u64::from(replicas), 1, 3)?;
    let project = state
        .store
        .project_for_write(&caller, scope.project.as_deref(), "volume")
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
            let snap = state
                .store
                .snapshot_get_for_clone(&caller, project, *s, body.size_gib)
                .await?;
            (None, Some(snap))
        }
    };
    let new = NewVolume {
        name: body.name,
        size_gib: body.size_gib,
        image,
        snapshot,
        replicas,
    };
    let (id, claims) = state
        .store
        .volume_create(&caller, project, new, &*state.scheduler)
        .await?;
    // The claims are applied before anything else can fail: the volume
    // exists. Copies first, so the primary finds them.
    for claim in claims.iter().rev() {
        state.scheduler.apply(*claim);
        state.reconciler.notify(claim.host);
    }
    let volume = state.store.volume_get(&caller, id).await?;
    Ok((StatusCode::CREATED, Json(volume)))
}

#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes", params(("id" = VolumeId, Path)),
    responses((status = 202, description = "deletion started"), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<VolumeId>,
) -> ApiResult<StatusCode> {
    match state.store.volume_delete(&caller, id).await? {
        Some(h) => state.reconciler.notify(h),
        None => crate::desired::finalize_volume_delete(&state, id).await?,
    }
    Ok(StatusCode::ACCEPTED)
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
    let (snap, host) = state.store.snapshot_create(&caller, id, body.name).await?;
    if let Some(h) = host {
        state.reconciler.notify(h);
    }
    Ok((StatusCode::CREATED, Json(snap)))
}

#[utoipa::path(get, path = "/v1/snapshots", tag = "volumes", params(ProjectPage),
    responses((status = 200, body = List<Snapshot>), (status = 400, body = api::ErrorBody)))]
async fn snapshot_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Snapshot>>> {
    Ok(Json(state.store.snapshot_list(&caller, &q).await?))
}

#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "volumes", params(("id" = SnapshotId, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = api::ErrorBody)))]
async fn snapshot_show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SnapshotId>,
) -> ApiResult<Json<Snapshot>> {
    Ok(Json(state.store.snapshot_get(&caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "volumes", params(("id" = SnapshotId, Path)),
    responses((status = 202, description = "deletion started"), (status = 409, body = api::ErrorBody)))]
async fn snapshot_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<SnapshotId>,
) -> ApiResult<StatusCode> {
    if let Some(h) = state.store.snapshot_delete(&caller, id).await? {
        state.reconciler.notify(h);
    }
    Ok(StatusCode::ACCEPTED)
}
