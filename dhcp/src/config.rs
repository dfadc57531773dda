//! Server configuration. Everything is plain data with serde so the
//! provisioner can embed it in its own TOML/JSON config.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::mac::Mac;

/// How the server participates on the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// We own address assignment for the configured subnets.
    #[default]
    Authoritative,
    /// Another DHCP server hands out addresses; we only add PXE boot
    /// information for clients that identify as `PXEClient`.
    Proxy,
}

/// A fixed address for a known machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Sent as option 12 so the installer/OS picks up the inventory name.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Inclusive address range handed to machines without a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

/// One provisioning subnet. Relayed requests pick the subnet containing
/// giaddr; direct requests pick the subnet containing `Config::server_ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    pub network: Ipv4Net,
    /// Discovery pool for unknown machines; `None` means reservations only.
    #[serde(default)]
    pub pool: Option<Pool>,
    /// Option 3.
    #[serde(default)]
    pub routers: Vec<Ipv4Addr>,
    /// Option 6.
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 15.
    #[serde(default)]
    pub domain_name: Option<String>,
    /// Overrides `Config::lease_secs` for this subnet.
    #[serde(default)]
    pub lease_secs: Option<u32>,
}

impl Subnet {
    /// A subnet with a pool and nothing else, handy for tests and examples.
    pub fn new(network: Ipv4Net, start: Ipv4Addr, end: Ipv4Addr) -> Self {
        Subnet {
            network,
            pool: Some(Pool { start, end }),
            routers: Vec::new(),
            dns_servers: Vec::new(),
            domain_name: None,
            lease_secs: None,
        }
    }
}

/// What to tell booting firmware. See [`crate::boot::select`] for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BootConfig {
    /// siaddr (TFTP server). Defaults to `Config::server_ip`.
    pub next_server: Option<Ipv4Addr>,
    /// Legacy BIOS PXE (arch 0): chainloads iPXE over TFTP.
    pub bios_file: String,
    /// x86-64 UEFI PXE (arch 6, 7, 9).
    pub uefi_x64_file: String,
    /// arm64 UEFI PXE (arch 11).
    pub uefi_arm64_file: String,
    /// x86-64 UEFI HTTP boot (arch 16); must be an absolute http(s) URL.
    pub http_x64_url: Option<String>,
    /// arm64 UEFI HTTP boot (arch 19).
    pub http_arm64_url: Option<String>,
    /// Script URL for clients already running iPXE (user class "iPXE").
    /// `{mac}` is replaced with the client MAC (aa:bb:..), `{mac_hyphen}`
    /// with aa-bb-.. for web servers that dislike colons.
    pub ipxe_script_url: Option<String>,
}

impl Default for BootConfig {
    fn default() -> Self {
        BootConfig {
            next_server: None,
            bios_file: "undionly.kpxe".into(),
            uefi_x64_file: "ipxe.efi".into(),
            uefi_arm64_file: "ipxe-arm64.efi".into(),
            http_x64_url: None,
            http_arm64_url: None,
            ipxe_script_url: None,
        }
    }
}

/// Full server configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// DHCP socket address. Production: `0.0.0.0:67`. Tests use a high
    /// port on 127.0.0.1 and act as a relay.
    pub listen: SocketAddr,
    /// PXE boot-server socket (port 4011 by the PXE spec). Clients that got
    /// a proxyDHCP offer send their boot-server REQUEST here. `None` = off.
    pub pxe_listen: Option<SocketAddr>,
    /// Bind sockets to this interface (SO_BINDTODEVICE) so broadcast
    /// replies leave through the provisioning NIC and requests arriving on
    /// other NICs are never answered.
    pub interface: Option<String>,
    /// Our address on the provisioning network: server identifier
    /// (option 54) and default next-server.
    pub server_ip: Ipv4Addr,
    pub mode: Mode,
    /// Authoritative mode only.
    pub subnets: Vec<Subnet>,
    /// Initial reservations; more can be added at runtime.
    pub reservations: Vec<Reservation>,
    /// Default lease length in seconds.
    pub lease_secs: u32,
    /// How long an OFFER keeps its address if the client never REQUESTs.
    pub offer_hold_secs: u32,
    /// How long a DECLINEd address is kept out of the pool (someone else is
    /// using it on the wire).
    pub decline_quarantine_secs: u32,
    /// Lease journal file. `None` keeps leases in memory only.
    pub lease_db: Option<PathBuf>,
    pub boot: BootConfig,
    /// UDP port replies to directly attached clients go to (68).
    pub client_port: u16,
    /// UDP port replies to relay agents go to (67).
    pub relay_port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 67)),
            pxe_listen: None,
            interface: None,
            server_ip: Ipv4Addr::UNSPECIFIED,
            mode: Mode::Authoritative,
            subnets: Vec::new(),
            reservations: Vec::new(),
            lease_secs: 3600,
            offer_hold_secs: 30,
            decline_quarantine_secs: 600,
            lease_db: None,
            boot: BootConfig::default(),
            client_port: 68,
            relay_port: 67,
        }
    }
}

impl Config {
    /// Catch mistakes at startup rather than when the first machine boots.
    pub fn validate(&self) -> Result<(), Error> {
        if self.server_ip.is_unspecified() {
            return Err(Error::Config(
                "server_ip must be set (it is the server identifier)".into(),
            ));
        }
        if self.mode == Mode::Authoritative && self.subnets.is_empty() {
            return Err(Error::Config(
                "authoritative mode needs at least one subnet".into(),
            ));
        }
        if self.lease_secs < 60 {
            return Err(Error::Config("lease_secs must be at least 60".into()));
        }
        for s in &self.subnets {
            if let Some(p) = s.pool {
                if u32::from(p.start) > u32::from(p.end) {
                    return Err(Error::Config(format!(
                        "pool {}-{} is reversed",
                        p.start, p.end
                    )));
                }
                if !s.network.contains(&p.start) || !s.network.contains(&p.end) {
                    return Err(Error::Config(format!(
                        "pool {}-{} is outside {}",
                        p.start, p.end, s.network
                    )));
                }
            }
        }
        Ok(())
    }

    /// The subnet an address belongs to, most specific first.
    pub fn subnet_for(&self, ip: Ipv4Addr) -> Option<&Subnet> {
        self.subnets
            .iter()
            .filter(|s| s.network.contains(&ip))
            .max_by_key(|s| s.network.prefix_len())
    }
}
