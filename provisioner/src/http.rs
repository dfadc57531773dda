//! The provisioner's HTTP server, three audiences on one listener:
//! - operators: `/v1/machines…` (Bearer `api_token`);
//! - PXE clients: `/boot/<mac>.ipxe` and `/boot-env/<file>` (no auth: a
//!   booting machine has nothing to present);
//! - the boot environment: `/bootenv/<machine>/<secret>/…`, where the
//!   per-machine secret in the URL (handed out in the boot script) is the
//!   credential; the installed system's cloud-init reads its NoCloud seed
//!   (`…/cloud-init/`) and phones home (`…/phone-home`) under the same URL.

use std::path::PathBuf;
use std::sync::Arc;

use agent_support::http::{require_credential, ApiError};
use api::error::ErrorCode;
use api::ids::MachineId;
use api::provision::{
    Inventory, Machine, MachineAction, MachineCreate, MachineEvent, MachineFenced, MachinePower,
    MachineState, PowerState,
};
use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::boot::Scripts;
use crate::error::ProvisionError;
use crate::lifecycle::{self, BootChoice};
use crate::machines::Machines;
use crate::postinstall::Runner;
use crate::power::PowerError;

#[derive(Clone)]
pub struct HttpState {
    pub machines: Arc<Machines>,
    pub scripts: Arc<Scripts>,
    /// How machines on the rack reach this server, e.g. `http://10.0.0.1:8080`.
    pub base_url: Arc<String>,
    /// `vmlinuz` and `initrd.img` of the boot environment.
    pub boot_env: Arc<PathBuf>,
    /// Post-install, when configured (`[post_install]`).
    pub post_install: Option<Arc<Runner>>,
}

fn api_error(e: ProvisionError) -> ApiError {
    let (status, code) = match &e {
        ProvisionError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
        ProvisionError::Conflict(_) | ProvisionError::Illegal(_) => {
            (StatusCode::CONFLICT, ErrorCode::Conflict)
        }
        ProvisionError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequest),
        ProvisionError::Power(p) => match p {
            PowerError::Unreachable { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, ErrorCode::BmcUnreachable)
            }
            PowerError::Failed { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::BmcFailed),
            PowerError::Manual(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            PowerError::Tool { .. } => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        },
        ProvisionError::Store(_) | ProvisionError::Migrate(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
        }
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "request failed");
    }
    ApiError(status, code, e.to_string())
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.body_text(),
        )
    })
}

async fn resolve(s: &HttpState, key: &str) -> Result<Machine, ApiError> {
    s.machines.find(key).await.map_err(api_error)
}

pub fn router(state: HttpState, api_token: Arc<String>) -> Router {
    let operator = Router::new()
        .route("/v1/machines", get(list).post(create))
        .route("/v1/machines/{machine}", get(show).delete(remove))
        .route("/v1/machines/{machine}/actions", post(act))
        .route("/v1/machines/{machine}/events", get(events))
        .route("/v1/machines/{machine}/power", get(power))
        .route("/v1/machines/{machine}/fence", post(fence))
        .route_layer(middleware::from_fn_with_state(
            api_token,
            require_credential,
        ));
    Router::new()
        .merge(operator)
        .route("/boot/{script}", get(boot_script))
        .route("/boot-env/{file}", get(boot_env_file))
        .route("/bootenv/{machine}/{secret}/inventory", post(inventory))
        .route("/bootenv/{machine}/{secret}/image", get(image))
        .route("/bootenv/{machine}/{secret}/image-size", get(image_size))
        .route(
            "/bootenv/{machine}/{secret}/image-sha256",
            get(image_sha256),
        )
        .route("/bootenv/{machine}/{secret}/image-map", get(image_map))
        .route(
            "/bootenv/{machine}/{secret}/image-chunk/{offset}/{length}",
            get(image_chunk),
        )
        .route("/bootenv/{machine}/{secret}/deployed", post(deployed))
        .route("/bootenv/{machine}/{secret}/failed", post(failed))
        .route(
            "/bootenv/{machine}/{secret}/cloud-init-seed",
            get(cloud_init_seed),
        )
        .route(
            "/bootenv/{machine}/{secret}/cloud-init/{file}",
            get(cloud_init_file),
        )
        .route("/bootenv/{machine}/{secret}/phone-home", post(phone_home))
        .with_state(state)
}

