//! Turning datagrams into validated requests and replies into datagrams.
//!
//! dhcproto does the actual parsing, but it trusts a few things we cannot:
//! it slices `chaddr` by `hlen` (panics if hlen > 16), and for some
//! fixed-size options it only `debug_assert!`s the length or subtracts from
//! it unchecked. We walk the option TLVs ourselves first and reject those
//! packets, and grab option 82 as raw bytes on the way because RFC 3046
//! wants it echoed verbatim, not re-encoded.

use dhcproto::v4::{HType, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};

use crate::mac::Mac;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
const OPTIONS_OFFSET: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const OPT_PAD: u8 = 0;
const OPT_END: u8 = 255;
const OPT_RELAY_AGENT: u8 = 82;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("not a BOOTREQUEST")]
    NotRequest,
    #[error("bad magic cookie")]
    BadMagic,
    #[error("unsupported hardware type {htype}/len {hlen}; only Ethernet is served")]
    UnsupportedHardware { htype: u8, hlen: u8 },
    #[error("option {code} has invalid length {len}")]
    BadOptionLength { code: u8, len: usize },
    #[error("malformed packet: {0}")]
    Wire(String),
    #[error("no DHCP message type (plain BOOTP is not served)")]
    NoMessageType,
}

/// A request that passed validation.
#[derive(Debug, Clone)]
pub struct Request {
    pub msg: Message,
    pub mac: Mac,
    pub msg_type: MessageType,
    /// Option 82 payload exactly as the relay sent it.
    pub relay_raw: Option<Vec<u8>>,
}

pub fn decode(buf: &[u8]) -> Result<Request, DecodeError> {
    if buf.len() < OPTIONS_OFFSET {
        return Err(DecodeError::TooShort(buf.len()));
    }
    if buf[0] != 1 {
        return Err(DecodeError::NotRequest);
    }
    let (htype, hlen) = (buf[1], buf[2]);
    if htype != 1 || hlen != 6 {
        return Err(DecodeError::UnsupportedHardware { htype, hlen });
    }
    if buf[236..240] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let relay_raw = scan_options(&buf[OPTIONS_OFFSET..])?;

    let msg =
        Message::decode(&mut Decoder::new(buf)).map_err(|e| DecodeError::Wire(e.to_string()))?;
    // Belt and braces: the header checks above make these unreachable.
    if msg.opcode() != Opcode::BootRequest || msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(DecodeError::UnsupportedHardware { htype, hlen });
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&buf[28..34]);
    let msg_type = msg.opts().msg_type().ok_or(DecodeError::NoMessageType)?;
    Ok(Request {
        msg,
        mac: Mac(mac),
        msg_type,
        relay_raw,
    })
}

/// Validates option lengths dhcproto would mishandle and returns the
/// concatenated (RFC 3396) option 82 payload, if any.
fn scan_options(opts: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    let mut relay: Option<Vec<u8>> = None;
    // dhcproto concatenates *consecutive* same-code options before parsing,
    // so lengths must be checked per run, not per fragment.
    let mut run: Option<(u8, usize)> = None;
    let mut i = 0;
    while i < opts.len() {
        let code = opts[i];
        if code == OPT_PAD || code == OPT_END {
            if let Some((c, l)) = run.take() {
                check_len(c, l)?;
            }
            if code == OPT_END {
                break;
            }
            i += 1;
            continue;
        }
        let Some(&len) = opts.get(i + 1) else { break };
        let len = len as usize;
        let Some(data) = opts.get(i + 2..i + 2 + len) else {
            // Truncated trailing option: dhcproto stops parsing there too.
            break;
        };
        run = match run {
            Some((c, l)) if c == code => Some((c, l + len)),
            Some((c, l)) => {
                check_len(c, l)?;
                Some((code, len))
            }
            None => Some((code, len)),
        };
        if code == OPT_RELAY_AGENT {
            relay.get_or_insert_with(Vec::new).extend_from_slice(data);
        }
        i += 2 + len;
    }
    if let Some((c, l)) = run {
        check_len(c, l)?;
    }
    Ok(relay)
}

fn check_len(code: u8, len: usize) -> Result<(), DecodeError> {
    let ok = match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        151 => len >= 1,
        152..=155 => len == 4,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(DecodeError::BadOptionLength { code, len })
    }
}

pub fn encode(msg: &Message) -> Result<Vec<u8>, crate::Error> {
    msg.to_vec()
        .map_err(|e| crate::Error::Encode(e.to_string()))
}
