//! Errors of the provisioner's operations, each mapping to one HTTP status.

use crate::lifecycle::IllegalTransition;
use crate::power::PowerError;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error(transparent)]
    Power(#[from] PowerError),
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T, E = ProvisionError> = std::result::Result<T, E>;