async fn list(State(s): State<HttpState>) -> Result<Json<Vec<Machine>>, ApiError> {
    s.machines.list().await.map(Json).map_err(api_error)
}

async fn create(
    State(s): State<HttpState>,
    body: Result<Json<MachineCreate>, JsonRejection>,
) -> Result<(StatusCode, Json<Machine>), ApiError> {
    let req = json_body(body)?;
    let m = s.machines.create(req).await.map_err(api_error)?;
    Ok((StatusCode::CREATED, Json(m)))
}

async fn show(
    State(s): State<HttpState>,
    Path(key): Path<String>,
) -> Result<Json<Machine>, ApiError> {
    resolve(&s, &key).await.map(Json)
}

async fn remove(
    State(s): State<HttpState>,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let m = resolve(&s, &key).await?;
    if matches!(m.state, MachineState::Deployed | MachineState::Deploying) {
        return Err(ApiError(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!(
                "machine {} is {}; release it first",
                m.name,
                m.state.as_str()
            ),
        ));
    }
    s.machines.delete(m.id).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn act(
    State(s): State<HttpState>,
    Path(key): Path<String>,
    body: Result<Json<MachineAction>, JsonRejection>,
) -> Result<Json<Machine>, ApiError> {
    let action = json_body(body)?;
    let m = resolve(&s, &key).await?;
    s.machines
        .act(m.id, action)
        .await
        .map(Json)
        .map_err(api_error)
}

async fn events(
    State(s): State<HttpState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<MachineEvent>>, ApiError> {
    let m = resolve(&s, &key).await?;
    s.machines.events(m.id).await.map(Json).map_err(api_error)
}

async fn power(
    State(s): State<HttpState>,
    Path(key): Path<String>,
) -> Result<Json<MachinePower>, ApiError> {
    let m = resolve(&s, &key).await?;
    let state = s.machines.power_status(&m).await.map_err(api_error)?;
    Ok(Json(MachinePower { state }))
}

/// Power off, confirmed by the driver: what the stack manager's fencing
/// calls before it moves a failed host's VMs and volumes. Any machine state
/// (a deployed host is the usual one); the lifecycle is not changed, only
/// the history notes it.
async fn fence(
    State(s): State<HttpState>,
    Path(key): Path<String>,
) -> Result<Json<MachineFenced>, ApiError> {
    let m = resolve(&s, &key).await?;
    let started = std::time::Instant::now();
    s.machines.fence(&m).await.map_err(api_error)?;
    Ok(Json(MachineFenced {
        machine: m.id,
        driver: m.power.driver(),
        state: PowerState::Off,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}

/// `/boot/<mac>.ipxe` (the MAC as iPXE's `${mac:hexhyp}` or with colons).
/// An unknown MAC is enlisted on the spot and commissioned: booting is
/// how a rack introduces its machines.
async fn boot_script(
    State(s): State<HttpState>,
    Path(script): Path<String>,
) -> Result<Response, ApiError> {
    let mac = script.strip_suffix(".ipxe").unwrap_or(&script);
    let mut m = s.machines.discover(mac).await.map_err(api_error)?;
    if m.state == MachineState::New {
        m = s
            .machines
            .act(m.id, MachineAction::Commission)
            .await
            .map_err(api_error)?;
    }
    let image_written = m.state == MachineState::Deploying
        && s.machines
            .deploy_progress(m.id)
            .await
            .map_err(api_error)?
            .image_written;
    let choice = lifecycle::boot_choice(m.state, image_written);
    let secret = match choice {
        BootChoice::LocalDisk => String::new(),
        _ => s.machines.bootenv_secret(m.id).await.map_err(api_error)?,
    };
    let text = s
        .scripts
        .render(&m, choice, &s.base_url, &secret)
        .map_err(api_error)?;
    tracing::info!(machine = %m.name, mac = %m.mac, state = m.state.as_str(), ?choice, "boot script");
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn boot_env_file(
    State(s): State<HttpState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    if !matches!(file.as_str(), "vmlinuz" | "initrd.img") {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("no boot file {file:?}"),
        ));
    }
    stream_file(s.boot_env.join(&file)).await
}

async fn stream_file(path: PathBuf) -> Result<Response, ApiError> {
    let f = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!("{}: {e}", path.display()),
        )
    })?;
    let len = f.metadata().await.map_err(internal)?.len();
    Ok(octets(f, len))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        e.to_string(),
    )
}

