//! `/v1/keypairs`: SSH public keys a project injects into its instances.
//! Only the public half is ever accepted, and it is stored in the normalized
//! form OpenSSH itself writes, so what the instance gets is a valid line.

use api::ids::KeypairId;
use api::resources::{Keypair, KeypairCreate, List, ProjectPage, ProjectScope};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;
use crate::store::keypairs::NewKeypair;

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

#[utoipa::path(get, path = "/v1/keypairs", tag = "keypairs", params(ProjectPage),
    responses((status = 200, body = List<Keypair>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Keypair>>> {
    Ok(Json(state.store.keypair_list(&caller, &q).await?))
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
    let project = state
        .store
        .project_for_write(&caller, scope.project.as_deref(), "keypair")
        .await?;
    validate::name("keypair", &body.name)?;
    let (public_key, fingerprint) = parse_public_key(&body.public_key)?;
    let new = NewKeypair {
        name: body.name,
        public_key,
        fingerprint,
    };
    let keypair = state.store.keypair_create(&caller, project, new).await?;
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
    Ok(Json(state.store.keypair_get(&caller, id).await?))
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
    state.store.keypair_delete(&caller, id).await?;
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
