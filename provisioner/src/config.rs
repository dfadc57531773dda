//! The provisioner's configuration: one TOML file, every field optional
//! with a documented default. `provisioner config` prints the defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use agent_support::config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::lifecycle::Timeouts;
use crate::postinstall::PostInstallConfig;
use crate::power::PowerConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Machine inventory (SQLite) and leases. Default `/var/lib/strato/provisioner`.
    pub state_dir: PathBuf,
    /// Where the HTTP server (operator API, iPXE scripts, boot files, boot
    /// environment callbacks) listens. Default `0.0.0.0:8080`.
    pub http_listen: SocketAddr,
    /// How machines on the rack reach the HTTP server; goes into every
    /// iPXE script. Default `http://<http_listen>` with an unspecified
    /// address replaced by loopback — set it on a real rack.
    pub http_url: Option<String>,
    /// Bearer token the operator API (`/v1/machines`) requires.
    pub api_token: Option<String>,
    /// File holding the API token, when `api_token` is unset.
    pub api_token_file: Option<PathBuf>,
    /// Raw disk images machines can be deployed with, by file name.
    /// Default `<state_dir>/images`.
    pub image_dir: Option<PathBuf>,
    /// `vmlinuz` and `initrd.img` of the boot environment
    /// (`scripts/boot-env.sh` builds them). Default
    /// `/var/cache/strato/images/boot-env`.
    pub boot_env_dir: PathBuf,
    /// Directory overriding the built-in iPXE templates
    /// (`bootenv.ipxe.tera`, `localboot.ipxe.tera`). Default: built-in.
    pub template_dir: Option<PathBuf>,
    /// Seconds a machine may stay commissioning before it fails. Default 1200.
    pub commissioning_timeout_secs: u64,
    /// Seconds a machine may stay deploying before it fails. Default 1800.
    pub deploying_timeout_secs: u64,
    /// Seconds a machine may stay releasing before it is marked broken. Default 600.
    pub releasing_timeout_secs: u64,
    /// How often deadlines are checked. Default 5 s.
    pub sweep_interval_secs: u64,
    /// The DHCP server (see the `dhcp` crate's `Config`: `listen`,
    /// `interface`, `server_ip`, `mode` authoritative|proxy, `subnets`,
    /// `reservations`, `boot`…). Its `lease_db` defaults to
    /// `<state_dir>/leases.journal` and `boot.ipxe_script_url` to this
    /// server's `/boot/{mac}.ipxe`. Default: no DHCP server.
    pub dhcp: Option<dhcp::Config>,
    /// The TFTP server for firmware that is not iPXE yet. Default: none.
    pub tftp: Option<TftpConfig>,
    /// Post-install over SSH until the machine's agent enrolls in the
    /// stack manager (see `PostInstallConfig`). Default: none — a
    /// deployment then ends when its image is written.
    pub post_install: Option<PostInstallConfig>,
    /// Deploy every machine that finished commissioning and was never
    /// deployed, with this image and role: for racks whose machines all
    /// become the same kind of host (and `strato up --rack`). Default: none.
    pub auto_deploy: Option<AutoDeploy>,
    /// Deadlines of the power drivers (see `PowerConfig`: `timeout_secs`
    /// 12, `ipmi_timeout_secs` 2, `ipmi_retries` 2, `off_confirm_secs` 20):
    /// a BMC that does not answer fails a power action in about 10 s.
    pub power: PowerConfig,
    /// `tracing` filter; `RUST_LOG` overrides it. Default `info`.
    pub log: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoDeploy {
    /// An image file name in the image directory.
    pub image: String,
    /// `hypervisor` or `storage`.
    pub role: api::resources::HostKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TftpConfig {
    /// Default `0.0.0.0:69`.
    pub listen: SocketAddr,
    /// Files served (iPXE's `undionly.kpxe`, `ipxe.efi`). Default
    /// `/usr/lib/ipxe` (Debian's `ipxe` package).
    pub root: PathBuf,
    /// Largest block size offered (RFC 2348). Default 1468.
    pub max_blksize: u16,
    /// Largest window offered (RFC 7440). Default 64.
    pub max_windowsize: u16,
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            root: PathBuf::from("/usr/lib/ipxe"),
            max_blksize: 1468,
            max_windowsize: 64,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/strato/provisioner"),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            http_url: None,
            api_token: None,
            api_token_file: None,
            image_dir: None,
            boot_env_dir: PathBuf::from("/var/cache/strato/images/boot-env"),
            template_dir: None,
            commissioning_timeout_secs: 1200,
            deploying_timeout_secs: 1800,
            releasing_timeout_secs: 600,
            sweep_interval_secs: 5,
            dhcp: None,
            tftp: None,
            post_install: None,
            auto_deploy: None,
            power: PowerConfig::default(),
            log: "info".into(),
        }
    }
}

impl Config {
    fn check(&self) -> Result<(), ConfigError> {
        if self.sweep_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "sweep_interval_secs must be > 0".into(),
            ));
        }
        if self.power.timeout_secs == 0 {
            return Err(ConfigError::Invalid(
                "power.timeout_secs must be > 0".into(),
            ));
        }
        if let Some(a) = &self.auto_deploy {
            if !crate::machines::valid_image_name(&a.image) {
                return Err(ConfigError::Invalid(format!(
                    "auto_deploy.image {:?} is not an image file name",
                    a.image
                )));
            }
        }
        if let Some(d) = &self.dhcp {
            d.validate()
                .map_err(|e| ConfigError::Invalid(format!("dhcp: {e}")))?;
        }
        Ok(())
    }

    pub fn http_url(&self) -> String {
        agent_support::config::advertised_url(self.http_url.as_deref(), self.http_listen)
    }

    pub fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("images"))
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            commissioning: Duration::from_secs(self.commissioning_timeout_secs),
            deploying: Duration::from_secs(self.deploying_timeout_secs),
            releasing: Duration::from_secs(self.releasing_timeout_secs),
        }
    }

    /// The operator API token; without one the API would be open, so it is
    /// required.
    pub fn api_token(&self) -> Result<String, ConfigError> {
        agent_support::config::enrollment_token(
            self.api_token.as_deref(),
            self.api_token_file.as_ref(),
        )?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ConfigError::Invalid("set api_token or api_token_file".into()))
    }

    /// The DHCP config with the defaults that depend on the rest filled in.
    pub fn dhcp_config(&self) -> Option<dhcp::Config> {
        let mut d = self.dhcp.clone()?;
        if d.lease_db.is_none() {
            d.lease_db = Some(self.state_dir.join("leases.journal"));
        }
        if d.boot.ipxe_script_url.is_none() {
            d.boot.ipxe_script_url = Some(format!("{}/boot/{{mac}}.ipxe", self.http_url()));
        }
        Some(d)
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
    fn defaults_parse_back_and_validate() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        back.validate().unwrap();
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn dhcp_defaults_point_at_this_server() {
        let cfg: Config = toml::from_str(
            "http_url = \"http://10.9.0.1:8080\"\n[dhcp]\nserver_ip = \"10.9.0.1\"\n\
             [[dhcp.subnets]]\nnetwork = \"10.9.0.0/24\"\npool = { start = \"10.9.0.100\", end = \"10.9.0.200\" }\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        let d = cfg.dhcp_config().unwrap();
        assert_eq!(
            d.boot.ipxe_script_url.as_deref(),
            Some("http://10.9.0.1:8080/boot/{mac}.ipxe")
        );
        assert!(d.lease_db.unwrap().ends_with("leases.journal"));
    }
}
