//! The hypervisor agent's configuration: one TOML file, every field
//! optional with a documented default. `hypervisor-agent config` prints the
//! defaults.

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
    /// One-time enrollment token (`strato host enroll-token`). Needed only on
    /// the first start; afterwards the per-host credential in `state_dir`
    /// is used. Default: none.
    pub enrollment_token: Option<String>,
    /// File holding the enrollment token, for deployments that keep secrets
    /// out of config files. Read when `enrollment_token` is unset.
    pub enrollment_token_file: Option<PathBuf>,
    /// Host name reported to the stack manager. Default: the kernel's
    /// hostname.
    pub name: Option<String>,
    /// Where the agent API (`/agent/v1`) listens. Default `127.0.0.1:7200`.
    pub listen: SocketAddr,
    /// URL the stack manager uses to reach this agent. Default
    /// `http://<listen>`, with an unspecified address replaced by loopback.
    pub advertise_url: Option<String>,
    /// Image cache, instance disks, config drives, console logs and the
    /// host credential. Must be traversable by the QEMU user (the agent
    /// makes it `0755`). Default `/var/lib/strato/hypervisor`.
    pub state_dir: PathBuf,
    /// libvirt connection URI: `qemu:///system` (default) or `xen:///system`.
    pub libvirt_uri: String,
    /// `auto` (default): use KVM when a probe guest actually boots under it
    /// within `kvm_probe_timeout_secs`, else plain emulation. `kvm` or
    /// `qemu` force one. Ignored for Xen.
    pub virt_type: VirtTypeSetting,
    /// How long the KVM probe may take before KVM is judged not to work.
    /// Default 10 s.
    pub kvm_probe_timeout_secs: u64,
    /// Whether the agent gives `/dev/kvm` to QEMU's group (mode 0660, as
    /// udev's rule does) when QEMU's user cannot open it, which makes
    /// libvirt re-probe QEMU on every call (see `host.rs`). When false it
    /// only logs the problem. Default true.
    pub repair_kvm_device: bool,
    /// Heartbeat interval until the stack manager names one. Default 2 s.
    pub heartbeat_interval_secs: u64,
    /// A reading of the instances older than this (libvirt has not
    /// answered since) is reported as `unknown` instead of as current.
    /// Default 10 s.
    pub stale_reading_secs: u64,
    /// How long a stop waits for the guest to power off after an ACPI
    /// shutdown before the domain is destroyed. Default 60 s.
    pub shutdown_timeout_secs: u64,
    /// Physical interface that carries tenant VLANs. Networks with a VLAN
    /// get a `<uplink>.<vlan>` sub-interface enslaved to their bridge.
    /// Default: none (bridges stay local to this host).
    pub uplink: Option<String>,
    /// Network namespace (a name under `/run/netns`) in which tenant
    /// bridges are created: it must be the one libvirtd runs in, since
    /// libvirtd plugs the guests' taps into them. Default: none, the
    /// agent's own namespace, which is libvirtd's on a real host. Set only
    /// where agents run in namespaces of their own next to one libvirtd
    /// (the multi-host tests).
    pub bridge_netns: Option<String>,
    /// iSCSI initiator name this host logs in to volumes with. Default
    /// `iqn.2026-11.io.strato:<name>`.
    pub initiator_iqn: Option<String>,
    /// The provisioner's machine this host runs on (the provisioner's
    /// post-install writes it): the stack manager fences the host by
    /// powering that machine off. Default none: fenced by storage alone.
    pub machine_id: Option<String>,
    /// RAM kept for the host itself, not reported as capacity. Default 512 MiB.
    pub reserved_ram_mib: u64,
    /// Disk kept for the host itself, not reported as capacity. Default 2 GiB.
    pub reserved_disk_gib: u64,
    /// Directory with `domain.xml.tera` / `domain-xen.xml.tera` overriding
    /// the built-in domain templates. Default: built-in.
    pub template_dir: Option<PathBuf>,
    /// Largest image accepted (download or local file), in bytes. Default
    /// 64 GiB.
    pub max_image_bytes: u64,
    /// Directories images given as local paths must lie in; anything else
    /// (another host file, a device) is refused. Default
    /// `["/var/lib/strato/images", "/var/cache/strato/images"]`.
    pub image_roots: Vec<PathBuf>,
    /// `tracing` filter; `RUST_LOG` overrides it. Default `info`.
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VirtTypeSetting {
    Auto,
    Kvm,
    Qemu,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            stack_manager_url: "http://127.0.0.1:7101".into(),
            enrollment_token: None,
            enrollment_token_file: None,
            name: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 7200)),
            advertise_url: None,
            state_dir: PathBuf::from("/var/lib/strato/hypervisor"),
            libvirt_uri: "qemu:///system".into(),
            virt_type: VirtTypeSetting::Auto,
            kvm_probe_timeout_secs: 10,
            repair_kvm_device: true,
            heartbeat_interval_secs: 2,
            stale_reading_secs: 10,
            shutdown_timeout_secs: 60,
            uplink: None,
            bridge_netns: None,
            initiator_iqn: None,
            machine_id: None,
            reserved_ram_mib: 512,
            reserved_disk_gib: 2,
            template_dir: None,
            max_image_bytes: 64 << 30,
            image_roots: vec![
                PathBuf::from("/var/lib/strato/images"),
                PathBuf::from("/var/cache/strato/images"),
            ],
            log: "info".into(),
        }
    }
}

