//! proxyDHCP (PXE spec §2.2.2/2.2.3): another server owns addresses on this
//! segment; we only tell PXE firmware where to boot from. Replies carry no
//! yiaddr and no lease, and non-PXE clients are ignored entirely so the
//! real DHCP server's clients never see us.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use tracing::debug;

use crate::boot;
use crate::codec::Request;
use crate::config::Config;
use crate::engine::{Listener, RecvCtx};
use crate::relay::{self, ReplyKind};
use crate::reply::{self, Reply};

/// Option 43 sub-option 6 (PXE_DISCOVERY_CONTROL) = 8: "boot file name is in
/// this packet, skip boot-server discovery", so the ROM goes straight to
/// TFTP instead of multicast discovery we do not implement.
const PXE_VENDOR_OPTIONS: [u8; 4] = [6, 1, 8, 255];

pub fn handle(cfg: &Config, req: &Request, ctx: &RecvCtx) -> Option<Reply> {
    let client = reply::client_info(req);
    if !client.is_pxe() {
        return None;
    }
    let bf = boot::select(&cfg.boot, &client)?;
    let giaddr = req.msg.giaddr();
    let (ty, dest) = match (ctx.listener, req.msg_type) {
        (Listener::Dhcp, MessageType::Discover) => (
            MessageType::Offer,
            relay::destination(giaddr, Ipv4Addr::UNSPECIFIED, ReplyKind::Offer, cfg),
        ),
        // Some ROMs send their REQUEST to the proxy on 67 instead of 4011.
        (Listener::Dhcp, MessageType::Request) if server_id(req) == Some(cfg.server_ip) => (
            MessageType::Ack,
            relay::destination(giaddr, req.msg.ciaddr(), ReplyKind::Ack, cfg),
        ),
        // Port 4011: the client already has an address and talks unicast;
        // answer exactly where it came from.
        (Listener::Pxe, MessageType::Request | MessageType::Inform) => (MessageType::Ack, ctx.src),
        _ => return None,
    };
    debug!(mac = %req.mac, file = %bf.file, ?ty, "proxyDHCP reply");
    let mut msg = reply::skeleton(req, ty, cfg.server_ip);
    msg.set_ciaddr(req.msg.ciaddr());
    reply::add_boot(&mut msg, req, cfg);
    let opts = msg.opts_mut();
    // The ROM recognises a proxy offer by option 60 "PXEClient".
    if bf.vendor_class.is_none() {
        opts.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
    opts.insert(DhcpOption::VendorExtensions(PXE_VENDOR_OPTIONS.to_vec()));
    // PXE spec: the machine UUID (97) is echoed so the ROM can match replies.
    if let Some(DhcpOption::ClientMachineIdentifier(id)) =
        req.msg.opts().get(OptionCode::ClientMachineIdentifier)
    {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    Some(Reply { dest, message: msg })
}

fn server_id(req: &Request) -> Option<Ipv4Addr> {
    match req.msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}
