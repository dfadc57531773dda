//! The public REST API: one module per resource, each with its routes and
//! its OpenAPI fragment.

pub mod audit;
pub mod flavors;
pub mod groups;
pub mod hosts;
pub mod images;
pub mod instances;
pub mod keypairs;
pub mod networks;
pub mod projects;
pub mod quotas;
pub mod system;
pub mod usage;
pub mod users;
pub mod validate;
pub mod volumes;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{middleware, Json, Router};
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::state::AppState;

/// Every `/v1` route, behind authentication and auditing, plus the
/// unauthenticated health, OpenAPI and metrics endpoints.
pub fn router(state: AppState) -> Router {
    let authenticated = Router::new()
        .merge(projects::router())
        .merge(users::router())
        .merge(flavors::router())
        .merge(images::router())
        .merge(keypairs::router())
        .merge(networks::router())
        .merge(instances::router())
        .merge(volumes::router())
        .merge(groups::router())
        .merge(quotas::router())
        .merge(hosts::router())
        .merge(audit::router())
        .merge(usage::router())
        .merge(system::router())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            crate::auth::authenticate,
        ));
    Router::new()
        .merge(authenticated)
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/metrics", get(crate::metrics::serve))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

async fn not_found() -> ApiError {
    ApiError::new(
        api::ErrorCode::NotFound,
        "no such endpoint; see /v1/openapi.json",
    )
}

async fn method_not_allowed() -> (StatusCode, Json<api::ErrorBody>) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(api::ErrorBody {
            error: api::ErrorCode::InvalidRequest,
            message: "method not allowed on this endpoint".into(),
        }),
    )
}

/// Every module's OpenAPI fragment, merged in `openapi::document`.
pub fn docs() -> Vec<utoipa::openapi::OpenApi> {
    vec![
        projects::Doc::openapi(),
        users::Doc::openapi(),
        flavors::Doc::openapi(),
        images::Doc::openapi(),
        keypairs::Doc::openapi(),
        networks::Doc::openapi(),
        instances::Doc::openapi(),
        volumes::Doc::openapi(),
        groups::Doc::openapi(),
        quotas::Doc::openapi(),
        hosts::Doc::openapi(),
        audit::Doc::openapi(),
        usage::Doc::openapi(),
        system::Doc::openapi(),
    ]
}
