//! Pieces shared by every reply: the header copied from the request, the
//! boot information, and the reply envelope handed to the socket layer.

use std::net::{Ipv4Addr, SocketAddr};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};

use crate::boot::{self, ClientInfo};
use crate::codec::{self, Request};
use crate::config::Config;
use crate::error::Error;
use crate::relay;

/// Some PXE ROMs and BOOTP-era relays drop replies shorter than the
/// original BOOTP message size.
const MIN_REPLY_LEN: usize = 300;

/// A reply and where to send it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub dest: SocketAddr,
    pub message: Message,
}

impl Reply {
    pub fn msg_type(&self) -> Option<MessageType> {
        self.message.opts().msg_type()
    }

    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut bytes = codec::encode(&self.message)?;
        if bytes.len() < MIN_REPLY_LEN {
            bytes.resize(MIN_REPLY_LEN, 0);
        }
        Ok(bytes)
    }
}

/// Header fields every reply copies from the request (RFC 2131 table 3).
pub fn skeleton(req: &Request, ty: MessageType, server_ip: Ipv4Addr) -> Message {
    let m = &req.msg;
    let mut r = Message::new_with_id(
        m.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        m.giaddr(),
        req.mac.as_bytes(),
    );
    r.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_flags(m.flags());
    let opts = r.opts_mut();
    opts.insert(DhcpOption::MessageType(ty));
    opts.insert(DhcpOption::ServerIdentifier(server_ip));
    relay::echo(opts, req.relay_raw.as_deref());
    r
}

/// What the client says about itself, for boot selection.
pub fn client_info(req: &Request) -> ClientInfo<'_> {
    let opts = req.msg.opts();
    ClientInfo {
        mac: req.mac,
        arch: match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
            _ => None,
        },
        vendor_class: match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => Some(v.as_slice()),
            _ => None,
        },
        user_class: match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(u)) => Some(u.as_slice()),
            _ => None,
        },
    }
}

pub fn requested_options(req: &Request) -> &[OptionCode] {
    match req.msg.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(l)) => l,
        _ => &[],
    }
}

/// Adds next-server and boot file if the client is booting firmware.
/// Returns whether anything was added.
pub fn add_boot(reply: &mut Message, req: &Request, cfg: &Config) -> bool {
    let client = client_info(req);
    let Some(bf) = boot::select(&cfg.boot, &client) else {
        return false;
    };
    reply.set_siaddr(cfg.boot.next_server.unwrap_or(cfg.server_ip));
    // The 128-byte `file` field is what PXE ROMs read; option 67 is for
    // clients that ask for it and for URLs too long for the field.
    let fits = bf.file.len() < 128;
    if fits {
        reply.set_fname_str(&bf.file);
    }
    if !fits || requested_options(req).contains(&OptionCode::BootfileName) {
        reply
            .opts_mut()
            .insert(DhcpOption::BootfileName(bf.file.clone().into_bytes()));
    }
    if let Some(vc) = bf.vendor_class {
        reply
            .opts_mut()
            .insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
    }
    true
}
