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
    pub health: HealthConfig,
    pub moves: MovesConfig,
    pub replicas: ReplicasConfig,
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

/// Self-healing: detection, fencing, evacuation and crash restarts (see
/// `crate::health`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds a hypervisor stays `suspected` (no heartbeat within
    /// `hosts.down_after_secs`) before fencing begins: heartbeats that
    /// return within it only make it `up` again. Default 3 s.
    pub suspect_grace_secs: u64,
    /// Seconds after which a fencing step that is not confirmed is reported
    /// as such on the host (fencing keeps trying; nothing moves until it is
    /// confirmed). Default 20 s.
    pub fence_timeout_secs: u64,
    /// Mass-failure guard: when more than this share of the hypervisors is
    /// lost within `mass_failure_window_secs`, automatic evacuation pauses
    /// until an operator resumes it or evacuates hosts one by one. 0.3
    /// (30 %) by default; 1.0 turns the guard off.
    pub mass_failure_share: f64,
    /// ... and at least this many hypervisors: losing one host is the
    /// ordinary case the guard must not stop. Default 2.
    pub mass_failure_min_hosts: u64,
    /// The guard's window, seconds. Default 300.
    pub mass_failure_window_secs: u64,
    /// How often the monitor looks at every host, milliseconds; 0 turns
    /// self-healing off (nothing is detected, fenced or moved). Default 1000.
    pub monitor_interval_ms: u64,
    /// Seconds without a heartbeat after which a storage node's replicated
    /// volumes fail over to an in-sync copy (and its in-sync copies are
    /// dropped from the write path). Shorter than a hypervisor's detection
    /// and grace: the guests' I/O waits meanwhile, and a wrong guess only
    /// costs a small resync (the epoch fences the old primary). Default 6
    /// (three default heartbeats).
    pub storage_failover_after_secs: u64,
    /// The provisioner whose power drivers fence hosts that have a machine
    /// behind them (`machine_id`), e.g. `http://10.0.0.2:7200`. Default
    /// none: such hosts cannot be fenced by power, and stay unconfirmed.
    pub provisioner_url: Option<String>,
    /// The provisioner's API token. Default none.
    pub provisioner_token: Option<String>,
    /// Crash restarts in place, as Diego does: this many immediate
    /// restarts... Default 3.
    pub crash_immediate_restarts: u64,
    /// ... then a delay of this many seconds, doubled per crash... Default 30.
    pub crash_backoff_base_secs: u64,
    /// ... up to this many seconds. Default 960 (16 min).
    pub crash_backoff_max_secs: u64,
    /// An instance that stays up this long has its crash count reset.
    /// Default 300.
    pub crash_reset_after_secs: u64,
    /// After this many crashes in a row it is left stopped, in `error`.
    /// Default 200.
    pub crash_give_up_after: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            suspect_grace_secs: 3,
            fence_timeout_secs: 20,
            mass_failure_share: 0.3,
            mass_failure_min_hosts: 2,
            mass_failure_window_secs: 300,
            monitor_interval_ms: 1000,
            storage_failover_after_secs: 6,
            provisioner_url: None,
            provisioner_token: None,
            crash_immediate_restarts: 3,
            crash_backoff_base_secs: 30,
            crash_backoff_max_secs: 960,
            crash_reset_after_secs: 300,
            crash_give_up_after: 200,
        }
    }
}

/// Planned moves of instances between healthy hosts: drains and
/// rebalancing (see `crate::moves`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MovesConfig {
    /// Moves under way at once, cloud-wide (each stops a VM on one host
    /// and starts it on another). Default 4.
    pub concurrency: u64,
    /// Seconds the source host has to confirm it stopped a moving
    /// instance; after that the move is aborted and the instance runs where
    /// it was. Default 120.
    pub stop_timeout_secs: u64,
    /// Default half-width of the rebalancing band around the mean
    /// utilization, as a share (0.10 = ±10 percentage points) when a
    /// request names none. Default 0.10.
    pub band: f64,
    /// Rebalance on its own when a host drifts outside
    /// `auto_rebalance_band` (checked every `interval_ms` while no move is
    /// under way). Default false.
    pub auto_rebalance: bool,
    /// The band automatic rebalancing keeps: wider than `band`, so that
    /// it only acts on real drift. Default 0.20.
    pub auto_rebalance_band: f64,
    /// How often the mover looks at moves under way, draining hosts and
    /// queued plans, milliseconds (it is also woken by drains and plans).
    /// 0 turns planned moves off. Default 1000.
    pub interval_ms: u64,
    /// Seconds a drain waits before trying again to move an instance
    /// whose last move failed. Default 60.
    pub retry_after_secs: u64,
}

/// Several replicas on one PostgreSQL: the leases their singleton tasks
/// (health monitor, mover, planner statistics) run under (see
/// `crate::lease`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicasConfig {
    /// How long a lease lasts without renewal, milliseconds: a replica that
    /// dies holding one is replaced within this and one activation of the
    /// task (a second for the health monitor). Default 3000.
    pub lease_ttl_ms: u64,
    /// How often a replica renews its leases and its membership,
    /// milliseconds; well under `lease_ttl_ms`. Default 1000.
    pub renew_interval_ms: u64,
    /// This replica's name in `strato system replicas`. Default
    /// `<hostname>:<pid>`.
    pub name: Option<String>,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            lease_ttl_ms: 3000,
            renew_interval_ms: 1000,
            name: None,
        }
    }
}

impl Default for MovesConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            stop_timeout_secs: 120,
            band: 0.10,
            auto_rebalance: false,
            auto_rebalance_band: 0.20,
            interval_ms: 1000,
            retry_after_secs: 60,
        }
    }
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
            health: HealthConfig::default(),
            moves: MovesConfig::default(),
            replicas: ReplicasConfig::default(),
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
        let h = &self.health;
        if !(h.mass_failure_share.is_finite()
            && h.mass_failure_share > 0.0
            && h.mass_failure_share <= 1.0)
        {
            return Err(ConfigError::Invalid(format!(
                "health.mass_failure_share must be in (0, 1], got {}",
                h.mass_failure_share
            )));
        }
        let m = &self.moves;
        for (name, v) in [
            ("band", m.band),
            ("auto_rebalance_band", m.auto_rebalance_band),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(ConfigError::Invalid(format!(
                    "moves.{name} must be in (0, 1], got {v}"
                )));
            }
        }
        if m.concurrency == 0 {
            return Err(ConfigError::Invalid(
                "moves.concurrency must be at least 1".into(),
            ));
        }
        let r = &self.replicas;
        if r.renew_interval_ms == 0 || r.renew_interval_ms.saturating_mul(2) > r.lease_ttl_ms {
            return Err(ConfigError::Invalid(format!(
                "replicas.renew_interval_ms must be at least 1 and at most half of \
                 replicas.lease_ttl_ms (a lease must survive one late renewal), got {} and {}",
                r.renew_interval_ms, r.lease_ttl_ms
            )));
        }
        if h.crash_backoff_max_secs < h.crash_backoff_base_secs {
            return Err(ConfigError::Invalid(
                "health.crash_backoff_max_secs must be >= health.crash_backoff_base_secs".into(),
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
