//! `/v1/images`: the disks instances boot from. Public images are an
//! operator's catalogue (no project, visible to all); private ones belong to
//! a project. A project's private image shadows a public one of the same name.

use api::ids::ImageId;
use api::resources::{
    Image, ImageCreate, ImageFormat, List, ProjectPage, ProjectScope, Visibility,
};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use crate::auth::Caller;
use crate::db::{from_ms, now_ms};
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::http::validate;
use crate::state::AppState;

const MAX_SOURCE_LEN: usize = 2048;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/images", get(list).post(create))
        .route("/v1/images/{id}", get(show).delete(delete))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, create, show, delete),
    components(schemas(Image, ImageCreate, ImageFormat, Visibility))
)]
pub struct Doc;

/// Image names may contain dots (`ubuntu-24.04`), otherwise the usual rules.
fn check_name(name: &str) -> ApiResult<()> {
    validate::name("image", &name.replace('.', "-")).map_err(|_| {
        ApiError::invalid(format!(
            "image name `{}` is invalid: use 1-63 characters of a-z, 0-9, '-' and '.', starting with a letter",
            name.chars().take(80).collect::<String>()
        ))
    })
}

fn check_sha256(sha: &str) -> ApiResult<()> {
    if sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "sha256 must be 64 lower-case hex characters",
        ))
    }
}

/// Agents fetch `source` themselves, so only forms they can fetch safely
/// are accepted: an http(s) URL with a host, or an absolute path that cannot
/// climb out of wherever the operator put images.
fn check_source(source: &str) -> ApiResult<()> {
    let bad = |why: &str| Err(ApiError::invalid(format!("source {why}")));
    if source.len() > MAX_SOURCE_LEN {
        return bad(&format!("is longer than {MAX_SOURCE_LEN} characters"));
    }
    if source.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    let rest = source
        .strip_prefix("http://")
        .or_else(|| source.strip_prefix("https://"));
    if let Some(rest) = rest {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty() {
            return bad("URL has no host");
        }
        if source.chars().any(char::is_whitespace) {
            return bad("URL contains whitespace");
        }
        return Ok(());
    }
    if !source.starts_with('/') {
        return bad("must be an http:// or https:// URL or an absolute path");
    }
    if source.split('/').any(|c| c == "..") {
        return bad("path must not contain `..`");
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/images", tag = "images", params(ProjectPage),
    responses((status = 200, body = List<Image>), (status = 400, body = api::ErrorBody)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ProjectPage>,
) -> ApiResult<Json<List<Image>>> {
    Ok(Json(state.store.image_list(&caller, &q).await?))
}

#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImageCreate, params(ProjectScope),
    responses((status = 201, body = Image), (status = 400, body = api::ErrorBody),
              (status = 403, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(scope): ApiQuery<ProjectScope>,
    ApiJson(body): ApiJson<ImageCreate>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    let project_id = match body.visibility {
        Visibility::Public => {
            caller.require_admin()?;
            None
        }
        Visibility::Private => Some(
            state
                .store
                .project_for_write(&caller, scope.project.as_deref(), "image")
                .await?,
        ),
    };
    check_name(&body.name)?;
    check_source(&body.source)?;
    check_sha256(&body.sha256)?;
    validate::range("min_disk_gib", body.min_disk_gib, 1, 65_536)?;
    let image = Image {
        id: ImageId::new(),
        project_id,
        name: body.name,
        source: body.source,
        format: body.format,
        sha256: body.sha256,
        min_disk_gib: body.min_disk_gib,
        visibility: body.visibility,
        created_at: from_ms(now_ms()),
    };
    let image = state.store.image_create(&caller, image).await?;
    Ok((StatusCode::CREATED, Json(image)))
}

#[utoipa::path(get, path = "/v1/images/{id}", tag = "images",
    params(("id" = ImageId, Path)),
    responses((status = 200, body = Image), (status = 404, body = api::ErrorBody)))]
async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<ImageId>,
) -> ApiResult<Json<Image>> {
    Ok(Json(state.store.image_get(&caller, id).await?))
}

#[utoipa::path(delete, path = "/v1/images/{id}", tag = "images",
    params(("id" = ImageId, Path)),
    responses((status = 204), (status = 403, body = api::ErrorBody),
              (status = 404, body = api::ErrorBody), (status = 409, body = api::ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<ImageId>,
) -> ApiResult<StatusCode> {
    state.store.image_delete(&caller, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        for ok in [
            "https://images.example/ubuntu-24.04.qcow2",
            "http://10.0.0.1:8080/x.img?sig=1",
            "/var/lib/strato/images/debian.qcow2",
        ] {
            assert!(check_source(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://x/y",
            "https:///nohost",
            "https://h/a b",
            "relative/path.img",
            "/var/lib/../../etc/shadow",
            "/images/..",
            "/images/x\n",
            "file:///etc/passwd",
        ] {
            assert!(check_source(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn checksums_and_names() {
        assert!(check_sha256(&"a".repeat(64)).is_ok());
        assert!(check_sha256(&"A".repeat(64)).is_err());
        assert!(check_sha256(&"a".repeat(63)).is_err());
        assert!(check_sha256(&"g".repeat(64)).is_err());
        assert!(check_name("ubuntu-24.04").is_ok());
        assert!(check_name("24.04").is_err());
        assert!(check_name("ubuntu.").is_err());
        let err = check_name("Bad.Name").unwrap_err();
        assert!(err.message.contains("Bad.Name"));
    }
}