/// `len` bytes from `reader`, streamed in 1 MiB pieces.
fn octets(reader: impl tokio::io::AsyncRead + Send + 'static, len: u64) -> Response {
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}

/// The machine behind a boot-environment URL, if the secret matches.
async fn bootenv_machine(s: &HttpState, machine: &str, secret: &str) -> Result<Machine, ApiError> {
    let id: MachineId = machine.parse().map_err(|_| {
        ApiError(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such machine".into(),
        )
    })?;
    s.machines
        .check_secret(id, secret)
        .await
        .map_err(api_error)?;
    s.machines.get(id).await.map_err(api_error)
}

async fn inventory(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
    body: Result<Json<Inventory>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let m = bootenv_machine(&s, &machine, &secret).await?;
    let inv = json_body(body)?;
    s.machines
        .inventory_reported(m.id, inv)
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deployed_image(s: &HttpState, machine: &str, secret: &str) -> Result<PathBuf, ApiError> {
    let m = bootenv_machine(s, machine, secret).await?;
    if m.state != MachineState::Deploying {
        return Err(ApiError(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!("machine {} is {}, not deploying", m.name, m.state.as_str()),
        ));
    }
    m.image
        .as_deref()
        .and_then(|i| s.machines.image_path(i))
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "no image chosen".into(),
            )
        })
}

async fn image(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = deployed_image(&s, &machine, &secret).await?;
    stream_file(path).await
}

async fn image_size(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Result<String, ApiError> {
    let path = deployed_image(&s, &machine, &secret).await?;
    let len = tokio::fs::metadata(&path)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                format!("{}: {e}", path.display()),
            )
        })?
        .len();
    Ok(len.to_string())
}

/// The image's SHA-256, so the environment can check what it wrote.
async fn image_sha256(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Result<String, ApiError> {
    let path = deployed_image(&s, &machine, &secret).await?;
    s.machines.image_sha256(&path).await.map_err(api_error)
}

/// The image's data as checked chunks (`offset length sha256` lines): the
/// environment writes those and skips the holes.
async fn image_map(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let path = deployed_image(&s, &machine, &secret).await?;
    let chunks = s.machines.image_chunks(&path).await.map_err(api_error)?;
    Ok(text(crate::imagemap::render(&chunks)))
}

/// One chunk of the map, exactly as listed there.
async fn image_chunk(
    State(s): State<HttpState>,
    Path((machine, secret, offset, length)): Path<(String, String, u64, u64)>,
) -> Result<Response, ApiError> {
    let path = deployed_image(&s, &machine, &secret).await?;
    let chunks = s.machines.image_chunks(&path).await.map_err(api_error)?;
    if !chunks
        .iter()
        .any(|c| c.offset == offset && c.length == length)
    {
        return Err(not_found(&format!(
            "no chunk {offset}+{length} in the image map"
        )));
    }
    let mut f = tokio::fs::File::open(&path)
        .await
        .map_err(|e| not_found(&format!("{}: {e}", path.display())))?;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    f.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(internal)?;
    Ok(octets(f.take(length), length))
}

async fn deployed(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let m = bootenv_machine(&s, &machine, &secret).await?;
    s.machines
        .image_written(m.id, s.post_install.is_some())
        .await
        .map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, ErrorCode::NotFound, what.into())
}

