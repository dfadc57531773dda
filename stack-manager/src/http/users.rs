//! `/v1/users`, `/v1/tokens`, `/v1/whoami`: people and their API tokens.
//! Admins manage users and may mint or revoke anyone's tokens; everyone else
//! sees only themselves and their own tokens.

use std::collections::HashMap;

use api::ids::{TokenId, UserId};
use api::resources::{
    List, Membership, ProjectRole, Token, TokenCreate, TokenCreated, User, UserCreate, WhoAmI,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use sqlx::any::AnyRow;

use crate::auth::{hash_secret, new_secret, Caller};
use crate::db::{from_ms, now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

/// Ten years: long-lived automation tokens are fine, "forever" must be explicit.
const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 365 * 24 * 3600;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/users", get(list).post(create))
        .route("/v1/users/{user}", get(show).delete(remove))
        .route("/v1/users/{user}/tokens", post(token_create_for))
        .route("/v1/tokens", get(token_list).post(token_create))
        .route("/v1/tokens/{id}", delete(token_delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        whoami,
        list,
        create,
        show,
        remove,
        token_create,
        token_create_for,
        token_list,
        token_delete
    ),
    components(schemas(
        User,
        UserCreate,
        Membership,
        ProjectRole,
        Token,
        TokenCreate,
        TokenCreated,
        WhoAmI
    ))
)]
pub struct Doc;

/// `GET /v1/tokens?user=`: admins may list another user's tokens.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokenListQuery {
    /// User id or name (admins only); defaults to the caller.
    pub user: Option<String>,
}

/// A user by id or name; 404 when absent.
pub async fn resolve(state: &AppState, id_or_name: &str) -> ApiResult<UserId> {
    let row = sqlx::query("SELECT id FROM users WHERE id = $1 OR name = $1")
        .bind(id_or_name)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id_or_name))?;
    Ok(row.id("id")?)
}

pub async fn user_get(state: &AppState, id: UserId) -> ApiResult<User> {
    let row = sqlx::query("SELECT * FROM users WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("user", id))?;
    let rows = sqlx::query(
        "SELECT m.user_id, m.project_id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id \
         WHERE m.user_id = $1 ORDER BY p.name",
    )
    .bind(id.to_string())
    .fetch_all(&state.db.pool)
    .await?;
    let mut memberships = memberships_by_user(&rows)?;
    Ok(user_from_row(
        &row,
        memberships.remove(&id).unwrap_or_default(),
    )?)
}

fn user_from_row(r: &AnyRow, memberships: Vec<Membership>) -> Result<User, sqlx::Error> {
    Ok(User {
        id: r.id("id")?,
        name: r.text("name")?,
        admin: r.int("admin")? != 0,
        memberships,
        created_at: r.time("created_at")?,
    })
}

/// Groups membership rows (`user_id, project_id, name, role`) by user.
fn memberships_by_user(rows: &[AnyRow]) -> Result<HashMap<UserId, Vec<Membership>>, sqlx::Error> {
    let mut by_user: HashMap<UserId, Vec<Membership>> = HashMap::new();
    for r in rows {
        by_user
            .entry(r.id("user_id")?)
            .or_default()
            .push(Membership {
                project_id: r.id("project_id")?,
                project_name: r.text("name")?,
                role: r.parsed("role", ProjectRole::parse)?,
            });
    }
    Ok(by_user)
}

/// The user a caller names, as far as they may see it: admins see everyone,
/// others only themselves (anyone else is "not found", never "forbidden",
/// so user names do not leak).
async fn visible_user(state: &AppState, caller: &Caller, id_or_name: &str) -> ApiResult<UserId> {
    let id = resolve(state, id_or_name).await?;
    if caller.admin || id == caller.user_id {
        Ok(id)
    } else {
        Err(ApiError::not_found("user", id_or_name))
    }
}

#[utoipa::path(get, path = "/v1/whoami", tag = "users",
    responses((status = 200, body = WhoAmI), (status = 401, body = api::ErrorBody)))]
