//! Where served bytes come from: the [`Source`] hook and what it returns.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::RwLock;

use bytes::Bytes;

use crate::packet::ErrorCode;
use crate::root::normalize;

/// The body of one download.
#[derive(Debug)]
pub enum Content {
    /// An open file, read with positioned reads so retransmissions never
    /// need a seek and the file is opened exactly once per transfer.
    File { file: File, len: u64 },
    /// Generated or cached bytes (iPXE scripts, per-host configs).
    Bytes(Bytes),
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::File { len, .. } => *len,
            Content::Bytes(b) => b.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset` as far as the content reaches; a short
    /// count means end of content.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self {
            Content::File { file, .. } => {
                let mut filled = 0;
                // pread may return short counts (signals, some filesystems);
                // only 0 means end of file.
                while filled < buf.len() {
                    match file.read_at(&mut buf[filled..], offset + filled as u64) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(filled)
            }
            Content::Bytes(b) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
        }
    }
}

/// Why a path could not be served. Each maps to the TFTP error code the
/// client sees.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("file not found")]
    NotFound,
    #[error("access violation: {0}")]
    Denied(String),
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl OpenError {
    pub fn from_io(e: io::Error) -> OpenError {
        match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => OpenError::NotFound,
            io::ErrorKind::PermissionDenied => OpenError::Denied("permission denied".into()),
            _ => OpenError::Io(e),
        }
    }

    pub(crate) fn tftp_code(&self) -> ErrorCode {
        match self {
            OpenError::NotFound => ErrorCode::FileNotFound,
            OpenError::Denied(_) => ErrorCode::AccessViolation,
            OpenError::Io(_) => ErrorCode::NotDefined,
        }
    }

    /// What the client is told; kept generic so error packets do not leak
    /// server paths or OS error text.
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            OpenError::NotFound => "File not found",
            OpenError::Denied(_) => "Access violation",
            OpenError::Io(_) => "Read error",
        }
    }
}

/// Resolves a requested path to content.
///
/// The server hands `open` a path already passed through
/// [`normalize`](crate::root::normalize): relative, `/`-separated, without
/// `.`/`..`/empty components or NUL bytes. It is called on the blocking
/// thread pool, so implementations may touch the filesystem or block briefly.
pub trait Source: Send + Sync + 'static {
    fn open(&self, path: &str) -> Result<Content, OpenError>;
}

impl<S: Source + ?Sized> Source for std::sync::Arc<S> {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        (**self).open(path)
    }
}

/// In-memory files layered over another source, for the provisioner's
/// generated content (per-host iPXE scripts, kickstarts, configs). Entries
/// shadow files of the same name in the inner source.
#[derive(Debug, Default)]
pub struct Overlay<S> {
    files: RwLock<HashMap<String, Bytes>>,
    inner: S,
}

impl<S: Source> Overlay<S> {
    pub fn new(inner: S) -> Overlay<S> {
        Overlay {
            files: RwLock::new(HashMap::new()),
            inner,
        }
    }

    /// Publishes `content` under `path` (normalized like requests are, so
    /// "/x" and "x" are the same entry). Returns false for a path no request
    /// could ever name.
    pub fn insert(&self, path: &str, content: impl Into<Bytes>) -> bool {
        let Ok(key) = normalize(path) else {
            return false;
        };
        // A poisoned lock only means another writer panicked mid-insert; the
        // map itself is still a valid map.
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        files.insert(key, content.into());
        true
    }

    pub fn remove(&self, path: &str) -> Option<Bytes> {
        let key = normalize(path).ok()?;
        let mut files = self.files.write().unwrap_or_else(|p| p.into_inner());
        files.remove(&key)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Source> Source for Overlay<S> {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        let hit = {
            let files = self.files.read().unwrap_or_else(|p| p.into_inner());
            files.get(path).cloned()
        };
        match hit {
            Some(b) => Ok(Content::Bytes(b)),
            None => self.inner.open(path),
        }
    }
}

/// A source with nothing in it; useful as the bottom of an [`Overlay`] when
/// every file is generated.
#[derive(Debug, Default, Clone, Copy)]
pub struct Empty;

impl Source for Empty {
    fn open(&self, _path: &str) -> Result<Content, OpenError> {
        Err(OpenError::NotFound)
    }
}
