//! Turning a client-supplied filename into a file under the served root,
//! without letting it out.
//!
//! Two layers: [`normalize`] is pure string work every [`Source`] gets for
//! free (the server calls it before `Source::open`), and [`FsRoot`] then
//! resolves symlinks and checks the result still lies under the root.
//!
//! [`Source`]: crate::Source

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::source::{Content, OpenError, Source};

/// Why a requested name was refused before touching the filesystem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("filename contains a NUL byte")]
    Nul,
    #[error("filename names the root directory")]
    Empty,
    #[error("filename contains a '..' component")]
    Traversal,
}

/// Maps a requested filename to a relative, `/`-separated path with no
/// `.`/`..`/empty components.
///
/// A leading `/` is stripped rather than refused because PXE clients send
/// both `pxelinux.0` and `/pxelinux.0` for the same file. Backslashes are
/// treated as separators because Windows-derived boot loaders (WDS, some
/// UEFI ROMs) request `boot\x64\wdsnbp.com`. `..` is refused outright
/// instead of being resolved lexically, since no legitimate boot loader needs
/// it and a refusal is easier to audit than a rewrite.
pub fn normalize(requested: &str) -> Result<String, PathError> {
    if requested.contains('\0') {
        return Err(PathError::Nul);
    }
    let mut out = String::with_capacity(requested.len());
    for part in requested.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => return Err(PathError::Traversal),
            p => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(p);
            }
        }
    }
    if out.is_empty() {
        return Err(PathError::Empty);
    }
    Ok(out)
}

/// Serves regular files below a directory.
#[derive(Debug, Clone)]
pub struct FsRoot {
    /// Canonical, so the containment check compares like with like even when
    /// the configured root is itself reached through a symlink.
    root: PathBuf,
}

impl FsRoot {
    /// Fails if the root does not exist or cannot be resolved.
    pub fn new(root: impl AsRef<Path>) -> io::Result<FsRoot> {
        let root = std::fs::canonicalize(root.as_ref())?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("TFTP root {} is not a directory", root.display()),
            ));
        }
        Ok(FsRoot { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a normalized relative path to a canonical path inside the
    /// root. Symlinks are allowed as long as they stay inside: boot trees
    /// commonly link `pxelinux.cfg/01-<mac>` to shared configs.
    pub fn resolve(&self, relative: &str) -> Result<PathBuf, OpenError> {
        let joined = self.root.join(relative);
        let canonical = std::fs::canonicalize(&joined).map_err(OpenError::from_io)?;
        if !canonical.starts_with(&self.root) {
            return Err(OpenError::Denied("path leaves the TFTP root".into()));
        }
        Ok(canonical)
    }
}

impl Source for FsRoot {
    fn open(&self, path: &str) -> Result<Content, OpenError> {
        // Callers outside the server might skip normalization; repeating it is
        // cheap and keeps this type safe on its own.
        let relative = normalize(path).map_err(|e| match e {
            PathError::Empty => OpenError::NotFound,
            e => OpenError::Denied(e.to_string()),
        })?;
        let canonical = self.resolve(&relative)?;
        // Between canonicalize and open a component could be swapped for a
        // symlink; that needs write access to the root, which only the
        // provisioner has, so the window is accepted rather than paying for
        // openat2(RESOLVE_BENEATH) plumbing.
        let file = File::open(&canonical).map_err(OpenError::from_io)?;
        let meta = file.metadata().map_err(OpenError::from_io)?;
        if !meta.is_file() {
            // Directories and device nodes would either fail mid-transfer or
            // never end; refuse them up front.
            return Err(OpenError::Denied("not a regular file".into()));
        }
        Ok(Content::File {
            file,
            len: meta.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_pxe_names() {
        assert_eq!(normalize("/pxelinux.0").as_deref(), Ok("pxelinux.0"));
        assert_eq!(normalize("pxelinux.0").as_deref(), Ok("pxelinux.0"));
        assert_eq!(normalize("//boot/./grub//x").as_deref(), Ok("boot/grub/x"));
        assert_eq!(
            normalize("boot\\x64\\wdsnbp.com").as_deref(),
            Ok("boot/x64/wdsnbp.com")
        );
        assert_eq!(normalize("a..b").as_deref(), Ok("a..b"));
    }

    #[test]
    fn refuses_escapes() {
        assert_eq!(normalize("../etc/passwd"), Err(PathError::Traversal));
        assert_eq!(normalize("/a/../../b"), Err(PathError::Traversal));
        assert_eq!(normalize("a\\..\\b"), Err(PathError::Traversal));
        assert_eq!(normalize("a\0b"), Err(PathError::Nul));
        assert_eq!(normalize("/"), Err(PathError::Empty));
        assert_eq!(normalize("."), Err(PathError::Empty));
    }

    #[test]
    fn symlinks_may_not_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("real"), b"r").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("esc")).unwrap();
        std::os::unix::fs::symlink("real", root.path().join("inside")).unwrap();
        std::fs::create_dir(root.path().join("dir")).unwrap();
        let fs = FsRoot::new(root.path()).unwrap();
        assert!(matches!(fs.open("esc"), Err(OpenError::Denied(_))));
        assert!(matches!(
            fs.open("inside"),
            Ok(Content::File { len: 1, .. })
        ));
        assert!(matches!(fs.open("missing"), Err(OpenError::NotFound)));
        assert!(matches!(fs.open("dir"), Err(OpenError::Denied(_))));
        assert!(matches!(fs.open("../x"), Err(OpenError::Denied(_))));
    }
}
