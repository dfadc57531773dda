//! The agent API the stack manager calls (`/agent/v1`, see
//! `api::internal`). Every request carries the per-host credential as a
//! bearer token.

use std::sync::Arc;
use std::time::Duration;

use api::error::ErrorCode;
use api::ids::InstanceId;
use api::internal::{InstanceSpec, ObservedInstance};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use agent_support::http::{require_credential, ApiError};

use crate::error::AgentError;
use crate::instances::Realizer;

/// How much of the console log `GET …/console` returns.
const CONSOLE_TAIL_BYTES: u64 = 256 * 1024;

#[derive(Clone)]
pub struct ServerState {
    pub realizer: Arc<Realizer>,
    pub credential: Arc<String>,
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::Invalid(m) => {
                ApiError(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest, m)
            }
            e @ AgentError::Libvirt(_) => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                e.to_string(),
            ),
            e => ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                e.to_string(),
            ),
        }
    }
}

fn not_found(id: InstanceId) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("instance {id} is not on this host"),
    )
}

pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/agent/v1/instances", get(list))
        .route(
            "/agent/v1/instances/{id}",
            axum::routing::put(put).delete(delete),
        )
        .route("/agent/v1/instances/{id}/console", get(console))
        .route(
            "/agent/v1/instances/{id}/console/stream",
            get(console_stream),
        )
        .route("/agent/v1/volumes", get(no_volumes))
        .layer(middleware::from_fn_with_state(
            state.credential.clone(),
            require_credential,
        ))
        .with_state(state)
}

fn parse_id(raw: &str) -> Result<InstanceId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidId,
            format!("{raw:?} is not an instance id"),
        )
    })
}

async fn list(State(s): State<ServerState>) -> Json<Vec<ObservedInstance>> {
    Json(s.realizer.observe_all().await)
}

async fn put(
    State(s): State<ServerState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ObservedInstance>, ApiError> {
    let id = parse_id(&id)?;
    let spec: InstanceSpec = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedBody,
            e.to_string(),
        )
    })?;
    if spec.id != id {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!("spec id {} is not the path's {id}", spec.id),
        ));
    }
    Ok(Json(s.realizer.put(spec).await?))
}

async fn delete(
    State(s): State<ServerState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    s.realizer.delete(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn no_volumes() -> Json<Vec<api::internal::ObservedVolume>> {
    Json(Vec::new())
}

/// The console log of an instance this host has (and is not deleting).
async fn console_path(s: &ServerState, raw_id: &str) -> Result<std::path::PathBuf, ApiError> {
    let id = parse_id(raw_id)?;
    s.realizer
        .observe_one(id)
        .await
        .ok_or_else(|| not_found(id))?;
    s.realizer.console_log(id).ok_or_else(|| not_found(id))
}

/// The last [`CONSOLE_TAIL_BYTES`] of the serial console log.
async fn console(
    State(s): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let path = console_path(&s, &id).await?;
    let text = match tokio::fs::File::open(&path).await {
        Ok(mut f) => {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            let start = len.saturating_sub(CONSOLE_TAIL_BYTES);
            let _ = f.seek(std::io::SeekFrom::Start(start)).await;
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).into_owned()
        }
        Err(_) => String::new(),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// The console log from its current tail onwards, as a never-ending
/// chunked body: what the stack manager relays over its WebSocket.
async fn console_stream(
    State(s): State<ServerState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let path = console_path(&s, &id).await?;
    let stream = follow(path);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Follows a growing file like `tail -c 4096 -f`; ends when the
/// instance's directory is removed (the instance was deleted).
fn follow(
    path: std::path::PathBuf,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::unfold(None::<u64>, move |pos| {
        let path = path.clone();
        async move {
            let mut idle = 0u32;
            loop {
                let len = tokio::fs::metadata(&path)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                let mut from = pos.unwrap_or(len.saturating_sub(4096));
                if len < from {
                    from = 0; // the log was truncated
                }
                if len > from {
                    let mut f = match tokio::fs::File::open(&path).await {
                        Ok(f) => f,
                        Err(e) => return Some((Err(e), Some(from))),
                    };
                    if let Err(e) = f.seek(std::io::SeekFrom::Start(from)).await {
                        return Some((Err(e), Some(from)));
                    }
                    let mut buf = vec![0u8; (len - from).min(64 * 1024) as usize];
                    let n = match f.read(&mut buf).await {
                        Ok(n) => n,
                        Err(e) => return Some((Err(e), Some(from))),
                    };
                    buf.truncate(n);
                    return Some((Ok(buf), Some(from + n as u64)));
                }
                idle += 1;
                if idle.is_multiple_of(25) && !path.parent().is_some_and(|d| d.exists()) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
}