pub use agent_support::config::ConfigError;

impl Config {
    fn check(&self) -> Result<(), ConfigError> {
        if !(self.libvirt_uri.starts_with("qemu") || self.libvirt_uri.starts_with("xen")) {
            return Err(ConfigError::Invalid(format!(
                "libvirt_uri {:?}: only qemu:// and xen:// drivers are supported",
                self.libvirt_uri
            )));
        }
        if let Some(u) = &self.uplink {
            if !crate::network::valid_ifname(u) {
                return Err(ConfigError::Invalid(format!(
                    "uplink {u:?} is not an interface name"
                )));
            }
        }
        if let Some(ns) = &self.bridge_netns {
            if ns.is_empty() || ns.contains('/') || ns.starts_with('.') || ns.len() > 255 {
                return Err(ConfigError::Invalid(format!(
                    "bridge_netns {ns:?} is not a network namespace name"
                )));
            }
        }
        if self.heartbeat_interval_secs == 0 {
            return Err(ConfigError::Invalid(
                "heartbeat_interval_secs must be > 0".into(),
            ));
        }
        if self.stale_reading_secs == 0 {
            return Err(ConfigError::Invalid(
                "stale_reading_secs must be > 0".into(),
            ));
        }
        Ok(())
    }

    pub fn is_xen(&self) -> bool {
        self.libvirt_uri.starts_with("xen")
    }

    pub fn host_name(&self) -> String {
        agent_support::config::host_name(self.name.as_deref(), "hypervisor")
    }

    pub fn initiator_iqn(&self) -> String {
        self.initiator_iqn.clone().unwrap_or_else(|| {
            let name: String = self
                .host_name()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("iqn.2026-11.io.strato:{name}")
        })
    }

    pub fn agent_url(&self) -> String {
        agent_support::config::advertised_url(self.advertise_url.as_deref(), self.listen)
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
        assert_eq!(cfg.listen, Config::default().listen);
        assert_eq!(cfg.libvirt_uri, "qemu:///system");
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<Config>("listne = \"0.0.0.0:1\"").is_err());
    }

    #[test]
    fn unspecified_listen_advertises_loopback() {
        let cfg = Config {
            listen: "0.0.0.0:7200".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(cfg.agent_url(), "http://127.0.0.1:7200");
    }

    #[test]
    fn other_drivers_are_refused() {
        let cfg = Config {
            libvirt_uri: "lxc:///".into(),
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
    }
}
