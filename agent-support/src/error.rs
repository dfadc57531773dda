//! Errors of the shared agent machinery. Their `Display` ends up as a
//! resource's status reason, so each names the thing that failed and why.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    #[error(
        "image {image}: checksum mismatch: the file's sha256 is not the registered {expected}"
    )]
    ChecksumMismatch { image: String, expected: String },
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
}

impl Error {
    /// Whether retrying may succeed: a host tool or the file system failed,
    /// not the input.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Command { .. } | Error::Io { .. })
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
