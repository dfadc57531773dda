//! `/v1/keypairs`: SSH public keys a project injects into its instances.
//! Only the public half is ever accepted, and it is stored in the normalized
//! form OpenSSH itself writes, so what the instance gets is a valid line.

use api::ids::{KeypairId, ProjectId};
use api::resources::{Keypair, KeypairCreate, List, ProjectScope};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use sqlx::any::AnyRow;

use crate::auth::Caller;
use crate::db::{from_ms, now_ms, RowExt};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

/// Far above any real key (RSA-16384 is about 2.8 KiB as a line).
const MAX_KEY_LEN: usize = 16 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/keypairs", get(list).post(create))
        .route("/v1/keypairs/{id}", get(show).delete(delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, delete),
    components(schemas(Keypair, KeypairCreate))
)]
pub struct Doc;

fn from_row(r: &AnyRow) -> Result<Keypair, sqlx::Error> {
    Ok(Keypair {
        id: r.id("id")?,
        project_id: r.id("project_id")?,
        name: r.text("name")?,
        public_key: r.text("public_key")?,
        fingerprint: r.text("fingerprint")?,
        created_at: r.time("created_at")?,
    })
}

/// A keypair of `project` by id or name.
pub async fn resolve(state: &AppState, project: ProjectId, id_or_name: &str) -> ApiResult<Keypair> {
    let row =
        sqlx::query("SELECT * FROM keypairs WHERE project_id = $2 AND (id = $1 OR name = $1)")
            .bind(id_or_name)
            .bind(project.to_string())
            .fetch_optional(&state.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("keypair", id_or_name))?;
    Ok(from_row(&row)?)
}

async fn load(state: &AppState, id: KeypairId) -> ApiResult<Keypair> {
    let row = sqlx::query("SELECT * FROM keypairs WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("keypair", id))?;
    Ok(from_row(&row)?)
}

/// Parses one OpenSSH public key line; returns the normalized line (comment
/// kept) and its SHA-256 fingerprint.
fn parse_public_key(input: &str) -> ApiResult<(String, String)> {
    let line = input.trim();
    if line.contains("PRIVATE KEY") {
        return Err(ApiError::invalid(
            "public_key is a private key: never send it anywhere; use the `.pub` file next to it",
        ));
    }
    if line.is_empty() || line.len() > MAX_KEY_LEN {
        return Err(ApiError::invalid(format!(
            "public_key must be one OpenSSH public key line of 1 to {MAX_KEY_LEN} characters"
        )));
    }
    if line.contains(['\n', '\r']) {
        return Err(ApiError::invalid(
            "public_key must be a single line: give one key per keypair",
        ));
    }
    let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
        ApiError::invalid(format!(
            "public_key is not an OpenSSH public key (expected e.g. `ssh-ed25519 AAAA... comment`): {e}"
        ))
    })?;
    let normalized = key
        .to_openssh()
        .map_err(|e| ApiError::invalid(format!("public_key cannot be re-encoded: {e}")))?;
    let fingerprint = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
    Ok((normalized, fingerprint))
}

#[utoipa::path(get, path = "/v1/keypairs", tag = "keypairs", params(ProjectScope),
    responses((status = 200, body = List<Keypair>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
) -> ApiResult<Json<List<Keypair>>> {
    let project = caller
        .project_for_read(&state.store, scope.project.as_deref())
        .await?;
    let rows = match project {
        Some(p) => {
            sqlx::query("SELECT * FROM keypairs WHERE project_id = $1 ORDER BY name")
                .bind(p.to_string())
                .fetch_all(&state.db.pool)
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM keypairs ORDER BY project_id, name")
                .fetch_all(&state.db.pool)
                .await?
        }
    };
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(items.into()))
}

#[utoipa::path(post, path = "/v1/keypairs", tag = "keypairs", request_body = KeypairCreate, params(ProjectScope),
    responses((status = 201, body = Keypair), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<KeypairCreate>,
) -> ApiResult<(StatusCode, Json<Keypair>)> {
    let project = caller
        .project_for_write(&state.store, scope.project.as_deref(), "keypair")
        .await?;
    validate::name("keypair", &body.name)?;
    let (public_key, fingerprint) = parse_public_key(&body.public_key)?;
    let keypair = Keypair {
        id: KeypairId::new(),
        project_id: project,
        name: body.name,
        public_key,
        fingerprint,
        created_at: from_ms(now_ms()),
    };
    let mut tx = state.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO keypairs (id, project_id, name, public_key, fingerprint, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(keypair.id.to_string())
    .bind(project.to_string())
    .bind(&keypair.name)
    .bind(&keypair.public_key)
    .bind(&keypair.fingerprint)
    .bind(keypair.created_at.timestamp_millis())
    .execute(&mut **tx)
    .await
    .map_err(|e| match crate::db::is_unique_violation(&e) {
        true => ApiError::conflict(format!(
            "a keypair named `{}` already exists in this project",
            keypair.name
        )),
        false => e.into(),
    })?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(keypair)))
}

#[utoipa::path(get, path = "/v1/keypairs/{id}", tag = "keypairs",
    params(("id" = KeypairId, Path)),
    responses((status = 200, body = Keypair), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<KeypairId>,
) -> ApiResult<Json<Keypair>> {
    let keypair = load(&state, id).await?;
    caller.check_read(keypair.project_id, "keypair", id)?;
    Ok(Json(keypair))
}

/// Instances keep running with the key they were given; only new instances
/// can no longer use it (the schema nulls their reference).
#[utoipa::path(delete, path = "/v1/keypairs/{id}", tag = "keypairs",
    params(("id" = KeypairId, Path)),
    responses((status = 204), (status = 403, body = api::ErrorBody), (status = 404, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<KeypairId>,
) -> ApiResult<StatusCode> {
    let keypair = load(&state, id).await?;
    caller.check_write(keypair.project_id, "keypair", id)?;
    let mut tx = state.db.begin_write().await?;
    let done = sqlx::query("DELETE FROM keypairs WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("keypair", id));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::parse_public_key;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti foo@bar.com";

    #[test]
    fn accepts_and_normalizes_a_public_key() {
        let (line, fp) = parse_public_key(&format!("  {ED25519}\n")).unwrap();
        assert_eq!(line, ED25519);
        assert!(fp.starts_with("SHA256:"), "{fp}");
    }

    #[test]
    fn rejects_private_keys_garbage_and_several_lines() {
        for bad in [
            "",
            "hello",
            "ssh-ed25519 AAAA",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            &format!("{ED25519}\n{ED25519}"),
        ] {
            assert!(parse_public_key(bad).is_err(), "{bad:?}");
        }
        let err = parse_public_key("-----BEGIN RSA PRIVATE KEY-----").unwrap_err();
        assert!(err.message.contains("private key"));
    }
}
