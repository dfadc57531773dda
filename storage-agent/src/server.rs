//! The agent API the stack manager calls (`/agent/v1/volumes`, see
//! `api::internal`). Every request carries the per-host credential.

use std::sync::Arc;
use std::time::Duration;

use agent_support::http::{require_credential, ApiError};
use api::error::ErrorCode;
use api::ids::VolumeId;
use api::internal::{ObservedVolume, VolumeSpec};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;
use axum::{Json, Router};

use crate::error::VolumeError;
use crate::volumes::{Deleted, Volumes};

/// How long a PUT waits for the volume to converge before answering with
/// its current state (creation from an image can take minutes).
const PUT_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct ServerState {
    pub volumes: Arc<Volumes>,
}

fn api_error(e: VolumeError) -> ApiError {
    match e {
        VolumeError::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, m),
        VolumeError::Gone(m) => ApiError(StatusCode::CONFLICT, ErrorCode::Conflict, m),
        e => ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            e.to_string(),
        ),
    }
}

fn parse_id(raw: &str) -> Result<VolumeId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidId,
            format!("{raw:?} is not a volume id"),
        )
    })
}

pub fn router(state: ServerState, credential: Arc<String>) -> Router {
    Router::new()
        .route("/agent/v1/volumes", get(list))
        .route("/agent/v1/volumes/{id}", get(show).put(put).delete(delete))
        .layer(middleware::from_fn_with_state(
            credential,
            require_credential,
        ))
        .with_state(state)
}

async fn list(State(s): State<ServerState>) -> Json<Vec<ObservedVolume>> {
    Json(s.volumes.observe_all())
}

async fn show(
    State(s): State<ServerState>,
    Path(raw): Path<String>,
) -> Result<Json<ObservedVolume>, ApiError> {
    let id = parse_id(&raw)?;
    s.volumes.observe(id).map(Json).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("volume {id} is not on this node"),
        )
    })
}

async fn put(
    State(s): State<ServerState>,
    Path(raw): Path<String>,
    body: Result<Json<VolumeSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ObservedVolume>, ApiError> {
    let id = parse_id(&raw)?;
    let Json(spec) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.body_text(),
        )
    })?;
    if spec.id != id {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("the body is for volume {}, the path for {id}", spec.id),
        ));
    }
    s.volumes
        .put(spec, PUT_WAIT)
        .await
        .map(Json)
        .map_err(api_error)
}

async fn delete(
    State(s): State<ServerState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&raw)?;
    match s.volumes.delete(id).await.map_err(api_error)? {
        Deleted::Done => Ok(StatusCode::NO_CONTENT),
        Deleted::NotFound => Err(ApiError(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("volume {id} is not on this node"),
        )),
        Deleted::Superseded => Err(ApiError(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!("volume {id} got a newer spec while being deleted; it stays"),
        )),
    }
}
