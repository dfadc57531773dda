//! The agent API's plumbing: the `{error, message}` body and the
//! per-host credential check every `/agent/v1` request passes.

use std::sync::Arc;

use api::error::{ErrorBody, ErrorCode};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

pub struct ApiError(pub StatusCode, pub ErrorCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(ErrorBody {
                error: self.1,
                message: self.2,
            }),
        )
            .into_response()
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`) admitting only the
/// host credential as Bearer. Compares digests, not the strings, so timing
/// says nothing about the credential.
pub async fn require_credential(
    State(credential): State<Arc<String>>,
    req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if Sha256::digest(presented.as_bytes()) != Sha256::digest(credential.as_bytes()) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthenticated,
            "missing or wrong host credential".into(),
        )
        .into_response();
    }
    next.run(req).await
}
