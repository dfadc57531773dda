//! Relay agents: where replies go (RFC 2131 §4.1) and what option 82
//! (RFC 3046) tells us about the switch port a machine hangs off.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use dhcproto::v4::relay::{RelayAgentInformation, RelayCode, RelayInfo};
use dhcproto::v4::{DhcpOption, DhcpOptions, OptionCode, UnknownOption};
use dhcproto::{Decodable, Decoder};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where a request came through, recorded with the lease so the provisioner
/// can map machines to switch ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayAgent {
    pub giaddr: Ipv4Addr,
    /// Sub-option 1: usually the switch port / interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_id: Option<Vec<u8>>,
    /// Sub-option 2: usually the switch itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_id: Option<Vec<u8>>,
    /// Sub-option 5 (RFC 3527): the relay asks us to allocate from this
    /// link instead of giaddr's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_selection: Option<Ipv4Addr>,
}

impl RelayAgent {
    /// Circuit id as text, for logs and inventory (most switches send ASCII).
    pub fn circuit_id_lossy(&self) -> Option<String> {
        self.circuit_id
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    pub fn remote_id_lossy(&self) -> Option<String> {
        self.remote_id
            .as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// `None` for a directly attached client without option 82.
pub fn parse(giaddr: Ipv4Addr, raw82: Option<&[u8]>) -> Option<RelayAgent> {
    if giaddr.is_unspecified() && raw82.is_none() {
        return None;
    }
    let mut agent = RelayAgent {
        giaddr,
        circuit_id: None,
        remote_id: None,
        link_selection: None,
    };
    if let Some(raw) = raw82 {
        // A garbled option 82 still gets echoed; we just learn nothing from it.
        if let Ok(info) = RelayAgentInformation::decode(&mut Decoder::new(raw)) {
            if let Some(RelayInfo::AgentCircuitId(c)) = info.get(RelayCode::AgentCircuitId) {
                agent.circuit_id = Some(c.clone());
            }
            if let Some(RelayInfo::AgentRemoteId(r)) = info.get(RelayCode::AgentRemoteId) {
                agent.remote_id = Some(r.clone());
            }
            if let Some(RelayInfo::LinkSelection(l)) = info.get(RelayCode::LinkSelection) {
                agent.link_selection = Some(*l);
            }
        }
    }
    Some(agent)
}

/// RFC 3046 §2.2: the server copies option 82 unchanged into its reply.
/// Inserted as an opaque option so the bytes are exactly what the relay
/// sent (relays match on them to find the downstream port).
pub fn echo(opts: &mut DhcpOptions, raw82: Option<&[u8]>) {
    if let Some(raw) = raw82 {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::RelayAgentInformation,
            raw.to_vec(),
        )));
    }
}

/// The address whose subnet a request should be served from.
pub fn selecting_address(giaddr: Ipv4Addr, agent: Option<&RelayAgent>, cfg: &Config) -> Ipv4Addr {
    if let Some(link) = agent.and_then(|a| a.link_selection) {
        return link;
    }
    if !giaddr.is_unspecified() {
        return giaddr;
    }
    cfg.server_ip
}

/// Kind of reply, because NAKs are routed differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// RFC 2131 §4.1 reply routing. Replies to an unconfigured client are
/// broadcast rather than unicast to yiaddr: unicasting would need an ARP
/// entry injected for an address the client does not have yet, and a
/// provisioning segment can afford the broadcast.
pub fn destination(
    giaddr: Ipv4Addr,
    ciaddr: Ipv4Addr,
    kind: ReplyKind,
    cfg: &Config,
) -> SocketAddr {
    if !giaddr.is_unspecified() {
        return SocketAddrV4::new(giaddr, cfg.relay_port).into();
    }
    if kind != ReplyKind::Nak && !ciaddr.is_unspecified() {
        return SocketAddrV4::new(ciaddr, cfg.client_port).into();
    }
    SocketAddrV4::new(Ipv4Addr::BROADCAST, cfg.client_port).into()
}
