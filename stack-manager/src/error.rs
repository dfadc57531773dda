//! The typed API error: a code from `api::ErrorCode` plus a human message,
//! rendered as `{ "error": code, "message": ... }` with the code's status.
//! Also the extractors that turn axum's plain-text rejections into it.

use api::{ErrorBody, ErrorCode};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn not_found(kind: &str, what: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("{kind} {what} not found"))
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = %self.code, message = %self.message, "request failed");
        }
        let mut resp = (
            status,
            axum::Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response();
        // The audit log and metrics read the code from here.
        resp.extensions_mut().insert(self.code);
        resp
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        match e {
            crate::db::DbError::Sqlx(e) => e.into(),
            // Logged where it was refused; a leased task's run ends here.
            crate::db::DbError::StaleLease(e) => {
                ApiError::new(ErrorCode::Unavailable, e.to_string())
            }
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::internal("internal database error; see the stack manager's log")
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::db::is_unique_violation(&e) {
            return ApiError::conflict("a resource with that name already exists");
        }
        if crate::db::is_foreign_key_violation(&e) {
            return ApiError::conflict("the resource is still referenced by others");
        }
        if let sqlx::Error::Database(d) = &e {
            // PostgreSQL: text it cannot store (e.g. NUL). Input, not a bug.
            if matches!(d.code().as_deref(), Some("22021") | Some("22P05")) {
                return ApiError::invalid("a text field holds characters that cannot be stored");
            }
        }
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the database is unavailable; retry later",
                )
            }
            other => {
                // The details stay in the log: they can describe the schema.
                tracing::error!(error = %other, "database error");
                ApiError::internal("internal database error; see the stack manager's log")
            }
        }
    }
}

impl From<api::ids::IdParseError> for ApiError {
    fn from(e: api::ids::IdParseError) -> Self {
        ApiError::new(ErrorCode::InvalidId, e.to_string())
    }
}

/// `Json<T>` whose rejections are API errors (malformed JSON, unknown fields,
/// wrong content type). Stricter than `axum::Json` in two ways: the body must
/// be a JSON object (serde would accept a struct as an array of its field
/// values), and it may not carry NUL characters (PostgreSQL cannot store
/// them; SQLite would, and the two stores must agree).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| {
                let v = v.trim().to_ascii_lowercase();
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json_type {
            return Err(ApiError::new(
                ErrorCode::MalformedBody,
                "expected `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(ErrorCode::MalformedBody, e.body_text()))?;
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            _ => {
                return Err(ApiError::new(
                    ErrorCode::MalformedBody,
                    "the body must be a JSON object",
                ))
            }
        }
        if contains_nul_escape(&bytes) {
            return Err(ApiError::invalid(
                "strings may not contain NUL characters (\\u0000)",
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiError {
    ApiError::new(ErrorCode::MalformedBody, rej.body_text())
}

/// Whether a JSON text has a `\u0000` escape (a raw NUL byte is not valid
/// JSON and the parser refuses it anyway).
fn contains_nul_escape(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(i, w)| {
        w[0] == b'\\'
            && w[1] == b'u'
            && &w[2..] == b"0000"
            // `\\u0000` is an escaped backslash followed by text, not a NUL.
            && json[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0
    })
}

/// `Path<T>` whose rejections are `invalid_id` errors.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_encoded_nul(parts.uri.path()) {
            return Err(ApiError::new(
                ErrorCode::InvalidId,
                "path may not contain NUL characters",
            ));
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(rej) => Err(path_rejection(rej)),
        }
    }
}

fn path_rejection(rej: PathRejection) -> ApiError {
    ApiError::new(ErrorCode::InvalidId, rej.body_text())
}

/// `Query<T>` whose rejections are `invalid_request` errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if has_encoded_nul(parts.uri.query().unwrap_or("")) {
            return Err(ApiError::invalid("query may not contain NUL characters"));
        }
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(query_rejection(rej)),
        }
    }
}

fn query_rejection(rej: QueryRejection) -> ApiError {
    ApiError::invalid(rej.body_text())
}

fn has_encoded_nul(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

#[cfg(test)]
mod tests {
    use super::contains_nul_escape;

    #[test]
    fn nul_escapes_are_found_but_escaped_backslashes_are_not() {
        assert!(contains_nul_escape(br#"{"a":"x\u0000y"}"#));
        assert!(!contains_nul_escape(br#"{"a":"x\\u0000y"}"#));
        assert!(contains_nul_escape(br#"{"a":"x\\\u0000y"}"#));
        assert!(!contains_nul_escape(br#"{"a":"plain"}"#));
    }
}
