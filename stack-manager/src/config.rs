//! The stack manager's configuration: one TOML file, every field optional
//! with a documented default. `stack-manager config` prints the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Public REST API (`/v1`, `/metrics`). Default `127.0.0.1:7100`.
    pub listen: SocketAddr,
    /// Internal API for agents (`/internal/v1`), on its own listener so it
    /// can be bound to the management network only. Default `127.0.0.1:7101`.
    pub internal_listen: SocketAddr,
    /// Where the SQLite database and other state live. Default `./.state`.
    pub state_dir: PathBuf,
    /// `sqlite://path` or `postgres://user:pass@host/db`. Default: SQLite
    /// file `strato.db` in `state_dir`.
    pub database_url: Option<String>,
    /// Maximum pooled database connections. Default 16; SQLite uses at most 4
    /// (one writer at a time; more connections only add thread switching),
    /// and a PostgreSQL server on this same machine at most 3 per core, at
    /// least 4 (its backends share the cores with this process).
    pub database_max_connections: u32,
    /// PostgreSQL only: how often to check for tables that were never
    /// analyzed or have doubled since their last `ANALYZE`, and analyze them
    /// (autovacuum checks once a minute; a plan cached while a table was
    /// small can scan it all).
    /// 0 leaves statistics to autovacuum alone. Default 2 s.
    pub database_analyze_interval_secs: u64,
    pub scheduler: SchedulerConfig,
    pub hosts: HostsConfig,
    /// `tracing` filter, e.g. `info` or `stack_manager=debug`. Overridden by
    /// `RUST_LOG`. Default `info`.
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Weigher {
    /// Prefer the emptiest host: fewer noisy neighbours, faster evacuation.
    Spread,
    /// Prefer the fullest host that fits: keeps whole hosts free.
    Pack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RackSpread {
    /// Ignore racks.
    Off,
    /// Members of an anti-affinity group prefer racks holding fewer members.
    Prefer,
    /// Members of an anti-affinity group must land in distinct racks.
    Require,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// vCPUs that may be allocated per physical CPU. Default 4.0.
    pub cpu_allocation_ratio: f64,
    /// RAM that may be allocated per MiB of physical RAM. Default 1.0.
    pub ram_allocation_ratio: f64,
    /// Root disk that may be allocated per GiB of host disk; thin overlays
    /// make > 1.0 reasonable. Default 1.0.
    pub disk_allocation_ratio: f64,
    /// `spread` (default) or `pack`.
    pub weigher: Weigher,
    /// `off`, `prefer` (default) or `require`.
    pub rack_spread: RackSpread,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostsConfig {
    /// Heartbeat interval agents are told to use. Default 2 s.
    pub heartbeat_interval_secs: u64,
    /// A host with no heartbeat for this long is down and gets no new work.
    /// Default 10 s.
    pub down_after_secs: u64,
    /// Each host's reconciler re-pushes its whole desired state this often
    /// even when nothing changed, to heal missed updates. Default 30 s.
    pub resync_interval_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            state_dir: PathBuf::from(".state"),
            database_url: None,
            database_max_connections: 16,
            database_analyze_interval_secs: 2,
            scheduler: SchedulerConfig::default(),
            hosts: HostsConfig::default(),
            log: "info".into(),
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            weigher: Weigher::Spread,
            rack_spread: RackSpread::Prefer,
        }
    }
}

impl Default for HostsConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_secs: 2,
            down_after_secs: 10,
            resync_interval_secs: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config is invalid: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let cfg = match path {
            None => Config::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: p.to_path_buf(),
                    source,
                })?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.scheduler;
        for (name, v) in [
            ("cpu_allocation_ratio", s.cpu_allocation_ratio),
            ("ram_allocation_ratio", s.ram_allocation_ratio),
            ("disk_allocation_ratio", s.disk_allocation_ratio),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 64.0) {
                return Err(ConfigError::Invalid(format!(
                    "scheduler.{name} must be in (0, 64], got {v}"
                )));
            }
        }
        if self.hosts.heartbeat_interval_secs == 0
            || self.hosts.down_after_secs <= self.hosts.heartbeat_interval_secs
        {
            return Err(ConfigError::Invalid(
                "hosts.down_after_secs must be greater than hosts.heartbeat_interval_secs (> 0)"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.state_dir.join("strato.db").display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_and_matches_defaults() {
        let text = include_str!("../stack-manager.toml");
        let cfg: Config = toml::from_str(text).expect("example config parses");
        cfg.validate().unwrap();
        assert_eq!(cfg.scheduler.cpu_allocation_ratio, 4.0);
        assert_eq!(cfg.listen, Config::default().listen);
        assert_eq!(
            cfg.database_analyze_interval_secs,
            Config::default().database_analyze_interval_secs
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<Config>("listn = \"x\"").is_err());
    }
}