fn post_install(s: &HttpState) -> Result<&Arc<Runner>, ApiError> {
    s.post_install
        .as_ref()
        .ok_or_else(|| not_found("post-install is not configured on this provisioner"))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn template_error(e: crate::postinstall::PostInstallError) -> ApiError {
    tracing::warn!(error = %e, "rendering an install template failed");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Internal,
        e.to_string(),
    )
}

/// The cloud-init config the deploy environment writes into the installed
/// system, pointing it at `cloud_init_file`. 404 without post-install:
/// the environment then leaves the image as it is.
async fn cloud_init_seed(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let runner = post_install(&s)?;
    let m = bootenv_machine(&s, &machine, &secret).await?;
    if m.state != MachineState::Deploying {
        return Err(ApiError(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            format!("machine {} is {}, not deploying", m.name, m.state.as_str()),
        ));
    }
    let url = format!("{}/bootenv/{}/{secret}/cloud-init/", s.base_url, m.id);
    let seed = runner
        .post_install()
        .seed(&m, &url)
        .map_err(template_error)?;
    Ok(text(seed))
}

/// NoCloud's files. Served while deploying and once deployed: cloud-init
/// checks its seed on every boot, and a vanished one would make it treat
/// the machine as a new instance.
async fn cloud_init_file(
    State(s): State<HttpState>,
    Path((machine, secret, file)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let runner = post_install(&s)?;
    let m = bootenv_machine(&s, &machine, &secret).await?;
    if !matches!(m.state, MachineState::Deploying | MachineState::Deployed) {
        return Err(not_found("this machine is not deployed"));
    }
    let pi = runner.post_install();
    let body = match file.as_str() {
        "meta-data" => pi.meta_data(&m).map_err(template_error)?,
        "user-data" => {
            let url = format!("{}/bootenv/{}/{secret}/phone-home", s.base_url, m.id);
            pi.user_data(&m, &url).map_err(template_error)?
        }
        "vendor-data" => "#cloud-config\n{}\n".to_string(),
        _ => return Err(not_found(&format!("no cloud-init file {file:?}"))),
    };
    Ok(text(body))
}

/// cloud-init's phone_home (form-encoded): the installed system is up, with
/// these SSH host keys. Starts post-install.
async fn phone_home(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
    form: Result<axum::Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Result<StatusCode, ApiError> {
    let runner = post_install(&s)?;
    let m = bootenv_machine(&s, &machine, &secret).await?;
    let axum::Form(fields) = form.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            e.body_text(),
        )
    })?;
    let keys: Vec<String> = fields
        .iter()
        .filter(|(k, _)| k.starts_with("pub_key_"))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !crate::postinstall::parse_host_keys(v).is_empty())
        .collect();
    if keys.is_empty() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            "no pub_key_* field holds an OpenSSH public key".into(),
        ));
    }
    let keys = keys.join("\n");
    let progress = s.machines.deploy_progress(m.id).await.map_err(api_error)?;
    // cloud-init retries a phone-home it thinks failed: the same keys
    // again, while deploying, are not news. Anything else goes through
    // `phoned_home`, which takes only the first keys after the image was
    // written, and only while deploying.
    let repeat = m.state == MachineState::Deploying
        && progress.ssh_host_keys.as_deref() == Some(keys.as_str());
    if !repeat {
        s.machines
            .phoned_home(m.id, keys.clone())
            .await
            .map_err(api_error)?;
    }
    let m = s.machines.get(m.id).await.map_err(api_error)?;
    runner.start(m, keys);
    Ok(StatusCode::OK)
}

async fn failed(
    State(s): State<HttpState>,
    Path((machine, secret)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let m = bootenv_machine(&s, &machine, &secret).await?;
    let reason = String::from_utf8_lossy(&body).trim().to_string();
    s.machines.failed(m.id, reason).await.map_err(api_error)?;
    Ok(StatusCode::NO_CONTENT)
}
