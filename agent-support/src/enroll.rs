//! Enrollment: a host trades a one-time token for its per-host credential
//! once, keeps it in `<state_dir>/identity.json` (0600), and reuses it on
//! every later start.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::ids::HostId;
use api::internal::EnrollRequest;
use api::InternalClient;
use serde::{Deserialize, Serialize};

use crate::fs::write_private;

/// What enrollment gave this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub host_id: HostId,
    pub credential: String,
    pub stack_manager_url: String,
}

pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.json")
}

/// The identity of an earlier enrollment, or a new one: `request` builds
/// the enrollment request from the token and is only called when needed.
pub async fn enroll_or_load<F, Fut>(
    state_dir: &Path,
    stack_manager_url: &str,
    token: Option<String>,
    request: F,
) -> anyhow::Result<Identity>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<EnrollRequest>>,
{
    let path = identity_path(state_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id: Identity = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()))?;
        tracing::info!(host = %id.host_id, "using the credential of an earlier enrollment");
        return Ok(id);
    }
    let token = token.ok_or_else(|| {
        anyhow::anyhow!(
            "this host is not enrolled yet: set enrollment_token (or enrollment_token_file) in the config; \
             an admin creates one with `strato host enroll-token`"
        )
    })?;
    let req = request(token).await?;
    let client = InternalClient::new(stack_manager_url, None);
    let resp = retry("enroll", || client.enroll(&req)).await?;
    let id = Identity {
        host_id: resp.host_id,
        credential: resp.credential,
        stack_manager_url: stack_manager_url.to_string(),
    };
    write_private(&path, &serde_json::to_vec_pretty(&id)?)?;
    tracing::info!(host = %id.host_id, "enrolled");
    Ok(id)
}

/// Retries while the stack manager is unreachable or unavailable; a
/// refusal (bad token, 4xx) is final.
pub async fn retry<T, F, Fut>(what: &str, f: F) -> anyhow::Result<T>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, api::ClientError>>,
{
    let mut delay = Duration::from_millis(250);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
                anyhow::bail!("{what} refused by the stack manager: {e}")
            }
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
