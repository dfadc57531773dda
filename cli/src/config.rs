//! The CLI's login file: where the API is, the token, the default project.
//!
//! It lives at `$STRATO_CONFIG`, else `$HOME/.config/strato/config.toml`.
//! Flags (`--url`, `--token`, `--project`) and their environment variables
//! (`STRATO_URL`, `STRATO_TOKEN`, `STRATO_PROJECT`) take precedence over it.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Base URL of the stack manager's public API, e.g. `http://127.0.0.1:7100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// API token (`strato_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Project id or name used when a command does not name one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// The config file path given `$STRATO_CONFIG` and `$HOME`.
pub fn path_from(strato_config: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    if let Some(p) = strato_config.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    home.filter(|h| !h.is_empty()).map(|h| {
        PathBuf::from(h)
            .join(".config")
            .join("strato")
            .join("config.toml")
    })
}

/// The config file path for this process, if one can be named.
pub fn path() -> Option<PathBuf> {
    path_from(std::env::var_os("STRATO_CONFIG"), std::env::var_os("HOME"))
}

impl Config {
    /// Reads the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text)
            .with_context(|| format!("{} is not a valid strato config", path.display()))
    }

    /// Writes the file atomically, readable by its owner only (it holds a token).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = toml::to_string(self)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        write_private(&tmp, text.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Creates or truncates `path` with mode 0600 on Unix.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("strato-cli-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = temp_dir("missing");
        let cfg = Config::load(&dir.join("nope.toml")).unwrap();
        assert_eq!(cfg, Config::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn save_then_load_round_trips_and_creates_dirs() {
        let dir = temp_dir("roundtrip");
        let path = dir.join("a").join("b").join("config.toml");
        let cfg = Config {
            url: Some("http://127.0.0.1:7100".into()),
            token: Some("strato_secret".into()),
            project: Some("admin".into()),
        };
        cfg.save(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), cfg);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Overwriting replaces, and absent fields are not written.
        let cfg2 = Config {
            url: Some("http://x:1".into()),
            token: Some("t".into()),
            project: None,
        };
        cfg2.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("project"));
        assert_eq!(Config::load(&path).unwrap(), cfg2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_keys_are_ignored_and_garbage_is_an_error() {
        let dir = temp_dir("parse");
        let path = dir.join("config.toml");
        std::fs::write(&path, "url = \"http://h:1\"\nfuture = 3\n").unwrap();
        assert_eq!(
            Config::load(&path).unwrap().url.as_deref(),
            Some("http://h:1")
        );
        std::fs::write(&path, "url = [").unwrap();
        let err = Config::load(&path).unwrap_err();
        assert!(err.to_string().contains("not a valid strato config"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn path_prefers_strato_config_then_home() {
        assert_eq!(
            path_from(Some("/tmp/x.toml".into()), Some("/home/u".into())),
            Some(PathBuf::from("/tmp/x.toml"))
        );
        assert_eq!(
            path_from(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/strato/config.toml"))
        );
        assert_eq!(
            path_from(Some("".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/strato/config.toml"))
        );
        assert_eq!(path_from(None, None), None);
    }
}
