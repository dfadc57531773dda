//! File-system helpers the agents share.

use std::path::Path;

use crate::error::{Error, Result};

/// Size and free space of the file system holding `path`, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsSpace {
    pub total: u64,
    pub available: u64,
}

pub fn fs_space(path: &Path) -> Option<FsSpace> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable struct.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| FsSpace {
        total: st.f_blocks as u64 * st.f_frsize as u64,
        available: st.f_bavail as u64 * st.f_frsize as u64,
    })
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(Error::io(path))
}

/// Replaces `path` with `bytes` atomically (write, fsync, rename), created
/// 0600: these files hold credentials, CHAP secrets and user-data.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// [`write_private`] of `value` as pretty JSON.
pub fn write_private_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?;
    write_private(path, &body)
}

/// JSON state written by [`write_private_json`]; an unreadable file is
/// logged and treated as absent rather than stopping the agent.
pub fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file");
            None
        }
    }
}

/// The allocated ranges of `file` as `(start, end)` byte offsets, in order
/// (`SEEK_DATA`/`SEEK_HOLE`, so the granularity is the file system's). A
/// file system without hole tracking reports the whole file as data.
pub fn data_extents(file: &std::fs::File) -> std::io::Result<Vec<(u64, u64)>> {
    let len = file.metadata()?.len();
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let Some(start) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        extents.push((start, end));
        pos = end;
    }
    Ok(extents)
}

/// `lseek` with `whence`; `None` when there is no further data (ENXIO).
fn seek(f: &std::fs::File, from: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let off = libc::off_t::try_from(from)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall on an open descriptor. Callers do positional
    // I/O only, so moving the file position is harmless.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}
