//! `/v1/anti-affinity-groups`: sets of instances the scheduler never puts on
//! the same host. Membership is a property of the instance (chosen when it is
//! created); a group lists its live members and cannot go while it has any.

use std::collections::HashMap;

use api::ids::{GroupId, InstanceId, ProjectId};
use api::resources::{Group, GroupCreate, List, ProjectScope};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::Caller;
use crate::db::{from_ms, lock_row, now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/anti-affinity-groups", get(list).post(create))
        .route("/v1/anti-affinity-groups/{id}", get(show).delete(delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, delete),
    components(schemas(Group, GroupCreate))
)]
pub struct Doc;

/// Groups matching `filter` (a `WHERE` clause over `anti_affinity_groups g`
/// whose placeholders are bound to `binds`), with their live members: two
/// queries however many groups there are.
async fn query_groups(state: &AppState, filter: &str, binds: &[&str]) -> ApiResult<Vec<Group>> {
    let groups_sql = format!(
        "SELECT g.* FROM anti_affinity_groups g WHERE {filter} ORDER BY g.project_id, g.name"
    );
    let members_sql = format!(
        "SELECT i.group_id, i.id FROM instances i JOIN anti_affinity_groups g ON g.id = i.group_id \
         WHERE i.deleted_at IS NULL AND {filter} ORDER BY i.created_at, i.id"
    );
    let mut groups = sqlx::query(&groups_sql);
    let mut members = sqlx::query(&members_sql);
    for b in binds {
        groups = groups.bind(*b);
        members = members.bind(*b);
    }
    let groups = groups.fetch_all(&state.db.pool).await?;
    let members = members.fetch_all(&state.db.pool).await?;
    let mut by_group: HashMap<GroupId, Vec<InstanceId>> = HashMap::new();
    for m in &members {
        by_group
            .entry(m.id("group_id")?)
            .or_default()
            .push(m.id("id")?);
    }
    let items = groups
        .iter()
        .map(|r| from_row(r, &mut by_group))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(items)
}

fn from_row(
    r: &AnyRow,
    members: &mut HashMap<GroupId, Vec<InstanceId>>,
) -> Result<Group, sqlx::Error> {
    let id: GroupId = r.id("id")?;
    Ok(Group {
        id,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        members: members.remove(&id).unwrap_or_default(),
        created_at: r.time("created_at")?,
    })
}

/// A group of `project` by id or name.
pub async fn resolve(state: &AppState, project: ProjectId, id_or_name: &str) -> ApiResult<Group> {
    query_groups(
        state,
        "g.project_id = $2 AND (g.id = $1 OR g.name = $1)",
        &[id_or_name, &project.to_string()],
    )
    .await?
    .pop()
    .ok_or_else(|| ApiError::not_found("anti-affinity group", id_or_name))
}

async fn load(state: &AppState, id: GroupId) -> ApiResult<Group> {
    query_groups(state, "g.id = $1", &[&id.to_string()])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("anti-affinity group", id))
}

#[utoipa::path(get, path = "/v1/anti-affinity-groups", tag = "anti-affinity-groups", params(ProjectScope),
    responses((status = 200, body = List<Group>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
) -> ApiResult<Json<List<Group>>> {
    let project = caller
        .project_for_read(&state.store, scope.project.as_deref())
        .await?;
    let items = match project {
        Some(p) => query_groups(&state, "g.project_id = $1", &[&p.to_string()]).await?,
        None => query_groups(&state, "1 = 1", &[]).await?,
    };
    Ok(Json(items.into()))
}

#[utoipa::path(post, path = "/v1/anti-affinity-groups", tag = "anti-affinity-groups",
    request_body = GroupCreate, params(ProjectScope),
    responses((status = 201, body = Group), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<GroupCreate>,
) -> ApiResult<(StatusCode, Json<Group>)> {
    let project = caller
        .project_for_write(
            &state.store,
            scope.project.as_deref(),
            "anti-affinity group",
        )
        .await?;
    validate::name("anti-affinity group", &body.name)?;
    let group = Group {
        id: GroupId::new(),
        project_id: project,
        name: body.name,
        members: Vec::new(),
        created_at: from_ms(now_ms()),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO anti_affinity_groups (id, project_id, name, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(group.id.to_string())
    .bind(project.to_string())
    .bind(&group.name)
    .bind(group.created_at.timestamp_millis())
    .execute(&mut **tx)
    .await
    .map_err(|e| match crate::db::is_unique_violation(&e) {
        true => ApiError::conflict(format!(
            "an anti-affinity group named `{}` already exists in this project",
            group.name
        )),
        false => e.into(),
    })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(group)))
}

#[utoipa::path(get, path = "/v1/anti-affinity-groups/{id}", tag = "anti-affinity-groups",
    params(("id" = GroupId, Path)),
    responses((status = 200, body = Group), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<GroupId>,
) -> ApiResult<Json<Group>> {
    let group = load(&state, id).await?;
    caller.check_read(group.project_id, "anti-affinity group", id)?;
    Ok(Json(group))
}

#[utoipa::path(delete, path = "/v1/anti-affinity-groups/{id}", tag = "anti-affinity-groups",
    params(("id" = GroupId, Path)),
    responses((status = 204), (status = 403, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<GroupId>,
) -> ApiResult<StatusCode> {
    let group = load(&state, id).await?;
    caller.check_write(group.project_id, "anti-affinity group", id)?;
    let mut tx = state.db.begin_write().await?;
    // Instance creation locks the group row too, so no member can join
    // between this count and the delete.
    if !lock_row(&mut tx, "anti_affinity_groups", &id.to_string()).await? {
        return Err(ApiError::not_found("anti-affinity group", id));
    }
    let members = sqlx::query(
        "SELECT COUNT(*) AS n FROM instances WHERE group_id = $1 AND deleted_at IS NULL",
    )
    .bind(id.to_string())
    .fetch_one(&mut **tx)
    .await?
    .int("n")?;
    if members > 0 {
        return Err(ApiError::conflict(format!(
            "anti-affinity group `{}` still has {members} instance(s); delete them first",
            group.name
        )));
    }
    sqlx::query("DELETE FROM anti_affinity_groups WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
