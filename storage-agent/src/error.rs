//! Errors of realizing a volume. Their `Display` becomes the volume's
//! status reason, so each names what failed and why.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The spec cannot be realized as given; retrying the same spec is pointless.
    #[error("{0}")]
    Invalid(String),
    /// The volume was deleted; this spec is older than the delete.
    #[error("{0}")]
    Gone(String),
    #[error(transparent)]
    Support(#[from] agent_support::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("volume device: {0}")]
    Device(#[from] scsi::Error),
}

impl VolumeError {
    /// Whether retrying the same spec may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            VolumeError::Invalid(_) | VolumeError::Gone(_) => false,
            VolumeError::Support(e) => e.is_transient(),
            VolumeError::Io { .. } | VolumeError::Device(_) => true,
        }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VolumeError {
        let path = path.into();
        move |source| VolumeError::Io { path, source }
    }
}

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;
