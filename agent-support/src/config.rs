//! Settings every agent's config resolves the same way.

use std::net::SocketAddr;
use std::path::PathBuf;

/// The configured host name, else the kernel's, else `fallback`.
pub fn host_name(configured: Option<&str>, fallback: &str) -> String {
    configured.map(str::to_string).unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback.into())
    })
}

/// The URL peers reach a listener at: the configured one, else
/// `http://<listen>` with an unspecified address replaced by loopback.
pub fn advertised_url(configured: Option<&str>, listen: SocketAddr) -> String {
    if let Some(u) = configured {
        return u.trim_end_matches('/').to_string();
    }
    format!("http://{}", reachable(listen))
}

/// `listen` with an unspecified address replaced by loopback.
pub fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The enrollment token given inline, else read from `file`.
pub fn enrollment_token(
    inline: Option<&str>,
    file: Option<&PathBuf>,
) -> Result<Option<String>, ConfigError> {
    if let Some(t) = inline {
        return Ok(Some(t.trim().to_string()));
    }
    match file {
        Some(p) => std::fs::read_to_string(p)
            .map(|s| Some(s.trim().to_string()))
            .map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            }),
        None => Ok(None),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Reads and parses one TOML config file.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}
