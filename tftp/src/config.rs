//! Server configuration.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::options::Limits;

/// How a [`Server`](crate::Server) listens and what it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address of the request socket. Default `0.0.0.0:69`. Each transfer
    /// gets its own ephemeral socket on the same IP (RFC 1350 TIDs), so on
    /// multi-homed provisioners bind the provisioning interface's address:
    /// with a wildcard bind the kernel picks the reply source by route.
    pub listen: SocketAddr,
    /// Directory served read-only. Default `/srv/tftp`. Must exist when the
    /// server is bound; requests cannot leave it (see [`crate::root`]).
    pub root: PathBuf,
    /// Largest block size granted to a client asking for more (RFC 2348).
    /// Default 1468: a 1500-byte Ethernet MTU minus IPv4 (20), UDP (8) and
    /// TFTP (4) headers, so blocks never fragment. Lower it for tunnels or
    /// VLANs with a smaller path MTU; values are clamped to 8..=65464.
    pub max_blksize: u16,
    /// Largest RFC 7440 window granted. Default 64 blocks (~94 KB in flight
    /// at 1468-byte blocks), small enough for default socket buffers on
    /// both ends. 1 disables windowing in effect.
    pub max_windowsize: u16,
    /// Retransmit timeout when the client does not negotiate one (RFC 2349
    /// lets it ask for 1..=255 s). Default 1 s, as tftp-hpa and dnsmasq.
    pub timeout: Duration,
    /// Consecutive timeouts without progress before a transfer is abandoned.
    /// Default 5; any acknowledged progress resets the count.
    pub retries: u32,
    /// Transfers running at once; requests beyond it get ERROR 0 "server
    /// busy" so a rack booting at once degrades visibly instead of
    /// exhausting sockets. Default 1024.
    pub max_transfers: usize,
    /// Hand whole windows to the kernel as one UDP GSO send (Linux
    /// `UDP_SEGMENT`) instead of one syscall per block. Default true; falls
    /// back to per-packet sends by itself where unsupported, so turning it
    /// off is only for ruling it out while debugging a NIC.
    pub udp_gso: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 69)),
            root: PathBuf::from("/srv/tftp"),
            max_blksize: 1468,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_transfers: 1024,
            udp_gso: true,
        }
    }
}

impl Config {
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            default_timeout: self.timeout,
        }
    }
}