async fn whoami(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<WhoAmI>> {
    let user = user_get(&state, caller.user_id).await?;
    Ok(Json(WhoAmI { user }))
}

#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = List<User>)))]
async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<User>>> {
    if !caller.admin {
        return Ok(Json(vec![user_get(&state, caller.user_id).await?].into()));
    }
    let users = sqlx::query("SELECT * FROM users ORDER BY name")
        .fetch_all(&state.db.pool)
        .await?;
    let rows = sqlx::query(
        "SELECT m.user_id, m.project_id, p.name, m.role FROM memberships m JOIN projects p ON p.id = m.project_id \
         ORDER BY p.name",
    )
    .fetch_all(&state.db.pool)
    .await?;
    let mut memberships = memberships_by_user(&rows)?;
    let items = users
        .iter()
        .map(|r| {
            let id: UserId = r.id("id")?;
            user_from_row(r, memberships.remove(&id).unwrap_or_default())
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = UserCreate,
    responses((status = 201, body = User), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UserCreate>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require_admin()?;
    validate::name("user", &body.name)?;
    let user = User {
        id: UserId::new(),
        name: body.name,
        admin: body.admin,
        memberships: Vec::new(),
        created_at: from_ms(now_ms()),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query("INSERT INTO users (id, name, admin, created_at) VALUES ($1, $2, $3, $4)")
        .bind(user.id.to_string())
        .bind(&user.name)
        .bind(i64::from(user.admin))
        .bind(user.created_at.timestamp_millis())
        .execute(&mut **tx)
        .await
        .map_err(|e| match crate::db::is_unique_violation(&e) {
            true => ApiError::conflict(format!("a user named `{}` already exists", user.name)),
            false => e.into(),
        })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(get, path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "User id or name")),
    responses((status = 200, body = User), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> ApiResult<Json<User>> {
    let id = visible_user(&state, &caller, &user).await?;
    Ok(Json(user_get(&state, id).await?))
}

#[utoipa::path(delete, path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "User id or name")),
    responses((status = 204), (status = 403, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let id = resolve(&state, &user).await?;
    if id == caller.user_id {
        return Err(ApiError::conflict(
            "you cannot delete yourself; ask another admin",
        ));
    }
    let mut tx = state.db.begin_write().await?;
    // Lock every admin row before counting them, so that on PostgreSQL two
    // concurrent deletes of the last two admins cannot both see two.
    sqlx::query("UPDATE users SET admin = admin WHERE admin = 1")
        .execute(&mut **tx)
        .await?;
    // Counted inside the transaction so two concurrent deletes cannot both
    // pass the check and leave no admin at all.
    let row = sqlx::query(
        "SELECT admin, (SELECT COUNT(*) FROM users WHERE admin = 1) AS admins FROM users WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("user", &user))?;
    if row.int("admin")? != 0 && row.int("admins")? <= 1 {
        return Err(ApiError::conflict(format!(
            "`{user}` is the last admin; make someone else an admin first"
        )));
    }
    for sql in [
        "DELETE FROM tokens WHERE user_id = $1",
        "DELETE FROM memberships WHERE user_id = $1",
        "DELETE FROM users WHERE id = $1",
    ] {
        sqlx::query(sql)
            .bind(id.to_string())
            .execute(&mut **tx)
            .await?;
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn token_from_row(r: &AnyRow) -> Result<Token, sqlx::Error> {
    Ok(Token {
        id: r.id("id")?,
        user_id: r.id("user_id")?,
        description: r.text("description")?,
        created_at: r.time("created_at")?,
        expires_at: r.opt_time("expires_at")?,
    })
}

/// Mints a token for `user`; the secret is returned once and only its hash kept.
async fn token_insert(
    state: &AppState,
    user: UserId,
    body: TokenCreate,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    if body.description.len() > 1024 {
        return Err(ApiError::invalid(
            "description is longer than 1024 characters",
        ));
    }
    if let Some(secs) = body.expires_in_secs {
        validate::range("expires_in_secs", secs, 1, MAX_TOKEN_LIFETIME_SECS)?;
    }
    let now = now_ms();
    // In range after the check above: at most ten years of milliseconds.
    let expires = body
        .expires_in_secs
        .map(|s| now + validate::to_i64(s) * 1000);
    let secret = new_secret("strato");
    let token = Token {
        id: TokenId::new(),
        user_id: user,
        description: body.description,
        created_at: from_ms(now),
        expires_at: expires.map(from_ms),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO tokens (id, user_id, secret_hash, description, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token.id.to_string())
    .bind(user.to_string())
    .bind(hash_secret(&secret))
    .bind(&token.description)
    .bind(now)
    .bind(expires)
    .execute(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { token, secret })))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "users", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 400, body = api::ErrorBody)))]
async fn token_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TokenCreate>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    token_insert(&state, caller.user_id, body).await
}

#[utoipa::path(post, path = "/v1/users/{user}/tokens", tag = "users", request_body = TokenCreate,
    params(("user" = String, Path, description = "User id or name")),
    responses((status = 201, body = TokenCreated), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 404, body = api::ErrorBody)))]
async fn token_create_for(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<TokenCreate>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    caller.require_admin()?;
    let id = resolve(&state, &user).await?;
    token_insert(&state, id, body).await
}

#[utoipa::path(get, path = "/v1/tokens", tag = "users", params(TokenListQuery),
    responses((status = 200, body = List<Token>), (status = 404, body = api::ErrorBody)))]
async fn token_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TokenListQuery>,
) -> ApiResult<Json<List<Token>>> {
    let user = match q.user.as_deref() {
        Some(u) if !u.is_empty() => visible_user(&state, &caller, u).await?,
        _ => caller.user_id,
    };
    let rows = sqlx::query("SELECT * FROM tokens WHERE user_id = $1 ORDER BY created_at, id")
        .bind(user.to_string())
        .fetch_all(&state.db.pool)
        .await?;
    let items = rows
        .iter()
        .map(token_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "users",
    params(("id" = TokenId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
async fn token_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<TokenId>,
) -> ApiResult<StatusCode> {
    let mut tx = state.db.begin_write().await?;
    // Someone else's token is "not found" for non-admins: ids do not leak.
    let done = sqlx::query("DELETE FROM tokens WHERE id = $1 AND (user_id = $2 OR $3 = 1)")
        .bind(id.to_string())
        .bind(caller.user_id.to_string())
        .bind(i64::from(caller.admin))
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("token", id));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
