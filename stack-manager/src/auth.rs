//! Authentication: bearer tokens (stored as SHA-256) resolved into a
//! [`Caller`] once per request, with a short cache.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

pub use crate::caller::Caller;
use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
pub use crate::secrets::{hash_secret, new_secret};
use crate::state::AppState;

pub fn bearer(parts: &axum::http::HeaderMap) -> Option<&str> {
    let value = parts
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Recently resolved callers by token hash. Every request would otherwise
/// cost two queries before it does anything. Entries live a few seconds and
/// the whole cache is dropped by any change to users, tokens or projects made
/// through this stack manager; another replica's change shows within the TTL.
#[derive(Default)]
pub struct CallerCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
}

const CALLER_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl CallerCache {
    fn get(&self, hash: &str) -> Option<Caller> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < CALLER_TTL)
            .map(|(c, _)| c.clone())
    }

    fn put(&self, hash: String, caller: Caller) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 10_000 {
            entries.retain(|_, (_, at)| at.elapsed() < CALLER_TTL);
        }
        entries.insert(hash, (caller, std::time::Instant::now()));
    }

    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Whether a mutating request may change who a token stands for.
fn changes_identity(path: &str) -> bool {
    ["/v1/users", "/v1/tokens", "/v1/projects"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// Looks up the caller of a bearer token; `None` for unknown or expired ones.
pub async fn caller_for_token(state: &AppState, secret: &str) -> ApiResult<Option<Caller>> {
    let hash = hash_secret(secret);
    if let Some(c) = state.callers.get(&hash) {
        if c.expires_at.is_none_or(|e| e > now_ms()) {
            return Ok(Some(c));
        }
    }
    let caller = state.store.token_authenticate(&hash).await?;
    if let Some(c) = &caller {
        state.callers.put(hash, c.clone());
    }
    Ok(caller)
}

/// Middleware for `/v1`: resolves the caller, rejects anonymous calls, and
/// records every mutating call in the audit log.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let caller = match bearer(req.headers()) {
        None => Err(ApiError::unauthenticated(
            "missing `Authorization: Bearer <token>`; get a token with `strato login`",
        )),
        Some(secret) => match caller_for_token(&state, secret).await {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(ApiError::unauthenticated("unknown or expired token")),
            Err(e) => Err(e),
        },
    };
    let mutating = !matches!(
        method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let (resp, who) = match caller {
        Ok(c) => {
            let who = Some((c.user_id, c.user_name.clone()));
            req.extensions_mut().insert(c);
            (next.run(req).await, who)
        }
        Err(e) => (e.into_response(), None),
    };
    if mutating && changes_identity(&path) {
        state.callers.clear();
    }
    if mutating {
        let code = resp.extensions().get::<api::ErrorCode>().copied();
        state.audit.record(crate::audit::Entry {
            at: now_ms(),
            user: who,
            method: method.to_string(),
            path,
            status: resp.status().as_u16(),
            result: code
                .map(|c| c.as_str().to_string())
                .unwrap_or_else(|| "ok".into()),
        });
    }
    resp
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("missing `Authorization: Bearer <token>`"))
    }
}
