//! Authentication (bearer tokens, stored as SHA-256) and authorization.
//!
//! Roles: `admin` is global (operators); `member` and `reader` are per
//! project. A caller with no role in a project gets 404 for its resources,
//! so existence is never leaked; a reader who tries to change something gets
//! 403.

use api::ids::{ProjectId, UserId};
use api::resources::ProjectRole;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::store::Store;

/// Who is calling, resolved once per request by [`authenticate`].
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: UserId,
    pub user_name: String,
    pub admin: bool,
    pub memberships: Vec<(ProjectId, ProjectRole)>,
    /// Names of the projects in `memberships`, so that `?project=<name>`
    /// needs no query for the caller's own projects.
    pub project_names: Vec<(String, ProjectId)>,
    /// When the token presented expires (ms), if it does.
    pub expires_at: Option<i64>,
}

/// A new random secret with a recognisable prefix (so leaked tokens can be
/// found by secret scanners).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}_{}", hex::encode(bytes))
}

/// Secrets are 256 random bits, so a fast hash is enough: nothing to brute-force.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn bearer(parts: &axum::http::HeaderMap) -> Option<&str> {
    let value = parts
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Caller {
    pub fn role_in(&self, project: ProjectId) -> Option<ProjectRole> {
        self.memberships
            .iter()
            .find(|(p, _)| *p == project)
            .map(|(_, r)| *r)
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this action needs the admin role"))
        }
    }

    /// Reading a resource of `project`: admins and any role; others see 404.
    pub fn check_read(
        &self,
        project: ProjectId,
        kind: &str,
        id: impl std::fmt::Display,
    ) -> ApiResult<()> {
        if self.admin || self.role_in(project).is_some() {
            Ok(())
        } else {
            Err(ApiError::not_found(kind, id))
        }
    }

    /// Changing a resource of `project`: admins and members; readers get 403,
    /// strangers 404.
    pub fn check_write(
        &self,
        project: ProjectId,
        kind: &str,
        id: impl std::fmt::Display,
    ) -> ApiResult<()> {
        if self.admin {
            return Ok(());
        }
        match self.role_in(project) {
            Some(ProjectRole::Member) => Ok(()),
            Some(ProjectRole::Reader) => Err(ApiError::forbidden(format!(
                "the reader role cannot change {kind}s"
            ))),
            None => Err(ApiError::not_found(kind, id)),
        }
    }

    /// The project a create acts in: `?project=` (id or name) or the caller's
    /// only project.
    pub async fn project_for_write(
        &self,
        store: &Store,
        scope: Option<&str>,
        kind: &str,
    ) -> ApiResult<ProjectId> {
        let project = self.project_for_read(store, scope).await?;
        match project {
            Some(p) => {
                self.check_write(p, "project", p)
                    .map_err(|e| match e.code {
                        api::ErrorCode::Forbidden => {
                            ApiError::forbidden(format!("the reader role cannot create {kind}s"))
                        }
                        _ => e,
                    })?;
                Ok(p)
            }
            // An admin naming no project acts in their own, if they have one.
            None => match self.memberships.as_slice() {
                [(only, _)] => Ok(*only),
                _ => Err(ApiError::invalid(format!(
                    "say which project the new {kind} belongs to with ?project=<id or name>"
                ))),
            },
        }
    }

    /// The project a list acts in. `None` means every project, which only
    /// admins get when they name none.
    pub async fn project_for_read(
        &self,
        store: &Store,
        scope: Option<&str>,
    ) -> ApiResult<Option<ProjectId>> {
        match scope {
            Some(s) if !s.is_empty() => {
                let own = self
                    .project_names
                    .iter()
                    .find(|(name, id)| name == s || id.to_string() == s)
                    .map(|(_, id)| *id);
                let id = match own {
                    Some(id) => id,
                    None => store.project_resolve(s).await?,
                };
                self.check_read(id, "project", s)?;
                Ok(Some(id))
            }
            _ => {
                if self.admin {
                    return Ok(None);
                }
                match self.memberships.as_slice() {
                    [(only, _)] => Ok(Some(*only)),
                    [] => Err(ApiError::forbidden("you are not a member of any project")),
                    _ => Err(ApiError::invalid(
                        "you belong to several projects: choose one with ?project=<id or name>",
                    )),
                }
            }
        }
    }
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
