//! Running the stack manager: both listeners, and first-time set-up.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::auth::{hash_secret, new_secret};
use crate::state::AppState;
use crate::store::bootstrap::FirstRows;

/// Bound listeners; tests bind to port 0 and read the addresses back.
pub struct Running {
    pub public: SocketAddr,
    pub internal: SocketAddr,
    pub state: AppState,
    pub handle: tokio::task::JoinHandle<()>,
}

/// Starts serving on the configured listeners and returns once both are bound.
pub async fn start(state: AppState) -> anyhow::Result<Running> {
    let public = TcpListener::bind(state.config.listen).await?;
    let internal = TcpListener::bind(state.config.internal_listen).await?;
    let public_addr = public.local_addr()?;
    let internal_addr = internal.local_addr()?;
    let public_app = crate::http::router(state.clone());
    let internal_app = crate::internal::router(state.clone());
    state.leases.set_urls(
        format!("http://{public_addr}"),
        format!("http://{internal_addr}"),
    );
    let stopping = state.clone();
    let handle = tokio::spawn(async move {
        let a = axum::serve(public, public_app).with_graceful_shutdown(shutdown_signal());
        let b = axum::serve(internal, internal_app).with_graceful_shutdown(shutdown_signal());
        if let Err(e) = tokio::try_join!(a, b) {
            tracing::error!(error = %e, "server stopped");
        }
        // Nothing is served any more: nothing the tasks do can be seen.
        stopping.stop().await;
    });
    tracing::info!(%public_addr, %internal_addr, backend = ?state.db.backend, "stack manager listening");
    Ok(Running {
        public: public_addr,
        internal: internal_addr,
        state,
        handle,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// What `stack-manager init` creates.
#[derive(Debug, serde::Serialize)]
pub struct Bootstrap {
    pub user: String,
    pub project: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "already initialized: an admin user exists (create more tokens with `strato user token`)"
    )]
    AlreadyInitialized,
    #[error(transparent)]
    Api(#[from] crate::error::ApiError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Flavors every new cloud starts with: name, vCPUs, RAM MiB, disk GiB.
pub const DEFAULT_FLAVORS: [(&str, i64, i64, i64); 4] = [
    ("m1.tiny", 1, 512, 1),
    ("m1.small", 1, 2048, 20),
    ("m1.medium", 2, 4096, 40),
    ("m1.large", 4, 8192, 80),
];

/// Creates the first admin user, an `admin` project they are a member of,
/// a token for them, and the default flavors. Refuses to run twice.
pub async fn init(
    state: &AppState,
    admin_name: &str,
    project_name: &str,
) -> Result<Bootstrap, InitError> {
    crate::http::validate::name("user", admin_name)?;
    crate::http::validate::name("project", project_name)?;
    let secret = new_secret("strato");
    let created = state
        .store
        .cloud_init(FirstRows {
            admin_name,
            project_name,
            project_description: "operators' own project",
            token_hash: hash_secret(&secret),
            token_description: "created by stack-manager init",
            // A new cloud gets the usual sizes so that a first VM needs no
            // operator homework; they are ordinary flavors, free to delete.
            flavors: &DEFAULT_FLAVORS,
        })
        .await?;
    if !created {
        return Err(InitError::AlreadyInitialized);
    }
    Ok(Bootstrap {
        user: admin_name.to_string(),
        project: project_name.to_string(),
        token: secret,
    })
}
