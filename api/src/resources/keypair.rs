//! SSH keypairs (public half only) injected into instances.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{KeypairId, ProjectId};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeypairCreate {
    pub name: String,
    /// One OpenSSH public key line, e.g. `ssh-ed25519 AAAA... comment`.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Keypair {
    pub id: KeypairId,
    pub project_id: ProjectId,
    pub name: String,
    pub public_key: String,
    /// `SHA256:...` as printed by `ssh-keygen -l`.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
}
