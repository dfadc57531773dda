//! The storage agent's configuration: one TOML file, every field optional
//! with a documented default. `storage-agent config` prints the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The stack manager's internal API. Several replicas are separated by
    /// commas (`http://10.0.0.2:7101,http://10.0.0.3:7101`): a call that
    /// cannot reach one goes to the next. Default `http://127.0.0.1:7101`.
    pub stack_manager_url: String,
    /// One-time enrollment token (`strato host enroll-token --kind storage`).
    /// Needed only on the first start; afterwards the per-host credential
    /// in `state_dir` is used. Default: none.
    pub enrollment_token: Option<String>,
    /// File holding the enrollment token. Read when `enrollment_token` is unset.
    pub enrollment_token_file: Option<PathBuf>,
    /// Host name reported to the stack manager; unique among hosts. Default
    /// `<kernel hostname>-storage`, so a machine can also run a hypervisor
    /// agent under its plain hostname.
    pub name: Option<String>,
    /// Where the agent API (`/agent/v1`) listens. Default `127.0.0.1:7300`.
    pub listen: SocketAddr,
    /// URL the stack manager uses to reach this agent. Default
    /// `http://<listen>`, with an unspecified address replaced by loopback.
    pub advertise_url: Option<String>,
    /// Host credential, image cache and volume state. Default
    /// `/var/lib/strato/storage`.
    pub state_dir: PathBuf,
    /// The pool: one directory per volume holding its sparse data file,
    /// snapshots and reservation state. Default `<state_dir>/volumes`.
    pub pool_dir: Option<PathBuf>,
    /// Where the iSCSI target listens. Default `0.0.0.0:3260`.
    pub iscsi_listen: SocketAddr,
    /// `address:port` initiators are told to connect to (hypervisors and
    /// SendTargets). Default: `iscsi_listen`, with an unspecified address
    /// replaced by loopback — set it on any multi-host deployment.
    pub iscsi_portal: Option<SocketAddr>,
    /// Largest data segment this target accepts in one PDU, in bytes.
    /// Default 256 KiB.
    pub iscsi_max_recv_data_segment_length: u32,
    /// Largest burst of data in one sequence, in bytes. Default 1 MiB.
    pub iscsi_max_burst_length: u32,
    /// Commands an initiator may have outstanding per session. Default 128.
    pub iscsi_queue_depth: u32,
    /// Idle seconds before the target pings an initiator with a NOP-In;
    /// one unanswered for as long again ends the connection. Default 10 s.
    pub iscsi_nop_in_interval_secs: u64,
    /// Bytes of the pool's file system kept free, not reported as
    /// capacity. Default 1 GiB.
    pub reserved_bytes: u64,
    /// Heartbeat interval until the stack manager names one. Default 2 s.
    pub heartbeat_interval_secs: u64,
    /// Largest image accepted when a volume is created from one, in bytes.
    /// Default 64 GiB.
    pub max_image_bytes: u64,
    /// Directories images given as local paths must lie in. Default
    /// `["/var/lib/strato/images", "/var/cache/strato/images"]`.
    pub image_roots: Vec<PathBuf>,
    /// Where replicas of replicated volumes take their primaries' changes.
    /// Default `0.0.0.0:3262`.
    pub replication_listen: SocketAddr,
    /// `address:port` other storage nodes reach the replication listener
    /// at. Default: `replication_listen`, an unspecified address replaced
    /// by loopback — set it on any multi-host deployment.
    pub replication_advertise: Option<SocketAddr>,
    /// Bound on the bytes per second a primary sends to bring one returning
    /// replica back in sync. Default 100 MiB/s.
    pub resync_bytes_per_sec: u64,
    /// `tracing` filter; `RUST_LOG` overrides it. Default `info`.
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stack_manager_url: "http://127.0.0.1:7101".into(),
            enrollment_token: None,
            enrollment_token_file: None,
            name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7300)),
            advertise_url: None,
            state_dir: PathBuf::from("/var/lib/strato/storage"),
            pool_dir: None,
            iscsi_listen: SocketAddr::from(([0, 0, 0, 0], 3260)),
            iscsi_portal: None,
            iscsi_max_recv_data_segment_length: 256 << 10,
            iscsi_max_burst_length: 1 << 20,
            iscsi_queue_depth: 128,
            iscsi_nop_in_interval_secs: 10,
            reserved_bytes: 1 << 30,
            heartbeat_interval_secs: 2,
            max_image_bytes: 64 << 30,
            image_roots: vec![
                PathBuf::from("/var/lib/strato/images"),
                PathBuf::from("/var/cache/strato/images"),
            ],
            replication_listen: SocketAddr::from(([0, 0, 0, 0], 3262)),
            replication_advertise: None,
            resync_bytes_per_sec: 100 << 20,
            log: "info".into(),
        }
    }
}

pub use agent_support::config::ConfigError;

impl Config {
    fn check(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "heartbeat_interval_secs must be > 0".into(),
            ));
        }
        // RFC 7143 bounds for the declared/negotiated lengths.
        let len_ok = |v: u32| (512..=(1 << 24) - 1).contains(&v);
        if !len_ok(self.iscsi_max_recv_data_segment_length) || !len_ok(self.iscsi_max_burst_length)
        {
            return Err(ConfigError::Invalid(
                "iscsi_max_recv_data_segment_length and iscsi_max_burst_length must be within 512..16777215".into(),
            ));
        }
        if self.iscsi_queue_depth == 0 {
            return Err(ConfigError::Invalid("iscsi_queue_depth must be > 0".into()));
        }
        Ok(())
    }

    pub fn host_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}-storage", agent_support::config::host_name(None, "node")),
        }
    }

    pub fn agent_url(&self) -> String {
        agent_support::config::advertised_url(self.advertise_url.as_deref(), self.listen)
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.pool_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("volumes"))
    }

    /// What primaries are told to connect to for this node's copies.
    pub fn replication_address(&self) -> SocketAddr {
        self.replication_advertise
            .unwrap_or_else(|| agent_support::config::reachable(self.replication_listen))
    }

    pub fn iscsi_portal(&self) -> SocketAddr {
        self.iscsi_portal
            .unwrap_or_else(|| agent_support::config::reachable(self.iscsi_listen))
    }

    pub fn enrollment_token(&self) -> Result<Option<String>, ConfigError> {
        agent_support::config::enrollment_token(
            self.enrollment_token.as_deref(),
            self.enrollment_token_file.as_ref(),
        )
    }
}

impl agent_support::cli::AgentConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.check()
    }
    fn log_filter(&self) -> &str {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_support::cli::AgentConfig;

    #[test]
    fn empty_file_is_all_defaults() {
        let cfg: Config = toml::from_str("").unwrap();
        assert_eq!(cfg.iscsi_listen, Config::default().iscsi_listen);
        assert_eq!(
            cfg.pool_dir(),
            PathBuf::from("/var/lib/strato/storage/volumes")
        );
        assert_eq!(cfg.iscsi_portal().to_string(), "127.0.0.1:3260");
    }

    #[test]
    fn unknown_fields_and_bad_lengths_are_rejected() {
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
        let cfg: Config = toml::from_str("iscsi_max_burst_length = 100").unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn printed_defaults_parse_back() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        back.validate().unwrap();
    }
}
