//! `/v1/users`, `/v1/tokens`, `/v1/whoami`: people and their API tokens.
//! Admins manage users and may mint or revoke anyone's tokens; everyone else
//! sees only themselves and their own tokens.

use api::ids::TokenId;
use api::resources::{
    List, Membership, PageParams, ProjectRole, Token, TokenCreate, TokenCreated, TokenListQuery,
    User, UserCreate, WhoAmI,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};

use crate::auth::Caller;
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

#[utoipa::path(get, path = "/v1/whoami", tag = "users",
    responses((status = 200, body = WhoAmI), (status = 401, body = api::ErrorBody)))]
async fn whoami(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<WhoAmI>> {
    let user = state.store.user_whoami(&caller).await?;
    Ok(Json(WhoAmI { user }))
}

#[utoipa::path(get, path = "/v1/users", tag = "users", params(PageParams),
    responses((status = 200, body = List<User>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<List<User>>> {
    Ok(Json(state.store.user_list(&caller, &q).await?))
}

#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = UserCreate,
    responses((status = 201, body = User), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UserCreate>,
) -> ApiResult<(StatusCode, Json<User>)> {
    // Before the body, as ever (the store checks again).
    caller.require_admin()?;
    validate::name("user", &body.name)?;
    let user = state.store.user_create(&caller, body).await?;
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
    Ok(Json(state.store.user_get(&caller, &user).await?))
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
    state.store.user_delete(&caller, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks a token's description and lifetime before anything is written.
fn check_token(body: &TokenCreate) -> ApiResult<()> {
    if body.description.len() > 1024 {
        return Err(ApiError::invalid(
            "description is longer than 1024 characters",
        ));
    }
    if let Some(secs) = body.expires_in_secs {
        validate::range("expires_in_secs", secs, 1, MAX_TOKEN_LIFETIME_SECS)?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/tokens", tag = "users", request_body = TokenCreate,
    responses((status = 201, body = TokenCreated), (status = 400, body = api::ErrorBody)))]
async fn token_create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TokenCreate>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    check_token(&body)?;
    let created = state
        .store
        .token_create(&caller, caller.user_id, body)
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
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
    let id = state.store.user_resolve(&user).await?;
    check_token(&body)?;
    let created = state.store.token_create(&caller, id, body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "users", params(TokenListQuery),
    responses((status = 200, body = List<Token>), (status = 400, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody)))]
async fn token_list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TokenListQuery>,
) -> ApiResult<Json<List<Token>>> {
    Ok(Json(state.store.token_list(&caller, &q).await?))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "users",
    params(("id" = TokenId, Path)),
    responses((status = 204), (status = 404, body = api::ErrorBody)))]
async fn token_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<TokenId>,
) -> ApiResult<StatusCode> {
    state.store.token_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
