//! Errors of realizing an instance. Their `Display` is what an operator
//! or tenant reads as the instance's status reason, so each names the
//! thing that failed and why.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error(
        "image {image}: checksum mismatch: the file's sha256 is not the registered {expected}"
    )]
    ChecksumMismatch { image: String, expected: String },
    #[error("libvirt: {0}")]
    Libvirt(String),
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("template: {0}")]
    Template(String),
}

impl AgentError {
    /// Whether retrying the same spec may succeed: libvirt, a host tool or
    /// the file system failed, not the input.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            AgentError::Libvirt(_) | AgentError::Command { .. } | AgentError::Io { .. }
        )
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> AgentError {
        let path = path.into();
        move |source| AgentError::Io { path, source }
    }
}

impl From<virt::error::Error> for AgentError {
    fn from(e: virt::error::Error) -> Self {
        AgentError::Libvirt(e.message().to_string())
    }
}

impl From<agent_support::Error> for AgentError {
    fn from(e: agent_support::Error) -> Self {
        use agent_support::Error as E;
        match e {
            E::Image { image, reason } => AgentError::Image { image, reason },
            E::ChecksumMismatch { image, expected } => {
                AgentError::ChecksumMismatch { image, expected }
            }
            E::Command {
                program,
                status,
                stderr,
            } => AgentError::Command {
                program,
                status,
                stderr,
            },
            E::Io { path, source } => AgentError::Io { path, source },
            E::Invalid(m) => AgentError::Invalid(m),
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
