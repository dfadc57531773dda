//! `GET /v1/system/tasks`: the stack manager's background tasks and how
//! their runs went, for operators (`crate::tasks`); `GET
//! /v1/system/replicas`: the replicas serving the database and the leases
//! each holds (`crate::lease`).

use api::resources::{
    ConsistencyCheck, ConsistencyReport, Drift, List, PageParams, Replica, ReplicaLease,
    TaskActivation, TaskState, TaskStatus, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX,
};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::error::{ApiError, ApiQuery, ApiResult};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/system/tasks", get(tasks))
        .route("/v1/system/replicas", get(replicas))
        .route("/v1/system/check", get(check))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(tasks, replicas, check),
    components(schemas(
        TaskStatus,
        TaskState,
        TaskActivation,
        Replica,
        ReplicaLease,
        ConsistencyReport,
        ConsistencyCheck,
        Drift
    ))
)]
pub struct Doc;

/// The list's name in its tokens, so that a token of another list is refused.
const LIST: &str = "tasks";

/// A page token: the name of the last task of the page before. Tasks live
/// in memory, ordered by name, so the keyset is the name alone; the token
/// has the same shape as the database lists' (`store::page`).
#[derive(Serialize, Deserialize)]
struct Token {
    l: String,
    k: [String; 1],
}

fn decode(token: &str) -> ApiResult<String> {
    let bad = || {
        ApiError::invalid(format!(
            "page_token is not a token of the {LIST} list; pass the next_page_token of its previous page"
        ))
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let t: Token = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if t.l != LIST {
        return Err(bad());
    }
    let [name] = t.k;
    Ok(name)
}

fn encode(name: &str) -> String {
    let t = Token {
        l: LIST.into(),
        k: [name.to_string()],
    };
    // A struct of strings always serializes.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&t).unwrap_or_default())
}

#[utoipa::path(get, path = "/v1/system/tasks", tag = "system", params(PageParams),
    responses((status = 200, body = List<TaskStatus>,
               description = "Every background task by name: its period, state, runs, errors, last run and details"),
              (status = 400, body = api::ErrorBody), (status = 403, body = api::ErrorBody)))]
async fn tasks(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<List<TaskStatus>>> {
    caller.require_admin()?;
    let limit = q.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be from 1 to {PAGE_LIMIT_MAX}, not {limit}"
        )));
    }
    let after = match q.page_token.as_deref() {
        None | Some("") => None,
        Some(t) => Some(decode(t)?),
    };
    let (items, more) = state.tasks.statuses(after.as_deref(), limit as usize);
    let next_page_token = match (more, items.last()) {
        (true, Some(last)) => Some(encode(&last.name)),
        _ => None,
    };
    Ok(Json(List {
        items,
        next_page_token,
    }))
}

/// The replicas heard from in the last day, newest first: one page (a
/// cloud runs a handful; a restart is a new replica).
#[utoipa::path(get, path = "/v1/system/replicas", tag = "system",
    responses((status = 200, body = List<Replica>,
               description = "Every replica heard from in the last day: alive or not, and the leases it holds"),
              (status = 403, body = api::ErrorBody)))]
async fn replicas(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<List<Replica>>> {
    caller.require_admin()?;
    Ok(Json(List {
        items: state.leases.replicas().await?,
        next_page_token: None,
    }))
}

/// Every derived figure (quota usage, host allocations) recomputed from
/// the rows themselves, and the relations that must hold (addresses and
/// attachments of live instances): read-only, safe on a live cloud.
#[utoipa::path(get, path = "/v1/system/check", tag = "system",
    responses((status = 200, body = ConsistencyReport,
               description = "What each check looked at and every drift it found; `consistent` is false when there is any"),
              (status = 403, body = api::ErrorBody)))]
async fn check(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<ConsistencyReport>> {
    caller.require_admin()?;
    Ok(Json(state.store.consistency_check().await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(decode(&encode("reconciler/x")).unwrap(), "reconciler/x");
        let other = URL_SAFE_NO_PAD.encode(br#"{"l":"instances","k":["a"]}"#);
        assert!(decode(&other).is_err());
        assert!(decode("not base64 !").is_err());
        let wrong_shape = URL_SAFE_NO_PAD.encode(br#"{"l":"tasks","k":[1,2]}"#);
        assert!(decode(&wrong_shape).is_err());
    }
}
